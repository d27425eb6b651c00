package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// faultProxy forwards loopback TCP connections to a target and can cut
// them (close both ends) or stall them (stop forwarding, keep them open).
type faultProxy struct {
	ln      net.Listener
	target  string
	stalled atomic.Bool
	bytes   atomic.Int64
	mu      sync.Mutex
	conns   []net.Conn
}

func startProxy(target string) (*faultProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &faultProxy{ln: ln, target: target}
	go p.serve()
	return p, nil
}

func (p *faultProxy) Addr() string { return p.ln.Addr().String() }

func (p *faultProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		go p.pipe(c, s)
		go p.pipe(s, c)
	}
}

// pipe copies src to dst; while stalled it neither reads nor writes, so
// the peers' windows and socket buffers fill and nothing moves.
func (p *faultProxy) pipe(src, dst net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		for p.stalled.Load() {
			time.Sleep(10 * time.Millisecond)
		}
		n, err := src.Read(buf)
		for p.stalled.Load() { // hold what was read too
			time.Sleep(10 * time.Millisecond)
		}
		if n > 0 {
			p.bytes.Add(int64(n))
			if _, werr := dst.Write(buf[:n]); werr != nil {
				src.Close()
				return
			}
		}
		if err != nil {
			if err == io.EOF {
				if tc, ok := dst.(*net.TCPConn); ok {
					tc.CloseWrite()
					return
				}
			}
			dst.Close()
			return
		}
	}
}

// Cut closes every connection and stops accepting.
func (p *faultProxy) Cut() {
	p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.stalled.Store(false) // let stalled pipes see their closed conns and end
}

func (p *faultProxy) Stall() { p.stalled.Store(true) }

// Close ends the proxy (stalled pipes stay stuck until their conns close).
func (p *faultProxy) Close() { p.Cut() }

// stallFlags returns the stall-detection flags that send and receive
// offer (e.g. --stall-timeout), if any.
func (e *Env) stallFlags() []string {
	var out []string
	for _, c := range []string{"send", "receive"} {
		b, _ := exec.Command(e.Bin, c, "--help").CombinedOutput()
		for _, l := range strings.Split(string(b), "\n") {
			l = strings.TrimSpace(l)
			if strings.HasPrefix(l, "--") && (strings.Contains(l, "stall") || strings.Contains(l, "idle") || strings.Contains(l, "progress-timeout")) {
				out = append(out, c+" "+strings.Join(strings.Fields(l), " "))
			}
		}
	}
	return out
}

// CaseLink runs a first round through a proxy and cuts or stalls the link
// mid-round; it measures how long until send fails, and resumes.
func (e *Env) CaseLink(ctx context.Context, how string) Result {
	res := Result{Case: "link " + how + " mid-round", Verdict: "PASS"}
	if how == "cut" {
		res.Expected = "send fails with a clear error within seconds; not current; the next round ends identical"
	} else {
		res.Expected = fmt.Sprintf("send (default settings) fails with a clear error within 60 s; not current; the next round ends identical (waited at most %s)", e.StallMax)
	}
	g, err := e.newRig("link-"+how, "", 256)
	if err != nil {
		res.failf("setup: %v", err)
		return res
	}
	if flags := e.stallFlags(); len(flags) > 0 {
		res.addObs("stall flags: " + strings.Join(flags, "; "))
	} else if how == "stall" {
		res.addObs("no stall-detection flag in send/receive --help")
	}
	p, err := startProxy(g.r.Addr)
	if err != nil {
		res.failf("proxy: %v", err)
		return res
	}
	defer p.Close()
	s, err := e.StartSend(p.Addr(), g.v0, g.vol, "--bwlimit", "64MiB")
	if err != nil {
		res.failf("send: %v", err)
		return res
	}
	// fault once some data moved and the receiver is applying
	waitFor(60*time.Second, func() bool { return s.Done() || (g.status().Incomplete && p.bytes.Load() > 32*MiB) })
	if s.Done() {
		res.failf("round ended before the fault: %s", sendShort(s.res))
		return res
	}
	at := time.Now()
	logStart := len(g.r.Log())
	if how == "cut" {
		p.Cut()
	} else {
		p.Stall()
	}
	limit := 60 * time.Second
	if how == "stall" {
		limit = e.StallMax
	}
	sr := s.Wait(limit)
	detect := time.Since(at)
	// The receiver side: when did it give up the session?
	st := g.status()
	if sr.Err != nil {
		res.failf("not detected after %.0fs (send killed)", detect.Seconds())
	} else {
		res.addObs(fmt.Sprintf("send detected after %.1fs: %s", detect.Seconds(), sendShort(sr)))
		if sr.Code == 0 {
			res.failf("send reported success")
		} else if how == "stall" && detect > 60*time.Second {
			res.failf("detection took longer than 60 s")
		} else if strings.TrimSpace(sr.Stderr) == "" {
			res.failf("no error message")
		}
	}
	res.addObs("status: " + st.String())
	if st.Current {
		if ok, _ := sameBytes(g.target, g.v0, false); !ok {
			res.failf("current while torn")
			res.DataLost = true
		}
	}
	// Receiver-side detection: when did the receiver end the session?
	if how == "stall" {
		if waitFor(30*time.Second, func() bool {
			return strings.Count(g.r.Log()[logStart:], "level=ERROR")+strings.Count(g.r.Log()[logStart:], "level=WARN") > 0
		}) {
			res.addObs(fmt.Sprintf("receiver ended the session after %.1fs: %s", time.Since(at).Seconds(), clip(lastLevel(g.r.Log()[logStart:], "level=WARN", "level=ERROR"), 200)))
		} else {
			res.addObs(fmt.Sprintf("receiver logged no failure within %.0fs of the stall", time.Since(at).Seconds()))
		}
	}
	p.Cut()
	g.checkAfter(&res, g.v0, false, false)
	return res
}

