package k8stest

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// ProvisionerOptions configure RunProvisioner.
type ProvisionerOptions struct {
	// Class is the StorageClass whose claims are provisioned.
	Class string
	// Driver is the CSI driver of the PVs made; handles are "vol-<uid of
	// the claim>".
	Driver string
	// Poll is how often claims are listed; default 50ms.
	Poll time.Duration
}

// RunProvisioner plays a CSI external-provisioner for o.Class until ctx
// ends: every Pending claim of that class without a volume and without a
// data source (as the external-provisioner, it leaves claims with a
// dataSourceRef to their populator, and, as it does not support them,
// claims with a selector: Velero restores a PVC with one for its data
// mover to bind) gets a PV of its size, mode and access
// modes, pre-bound to it by claimRef; Kubernetes' PV controller
// (kube-controller-manager's persistentvolume-binder) then binds them. It
// returns nil when ctx ends, the first API error otherwise.
func RunProvisioner(ctx context.Context, kube kubernetes.Interface, o ProvisionerOptions) error {
	if o.Poll <= 0 {
		o.Poll = 50 * time.Millisecond
	}
	for {
		l, err := kube.CoreV1().PersistentVolumeClaims("").List(ctx, metav1.ListOptions{})
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("provisioner: list claims: %w", err)
		}
		for i := range l.Items {
			if err := provision(ctx, kube, &l.Items[i], o); err != nil && ctx.Err() == nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(o.Poll):
		}
	}
}

func provision(ctx context.Context, kube kubernetes.Interface, pvc *corev1.PersistentVolumeClaim, o ProvisionerOptions) error {
	if pvc.Spec.StorageClassName == nil || *pvc.Spec.StorageClassName != o.Class || pvc.Spec.VolumeName != "" ||
		pvc.Spec.DataSourceRef != nil || pvc.Spec.DataSource != nil || pvc.Spec.Selector != nil || pvc.DeletionTimestamp != nil {
		return nil
	}
	name := "pvc-" + string(pvc.UID)
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{"pv.kubernetes.io/provisioned-by": o.Driver}},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: pvc.Spec.Resources.Requests[corev1.ResourceStorage]},
			AccessModes:                   pvc.Spec.AccessModes,
			VolumeMode:                    pvc.Spec.VolumeMode,
			StorageClassName:              o.Class,
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
			ClaimRef: &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1",
				Namespace: pvc.Namespace, Name: pvc.Name, UID: pvc.UID},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
				Driver: o.Driver, VolumeHandle: "vol-" + string(pvc.UID)}},
		},
	}
	_, err := kube.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("provisioner: create PV %s for %s/%s: %w", name, pvc.Namespace, pvc.Name, err)
	}
	return nil
}
