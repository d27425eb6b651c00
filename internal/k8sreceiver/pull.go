package k8sreceiver

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/internal/k8sutil"
	"github.com/voldelta/voldelta/objstore"
	"github.com/voldelta/voldelta/receiver"
)

// DefaultPollInterval is how often a store target's store is looked at
// when its spec.store.pollInterval is unset.
const DefaultPollInterval = 30 * time.Second

// pollInterval is spec.store.pollInterval, defaulted, at least a second.
func pollInterval(src *v1alpha1.StoreSource) time.Duration {
	if src.PollInterval == nil || src.PollInterval.Duration <= 0 {
		return DefaultPollInterval
	}
	return max(src.PollInterval.Duration, time.Second)
}

// syncFromStore pulls the store's latest generation of a store target's
// remote volume into its device at path, if it is due to look and the
// target does not hold that generation. It patches the status before a
// pull (the target is then being written) and leaves the outcome in vt
// for the caller's patch; it returns the new patch base and when to look
// again. Only errors of the API server (and a shutdown during a pull,
// which the next pull resumes) are returned.
func (t *Targets) syncFromStore(ctx context.Context, orig, vt *v1alpha1.VolumeTarget, path string) (*v1alpha1.VolumeTarget, time.Duration, error) {
	src := vt.Spec.Store
	st := &vt.Status
	every := pollInterval(src)
	now := t.o.Clock.Now()
	if st.LastPollTime != nil {
		next := st.LastPollTime.Add(every)
		if st.ConsecutiveFailures > 0 {
			next = st.LastPollTime.Add(k8sutil.Backoff(st.ConsecutiveFailures))
		}
		if now.Before(next) {
			return orig, next.Sub(now), nil
		}
	}
	polled := metav1.NewTime(now)
	st.LastPollTime = &polled
	volume := vt.Spec.RemoteVolume
	log := t.o.Logger.With("volumetarget", vt.Namespace+"/"+vt.Name, "store", src.URL, "volume", volume)

	store, err := k8sutil.OpenStore(ctx, t.o.Kube, vt.Namespace, src.Store, k8sutil.StoreOptions{Logger: log})
	if err != nil {
		reason := v1alpha1.ReasonStoreUnavailable
		if errors.Is(err, k8sutil.ErrCredentials) {
			reason = v1alpha1.ReasonStoreCredentials
		}
		return orig, t.pullFailed(vt, reason, err), nil
	}
	gens, err := store.Generations(ctx, volume)
	if err != nil {
		return orig, t.pullFailed(vt, v1alpha1.ReasonStoreUnavailable, fmt.Errorf("list generations of %q: %w", volume, err)), nil
	}
	if len(gens) == 0 {
		log.Debug("no generation in the store yet")
		t.pullSucceeded(vt)
		return orig, every, nil
	}
	latest := gens[len(gens)-1]
	if t.holds(store, volume, latest) {
		st.StoreGeneration = int64(latest)
		t.pullSucceeded(vt)
		return orig, every, nil
	}

	// Pull: the target is overwritten from here until the commit.
	st.Phase = v1alpha1.PhaseSyncing
	t.setReady(vt, metav1.ConditionFalse, v1alpha1.ReasonPulling, fmt.Sprintf("pulling generation %d of %q from %s", latest, volume, src.URL))
	if err := t.patch(ctx, orig, vt); err != nil {
		return orig, 0, err
	}
	orig = vt.DeepCopy()
	log.Info("pull starts", "generation", latest, "device", path)
	prog := t.reportPull(ctx, vt)
	apply := t.o.Apply
	apply.Progress = func(p receiver.ApplyProgress) {
		prog.Set(p)
		if t.o.Apply.Progress != nil {
			t.o.Apply.Progress(p)
		}
	}
	downloaded, ended := t.o.Metrics.pullStarted(volume)
	ps, err := store.Pull(ctx, objstore.PullOptions{Volume: volume, Generation: latest, Target: path, StateDir: t.o.StateDir,
		Parallel: t.o.PullParallel, Receiver: apply, Downloaded: downloaded})
	ended()
	prog.Stop()
	// Progress may be set on the server: make the next patch remove it.
	orig.Status.Progress = &v1alpha1.TargetProgress{}
	vt.Status.Progress = nil
	if err != nil {
		if ctx.Err() != nil {
			return orig, 0, fmt.Errorf("pull of %q interrupted (the next pull resumes it): %w", volume, err)
		}
		reason := v1alpha1.ReasonPullFailed
		switch {
		case errors.Is(err, objstore.ErrBadCredentials) || errors.Is(err, objstore.ErrNoBucket):
			reason = v1alpha1.ReasonStoreUnavailable
		case errors.Is(err, receiver.ErrTargetFull):
			reason = v1alpha1.ReasonTargetFull
		case errors.Is(err, receiver.ErrStateCorrupt) || errors.Is(err, receiver.ErrTargetClaimed) || errors.Is(err, receiver.ErrTargetGone):
			reason = v1alpha1.ReasonTargetState
		}
		return orig, t.pullFailed(vt, reason, fmt.Errorf("pull generation %d of %q: %w", latest, volume, err)), nil
	}
	st.StoreGeneration = int64(latest)
	t.pullSucceeded(vt)
	st.LastPullDuration = &metav1.Duration{Duration: time.Duration(ps.DurationSeconds * float64(time.Second)).Round(time.Millisecond)}
	st.LastPullDownloadedBytes = int64(ps.BytesDownloaded)
	t.mu.Lock()
	t.writers[volume] = src.URL
	t.mu.Unlock()
	t.o.Metrics.commit(volume, receiver.Result{Generation: ps.LocalGeneration, FetchBytes: ps.BytesFetchedRaw, CopyBytes: ps.BytesCopied},
		float64(t.o.Clock.Now().UnixNano())/1e9)
	t.event(vt, corev1.EventTypeNormal, v1alpha1.ReasonTargetCommitted, "Pull",
		"generation %d of %s pulled and committed as local generation %d: %d chunks fetched (%d bytes downloaded), %d copied locally, %d in place",
		latest, src.URL, ps.LocalGeneration, ps.ChunksFetched, ps.BytesDownloaded, ps.ChunksCopied, ps.ChunksSkipped)
	log.Info("pull committed", "generation", latest, "local_generation", ps.LocalGeneration, "fetched", ps.ChunksFetched,
		"downloaded", ps.BytesDownloaded, "seconds", ps.DurationSeconds)
	return orig, every, nil
}

