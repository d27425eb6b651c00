package migration

import (
	"context"
	"fmt"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
)

// pending resolves the volumes and creates their VolumeSyncs, with the
// trigger of the first pre-copy round.
func (r *Reconciler) pending(ctx context.Context, m *v1alpha1.Migration, now time.Time) (step, error) {
	if err := validateSpec(m); err != nil {
		return step{}, err
	}
	pvcs, missing, err := r.resolveVolumes(ctx, m)
	if err != nil {
		return step{}, err
	}
	switch {
	case len(missing) > 0:
		m.Status.Message = fmt.Sprintf("waiting for PersistentVolumeClaim %s", strings.Join(missing, ", "))
		return stay(v1alpha1.MigrationPending, r.o.RequeueInterval), nil
	case len(pvcs) == 0:
		m.Status.Message = "no PersistentVolumeClaim matches spec.volumes.selector yet"
		return stay(v1alpha1.MigrationPending, r.o.RequeueInterval), nil
	}
	if len(pvcs) > maxVolumes {
		return step{}, failf(ReasonInvalidSpec, "spec.volumes: %d PVCs, at most %d (the members of one group)", len(pvcs), maxVolumes)
	}
	if err := validateFreeze(m, pvcs); err != nil {
		return step{}, err
	}
	vols := make([]v1alpha1.MigrationVolumeStatus, 0, len(pvcs))
	for _, pvc := range pvcs {
		v, err := volumeFor(m, pvc)
		if err != nil {
			return step{}, err
		}
		vols = append(vols, v)
	}
	trigger := precopyTrigger(m, 1)
	for _, v := range vols {
		if _, err := r.ensureVolumeSync(ctx, m, v, roundSpec{trigger: trigger}); err != nil {
			return step{}, err
		}
	}
	m.Status.Volumes = vols
	m.Status.PrecopyTrigger = trigger
	m.Status.PrecopyStartTime = mtime(now)
	m.Status.Message = fmt.Sprintf("pre-copy round 1 of %d volumes runs", len(vols))
	return goTo(v1alpha1.MigrationPrecopying), nil
}

// precopying waits for the current round, records it, and either declares
// the pre-copy converged or starts the next round after the interval.
func (r *Reconciler) precopying(ctx context.Context, m *v1alpha1.Migration, now time.Time) (step, error) {
	members, err := r.members(ctx, m, precopyRound(m))
	if err != nil {
		return step{}, err
	}
	if !roundRecorded(m) {
		if !r.finishRound(m, members, now) {
			return stay(v1alpha1.MigrationPrecopying, r.o.RequeueInterval), nil
		}
		if reason, msg, ok := converged(m); ok {
			setCondition(m, v1alpha1.ConditionReadyForCutover, metav1.ConditionTrue, reason, msg)
			m.Status.Message = msg
			return goTo(v1alpha1.MigrationReadyForCutover), nil
		}
	}
	wait, err := r.nextRound(ctx, m, members, now)
	return stay(v1alpha1.MigrationPrecopying, wait), err
}

