package k8sreceiver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	velerov2 "github.com/vmware-tanzu/velero/pkg/apis/velero/v2alpha1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/csi"
	"github.com/voldelta/voldelta/internal/velero"
	"github.com/voldelta/voldelta/objstore"
	"github.com/voldelta/voldelta/receiver"
)

// Velero restores: a DataDownload (velero.io/v2alpha1) of the voldelta
// mover restores a backup's generation (its snapshotID,
// "<volume>@<generation>") into the PVC Velero restored with a selector
// (so that nothing provisions it): the receiver creates a prime PVC like
// it in Velero's namespace, pulls the generation from the backup storage
// location into the prime's volume on its own node (verified against the
// generation's root before anything is committed), detaches it and hands
// the PV to the target PVC (claimRef, and the labels of its selector), as
// Velero's own mover does.

// Annotations and labels of restores.
const (
	// AnnotationRestoredFrom is set on a restored PV: the DataDownload's
	// snapshotID its bytes were pulled from; the generation's root hash
	// goes in AnnotationRootHash.
	AnnotationRestoredFrom = "voldelta.io/restored-from"
	// LabelRestoreOf marks a restore's prime PVC with the DataDownload's
	// UID.
	LabelRestoreOf = "voldelta.io/restore-of"

	annotationRestore = "restore:" // annotationTarget of a restore's VolumeAttachment, + namespace/DataDownload

	// AnnotationRestoring, on a VolumeTarget, names the DataDownload
	// ("<namespace>/<name>") that restores into its volume: the receiver
	// stops pulling it, brings it to the backup's generation and hands
	// its volume to the restored PVC.
	AnnotationRestoring = "voldelta.io/restoring"
	// annotationWarm, on a DataDownload, names the VolumeTarget it
	// restores onto ("<namespace>/<name>").
	annotationWarm = "voldelta.io/warm-replica"
	// annotationReclaim keeps a PV's reclaim policy while a warm restore
	// retains it.
	annotationReclaim = "voldelta.io/reclaim-policy"
)

// RestoreOptions configure Restores.
type RestoreOptions struct {
	// Client reads and writes DataDownloads, BackupStorageLocations and
	// PVCs. Required.
	Client client.Client
	// Kube reads Secrets, the mover's ConfigMap, StorageClasses, PVs and
	// manages VolumeAttachments. Required.
	Kube kubernetes.Interface
	// Resolver resolves the prime's PV to a device here. Required.
	Resolver *csi.Resolver
	// NodeName is the receiver's node; StateDir its state directory (a
	// pull's state lives under StateDir/velero-restores until it is
	// done). Required.
	NodeName, StateDir string
	// Namespace is Velero's namespace. Required.
	Namespace string
	// Parallel is the number of concurrent downloads of a pull; Apply
	// tunes its apply.
	Parallel int
	Apply    receiver.Options
	// Targets, if set, are the VolumeTargets the receiver serves: a
	// DataDownload whose backup a store-fed VolumeTarget of its namespace
	// replicates (same store, same volume) restores onto that warm
	// replica, downloading only what differs.
	Targets *Targets
	// Clock; default the real clock.
	Clock clock.PassiveClock
	// Recorder records Events on DataDownloads; optional.
	Recorder events.EventRecorder
	// Logger; nil logs nothing.
	Logger *slog.Logger
}

// Restores reconciles the voldelta mover's DataDownloads.
type Restores struct{ o RestoreOptions }

