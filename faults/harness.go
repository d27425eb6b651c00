package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const MiB = 1 << 20

// Result is one row of the fault table.
type Result struct {
	Case     string   `json:"case"`
	Expected string   `json:"expected"`
	Observed string   `json:"observed"`
	Verdict  string   `json:"verdict"` // PASS, FAIL or SKIP
	DataLost bool     `json:"data_lost"`
	Seconds  float64  `json:"seconds"`
	Details  []string `json:"details,omitempty"`
}

func (r *Result) failf(format string, a ...any) {
	r.Verdict = "FAIL"
	r.addObs(fmt.Sprintf(format, a...))
}

func (r *Result) addObs(s string) {
	if r.Observed == "" {
		r.Observed = s
	} else {
		r.Observed += "; " + s
	}
}

func (r *Result) detail(format string, a ...any) {
	r.Details = append(r.Details, fmt.Sprintf(format, a...))
}

// Env is what every case runs with: the binary under test, a work
// directory, the knobs and a stack of cleanups (processes, mounts, loop
// devices) run at the end or on Ctrl-C.
type Env struct {
	Bin      string
	Dir      string
	PKI      string
	Kills    int
	SizeMiB  int
	Seed     uint64
	StallMax time.Duration
	Verbose  bool
	Log      io.Writer

	mu       sync.Mutex
	cleanups []func()
	rng      *rand.Rand
	n        int
}

// NewEnv builds the binary from the module at root into a temporary
// directory (so the current tree is what is tested) and makes the PKI.
func NewEnv(root string, dir string) (*Env, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	e := &Env{Dir: dir, Kills: 20, SizeMiB: 128, Seed: uint64(time.Now().UnixNano()), StallMax: 120 * time.Second, Log: os.Stderr}
	e.Bin = filepath.Join(dir, "bin", "voldelta")
	if bin := os.Getenv("FAULTS_BIN"); bin != "" { // a binary built elsewhere
		e.Bin = bin
	} else {
		// The tree may be mid-edit by others: try again for a few minutes.
		var err error
		for attempt := 0; attempt < 12; attempt++ {
			build := exec.Command("go", "build", "-o", e.Bin, "./cmd/voldelta")
			build.Dir = root
			var out bytes.Buffer
			build.Stdout, build.Stderr = &out, &out
			if err = build.Run(); err == nil {
				break
			}
			err = fmt.Errorf("go build ./cmd/voldelta (the tree under test): %v\n%s", err, out.String())
			fmt.Fprintf(os.Stderr, "faults: the tree does not build, trying again in 15 s: %s\n", oneLine(out.String()))
			time.Sleep(15 * time.Second)
		}
		if err != nil {
			return nil, err
		}
	}
	e.PKI = filepath.Join(dir, "pki")
	if _, stderr, code, err := e.run(context.Background(), 30*time.Second, "certs", "--dir", e.PKI, "--hosts", "127.0.0.1"); err != nil || code != 0 {
		return nil, fmt.Errorf("voldelta certs: exit %d %v: %s", code, err, stderr)
	}
	return e, nil
}

func (e *Env) SetSeed(seed uint64) {
	e.Seed = seed
	e.rng = rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
}

func (e *Env) rand() *rand.Rand {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.rng == nil {
		e.rng = rand.New(rand.NewPCG(e.Seed, e.Seed^0x9e3779b97f4a7c15))
	}
	return e.rng
}

func (e *Env) logf(format string, a ...any) {
	fmt.Fprintf(e.Log, "%s faults: %s\n", time.Now().UTC().Format("15:04:05"), fmt.Sprintf(format, a...))
}

// Defer pushes a cleanup; it runs in Cleanup (last pushed first).
func (e *Env) Defer(f func()) {
	e.mu.Lock()
	e.cleanups = append(e.cleanups, f)
	e.mu.Unlock()
}

// Cleanup runs every pending cleanup.
func (e *Env) Cleanup() {
	for {
		e.mu.Lock()
		if len(e.cleanups) == 0 {
			e.mu.Unlock()
			return
		}
		f := e.cleanups[len(e.cleanups)-1]
		e.cleanups = e.cleanups[:len(e.cleanups)-1]
		e.mu.Unlock()
		f()
	}
}