// readyForCutover starts the cutover when its mode says so. Until then,
// if the pre-copy converged, rounds go on at the interval so that the
// delta the cutover waits for stays small (after maxRounds without
// converging they stop, as spec.precopy.maxRounds says).
//
// The cutover may begin in the middle of such a round: it is not waited
// for. The final trigger is set only after the workloads' pods are gone,
// and a VolumeSync reports a trigger as its lastManualTrigger only for a
// round whose snapshot was taken after the trigger was set; the running
// round commits under its pre-copy trigger and the agent then runs the
// final round from a new snapshot.
func (r *Reconciler) readyForCutover(ctx context.Context, m *v1alpha1.Migration, now time.Time) (step, error) {
	reason := conditionReason(m, v1alpha1.ConditionReadyForCutover)
	mode := m.Spec.Cutover.Mode
	if mode == "" {
		mode = v1alpha1.CutoverManual
	}
	var why string
	switch {
	case mode == v1alpha1.CutoverAuto && reason == ReasonConverged:
		why = "the pre-copy converged (mode Auto)"
	case m.Spec.CutoverRequested:
		why = "spec.cutoverRequested"
	case m.Spec.CutoverAt != nil && !now.Before(m.Spec.CutoverAt.Time):
		why = "spec.cutoverAt " + m.Spec.CutoverAt.UTC().Format(time.RFC3339) + " passed"
	}
	if why != "" {
		m.Status.CutoverStartTime = mtime(now)
		m.Status.Message = "cutover: " + why + "; quiescing the workloads"
		return goTo(v1alpha1.MigrationQuiescing), nil
	}

	var wait time.Duration
	if at := m.Spec.CutoverAt; at != nil {
		wait = at.Sub(now)
	}
	waitingFor := "spec.cutoverRequested or spec.cutoverAt"
	if reason == ReasonMaxRounds {
		waitingFor += " (the pre-copy did not converge in spec.precopy.maxRounds rounds)"
	}
	msg := "ready for cutover: waiting for " + waitingFor
	if reason == ReasonConverged {
		members, err := r.members(ctx, m, precopyRound(m))
		if err != nil {
			return step{}, err
		}
		roundWait := r.o.RequeueInterval
		if roundRecorded(m) || r.finishRound(m, members, now) {
			if roundWait, err = r.nextRound(ctx, m, members, now); err != nil {
				return step{}, err
			}
		}
		if wait <= 0 || (roundWait > 0 && roundWait < wait) {
			wait = roundWait
		}
		msg += "; " + m.Status.Message
	}
	m.Status.Message = msg
	return stay(v1alpha1.MigrationReadyForCutover, wait), nil
}

// quiescing records the workloads' replica counts (persisted before
// anything is scaled), scales them to 0 and waits for their pods to go.
func (r *Reconciler) quiescing(ctx context.Context, m *v1alpha1.Migration, now time.Time) (step, error) {
	if m.Status.CutoverStartTime == nil {
		m.Status.CutoverStartTime = mtime(now)
	}
	if err := r.chooseFinalSnapshots(ctx, m); err != nil { // before anything is scaled
		return step{}, err
	}
	if len(m.Spec.Quiesce.Workloads) > 0 || len(m.Spec.Quiesce.Freeze) > 0 {
		if err := r.setFinalizer(ctx, m, true); err != nil {
			return step{}, err
		}
	}
	recorded, err := r.recordWorkloads(ctx, m)
	if err != nil {
		return step{}, err
	}
	if recorded {
		if err := r.persist(ctx, m); err != nil {
			return step{}, err
		}
	}
	for _, w := range m.Status.Workloads {
		if err := r.scale(ctx, m.Namespace, w.Kind, w.Name, 0); err != nil {
			return step{}, gone(err)
		}
	}
	remaining, err := r.remaining(ctx, m, false)
	if err != nil {
		return step{}, gone(err)
	}
	if len(remaining) == 0 { // then the filesystems of spec.quiesce.freeze
		if remaining, err = r.quiesceFreeze(ctx, m, now); err != nil {
			return step{}, err
		}
	}
	if len(remaining) == 0 {
		m.Status.QuiescedTime = mtime(now)
		msg := fmt.Sprintf("%d workloads at 0 and their pods gone after %s", len(m.Status.Workloads),
			since(m.Status.CutoverStartTime, now).Round(time.Millisecond))
		setCondition(m, v1alpha1.ConditionQuiesced, metav1.ConditionTrue, ReasonScaledDown, msg)
		m.Status.Message = msg + "; final rounds start"
		startFinal(m, now) // with the phase, so that no reader sees FinalSync without its trigger
		return goTo(v1alpha1.MigrationFinalSync), nil
	}
	timeout := DefaultQuiesceTimeout
	if t := m.Spec.Quiesce.Timeout; t != nil && t.Duration > 0 {
		timeout = t.Duration
	}
	waited := since(m.Status.CutoverStartTime, now)
	if waited >= timeout {
		return step{}, failf(ReasonQuiesceTimeout, "quiesce timed out after %s: %s", timeout, strings.Join(remaining, "; "))
	}
	msg := "waiting for " + strings.Join(remaining, "; ")
	setCondition(m, v1alpha1.ConditionQuiesced, metav1.ConditionFalse, ReasonWaitingPods, msg)
	m.Status.Message = msg
	return stay(v1alpha1.MigrationQuiescing, min(r.o.RequeueInterval, timeout-waited)), nil
}

