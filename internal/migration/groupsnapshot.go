package migration

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	groupsnapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumegroupsnapshot/v1"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
)

// The final snapshots as one VolumeGroupSnapshot
// (groupsnapshot.storage.k8s.io/v1, the version the common snapshot
// controller of external-snapshotter v8.6 and later reads; its CRDs serve
// v1beta1, v1beta2 and v1 with one schema for v1beta2 and v1).
//
// The choice is made once, when the cutover starts and before anything is
// scaled (chooseFinalSnapshots): Group if the API is served and a class
// applies, else PerVolume. With Group, the final round waits after the
// quiesce for the group snapshot <migration>-final, which selects the
// volumes' PVCs by the label voldelta.io/migration=<migration>: once it is
// readyToUse and every volume has its member VolumeSnapshot (owned by the
// group, spec.source.persistentVolumeClaimName its PVC; the group's status
// does not list them), each VolumeSync gets the final trigger, the group
// and its member (spec.trigger.snapshotName) in one write. The group
// snapshot is never deleted by the controller: it is owned by the
// Migration and goes with it (and its members with it).

// DefaultGroupSnapshotClassAnnotation marks a VolumeGroupSnapshotClass as
// the default of its driver, as the common snapshot controller reads it.
const DefaultGroupSnapshotClassAnnotation = "groupsnapshot.storage.kubernetes.io/is-default-class"

// Failure reasons of the group snapshot.
const (
	ReasonGroupSnapshotClass  = "GroupSnapshotClass"  // failure: spec.volumeGroupSnapshotClassName cannot be used
	ReasonGroupSnapshotFailed = "GroupSnapshotFailed" // failure: the VolumeGroupSnapshot reported an error
)

// groupSnapshotGK is the kind whose serving decides whether a group
// snapshot can be taken at all.
var groupSnapshotGK = schema.GroupKind{Group: groupsnapv1.GroupName, Kind: "VolumeGroupSnapshot"}

// groupSnapshotServed says whether the apiserver serves
// groupsnapshot.storage.k8s.io/v1 VolumeGroupSnapshots (discovery, through
// the client's RESTMapper).
func groupSnapshotServed(mapper meta.RESTMapper) (bool, error) {
	_, err := mapper.RESTMapping(groupSnapshotGK, groupsnapv1.SchemeGroupVersion.Version)
	switch {
	case meta.IsNoMatchError(err):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("discover %s: %w", groupSnapshotGK, err)
	}
	return true, nil
}

// groupSnapshotName names a Migration's final group snapshot.
func groupSnapshotName(m *v1alpha1.Migration) string { return m.Name + "-final" }

// chooseFinalSnapshots decides, once, how the final snapshots are taken,
// records it in status and says why in an event. A named class that cannot
// be used fails the migration (nothing is scaled yet).
func (r *Reconciler) chooseFinalSnapshots(ctx context.Context, m *v1alpha1.Migration) error {
	if m.Status.FinalSnapshots != "" {
		return nil
	}
	class, why, err := r.groupSnapshotClass(ctx, m)
	if err != nil {
		return err
	}
	if class == "" {
		m.Status.FinalSnapshots = v1alpha1.FinalSnapshotsPerVolume
		why = "final snapshots: one VolumeSnapshot per volume: " + why
	} else {
		m.Status.FinalSnapshots = v1alpha1.FinalSnapshotsGroup
		m.Status.GroupSnapshot = &v1alpha1.GroupSnapshotStatus{Name: groupSnapshotName(m), ClassName: class}
		why = fmt.Sprintf("final snapshots: VolumeGroupSnapshot %s of class %s: %s", groupSnapshotName(m), class, why)
	}
	m.Status.Message = why
	if r.o.Recorder != nil {
		r.o.Recorder.Eventf(m, nil, corev1.EventTypeNormal, "FinalSnapshots", "Cutover", "%s", why)
	}
	return nil
}

