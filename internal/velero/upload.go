package velero

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	velerov1 "github.com/vmware-tanzu/velero/pkg/apis/velero/v1"
	velerov2 "github.com/vmware-tanzu/velero/pkg/apis/velero/v2alpha1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
)

// Labels and annotations of the VolumeSyncs the mover drives.
const (
	// LabelMover marks a VolumeSync the mover created.
	LabelMover = "voldelta.io/velero"
	// AnnotationDataUpload is the DataUpload ("<namespace>/<name>") the
	// VolumeSync's current trigger belongs to.
	AnnotationDataUpload = "voldelta.io/velero-dataupload"
	// AnnotationBaseSnapshot is the VolumeSnapshot of the PVC's last
	// completed backup: kept as the next backup's base (its change hints),
	// deleted when the next one completes.
	AnnotationBaseSnapshot = "voldelta.io/velero-base-snapshot"
)

// Keys of a completed DataUpload's status.dataMoverResult.
const (
	ResultStore      = "store"
	ResultVolume     = "volume"
	ResultGeneration = "generation"
	ResultRootHash   = "rootHash"
)

// MaxRoundFailures is how many failed attempts of a backup's round fail
// the DataUpload.
const MaxRoundFailures = 5

// UploadOptions configure Uploads.
type UploadOptions struct {
	// Client reads and writes DataUploads, VolumeSyncs, VolumeSnapshots
	// and BackupStorageLocations. Required.
	Client client.Client
	// Reader, if set, reads the VolumeSyncs instead of Client: the
	// manager's API reader, so that a DataUpload never judges its round by
	// a VolumeSync older than its own last update of it.
	Reader client.Reader
	// Kube reads the mover's ConfigMap and the locations' Secrets, and
	// writes the copies of their credentials. Required.
	Kube kubernetes.Interface
	// Namespace is Velero's namespace (its DataUploads, locations and the
	// mover's ConfigMap). Required.
	Namespace string
	// Clock; default the real clock.
	Clock clock.PassiveClock
	// Recorder records Events on DataUploads; optional.
	Recorder events.EventRecorder
	// Logger; nil logs nothing.
	Logger *slog.Logger
}

// Uploads reconciles Velero's DataUploads for the voldelta mover.
type Uploads struct{ o UploadOptions }

// NewUploads checks o and returns Uploads.
func NewUploads(o UploadOptions) (*Uploads, error) {
	if o.Client == nil || o.Kube == nil || o.Namespace == "" {
		return nil, errors.New("velero: UploadOptions.Client, Kube and Namespace are required")
	}
	if o.Reader == nil {
		o.Reader = o.Client
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Uploads{o: o}, nil
}

// AddToScheme registers the kinds the mover reads besides voldelta's
// and the snapshot API's: Velero's DataUploads and BackupStorageLocations.
func AddToScheme(s *runtime.Scheme) error {
	return errors.Join(velerov1.AddToScheme(s), velerov2.AddToScheme(s))
}

// SetupWithManager registers the reconciler: the DataUploads of the mover
// in Velero's namespace, woken by the VolumeSyncs they drive.
func (u *Uploads) SetupWithManager(mgr ctrl.Manager) error {
	mine := predicate.NewPredicateFuncs(func(o client.Object) bool {
		du, ok := o.(*velerov2.DataUpload)
		return ok && du.Namespace == u.o.Namespace && du.Spec.DataMover == MoverName
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("velero-dataupload").
		For(&velerov2.DataUpload{}, builder.WithPredicates(mine)).
		Watches(&v1alpha1.VolumeSync{}, handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
			ns, name, ok := strings.Cut(o.GetAnnotations()[AnnotationDataUpload], "/")
			if !ok || ns == "" || name == "" {
				return nil
			}
			return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: ns, Name: name}}}
		})).
		Complete(u)
}

