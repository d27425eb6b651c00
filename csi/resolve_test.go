package csi_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/voldelta/voldelta/csi"
)

func pvc(ns, name, pv string, phase corev1.PersistentVolumeClaimPhase) *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.PersistentVolumeClaimSpec{VolumeName: pv},
		Status:     corev1.PersistentVolumeClaimStatus{Phase: phase},
	}
}

func pv(name, driver, handle string, attrs map[string]string) *corev1.PersistentVolume {
	block := corev1.PersistentVolumeBlock
	p := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:   corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
			VolumeMode: &block,
		},
	}
	if driver != "" {
		p.Spec.CSI = &corev1.CSIPersistentVolumeSource{Driver: driver, VolumeHandle: handle, VolumeAttributes: attrs}
	} else {
		p.Spec.HostPath = &corev1.HostPathVolumeSource{Path: "/tmp"}
	}
	return p
}

func va(name, pvName, node string, attached bool) *storagev1.VolumeAttachment {
	return &storagev1.VolumeAttachment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: storagev1.VolumeAttachmentSpec{Attacher: "x", NodeName: node,
			Source: storagev1.VolumeAttachmentSource{PersistentVolumeName: &pvName}},
		Status: storagev1.VolumeAttachmentStatus{Attached: attached},
	}
}

func longhornVolume(name, node string, encrypted bool) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "longhorn.io/v1beta2", "kind": "Volume",
		"metadata": map[string]any{"name": name, "namespace": "longhorn-system"},
		"spec":     map[string]any{"encrypted": encrypted, "size": "1073741824"},
		"status":   map[string]any{"currentNodeID": node},
	}}
	return u
}

func newDynamic(objs ...runtime.Object) *dynfake.FakeDynamicClient {
	return dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{csi.LonghornVolumes: "VolumeList"}, objs...)
}

func TestResolvePVC(t *testing.T) {
	ctx := context.Background()
	kube := fake.NewClientset(
		pvc("app", "data", "pv-1", corev1.ClaimBound), pv("pv-1", csi.LonghornDriver, "pvc-1", nil),
		pvc("app", "enc", "pv-2", corev1.ClaimBound), pv("pv-2", csi.LonghornDriver, "pvc-2", map[string]string{"encrypted": "true"}),
		pvc("app", "pending", "", corev1.ClaimPending),
		pvc("app", "hostpath", "pv-3", corev1.ClaimBound), pv("pv-3", "", "", nil),
		pvc("app", "other", "pv-4", corev1.ClaimBound), pv("pv-4", "ebs.csi.aws.com", "vol-4", nil),
		pvc("app", "dangling", "pv-missing", corev1.ClaimBound),
		pvc("app", "evil", "pv-5", corev1.ClaimBound), pv("pv-5", csi.LonghornDriver, "../etc", nil),
	)
	host := t.TempDir()
	pub := filepath.Join(host, "var/lib/kubelet/plugins/kubernetes.io/csi/volumeDevices/pv-4/dev")
	if err := os.MkdirAll(pub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pub, "pod-uid-1"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := csi.NewResolver(csi.ResolverOptions{Kube: kube, Dynamic: newDynamic(), HostRoot: host})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		pvc     string
		device  string
		wantErr error
	}{
		{pvc: "data", device: filepath.Join(host, "dev/longhorn/pvc-1")},
		{pvc: "enc", device: filepath.Join(host, "dev/mapper/pvc-2")},
		{pvc: "other", device: filepath.Join(pub, "pod-uid-1")},
		{pvc: "pending", wantErr: csi.ErrNotBound},
		{pvc: "hostpath", wantErr: csi.ErrNotCSI},
		{pvc: "missing", wantErr: csi.ErrNotFound},
		{pvc: "dangling", wantErr: csi.ErrNotFound},
		{pvc: "evil", wantErr: nil},
	} {
		t.Run(tc.pvc, func(t *testing.T) {
			v, err := r.ResolvePVC(ctx, "app", tc.pvc)
			if tc.pvc == "evil" {
				if err == nil {
					t.Fatalf("a handle with a path separator resolved to %q", v.DevicePath)
				}
				return
			}
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if v.DevicePath != tc.device {
				t.Errorf("device = %q, want %q", v.DevicePath, tc.device)
			}
			if v.Size != 1<<30 || !v.Block || v.Namespace != "app" || v.PVC != tc.pvc {
				t.Errorf("volume = %+v", v)
			}
		})
	}
}

func TestAttachedNode(t *testing.T) {
	ctx := context.Background()
	kube := fake.NewClientset(
		pv("pv-lh", csi.LonghornDriver, "lh-1", nil),
		pv("pv-lh-detached", csi.LonghornDriver, "lh-2", nil),
		pv("pv-other", "ebs.csi.aws.com", "vol-1", nil),
		pv("pv-none", "ebs.csi.aws.com", "vol-2", nil),
		va("va-1", "pv-other", "node-b", true),
		va("va-2", "pv-other", "node-c", false),
		va("va-3", "pv-lh-detached", "node-d", true),
	)
	dyn := newDynamic(longhornVolume("lh-1", "node-a", false), longhornVolume("lh-2", "", false))
	r, err := csi.NewResolver(csi.ResolverOptions{Kube: kube, Dynamic: dyn})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		pv, node, from string
		wantErr        error
	}{
		{pv: "pv-lh", node: "node-a", from: "longhorn.io/Volume"},
		{pv: "pv-lh-detached", node: "node-d", from: "storage.k8s.io/VolumeAttachment"},
		{pv: "pv-other", node: "node-b", from: "storage.k8s.io/VolumeAttachment"},
		{pv: "pv-none", wantErr: csi.ErrNotAttached},
	} {
		t.Run(tc.pv, func(t *testing.T) {
			v, err := r.ResolvePV(ctx, tc.pv)
			if err != nil {
				t.Fatal(err)
			}
			a, err := r.AttachedNode(ctx, v)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if a.Node != tc.node || a.From != tc.from {
				t.Errorf("attachment = %+v, want node %s from %s", a, tc.node, tc.from)
			}
		})
	}
}

func TestLonghornVolume(t *testing.T) {
	r, err := csi.NewResolver(csi.ResolverOptions{Kube: fake.NewClientset(), Dynamic: newDynamic(longhornVolume("target-1", "n", true)), HostRoot: "/host"})
	if err != nil {
		t.Fatal(err)
	}
	v, err := r.LonghornVolume(context.Background(), "target-1")
	if err != nil {
		t.Fatal(err)
	}
	if v.DevicePath != "/host/dev/mapper/target-1" || v.Size != 1<<30 || !v.Encrypted {
		t.Errorf("volume = %+v", v)
	}
	if _, err := r.LonghornVolume(context.Background(), "nope"); !errors.Is(err, csi.ErrNotFound) {
		t.Errorf("missing volume: err = %v", err)
	}
}
