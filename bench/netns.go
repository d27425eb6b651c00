package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The emulated WAN: two namespaces and one veth pair, in link-local
// addresses that are never routed anywhere else.
const (
	nsSrc  = "vdbench-src"
	nsDst  = "vdbench-dst"
	ifSrc  = "vdb-s"
	ifDst  = "vdb-d"
	ipSrc  = "169.254.210.1"
	ipDst  = "169.254.210.2"
	prefix = "/30"
)

// Service ports in the destination namespace: the service listens on
// loopback, its delay proxy on the veth address.
const (
	portVoldelta = 7300
	portMinio    = 9000
	portRsync    = 8873
	portProbe    = 5201
	proxyOffset  = 10000 // proxy port = service port + offset
)

func proxyAddr(port int) string { return fmt.Sprintf("%s:%d", ipDst, port+proxyOffset) }
func localAddr(port int) string { return fmt.Sprintf("127.0.0.1:%d", port) }

// Topology is the running WAN emulation.
type Topology struct {
	cfg   *Config
	proxy *Service
	sink  *Service
}

// removeStaleNetns deletes the namespaces a killed earlier run left, after
// ending the processes still inside them (which that run started).
func removeStaleNetns(ctx context.Context) {
	for _, ns := range []string{nsSrc, nsDst} {
		if _, err := os.Stat("/run/netns/" + ns); err != nil {
			continue
		}
		log.Printf("removing namespace %s left by an earlier run", ns)
		killNetnsPids(ctx, ns)
		if _, err := sh(ctx, "ip", "netns", "del", ns); err != nil {
			log.Printf("cleanup: %v", err)
		}
	}
}

func killNetnsPids(ctx context.Context, ns string) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		out, _ := sh(ctx, "ip", "netns", "pids", ns)
		if out == "" {
			return
		}
		for _, f := range strings.Fields(out) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
				syscall.Kill(pid, sig)
			}
		}
		time.Sleep(3 * time.Second)
	}
}

