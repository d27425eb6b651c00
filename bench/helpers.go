package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/voldelta/voldelta/internal/delayproxy"
)

// helpers are the subcommands the harness runs inside the namespaces
// (bench re-executes itself through `ip netns exec`).
var helpers = map[string]func(args []string) error{
	"proxy":    helperProxy,
	"sink":     helperSink,
	"probe":    helperProbe,
	"waitport": helperWaitPort,
	"mkbucket": helperMkBucket,
	"render":   helperRender,
	// render-scale DIR: DIR/scale.md and scale.png again from scale.json.
	"render-scale": helperRenderScale,
}

// helperRender: render DIR re-renders DIR/results.md and results.png from
// DIR/results.json (after a change to the report, without a new run).
func helperRender(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: render RESULTS-DIR")
	}
	raw, err := os.ReadFile(filepath.Join(args[0], "results.json"))
	if err != nil {
		return err
	}
	var res Results
	if err := json.Unmarshal(raw, &res); err != nil {
		return err
	}
	return writeResults(&Config{Out: args[0]}, &res)
}

func helperRenderScale(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: render-scale RESULTS-DIR")
	}
	raw, err := os.ReadFile(filepath.Join(args[0], "scale.json"))
	if err != nil {
		return err
	}
	var res ScaleResults
	if err := json.Unmarshal(raw, &res); err != nil {
		return err
	}
	return writeScaleResults(args[0], &res, true)
}

// helperProxy: proxy [-delay D] LISTEN=TARGET... forwards each LISTEN to
// its TARGET with D added in each direction, until SIGTERM/SIGINT.
func helperProxy(args []string) error {
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	delay := fs.Duration("delay", 10*time.Millisecond, "one-way delay")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var proxies []*delayproxy.Proxy
	for _, pair := range fs.Args() {
		listen, target, ok := strings.Cut(pair, "=")
		if !ok {
			return fmt.Errorf("want LISTEN=TARGET, got %q", pair)
		}
		p, err := delayproxy.Start(ctx, delayproxy.Config{Listen: listen, Target: target, Delay: *delay})
		if err != nil {
			return err
		}
		proxies = append(proxies, p)
		fmt.Fprintf(os.Stderr, "proxy %s -> %s, %v each way\n", p.Addr(), target, *delay)
	}
	<-ctx.Done()
	for _, p := range proxies {
		fmt.Fprintf(os.Stderr, "proxy %s: %d bytes up, %d down\n", p.Addr(), p.BytesUp(), p.BytesDown())
		p.Close()
	}
	return nil
}

// The probe protocol: the client sends 'E' then 1-byte pings the sink
// echoes; or 'S', an 8-byte big-endian length N, N bytes, and the sink
// answers with 8 bytes (the count it read) once it has read them all.
func helperSink(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: sink ADDR")
	}
	ln, err := net.Listen("tcp", args[0])
	if err != nil {
		return err
	}
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		<-sig
		ln.Close()
	}()
	return serveProbes(ln)
}

// serveProbes answers probe clients on ln until it is closed.
func serveProbes(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		go serveProbe(c)
	}
}

func serveProbe(c net.Conn) {
	defer c.Close()
	var mode [1]byte
	if _, err := io.ReadFull(c, mode[:]); err != nil {
		return
	}
	switch mode[0] {
	case 'E':
		io.Copy(c, c)
	case 'S':
		var hdr [8]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		want := int64(binary.BigEndian.Uint64(hdr[:]))
		n, _ := io.CopyN(io.Discard, c, want)
		binary.BigEndian.PutUint64(hdr[:], uint64(n))
		c.Write(hdr[:])
	}
}

// helperProbe: probe ADDR BYTES prints a JSON LinkProbe (RTT and payload
// rate) measured against a sink at ADDR.
func helperProbe(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: probe ADDR BYTES")
	}
	n, err := strconv.ParseInt(args[1], 10, 64)
	if err != nil {
		return err
	}
	p, err := runProbe(args[0], n)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(p)
}

