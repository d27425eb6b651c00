package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Side is where a process runs: the source host, the destination host, or
// the machine itself (setup, verification).
type Side string

const (
	SideSrc  Side = "src"
	SideDst  Side = "dst"
	SideHost Side = "host"
)

// Usage is what wait4 reported for one process (children it waited for
// included).
type Usage struct {
	Name      string  `json:"name"`
	Side      Side    `json:"side"`
	Seconds   float64 `json:"wall_seconds"`
	UserCPU   float64 `json:"user_cpu_seconds"`
	SysCPU    float64 `json:"sys_cpu_seconds"`
	MaxRSSKiB int64   `json:"max_rss_kib"`
	// ReadBytes is what the process read from block devices (GNU time's
	// %I, file system inputs × 512): reads served by the page cache are
	// not in it.
	ReadBytes  int64 `json:"fs_read_bytes,omitempty"`
	ExitStatus int   `json:"exit_status"`
}

// CPU is user + system seconds.
func (u Usage) CPU() float64 { return u.UserCPU + u.SysCPU }

// Cmd describes a process to run in one of the namespaces.
type Cmd struct {
	Name string // short label for logs and results
	Side Side
	Args []string
	Env  []string // added to the harness's environment
	Dir  string
	Log  string // file for stdout+stderr (appended); empty: discarded
	In   string // stdin
	Out  *bytes.Buffer
	// StopSignal ends a Service (default SIGTERM).
	StopSignal syscall.Signal
}

func nsName(s Side) string {
	switch s {
	case SideSrc:
		return nsSrc
	case SideDst:
		return nsDst
	}
	return ""
}

// build prepares the command. In a namespace it runs as
// `ip netns exec NS /usr/bin/time -f ... -o USAGE CMD...`: GNU time forks
// (a real fork of a small process) and reports the command's own CPU time
// and peak RSS. wait4 on our own child cannot: Go starts children with
// vfork, and the kernel carries the parent's high-water RSS into the
// child's at exec, so every child would report at least the harness's.
func (c *Cmd) build(ctx context.Context) (*exec.Cmd, *os.File, string, error) {
	args := c.Args
	var usageFile string
	if ns := nsName(c.Side); ns != "" {
		f, err := os.CreateTemp("", "voldelta-bench-usage-*")
		if err != nil {
			return nil, nil, "", err
		}
		f.Close()
		usageFile = f.Name()
		args = append([]string{"ip", "netns", "exec", ns, "/usr/bin/time", "-f", "%U %S %M %I", "-o", usageFile}, args...)
	}
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = append(os.Environ(), c.Env...)
	cmd.Dir = c.Dir
	// Own process group: a Ctrl-C at the terminal reaches only the harness,
	// which then stops its children in order. Pdeathsig: no orphans if the
	// harness itself is killed (and the next run ends whatever is left in
	// the namespaces).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 15 * time.Second
	var logf *os.File
	if c.Log != "" {
		if err := os.MkdirAll(filepath.Dir(c.Log), 0o755); err != nil {
			return nil, nil, "", err
		}
		f, err := os.OpenFile(c.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, nil, "", err
		}
		fmt.Fprintf(f, "### %s %s\n", time.Now().Format(time.TimeOnly), strings.Join(c.Args, " "))
		logf = f
		cmd.Stderr = f
		cmd.Stdout = f
	}
	if c.Out != nil {
		cmd.Stdout = c.Out
	}
	if c.In != "" {
		cmd.Stdin = strings.NewReader(c.In)
	}
	return cmd, logf, usageFile, nil
}

func usageOf(name string, side Side, ps *os.ProcessState, wall time.Duration, usageFile string) Usage {
	u := Usage{Name: name, Side: side, Seconds: wall.Seconds(), ExitStatus: -1}
	if ps != nil {
		u.ExitStatus = ps.ExitCode()
	}
	if usageFile == "" {
		// A host command: our own child's rusage (its RSS is at least ours,
		// see build).
		if ps != nil {
			u.UserCPU = ps.UserTime().Seconds()
			u.SysCPU = ps.SystemTime().Seconds()
			if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
				u.MaxRSSKiB = ru.Maxrss
			}
		}
		return u
	}
	raw, _ := os.ReadFile(usageFile)
	os.Remove(usageFile)
	parseTimeUsage(string(raw), &u)
	return u
}

// parseTimeUsage reads GNU time's "%U %S %M %I" line (the last one: time
// puts "Command exited with non-zero status N" or "Command terminated by
// signal N" before it; %I may be missing).
func parseTimeUsage(out string, u *Usage) bool {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	last := lines[len(lines)-1]
	var user, sys float64
	var rss, in int64
	n, _ := fmt.Sscanf(last, "%f %f %d %d", &user, &sys, &rss, &in)
	if n < 3 {
		return false
	}
	u.UserCPU, u.SysCPU, u.MaxRSSKiB, u.ReadBytes = user, sys, rss, in*512
	return true
}

// Run runs c to completion and returns its usage; a non-zero exit is an
// error that quotes the end of its log.
func (c *Cmd) Run(ctx context.Context) (Usage, error) {
	cmd, logf, usageFile, err := c.build(ctx)
	if err != nil {
		return Usage{}, err
	}
	if logf != nil {
		defer logf.Close()
	}
	start := time.Now()
	err = cmd.Run()
	u := usageOf(c.Name, c.Side, cmd.ProcessState, time.Since(start), usageFile)
	if err != nil {
		return u, fmt.Errorf("%s: %w%s", c.Name, err, tailOf(c.Log))
	}
	return u, nil
}