// finalSync sets the final trigger on every VolumeSync and waits until
// every one committed it. A member whose round fails is left to the
// agent's retries (with backoff) while the source stays quiesced; the
// migration reports it and does not go on.
func (r *Reconciler) finalSync(ctx context.Context, m *v1alpha1.Migration, now time.Time) (step, error) {
	startFinal(m, now)
	// A workload that came back (scaled up by someone else) may have
	// written after the final snapshots were taken: the group cannot be
	// trusted.
	back, err := r.remaining(ctx, m, true)
	if err != nil {
		return step{}, gone(err)
	}
	if len(back) > 0 {
		return step{}, failf(ReasonWorkloadBack, "workloads came back during the final rounds, which may not hold their last writes: %s", strings.Join(back, "; "))
	}
	// With a group snapshot, no VolumeSync gets the final trigger before
	// its member snapshot exists; frozen filesystems are thawed as soon
	// as the group is cut, before that.
	if ready, err := r.groupSnapshotReady(ctx, m, now); err != nil || !ready {
		if err == nil {
			err = r.thawAfterGroupCut(ctx, m, now)
		}
		return stay(v1alpha1.MigrationFinalSync, r.o.RequeueInterval), err
	}
	members, err := r.members(ctx, m, finalRound(m))
	if err != nil {
		return step{}, err
	}
	// Frozen filesystems are thawed as soon as their final snapshots are
	// cut.
	if err := r.thawAfterCut(ctx, m, members, now); err != nil {
		return step{}, err
	}
	waiting, degraded := progress(members, m.Status.FinalTrigger)
	if len(waiting) == 0 {
		m.Status.Message = fmt.Sprintf("the final rounds of %d volumes committed", len(members))
		return goTo(v1alpha1.MigrationCommitting), nil
	}
	if len(degraded) > 0 {
		msg := "final round failing, retried while the source stays quiesced: " + strings.Join(degraded, "; ")
		setCondition(m, v1alpha1.ConditionDestinationReady, metav1.ConditionFalse, ReasonMemberDegraded, msg)
		m.Status.Message = msg
	} else {
		setCondition(m, v1alpha1.ConditionDestinationReady, metav1.ConditionFalse, ReasonFinalSync, "final rounds run")
		m.Status.Message = "final round: waiting for " + strings.Join(waiting, ", ")
	}
	return stay(v1alpha1.MigrationFinalSync, r.o.RequeueInterval), nil
}

// startFinal names the final round (trigger, group) and when it starts,
// once.
func startFinal(m *v1alpha1.Migration, now time.Time) {
	if m.Status.FinalTrigger != "" {
		return
	}
	m.Status.FinalTrigger = m.Name + "-final"
	m.Status.FinalSyncStartTime = mtime(now)
	// A receiver (in Kubernetes mode) promotes the group once every
	// member committed its final round; a store has no promotion.
	if m.Spec.Destination.Store == nil {
		m.Status.Group = groupName(m)
	}
}