// Reconcile implements reconcile.Reconciler: one step of a DataUpload.
func (u *Uploads) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var du velerov2.DataUpload
	if err := u.o.Client.Get(ctx, req.NamespacedName, &du); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if du.Spec.DataMover != MoverName || du.DeletionTimestamp != nil {
		return ctrl.Result{}, nil
	}
	switch du.Status.Phase {
	case velerov2.DataUploadPhaseCompleted, velerov2.DataUploadPhaseFailed, velerov2.DataUploadPhaseCanceled:
		return ctrl.Result{}, nil
	}
	if du.Spec.Cancel || du.Status.Phase == velerov2.DataUploadPhaseCanceling {
		return u.cancel(ctx, &du)
	}
	switch du.Status.Phase {
	case "", velerov2.DataUploadPhaseNew:
		return u.accept(ctx, &du)
	case velerov2.DataUploadPhaseAccepted:
		return u.prepare(ctx, &du)
	default: // Prepared, InProgress
		return u.follow(ctx, &du)
	}
}

// accept checks the DataUpload and takes it.
func (u *Uploads) accept(ctx context.Context, du *velerov2.DataUpload) (ctrl.Result, error) {
	s := du.Spec
	switch {
	case s.SnapshotType != velerov2.SnapshotTypeCSI || s.CSISnapshot == nil || s.CSISnapshot.VolumeSnapshot == "":
		return u.fail(ctx, du, "voldelta moves CSI snapshots: spec.snapshotType must be CSI with spec.csiSnapshot.volumeSnapshot")
	case s.SourcePVC == "" || s.SourceNamespace == "":
		return u.fail(ctx, du, "spec.sourcePVC and spec.sourceNamespace are required")
	}
	return ctrl.Result{}, u.patch(ctx, du, func(st *velerov2.DataUploadStatus) {
		now := u.now()
		st.Phase = velerov2.DataUploadPhaseAccepted
		st.AcceptedTimestamp, st.StartTimestamp = &now, &now
		st.Message = "accepted by voldelta"
	})
}

// prepare points the PVC's VolumeSync at the DataUpload's snapshot and the
// location's store.
func (u *Uploads) prepare(ctx context.Context, du *velerov2.DataUpload) (ctrl.Result, error) {
	set, err := ReadSettings(ctx, u.o.Kube, u.o.Namespace)
	if err != nil {
		return u.fail(ctx, du, err.Error())
	}
	var bsl velerov1.BackupStorageLocation
	if err := u.o.Client.Get(ctx, client.ObjectKey{Namespace: u.o.Namespace, Name: du.Spec.BackupStorageLocation}, &bsl); err != nil {
		if apierrors.IsNotFound(err) {
			return u.fail(ctx, du, fmt.Sprintf("BackupStorageLocation %s/%s not found", u.o.Namespace, du.Spec.BackupStorageLocation))
		}
		return ctrl.Result{}, err
	}
	loc, err := ResolveLocation(ctx, u.o.Kube, &bsl, set)
	if errors.Is(err, ErrLocation) {
		return u.fail(ctx, du, err.Error())
	}
	if err != nil {
		return ctrl.Result{}, err
	}
	ns := du.Spec.SourceNamespace
	if err := u.ensureCredentials(ctx, ns, loc); err != nil {
		return ctrl.Result{}, err
	}
	var snap snapv1.VolumeSnapshot
	if err := u.o.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: du.Spec.CSISnapshot.VolumeSnapshot}, &snap); err != nil {
		if apierrors.IsNotFound(err) {
			return u.fail(ctx, du, fmt.Sprintf("VolumeSnapshot %s/%s not found", ns, du.Spec.CSISnapshot.VolumeSnapshot))
		}
		return ctrl.Result{}, err
	}
	vs, busy, err := u.ensureVolumeSync(ctx, du, loc.Store, set)
	if err != nil || busy {
		return ctrl.Result{RequeueAfter: 2 * time.Second}, err
	}
	return ctrl.Result{}, u.patch(ctx, du, func(st *velerov2.DataUploadStatus) {
		st.Phase = velerov2.DataUploadPhasePrepared
		st.Path = loc.Store.URL + "/" + vs.Spec.Destination.VolumeName
		st.Message = fmt.Sprintf("VolumeSync %s/%s reads VolumeSnapshot %s", vs.Namespace, vs.Name, du.Spec.CSISnapshot.VolumeSnapshot)
	})
}

// VolumeSyncName is the VolumeSync of a PVC's backups.
func VolumeSyncName(pvc string) string { return "velero-" + shortName(pvc, 56) }

// StoreVolume is the store volume of a PVC's backups.
func StoreVolume(namespace, pvc string) string { return shortName(namespace+"-"+pvc, 128) }

