package k8sagent

import (
	"context"
	"fmt"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/csi"
)

// indexSourcePVC indexes VolumeSyncs by spec.sourcePVC.
const indexSourcePVC = "spec.sourcePVC"

// CacheOptions scopes the manager's cache to what the agent of node needs:
// only the VolumeSnapshots it took (by label).
func CacheOptions(node string) cache.Options {
	return cache.Options{
		ByObject: map[client.Object]cache.ByObject{
			&snapv1.VolumeSnapshot{}: {Label: labels.SelectorFromSet(labels.Set{LabelNode: node})},
		},
		DefaultTransform: cache.TransformStripManagedFields(),
	}
}

// Scheme adds every type the agent's manager reads to s.
func Scheme(s *runtime.Scheme) error {
	for _, add := range []func(*runtime.Scheme) error{v1alpha1.AddToScheme, snapv1.AddToScheme, storagev1.AddToScheme} {
		if err := add(s); err != nil {
			return err
		}
	}
	return nil
}

// SetupWithManager registers the reconciler: VolumeSyncs, the agent's own
// VolumeSnapshots, the VolumeAttachments of this node and, if the Longhorn
// CRDs are installed, the Longhorn Volumes attached to this node; and, as
// a controller of its own, the freezes of spec.freeze (ReconcileFreeze).
// workers bounds the rounds run at once.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager, workers int) error {
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &v1alpha1.VolumeSync{}, indexSourcePVC,
		func(o client.Object) []string { return []string{o.(*v1alpha1.VolumeSync).Spec.SourcePVC} }); err != nil {
		return err
	}
	node := r.o.NodeName
	onNode := func(get func(client.Object) string) predicate.Funcs {
		return predicate.Funcs{
			CreateFunc:  func(e event.CreateEvent) bool { return get(e.Object) == node },
			DeleteFunc:  func(e event.DeleteEvent) bool { return get(e.Object) == node },
			UpdateFunc:  func(e event.UpdateEvent) bool { return get(e.ObjectOld) == node || get(e.ObjectNew) == node },
			GenericFunc: func(e event.GenericEvent) bool { return get(e.Object) == node },
		}
	}
	b := ctrl.NewControllerManagedBy(mgr).
		Named("volumesync").
		// Status writes are the reconciler's own: only spec changes wake it.
		For(&v1alpha1.VolumeSync{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Owns(&snapv1.VolumeSnapshot{}).
		Watches(&storagev1.VolumeAttachment{}, handler.EnqueueRequestsFromMapFunc(r.mapVolumeAttachment),
			builder.WithPredicates(onNode(func(o client.Object) string { return o.(*storagev1.VolumeAttachment).Spec.NodeName }))).
		WithOptions(controller.Options{MaxConcurrentReconciles: max(workers, 1)})
	if ok, err := hasKind(mgr.GetRESTMapper(), csi.LonghornVolumes.GroupVersion().WithKind("Volume").GroupKind(), csi.LonghornVolumes.Version); err != nil {
		return err
	} else if ok {
		lv := &unstructured.Unstructured{}
		lv.SetAPIVersion(csi.LonghornVolumes.GroupVersion().String())
		lv.SetKind("Volume")
		b = b.Watches(lv, handler.EnqueueRequestsFromMapFunc(r.mapLonghornVolume),
			builder.WithPredicates(onNode(func(o client.Object) string {
				s, _, _ := unstructured.NestedString(o.(*unstructured.Unstructured).Object, "status", "currentNodeID")
				return s
			})))
	}
	if err := b.Complete(r); err != nil {
		return err
	}
	return r.setupFreeze(mgr)
}

func hasKind(m meta.RESTMapper, gk schema.GroupKind, version string) (bool, error) {
	_, err := m.RESTMapping(gk, version)
	if meta.IsNoMatchError(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up %s: %w", gk, err)
	}
	return true, nil
}

// mapVolumeAttachment maps an attachment of a PV to the VolumeSyncs of the
// PVC bound to it.
func (r *Reconciler) mapVolumeAttachment(ctx context.Context, o client.Object) []reconcile.Request {
	va := o.(*storagev1.VolumeAttachment)
	if va.Spec.Source.PersistentVolumeName == nil {
		return nil
	}
	pv, err := r.o.Kube.CoreV1().PersistentVolumes().Get(ctx, *va.Spec.Source.PersistentVolumeName, metav1.GetOptions{})
	if err != nil || pv.Spec.ClaimRef == nil {
		return nil
	}
	return r.syncsOf(ctx, pv.Spec.ClaimRef.Namespace, pv.Spec.ClaimRef.Name)
}

// mapLonghornVolume maps a Longhorn Volume to the VolumeSyncs of the PVC
// Longhorn records for it.
func (r *Reconciler) mapLonghornVolume(ctx context.Context, o client.Object) []reconcile.Request {
	u := o.(*unstructured.Unstructured)
	ns, _, _ := unstructured.NestedString(u.Object, "status", "kubernetesStatus", "namespace")
	pvc, _, _ := unstructured.NestedString(u.Object, "status", "kubernetesStatus", "pvcName")
	if ns == "" || pvc == "" {
		return nil
	}
	return r.syncsOf(ctx, ns, pvc)
}

func (r *Reconciler) syncsOf(ctx context.Context, ns, pvc string) []reconcile.Request {
	var list v1alpha1.VolumeSyncList
	if err := r.o.Client.List(ctx, &list, client.InNamespace(ns), client.MatchingFields{indexSourcePVC: pvc}); err != nil {
		return nil
	}
	out := make([]reconcile.Request, 0, len(list.Items))
	for _, vs := range list.Items {
		out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&vs)})
	}
	return out
}
