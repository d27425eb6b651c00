package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/voldelta/voldelta/agent"
	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/hint"
	"github.com/voldelta/voldelta/internal/delayproxy"
	"github.com/voldelta/voldelta/internal/pki"
	"github.com/voldelta/voldelta/receiver"
	"github.com/voldelta/voldelta/transport"
)

// TestSyncThroughDelayProxy syncs a small volume, then a change to it,
// through a proxy adding 20 ms of round-trip time: the target ends up
// identical to the source and every byte went through the proxy.
func TestSyncThroughDelayProxy(t *testing.T) {
	p := newPair(t, pairOpts{})
	px, err := delayproxy.Start(context.Background(), delayproxy.Config{Target: p.addr, Delay: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { px.Close() })

	src := filepath.Join(p.dir, "source.img")
	data := randBytes(40, 8*MiB)
	for step, change := range []func([]byte){
		func([]byte) {},
		func(b []byte) { copy(b[3*MiB:], randBytes(41, 100<<10)) },
	} {
		change(data)
		writeFile(t, src, data)
		before := px.BytesUp()
		opt := p.options(src, "vol")
		opt.Addr = px.Addr()
		st, err := agent.Sync(context.Background(), opt)
		if err != nil {
			t.Fatalf("sync %d through the proxy: %v", step, err)
		}
		assertSame(t, p.targets["vol"], data)
		if up := uint64(px.BytesUp() - before); up < st.BytesSentPayload {
			t.Errorf("sync %d: the proxy forwarded %d bytes, the agent sent %d bytes of chunks", step, up, st.BytesSentPayload)
		}
	}
}

// rttVolumeSize is cut into 10,215 chunks of rttParams (4/4/16 KiB): with
// MinSize 4 KiB, the smallest allowed, chunks average MinSize+AvgSize ≈
// 8 KiB, so about 10,000 chunks take 78 MiB.
const rttVolumeSize = 78 * MiB

var rttParams = chunk.DefaultParams().WithSizes(4<<10, 4<<10, 16<<10)

// BenchmarkSyncRTT measures one sync of a volume of about 10,000 changed
// chunks through a delay proxy, without delay and with 20 ms of round-trip
// time. The acceptance criterion is that the second is not more than 1 s
// slower than the first: the protocol makes no round trip per chunk.
//
// Every iteration syncs to a fresh receiver and empty target (set up and
// torn down outside the timer), so every chunk of the volume is changed
// and needed, and iterations do not depend on each other's state. The
// proxy is in the path in both cases so that only the delay differs.
func BenchmarkSyncRTT(b *testing.B) {
	dir := b.TempDir()
	src := filepath.Join(dir, "source.img")
	data := randBytes(42, rttVolumeSize)
	if err := os.WriteFile(src, data, 0o644); err != nil {
		b.Fatal(err)
	}
	certs := newTestCerts(b)
	for _, rtt := range []time.Duration{0, 20 * time.Millisecond} {
		b.Run(fmt.Sprintf("rtt=%dms", rtt.Milliseconds()), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			var chunks, wire uint64
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				srv := startProxiedReceiver(b, certs, filepath.Join(dir, fmt.Sprint(i)), rtt/2)
				opt := srv.options(src, rttParams)
				b.StartTimer()
				st, err := agent.Sync(context.Background(), opt)
				b.StopTimer()
				if err != nil {
					b.Fatal(err)
				}
				if st.ChunksSent != st.ChunksData {
					b.Fatalf("sent %d of %d data chunks to an empty target", st.ChunksSent, st.ChunksData)
				}
				if got, err := os.ReadFile(srv.target); err != nil || !bytes.Equal(got, data) {
					b.Fatalf("target differs from the source (read error %v)", err)
				}
				chunks += st.ChunksSent
				wire += uint64(st.WireBytes)
				srv.stop(b)
				b.StartTimer()
			}
			b.ReportMetric(float64(chunks)/float64(b.N), "chunks/op")
			b.ReportMetric(float64(wire)/float64(b.N), "wire-B/op")
		})
	}
}

// testCerts are a receiver's and an agent's TLS configurations from one CA.
type testCerts struct{ receiver, agent *tls.Config }