// committing records what every volume's final round committed and the
// measured downtime, and pauses the VolumeSyncs: no later round may
// overwrite what the destination now holds. The workloads stay at 0: the
// application moves.
func (r *Reconciler) committing(ctx context.Context, m *v1alpha1.Migration, now time.Time) (step, error) {
	members, err := r.members(ctx, m, finalRound(m))
	if err != nil {
		return step{}, err
	}
	if waiting, _ := progress(members, m.Status.FinalTrigger); len(waiting) > 0 {
		m.Status.Message = "final round: waiting for " + strings.Join(waiting, ", ")
		return goTo(v1alpha1.MigrationFinalSync), nil
	}
	var commit time.Time
	var snapshot *metav1.Duration
	for i, mb := range members {
		st := mb.vs.Status
		m.Status.Volumes[i].Generation = st.LastGeneration
		m.Status.Volumes[i].RootHash = st.LastRootHash
		if st.LastSyncTime != nil && st.LastSyncTime.After(commit) {
			commit = st.LastSyncTime.Time
		}
		if w := st.LastSnapshotDuration; w != nil && (snapshot == nil || w.Duration > snapshot.Duration) {
			snapshot = w.DeepCopy()
		}
	}
	if w, ok := groupSnapshotWait(m); ok {
		snapshot = w
	}
	if commit.IsZero() || commit.After(now) { // no time, or another clock ahead of ours
		commit = now
	}
	m.Status.CommitTime = mtime(commit)
	cut := m.Status.CutoverStartTime
	d := &v1alpha1.Downtime{
		Total:     metav1.Duration{Duration: since(cut, commit)},
		Quiesce:   metav1.Duration{Duration: sinceTo(cut, m.Status.QuiescedTime)},
		FinalSync: metav1.Duration{Duration: since(m.Status.FinalSyncStartTime, commit)},
		Snapshot:  snapshot,
		Commit:    metav1.Duration{Duration: max(now.Sub(commit), 0)},
	}
	m.Status.Downtime = d
	if err := r.releaseFreeze(ctx, m, now); err != nil {
		return step{}, err
	}
	if err := r.pauseMembers(ctx, m); err != nil {
		return step{}, err
	}
	msg := fmt.Sprintf("%d volumes committed at the destination; downtime %s (quiesce %s, final rounds %s)",
		len(members), d.Total.Duration, d.Quiesce.Duration, d.FinalSync.Duration)
	setCondition(m, v1alpha1.ConditionDestinationReady, metav1.ConditionTrue, ReasonCommitted, msg)
	m.Status.Message = msg
	return goTo(v1alpha1.MigrationCompleted), nil
}

// abort scales the workloads back to their recorded counts, pauses the
// VolumeSyncs and leaves the destination unpromoted.
func (r *Reconciler) abort(ctx context.Context, m *v1alpha1.Migration, _ time.Time) (step, error) {
	if err := r.unwind(ctx, m, ReasonAborted, "spec.abort"); err != nil {
		return step{}, err
	}
	return goTo(v1alpha1.MigrationAborted), nil
}

// fail ends the migration for f: as abort, with f's reason.
func (r *Reconciler) fail(ctx context.Context, m *v1alpha1.Migration, f *failure) (step, error) {
	m.Status.Message = f.msg
	if err := r.unwind(ctx, m, f.reason, f.msg); err != nil {
		return step{}, err
	}
	return goTo(v1alpha1.MigrationFailed), nil
}

func (r *Reconciler) unwind(ctx context.Context, m *v1alpha1.Migration, reason, why string) error {
	if err := r.releaseFreeze(ctx, m, r.o.Clock.Now()); err != nil {
		return fmt.Errorf("%s; thaw the frozen volumes: %w", why, err)
	}
	restored, err := r.restoreWorkloads(ctx, m)
	if err != nil {
		return fmt.Errorf("%s; scale the workloads back: %w", why, err)
	}
	if err := r.pauseMembers(ctx, m); err != nil {
		return fmt.Errorf("%s; pause the VolumeSyncs: %w", why, err)
	}
	msg := why
	if len(restored) > 0 {
		msg += "; scaled back: " + strings.Join(restored, ", ")
		setCondition(m, v1alpha1.ConditionQuiesced, metav1.ConditionFalse, ReasonRestored, "scaled back: "+strings.Join(restored, ", "))
	}
	setCondition(m, v1alpha1.ConditionDestinationReady, metav1.ConditionFalse, reason, msg)
	m.Status.Message = msg
	return nil
}

// gone turns the NotFound of a recorded workload (deleted during the
// cutover) into a failure: its pods cannot be checked any more.
func gone(err error) error {
	if apierrors.IsNotFound(err) {
		return failf(ReasonWorkloadMissing, "a quiesced workload disappeared during the cutover: %v", err)
	}
	return err
}

func sinceTo(from, to *metav1.MicroTime) time.Duration {
	if from == nil || to == nil {
		return 0
	}
	return max(to.Sub(from.Time), 0)
}
