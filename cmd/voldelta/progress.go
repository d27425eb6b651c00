package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"github.com/voldelta/voldelta/agent"
	"golang.org/x/term"
)

// progressFlags are --progress and --progress-interval of the commands
// that move data (send, push, pull).
type progressFlags struct {
	mode     string
	interval time.Duration
}

func (f *progressFlags) register(c *cobra.Command) {
	fs := c.Flags()
	fs.StringVar(&f.mode, "progress", "auto", "progress on stderr: auto (a bar when stderr is a terminal), always (a bar), never, or json (a JSON object a line every --progress-interval, with an ETA)")
	fs.DurationVar(&f.interval, "progress-interval", 2*time.Second, "how often --progress json writes a line")
}

// phases names the two phases of a transfer on the bar and in JSON lines:
// finding what to move (a scan of the source; a pull's plan) and moving it.
type phases struct{ first, second, starting string }

var (
	phasesSend   = phases{"scan", "send", "scanning"}
	phasesUpload = phases{"scan", "upload", "scanning"}
	phasesPull   = phases{"plan", "fetch", "planning"}
)

// progressSink shows a transfer's progress; safe for concurrent use.
type progressSink interface {
	update(agent.Progress)
	finish()
}

// newProgress returns the sink --progress asks for, or nil for none.
func (f *progressFlags) newProgress(c *cobra.Command, quiet bool, ph phases) (progressSink, error) {
	switch f.mode {
	case "never":
		return nil, nil
	case "auto":
		if quiet || !term.IsTerminal(int(os.Stderr.Fd())) {
			return nil, nil
		}
		return newSendBar(ph), nil
	case "always":
		return newSendBar(ph), nil
	case "json":
		if f.interval <= 0 {
			return nil, usagef(c, "--progress-interval %s: want a positive duration", f.interval)
		}
		return newJSONProgress(stderr, f.interval, ph, time.Now), nil
	}
	return nil, usagef(c, "--progress %q: want auto, always, never or json", f.mode)
}

// sendBar shows the first phase, then the second, on one progress bar.
type sendBar struct {
	mu      sync.Mutex
	bar     *progressbar.ProgressBar
	ph      phases
	sending bool
}

func newSendBar(ph phases) *sendBar {
	return &sendBar{bar: newBar(-1, ph.starting), ph: ph}
}

func newBar(max int64, desc string) *progressbar.ProgressBar {
	return newBarTo(os.Stderr, max, desc)
}

// newBarTo is a byte-counting bar with an ETA, written to w.
func newBarTo(w io.Writer, max int64, desc string) *progressbar.ProgressBar {
	return progressbar.NewOptions64(max,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionShowBytes(true),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(200*time.Millisecond),
		progressbar.OptionShowCount(),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionSetPredictTime(true),
	)
}

func (s *sendBar) update(p agent.Progress) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !p.ScanDone {
		if s.sending {
			return // a late first-phase report
		}
		if s.bar.GetMax64() != int64(p.SourceBytes) {
			s.bar.ChangeMax64(int64(p.SourceBytes))
		}
		s.bar.Describe(fmt.Sprintf("%s (%s %s)", s.ph.first, s.ph.second, humanBytes(p.SentBytes)))
		s.bar.Set64(int64(p.ScannedBytes))
		return
	}
	if !s.sending {
		s.sending = true
		s.bar.Describe(s.ph.second)
		s.bar.Set64(0)
	}
	if s.bar.GetMax64() != int64(p.NeedBytes) {
		s.bar.ChangeMax64(int64(p.NeedBytes))
	}
	s.bar.Set64(int64(p.SentBytes))
}

func (s *sendBar) finish() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bar.Finish()
}

// progressLine is one line of --progress json. The names are a stable
// contract.
type progressLine struct {
	Time           time.Time `json:"time"`
	Phase          string    `json:"phase"` // the first phase (scan, plan) or the second (send, upload, fetch)
	SourceBytes    uint64    `json:"source_bytes"`
	ScannedBytes   uint64    `json:"scanned_bytes"`
	TotalBytes     uint64    `json:"total_bytes"` // to move: grows until the first phase ends
	DoneBytes      uint64    `json:"done_bytes"`  // moved so far
	Percent        float64   `json:"percent"`     // of the current phase
	BytesPerSecond float64   `json:"bytes_per_second"`
	ElapsedSeconds float64   `json:"elapsed_seconds"`
	// ETASeconds is the estimated time left in the current phase (the
	// first: until it ends; the second: until every byte is moved), null
	// while it cannot be estimated.
	ETASeconds *float64 `json:"eta_seconds"`
	Done       bool     `json:"done,omitempty"` // the last line
}

// jsonProgress writes the latest progress as a JSON line every interval,
// and once more at the end.
type jsonProgress struct {
	w     io.Writer
	ph    phases
	now   func() time.Time
	start time.Time

	mu          sync.Mutex
	last        agent.Progress
	secondStart time.Time // when the second phase began
	stop        chan struct{}
	done        chan struct{}
}

func newJSONProgress(w io.Writer, every time.Duration, ph phases, now func() time.Time) *jsonProgress {
	j := &jsonProgress{w: w, ph: ph, now: now, start: now(), stop: make(chan struct{}), done: make(chan struct{})}
	go j.loop(every)
	return j
}

func (j *jsonProgress) loop(every time.Duration) {
	defer close(j.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-j.stop:
			return
		case <-t.C:
			j.write(false)
		}
	}
}

func (j *jsonProgress) update(p agent.Progress) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if p.ScanDone && j.secondStart.IsZero() {
		j.secondStart = j.now()
	}
	if !p.ScanDone && !j.secondStart.IsZero() {
		return // a late first-phase report
	}
	j.last = p
}

func (j *jsonProgress) finish() {
	close(j.stop)
	<-j.done
	j.write(true)
}

func (j *jsonProgress) write(final bool) {
	j.mu.Lock()
	l := j.line(j.now())
	j.mu.Unlock()
	l.Done = final
	b, err := json.Marshal(l)
	if err == nil {
		_, _ = j.w.Write(append(b, '\n'))
	}
}

// line computes a progressLine at now from the last report.
func (j *jsonProgress) line(now time.Time) progressLine {
	p := j.last
	l := progressLine{Time: now.UTC(), Phase: j.ph.first, SourceBytes: p.SourceBytes, ScannedBytes: p.ScannedBytes,
		TotalBytes: p.NeedBytes, DoneBytes: p.SentBytes, ElapsedSeconds: now.Sub(j.start).Seconds()}
	done, total, since := p.ScannedBytes, p.SourceBytes, j.start
	if p.ScanDone {
		l.Phase, done, total, since = j.ph.second, p.SentBytes, p.NeedBytes, j.secondStart
	}
	if total > 0 {
		l.Percent = math.Round(1000*float64(done)/float64(total)) / 10
	} else if p.ScanDone {
		l.Percent = 100
	}
	if el := now.Sub(since).Seconds(); el > 0 {
		l.BytesPerSecond = math.Round(float64(done) / el)
	}
	switch {
	case p.ScanDone && done >= total:
		l.ETASeconds = ptr(0.0)
	case l.BytesPerSecond > 0 && total > done:
		l.ETASeconds = ptr(math.Round(10*float64(total-done)/l.BytesPerSecond) / 10)
	}
	return l
}

func ptr[T any](v T) *T { return &v }