// NewRestores checks o and returns Restores.
func NewRestores(o RestoreOptions) (*Restores, error) {
	if o.Client == nil || o.Kube == nil || o.Resolver == nil || o.NodeName == "" || o.StateDir == "" || o.Namespace == "" {
		return nil, errors.New("k8sreceiver: RestoreOptions.Client, Kube, Resolver, NodeName, StateDir and Namespace are required")
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Restores{o: o}, nil
}

// SetupWithManager registers the reconciler for the mover's DataDownloads
// in Velero's namespace, requeued also by the objects their restores wait
// on (restore_watch.go).
func (r *Restores) SetupWithManager(mgr ctrl.Manager) error {
	mine := predicate.NewPredicateFuncs(func(o client.Object) bool {
		dd, ok := o.(*velerov2.DataDownload)
		return ok && dd.Namespace == r.o.Namespace && dd.Spec.DataMover == velero.MoverName
	})
	return ctrl.NewControllerManagedBy(mgr).Named("velero-datadownload").
		For(&velerov2.DataDownload{}, builder.WithPredicates(mine)).
		Watches(&v1alpha1.VolumeTarget{}, handler.EnqueueRequestsFromMapFunc(r.forReplica)).
		Watches(&corev1.PersistentVolumeClaim{}, handler.EnqueueRequestsFromMapFunc(r.forClaim)).
		Watches(&storagev1.VolumeAttachment{}, handler.EnqueueRequestsFromMapFunc(r.forAttachment)).
		Complete(r)
}

// restorePrimeName is the prime PVC of a DataDownload.
func restorePrimeName(uid types.UID) string { return "voldelta-restore-" + string(uid) }

// Reconcile implements reconcile.Reconciler: one step of a DataDownload.
func (r *Restores) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var dd velerov2.DataDownload
	if err := r.o.Client.Get(ctx, req.NamespacedName, &dd); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if dd.Spec.DataMover != velero.MoverName || dd.DeletionTimestamp != nil {
		return ctrl.Result{}, nil
	}
	if downloadFinished(dd.Status.Phase) {
		return ctrl.Result{}, nil
	}
	if dd.Spec.Cancel {
		return r.cancel(ctx, &dd)
	}
	switch dd.Status.Phase {
	case "", velerov2.DataDownloadPhaseNew:
		return r.accept(ctx, &dd)
	case velerov2.DataDownloadPhaseAccepted:
		return r.prepare(ctx, &dd)
	default: // Prepared, InProgress
		return r.restore(ctx, &dd)
	}
}

func (r *Restores) accept(ctx context.Context, dd *velerov2.DataDownload) (ctrl.Result, error) {
	if _, _, err := velero.ParseSnapshotID(dd.Spec.SnapshotID); err != nil {
		return r.fail(ctx, dd, err.Error())
	}
	if dd.Spec.TargetVolume.PVC == "" || dd.Spec.TargetVolume.Namespace == "" {
		return r.fail(ctx, dd, "spec.targetVolume.pvc and spec.targetVolume.namespace are required")
	}
	return ctrl.Result{}, r.patch(ctx, dd, func(st *velerov2.DataDownloadStatus) {
		now := r.now()
		st.Phase = velerov2.DataDownloadPhaseAccepted
		st.AcceptedTimestamp, st.StartTimestamp = &now, &now
		st.AcceptedByNode = r.o.NodeName
		st.Message = "accepted by voldelta"
	})
}

// prepare provisions the prime PVC like the target PVC.
func (r *Restores) prepare(ctx context.Context, dd *velerov2.DataDownload) (ctrl.Result, error) {
	target, err := r.target(ctx, dd)
	if err != nil || target == nil {
		return ctrl.Result{RequeueAfter: 2 * time.Second}, err // Velero creates it after the DataDownload
	}
	if vt, err := r.warmReplica(ctx, dd); err != nil {
		return ctrl.Result{}, err
	} else if vt != nil {
		return ctrl.Result{}, r.holdReplica(ctx, dd, vt)
	}
	var prime corev1.PersistentVolumeClaim
	err = r.o.Client.Get(ctx, client.ObjectKey{Namespace: r.o.Namespace, Name: restorePrimeName(dd.UID)}, &prime)
	if apierrors.IsNotFound(err) {
		return ctrl.Result{RequeueAfter: 2 * time.Second}, r.createPrime(ctx, dd, target)
	}
	if err != nil {
		return ctrl.Result{}, err
	}
	if prime.Spec.VolumeName == "" || prime.Status.Phase != corev1.ClaimBound {
		return ctrl.Result{RequeueAfter: 2 * time.Second}, nil
	}
	return ctrl.Result{}, r.patch(ctx, dd, func(st *velerov2.DataDownloadStatus) {
		st.Phase = velerov2.DataDownloadPhasePrepared
		st.Message = "volume " + prime.Spec.VolumeName + " provisioned for the restore"
	})
}

func (r *Restores) createPrime(ctx context.Context, dd *velerov2.DataDownload, target *corev1.PersistentVolumeClaim) error {
	ann := map[string]string{}
	if late, err := bindsLate(ctx, r.o.Kube, target.Spec.StorageClassName); err != nil {
		return err
	} else if late {
		ann[annotationSelectedNode] = r.o.NodeName
	}
	prime := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: r.o.Namespace, Name: restorePrimeName(dd.UID),
		Labels: map[string]string{LabelRestoreOf: string(dd.UID), managedBy: managedByReceiver}, Annotations: ann},
		Spec: corev1.PersistentVolumeClaimSpec{AccessModes: target.Spec.AccessModes, Resources: target.Spec.Resources,
			StorageClassName: target.Spec.StorageClassName, VolumeMode: target.Spec.VolumeMode}}
	if err := r.o.Client.Create(ctx, prime); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create restore PVC %s/%s: %w", prime.Namespace, prime.Name, err)
	}
	return nil
}

