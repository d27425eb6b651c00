package transport

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"
)

func newCodec(t testing.TB, level CompressionLevel) (*Compressor, *Decompressor) {
	t.Helper()
	c, err := NewCompressor(level)
	if err != nil {
		t.Fatal(err)
	}
	d, err := NewDecompressor()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return c, d
}

func TestCompressRoundTrip(t *testing.T) {
	cases := []struct {
		name  string
		data  []byte
		codec Codec // expected at every level but off
	}{
		{"log text 256KiB", compressible(1, 256<<10), CodecZstd},
		{"zeros 1MiB", make([]byte, 1<<20), CodecZstd},
		{"log text 3MiB", compressible(2, 3<<20), CodecZstd},
		{"random 256KiB", seeded(3, 256<<10), CodecRaw},
		{"random 4KiB", seeded(4, 4<<10), CodecRaw},
		{"short zeros", make([]byte, 511), CodecRaw}, // under 512 bytes: never compressed
		{"empty", nil, CodecRaw},
		// Half random, half text: saves far more than 1/32.
		{"half random", append(seeded(5, 64<<10), compressible(5, 64<<10)...), CodecZstd},
		// 1/64 compressible: saves less than 1/32, so stays raw.
		{"barely compressible", append(seeded(6, 63<<10), make([]byte, 1<<10)...), CodecRaw},
	}
	for _, level := range []CompressionLevel{CompressionFastest, CompressionDefault, CompressionBetter, CompressionOff, ""} {
		c, d := newCodec(t, level)
		for _, tc := range cases {
			t.Run(fmt.Sprintf("%s/%s", level, tc.name), func(t *testing.T) {
				codec, out := c.Compress(tc.data, make([]byte, 0, len(tc.data)))
				want := tc.codec
				if level == CompressionOff {
					want = CodecRaw
				}
				if codec != want {
					t.Fatalf("codec %d (%d of %d bytes), want %d", codec, len(out), len(tc.data), want)
				}
				switch codec {
				case CodecRaw:
					if len(out) != len(tc.data) || (len(out) > 0 && &out[0] != &tc.data[0]) {
						t.Fatalf("raw result does not alias the input")
					}
				case CodecZstd:
					if saved := len(tc.data) - len(out); saved <= len(tc.data)/32 {
						t.Fatalf("zstd chosen although it saves only %d of %d bytes", saved, len(tc.data))
					}
				}
				// Through the wire encoding, as a receiver sees it.
				wire := encode(Chunk{Index: 9, Codec: codec, RawLen: uint32(len(tc.data)), Data: out})
				m, err := Decode(FrameChunk, wire)
				if err != nil {
					t.Fatalf("decode frame: %v", err)
				}
				raw, err := d.Decode(m.(Chunk), make([]byte, 0, len(tc.data)))
				if err != nil {
					t.Fatalf("decompress: %v", err)
				}
				if !bytes.Equal(raw, tc.data) {
					t.Fatalf("decompressed bytes differ")
				}
			})
		}
	}
}

func TestDecompressRejects(t *testing.T) {
	c, d := newCodec(t, CompressionFastest)
	data := compressible(7, 100<<10)
	codec, z := c.Compress(data, nil)
	if codec != CodecZstd {
		t.Fatal("test data did not compress")
	}
	// A frame whose content size is left out, so the decoder only learns
	// the length by decoding.
	_, zEmpty := c.Compress(nil, nil)
	cases := []struct {
		name string
		m    Chunk
		dst  int // capacity of the output buffer
	}{
		{"decodes to more than rawlen", Chunk{Codec: CodecZstd, RawLen: uint32(len(data) - 1), Data: z}, len(data) - 1},
		{"decodes to more, big buffer", Chunk{Codec: CodecZstd, RawLen: uint32(len(data) - 1), Data: z}, 2 * len(data)},
		{"decodes to fewer than rawlen", Chunk{Codec: CodecZstd, RawLen: uint32(len(data) + 1), Data: z}, len(data) + 1},
		{"empty frame for a chunk", Chunk{Codec: CodecZstd, RawLen: 10, Data: zEmpty}, 10},
		{"cut short", Chunk{Codec: CodecZstd, RawLen: uint32(len(data)), Data: z[:len(z)/2]}, len(data)},
		{"garbage", Chunk{Codec: CodecZstd, RawLen: 1000, Data: seeded(8, 300)}, 1000},
		{"magic then garbage", Chunk{Codec: CodecZstd, RawLen: 1000, Data: append([]byte{0x28, 0xb5, 0x2f, 0xfd}, seeded(9, 300)...)}, 1000},
		{"unknown codec", Chunk{Codec: 7, RawLen: 3, Data: []byte("abc")}, 3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := d.Decode(tc.m, make([]byte, 0, tc.dst))
			if err == nil {
				t.Fatalf("decoded %d bytes", len(out))
			}
			if !errors.Is(err, ErrProtocol) {
				t.Errorf("%v does not wrap ErrProtocol", err)
			}
		})
	}
	// A buffer too small for rawlen is the caller's mistake, not the peer's.
	if _, err := d.Decode(Chunk{Codec: CodecZstd, RawLen: uint32(len(data)), Data: z}, make([]byte, 0, 10)); err == nil || errors.Is(err, ErrProtocol) {
		t.Errorf("short buffer: %v, want a local error", err)
	}
}

func TestNewCompressorLevels(t *testing.T) {
	for _, l := range []CompressionLevel{CompressionOff, CompressionFastest, CompressionDefault, CompressionBetter, ""} {
		if _, err := NewCompressor(l); err != nil {
			t.Errorf("level %q: %v", l, err)
		}
	}
	for _, l := range []CompressionLevel{"fast", "best", "9", "OFF", " off"} {
		if _, err := NewCompressor(l); err == nil {
			t.Errorf("level %q accepted", l)
		}
	}
}

// One Compressor and one Decompressor serve every data stream at once.
func TestCodecConcurrent(t *testing.T) {
	c, d := newCodec(t, CompressionFastest)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			dst, raw := make([]byte, 0, 64<<10), make([]byte, 0, 64<<10)
			for i := range 20 {
				data := compressible(uint64(g*100+i), 64<<10)
				codec, z := c.Compress(data, dst)
				out, err := d.Decode(Chunk{Index: uint64(i), Codec: codec, RawLen: uint32(len(data)), Data: z}, raw)
				if err != nil || !bytes.Equal(out, data) {
					errs <- fmt.Errorf("goroutine %d chunk %d: %v", g, i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