// ---- disk full

// CaseDiskFull puts a file target on a 64 MiB ext4 and sends 128 MiB; then
// grows the file system online and sends again.
func (e *Env) CaseDiskFull(ctx context.Context) Result {
	res := Result{Case: "disk full: 128 MiB source, target on a 64 MiB ext4", Verdict: "PASS",
		Expected: "the round fails quickly with an error naming space (target full), is not retried forever, nothing committed; after the fs grows the next round commits identical"}
	g, err := e.newRig("disk-full", "", 0)
	if err != nil {
		res.failf("setup: %v", err)
		return res
	}
	g.r.Kill()
	img := g.dir + "/small-fs.img"
	f, _ := os.Create(img)
	f.Truncate(64 * MiB)
	f.Close()
	if _, err := sh("mkfs.ext4", "-q", "-F", img); err != nil {
		res.failf("mkfs: %v", err)
		return res
	}
	dev, err := e.attachLoop(img)
	if err != nil {
		res.failf("losetup: %v", err)
		return res
	}
	mnt := g.dir + "/mnt"
	if err := e.mount(dev, mnt); err != nil {
		res.failf("mount: %v", err)
		return res
	}
	src := g.dir + "/src.img"
	writeFile(src, randBytes(e.Seed+21, 128*MiB))
	target := mnt + "/target.img"
	r, err := e.StartReceiver("", g.state, []string{"vol=" + target})
	if err != nil {
		res.failf("receiver: %v", err)
		return res
	}
	sr := e.Send(r.Addr, src, "vol", 3*time.Minute)
	st := e.Status(g.state, "vol")
	low := strings.ToLower(sr.Stderr)
	res.addObs(fmt.Sprintf("round: %s; status: %s", sendShort(sr), st))
	switch {
	case sr.Err != nil:
		res.failf("not ended within 3 min (retried forever?)")
	case sr.Code == 0:
		res.failf("round reported success on a full disk")
		if ok, _ := sameBytes(target, src, false); !ok {
			res.DataLost = true
		}
	case !(strings.Contains(low, "space") || strings.Contains(low, "full")):
		res.failf("error does not name space/target full")
	}
	if sr.Code != 0 && sr.Dur > 60*time.Second {
		res.failf("took %.0fs to fail", sr.Dur.Seconds())
	}
	if st.Current {
		res.failf("status current after a failed round")
	}
	// Grow: file, loop capacity, online resize2fs.
	if err := os.Truncate(img, 256*MiB); err != nil {
		res.failf("grow: %v", err)
		return res
	}
	if _, err := sh("losetup", "-c", dev); err != nil {
		res.failf("losetup -c: %v", err)
		return res
	}
	if _, err := sh("resize2fs", dev); err != nil {
		// No online resize here (e.g. a container without the capability):
		// stop the receiver, grow the file system offline, mount it again.
		res.addObs("online resize2fs refused, grown offline")
		r.Stop()
		if _, err := sh("umount", mnt); err != nil {
			res.failf("umount: %v", err)
			return res
		}
		sh("e2fsck", "-fy", dev)
		if _, err := sh("resize2fs", dev); err != nil {
			res.failf("resize2fs: %v", err)
			return res
		}
		if err := e.mount(dev, mnt); err != nil {
			res.failf("mount: %v", err)
			return res
		}
		if err := r.Restart(); err != nil {
			res.failf("restart receiver: %v", err)
			return res
		}
	}
	rr := e.SendRetry(r.Addr, src, "vol", 3*time.Minute)
	ok, why := sameBytes(target, src, false)
	st = e.Status(g.state, "vol")
	res.addObs(fmt.Sprintf("after growing the fs to 256 MiB: %s, identical %v %s, status %s", sendShort(rr), ok, why, st))
	if rr.Code != 0 || !ok || !st.Current {
		res.failf("no identical commit after growing")
		if rr.Code == 0 && !ok {
			res.DataLost = true
		}
	}
	r.Kill()
	return res
}