// groupSnapshotClass returns the VolumeGroupSnapshotClass of the final
// snapshots, or "" (one snapshot per volume) and why.
func (r *Reconciler) groupSnapshotClass(ctx context.Context, m *v1alpha1.Migration) (class, why string, err error) {
	named := m.Spec.VolumeGroupSnapshotClassName
	served, err := groupSnapshotServed(r.o.Client.RESTMapper())
	if err != nil {
		return "", "", err
	}
	if !served {
		if named != "" {
			return "", "", failf(ReasonGroupSnapshotClass, "spec.volumeGroupSnapshotClassName %s: the API %s is not served", named, groupsnapv1.SchemeGroupVersion)
		}
		return "", "the API " + groupsnapv1.SchemeGroupVersion.String() + " is not served", nil
	}
	if named != "" {
		return r.namedClass(ctx, m, named)
	}
	var list groupsnapv1.VolumeGroupSnapshotClassList
	if err := r.o.Reader.List(ctx, &list); err != nil {
		return "", "", fmt.Errorf("list VolumeGroupSnapshotClasses: %w", err)
	}
	var defaults []groupsnapv1.VolumeGroupSnapshotClass
	for _, c := range list.Items {
		if c.Annotations[DefaultGroupSnapshotClassAnnotation] == "true" {
			defaults = append(defaults, c)
		}
	}
	if len(defaults) == 0 {
		return "", "no VolumeGroupSnapshotClass is marked " + DefaultGroupSnapshotClassAnnotation, nil
	}
	drivers, err := r.volumeDrivers(ctx, m)
	var nd *notGroupable
	switch {
	case errors.As(err, &nd):
		return "", nd.Error(), nil
	case err != nil:
		return "", "", err
	case len(drivers) > 1:
		return "", "the volumes are of drivers " + strings.Join(drivers, ", ") + " (a group snapshot is of one driver)", nil
	}
	var match []string
	for _, c := range defaults {
		if c.Driver == drivers[0] {
			match = append(match, c.Name)
		}
	}
	switch len(match) {
	case 0:
		return "", "no default VolumeGroupSnapshotClass of driver " + drivers[0], nil
	case 1:
		return match[0], "the default VolumeGroupSnapshotClass of driver " + drivers[0], nil
	default:
		return "", fmt.Sprintf("%d default VolumeGroupSnapshotClasses of driver %s (%s)", len(match), drivers[0], strings.Join(match, ", ")), nil
	}
}

// namedClass checks spec.volumeGroupSnapshotClassName: it exists and is
// of the volumes' one driver, or the migration fails.
func (r *Reconciler) namedClass(ctx context.Context, m *v1alpha1.Migration, name string) (class, why string, err error) {
	var c groupsnapv1.VolumeGroupSnapshotClass
	switch err := r.o.Reader.Get(ctx, types.NamespacedName{Name: name}, &c); {
	case apierrors.IsNotFound(err):
		return "", "", failf(ReasonGroupSnapshotClass, "spec.volumeGroupSnapshotClassName: VolumeGroupSnapshotClass %s not found", name)
	case err != nil:
		return "", "", fmt.Errorf("get VolumeGroupSnapshotClass %s: %w", name, err)
	}
	drivers, err := r.volumeDrivers(ctx, m)
	var nd *notGroupable
	switch {
	case errors.As(err, &nd):
		return "", "", failf(ReasonGroupSnapshotClass, "spec.volumeGroupSnapshotClassName %s: %v", name, nd)
	case err != nil:
		return "", "", err
	case len(drivers) > 1 || drivers[0] != c.Driver:
		return "", "", failf(ReasonGroupSnapshotClass, "spec.volumeGroupSnapshotClassName %s is of driver %s, the volumes of %s", name, c.Driver, strings.Join(drivers, ", "))
	}
	return name, "spec.volumeGroupSnapshotClassName", nil
}

// notGroupable says why a volume cannot be in a group snapshot.
type notGroupable struct{ msg string }