// restore pulls the generation into the prime's volume, then hands the
// volume to the target PVC.
func (r *Restores) restore(ctx context.Context, dd *velerov2.DataDownload) (ctrl.Result, error) {
	target, err := r.target(ctx, dd)
	if err != nil {
		return ctrl.Result{}, err
	}
	if target == nil {
		return r.fail(ctx, dd, fmt.Sprintf("target PVC %s/%s is gone", dd.Spec.TargetVolume.Namespace, dd.Spec.TargetVolume.PVC))
	}
	if dd.Annotations[annotationWarm] != "" {
		return r.restoreWarm(ctx, dd, target)
	}
	key := annotationRestore + dd.Namespace + "/" + dd.Name
	var prime corev1.PersistentVolumeClaim
	err = r.o.Client.Get(ctx, client.ObjectKey{Namespace: r.o.Namespace, Name: restorePrimeName(dd.UID)}, &prime)
	if apierrors.IsNotFound(err) && target.Spec.VolumeName != "" {
		return r.complete(ctx, dd, target)
	}
	if err != nil {
		return ctrl.Result{}, err
	}
	pv, err := r.o.Kube.CoreV1().PersistentVolumes().Get(ctx, prime.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		return ctrl.Result{}, fmt.Errorf("get PV %s: %w", prime.Spec.VolumeName, err)
	}
	if pv.Annotations[AnnotationRestoredFrom] != dd.Spec.SnapshotID {
		return r.pull(ctx, dd, pv, key)
	}
	if err := detachKey(ctx, r.o.Kube, key); err != nil {
		return ctrl.Result{}, err
	}
	if _, err := r.o.Resolver.AttachedNode(ctx, csiVolume(pv)); err == nil {
		return ctrl.Result{RequeueAfter: time.Second}, nil // detaching
	}
	if target.Spec.VolumeName == pv.Name {
		if err := r.o.Client.Delete(ctx, &prime); err != nil && !apierrors.IsNotFound(err) {
			return ctrl.Result{}, fmt.Errorf("delete restore PVC: %w", err)
		}
		return r.complete(ctx, dd, target)
	}
	if ref := pv.Spec.ClaimRef; ref == nil || ref.UID != target.UID {
		patch := client.MergeFrom(pv.DeepCopy())
		pv.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1",
			Namespace: target.Namespace, Name: target.Name, UID: target.UID, ResourceVersion: target.ResourceVersion}
		if sel := target.Spec.Selector; sel != nil {
			pv.Labels = merge(pv.Labels, sel.MatchLabels) // what Velero's restored PVC selects on
		}
		if err := patchPV(ctx, r.o.Kube, pv, patch); err != nil {
			return ctrl.Result{}, err
		}
	}
	return ctrl.Result{RequeueAfter: time.Second}, nil // the PV controller binds them
}

// pull attaches pv here and pulls the DataDownload's generation into it.
func (r *Restores) pull(ctx context.Context, dd *velerov2.DataDownload, pv *corev1.PersistentVolume, key string) (ctrl.Result, error) {
	vol, err := r.o.Resolver.ResolvePV(ctx, pv.Name)
	if err != nil {
		return ctrl.Result{}, err
	}
	att, err := r.o.Resolver.AttachedNode(ctx, vol)
	if errors.Is(err, csi.ErrNotAttached) {
		return ctrl.Result{RequeueAfter: time.Second}, attachHere(ctx, r.o.Kube, r.o.NodeName, key, pv.Name, vol.Driver)
	}
	if err != nil {
		return ctrl.Result{}, err
	}
	if att.Node != r.o.NodeName || vol.DevicePath == "" {
		return ctrl.Result{RequeueAfter: 5 * time.Second}, nil
	}
	volume, _, _ := velero.ParseSnapshotID(dd.Spec.SnapshotID)
	stateDir := filepath.Join(r.o.StateDir, "velero-restores", string(dd.UID))
	res, err := r.pullGeneration(ctx, dd, pv, vol.DevicePath, volume, stateDir, false)
	if err == nil && pv.Annotations[AnnotationRestoredFrom] == dd.Spec.SnapshotID {
		if err := os.RemoveAll(stateDir); err != nil {
			r.o.Logger.Warn("remove restore state", "dir", stateDir, "err", err)
		}
	}
	return res, err
}

