package transport

import (
	"bytes"
	"errors"
	"io"
	"math"
	"testing"

	"github.com/voldelta/voldelta/chunk"
)

// FuzzDecode feeds arbitrary payloads to Decode. It must never panic; it
// must only fail with ErrProtocol; and whatever it accepts must be the
// canonical encoding of what it decoded (a HELLO of another version aside,
// which is decoded no further than its version), so that re-encoding and
// decoding again gives the same message.
func FuzzDecode(f *testing.F) {
	for _, m := range sampleMessages() {
		f.Add(byte(m.FrameType()), encode(m))
	}
	c, err := NewCompressor(CompressionFastest)
	if err != nil {
		f.Fatal(err)
	}
	raw := compressible(1, 4096)
	codec, z := c.Compress(raw, nil)
	f.Add(byte(FrameChunk), encode(Chunk{Index: 1, Codec: codec, RawLen: uint32(len(raw)), Data: z}))
	f.Add(byte(FrameHello), []byte("VDLT\x00\x03future"))
	f.Add(byte(FrameHello), helloV1Layout(f, 1))
	f.Add(byte(FrameHello), helloV1Layout(f, ProtocolVersion))
	f.Add(byte(FrameWelcome), append(encode(Welcome{State: TargetCommitted})[:len(encode(Welcome{State: TargetCommitted}))-1], 0x80))
	f.Add(byte(FrameWelcome), append(encode(Welcome{State: TargetNew}), 0))
	f.Add(byte(FrameWelcome), append(encode(Welcome{State: TargetNew}), 0, 0))
	f.Add(byte(FrameDataOpen), []byte{0, 1, 0, 0, 0})
	f.Add(byte(FrameDataOpen), []byte{0, 1, 0, 0, 0, 0})
	f.Add(byte(FrameManifestCopy), encode(ManifestCopy{First: 3, Count: 0}))
	f.Add(byte(FrameManifestCopy), encode(ManifestCopy{First: 1<<64 - 1, Count: 1}))
	f.Add(byte(FrameBaseGet), make([]byte, 33))
	f.Add(byte(FrameHello), []byte("GET / HTTP/1.1\r\n"))
	f.Add(byte(FrameError), append([]byte{0, 1, 0x10, 0}, make([]byte, 4096)...))
	f.Add(byte(FrameNeed), encode(Need{Ranges: []IndexRange{{First: 1<<64 - 2, Count: 1}}}))
	f.Add(byte(FrameManifest), encode(ManifestBatch{Entries: []chunk.Entry{{Length: 1, Zero: true}}}))
	f.Add(byte(0), []byte{})
	f.Add(byte(13), []byte{1})

	f.Fuzz(func(t *testing.T, typ byte, payload []byte) {
		ft := FrameType(typ)
		m, err := Decode(ft, payload)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error %v does not wrap ErrProtocol", err)
			}
			return
		}
		if m.FrameType() != ft {
			t.Fatalf("a %v payload decoded as %v", ft, m.FrameType())
		}
		enc := m.AppendPayload(nil)
		if h, ok := m.(Hello); !ok || h.Version == ProtocolVersion {
			if !bytes.Equal(enc, payload) {
				t.Fatalf("%v accepted a non-canonical payload of %d bytes, re-encoded as %d bytes\n got %.64x\nre-encoded %.64x", ft, len(payload), len(enc), payload, enc)
			}
		}
		m2, err := Decode(ft, enc)
		if err != nil {
			t.Fatalf("re-encoded %v does not decode: %v", ft, err)
		}
		// A Chunk's Data aliases the payload it came from, so compare
		// contents; the two payloads are distinct buffers.
		if !equalMsg(m, m2) {
			t.Fatalf("round trip changed the message\n got %#v\nwant %#v", m2, m)
		}
	})
}