// caseDir returns a fresh directory for one case.
func (e *Env) caseDir(name string) string {
	e.mu.Lock()
	e.n++
	n := e.n
	e.mu.Unlock()
	d := filepath.Join(e.Dir, fmt.Sprintf("%02d-%s", n, regexp.MustCompile(`[^A-Za-z0-9]+`).ReplaceAllString(name, "-")))
	os.RemoveAll(d)
	os.MkdirAll(d, 0o755)
	return d
}

func (e *Env) tlsArgs(side string) []string {
	return []string{"--tls-cert", filepath.Join(e.PKI, side+".pem"), "--tls-key", filepath.Join(e.PKI, side+"-key.pem"), "--tls-ca", filepath.Join(e.PKI, "ca.pem")}
}

// run runs the binary to completion (bounded by timeout) and returns
// stdout, stderr and the exit code.
func (e *Env) run(ctx context.Context, timeout time.Duration, args ...string) (string, string, int, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.Bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() == context.DeadlineExceeded {
		return out.String(), errb.String(), -1, fmt.Errorf("voldelta %s: still running after %s (killed)", args[0], timeout)
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), errb.String(), ee.ExitCode(), nil
	}
	return out.String(), errb.String(), 0, err
}

// ---- receiver processes

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Receiver is a running `voldelta receive`.
type Receiver struct {
	Addr     string
	StateDir string
	cmd      *exec.Cmd
	log      *syncBuf
	exited   chan struct{}
	exitErr  error
	args     []string
	env      *Env
}

func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// StartReceiver starts `voldelta receive` with the targets (NAME=PATH) on
// addr ("" picks one) and waits until it listens. It returns an error
// holding the log if it exits first.
func (e *Env) StartReceiver(addr, stateDir string, targets []string, extra ...string) (*Receiver, error) {
	if addr == "" {
		addr = freeAddr()
	}
	args := []string{"receive", "--listen", addr, "--state-dir", stateDir, "--log-level", "debug"}
	for _, t := range targets {
		args = append(args, "--target", t)
	}
	if !contains(extra, "--insecure") {
		args = append(args, e.tlsArgs("receiver")...)
	}
	args = append(args, extra...)
	r := &Receiver{Addr: addr, StateDir: stateDir, log: &syncBuf{}, exited: make(chan struct{}), args: args, env: e}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ { // the port may not be free yet right after a kill
		if err := r.start(); err == nil {
			return r, nil
		} else {
			lastErr = err
			if !strings.Contains(err.Error(), "address already in use") {
				break
			}
			time.Sleep(300 * time.Millisecond)
		}
	}
	return nil, lastErr
}

func (r *Receiver) start() error {
	r.log = &syncBuf{}
	r.exited = make(chan struct{})
	r.cmd = exec.Command(r.env.Bin, r.args...)
	stderr, err := r.cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := r.cmd.Start(); err != nil {
		return err
	}
	cmd := r.cmd
	exited := r.exited
	r.env.Defer(func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
	})
	ready := make(chan struct{})
	logb := r.log
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		once := false
		for sc.Scan() {
			logb.Write([]byte(sc.Text() + "\n"))
			if !once && strings.Contains(sc.Text(), "receiver listening") {
				once = true
				close(ready)
			}
		}
		r.exitErr = cmd.Wait()
		if !once {
			close(ready)
		}
		close(exited)
	}()
	select {
	case <-ready:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		return fmt.Errorf("receiver not listening after 30 s: %s", logb.String())
	}
	select {
	case <-exited:
		return fmt.Errorf("receiver exited: %v: %s", r.exitErr, lastLines(logb.String(), 3))
	default:
	}
	return nil
}

// Restart starts the receiver again with the same arguments.
func (r *Receiver) Restart() error {
	r.Kill()
	var err error
	for attempt := 0; attempt < 10; attempt++ {
		if err = r.start(); err == nil || !strings.Contains(err.Error(), "address already in use") {
			return err
		}
		time.Sleep(300 * time.Millisecond)
	}
	return err
}

