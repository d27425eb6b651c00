package k8sreceiver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/receiver"
)

// promotion is what a target was promoted with.
type promotion struct {
	uid        types.UID // of the VolumeTarget: one re-created under its name is not promoted
	group      string
	generation int64
	root       string
	at         metav1.Time
}

func key(vt *v1alpha1.VolumeTarget) string { return vt.Namespace + "/" + vt.Name }

// promotedErr is Resolve's refusal of a promoted target, for ERROR 15.
func promotedErr(vt *v1alpha1.VolumeTarget, p promotion) error {
	return fmt.Errorf("VolumeTarget %s/%s was promoted with group %q at generation %d and is released: "+
		"it takes no round until it is re-armed (set spec.rearm to a new value): %w", vt.Namespace, vt.Name, p.group, p.generation, receiver.ErrPromoted)
}

// released returns the promotion vt is held in, if it is promoted now: by
// this process (before its status says so), or as its status says.
func (t *Targets) released(vt *v1alpha1.VolumeTarget) (promotion, bool) {
	t.mu.Lock()
	p, ok := t.promoted[key(vt)]
	t.mu.Unlock()
	if ok && p.uid == vt.UID {
		return p, true
	}
	st := &vt.Status
	if st.Promoted && vt.Spec.Rearm == st.LastRearm {
		p := promotion{group: st.PromotedGroup, generation: st.PromotedGeneration, root: st.RootHash}
		if st.PromotedTime != nil {
			p.at = *st.PromotedTime
		}
		return p, true
	}
	return promotion{}, false
}

// rearm clears a promotion when spec.rearm differs from status.lastRearm.
func (t *Targets) rearm(vt *v1alpha1.VolumeTarget) {
	st := &vt.Status
	if vt.Spec.Rearm == st.LastRearm {
		return
	}
	t.mu.Lock()
	_, mem := t.promoted[key(vt)]
	delete(t.promoted, key(vt))
	t.mu.Unlock()
	if st.Promoted || mem {
		st.Promoted = false
		t.setCondition(vt, v1alpha1.ConditionPromoted, metav1.ConditionFalse, v1alpha1.ReasonRearmed,
			fmt.Sprintf("re-armed (spec.rearm %q) after the promotion of group %q at generation %d: rounds are accepted again", vt.Spec.Rearm, st.PromotedGroup, st.PromotedGeneration))
		t.event(vt, corev1.EventTypeNormal, v1alpha1.ReasonRearmed, "Rearm", "re-armed (spec.rearm %q): rounds are accepted again", vt.Spec.Rearm)
		t.o.Logger.Info("target re-armed", "volumetarget", key(vt), "rearm", vt.Spec.Rearm)
	}
	st.LastRearm = vt.Spec.Rearm
}

// setPromoted writes p into vt's status.
func (t *Targets) setPromoted(vt *v1alpha1.VolumeTarget, p promotion) {
	st := &vt.Status
	st.Promoted = true
	st.PromotedGroup, st.PromotedGeneration = p.group, p.generation
	at := p.at
	st.PromotedTime = &at
	st.Phase = v1alpha1.PhasePromoted
	st.DevicePath = ""
	t.setCondition(vt, v1alpha1.ConditionPromoted, metav1.ConditionTrue, v1alpha1.ReasonPromoted,
		fmt.Sprintf("promoted with group %q at generation %d (root %s): the volume is released and rounds are refused until spec.rearm changes", p.group, p.generation, p.root))
}

// groupMember is a target's claim to membership of a group: its last
// committed generation was made by a round of that group.
type groupMember struct {
	vt         *v1alpha1.VolumeTarget
	members    int
	promote    bool
	generation int64
	root       string
}

// memberOf says whether vt's last commit makes it an eligible member of a
// group, and of which: the receiver's state (vs, if this receiver holds
// the volume) or else the target's status (another receiver serves it).
// A target is not eligible while a round writes it, when its committed
// generation is not current, and when that generation was promoted
// already (a re-armed target takes part again with its next group round).
func memberOf(vt *v1alpha1.VolumeTarget, vs *receiver.VolumeStatus) (string, groupMember, bool) {
	st := &vt.Status
	var name string
	m := groupMember{vt: vt}
	switch {
	case vs != nil:
		if vs.Group == nil || !vs.Current || vs.Incomplete {
			return "", m, false
		}
		name, m.members, m.promote = vs.Group.Name, vs.Group.Members, vs.Group.Promote
		m.generation, m.root = int64(vs.Generation), vs.Root
	default:
		if st.Group == "" || st.Incomplete || st.GroupGeneration != st.Generation || st.GroupGeneration == 0 {
			return "", m, false
		}
		name, m.members, m.promote = st.Group, int(st.GroupMembers), st.GroupPromote
		m.generation, m.root = st.GroupGeneration, st.RootHash
	}
	if st.PromotedGroup == name && st.PromotedGeneration == m.generation {
		return "", m, false
	}
	return name, m, true
}