// pullGeneration pulls the DataDownload's generation of volume from its
// location into dev (the volume's state in stateDir), reporting progress,
// then annotates pv with what it holds; with retain, pv's reclaim policy
// is set to Retain (the old one kept in an annotation) for a hand-over
// that deletes its PVC. A pull that cannot succeed fails the
// DataDownload; others are retried (and resume).
func (r *Restores) pullGeneration(ctx context.Context, dd *velerov2.DataDownload, pv *corev1.PersistentVolume, dev, volume, stateDir string, retain bool) (ctrl.Result, error) {
	store, err := velero.OpenLocation(ctx, r.o.Client, r.o.Kube, r.o.Namespace, dd.Spec.BackupStorageLocation, r.o.Logger)
	if err != nil {
		return r.fail(ctx, dd, err.Error())
	}
	_, gen, _ := velero.ParseSnapshotID(dd.Spec.SnapshotID)
	if err := r.patch(ctx, dd, func(st *velerov2.DataDownloadStatus) {
		st.Phase, st.Node = velerov2.DataDownloadPhaseInProgress, r.o.NodeName
		st.Progress.TotalBytes = dd.Spec.SnapshotSize
		st.Message = fmt.Sprintf("pulling %s from %s into %s", dd.Spec.SnapshotID, store, pv.Name)
	}); err != nil {
		return ctrl.Result{}, err
	}
	var done atomic.Int64
	stop := r.reportProgress(ctx, dd, &done)
	stats, err := store.Pull(ctx, objstore.PullOptions{Volume: volume, Generation: uint64(gen), Target: dev, StateDir: stateDir,
		Parallel: r.o.Parallel, Receiver: r.o.Apply, Downloaded: func(n uint64) { done.Add(int64(n)) }})
	stop()
	switch {
	case errors.Is(err, receiver.ErrBusy):
		return ctrl.Result{RequeueAfter: 2 * time.Second}, nil // the replica's last pull is still running
	case errors.Is(err, objstore.ErrBadCredentials), errors.Is(err, objstore.ErrNoBucket), errors.Is(err, receiver.ErrTooSmall),
		errors.Is(err, objstore.ErrNotFound), errors.Is(err, objstore.ErrCorrupt):
		return r.fail(ctx, dd, fmt.Sprintf("pull %s: %v", dd.Spec.SnapshotID, err))
	case err != nil:
		return ctrl.Result{}, fmt.Errorf("pull %s: %w", dd.Spec.SnapshotID, err)
	}
	patch := client.MergeFrom(pv.DeepCopy())
	pv.Annotations = merge(pv.Annotations, map[string]string{AnnotationRestoredFrom: dd.Spec.SnapshotID,
		v1alpha1.AnnotationRootHash: stats.RootHash, v1alpha1.AnnotationGeneration: strconv.FormatUint(stats.Generation, 10)})
	if retain {
		pv.Annotations[annotationReclaim] = string(pv.Spec.PersistentVolumeReclaimPolicy)
		pv.Spec.PersistentVolumeReclaimPolicy = corev1.PersistentVolumeReclaimRetain
	}
	if err := patchPV(ctx, r.o.Kube, pv, patch); err != nil {
		return ctrl.Result{}, err
	}
	r.event(dd, corev1.EventTypeNormal, "Pulled", "%s pulled into %s and verified (root %.16s): %d bytes downloaded, %d chunks in place",
		dd.Spec.SnapshotID, pv.Name, stats.RootHash, stats.BytesDownloaded, stats.ChunksSkipped)
	err = r.patch(ctx, dd, func(st *velerov2.DataDownloadStatus) {
		st.Progress.TotalBytes, st.Progress.BytesDone = int64(stats.SourceBytes), int64(stats.SourceBytes)
		st.Message = fmt.Sprintf("%s pulled into %s: %d bytes downloaded", dd.Spec.SnapshotID, pv.Name, stats.BytesDownloaded)
	})
	return ctrl.Result{RequeueAfter: time.Second}, err
}

