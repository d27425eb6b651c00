package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/yamux"
)

// Frame types and limits of the wire protocol (transport/spec.md).
const (
	frameHello    = 1
	frameDataOpen = 8
	frameChunk    = 9
	maxFrame      = 9 << 20 // DefaultMaxFrameSize
)

func frame(typ byte, payload []byte) []byte {
	b := make([]byte, 6, 6+len(payload))
	b[0] = typ
	binary.BigEndian.PutUint32(b[2:], uint32(len(payload)))
	return append(b, payload...)
}

// helloPayload is a valid HELLO (protocol 1) for volume with the default
// chunk parameters.
func helloPayload(volume string, size uint64, streams int) []byte {
	var b []byte
	b = append(b, "VDLT"...)
	b = binary.BigEndian.AppendUint16(b, 1)
	b = append(b, byte(len(volume)))
	b = append(b, volume...)
	b = binary.BigEndian.AppendUint64(b, size)
	alg := "rabin-seg/blake3/v1"
	b = append(b, byte(len(alg)))
	b = append(b, alg...)
	b = binary.BigEndian.AppendUint64(b, 0x3da3358b4dc173)
	b = binary.BigEndian.AppendUint32(b, 16<<10)
	b = binary.BigEndian.AppendUint32(b, 64<<10)
	b = binary.BigEndian.AppendUint32(b, 256<<10)
	b = binary.BigEndian.AppendUint64(b, 64<<20)
	b = binary.BigEndian.AppendUint16(b, uint16(streams))
	agent := "faults-hostile"
	b = append(b, byte(len(agent)))
	return append(b, agent...)
}

func (e *Env) agentTLS() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(e.PKI, "agent.pem"), filepath.Join(e.PKI, "agent-key.pem"))
	if err != nil {
		return nil, err
	}
	ca, err := os.ReadFile(filepath.Join(e.PKI, "ca.pem"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13}, nil
}

// CaseHostile is an authenticated client that opens a session with 64 data
// streams and starts a 9 MiB CHUNK frame on each without finishing any.
func (e *Env) CaseHostile(ctx context.Context) Result {
	res := Result{Case: "hostile client: 64 streams, each a partial 9 MiB frame", Verdict: "PASS",
		Expected: "receiver peak RSS (VmHWM) ≤ 256 MiB; it stays up"}
	g, err := e.newRig("hostile", "", 0)
	if err != nil {
		res.failf("setup: %v", err)
		return res
	}
	base, _ := vmHWM(g.r.Pid())
	tc, err := e.agentTLS()
	if err != nil {
		res.failf("tls: %v", err)
		return res
	}
	conn, err := tls.Dial("tcp", g.r.Addr, tc)
	if err != nil {
		res.failf("dial: %v", err)
		return res
	}
	defer conn.Close()
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	cfg.ConnectionWriteTimeout = 2 * time.Minute
	sess, err := yamux.Client(conn, cfg)
	if err != nil {
		res.failf("yamux: %v", err)
		return res
	}
	defer sess.Close()
	ctl, err := sess.OpenStream()
	if err != nil {
		res.failf("open control: %v", err)
		return res
	}
	const streams = 64
	if _, err := ctl.Write(frame(frameHello, helloPayload(g.vol, 256<<20, streams))); err != nil {
		res.failf("hello: %v", err)
		return res
	}
	hdr := make([]byte, 6)
	ctl.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(ctl, hdr); err != nil {
		res.failf("no WELCOME: %v", err)
		return res
	}
	res.addObs(fmt.Sprintf("receiver answered frame type %d", hdr[0]))
	var sent [streams]int64
	done := make(chan struct{})
	for i := range streams {
		st, err := sess.OpenStream()
		if err != nil {
			res.failf("open stream %d: %v", i, err)
			break
		}
		go func() {
			defer func() { done <- struct{}{} }()
			st.SetWriteDeadline(time.Now().Add(30 * time.Second))
			if _, err := st.Write(frame(frameDataOpen, []byte{0, byte(i)})); err != nil {
				return
			}
			h := make([]byte, 6+13)
			h[0] = frameChunk
			binary.BigEndian.PutUint32(h[2:], maxFrame)
			binary.BigEndian.PutUint64(h[6:], uint64(i))
			h[14] = 0
			binary.BigEndian.PutUint32(h[15:], 8<<20)
			if _, err := st.Write(h); err != nil {
				return
			}
			junk := make([]byte, 256<<10)
			for n := int64(13); n < maxFrame-1; {
				k := min(int64(len(junk)), maxFrame-1-n)
				w, err := st.Write(junk[:k])
				n += int64(w)
				sent[i] = n
				if err != nil {
					return
				}
			}
		}()
	}
	// Let every stream push what the receiver takes (writes stop at its
	// windows), then read the peak.
	deadline := time.After(40 * time.Second)
	finished := 0
wait:
	for finished < streams {
		select {
		case <-done:
			finished++
		case <-deadline:
			break wait
		}
	}
	time.Sleep(2 * time.Second)
	var total int64
	for i := range sent {
		total += sent[i]
	}
	peak, err := vmHWM(g.r.Pid())
	alive := !g.r.Exited()
	if err != nil && alive {
		res.failf("VmHWM: %v", err)
	}
	res.addObs(fmt.Sprintf("client pushed %d MiB in %d streams (%d finished their writes); receiver VmHWM %d MiB (baseline %d MiB); alive %v",
		total>>20, streams, finished, peak>>20, base>>20, alive))
	if peak > 256<<20 {
		res.failf("peak RSS above 256 MiB")
	}
	if !alive {
		res.failf("receiver died: %s", lastLines(g.r.Log(), 2))
	}
	return res
}