// promoteGroup promotes group if every one of its members committed a
// Promote round of it: self is the target being reconciled (its status is
// changed in place; the caller patches it), the others are patched here.
// It promotes nothing if fewer targets than the group's size are members,
// if more are, or if they disagree on the size.
func (t *Targets) promoteGroup(ctx context.Context, self *v1alpha1.VolumeTarget, group string) error {
	t.groupMu.Lock()
	defer t.groupMu.Unlock()
	var list v1alpha1.VolumeTargetList
	if err := t.o.Client.List(ctx, &list); err != nil {
		return fmt.Errorf("list VolumeTargets: %w", err)
	}
	var ms []groupMember
	for i := range list.Items {
		vt := &list.Items[i]
		if key(vt) == key(self) {
			vt = self
		}
		if vt.DeletionTimestamp != nil || vt.Spec.Store != nil {
			continue
		}
		if _, ok := t.released(vt); ok {
			continue
		}
		vs, err := receiver.ReadStatus(t.o.StateDir, vt.Spec.RemoteVolume)
		switch {
		case errors.Is(err, receiver.ErrNoState):
			vs = nil
		case err != nil:
			continue
		}
		if name, m, ok := memberOf(vt, vs); ok && name == group {
			ms = append(ms, m)
		}
	}
	if len(ms) == 0 {
		return nil
	}
	size := ms[0].members
	for _, m := range ms {
		if !m.promote {
			return nil // a member's last commit was not the group's final round
		}
		if m.members != size {
			t.event(self, corev1.EventTypeWarning, "GroupConflict", "Promote",
				"members of group %q disagree on its size (%d and %d): not promoted", group, size, m.members)
			return nil
		}
	}
	if len(ms) < size {
		t.setCondition(self, v1alpha1.ConditionPromoted, metav1.ConditionFalse, v1alpha1.ReasonNotPromoted,
			fmt.Sprintf("group %q: %d of %d members committed their final round", group, len(ms), size))
		return nil
	}
	if len(ms) > size {
		t.event(self, corev1.EventTypeWarning, "GroupConflict", "Promote",
			"%d VolumeTargets committed a final round of group %q of %d members: not promoted", len(ms), group, size)
		return nil
	}
	now := metav1.NewTime(t.o.Clock.Now())
	for _, m := range ms {
		p := promotion{uid: m.vt.UID, group: group, generation: m.generation, root: m.root, at: now}
		t.mu.Lock()
		t.promoted[key(m.vt)] = p // refuse rounds from now on
		t.mu.Unlock()
	}
	var errs []error
	for _, m := range ms {
		p := t.promotedAs(m.vt)
		if err := t.release(ctx, m.vt, p); err != nil {
			errs = append(errs, fmt.Errorf("promote %s: %w", key(m.vt), err))
			continue
		}
		if m.vt == self {
			t.setPromoted(self, p)
		} else {
			orig := m.vt.DeepCopy()
			t.setPromoted(m.vt, p)
			if err := t.patch(ctx, orig, m.vt); err != nil {
				errs = append(errs, fmt.Errorf("promote %s: %w", key(m.vt), err))
				continue
			}
		}
		t.event(m.vt, corev1.EventTypeNormal, v1alpha1.ReasonPromoted, "Promote",
			"promoted with group %q (%d members) at generation %d, root %s: released, rounds refused until re-armed", group, size, p.generation, p.root)
		t.o.Logger.Info("target promoted", "volumetarget", key(m.vt), "group", group, "generation", p.generation, "root", p.root)
	}
	return errors.Join(errs...)
}

func (t *Targets) promotedAs(vt *v1alpha1.VolumeTarget) promotion {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.promoted[key(vt)]
}

// release annotates the target's PVC with the promotion and deletes the
// VolumeAttachments receivers made for it, so that the application can
// attach the volume wherever it is scheduled.
func (t *Targets) release(ctx context.Context, vt *v1alpha1.VolumeTarget, p promotion) error {
	if vt.Spec.PVC != "" {
		patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{
			v1alpha1.AnnotationMigration:  p.group,
			v1alpha1.AnnotationGeneration: strconv.FormatInt(p.generation, 10),
			v1alpha1.AnnotationRootHash:   p.root,
		}}})
		if err != nil {
			return err
		}
		if _, err := t.o.Kube.CoreV1().PersistentVolumeClaims(vt.Namespace).Patch(ctx, vt.Spec.PVC, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			return fmt.Errorf("annotate PVC %s/%s: %w", vt.Namespace, vt.Spec.PVC, err)
		}
	}
	vas, err := t.o.Kube.StorageV1().VolumeAttachments().List(ctx, metav1.ListOptions{LabelSelector: managedBy + "=" + managedByReceiver})
	if err != nil {
		return err
	}
	for _, va := range vas.Items {
		if va.Annotations[annotationTarget] != key(vt) {
			continue
		}
		err := t.o.Kube.StorageV1().VolumeAttachments().Delete(ctx, va.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("release VolumeAttachment %s: %w", va.Name, err)
		}
	}
	return nil
}