func (e *notGroupable) Error() string { return e.msg }

// volumeDrivers returns the CSI drivers of the volumes' PersistentVolumes,
// sorted, once each; a PVC that is not bound to a CSI volume is a
// *notGroupable.
func (r *Reconciler) volumeDrivers(ctx context.Context, m *v1alpha1.Migration) ([]string, error) {
	var drivers []string
	for _, v := range m.Status.Volumes {
		var pvc corev1.PersistentVolumeClaim
		if err := r.o.Reader.Get(ctx, types.NamespacedName{Namespace: m.Namespace, Name: v.PVC}, &pvc); err != nil {
			return nil, fmt.Errorf("get PVC %s/%s: %w", m.Namespace, v.PVC, err)
		}
		if pvc.Spec.VolumeName == "" {
			return nil, &notGroupable{fmt.Sprintf("PVC %s is not bound", v.PVC)}
		}
		var pv corev1.PersistentVolume
		if err := r.o.Reader.Get(ctx, types.NamespacedName{Name: pvc.Spec.VolumeName}, &pv); err != nil {
			return nil, fmt.Errorf("get PersistentVolume %s of PVC %s: %w", pvc.Spec.VolumeName, v.PVC, err)
		}
		if pv.Spec.CSI == nil {
			return nil, &notGroupable{fmt.Sprintf("PersistentVolume %s of PVC %s is not a CSI volume", pv.Name, v.PVC)}
		}
		if !slices.Contains(drivers, pv.Spec.CSI.Driver) {
			drivers = append(drivers, pv.Spec.CSI.Driver)
		}
	}
	slices.Sort(drivers)
	return drivers, nil
}

// groupSnapshotReady takes the group snapshot (finalSnapshots Group) and
// reports whether it is ready with a member of every volume, recorded in
// status.volumes[].finalSnapshot. Until then the message says what it
// waits for. An error the group snapshot reports fails the migration.
func (r *Reconciler) groupSnapshotReady(ctx context.Context, m *v1alpha1.Migration, now time.Time) (bool, error) {
	g := m.Status.GroupSnapshot
	if m.Status.FinalSnapshots != v1alpha1.FinalSnapshotsGroup || g == nil || g.ReadyTime != nil {
		return true, nil
	}
	vgs, err := r.ensureGroupSnapshot(ctx, m, now)
	if err != nil {
		return false, err
	}
	st := vgs.Status
	if st != nil && st.Error != nil {
		msg := "no message"
		if st.Error.Message != nil {
			msg = *st.Error.Message
		}
		return false, failf(ReasonGroupSnapshotFailed, "VolumeGroupSnapshot %s failed: %s", g.Name, msg)
	}
	if st == nil || st.ReadyToUse == nil || !*st.ReadyToUse {
		m.Status.Message = fmt.Sprintf("final snapshots: waiting for VolumeGroupSnapshot %s (class %s) to be readyToUse", g.Name, g.ClassName)
		return false, nil
	}
	members, err := r.groupMembers(ctx, m, vgs)
	if err != nil {
		return false, err
	}
	var missing []string
	for _, v := range m.Status.Volumes {
		if members[v.PVC] == "" {
			missing = append(missing, v.PVC)
		}
	}
	if len(missing) > 0 {
		m.Status.Message = fmt.Sprintf("final snapshots: VolumeGroupSnapshot %s is ready; waiting for the member VolumeSnapshots of %s", g.Name, strings.Join(missing, ", "))
		return false, nil
	}
	for i, v := range m.Status.Volumes {
		m.Status.Volumes[i].FinalSnapshot = members[v.PVC]
	}
	g.ReadyTime = mtime(now)
	return true, nil
}

