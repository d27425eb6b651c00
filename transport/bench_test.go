package transport

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
)

const benchChunk = 256 << 10

func BenchmarkFrameEncode(b *testing.B) {
	m := Chunk{Index: 1, Codec: CodecRaw, RawLen: benchChunk, Data: seeded(1, benchChunk)}
	buf := make([]byte, 0, HeaderSize+ChunkHeaderSize+benchChunk)
	b.SetBytes(benchChunk)
	b.ReportAllocs()
	for b.Loop() {
		// As Stream.Send does: header, payload, then the real length.
		buf = AppendFrameHeader(buf[:0], m.FrameType(), 0)
		buf = m.AppendPayload(buf)
		AppendFrameHeader(buf[:0], m.FrameType(), len(buf)-HeaderSize)
	}
}

func BenchmarkFrameDecode(b *testing.B) {
	wire := frames(Chunk{Index: 1, Codec: CodecRaw, RawLen: benchChunk, Data: seeded(1, benchChunk)})
	r := bytes.NewReader(wire)
	fr := NewFrameReader(r, DefaultMaxFrameSize)
	b.SetBytes(benchChunk)
	b.ReportAllocs()
	for b.Loop() {
		r.Reset(wire)
		ft, p, err := fr.Next()
		if err != nil {
			b.Fatal(err)
		}
		if _, err := Decode(ft, p); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCompress(b *testing.B) {
	for _, level := range []CompressionLevel{CompressionFastest, CompressionDefault} {
		b.Run(string(level), func(b *testing.B) {
			c, err := NewCompressor(level)
			if err != nil {
				b.Fatal(err)
			}
			raw := compressible(1, benchChunk)
			dst := make([]byte, 0, benchChunk)
			codec, z := c.Compress(raw, dst)
			if codec != CodecZstd {
				b.Fatal("benchmark data does not compress")
			}
			b.ReportMetric(float64(len(raw))/float64(len(z)), "ratio")
			b.SetBytes(benchChunk)
			b.ReportAllocs()
			for b.Loop() {
				c.Compress(raw, dst)
			}
		})
	}
}

// BenchmarkCompressParallel compresses from every core through one
// Compressor, as the agent's data streams do.
func BenchmarkCompressParallel(b *testing.B) {
	c, err := NewCompressor(CompressionFastest)
	if err != nil {
		b.Fatal(err)
	}
	raw := compressible(1, benchChunk)
	b.SetBytes(benchChunk)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		dst := make([]byte, 0, benchChunk)
		for pb.Next() {
			c.Compress(raw, dst)
		}
	})
}

func BenchmarkDecompress(b *testing.B) {
	c, err := NewCompressor(CompressionFastest)
	if err != nil {
		b.Fatal(err)
	}
	d, err := NewDecompressor()
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	raw := compressible(1, benchChunk)
	codec, z := c.Compress(raw, nil)
	m := Chunk{Index: 1, Codec: codec, RawLen: benchChunk, Data: z}
	dst := make([]byte, 0, benchChunk)
	b.SetBytes(benchChunk)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := d.Decode(m, dst); err != nil {
			b.Fatal(err)
		}
	}
}

// benchSend sends b.N raw 256 KiB chunk frames spread over the given number
// of streams of a session and waits until the receiver has read them all.
func benchSend(b *testing.B, cli, srv *Session, streams int) {
	ctx := b.Context()
	data := seeded(1, benchChunk)
	senders := make([]*Stream, streams)
	var readers sync.WaitGroup
	var readErr error
	var mu sync.Mutex
	for i := range senders {
		st, err := cli.Open(ctx)
		if err != nil {
			b.Fatal(err)
		}
		// Announce the stream so that Accept returns it.
		if err := st.Send(DataOpen{Stream: uint16(i)}); err != nil {
			b.Fatal(err)
		}
		senders[i] = st
		rst, err := srv.Accept(ctx)
		if err != nil {
			b.Fatal(err)
		}
		readers.Go(func() {
			for {
				_, err := rst.Recv()
				if err == io.EOF {
					return
				}
				if err != nil {
					mu.Lock()
					readErr = err
					mu.Unlock()
					srv.Close()
					return
				}
			}
		})
	}
	b.SetBytes(benchChunk)
	b.ReportAllocs()
	b.ResetTimer()
	var wg sync.WaitGroup
	for i, st := range senders {
		n := b.N / streams
		if i < b.N%streams {
			n++
		}
		wg.Go(func() {
			for j := range n {
				if err := st.Send(Chunk{Index: uint64(j), RawLen: benchChunk, Data: data}); err != nil {
					b.Error(err)
					return
				}
			}
			st.CloseWrite()
		})
	}
	wg.Wait()
	readers.Wait()
	b.StopTimer()
	if readErr != nil {
		b.Fatal(readErr)
	}
}

func BenchmarkSessionThroughput(b *testing.B) {
	for _, k := range []kind{kinds[1], kinds[3]} {
		for _, streams := range []int{1, 4} {
			b.Run(fmt.Sprintf("%s/streams=%d", k.name, streams), func(b *testing.B) {
				cli, srv := pair(b, k, nil)
				benchSend(b, cli, srv, streams)
			})
		}
	}
}

// BenchmarkLimitedWrite shows the bandwidth limit at work: the "2MiB/s"
// case should report about 2.1 MB/s (payload bytes; the wire carries a
// little more), far below "unlimited".
func BenchmarkLimitedWrite(b *testing.B) {
	for _, tc := range []struct {
		name string
		rate float64
	}{{"unlimited", 0}, {"2MiB/s", 2 << 20}} {
		b.Run("conn/"+tc.name, func(b *testing.B) {
			a, z := net.Pipe()
			defer a.Close()
			c := newCountingConn(a, tc.rate)
			go io.Copy(io.Discard, z)
			data := seeded(1, 64<<10)
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Write(data); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			if c.written.Load() != int64(b.N*len(data)) {
				b.Fatalf("counted %d bytes, wrote %d", c.written.Load(), b.N*len(data))
			}
		})
		b.Run("session/"+tc.name, func(b *testing.B) {
			cli, srv := pair(b, kinds[1], func(c, s *Config) { c.BandwidthLimit = tc.rate })
			benchSend(b, cli, srv, 1)
		})
	}
}
