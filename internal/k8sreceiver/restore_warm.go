package k8sreceiver

import (
	"context"
	"fmt"
	"strings"
	"time"

	velerov2 "github.com/vmware-tanzu/velero/pkg/apis/velero/v2alpha1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/csi"
	"github.com/voldelta/voldelta/internal/velero"
	"github.com/voldelta/voldelta/objstore"
)

// A warm restore: when a store-fed VolumeTarget in the restore's namespace
// replicates the backup's volume from the backup storage location's store,
// the DataDownload restores onto that replica instead of a new volume. The
// receiver stops pulling it, pulls the backup's generation into it in
// place (downloading only the chunks the replica does not hold), then
// hands its volume to the restored PVC: the VolumeTarget and its PVC are
// deleted (the PV retained meanwhile), and the PV is bound to the PVC
// Velero restored. The replica is consumed: it becomes the application's
// volume.

// Annotations of a warm DataDownload: the replica's PVC and PV.
const (
	annotationWarmPVC = "voldelta.io/warm-replica-pvc"
	annotationWarmPV  = "voldelta.io/warm-replica-pv"
)

// warmReplica returns the VolumeTarget a DataDownload can restore onto, or
// nil: exactly one store-fed, unpromoted VolumeTarget of a PVC in the
// target's namespace, of the backup's volume in the location's store.
func (r *Restores) warmReplica(ctx context.Context, dd *velerov2.DataDownload) (*v1alpha1.VolumeTarget, error) {
	if r.o.Targets == nil {
		return nil, nil
	}
	volume, _, err := velero.ParseSnapshotID(dd.Spec.SnapshotID)
	if err != nil {
		return nil, err
	}
	loc, err := velero.ReadLocation(ctx, r.o.Client, r.o.Kube, r.o.Namespace, dd.Spec.BackupStorageLocation)
	if err != nil {
		return nil, nil // the cold path reports it
	}
	var list v1alpha1.VolumeTargetList
	if err := r.o.Client.List(ctx, &list, client.InNamespace(dd.Spec.TargetVolume.Namespace)); err != nil {
		return nil, fmt.Errorf("list VolumeTargets: %w", err)
	}
	key := dd.Namespace + "/" + dd.Name
	var found []*v1alpha1.VolumeTarget
	for i := range list.Items {
		vt := &list.Items[i]
		held := vt.Annotations[AnnotationRestoring]
		if vt.Spec.Store == nil || vt.Spec.RemoteVolume != volume || vt.Spec.PVC == "" || vt.Status.Promoted ||
			vt.DeletionTimestamp != nil || (held != "" && held != key) || !sameStore(vt.Spec.Store.Store, loc.Store) {
			continue
		}
		found = append(found, vt)
	}
	if len(found) != 1 {
		return nil, nil
	}
	return found[0], nil
}

// csiVolume is enough of pv to ask where it is attached.
func csiVolume(pv *corev1.PersistentVolume) *csi.Volume {
	v := &csi.Volume{PV: pv.Name}
	if pv.Spec.CSI != nil {
		v.Driver = pv.Spec.CSI.Driver
	}
	return v
}

// sameStore reports whether a and b name the same store.
func sameStore(a, b v1alpha1.Store) bool {
	ea, erra := objstore.ParseEndpoint(a.Endpoint, a.Insecure)
	eb, errb := objstore.ParseEndpoint(b.Endpoint, b.Insecure)
	if a.Endpoint == "" || b.Endpoint == "" {
		ea, eb, erra, errb = a.Endpoint, b.Endpoint, nil, nil
	}
	return strings.TrimSuffix(a.URL, "/") == strings.TrimSuffix(b.URL, "/") && erra == nil && errb == nil && ea == eb
}

// holdReplica stops the VolumeTarget's pulls and records it on the
// DataDownload.
func (r *Restores) holdReplica(ctx context.Context, dd *velerov2.DataDownload, vt *v1alpha1.VolumeTarget) error {
	vol, err := r.o.Resolver.ResolvePVC(ctx, vt.Namespace, vt.Spec.PVC)
	if err != nil {
		return fmt.Errorf("warm replica %s/%s: %w", vt.Namespace, vt.Name, err)
	}
	key := dd.Namespace + "/" + dd.Name
	if vt.Annotations[AnnotationRestoring] != key {
		if err := velero.PatchLocked(ctx, r.o.Client, "VolumeTarget", vt, func() {
			vt.Annotations = merge(vt.Annotations, map[string]string{AnnotationRestoring: key})
		}); err != nil {
			return err
		}
	}
	r.event(dd, corev1.EventTypeNormal, "WarmReplica", "restoring onto VolumeTarget %s/%s (PV %s): only what differs is downloaded", vt.Namespace, vt.Name, vol.PV)
	return velero.PatchLocked(ctx, r.o.Client, "DataDownload", dd, func() {
		dd.Annotations = merge(dd.Annotations, map[string]string{annotationWarm: vt.Namespace + "/" + vt.Name,
			annotationWarmPVC: vt.Spec.PVC, annotationWarmPV: vol.PV})
		dd.Status.Phase = velerov2.DataDownloadPhasePrepared
		dd.Status.Message = fmt.Sprintf("restoring onto the warm replica of VolumeTarget %s/%s", vt.Namespace, vt.Name)
	})
}

