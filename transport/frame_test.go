package transport

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

// frames encodes msgs as consecutive frames.
func frames(msgs ...Message) []byte {
	var b []byte
	for _, m := range msgs {
		p := encode(m)
		b = AppendFrameHeader(b, m.FrameType(), len(p))
		b = append(b, p...)
	}
	return b
}

// countReader counts the bytes read through it.
type countReader struct {
	r io.Reader
	n int
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// bodyGuard fails the test if anything reads past the header in front of it.
type bodyGuard struct{ t *testing.T }

func (g bodyGuard) Read(p []byte) (int, error) {
	g.t.Errorf("FrameReader read the body of a frame it should have refused")
	return 0, errors.New("body read")
}

func TestFrameReaderReadsFrames(t *testing.T) {
	msgs := sampleMessages()
	stream := frames(msgs...)
	readers := map[string]func(io.Reader) io.Reader{
		"whole":    func(r io.Reader) io.Reader { return r },
		"one byte": iotest.OneByteReader,
		"half":     iotest.HalfReader,
		"data+EOF": iotest.DataErrReader,
	}
	for name, wrap := range readers {
		t.Run(name, func(t *testing.T) {
			fr := NewFrameReader(wrap(bytes.NewReader(stream)), DefaultMaxFrameSize)
			for i, want := range msgs {
				ft, payload, err := fr.Next()
				if err != nil {
					t.Fatalf("frame %d: %v", i, err)
				}
				got, err := Decode(ft, payload)
				if err != nil {
					t.Fatalf("frame %d: decode %v: %v", i, ft, err)
				}
				if !equalMsg(got, want) {
					t.Fatalf("frame %d: got %#v, want %#v", i, got, want)
				}
			}
			if _, _, err := fr.Next(); err != io.EOF {
				t.Fatalf("after the last frame: %v, want io.EOF itself", err)
			}
		})
	}
}

func TestFrameReaderLimit(t *testing.T) {
	const limit = 1000
	cases := []struct {
		name  string
		n     uint32
		ok    bool
		flags byte
	}{
		{"empty", 0, true, 0},
		{"at limit", limit, true, 0},
		{"one over", limit + 1, false, 0},
		{"4 GiB", 1<<32 - 1, false, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			hdr := AppendFrameHeader(nil, FrameChunk, 0)
			hdr[2], hdr[3], hdr[4], hdr[5] = byte(tc.n>>24), byte(tc.n>>16), byte(tc.n>>8), byte(tc.n)
			var body io.Reader = bodyGuard{t}
			if tc.ok {
				body = bytes.NewReader(make([]byte, tc.n))
			}
			cr := &countReader{r: io.MultiReader(bytes.NewReader(hdr), body)}
			fr := NewFrameReader(cr, limit)
			ft, payload, err := fr.Next()
			if tc.ok {
				if err != nil || ft != FrameChunk || len(payload) != int(tc.n) {
					t.Fatalf("Next = %v, %d bytes, %v; want CHUNK, %d bytes", ft, len(payload), err, tc.n)
				}
				return
			}
			if !errors.Is(err, ErrFrameTooLarge) {
				t.Fatalf("Next error %v, want ErrFrameTooLarge", err)
			}
			if cr.n != HeaderSize {
				t.Errorf("read %d bytes, want only the %d-byte header", cr.n, HeaderSize)
			}
			if cap(fr.buf) != 0 {
				t.Errorf("allocated %d bytes for a refused frame", cap(fr.buf))
			}
		})
	}
}

func TestFrameReaderRejectsFlags(t *testing.T) {
	for _, flags := range []byte{1, 0x80, 0xff} {
		b := frames(NeedEnd{Total: 1})
		b[1] = flags
		fr := NewFrameReader(bytes.NewReader(b), DefaultMaxFrameSize)
		if _, _, err := fr.Next(); !errors.Is(err, ErrProtocol) {
			t.Errorf("flags %#x: %v, want ErrProtocol", flags, err)
		}
	}
}

func TestFrameReaderEOF(t *testing.T) {
	one := frames(Chunk{Index: 1, RawLen: 100, Data: seeded(1, 100)})
	two := frames(DataOpen{Stream: 1}, NeedEnd{Total: 2})
	cases := []struct {
		name   string
		data   []byte
		frames int   // read before the error
		want   error // io.EOF must be returned as is
	}{
		{"empty stream", nil, 0, io.EOF},
		{"after one frame", one, 1, io.EOF},
		{"after two frames", two, 2, io.EOF},
		{"inside first header", one[:3], 0, io.ErrUnexpectedEOF},
		{"after first header", one[:HeaderSize], 0, io.ErrUnexpectedEOF},
		{"inside first body", one[:len(one)-1], 0, io.ErrUnexpectedEOF},
		{"inside second header", two[:HeaderSize+2+1], 1, io.ErrUnexpectedEOF},
		{"inside second body", two[:len(two)-4], 1, io.ErrUnexpectedEOF},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fr := NewFrameReader(bytes.NewReader(tc.data), DefaultMaxFrameSize)
			for i := range tc.frames {
				if _, _, err := fr.Next(); err != nil {
					t.Fatalf("frame %d: %v", i, err)
				}
			}
			_, _, err := fr.Next()
			if tc.want == io.EOF && err != io.EOF {
				t.Fatalf("got %v, want io.EOF itself", err)
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

// A read error other than EOF is passed on.
func TestFrameReaderPassesErrors(t *testing.T) {
	boom := errors.New("boom")
	b := frames(NeedEnd{Total: 1})
	for _, cut := range []int{0, 2, HeaderSize, HeaderSize + 3} {
		r := io.MultiReader(bytes.NewReader(b[:cut]), iotest.ErrReader(boom))
		if _, _, err := NewFrameReader(r, DefaultMaxFrameSize).Next(); !errors.Is(err, boom) {
			t.Errorf("cut at %d: %v, want boom", cut, err)
		}
	}
}

// The buffer is reused: a small frame after a large one gets the right
// length, and the payload is valid until the next call.
func TestFrameReaderReusesBuffer(t *testing.T) {
	big := Chunk{Index: 1, RawLen: 5000, Data: seeded(1, 5000)}
	small := Chunk{Index: 2, RawLen: 10, Data: seeded(2, 10)}
	fr := NewFrameReader(bytes.NewReader(frames(big, small, big)), DefaultMaxFrameSize)
	for i, want := range []Chunk{big, small, big} {
		ft, p, err := fr.Next()
		if err != nil {
			t.Fatal(err)
		}
		m, err := Decode(ft, p)
		if err != nil {
			t.Fatal(err)
		}
		if !equalMsg(m, want) {
			t.Fatalf("frame %d differs", i)
		}
		if i > 0 && cap(fr.buf) != len(encode(big)) {
			t.Fatalf("frame %d: buffer of %d bytes, want the first one (%d) reused", i, cap(fr.buf), len(encode(big)))
		}
	}
}