// ensureVolumeSync creates or updates the PVC's VolumeSync so that its
// next round reads the DataUpload's snapshot into the store. busy: the
// VolumeSync is still on another DataUpload's round.
func (u *Uploads) ensureVolumeSync(ctx context.Context, du *velerov2.DataUpload, store v1alpha1.Store, set Settings) (*v1alpha1.VolumeSync, bool, error) {
	ns, pvc := du.Spec.SourceNamespace, du.Spec.SourcePVC
	key := du.Namespace + "/" + du.Name
	spec := v1alpha1.VolumeSyncSpec{
		SourcePVC:               pvc,
		Destination:             v1alpha1.Destination{Store: &store, VolumeName: StoreVolume(ns, pvc)},
		Trigger:                 v1alpha1.Trigger{Manual: string(du.UID), SnapshotName: du.Spec.CSISnapshot.VolumeSnapshot},
		BandwidthLimit:          set.BandwidthLimit,
		VolumeSnapshotClassName: set.VolumeSnapshotClassName,
	}
	var vs v1alpha1.VolumeSync
	err := u.o.Reader.Get(ctx, client.ObjectKey{Namespace: ns, Name: VolumeSyncName(pvc)}, &vs)
	if apierrors.IsNotFound(err) {
		vs = v1alpha1.VolumeSync{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: VolumeSyncName(pvc),
			Labels: map[string]string{LabelMover: "true"}, Annotations: map[string]string{AnnotationDataUpload: key}}, Spec: spec}
		if err := u.o.Client.Create(ctx, &vs); err != nil {
			return nil, false, fmt.Errorf("create VolumeSync %s/%s: %w", ns, vs.Name, err)
		}
		return &vs, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	if vs.Spec.Trigger.Manual == spec.Trigger.Manual {
		return &vs, false, nil // set by an earlier attempt of this step
	}
	if vs.Status.PendingSnapshot != "" || vs.Status.LastManualTrigger != vs.Spec.Trigger.Manual {
		return &vs, true, nil // the round of an earlier backup has not ended
	}
	orig := vs.DeepCopy()
	vs.Spec.Destination, vs.Spec.Trigger = spec.Destination, spec.Trigger
	vs.Spec.BandwidthLimit, vs.Spec.VolumeSnapshotClassName, vs.Spec.Paused = spec.BandwidthLimit, spec.VolumeSnapshotClassName, false
	if vs.Annotations == nil {
		vs.Annotations = map[string]string{}
	}
	vs.Annotations[AnnotationDataUpload] = key
	if err := u.o.Client.Patch(ctx, &vs, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
		return nil, false, fmt.Errorf("update VolumeSync %s/%s: %w", ns, vs.Name, err)
	}
	return &vs, false, nil
}

// follow reports the round of the DataUpload until it ends.
func (u *Uploads) follow(ctx context.Context, du *velerov2.DataUpload) (ctrl.Result, error) {
	vs, err := u.volumeSync(ctx, du)
	if err != nil {
		return ctrl.Result{}, err
	}
	if vs == nil || vs.Spec.Trigger.Manual != string(du.UID) {
		return u.fail(ctx, du, "the PVC's VolumeSync was deleted or taken over by another backup before this one's round ended")
	}
	st := vs.Status
	if st.LastManualTrigger == string(du.UID) && meta.IsStatusConditionTrue(st.Conditions, v1alpha1.ConditionReady) {
		return u.complete(ctx, du, vs)
	}
	if st.ConsecutiveFailures >= MaxRoundFailures {
		msg := "round failed"
		if c := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionDegraded); c != nil {
			msg = c.Message
		}
		return u.fail(ctx, du, fmt.Sprintf("%d attempts failed: %s", st.ConsecutiveFailures, msg))
	}
	if t := du.Spec.OperationTimeout.Duration; t > 0 && du.Status.StartTimestamp != nil && u.o.Clock.Since(du.Status.StartTimestamp.Time) > t {
		return u.fail(ctx, du, fmt.Sprintf("not completed within spec.operationTimeout %s", t))
	}
	err = u.patch(ctx, du, func(s *velerov2.DataUploadStatus) {
		if st.PendingManualTrigger == string(du.UID) {
			s.Phase = velerov2.DataUploadPhaseInProgress
			s.Node = st.Node
		}
		if p := st.Progress; p != nil {
			s.Progress.TotalBytes, s.Progress.BytesDone = p.SourceBytes, p.ScannedBytes
		}
	})
	return ctrl.Result{RequeueAfter: 5 * time.Second}, err
}

