package migration

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
)

// DefaultFreezeTimeout is spec.quiesce.freezeTimeout's default: the
// longest a filesystem stays frozen.
const DefaultFreezeTimeout = 2 * time.Minute

// ReasonFreezeFailed: failure: a volume of spec.quiesce.freeze could not
// be frozen, or was thawed before its final snapshot was cut.
const ReasonFreezeFailed = "FreezeFailed"

// volumeSnapshotGVK is read unstructured, through the API reader: the
// controller needs only a snapshot's status.creationTime, and no scheme
// or cache for it.
var volumeSnapshotGVK = schema.GroupVersionKind{Group: "snapshot.storage.k8s.io", Version: "v1", Kind: "VolumeSnapshot"}

// validateFreeze checks that every PVC of spec.quiesce.freeze is one of
// the migration's volumes (pvcs).
func validateFreeze(m *v1alpha1.Migration, pvcs []string) error {
	var unknown []string
	for _, p := range m.Spec.Quiesce.Freeze {
		if !slices.Contains(pvcs, p) {
			unknown = append(unknown, p)
		}
	}
	if len(unknown) > 0 {
		return failf(ReasonInvalidSpec, "spec.quiesce.freeze: %s not among the migration's volumes (%s)",
			strings.Join(unknown, ", "), strings.Join(pvcs, ", "))
	}
	return nil
}

// freezeSpec is what every VolumeSync of spec.quiesce.freeze is asked for.
func freezeSpec(m *v1alpha1.Migration) *v1alpha1.VolumeFreeze {
	timeout := DefaultFreezeTimeout
	if t := m.Spec.Quiesce.FreezeTimeout; t != nil && t.Duration > 0 {
		timeout = t.Duration
	}
	return &v1alpha1.VolumeFreeze{Token: groupName(m), Timeout: &metav1.Duration{Duration: timeout}}
}

// frozenMembers returns the members of spec.quiesce.freeze.
func frozenMembers(m *v1alpha1.Migration, members []member) []member {
	var out []member
	for _, mb := range members {
		if slices.Contains(m.Spec.Quiesce.Freeze, mb.vol.PVC) {
			out = append(out, mb)
		}
	}
	return out
}

// quiesceFreeze freezes the volumes of spec.quiesce.freeze, once the
// workloads' pods are gone: it waits for a round of theirs that is still
// running (so that the freeze does not last for it), asks their agents
// (spec.freeze) and returns what it waits for until every one reports
// Frozen for the token. Only then may the final round start. An agent
// that cannot freeze fails the migration.
func (r *Reconciler) quiesceFreeze(ctx context.Context, m *v1alpha1.Migration, now time.Time) ([]string, error) {
	if len(m.Spec.Quiesce.Freeze) == 0 || (m.Status.Freeze != nil && m.Status.Freeze.FrozenTime != nil) {
		return nil, nil
	}
	pvcs := make([]string, 0, len(m.Status.Volumes))
	for _, v := range m.Status.Volumes {
		pvcs = append(pvcs, v.PVC)
	}
	if err := validateFreeze(m, pvcs); err != nil {
		return nil, err
	}
	all, err := r.members(ctx, m, precopyRound(m))
	if err != nil {
		return nil, err
	}
	members := frozenMembers(m, all)
	if m.Status.Freeze == nil {
		var busy []string
		for _, mb := range members {
			if p := mb.vs.Status.PendingSnapshot; p != "" {
				busy = append(busy, fmt.Sprintf("the running round of %s (VolumeSync %s, snapshot %s) to end before it is frozen", mb.vol.PVC, mb.vs.Name, p))
			}
		}
		if len(busy) > 0 {
			return busy, nil
		}
		m.Status.Freeze = &v1alpha1.MigrationFreeze{Token: groupName(m), RequestTime: *mtime(now)}
	}
	want := freezeSpec(m)
	var waiting []string
	for _, mb := range members {
		if err := r.setFreeze(ctx, mb.vs, want); err != nil {
			return nil, err
		}
		st := mb.vs.Status.Freeze
		switch {
		case st == nil || st.Token != want.Token:
			waiting = append(waiting, fmt.Sprintf("%s to be frozen (VolumeSync %s)", mb.vol.PVC, mb.vs.Name))
		case st.Phase == v1alpha1.FreezeFrozen:
		default:
			return nil, failf(ReasonFreezeFailed, "freeze %s (VolumeSync %s, node %s): %s, %s: %s",
				mb.vol.PVC, mb.vs.Name, st.Node, st.Phase, st.Reason, st.Message)
		}
	}
	if len(waiting) == 0 {
		m.Status.Freeze.FrozenTime = mtime(now)
	}
	return waiting, nil
}

