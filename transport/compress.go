package transport

import (
	"fmt"

	"github.com/klauspost/compress/zstd"
	"github.com/voldelta/voldelta/chunk"
)

// Compressor encodes chunks with zstd, keeping the raw bytes when
// compression saves less than 1/32 of them. It is safe for concurrent use.
type Compressor struct {
	enc *zstd.Encoder // nil: compression off
}

// CompressionLevel selects the zstd level; CompressionOff sends chunks raw.
type CompressionLevel string

// Compression levels accepted by --compress.
const (
	CompressionOff     CompressionLevel = "off"
	CompressionFastest CompressionLevel = "fastest"
	CompressionDefault CompressionLevel = "default"
	CompressionBetter  CompressionLevel = "better"
)

// NewCompressor returns a Compressor at level.
func NewCompressor(level CompressionLevel) (*Compressor, error) {
	var l zstd.EncoderLevel
	switch level {
	case CompressionOff:
		return &Compressor{}, nil
	case CompressionFastest, "":
		l = zstd.SpeedFastest
	case CompressionDefault:
		l = zstd.SpeedDefault
	case CompressionBetter:
		l = zstd.SpeedBetterCompression
	default:
		return nil, fmt.Errorf("unknown compression level %q (want off, fastest, default or better)", level)
	}
	// EncodeAll takes one of the encoder's concurrency slots per call: with
	// one slot, every data stream would wait for the others' chunks.
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(l), zstd.WithEncoderConcurrency(0),
		zstd.WithWindowSize(1<<20), zstd.WithZeroFrames(true))
	if err != nil {
		return nil, fmt.Errorf("zstd encoder: %w", err)
	}
	return &Compressor{enc: enc}, nil
}

// Compress returns the codec and bytes to send for raw, using dst as
// scratch space. The result aliases either raw or dst.
func (c *Compressor) Compress(raw, dst []byte) (Codec, []byte) {
	if c.enc == nil || len(raw) < 512 {
		return CodecRaw, raw
	}
	out := c.enc.EncodeAll(raw, dst[:0])
	if len(out) >= len(raw)-len(raw)/32 {
		return CodecRaw, raw
	}
	return CodecZstd, out
}

// Decompressor decodes chunks; safe for concurrent use.
type Decompressor struct {
	dec *zstd.Decoder
}

// NewDecompressor returns a Decompressor whose output is bounded by the
// largest chunk.
func NewDecompressor() (*Decompressor, error) {
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(0),
		zstd.WithDecoderMaxMemory(chunk.MaxChunkSize), zstd.WithDecodeAllCapLimit(true),
		zstd.WithDecoderMaxWindow(chunk.MaxChunkSize))
	if err != nil {
		return nil, fmt.Errorf("zstd decoder: %w", err)
	}
	return &Decompressor{dec: dec}, nil
}

// Decode returns the raw bytes of m in dst (which must have capacity for
// m.RawLen bytes) or m.Data itself for a raw chunk. It fails unless exactly
// m.RawLen bytes come out.
func (d *Decompressor) Decode(m Chunk, dst []byte) ([]byte, error) {
	switch m.Codec {
	case CodecRaw:
		return m.Data, nil
	case CodecZstd:
		if cap(dst) < int(m.RawLen) {
			return nil, fmt.Errorf("decode chunk %d: buffer of %d bytes for %d", m.Index, cap(dst), m.RawLen)
		}
		out, err := d.dec.DecodeAll(m.Data, dst[:0:m.RawLen])
		if err != nil {
			return nil, fmt.Errorf("%w: decode chunk %d: %w", ErrProtocol, m.Index, err)
		}
		if len(out) != int(m.RawLen) {
			return nil, fmt.Errorf("%w: chunk %d decodes to %d bytes, says %d", ErrProtocol, m.Index, len(out), m.RawLen)
		}
		return out, nil
	}
	return nil, fmt.Errorf("%w: chunk %d has unknown codec %d", ErrProtocol, m.Index, m.Codec)
}

// Close releases the decoder.
func (d *Decompressor) Close() { d.dec.Close() }