// runProbe measures RTT and payload rate against a probe sink at addr,
// sending n bytes.
func runProbe(addr string, n int64) (LinkProbe, error) {
	var p LinkProbe
	// RTT: 20 one-byte round trips on one connection.
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return p, err
	}
	c.(*net.TCPConn).SetNoDelay(true)
	if _, err := c.Write([]byte{'E'}); err != nil {
		return p, err
	}
	var rtts []float64
	b := []byte{0}
	for range 21 {
		t := time.Now()
		if _, err := c.Write(b); err != nil {
			return p, err
		}
		if _, err := io.ReadFull(c, b); err != nil {
			return p, fmt.Errorf("echo: %w", err)
		}
		rtts = append(rtts, float64(time.Since(t).Microseconds())/1000)
	}
	c.Close()
	rtts = rtts[1:] // the first may include connection setup at the far side
	slices.Sort(rtts)
	p.RTTMillisMin, p.RTTMillisMed = rtts[0], rtts[len(rtts)/2]

	// Rate: N bytes, timed from the first write to the sink's answer, less
	// one median RTT (the answer's way back and the last bytes' delay).
	c, err = net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return p, err
	}
	defer c.Close()
	hdr := make([]byte, 9)
	hdr[0] = 'S'
	binary.BigEndian.PutUint64(hdr[1:], uint64(n))
	if _, err := c.Write(hdr); err != nil {
		return p, err
	}
	buf := make([]byte, 256<<10)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	start := time.Now()
	for left := n; left > 0; {
		k := min(left, int64(len(buf)))
		if _, err := c.Write(buf[:k]); err != nil {
			return p, err
		}
		left -= k
	}
	var ans [8]byte
	if _, err := io.ReadFull(c, ans[:]); err != nil {
		return p, fmt.Errorf("sink answer: %w", err)
	}
	secs := time.Since(start).Seconds() - p.RTTMillisMed/1000
	if got := int64(binary.BigEndian.Uint64(ans[:])); got != n {
		return p, fmt.Errorf("sink read %d of %d bytes", got, n)
	}
	p.Bytes, p.Seconds = n, secs
	p.GoodputMbit = float64(n) * 8 / secs / 1e6
	return p, nil
}

// helperWaitPort: waitport ADDR TIMEOUT waits until ADDR accepts a TCP
// connection.
func helperWaitPort(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: waitport ADDR TIMEOUT")
	}
	d, err := time.ParseDuration(args[1])
	if err != nil {
		return err
	}
	deadline := time.Now().Add(d)
	for {
		c, err := net.DialTimeout("tcp", args[0], time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not accepting connections after %v: %w", args[0], d, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// helperMkBucket: mkbucket ENDPOINT BUCKET creates BUCKET (unless it
// exists) on the S3 server at ENDPOINT (plain HTTP), with the credentials
// in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY. voldelta push, unlike
// restic init, does not create its bucket.
func helperMkBucket(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: mkbucket ENDPOINT BUCKET")
	}
	cl, err := minio.New(args[0], &minio.Options{
		Creds: credentials.NewStaticV4(os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY"), "")})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if ok, err := cl.BucketExists(ctx, args[1]); err != nil || ok {
		return err
	}
	return cl.MakeBucket(ctx, args[1], minio.MakeBucketOptions{})
}

// freshDirs makes each directory empty: what an earlier run left in it is
// removed.
func freshDirs(dirs ...string) error {
	for _, d := range dirs {
		if err := os.RemoveAll(d); err != nil {
			return err
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// writeJSONAndMarkdown writes res as dir/name.json (indented) and, unless
// md is empty, md as dir/name.md.
func writeJSONAndMarkdown(dir, name string, res any, md string) error {
	raw, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, name+".json"), append(raw, '\n'), 0o644); err != nil {
		return err
	}
	if md == "" {
		return nil
	}
	return os.WriteFile(filepath.Join(dir, name+".md"), []byte(md), 0o644)
}