// ensureGroupSnapshot labels the volumes' PVCs and creates the group
// snapshot selecting exactly them, or returns the one that exists.
func (r *Reconciler) ensureGroupSnapshot(ctx context.Context, m *v1alpha1.Migration, now time.Time) (*groupsnapv1.VolumeGroupSnapshot, error) {
	g := m.Status.GroupSnapshot
	vgs := &groupsnapv1.VolumeGroupSnapshot{}
	err := r.o.Reader.Get(ctx, types.NamespacedName{Namespace: m.Namespace, Name: g.Name}, vgs)
	switch {
	case err == nil && metav1.IsControlledBy(vgs, m):
		if g.CreateTime == nil { // created by a reconcile whose status write was lost
			g.CreateTime = mtime(vgs.CreationTimestamp.Time)
		}
		return vgs, nil
	case err == nil && vgs.DeletionTimestamp != nil:
		// Most likely the group snapshot of an earlier Migration of this
		// name, being garbage-collected: retried.
		return nil, fmt.Errorf("VolumeGroupSnapshot %s/%s of another owner is being deleted", m.Namespace, g.Name)
	case err == nil:
		return nil, failf(ReasonGroupSnapshotFailed, "VolumeGroupSnapshot %s/%s exists and is not this Migration's", m.Namespace, g.Name)
	case !apierrors.IsNotFound(err):
		return nil, fmt.Errorf("get VolumeGroupSnapshot %s/%s: %w", m.Namespace, g.Name, err)
	}
	if err := r.labelMembers(ctx, m); err != nil {
		return nil, err
	}
	class := g.ClassName
	vgs = &groupsnapv1.VolumeGroupSnapshot{
		ObjectMeta: metav1.ObjectMeta{Namespace: m.Namespace, Name: g.Name, Labels: map[string]string{LabelMigration: m.Name}},
		Spec: groupsnapv1.VolumeGroupSnapshotSpec{
			Source:                       groupsnapv1.VolumeGroupSnapshotSource{Selector: memberSelector(m)},
			VolumeGroupSnapshotClassName: &class,
		},
	}
	if err := controllerutil.SetControllerReference(m, vgs, r.o.Client.Scheme()); err != nil {
		return nil, fmt.Errorf("owner reference of VolumeGroupSnapshot %s: %w", g.Name, err)
	}
	if err := r.o.Client.Create(ctx, vgs); err != nil {
		return nil, fmt.Errorf("create VolumeGroupSnapshot %s/%s: %w", m.Namespace, g.Name, err)
	}
	g.CreateTime = mtime(now)
	return vgs, nil
}

// memberSelector selects the PVCs of a Migration's group snapshot.
func memberSelector(m *v1alpha1.Migration) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchLabels: map[string]string{LabelMigration: m.Name}}
}

// labelMembers sets LabelMigration on every volume's PVC and fails the
// migration if another PVC of the namespace carries it: the group snapshot
// would take it too.
func (r *Reconciler) labelMembers(ctx context.Context, m *v1alpha1.Migration) error {
	var list corev1.PersistentVolumeClaimList
	if err := r.o.Reader.List(ctx, &list, client.InNamespace(m.Namespace), client.MatchingLabels{LabelMigration: m.Name}); err != nil {
		return fmt.Errorf("list PVCs labelled %s=%s: %w", LabelMigration, m.Name, err)
	}
	for _, p := range list.Items {
		if !slices.ContainsFunc(m.Status.Volumes, func(v v1alpha1.MigrationVolumeStatus) bool { return v.PVC == p.Name }) {
			return failf(ReasonGroupSnapshotFailed, "PVC %s is labelled %s=%s but is not a volume of the migration: the group snapshot would take it", p.Name, LabelMigration, m.Name)
		}
	}
	for _, v := range m.Status.Volumes {
		var pvc corev1.PersistentVolumeClaim
		if err := r.o.Reader.Get(ctx, types.NamespacedName{Namespace: m.Namespace, Name: v.PVC}, &pvc); err != nil {
			return fmt.Errorf("get PVC %s/%s: %w", m.Namespace, v.PVC, err)
		}
		if pvc.Labels[LabelMigration] == m.Name {
			continue
		}
		orig := pvc.DeepCopy()
		if pvc.Labels == nil {
			pvc.Labels = map[string]string{}
		}
		pvc.Labels[LabelMigration] = m.Name
		if err := r.o.Client.Patch(ctx, &pvc, client.MergeFrom(orig)); err != nil {
			return fmt.Errorf("label PVC %s/%s %s=%s: %w", m.Namespace, v.PVC, LabelMigration, m.Name, err)
		}
	}
	return nil
}