func setupTopology(ctx context.Context, cfg *Config, cl *Cleanup) (*Topology, error) {
	for _, ns := range []string{nsSrc, nsDst} {
		if _, err := sh(ctx, "ip", "netns", "add", ns); err != nil {
			return nil, err
		}
		cl.Add("delete netns "+ns, func() error {
			killNetnsPids(context.Background(), ns)
			_, err := sh(context.Background(), "ip", "netns", "del", ns)
			return err
		})
	}
	steps := [][]string{
		{"ip", "link", "add", ifSrc, "netns", nsSrc, "type", "veth", "peer", "name", ifDst, "netns", nsDst},
		{"ip", "-n", nsSrc, "addr", "add", ipSrc + prefix, "dev", ifSrc},
		{"ip", "-n", nsDst, "addr", "add", ipDst + prefix, "dev", ifDst},
		{"ip", "-n", nsSrc, "link", "set", "lo", "up"},
		{"ip", "-n", nsDst, "link", "set", "lo", "up"},
		{"ip", "-n", nsSrc, "link", "set", ifSrc, "up"},
		{"ip", "-n", nsDst, "link", "set", ifDst, "up"},
		// Token bucket each way: the rate, a burst of a few packets and a
		// queue of ~20 ms at that rate.
		{"tc", "-n", nsSrc, "qdisc", "add", "dev", ifSrc, "root", "tbf", "rate", cfg.Rate, "burst", "64kb", "latency", "20ms"},
		{"tc", "-n", nsDst, "qdisc", "add", "dev", ifDst, "root", "tbf", "rate", cfg.Rate, "burst", "64kb", "latency", "20ms"},
	}
	for _, s := range steps {
		if _, err := sh(ctx, s...); err != nil {
			return nil, err
		}
	}
	t := &Topology{cfg: cfg}
	logs := cfg.Out + "/logs/"
	// The probe sink, and one delay proxy per service port, in the
	// destination namespace: every tool crosses the shaped veth and the
	// same delay.
	var err error
	t.sink, err = (&Cmd{Name: "probe-sink", Side: SideDst, Log: logs + "net.log",
		Args: []string{cfg.Self, "sink", localAddr(portProbe)}}).Start(ctx, cl)
	if err != nil {
		return nil, err
	}
	pargs := []string{cfg.Self, "proxy", "-delay", cfg.Delay.String()}
	for _, p := range []int{portVoldelta, portMinio, portRsync, portProbe} {
		pargs = append(pargs, proxyAddr(p)+"="+localAddr(p))
	}
	t.proxy, err = (&Cmd{Name: "delay-proxy", Side: SideDst, Log: logs + "net.log", Args: pargs}).Start(ctx, cl)
	if err != nil {
		return nil, err
	}
	for _, a := range []string{localAddr(portProbe), proxyAddr(portProbe)} {
		if err := waitPort(ctx, cfg, SideDst, a, 20*time.Second); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// waitPort waits until addr accepts connections from inside side.
func waitPort(ctx context.Context, cfg *Config, side Side, addr string, timeout time.Duration) error {
	_, err := (&Cmd{Name: "wait " + addr, Side: side, Args: []string{cfg.Self, "waitport", addr, timeout.String()}}).Run(ctx)
	return err
}

// LinkCounters are the byte counters of the source end of the veth: Tx
// went source → destination, Rx destination → source.
type LinkCounters struct{ Tx, Rx uint64 }

func readLink(ctx context.Context) (LinkCounters, error) {
	out, err := sh(ctx, "ip", "-n", nsSrc, "-s", "-j", "link", "show", "dev", ifSrc)
	if err != nil {
		return LinkCounters{}, err
	}
	var v []struct {
		Stats64 struct {
			Rx struct{ Bytes uint64 } `json:"rx"`
			Tx struct{ Bytes uint64 } `json:"tx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil || len(v) != 1 {
		return LinkCounters{}, fmt.Errorf("parse ip -s -j link: %v: %q", err, out)
	}
	return LinkCounters{Tx: v[0].Stats64.Tx.Bytes, Rx: v[0].Stats64.Rx.Bytes}, nil
}

// Sub is the traffic between two readings.
func (a LinkCounters) Sub(b LinkCounters) LinkCounters { return LinkCounters{a.Tx - b.Tx, a.Rx - b.Rx} }

// LinkProbe is a measurement of the emulated link through the delay proxy,
// from the source namespace.
type LinkProbe struct {
	At             string  `json:"at"`
	RTTMillisMin   float64 `json:"rtt_ms_min"`
	RTTMillisMed   float64 `json:"rtt_ms_median"`
	Bytes          int64   `json:"bytes"`
	Seconds        float64 `json:"seconds"`
	GoodputMbit    float64 `json:"goodput_mbit_s"` // payload bytes / s
	LinkTxBytes    uint64  `json:"link_tx_bytes"`  // on the veth, headers included
	LinkRateMbit   float64 `json:"link_rate_mbit_s"`
	LinkRateBytesS float64 `json:"link_rate_bytes_s"`
	// RateSamplesMbit are the veth rates of every probe; the fields above
	// are the fastest's.
	RateSamplesMbit []float64 `json:"rate_samples_mbit_s,omitempty"`
}

// probeLink measures RTT (1-byte ping-pongs) and rate (a timed bulk send)
// from the source namespace through the probe's delay proxy, n times,
// and keeps the fastest: the link's capacity, less disturbed by whatever
// else the machine was doing.
func (t *Topology) probeLink(ctx context.Context, bytes int64, n int) (LinkProbe, error) {
	var best LinkProbe
	var rates []float64
	for range n {
		p, err := t.probeOnce(ctx, bytes)
		if err != nil {
			return best, err
		}
		rates = append(rates, p.LinkRateMbit)
		if p.LinkRateMbit > best.LinkRateMbit {
			best = p
		}
	}
	best.RateSamplesMbit = rates
	log.Printf("link: RTT %.1f ms (median of 20; min %.1f), rate %.1f Mbit/s payload, %.1f Mbit/s on the veth (best of %v)",
		best.RTTMillisMed, best.RTTMillisMin, best.GoodputMbit, best.LinkRateMbit, rounded(rates))
	return best, nil
}

func rounded(v []float64) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(int(x*10+0.5)) / 10
	}
	return out
}

func (t *Topology) probeOnce(ctx context.Context, bytes int64) (LinkProbe, error) {
	before, err := readLink(ctx)
	if err != nil {
		return LinkProbe{}, err
	}
	var out bytesBuffer
	if _, err := (&Cmd{Name: "probe", Side: SideSrc, Out: &out.Buffer, Log: t.cfg.Out + "/logs/net.log",
		Args: []string{t.cfg.Self, "probe", proxyAddr(portProbe), strconv.FormatInt(bytes, 10)}}).Run(ctx); err != nil {
		return LinkProbe{}, err
	}
	after, err := readLink(ctx)
	if err != nil {
		return LinkProbe{}, err
	}
	var p LinkProbe
	if err := json.Unmarshal(out.Bytes(), &p); err != nil {
		return p, fmt.Errorf("probe output %q: %w", out.String(), err)
	}
	p.At = time.Now().Format(time.RFC3339)
	p.LinkTxBytes = after.Sub(before).Tx
	p.LinkRateBytesS = float64(p.LinkTxBytes) / p.Seconds
	p.LinkRateMbit = p.LinkRateBytesS * 8 / 1e6
	return p, nil
}

type bytesBuffer struct{ bytes.Buffer }
