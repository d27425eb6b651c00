package k8sreceiver_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/csi"
	"github.com/voldelta/voldelta/internal/k8sreceiver"
	"github.com/voldelta/voldelta/internal/k8stest"
)

const testClass = "replicas"

// populated creates PVC dst/name whose dataSourceRef names VolumeTarget m.
func (w *world) populated(name, m string) *corev1.PersistentVolumeClaim {
	w.t.Helper()
	block, class, group := corev1.PersistentVolumeBlock, testClass, v1alpha1.GroupVersion.Group
	pvc, err := w.kube.CoreV1().PersistentVolumeClaims("dst").Create(w.ctx, &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: "dst", Name: name},
		Spec: corev1.PersistentVolumeClaimSpec{VolumeMode: &block, StorageClassName: &class,
			AccessModes:   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:     corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(fmt.Sprint(apiVolSize))}},
			DataSourceRef: &corev1.TypedObjectReference{APIGroup: &group, Kind: "VolumeTarget", Name: m}},
	}, metav1.CreateOptions{})
	must(w.t, err)
	return pvc
}

// provisioning runs kube-controller-manager's PV controller (and the
// PVC and PV protection controllers, which remove the finalizers that
// admission adds) and a
// provisioner of StorageClass "replicas" (Longhorn PVs, so that the
// world's attacher makes their devices), binding on first consumer.
func (w *world) provisioning() {
	t := w.t
	late := storagev1.VolumeBindingWaitForFirstConsumer
	_, err := w.kube.StorageV1().StorageClasses().Create(w.ctx, &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: testClass},
		Provisioner: csi.LonghornDriver, VolumeBindingMode: &late}, metav1.CreateOptions{})
	must(t, err)
	w.cp.StartControllerManager(t, "persistentvolume-binder", "pvc-protection", "pv-protection")
	ctx, stop := context.WithCancel(w.ctx)
	done := make(chan error, 1)
	go func() {
		done <- k8stest.RunProvisioner(ctx, w.kube, k8stest.ProvisionerOptions{Class: testClass, Driver: csi.LonghornDriver})
	}()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("provisioner: %v", err)
		}
	})
}

// device reads the bytes of the PV bound to PVC dst/name as the world's
// attacher made its device.
func (w *world) device(name string) ([]byte, *corev1.PersistentVolume) {
	w.t.Helper()
	path, pv := w.devicePath(name)
	b, err := os.ReadFile(path)
	must(w.t, err)
	return b, pv
}