// FuzzFrameReader feeds arbitrary streams to a FrameReader with a small
// limit. It must never panic, never hold a payload (or a buffer) above the
// limit, say io.EOF exactly when the stream ends between frames, and only
// fail with the errors its contract names.
func FuzzFrameReader(f *testing.F) {
	const limit = 64
	f.Add([]byte{})
	f.Add(frames(DataOpen{Stream: 1}, NeedEnd{Total: 7}, ManifestEnd{Count: 1, Root: idOf(1)}))
	f.Add(frames(ErrorMsg{Code: ErrCodeBusy, Message: "busy"}, Chunk{Index: 1, RawLen: 3, Data: []byte("abc")}))
	f.Add(frames(Chunk{Index: 1, RawLen: 100, Data: make([]byte, 100)})) // over the limit
	f.Add([]byte{9, 0, 0xff, 0xff, 0xff, 0xff})                          // 4 GiB announced
	f.Add([]byte{9, 1, 0, 0, 0, 0})                                      // flags set
	f.Add([]byte{9, 0, 0, 0, 0, 10, 1, 2})                               // cut in the body
	f.Add([]byte{9, 0, 0})                                               // cut in the header

	f.Fuzz(func(t *testing.T, data []byte) {
		fr := NewFrameReader(bytes.NewReader(data), limit)
		consumed := 0
		for {
			ft, p, err := fr.Next()
			if cap(fr.buf) > limit {
				t.Fatalf("buffer of %d bytes, limit %d", cap(fr.buf), limit)
			}
			if err != nil {
				switch {
				case err == io.EOF:
					if consumed != len(data) {
						t.Fatalf("io.EOF with %d of %d bytes consumed", consumed, len(data))
					}
				case errors.Is(err, io.ErrUnexpectedEOF):
					if consumed == len(data) {
						t.Fatalf("unexpected EOF at a frame boundary")
					}
				case errors.Is(err, ErrFrameTooLarge), errors.Is(err, ErrProtocol):
				default:
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if len(p) > limit {
				t.Fatalf("payload of %d bytes, limit %d", len(p), limit)
			}
			consumed += HeaderSize + len(p)
			if !bytes.Equal(p, data[consumed-len(p):consumed]) {
				t.Fatalf("payload does not match the stream")
			}
			_, _ = Decode(ft, p) // must not panic either
		}
	})
}

// FuzzDecompress feeds arbitrary CHUNK payloads to the receiver's zstd
// decoder. It must never panic, never produce more than rawlen bytes, and
// whatever it accepts must be exactly rawlen bytes long.
func FuzzDecompress(f *testing.F) {
	c, err := NewCompressor(CompressionFastest)
	if err != nil {
		f.Fatal(err)
	}
	raw := compressible(2, 8192)
	_, z := c.Compress(raw, nil)
	f.Add(uint32(len(raw)), z)
	f.Add(uint32(len(raw)-1), z)
	f.Add(uint32(len(raw)+1), z)
	f.Add(uint32(0), []byte{})
	f.Add(uint32(1<<20), []byte{0x28, 0xb5, 0x2f, 0xfd})
	d, err := NewDecompressor()
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(d.Close)
	f.Fuzz(func(t *testing.T, rawLen uint32, data []byte) {
		rawLen %= 1 << 20 // bound the buffer; the 8 MiB cap is Decode's (FuzzDecode)
		dst := make([]byte, rawLen)
		out, err := d.Decode(Chunk{Codec: CodecZstd, RawLen: rawLen, Data: data}, dst)
		if err != nil {
			return
		}
		if uint32(len(out)) != rawLen {
			t.Fatalf("accepted %d bytes for rawlen %d", len(out), rawLen)
		}
	})
}

// FuzzParseRate: ParseRate never panics, and what it accepts is a finite,
// non-negative rate.
func FuzzParseRate(f *testing.F) {
	for _, s := range []string{"100Mbit", "12MiB", "500k", "1.5Gbit", "10MB/s", "0", "", "-1", "1e400GiB", "NaN", "inf", "fast"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseRate(s)
		if err != nil {
			return
		}
		if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
			t.Fatalf("ParseRate(%q) = %v", s, v)
		}
	})
}