// thawAfterCut releases the freeze once every frozen member's final
// snapshot has been cut. A member whose agent thawed it before that (its
// timeout), lost it or failed fails the migration: its final snapshot
// may hold writes made after the others' (or miss none it should not).
func (r *Reconciler) thawAfterCut(ctx context.Context, m *v1alpha1.Migration, members []member, now time.Time) error {
	f := m.Status.Freeze
	if f == nil || f.ThawedTime != nil {
		return nil
	}
	frozen := frozenMembers(m, members)
	for _, mb := range frozen {
		st := mb.vs.Status.Freeze
		switch {
		case st == nil || st.Token != f.Token:
			return failf(ReasonFreezeFailed, "%s (VolumeSync %s) no longer reports the freeze %s: its final snapshot cannot be trusted", mb.vol.PVC, mb.vs.Name, f.Token)
		case st.Phase == v1alpha1.FreezeFailed:
			return failf(ReasonFreezeFailed, "freeze of %s (VolumeSync %s, node %s) failed: %s: %s", mb.vol.PVC, mb.vs.Name, st.Node, st.Reason, st.Message)
		case st.Phase == v1alpha1.FreezeThawed:
			at, cut, err := r.snapshotCut(ctx, m, mb.vs)
			if err != nil {
				return err
			}
			// creationTime has a resolution of a second: the thaw must be
			// at least a second after it.
			if !cut || st.ThawedTime == nil || (at != nil && st.ThawedTime.Before(&metav1.MicroTime{Time: at.Add(time.Second)})) {
				return failf(ReasonFreezeFailed, "%s (VolumeSync %s) was thawed by its agent (%s: %s) before its final snapshot was cut: writes after the thaw may be in it",
					mb.vol.PVC, mb.vs.Name, st.Reason, st.Message)
			}
		}
	}
	cut, err := r.finalSnapshotsCut(ctx, m, frozen)
	if err != nil || !cut {
		return err
	}
	return r.releaseFreeze(ctx, m, now)
}

// thawAfterGroupCut is thawAfterCut while the group snapshot is not ready
// yet: the VolumeSyncs are read as they are, not given the final round.
func (r *Reconciler) thawAfterGroupCut(ctx context.Context, m *v1alpha1.Migration, now time.Time) error {
	if f := m.Status.Freeze; f == nil || f.ThawedTime != nil {
		return nil
	}
	members := make([]member, 0, len(m.Status.Volumes))
	for _, v := range m.Status.Volumes {
		var vs v1alpha1.VolumeSync
		err := r.o.Reader.Get(ctx, types.NamespacedName{Namespace: m.Namespace, Name: v.VolumeSync}, &vs)
		if err != nil {
			return fmt.Errorf("get VolumeSync %s/%s: %w", m.Namespace, v.VolumeSync, err)
		}
		members = append(members, member{vol: v, vs: &vs})
	}
	return r.thawAfterCut(ctx, m, members, now)
}

