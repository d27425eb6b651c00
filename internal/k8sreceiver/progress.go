package k8sreceiver

import (
	"context"
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
type pullProgress = k8sutil.Reporter[receiver.ApplyProgress]

// reportPull starts reporting the progress of a pull into vt, whose
// status as patched last is base.
func (t *Targets) reportPull(ctx context.Context, base *v1alpha1.VolumeTarget) *pullProgress {
	start := t.o.Clock.Now()
	base = base.DeepCopy()
	return k8sutil.StartReporter(ctx, t.o.ProgressInterval, func(ctx context.Context, pr receiver.ApplyProgress) {
		mod := base.DeepCopy()
		mod.Status.Progress = targetProgress(pr, start, t.o.Clock.Now())
		if err := t.patch(ctx, base, mod); err != nil {
			t.o.Logger.Debug("pull progress", "volumetarget", base.Namespace+"/"+base.Name, "err", err)
		}
	})
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