// devicePath is the path of the device of PVC dst/name's PV, and the PV.
func (w *world) devicePath(name string) (string, *corev1.PersistentVolume) {
	w.t.Helper()
	pvc, err := w.kube.CoreV1().PersistentVolumeClaims("dst").Get(w.ctx, name, metav1.GetOptions{})
	must(w.t, err)
	pv, err := w.kube.CoreV1().PersistentVolumes().Get(w.ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
	must(w.t, err)
	return filepath.Join(w.host, "dev", "longhorn", pv.Spec.CSI.VolumeHandle), pv
}

// populating describes where the population of pvc is, for a failure.
func (w *world) populating(pvc *corev1.PersistentVolumeClaim) string {
	var b strings.Builder
	prime, err := w.kube.CoreV1().PersistentVolumeClaims(pvc.Namespace).Get(w.ctx, k8sreceiver.PrimeName(pvc.UID), metav1.GetOptions{})
	if err != nil {
		fmt.Fprintf(&b, "prime: %v", err)
	} else {
		fmt.Fprintf(&b, "prime %s, volume %q, annotations %v", prime.Status.Phase, prime.Spec.VolumeName, prime.Annotations)
	}
	if evs, err := w.kube.EventsV1().Events(pvc.Namespace).List(w.ctx, metav1.ListOptions{}); err == nil {
		for _, e := range evs.Items {
			if e.Regarding.Name == pvc.Name {
				fmt.Fprintf(&b, "; event %s %s: %s", e.Type, e.Reason, e.Note)
			}
		}
	}
	return b.String()
}

// A PVC whose dataSourceRef names a VolumeTarget gets a new volume of its
// class holding the target's committed generation (its bytes read back
// equal the source's), bound by the real PV controller; the prime PVC and
// the populator's attachment are gone; the target keeps taking rounds,
// and the populated volume keeps the generation it was given. A PVC that
// names a missing target waits with a Warning event.
func TestPopulatorAgainstAPIServer(t *testing.T) {
	w := newWorld(t)
	w.provisioning()
	w.target("a")
	w.start(func(o *k8sreceiver.RunOptions) { o.Populate = true })
	gen1 := make([]byte, apiVolSize)
	rand.NewChaCha8([32]byte{1}).Read(gen1)
	clear(gen1[apiVolSize/4 : apiVolSize/2]) // a zero run
	st1, err := w.round("a", gen1, nil, nil)
	must(t, err)
	w.wait("generation 1 committed", func() (bool, string) {
		vt := w.get("a")
		return vt.Status.Generation == 1, fmt.Sprintf("%+v", vt.Status)
	})

	pvc := w.populated("clone", "a")
	w.wait("clone bound and annotated", func() (bool, string) {
		got, err := w.kube.CoreV1().PersistentVolumeClaims("dst").Get(w.ctx, "clone", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return got.Status.Phase == corev1.ClaimBound && got.Annotations[k8sreceiver.AnnotationPopulatedFrom] == "dst/a",
			fmt.Sprintf("phase %s, volume %q, annotations %v; %s", got.Status.Phase, got.Spec.VolumeName, got.Annotations, w.populating(got))
	})
	got, _ := w.kube.CoreV1().PersistentVolumeClaims("dst").Get(w.ctx, "clone", metav1.GetOptions{})
	if a := got.Annotations; a[v1alpha1.AnnotationGeneration] != "1" || a[v1alpha1.AnnotationRootHash] != st1.RootHash {
		t.Fatalf("clone's annotations %v, want generation 1 and root %s", a, st1.RootHash)
	}
	data, pv := w.device("clone")
	if !bytes.Equal(data[:apiVolSize], gen1) {
		t.Fatal("the populated volume's bytes differ from generation 1")
	}
	t.Logf("populated PVC dst/clone: PV %s, generation %s, root %s, %d bytes equal to the source's",
		pv.Name, got.Annotations[v1alpha1.AnnotationGeneration], got.Annotations[v1alpha1.AnnotationRootHash], apiVolSize)
	if pv.Spec.ClaimRef == nil || pv.Spec.ClaimRef.UID != pvc.UID {
		t.Fatalf("PV %s claimRef %+v, want the clone's", pv.Name, pv.Spec.ClaimRef)
	}
	w.wait("prime PVC deleted and the copy detached", func() (bool, string) {
		_, err := w.kube.CoreV1().PersistentVolumeClaims("dst").Get(w.ctx, k8sreceiver.PrimeName(pvc.UID), metav1.GetOptions{})
		vas, lerr := w.kube.StorageV1().VolumeAttachments().List(w.ctx, metav1.ListOptions{})
		must(t, lerr)
		for _, va := range vas.Items {
			if *va.Spec.Source.PersistentVolumeName == pv.Name {
				return false, "attachment " + va.Name + " left"
			}
		}
		return apierrors.IsNotFound(err), fmt.Sprintf("prime: %v", err)
	})

	// Replication goes on: a new generation lands in the target, not in
	// the clone.
	gen2 := bytes.Clone(gen1)
	copy(gen2[100:], "a change after the clone")
	if _, err := w.round("a", gen2, nil, nil); err != nil {
		t.Fatalf("a round after the population: %v", err)
	}
	w.wait("generation 2 committed", func() (bool, string) {
		vt := w.get("a")
		return vt.Status.Generation == 2, fmt.Sprintf("%+v", vt.Status)
	})
	if data, _ := w.device("clone"); !bytes.Equal(data[:apiVolSize], gen1) {
		t.Fatal("the clone changed with the target's next round")
	}

	// A second clone, of generation 2.
	w.populated("clone2", "a")
	w.wait("clone2 populated with generation 2", func() (bool, string) {
		got, err := w.kube.CoreV1().PersistentVolumeClaims("dst").Get(w.ctx, "clone2", metav1.GetOptions{})
		must(t, err)
		return got.Status.Phase == corev1.ClaimBound && got.Annotations[v1alpha1.AnnotationGeneration] == "2", fmt.Sprintf("%v", got.Annotations)
	})
	if data, _ := w.device("clone2"); !bytes.Equal(data[:apiVolSize], gen2) {
		t.Fatal("clone2's bytes differ from generation 2")
	}

	// A PVC naming a VolumeTarget that does not exist stays unbound, with
	// a Warning.
	w.populated("orphan", "nope")
	w.wait("a warning on the orphan", func() (bool, string) {
		evs, err := w.kube.EventsV1().Events("dst").List(w.ctx, metav1.ListOptions{})
		must(t, err)
		for _, e := range evs.Items {
			if e.Regarding.Name == "orphan" && e.Reason == k8sreceiver.ReasonPopulateWaiting && e.Type == corev1.EventTypeWarning && strings.Contains(e.Note, "not found") {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d events", len(evs.Items))
	})
	if o, err := w.kube.CoreV1().PersistentVolumeClaims("dst").Get(w.ctx, "orphan", metav1.GetOptions{}); err != nil || o.Spec.VolumeName != "" {
		t.Fatalf("orphan: %v, volume %q", err, o.Spec.VolumeName)
	}
}