// finalSnapshotsCut says whether the final snapshot of every member has
// been cut: its VolumeSync's round of the final trigger committed, or the
// VolumeSnapshot it records for that round (status.pendingSnapshot with
// status.pendingManualTrigger the final trigger) has status.creationTime.
func (r *Reconciler) finalSnapshotsCut(ctx context.Context, m *v1alpha1.Migration, members []member) (bool, error) {
	for _, mb := range members {
		_, cut, err := r.snapshotCut(ctx, m, mb.vs)
		if err != nil || !cut {
			return false, err
		}
	}
	return true, nil
}

// snapshotCut says whether vs's final snapshot has been cut and, if its
// VolumeSnapshot says, when.
func (r *Reconciler) snapshotCut(ctx context.Context, m *v1alpha1.Migration, vs *v1alpha1.VolumeSync) (*time.Time, bool, error) {
	if m.Status.FinalSnapshots == v1alpha1.FinalSnapshotsGroup {
		return r.groupCutTime(ctx, m) // every member is cut with the group
	}
	final := m.Status.FinalTrigger
	st := vs.Status
	var name string
	committed := final != "" && st.LastManualTrigger == final
	switch {
	case committed:
		name = st.BaseSnapshot
	case final != "" && st.PendingManualTrigger == final:
		name = st.PendingSnapshot
	}
	if name == "" {
		return nil, committed, nil
	}
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(volumeSnapshotGVK)
	err := r.o.Reader.Get(ctx, types.NamespacedName{Namespace: vs.Namespace, Name: name}, u)
	if apierrors.IsNotFound(err) {
		return nil, committed, nil // not created yet (the agent names it first)
	}
	if err != nil {
		return nil, false, fmt.Errorf("get VolumeSnapshot %s/%s: %w", vs.Namespace, name, err)
	}
	s, ok, _ := unstructured.NestedString(u.Object, "status", "creationTime")
	if !ok || s == "" {
		return nil, committed, nil
	}
	at, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return nil, false, fmt.Errorf("VolumeSnapshot %s/%s: status.creationTime %q: %w", vs.Namespace, name, s, err)
	}
	return &at, true, nil
}

// releaseFreeze removes spec.freeze from every VolumeSync of the
// migration (the agents thaw) and records the thaw, once.
func (r *Reconciler) releaseFreeze(ctx context.Context, m *v1alpha1.Migration, now time.Time) error {
	for _, v := range m.Status.Volumes {
		var vs v1alpha1.VolumeSync
		err := r.o.Reader.Get(ctx, types.NamespacedName{Namespace: m.Namespace, Name: v.VolumeSync}, &vs)
		if apierrors.IsNotFound(err) || (err == nil && (vs.Spec.Freeze == nil || !metav1.IsControlledBy(&vs, m))) {
			continue
		}
		if err != nil {
			return fmt.Errorf("get VolumeSync %s/%s: %w", m.Namespace, v.VolumeSync, err)
		}
		if err := r.setFreeze(ctx, &vs, nil); err != nil {
			return err
		}
	}
	if f := m.Status.Freeze; f != nil && f.ThawedTime == nil {
		f.ThawedTime = mtime(now)
		f.Window = &metav1.Duration{Duration: max(now.Sub(f.RequestTime.Time), 0)}
	}
	return nil
}

// setFreeze sets vs's spec.freeze to want (nil: removes it).
func (r *Reconciler) setFreeze(ctx context.Context, vs *v1alpha1.VolumeSync, want *v1alpha1.VolumeFreeze) error {
	if equality.Semantic.DeepEqual(vs.Spec.Freeze, want) {
		return nil
	}
	orig := vs.DeepCopy()
	vs.Spec.Freeze = want.DeepCopy()
	if err := r.o.Client.Patch(ctx, vs, client.MergeFrom(orig)); err != nil {
		return fmt.Errorf("set spec.freeze of VolumeSync %s/%s: %w", vs.Namespace, vs.Name, err)
	}
	return nil
}
