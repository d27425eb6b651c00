package e2e

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/voldelta/voldelta/agent"
	"github.com/voldelta/voldelta/internal/delayproxy"
	"github.com/voldelta/voldelta/receiver"
	"github.com/voldelta/voldelta/transport"
)

// logCapture is a slog handler that keeps every record's text (message
// and attributes) and passes it on to the test log.
type logCapture struct {
	t     *testing.T
	mu    *sync.Mutex
	lines *[]string
	wake  chan struct{}
	attrs []slog.Attr
}

func newLogCapture(t *testing.T) *logCapture {
	return &logCapture{t: t, mu: new(sync.Mutex), lines: new([]string), wake: make(chan struct{}, 1)}
}

func (h *logCapture) Enabled(context.Context, slog.Level) bool { return true }
func (h *logCapture) WithGroup(string) slog.Handler            { return h }
func (h *logCapture) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(append([]slog.Attr(nil), h.attrs...), as...)
	return &c
}

func (h *logCapture) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", r.Level, r.Message)
	for _, a := range h.attrs {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
	}
	r.Attrs(func(a slog.Attr) bool { fmt.Fprintf(&b, " %s=%v", a.Key, a.Value); return true })
	h.mu.Lock()
	*h.lines = append(*h.lines, b.String())
	h.mu.Unlock()
	select {
	case h.wake <- struct{}{}:
	default:
	}
	return nil
}

// waitFor waits until a record containing every one of subs was logged,
// failing the test after a generous safety limit (this bounds a hang; it
// measures nothing).
func (h *logCapture) waitFor(subs ...string) string {
	h.t.Helper()
	safety := time.After(2 * time.Minute)
	for {
		h.mu.Lock()
		for _, l := range *h.lines {
			ok := true
			for _, s := range subs {
				ok = ok && strings.Contains(l, s)
			}
			if ok {
				h.mu.Unlock()
				return l
			}
		}
		h.mu.Unlock()
		select {
		case <-h.wake:
		case <-safety:
			h.t.Fatalf("no log record with %q", subs)
		}
	}
}

// TestStalledLink: the link between agent and receiver stops forwarding
// mid-round without a FIN or a reset. Both ends must notice within their
// stall timeout (2 s here), say "no data from the peer for 2s", and the
// receiver must release the volume so that the next round, over a working
// link, commits.
func TestStalledLink(t *testing.T) {
	p := newPair(t, pairOpts{})
	p.stop()
	logs := newLogCapture(t)
	p.srvCfg.Logger = slog.New(logs)
	p.srvCfg.Transport.StallTimeout = 2 * time.Second
	p.start()

	src := filepath.Join(p.dir, "source.img")
	data := randBytes(61, 64*MiB)
	writeFile(t, src, data)
	proxy, err := delayproxy.Start(t.Context(), delayproxy.Config{Target: p.addr})
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()

	opt := p.options(src, "vol")
	opt.Addr = proxy.Addr()
	opt.Transport.StallTimeout = 2 * time.Second
	opt.Transport.BandwidthLimit = 16 << 20 // the round lasts seconds: the stall comes in its middle
	var stalledAt atomic.Int64
	opt.Progress = func(pr agent.Progress) {
		if pr.SentBytes > 0 && stalledAt.CompareAndSwap(0, time.Now().UnixNano()) {
			proxy.Stall()
		}
	}
	// Bound a hang (before the fix: ~5 minutes), so that it fails as such.
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	_, err = agent.Sync(ctx, opt)
	took := time.Since(time.Unix(0, stalledAt.Load()))
	t.Logf("agent: %v (%.1fs after the stall)", err, took.Seconds())
	if stalledAt.Load() == 0 {
		t.Fatal("the round ended before any chunk was sent")
	}
	if !errors.Is(err, transport.ErrStalled) || !strings.Contains(err.Error(), "no data from the peer for 2s") {
		t.Fatalf("agent error %v: want transport.ErrStalled saying no data from the peer for 2s", err)
	}
	if !transport.IsConnLost(err) {
		t.Errorf("a stall should count as a lost connection (retryable): %v", err)
	}
	line := logs.waitFor("no data from the peer for 2s")
	t.Logf("receiver: %s", line)

	// The volume is free: the next round, over a working link, commits.
	st := p.sync(src, "vol")
	assertSame(t, p.targets["vol"], data)
	vs, err := receiver.ReadStatus(p.stateDir, "vol")
	if err != nil {
		t.Fatal(err)
	}
	if !vs.Current || vs.Generation != st.Generation {
		t.Fatalf("after the retry: current %v, generation %d (agent %d)", vs.Current, vs.Generation, st.Generation)
	}
}
