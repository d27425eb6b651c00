package migration

import (
	"context"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/transport"
)

// validateSpec checks what the CRD's schema cannot: the Migration's name
// as a label value, the bandwidth limit.
func validateSpec(m *v1alpha1.Migration) error {
	if errs := validation.IsValidLabelValue(m.Name); len(errs) > 0 {
		return failf(ReasonInvalidSpec, "the Migration's name %q cannot label its VolumeSyncs (%s=%s): %s",
			m.Name, LabelMigration, m.Name, strings.Join(errs, "; "))
	}
	if bw := strings.TrimSpace(m.Spec.BandwidthLimit); bw != "" {
		if _, err := transport.ParseRate(bw); err != nil {
			return failf(ReasonInvalidSpec, "spec.bandwidthLimit: %v", err)
		}
	}
	return nil
}

// resolveVolumes returns the PVCs of spec.volumes, sorted: the names
// listed (missing: those that do not exist yet) and those the selector
// matches.
func (r *Reconciler) resolveVolumes(ctx context.Context, m *v1alpha1.Migration) (pvcs, missing []string, err error) {
	set := map[string]bool{}
	for _, name := range m.Spec.Volumes.PVCs {
		var pvc corev1.PersistentVolumeClaim
		err := r.o.Reader.Get(ctx, types.NamespacedName{Namespace: m.Namespace, Name: name}, &pvc)
		switch {
		case apierrors.IsNotFound(err):
			missing = append(missing, name)
		case err != nil:
			return nil, nil, fmt.Errorf("get PVC %s/%s: %w", m.Namespace, name, err)
		default:
			set[name] = true
		}
	}
	if sel := m.Spec.Volumes.Selector; sel != nil {
		s, err := metav1.LabelSelectorAsSelector(sel)
		if err != nil {
			return nil, nil, failf(ReasonInvalidSpec, "spec.volumes.selector: %v", err)
		}
		var list corev1.PersistentVolumeClaimList
		if err := r.o.Reader.List(ctx, &list, client.InNamespace(m.Namespace), client.MatchingLabelsSelector{Selector: s}); err != nil {
			return nil, nil, fmt.Errorf("list PVCs in %s: %w", m.Namespace, err)
		}
		for _, p := range list.Items {
			set[p.Name] = true
		}
	}
	for n := range set {
		pvcs = append(pvcs, n)
	}
	slices.Sort(pvcs)
	slices.Sort(missing)
	return pvcs, missing, nil
}

// volumeFor names a PVC's VolumeSync (<migration>-<pvc>) and its remote
// volume (<namespace>-<pvc>), or fails if either name is not valid.
func volumeFor(m *v1alpha1.Migration, pvc string) (v1alpha1.MigrationVolumeStatus, error) {
	v := v1alpha1.MigrationVolumeStatus{PVC: pvc, VolumeSync: m.Name + "-" + pvc, RemoteVolume: m.Namespace + "-" + pvc}
	if errs := validation.IsDNS1123Subdomain(v.VolumeSync); len(errs) > 0 {
		return v, failf(ReasonInvalidSpec, "VolumeSync name %q (<migration>-<pvc>): %s", v.VolumeSync, strings.Join(errs, "; "))
	}
	if err := transport.ValidateVolumeName(v.RemoteVolume); err != nil {
		return v, failf(ReasonInvalidSpec, "remote volume name %q (<namespace>-<pvc>): %v", v.RemoteVolume, err)
	}
	return v, nil
}

// roundSpec is what every VolumeSync of the migration is asked for: the
// manual trigger of the current round and, for the final round, the group
// the destination promotes once every member committed it and, with a
// group snapshot, each volume's member snapshot. All are set in one write,
// so that a round snapshotted after the final trigger also carries the
// group, and reads the member rather than a snapshot of its own.
type roundSpec struct {
	trigger string
	group   *v1alpha1.SyncGroup
	// snapshots are the VolumeSnapshots the round reads, by PVC (nil:
	// each agent takes its own).
	snapshots map[string]string
}

// ensureVolumeSync returns the VolumeSync of v asked for rs, creating it
// if it does not exist. One that exists but is not the Migration's fails
// the migration.
func (r *Reconciler) ensureVolumeSync(ctx context.Context, m *v1alpha1.Migration, v v1alpha1.MigrationVolumeStatus, rs roundSpec) (*v1alpha1.VolumeSync, error) {
	dest := m.Spec.Destination
	dest.VolumeName = v.RemoteVolume
	vs := &v1alpha1.VolumeSync{
		ObjectMeta: metav1.ObjectMeta{Namespace: m.Namespace, Name: v.VolumeSync, Labels: map[string]string{LabelMigration: m.Name}},
		Spec: v1alpha1.VolumeSyncSpec{
			SourcePVC:               v.PVC,
			Destination:             dest,
			Trigger:                 v1alpha1.Trigger{Manual: rs.trigger, SnapshotName: rs.snapshots[v.PVC]},
			VolumeSnapshotClassName: m.Spec.VolumeSnapshotClassName,
			BandwidthLimit:          m.Spec.BandwidthLimit,
			Group:                   rs.group.DeepCopy(),
		},
	}
	if err := controllerutil.SetControllerReference(m, vs, r.o.Client.Scheme()); err != nil {
		return nil, fmt.Errorf("owner reference of VolumeSync %s: %w", v.VolumeSync, err)
	}
	err := r.o.Client.Create(ctx, vs)
	if err == nil {
		return vs, nil
	}
	if !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("create VolumeSync %s/%s: %w", m.Namespace, v.VolumeSync, err)
	}
	if err := r.o.Reader.Get(ctx, client.ObjectKeyFromObject(vs), vs); err != nil {
		return nil, fmt.Errorf("get VolumeSync %s/%s: %w", m.Namespace, v.VolumeSync, err)
	}
	switch {
	case !metav1.IsControlledBy(vs, m) && vs.DeletionTimestamp != nil:
		// Most likely the VolumeSync of an earlier Migration of this name,
		// being garbage-collected: retried.
		return nil, fmt.Errorf("VolumeSync %s/%s of another owner is being deleted", m.Namespace, v.VolumeSync)
	case !metav1.IsControlledBy(vs, m):
		return nil, failf(ReasonVolumeSyncTaken, "VolumeSync %s/%s exists and is not this Migration's", m.Namespace, v.VolumeSync)
	}
	return vs, r.setRound(ctx, vs, rs)
}

