package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var voldeltaBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "voldelta-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	voldeltaBin = filepath.Join(dir, "voldelta")
	build := exec.Command("go", "build", "-o", voldeltaBin, "github.com/voldelta/voldelta/cmd/voldelta")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build voldelta:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freeAddr returns a loopback address with a port free right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// lockedBuffer is a bytes.Buffer safe for a writer and readers in other
// goroutines (a process's stderr, read by the test while it runs).
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// proc is a voldelta process running in the background. One goroutine
// waits for it, so its death is seen at once: done is closed when it has
// exited and err is then what Wait returned.
type proc struct {
	name   string
	cmd    *exec.Cmd
	stderr *lockedBuffer // everything the process wrote to stderr so far
	done   chan struct{}
	err    error
}

// startProc starts voldelta with args; onLine, if set, sees each line of its
// stderr as it is written. The process is killed at the end of the test if
// it still runs.
func startProc(t *testing.T, name string, onLine func(string), args ...string) *proc {
	t.Helper()
	p := &proc{name: name, cmd: exec.Command(voldeltaBin, args...), stderr: &lockedBuffer{}, done: make(chan struct{})}
	pipe, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		// Wait only once stderr is read to its end, as StderrPipe requires.
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			p.stderr.Write([]byte(sc.Text() + "\n"))
			if onLine != nil {
				onLine(sc.Text())
			}
		}
		io.Copy(p.stderr, pipe) // the rest of a line too long for the scanner
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// wait waits for the process to exit and returns what Wait returned.
func (p *proc) wait() error {
	<-p.done
	return p.err
}

// exited returns a failure message if the process has exited, "" if it
// still runs.
func (p *proc) exited() string {
	select {
	case <-p.done:
		return fmt.Sprintf("%s exited early (%v); its stderr:\n%s", p.name, p.err, p.stderr)
	default:
		return ""
	}
}

// receiverProc is a `voldelta receive` process.
type receiverProc struct {
	*proc
	addr string
	log  *lockedBuffer
}

// startReceiver starts `voldelta receive` and returns once it listens; the
// test fails at once, with its stderr, if it exits first.
func startReceiver(t *testing.T, addr string, args ...string) *receiverProc {
	t.Helper()
	ready := make(chan struct{})
	var once sync.Once
	p := startProc(t, "receiver", func(line string) {
		if strings.Contains(line, "receiver listening") {
			once.Do(func() { close(ready) })
		}
	}, append([]string{"receive", "--listen", addr}, args...)...)
	select {
	case <-ready:
	case <-p.done:
		t.Fatal(p.exited())
	}
	return &receiverProc{proc: p, addr: addr, log: p.stderr}
}

// run runs voldelta and returns stdout, stderr and the exit code.
func run(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(voldeltaBin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

func readStats(t *testing.T, path string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("stats JSON: %v\n%s", err, b)
	}
	return m
}

func TestCLIContract(t *testing.T) {
	dir := t.TempDir()
	pkiDir := filepath.Join(dir, "pki")
	if _, stderr, code := run(t, "certs", "--dir", pkiDir, "--hosts", "127.0.0.1"); code != 0 {
		t.Fatalf("certs: exit %d: %s", code, stderr)
	}
	src, tgt := filepath.Join(dir, "src.img"), filepath.Join(dir, "tgt.img")
	data := randBytes(30, 24*MiB)
	clear(data[4*MiB : 12*MiB])
	writeFile(t, src, data)
	addr := freeAddr(t)
	rtls := []string{"--tls-cert", filepath.Join(pkiDir, "receiver.pem"), "--tls-key", filepath.Join(pkiDir, "receiver-key.pem"), "--tls-ca", filepath.Join(pkiDir, "ca.pem")}
	atls := []string{"--tls-cert", filepath.Join(pkiDir, "agent.pem"), "--tls-key", filepath.Join(pkiDir, "agent-key.pem"), "--tls-ca", filepath.Join(pkiDir, "ca.pem")}
	rp := startReceiver(t, addr, append([]string{"--target", "demo=" + tgt, "--state-dir", filepath.Join(dir, "state")}, rtls...)...)

	statsPath := filepath.Join(dir, "stats.json")
	_, stderr, code := run(t, append([]string{"send", "--source", src, "--to", addr, "--volume", "demo", "--stats-json", statsPath}, atls...)...)
	if code != 0 {
		t.Fatalf("send: exit %d: %s\nreceiver log:\n%s", code, stderr, rp.log)
	}
	assertSame(t, tgt, data)
	st := readStats(t, statsPath)
	for _, k := range []string{"volume", "source_bytes", "chunks_total", "chunks_sent", "chunks_zero", "bytes_sent_raw", "wire_bytes", "scan_seconds", "duration_seconds", "root_hash", "generation"} {
		if _, ok := st[k]; !ok {
			t.Errorf("stats JSON lacks %q", k)
		}
	}
	if st["generation"].(float64) != 1 || st["chunks_zero"].(float64) == 0 || st["source_bytes"].(float64) != float64(len(data)) {
		t.Errorf("stats: %v", st)
	}
	if st["bytes_sent_raw"].(float64) > float64(len(data)-7*MiB) {
		t.Errorf("zero region was sent: %v raw bytes", st["bytes_sent_raw"])
	}

	// hash prints the same root as the sync committed.
	out, _, code := run(t, "hash", src)
	if code != 0 || !strings.HasPrefix(out, st["root_hash"].(string)) {
		t.Errorf("hash: exit %d, %q, want root %v", code, out, st["root_hash"])
	}
	out, _, code = run(t, "hash", tgt)
	if code != 0 || !strings.HasPrefix(out, st["root_hash"].(string)) {
		t.Errorf("hash of target: exit %d, %q", code, out)
	}
	// status says current.
	out, _, code = run(t, "status", "--state-dir", filepath.Join(dir, "state"), "--volume", "demo", "--json")
	var vs map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &vs) != nil || vs["current"] != true || vs["generation"].(float64) != 1 {
		t.Errorf("status: exit %d: %s", code, out)
	}

	// Failures: one line on stderr, exit 1.
	_, stderr, code = run(t, append([]string{"send", "--source", src, "--to", addr, "--volume", "other"}, atls...)...)
	if code != 1 || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || !strings.Contains(stderr, "no target for volume") {
		t.Errorf("unknown volume: exit %d, stderr %q", code, stderr)
	}
	_, stderr, code = run(t, "send", "--source", filepath.Join(dir, "missing.img"), "--to", addr, "--volume", "demo", "--insecure")
	if code != 1 || !strings.Contains(stderr, "missing.img") {
		t.Errorf("missing source: exit %d, stderr %q", code, stderr)
	}
	// Usage errors: exit 2.
	for _, args := range [][]string{
		{"send", "--to", addr, "--volume", "demo", "--insecure"},                 // no --source
		{"send", "--source", src, "--to", addr, "--volume", "demo"},              // neither TLS nor --insecure
		{"send", "--source", src, "--to", addr, "--volume", "a/b", "--insecure"}, // bad name
		{"send", "--source", src, "--to", addr, "--volume", "demo", "--insecure", "--bwlimit", "fast"},
		{"send", "--source", src, "--to", addr, "--volume", "demo", "--insecure", "--chunk-avg", "300KiB"},
		{"send", "--bogus-flag"},
		{"receive", "--listen", addr, "--state-dir", dir, "--insecure", "--target", "noequals"},
		{"hash"},
	} {
		if _, stderr, code := run(t, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2 (stderr %q)", args, code, stderr)
		}
	}

	// SIGTERM: the receiver exits cleanly.
	if err := rp.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := rp.wait(); err != nil {
		t.Errorf("receiver after SIGTERM: %v\n%s", err, rp.log)
	}
}