// complete records the pushed generation, and deletes the snapshot of
// the PVC's previous backup (this one's is kept as the next one's base).
func (u *Uploads) complete(ctx context.Context, du *velerov2.DataUpload, vs *v1alpha1.VolumeSync) (ctrl.Result, error) {
	st := vs.Status
	vol := vs.Spec.Destination.VolumeName
	res := map[string]string{ResultStore: vs.Spec.Destination.Store.URL, ResultVolume: vol,
		ResultGeneration: strconv.FormatInt(st.LastGeneration, 10), ResultRootHash: st.LastRootHash}
	err := u.patch(ctx, du, func(s *velerov2.DataUploadStatus) {
		now := u.now()
		s.Phase = velerov2.DataUploadPhaseCompleted
		s.SnapshotID = SnapshotID(vol, st.LastGeneration)
		s.DataMoverResult = &res
		s.Progress.TotalBytes, s.Progress.BytesDone = st.LastSourceBytes, st.LastSourceBytes
		s.IncrementalBytes = st.LastBytesSent
		s.Node = st.Node
		s.CompletionTimestamp = &now
		s.Message = fmt.Sprintf("generation %d of %s: %d of %d bytes uploaded", st.LastGeneration, vol, st.LastBytesSent, st.LastSourceBytes)
	})
	if err != nil {
		return ctrl.Result{}, err
	}
	u.event(du, corev1.EventTypeNormal, "Completed", "generation %d of %s committed to %s: %d of %d bytes uploaded",
		st.LastGeneration, vol, vs.Spec.Destination.Store.URL, st.LastBytesSent, st.LastSourceBytes)
	prev := vs.Annotations[AnnotationBaseSnapshot]
	if cur := du.Spec.CSISnapshot.VolumeSnapshot; prev != cur {
		orig := vs.DeepCopy()
		vs.Annotations[AnnotationBaseSnapshot] = cur
		if err := u.o.Client.Patch(ctx, vs, client.MergeFrom(orig)); err != nil {
			return ctrl.Result{}, err
		}
		if prev != "" {
			return ctrl.Result{}, u.deleteSnapshot(ctx, vs.Namespace, prev)
		}
	}
	return ctrl.Result{}, nil
}

// cancel stops a DataUpload: a round not started yet is withdrawn; one
// under way is let finish (it cannot be cut short without leaving the
// store's generation half written), then the DataUpload is Canceled.
func (u *Uploads) cancel(ctx context.Context, du *velerov2.DataUpload) (ctrl.Result, error) {
	vs, err := u.volumeSync(ctx, du)
	if err != nil {
		return ctrl.Result{}, err
	}
	if vs != nil && vs.Spec.Trigger.Manual == string(du.UID) {
		switch {
		case vs.Status.PendingManualTrigger == string(du.UID):
			return ctrl.Result{RequeueAfter: 2 * time.Second}, u.patch(ctx, du, func(s *velerov2.DataUploadStatus) {
				s.Phase = velerov2.DataUploadPhaseCanceling
				s.Message = "canceling: waiting for the round under way to end"
			})
		case vs.Status.LastManualTrigger != string(du.UID) && vs.Status.Rounds == 0:
			// Created for this backup and never run: without its trigger
			// it would take a snapshot of its own.
			if err := u.o.Client.Delete(ctx, vs, client.Preconditions{ResourceVersion: &vs.ResourceVersion}); err != nil && !apierrors.IsNotFound(err) {
				return ctrl.Result{}, err
			}
			vs = nil
		case vs.Status.LastManualTrigger != string(du.UID):
			// Not started: withdraw the trigger.
			orig := vs.DeepCopy()
			vs.Spec.Trigger.Manual, vs.Spec.Trigger.SnapshotName = vs.Status.LastManualTrigger, ""
			if err := u.o.Client.Patch(ctx, vs, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
				return ctrl.Result{}, err
			}
		}
	}
	if du.Spec.CSISnapshot != nil && du.Spec.CSISnapshot.VolumeSnapshot != "" && (vs == nil || vs.Annotations[AnnotationBaseSnapshot] != du.Spec.CSISnapshot.VolumeSnapshot) {
		if err := u.deleteSnapshot(ctx, du.Spec.SourceNamespace, du.Spec.CSISnapshot.VolumeSnapshot); err != nil {
			return ctrl.Result{}, err
		}
	}
	err = u.patch(ctx, du, func(s *velerov2.DataUploadStatus) {
		now := u.now()
		s.Phase = velerov2.DataUploadPhaseCanceled
		s.CompletionTimestamp = &now
		s.Message = "canceled"
	})
	return ctrl.Result{}, err
}