// holds reports whether the target holds generation gen of volume from
// store, committed and not overwritten since.
func (t *Targets) holds(store *objstore.Store, volume string, gen uint64) bool {
	ps, err := objstore.ReadPulledState(t.o.StateDir, volume)
	if err != nil || ps.Store != store.String() || ps.Generation != gen {
		return false
	}
	rs, err := receiver.ReadStatus(t.o.StateDir, volume)
	return err == nil && rs.Current && !rs.Incomplete && rs.Generation == ps.LocalGen && rs.Root == ps.Root
}

// pullSucceeded clears the failures of a store target.
func (t *Targets) pullSucceeded(vt *v1alpha1.VolumeTarget) {
	vt.Status.ConsecutiveFailures = 0
	t.setCondition(vt, v1alpha1.ConditionDegraded, metav1.ConditionFalse, v1alpha1.ReasonNoProblem, "")
}

// pullFailed records a failed look at the store or pull in vt's status and
// returns the wait before the next attempt.
func (t *Targets) pullFailed(vt *v1alpha1.VolumeTarget, reason string, err error) time.Duration {
	st := &vt.Status
	st.ConsecutiveFailures++
	t.setCondition(vt, v1alpha1.ConditionDegraded, metav1.ConditionTrue, reason, err.Error())
	t.o.Metrics.pullFailed(vt.Spec.RemoteVolume, reason)
	t.event(vt, corev1.EventTypeWarning, reason, "Pull", "attempt %d failed: %v", st.ConsecutiveFailures, err)
	t.o.Logger.Warn("pull failed", "volumetarget", vt.Namespace+"/"+vt.Name, "reason", reason, "err", err)
	return k8sutil.Backoff(st.ConsecutiveFailures)
}