// landed returns how many of the probes of target (4 KiB at the start of
// every MiB) hold the bytes of want; a missing target has none.
func landed(t *testing.T, target string, want []byte) int {
	t.Helper()
	f, err := os.Open(target)
	if errors.Is(err, fs.ErrNotExist) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	buf := make([]byte, 4096)
	for off := 0; off+len(buf) <= len(want); off += MiB {
		if _, err := f.ReadAt(buf, int64(off)); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(buf, want[off:off+len(buf)]) {
			n++
		}
	}
	return n
}

// TestKillReceiverMidApply: SIGKILL the receiver in the middle of an apply,
// restart it, send again: the target is identical and the second run sends
// only what the first had not written.
func TestKillReceiverMidApply(t *testing.T) {
	dir := t.TempDir()
	src, tgt, state := filepath.Join(dir, "src.img"), filepath.Join(dir, "tgt.img"), filepath.Join(dir, "state")
	data := randBytes(40, 256*MiB)
	writeFile(t, src, data)
	addr := freeAddr(t)
	rargs := []string{"--target", "vol=" + tgt, "--state-dir", state, "--insecure"}
	rp := startReceiver(t, addr, rargs...)

	first := startProc(t, "first send", nil, "send", "--source", src, "--to", addr, "--volume", "vol", "--insecure", "--bwlimit", "64MiB", "--streams", "2")
	// Wait until about a third of the volume has landed in the target; if
	// either process dies first, fail at once with its stderr. The
	// target's allocated blocks do not tell (the receiver reserves them
	// before it writes), so its bytes are probed against the source.
	for landed(t, tgt, data) < len(data)/MiB/3 {
		if msg := first.exited(); msg != "" {
			t.Fatalf("%s before the kill\nreceiver log:\n%s", msg, rp.log)
		}
		if msg := rp.exited(); msg != "" {
			t.Fatal(msg)
		}
		select {
		case <-first.done:
		case <-rp.done:
		case <-time.After(20 * time.Millisecond):
		}
	}
	if err := rp.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	rp.wait()
	if err := first.wait(); err == nil {
		t.Fatal("first send succeeded although the receiver was killed")
	}
	t.Logf("first send after the kill: %s", strings.TrimSpace(first.stderr.String()))

	out, _, code := run(t, "status", "--state-dir", state, "--volume", "vol", "--json")
	var vs map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &vs) != nil || vs["current"] != false || vs["incomplete"] != true {
		t.Fatalf("status after the kill: exit %d: %s", code, out)
	}

	rp = startReceiver(t, addr, rargs...)
	statsPath := filepath.Join(dir, "stats.json")
	if _, stderr, code := run(t, "send", "--source", src, "--to", addr, "--volume", "vol", "--insecure", "--stats-json", statsPath); code != 0 {
		t.Fatalf("second send: exit %d: %s\n%s", code, stderr, rp.log)
	}
	assertSame(t, tgt, data)
	st := readStats(t, statsPath)
	sent, total := st["chunks_sent"].(float64), st["chunks_data"].(float64)
	t.Logf("after SIGKILL: second run sent %.0f of %.0f chunks (%.0f bytes), target state was %v", sent, total, st["bytes_sent_raw"], st["target_state"])
	if sent >= total*0.8 || st["target_state"] != "incomplete" {
		t.Fatalf("second run sent %.0f of %.0f chunks; want only what the first had not written", sent, total)
	}
}