// reportProgress writes the downloaded bytes into the DataDownload every
// two seconds until stopped.
func (r *Restores) reportProgress(ctx context.Context, dd *velerov2.DataDownload, done *atomic.Int64) func() {
	ctx, cancel := context.WithCancel(ctx)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				var cur velerov2.DataDownload
				if err := r.o.Client.Get(ctx, client.ObjectKeyFromObject(dd), &cur); err == nil {
					_ = r.patch(ctx, &cur, func(st *velerov2.DataDownloadStatus) { st.Progress.BytesDone = done.Load() })
				}
			}
		}
	}()
	return func() { cancel(); <-finished }
}

// complete ends the DataDownload once the target PVC is bound to the
// restored volume.
func (r *Restores) complete(ctx context.Context, dd *velerov2.DataDownload, target *corev1.PersistentVolumeClaim) (ctrl.Result, error) {
	if target.Status.Phase != corev1.ClaimBound {
		return ctrl.Result{RequeueAfter: time.Second}, nil
	}
	r.event(dd, corev1.EventTypeNormal, "Completed", "PVC %s/%s bound to %s, restored from %s", target.Namespace, target.Name, target.Spec.VolumeName, dd.Spec.SnapshotID)
	return ctrl.Result{}, r.patch(ctx, dd, func(st *velerov2.DataDownloadStatus) {
		now := r.now()
		st.Phase = velerov2.DataDownloadPhaseCompleted
		st.CompletionTimestamp = &now
		st.Message = fmt.Sprintf("restored %s into %s/%s (PV %s)", dd.Spec.SnapshotID, target.Namespace, target.Name, target.Spec.VolumeName)
	})
}

// cancel removes what the restore made and ends it Canceled.
func (r *Restores) cancel(ctx context.Context, dd *velerov2.DataDownload) (ctrl.Result, error) {
	if err := r.cleanup(ctx, dd); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{}, r.patch(ctx, dd, func(st *velerov2.DataDownloadStatus) {
		now := r.now()
		st.Phase, st.CompletionTimestamp, st.Message = velerov2.DataDownloadPhaseCanceled, &now, "canceled"
	})
}

// cleanup detaches the restore's volume and deletes its PVC (and with it,
// by its reclaim policy, the volume), unless the volume was handed to the
// target already.
func (r *Restores) cleanup(ctx context.Context, dd *velerov2.DataDownload) error {
	if err := detachKey(ctx, r.o.Kube, annotationRestore+dd.Namespace+"/"+dd.Name); err != nil {
		return err
	}
	prime := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: r.o.Namespace, Name: restorePrimeName(dd.UID)}}
	if err := r.o.Client.Delete(ctx, prime); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete restore PVC: %w", err)
	}
	return nil
}

// target returns the DataDownload's target PVC, nil if it does not exist.
func (r *Restores) target(ctx context.Context, dd *velerov2.DataDownload) (*corev1.PersistentVolumeClaim, error) {
	var pvc corev1.PersistentVolumeClaim
	err := r.o.Client.Get(ctx, client.ObjectKey{Namespace: dd.Spec.TargetVolume.Namespace, Name: dd.Spec.TargetVolume.PVC}, &pvc)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get target PVC: %w", err)
	}
	return &pvc, nil
}

// fail removes what the restore made and ends it Failed with msg.
func (r *Restores) fail(ctx context.Context, dd *velerov2.DataDownload, msg string) (ctrl.Result, error) {
	r.event(dd, corev1.EventTypeWarning, "Failed", "%s", msg)
	if err := r.cleanup(ctx, dd); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{}, r.patch(ctx, dd, func(st *velerov2.DataDownloadStatus) {
		now := r.now()
		st.Phase, st.CompletionTimestamp, st.Message = velerov2.DataDownloadPhaseFailed, &now, msg
	})
}

// patch changes the DataDownload's status (no status subresource).
func (r *Restores) patch(ctx context.Context, dd *velerov2.DataDownload, f func(*velerov2.DataDownloadStatus)) error {
	return velero.PatchLocked(ctx, r.o.Client, "DataDownload", dd, func() { f(&dd.Status) })
}

func (r *Restores) now() metav1.Time { return metav1.NewTime(r.o.Clock.Now()) }

func (r *Restores) event(dd *velerov2.DataDownload, typ, reason, note string, args ...any) {
	if r.o.Recorder != nil {
		r.o.Recorder.Eventf(dd, nil, typ, reason, "DataDownload", note, args...)
	}
}