// tailOf is the end of a log file, for error messages.
func tailOf(path string) string {
	if path == "" {
		return ""
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if len(b) > 1500 {
		b = b[len(b)-1500:]
	}
	return "\n--- end of " + path + " ---\n" + strings.TrimRight(string(b), "\n")
}

// Service is a background process (a server) started with Start and
// ended with Stop, which returns its usage over its whole life.
type Service struct {
	c     *Cmd
	cmd   *exec.Cmd
	logf  *os.File
	start time.Time
	done  chan struct{}
	err   error
	undo  func() error
	usage Usage
}

// Start starts c in the background and registers its stop with cl.
func (c *Cmd) Start(ctx context.Context, cl *Cleanup) (*Service, error) {
	// The service outlives the context of one step only through Stop; a
	// canceled run kills it through the cleanup.
	cmd, logf, usageFile, err := c.build(context.WithoutCancel(ctx))
	if err != nil {
		return nil, err
	}
	s := &Service{c: c, cmd: cmd, logf: logf, done: make(chan struct{})}
	s.start = time.Now()
	if err := cmd.Start(); err != nil {
		if logf != nil {
			logf.Close()
		}
		return nil, fmt.Errorf("%s: %w", c.Name, err)
	}
	go func() {
		s.err = cmd.Wait()
		s.usage = usageOf(c.Name, c.Side, cmd.ProcessState, time.Since(s.start), usageFile)
		if logf != nil {
			logf.Close()
		}
		close(s.done)
	}()
	sig := c.StopSignal
	if sig == 0 {
		sig = syscall.SIGTERM
	}
	s.undo = cl.Add("stop "+c.Name, func() error {
		_, err := s.stop(sig, time.Minute)
		return err
	})
	return s, nil
}

// Pid is the process id of the service itself: in a namespace, the child
// of GNU time (see build); it may take a moment to appear after Start.
func (s *Service) Pid() (int, error) {
	if s.c.Side == SideHost {
		return s.cmd.Process.Pid, nil
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if pid, err := childOf(s.cmd.Process.Pid); err == nil {
			return pid, nil
		} else if time.Now().After(deadline) {
			return 0, fmt.Errorf("%s: %w", s.c.Name, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// childOf is the first child of pid.
func childOf(pid int) (int, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(raw))
	if len(f) == 0 {
		return 0, fmt.Errorf("process %d has no child", pid)
	}
	var child int
	_, err = fmt.Sscanf(f[0], "%d", &child)
	return child, err
}

// Exited reports whether the service has ended, and its error.
func (s *Service) Exited() (bool, error) {
	select {
	case <-s.done:
		return true, s.err
	default:
		return false, nil
	}
}

// Stop signals the service (Cmd.StopSignal, default SIGTERM), waits for it
// to end (SIGKILL after a minute) and returns its usage over its whole
// life. A service that ended on its own before Stop is an error.
func (s *Service) Stop() (Usage, error) {
	if ended, err := s.Exited(); ended {
		s.undo()
		return s.usage, fmt.Errorf("%s ended before it was stopped: %v%s", s.c.Name, err, tailOf(s.c.Log))
	}
	err := s.undo()
	return s.usage, err
}

func (s *Service) stop(sig syscall.Signal, grace time.Duration) (Usage, error) {
	select {
	case <-s.done:
		return s.usage, nil
	default:
	}
	// The service itself, not GNU time, which would die of it without
	// reporting; time exits once the service has.
	if pid, err := childOf(s.cmd.Process.Pid); err == nil && s.c.Side != SideHost {
		syscall.Kill(pid, sig)
	} else {
		s.cmd.Process.Signal(sig)
	}
	select {
	case <-s.done:
	case <-time.After(grace):
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
		return s.usage, fmt.Errorf("%s did not stop within %v after %v: killed", s.c.Name, grace, sig)
	}
	return s.usage, nil
}

func lookPath(name string) (string, error) { return exec.LookPath(name) }

// sh runs a host command and returns its trimmed stdout.
func sh(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return strings.TrimSpace(out.String()), nil
}

// procMark is a reading of a running process's CPU time, from which
// Since measures a step of a long-lived service.
type procMark struct {
	pid int
	cpu float64 // user + system seconds, its threads and waited-for children included
	t   time.Time
}

// markProc reads pid's CPU time and resets its peak RSS (clear_refs 5), so
// that Since reports the step's CPU and the step's peak.
func markProc(pid int) (procMark, error) {
	cpu, err := procCPU(pid)
	if err != nil {
		return procMark{}, err
	}
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		return procMark{}, err
	}
	return procMark{pid: pid, cpu: cpu, t: time.Now()}, nil
}

// Since is the usage of the process since m.
func (m procMark) Since(name string, side Side) (Usage, error) {
	cpu, err := procCPU(m.pid)
	if err != nil {
		return Usage{}, err
	}
	u := Usage{Name: name, Side: side, Seconds: time.Since(m.t).Seconds(), UserCPU: cpu - m.cpu}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", m.pid))
	if err != nil {
		return u, err
	}
	for _, l := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			fmt.Sscanf(strings.TrimSpace(v), "%d", &u.MaxRSSKiB)
		}
	}
	return u, nil
}

// procCPU is utime+stime+cutime+cstime of pid, in seconds.
func procCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name, which is in parentheses and may hold
	// spaces: state is field 3, utime 14, stime 15, cutime 16, cstime 17.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 15 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	var ticks float64
	for _, k := range []int{11, 12, 13, 14} { // utime..cstime, counted from field 3
		var v float64
		fmt.Sscanf(f[k], "%f", &v)
		ticks += v
	}
	return ticks / clockTicks, nil
}

// clockTicks is sysconf(_SC_CLK_TCK): 100 on Linux on every architecture
// Go supports.
const clockTicks = 100