// deleteSnapshot deletes a VolumeSnapshot and, by making its content's
// deletion policy Delete first, its VolumeSnapshotContent and the storage
// snapshot.
func (u *Uploads) deleteSnapshot(ctx context.Context, ns, name string) error {
	var snap snapv1.VolumeSnapshot
	err := u.o.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &snap)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if c := snap.Status; c != nil && c.BoundVolumeSnapshotContentName != nil {
		var content snapv1.VolumeSnapshotContent
		err := u.o.Client.Get(ctx, client.ObjectKey{Name: *c.BoundVolumeSnapshotContentName}, &content)
		if err == nil && content.Spec.DeletionPolicy != snapv1.VolumeSnapshotContentDelete {
			orig := content.DeepCopy()
			content.Spec.DeletionPolicy = snapv1.VolumeSnapshotContentDelete
			err = u.o.Client.Patch(ctx, &content, client.MergeFrom(orig))
		}
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("VolumeSnapshotContent of %s/%s: %w", ns, name, err)
		}
	}
	if err := u.o.Client.Delete(ctx, &snap); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete VolumeSnapshot %s/%s: %w", ns, name, err)
	}
	return nil
}

// ensureCredentials writes the location's credentials into ns.
func (u *Uploads) ensureCredentials(ctx context.Context, ns string, loc Location) error {
	name := loc.Store.CredentialsSecretName
	secrets := u.o.Kube.CoreV1().Secrets(ns)
	cur, err := secrets.Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = secrets.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
			Labels: map[string]string{LabelMover: "true"}}, Data: loc.Credentials}, metav1.CreateOptions{})
	case err == nil && !sameData(cur.Data, loc.Credentials):
		cur.Data = loc.Credentials
		_, err = secrets.Update(ctx, cur, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("store credentials Secret %s/%s: %w", ns, name, err)
	}
	return nil
}

func sameData(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if string(b[k]) != string(v) {
			return false
		}
	}
	return true
}

// volumeSync returns the DataUpload's VolumeSync, nil if it is gone.
func (u *Uploads) volumeSync(ctx context.Context, du *velerov2.DataUpload) (*v1alpha1.VolumeSync, error) {
	var vs v1alpha1.VolumeSync
	err := u.o.Reader.Get(ctx, client.ObjectKey{Namespace: du.Spec.SourceNamespace, Name: VolumeSyncName(du.Spec.SourcePVC)}, &vs)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get VolumeSync: %w", err)
	}
	return &vs, nil
}

// fail ends the DataUpload as Failed with msg.
func (u *Uploads) fail(ctx context.Context, du *velerov2.DataUpload, msg string) (ctrl.Result, error) {
	u.event(du, corev1.EventTypeWarning, "Failed", "%s", msg)
	return ctrl.Result{}, u.patch(ctx, du, func(s *velerov2.DataUploadStatus) {
		now := u.now()
		s.Phase = velerov2.DataUploadPhaseFailed
		s.Message = msg
		s.CompletionTimestamp = &now
	})
}

// patch changes the DataUpload's status (its CRD has no status
// subresource) with an optimistic lock.
func (u *Uploads) patch(ctx context.Context, du *velerov2.DataUpload, f func(*velerov2.DataUploadStatus)) error {
	return PatchLocked(ctx, u.o.Client, "DataUpload", du, func() { f(&du.Status) })
}

func (u *Uploads) now() metav1.Time { return metav1.NewTime(u.o.Clock.Now()) }

func (u *Uploads) event(du *velerov2.DataUpload, typ, reason, note string, args ...any) {
	if u.o.Recorder != nil {
		u.o.Recorder.Eventf(du, nil, typ, reason, "DataUpload", note, args...)
	}
}
