package k8sreceiver

import (
	"context"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/internal/k8sutil"
	"github.com/voldelta/voldelta/receiver"
	"github.com/voldelta/voldelta/transport"
)

// DefaultProgressInterval is how often a running pull's status.progress
// is written.
const DefaultProgressInterval = 5 * time.Second

// pullProgress patches status.progress of a VolumeTarget every
// ProgressInterval with the figures its running apply last reported.
type pullProgress = k8sutil.Reporter[receiver.ApplyProgress]

// reportPull starts reporting the progress of a pull (or an agent's
// round) into vt, whose status as patched last is base.
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

// OnApply implements receiver.Config.OnApply: while an agent's round
// applies to a VolumeTarget, its status.progress says how far the apply
// got, as for store pulls, and is removed when the round ends.
func (t *Targets) OnApply(volume string, _ transport.Identity) (func(receiver.ApplyProgress), func()) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	vt, err := t.lookup(ctx, volume)
	cancel()
	if err != nil {
		return nil, nil
	}
	rctx, stop := context.WithCancel(context.Background())
	prog := t.reportPull(rctx, vt)
	end := func() {
		prog.Stop()
		stop()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		t.clearProgress(ctx, vt)
	}
	return prog.Set, end
}

// clearProgress removes status.progress of vt (as looked up at the start
// of its apply): one merge patch setting it to null, sent after every
// round since a report may have set it.
func (t *Targets) clearProgress(ctx context.Context, vt *v1alpha1.VolumeTarget) {
	orig, mod := vt.DeepCopy(), vt.DeepCopy()
	orig.Status.Progress, mod.Status.Progress = &v1alpha1.TargetProgress{}, nil
	if err := t.o.Client.Status().Patch(ctx, mod, client.MergeFrom(orig)); err != nil && !apierrors.IsNotFound(err) {
		t.o.Logger.Debug("clear progress", "volumetarget", key(vt), "err", err)
	}
}
