package k8sreceiver

import (
	"context"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/internal/k8sutil"
	"github.com/voldelta/voldelta/receiver"
)

// DefaultProgressInterval is how often a running pull's status.progress
// is written.
const DefaultProgressInterval = 5 * time.Second

// pullProgress patches status.progress of a VolumeTarget every
// ProgressInterval with the figures its running apply last reported.
type pullProgress struct {
	mu    sync.Mutex
	last  receiver.ApplyProgress
	seen  bool
	start time.Time
	done  chan struct{}
	wg    sync.WaitGroup
}

// set records the apply's latest figures (from the apply's goroutine).
func (p *pullProgress) set(pr receiver.ApplyProgress) {
	p.mu.Lock()
	p.last, p.seen = pr, true
	p.mu.Unlock()
}

// stop ends the reporting; the caller then clears status.progress with
// its next patch.
func (p *pullProgress) stop() {
	close(p.done)
	p.wg.Wait()
}

// reportPull starts reporting the progress of a pull into vt, whose
// status as patched last is base.
func (t *Targets) reportPull(ctx context.Context, base *v1alpha1.VolumeTarget) *pullProgress {
	p := &pullProgress{start: t.o.Clock.Now(), done: make(chan struct{})}
	base = base.DeepCopy()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		tk := time.NewTicker(t.o.ProgressInterval)
		defer tk.Stop()
		for {
			select {
			case <-p.done:
				return
			case <-ctx.Done():
				return
			case <-tk.C:
			}
			p.mu.Lock()
			pr, seen := p.last, p.seen
			p.mu.Unlock()
			if !seen {
				continue
			}
			mod := base.DeepCopy()
			mod.Status.Progress = targetProgress(pr, p.start, t.o.Clock.Now())
			if err := t.patch(ctx, base, mod); err != nil {
				t.o.Logger.Debug("pull progress", "volumetarget", base.Namespace+"/"+base.Name, "err", err)
			}
		}
	}()
	return p
}

// targetProgress is status.progress for an apply's figures at now, of a
// pull that began at start.
func targetProgress(pr receiver.ApplyProgress, start, now time.Time) *v1alpha1.TargetProgress {
	rate := k8sutil.Rate(pr.FetchedBytes, now.Sub(start))
	tp := &v1alpha1.TargetProgress{SourceBytes: int64(pr.SourceBytes), NeededBytes: int64(pr.NeedBytes),
		FetchedBytes: int64(pr.FetchedBytes), CopiedBytes: int64(pr.CopiedBytes), Planned: pr.Planned,
		BytesPerSecond: int64(rate), StartTime: metav1.NewTime(start), UpdateTime: metav1.NewTime(now)}
	tp.ETA = k8sutil.ETA(pr.FetchedBytes, pr.NeedBytes, rate, pr.Planned)
	return tp
}