// groupMembers maps each PVC to its member VolumeSnapshot of vgs: those
// of the namespace with an owner reference to it.
func (r *Reconciler) groupMembers(ctx context.Context, m *v1alpha1.Migration, vgs *groupsnapv1.VolumeGroupSnapshot) (map[string]string, error) {
	var list snapv1.VolumeSnapshotList
	if err := r.o.Reader.List(ctx, &list, client.InNamespace(m.Namespace)); err != nil {
		return nil, fmt.Errorf("list VolumeSnapshots in %s: %w", m.Namespace, err)
	}
	out := map[string]string{}
	for _, s := range list.Items {
		owned := slices.ContainsFunc(s.OwnerReferences, func(o metav1.OwnerReference) bool {
			return o.UID == vgs.UID && o.Kind == "VolumeGroupSnapshot"
		})
		if src := s.Spec.Source.PersistentVolumeClaimName; owned && src != nil && *src != "" {
			out[*src] = s.Name
		}
	}
	return out, nil
}

// finalSnapshots maps each PVC to the member snapshot its final round
// reads, or is nil (each agent takes its own).
func finalSnapshots(m *v1alpha1.Migration) map[string]string {
	if m.Status.FinalSnapshots != v1alpha1.FinalSnapshotsGroup {
		return nil
	}
	out := map[string]string{}
	for _, v := range m.Status.Volumes {
		out[v.PVC] = v.FinalSnapshot
	}
	return out
}

// groupSnapshotWait is the group snapshot's wait (creation to ready), if
// the final snapshots were one.
func groupSnapshotWait(m *v1alpha1.Migration) (*metav1.Duration, bool) {
	g := m.Status.GroupSnapshot
	if m.Status.FinalSnapshots != v1alpha1.FinalSnapshotsGroup || g == nil || g.CreateTime == nil || g.ReadyTime == nil {
		return nil, false
	}
	return &metav1.Duration{Duration: sinceTo(g.CreateTime, g.ReadyTime)}, true
}

// groupSnapshotCut says whether the group snapshot's point in time is
// taken (its status.creationTime is set): from then on the workloads'
// writes are not in it (a freeze may thaw).
func (r *Reconciler) groupSnapshotCut(ctx context.Context, m *v1alpha1.Migration) (cut bool, err error) {
	_, cut, err = r.groupCutTime(ctx, m)
	return cut, err
}

// groupCutTime is the group snapshot's status.creationTime, the moment
// every member was cut, once it is set.
func (r *Reconciler) groupCutTime(ctx context.Context, m *v1alpha1.Migration) (*time.Time, bool, error) {
	g := m.Status.GroupSnapshot
	if m.Status.FinalSnapshots != v1alpha1.FinalSnapshotsGroup || g == nil {
		return nil, false, nil
	}
	var vgs groupsnapv1.VolumeGroupSnapshot
	switch err := r.o.Reader.Get(ctx, types.NamespacedName{Namespace: m.Namespace, Name: g.Name}, &vgs); {
	case apierrors.IsNotFound(err):
		return nil, false, nil
	case err != nil:
		return nil, false, fmt.Errorf("get VolumeGroupSnapshot %s/%s: %w", m.Namespace, g.Name, err)
	}
	if vgs.Status == nil || vgs.Status.CreationTime == nil {
		return nil, false, nil
	}
	at := vgs.Status.CreationTime.Time
	return &at, true, nil
}