// restoreWarm brings the replica to the backup's generation, then hands
// its volume to the target PVC, one step per call.
func (r *Restores) restoreWarm(ctx context.Context, dd *velerov2.DataDownload, target *corev1.PersistentVolumeClaim) (ctrl.Result, error) {
	ns, name, _ := strings.Cut(dd.Annotations[annotationWarm], "/")
	pvName := dd.Annotations[annotationWarmPV]
	pv, err := r.o.Kube.CoreV1().PersistentVolumes().Get(ctx, pvName, metav1.GetOptions{})
	if err != nil {
		return r.fail(ctx, dd, fmt.Sprintf("the warm replica's PV %s: %v", pvName, err))
	}
	var vt v1alpha1.VolumeTarget
	err = r.o.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &vt)
	switch {
	case err != nil && !apierrors.IsNotFound(err):
		return ctrl.Result{}, err
	case err == nil && pv.Annotations[AnnotationRestoredFrom] != dd.Spec.SnapshotID:
		return r.pullWarm(ctx, dd, &vt, pv)
	case err == nil:
		// Pulled: the replica is consumed (its finalizer detaches it).
		if err := r.o.Client.Delete(ctx, &vt); err != nil && !apierrors.IsNotFound(err) {
			return ctrl.Result{}, err
		}
		return ctrl.Result{RequeueAfter: time.Second}, nil
	case pv.Annotations[AnnotationRestoredFrom] != dd.Spec.SnapshotID:
		return r.fail(ctx, dd, fmt.Sprintf("the warm replica %s/%s was deleted before the restore", ns, name))
	}
	if target.Spec.VolumeName == pv.Name {
		return r.complete(ctx, dd, target)
	}
	if _, err := r.o.Resolver.AttachedNode(ctx, csiVolume(pv)); err == nil {
		return ctrl.Result{RequeueAfter: time.Second}, nil // detaching
	}
	replica := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: dd.Annotations[annotationWarmPVC]}}
	if ref := pv.Spec.ClaimRef; ref != nil && ref.Namespace == ns && ref.Name == replica.Name {
		if err := r.o.Client.Delete(ctx, replica); err != nil && !apierrors.IsNotFound(err) {
			return ctrl.Result{}, fmt.Errorf("delete the replica's PVC: %w", err)
		}
	}
	if ref := pv.Spec.ClaimRef; ref == nil || ref.UID != target.UID {
		patch := client.MergeFrom(pv.DeepCopy())
		pv.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1",
			Namespace: target.Namespace, Name: target.Name, UID: target.UID, ResourceVersion: target.ResourceVersion}
		if p := pv.Annotations[annotationReclaim]; p != "" {
			pv.Spec.PersistentVolumeReclaimPolicy = corev1.PersistentVolumeReclaimPolicy(p)
		}
		if sel := target.Spec.Selector; sel != nil {
			pv.Labels = merge(pv.Labels, sel.MatchLabels)
		}
		if err := patchPV(ctx, r.o.Kube, pv, patch); err != nil {
			return ctrl.Result{}, err
		}
	}
	return ctrl.Result{RequeueAfter: time.Second}, nil
}

// pullWarm pulls the backup's generation into the replica in place and
// retains its PV for the hand-over.
func (r *Restores) pullWarm(ctx context.Context, dd *velerov2.DataDownload, vt *v1alpha1.VolumeTarget, pv *corev1.PersistentVolume) (ctrl.Result, error) {
	dev, err := r.o.Targets.device(ctx, vt)
	if err != nil {
		return ctrl.Result{RequeueAfter: 2 * time.Second}, nil // the target's reconcile attaches it
	}
	return r.pullGeneration(ctx, dd, pv, dev, vt.Spec.RemoteVolume, r.o.StateDir, true)
}