func newTestCerts(tb testing.TB) testCerts {
	tb.Helper()
	ca, err := pki.NewCA("test CA", time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	srv, err := ca.Issue("receiver", []string{"127.0.0.1"}, time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	cli, err := ca.Issue("agent-1", nil, time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	return testCerts{receiver: transport.NewTLS(srv.TLS, ca.Pool(), true), agent: transport.NewTLS(cli.TLS, ca.Pool(), false)}
}

// proxiedReceiver is a receiver of volume "vol" on loopback behind a delay
// proxy; it works with any testing.TB, unlike pair.
type proxiedReceiver struct {
	dir, target string
	agentTLS    *tls.Config
	proxy       *delayproxy.Proxy
	cancel      context.CancelFunc
	done        chan error
}

// startProxiedReceiver serves an empty target in dir through a proxy adding
// delay in each direction. The caller must call stop.
func startProxiedReceiver(tb testing.TB, certs testCerts, dir string, delay time.Duration) *proxiedReceiver {
	tb.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	r := &proxiedReceiver{dir: dir, target: filepath.Join(dir, "target.img"), agentTLS: certs.agent, done: make(chan error, 1)}
	tc := transport.DefaultConfig()
	tc.TLS = certs.receiver
	srv, err := receiver.New(receiver.Config{
		Targets: map[string]string{"vol": r.target}, StateDir: filepath.Join(dir, "state"), Transport: tc,
		Logger: slog.New(slog.NewTextHandler(tbWriter{tb}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- srv.Serve(ctx, ln) }()
	r.proxy, err = delayproxy.Start(ctx, delayproxy.Config{Target: ln.Addr().String(), Delay: delay})
	if err != nil {
		r.stop(tb)
		tb.Fatal(err)
	}
	return r
}

// options are the agent's options to sync source to the receiver through
// the proxy.
func (r *proxiedReceiver) options(source string, params chunk.Params) agent.Options {
	tc := transport.DefaultConfig()
	tc.TLS = r.agentTLS
	return agent.Options{Source: source, Addr: r.proxy.Addr(), Volume: "vol", Params: params, Transport: tc}
}

// stop ends the proxy and the receiver and removes dir.
func (r *proxiedReceiver) stop(tb testing.TB) {
	tb.Helper()
	if r.proxy != nil {
		if err := r.proxy.Close(); err != nil {
			tb.Errorf("proxy: %v", err)
		}
	}
	r.cancel()
	if err := <-r.done; err != nil {
		tb.Errorf("receiver: %v", err)
	}
	if err := os.RemoveAll(r.dir); err != nil {
		tb.Error(err)
	}
}

// tbWriter sends log output to tb.Log.
type tbWriter struct{ tb testing.TB }

func (w tbWriter) Write(b []byte) (int, error) {
	w.tb.Log(string(bytes.TrimRight(b, "\n")))
	return len(b), nil
}

// BenchmarkHintedRoundRTT measures a hinted round — 16 changed regions of
// 1 MiB and 200 scattered 16 KiB pages of a 256 MiB volume, about 19 MiB,
// sent at 100 Mbit/s (the agent's --bwlimit) — without delay and with
// 20 ms of round-trip time: the acceptance criterion is that the delay
// adds under 5 % (a round makes a fixed handful of round trips, none per
// chunk or per changed extent). Each iteration first syncs the unchanged
// volume to a fresh receiver outside the timer.
func BenchmarkHintedRoundRTT(b *testing.B) {
	const size = 256 * MiB
	dir := b.TempDir()
	src := filepath.Join(dir, "source.img")
	base := randBytes(43, size)
	changed := bytes.Clone(base)
	var exts []chunk.Extent
	for k := range 16 {
		off := k * (size / 16)
		copy(changed[off:], randBytes(uint64(100+k), MiB))
		exts = append(exts, chunk.Extent{Offset: uint64(off), Length: MiB})
	}
	for k := range 200 {
		off := k*(size/200) + size/400
		copy(changed[off:], randBytes(uint64(300+k), 16<<10))
		exts = append(exts, chunk.Extent{Offset: uint64(off), Length: 16 << 10})
	}
	exts = hint.Normalize(exts, size)
	certs := newTestCerts(b)
	rate, err := transport.ParseRate("100Mbit")
	if err != nil {
		b.Fatal(err)
	}
	for _, rtt := range []time.Duration{0, 20 * time.Millisecond} {
		b.Run(fmt.Sprintf("rtt=%dms", rtt.Milliseconds()), func(b *testing.B) {
			b.SetBytes(int64(hint.Bytes(exts)))
			b.ReportAllocs()
			var wire uint64
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				srv := startProxiedReceiver(b, certs, filepath.Join(dir, fmt.Sprint(i)), rtt/2)
				if err := os.WriteFile(src, base, 0o644); err != nil {
					b.Fatal(err)
				}
				cache, err := agent.OpenCache(filepath.Join(dir, fmt.Sprint(i), "cache"))
				if err != nil {
					b.Fatal(err)
				}
				opt := srv.options(src, chunk.DefaultParams())
				opt.ImageID, opt.Cache = "base", cache
				if _, err := agent.Sync(context.Background(), opt); err != nil {
					b.Fatal(err)
				}
				if err := os.WriteFile(src, changed, 0o644); err != nil {
					b.Fatal(err)
				}
				opt.ImageID, opt.Hints = "changed", fixedHints{base: "base", exts: exts}
				opt.FullScan = agent.FullScanPolicy{Every: 100}
				opt.Transport.BandwidthLimit = rate
				b.StartTimer()
				st, err := agent.Sync(context.Background(), opt)
				b.StopTimer()
				if err != nil {
					b.Fatal(err)
				}
				if st.ScanMode != agent.ScanIncremental {
					b.Fatalf("scan %s: %s", st.ScanMode, st.FullScanReason)
				}
				if got, err := os.ReadFile(srv.target); err != nil || !bytes.Equal(got, changed) {
					b.Fatalf("target differs from the source (read error %v)", err)
				}
				wire += uint64(st.WireBytes)
				srv.stop(b)
				b.StartTimer()
			}
			b.ReportMetric(float64(wire)/float64(b.N), "wire-B/op")
		})
	}
}
