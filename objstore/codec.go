package objstore

import (
	"fmt"

	"github.com/klauspost/compress/zstd"
	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/transport"
)

// A chunk object is one codec byte followed by the chunk's bytes, raw or as
// one zstd frame. The raw length is not stored: it is the manifest entry's.
const (
	codecRaw  byte = 0
	codecZstd byte = 1
)

// maxChunkObject bounds a chunk object: a header byte and a chunk, raw or
// (at worst) zstd's bound on incompressible input, which Compress never
// keeps.
const maxChunkObject = 1 + chunk.MaxChunkSize

// encodeChunk returns the object for raw, compressed when that pays, in
// dst's storage.
func encodeChunk(c *transport.Compressor, raw, dst []byte) []byte {
	codec, out := c.Compress(raw, dst[:0])
	if codec == transport.CodecZstd {
		return append([]byte{codecZstd}, out...)
	}
	obj := make([]byte, 0, 1+len(raw))
	obj = append(obj, codecRaw)
	return append(obj, raw...)
}

// decoder decodes chunk objects with output bounded by the largest chunk.
type decoder struct{ dec *zstd.Decoder }

func newDecoder() (*decoder, error) {
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(0),
		zstd.WithDecoderMaxMemory(chunk.MaxChunkSize), zstd.WithDecodeAllCapLimit(true),
		zstd.WithDecoderMaxWindow(chunk.MaxChunkSize))
	if err != nil {
		return nil, fmt.Errorf("zstd decoder: %w", err)
	}
	return &decoder{dec: dec}, nil
}

// decode returns the bytes of a chunk object that must hold rawLen bytes.
// Nothing larger than rawLen is allocated.
func (d *decoder) decode(obj []byte, rawLen uint64) ([]byte, error) {
	if len(obj) < 1 {
		return nil, fmt.Errorf("%w: empty chunk object", ErrCorrupt)
	}
	if rawLen == 0 || rawLen > chunk.MaxChunkSize {
		return nil, fmt.Errorf("%w: chunk length %d out of range", ErrCorrupt, rawLen)
	}
	body := obj[1:]
	switch obj[0] {
	case codecRaw:
		if uint64(len(body)) != rawLen {
			return nil, fmt.Errorf("%w: raw chunk object holds %d bytes, want %d", ErrCorrupt, len(body), rawLen)
		}
		return body, nil
	case codecZstd:
		out, err := d.dec.DecodeAll(body, make([]byte, 0, rawLen))
		if err != nil {
			return nil, fmt.Errorf("%w: zstd: %w", ErrCorrupt, err)
		}
		if uint64(len(out)) != rawLen {
			return nil, fmt.Errorf("%w: chunk object decodes to %d bytes, want %d", ErrCorrupt, len(out), rawLen)
		}
		return out, nil
	}
	return nil, fmt.Errorf("%w: unknown chunk codec %d", ErrCorrupt, obj[0])
}

func (d *decoder) close() { d.dec.Close() }