func (r *Receiver) Pid() int { return r.cmd.Process.Pid }

// Kill SIGKILLs the receiver and waits for it.
func (r *Receiver) Kill() {
	select {
	case <-r.exited:
		return
	default:
	}
	r.cmd.Process.Signal(syscall.SIGKILL)
	<-r.exited
}

// Stop ends it with SIGTERM (SIGKILL after 10 s).
func (r *Receiver) Stop() {
	select {
	case <-r.exited:
		return
	default:
	}
	r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.exited:
	case <-time.After(10 * time.Second):
		r.Kill()
	}
}

func (r *Receiver) Log() string { return r.log.String() }

// Exited reports whether the process ended.
func (r *Receiver) Exited() bool {
	select {
	case <-r.exited:
		return true
	default:
		return false
	}
}

// ---- send

// SendResult is the outcome of one `voldelta send`.
type SendResult struct {
	Code   int
	Stderr string
	Dur    time.Duration
	Stats  map[string]any
	Err    error // the process could not be run or timed out
}

func (s SendResult) String() string {
	if s.Err != nil {
		return s.Err.Error()
	}
	if s.Code == 0 {
		return fmt.Sprintf("exit 0 (gen %v) in %.1fs", s.Stats["generation"], s.Dur.Seconds())
	}
	return fmt.Sprintf("exit %d in %.1fs: %s", s.Code, s.Dur.Seconds(), oneLine(s.Stderr))
}

// Sender is a running `voldelta send`.
type Sender struct {
	cmd    *exec.Cmd
	start  time.Time
	stderr *syncBuf
	stats  string
	done   chan struct{}
	res    SendResult
}

func (e *Env) StartSend(addr, source, volume string, extra ...string) (*Sender, error) {
	stats := filepath.Join(e.Dir, fmt.Sprintf("stats-%d.json", e.rand().Uint64()))
	args := []string{"send", "--source", source, "--to", addr, "--volume", volume, "-q", "--progress", "never", "--stats-json", stats, "--log-level", "info"}
	if !contains(extra, "--insecure") {
		args = append(args, e.tlsArgs("agent")...)
	}
	args = append(args, extra...)
	return e.startProc(args, nil, stats)
}

// startProc starts the binary with args (and extra environment); stats is
// the --stats-json file it writes, read when it exits.
func (e *Env) startProc(args, env []string, stats string) (*Sender, error) {
	s := &Sender{cmd: exec.Command(e.Bin, args...), stderr: &syncBuf{}, stats: stats, done: make(chan struct{})}
	s.cmd.Stderr = s.stderr
	if env != nil {
		s.cmd.Env = append(os.Environ(), env...)
	}
	s.start = time.Now()
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	e.Defer(func() {
		select {
		case <-s.done:
		default:
			s.cmd.Process.Kill()
			<-s.done
		}
	})
	go func() {
		err := s.cmd.Wait()
		s.res.Dur = time.Since(s.start)
		s.res.Stderr = s.stderr.String()
		if ee, ok := err.(*exec.ExitError); ok {
			s.res.Code = ee.ExitCode()
		} else if err != nil {
			s.res.Err = err
		}
		if b, err := os.ReadFile(stats); err == nil {
			json.Unmarshal(b, &s.res.Stats)
		}
		os.Remove(stats)
		close(s.done)
	}()
	return s, nil
}

func (s *Sender) Pid() int { return s.cmd.Process.Pid }

func (s *Sender) Kill() {
	select {
	case <-s.done:
	default:
		s.cmd.Process.Signal(syscall.SIGKILL)
	}
	<-s.done
}

// Wait waits at most timeout; on timeout it kills the sender and says so.
func (s *Sender) Wait(timeout time.Duration) SendResult {
	select {
	case <-s.done:
	case <-time.After(timeout):
		s.Kill()
		s.res.Err = fmt.Errorf("send still running after %s (killed)", timeout)
	}
	return s.res
}

func (s *Sender) Done() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// Send runs one round to completion (bounded by timeout).
func (e *Env) Send(addr, source, volume string, timeout time.Duration, extra ...string) SendResult {
	s, err := e.StartSend(addr, source, volume, extra...)
	if err != nil {
		return SendResult{Err: err, Code: -1}
	}
	return s.Wait(timeout)
}