// member is a volume of the migration and its VolumeSync.
type member struct {
	vol v1alpha1.MigrationVolumeStatus
	vs  *v1alpha1.VolumeSync
}

// members returns the VolumeSyncs of status.volumes, in order, each asked
// for rs; a deleted one is created again.
func (r *Reconciler) members(ctx context.Context, m *v1alpha1.Migration, rs roundSpec) ([]member, error) {
	out := make([]member, 0, len(m.Status.Volumes))
	for _, v := range m.Status.Volumes {
		var vs v1alpha1.VolumeSync
		err := r.o.Reader.Get(ctx, types.NamespacedName{Namespace: m.Namespace, Name: v.VolumeSync}, &vs)
		switch {
		case apierrors.IsNotFound(err):
			got, err := r.ensureVolumeSync(ctx, m, v, rs)
			if err != nil {
				return nil, err
			}
			vs = *got
		case err != nil:
			return nil, fmt.Errorf("get VolumeSync %s/%s: %w", m.Namespace, v.VolumeSync, err)
		case !metav1.IsControlledBy(&vs, m):
			return nil, failf(ReasonVolumeSyncTaken, "VolumeSync %s/%s exists and is not this Migration's", m.Namespace, v.VolumeSync)
		default:
			if err := r.setRound(ctx, &vs, rs); err != nil {
				return nil, err
			}
		}
		out = append(out, member{vol: v, vs: &vs})
	}
	return out, nil
}

// setRound sets vs's spec.trigger.manual, spec.trigger.snapshotName and
// spec.group to rs's, in one patch.
func (r *Reconciler) setRound(ctx context.Context, vs *v1alpha1.VolumeSync, rs roundSpec) error {
	snap := rs.snapshots[vs.Spec.SourcePVC]
	if vs.Spec.Trigger.Manual == rs.trigger && vs.Spec.Trigger.SnapshotName == snap && equality.Semantic.DeepEqual(vs.Spec.Group, rs.group) {
		return nil
	}
	orig := vs.DeepCopy()
	vs.Spec.Trigger.Manual, vs.Spec.Trigger.SnapshotName, vs.Spec.Group = rs.trigger, snap, rs.group.DeepCopy()
	if err := r.o.Client.Patch(ctx, vs, client.MergeFrom(orig)); err != nil {
		return fmt.Errorf("set trigger %q on VolumeSync %s/%s: %w", rs.trigger, vs.Namespace, vs.Name, err)
	}
	return nil
}

// pauseMembers sets spec.paused on every VolumeSync of the migration that
// exists.
func (r *Reconciler) pauseMembers(ctx context.Context, m *v1alpha1.Migration) error {
	for _, v := range m.Status.Volumes {
		var vs v1alpha1.VolumeSync
		err := r.o.Reader.Get(ctx, types.NamespacedName{Namespace: m.Namespace, Name: v.VolumeSync}, &vs)
		if apierrors.IsNotFound(err) || (err == nil && (vs.Spec.Paused || !metav1.IsControlledBy(&vs, m))) {
			continue
		}
		if err != nil {
			return fmt.Errorf("get VolumeSync %s/%s: %w", m.Namespace, v.VolumeSync, err)
		}
		orig := vs.DeepCopy()
		vs.Spec.Paused = true
		if err := r.o.Client.Patch(ctx, &vs, client.MergeFrom(orig)); err != nil {
			return fmt.Errorf("pause VolumeSync %s/%s: %w", vs.Namespace, vs.Name, err)
		}
	}
	return nil
}

// committed says whether vs's last successful round is trigger's: its
// snapshot was taken after trigger was set, and nothing failed since.
func committed(vs *v1alpha1.VolumeSync, trigger string) bool {
	return vs.Status.LastManualTrigger == trigger && meta.IsStatusConditionTrue(vs.Status.Conditions, v1alpha1.ConditionReady)
}

// progress returns the PVCs whose VolumeSync has not committed trigger
// yet, and for those that report a failure, what failed.
func progress(members []member, trigger string) (waiting, degraded []string) {
	for _, mb := range members {
		if committed(mb.vs, trigger) {
			continue
		}
		waiting = append(waiting, mb.vol.PVC)
		if c := meta.FindStatusCondition(mb.vs.Status.Conditions, v1alpha1.ConditionDegraded); c != nil && c.Status == metav1.ConditionTrue {
			degraded = append(degraded, fmt.Sprintf("%s (VolumeSync %s, %s: %s)", mb.vol.PVC, mb.vs.Name, c.Reason, c.Message))
		} else if mb.vs.Spec.Paused {
			degraded = append(degraded, fmt.Sprintf("%s (VolumeSync %s is paused)", mb.vol.PVC, mb.vs.Name))
		}
	}
	return waiting, degraded
}