// SendRetry runs rounds until one succeeds or fails with a non-retryable
// error: "busy" (the receiver has not yet seen the killed agent go) and
// "shutting down" are retried for up to 30 s.
func (e *Env) SendRetry(addr, source, volume string, timeout time.Duration, extra ...string) SendResult {
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := e.Send(addr, source, volume, timeout, extra...)
		if r.Code == 0 || r.Err != nil || time.Now().After(deadline) {
			return r
		}
		low := strings.ToLower(r.Stderr)
		if !strings.Contains(low, "busy") && !strings.Contains(low, "connection refused") && !strings.Contains(low, "shutting down") {
			return r
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// ---- status

type Status struct {
	Volume     string `json:"volume"`
	Current    bool   `json:"current"`
	Incomplete bool   `json:"incomplete"`
	Generation uint64 `json:"generation"`
	Root       string `json:"root_hash"`
	Size       uint64 `json:"size"`
	Exit       int    `json:"-"`
	Stderr     string `json:"-"`
	Missing    bool   `json:"-"` // no state for the volume
}

func (s Status) String() string {
	switch {
	case s.Missing:
		return "no state"
	case s.Exit != 0:
		return fmt.Sprintf("status exit %d: %s", s.Exit, clip(oneLine(s.Stderr), 110))
	case s.Current:
		return fmt.Sprintf("current gen %d", s.Generation)
	case s.Incomplete:
		return fmt.Sprintf("incomplete (last gen %d)", s.Generation)
	default:
		return fmt.Sprintf("not current (gen %d)", s.Generation)
	}
}

// Status runs `voldelta status --json` for one volume.
func (e *Env) Status(stateDir, volume string) Status {
	out, stderr, code, err := e.run(context.Background(), 30*time.Second, "status", "--state-dir", stateDir, "--volume", volume, "--json")
	st := Status{Exit: code, Stderr: stderr}
	if err != nil {
		st.Exit, st.Stderr = -1, err.Error()
		return st
	}
	if code != 0 {
		low := strings.ToLower(stderr)
		if strings.Contains(low, "no state") || strings.Contains(low, "never") || strings.Contains(low, "not found") || strings.Contains(low, "no such") {
			st.Missing = true
		}
		return st
	}
	out = strings.TrimSpace(out)
	if strings.HasPrefix(out, "[") {
		var all []Status
		if err := json.Unmarshal([]byte(out), &all); err != nil || len(all) == 0 {
			st.Missing = len(all) == 0 && err == nil
			return st
		}
		all[0].Exit = code
		return all[0]
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		st.Exit, st.Stderr = -2, "status --json: "+err.Error()
	}
	return st
}

// ---- data

// randFill fills b from seed.
func randFill(seed uint64, b []byte) {
	var s [32]byte
	for i := range 8 {
		s[i] = byte(seed >> (8 * i))
	}
	rand.NewChaCha8(s).Read(b)
}

func randBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	randFill(seed, b)
	return b
}

// volumeV0 is a source of size bytes: random, with a zero region and a
// repeated region (so chunks recur).
func volumeV0(seed uint64, size int) []byte {
	b := randBytes(seed, size)
	clear(b[size/8 : size/8+size/16])
	copy(b[size/2:size/2+2*MiB], b[size/4:size/4+2*MiB])
	return b
}

// volumeV1 is v0 changed the way a database or file system changes: 1 MiB
// inserted at 1/5 (everything after shifts: local copies), 2 MiB
// overwritten at 3/5, 512 KiB appended.
func volumeV1(seed uint64, v0 []byte) []byte {
	size := len(v0)
	ins := randBytes(seed+1, MiB)
	at := size / 5
	out := make([]byte, 0, size+MiB+MiB/2)
	out = append(out, v0[:at]...)
	out = append(out, ins...)
	out = append(out, v0[at:]...)
	copy(out[size*3/5:], randBytes(seed+2, 2*MiB))
	out = append(out, randBytes(seed+3, MiB/2)...)
	return out
}

func writeFile(path string, b []byte) error {
	return os.WriteFile(path, b, 0o644)
}

// sameBytes compares target with the source file: (true, "") when the
// target holds exactly the source's bytes (a block device: its first
// len(source) bytes), else a description of the first difference.
func sameBytes(target, source string, block bool) (bool, string) {
	sf, err := os.Open(source)
	if err != nil {
		return false, err.Error()
	}
	defer sf.Close()
	tf, err := os.Open(target)
	if err != nil {
		return false, "target: " + err.Error()
	}
	defer tf.Close()
	ssz, _ := sf.Seek(0, io.SeekEnd)
	tsz, _ := tf.Seek(0, io.SeekEnd)
	sf.Seek(0, io.SeekStart)
	tf.Seek(0, io.SeekStart)
	if !block && ssz != tsz {
		return false, fmt.Sprintf("target has %d bytes, source %d", tsz, ssz)
	}
	if block && tsz < ssz {
		return false, fmt.Sprintf("device has %d bytes, source %d", tsz, ssz)
	}
	a, b := make([]byte, 4*MiB), make([]byte, 4*MiB)
	var off int64
	for off < ssz {
		n := min(int64(len(a)), ssz-off)
		if _, err := io.ReadFull(sf, a[:n]); err != nil {
			return false, "read source: " + err.Error()
		}
		if _, err := io.ReadFull(tf, b[:n]); err != nil {
			return false, "read target: " + err.Error()
		}
		if !bytes.Equal(a[:n], b[:n]) {
			i := 0
			for a[i] == b[i] {
				i++
			}
			return false, fmt.Sprintf("differs at byte %d", off+int64(i))
		}
		off += n
	}
	return true, ""
}

// ---- system helpers

func isRoot() bool { return os.Geteuid() == 0 }

func sh(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// attachLoop attaches file to a free loop device and registers its detach.
func (e *Env) attachLoop(file string) (string, error) {
	dev, err := sh("losetup", "--find", "--show", file)
	if err != nil {
		return "", err
	}
	e.Defer(func() { sh("losetup", "-d", dev) })
	return dev, nil
}

func detachLoop(dev string) { sh("losetup", "-d", dev) }

// mount mounts dev on dir and registers the unmount.
func (e *Env) mount(dev, dir string, opts ...string) error {
	os.MkdirAll(dir, 0o755)
	args := append(append([]string{}, opts...), dev, dir)
	if _, err := sh("mount", args...); err != nil {
		return err
	}
	e.Defer(func() { sh("umount", dir) })
	return nil
}

func vmHWM(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			f := strings.Fields(l)
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10, nil
		}
	}
	return 0, errors.New("no VmHWM")
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndex(s, "\n"); i >= 0 {
		s = s[i+1:]
	}
	if len(s) > 220 {
		s = s[:220] + "…"
	}
	return s
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, " | ")
}

// logTimes returns the wall-clock times of the receiver log lines whose
// msg is msg (text handler: time=... msg=...), in order.
func logTimes(log, msg string) []time.Time {
	var out []time.Time
	for _, l := range strings.Split(log, "\n") {
		if !strings.Contains(l, "msg="+msg) && !strings.Contains(l, `msg="`+msg+`"`) {
			continue
		}
		if !strings.HasPrefix(l, "time=") {
			continue
		}
		f := strings.Fields(l)[0][len("time="):]
		if t, err := time.Parse(time.RFC3339Nano, f); err == nil {
			out = append(out, t)
		}
	}
	return out
}

// logField returns field k of the last log line with msg.
func logField(log, msg, k string) string {
	var v string
	for _, l := range strings.Split(log, "\n") {
		if !strings.Contains(l, "msg="+msg) && !strings.Contains(l, `msg="`+msg+`"`) {
			continue
		}
		for _, f := range strings.Fields(l) {
			if strings.HasPrefix(f, k+"=") {
				v = strings.Trim(f[len(k)+1:], `"`)
			}
		}
	}
	return v
}

// sleepCtx sleeps d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// waitFor polls cond every 20 ms until it holds or timeout passes.
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return cond()
}

// copyFile copies src to dst.
func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
