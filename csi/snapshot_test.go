package csi_test

import (
	"context"
	"errors"
	"testing"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapfake "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned/fake"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/voldelta/voldelta/csi"
)

// markReady plays the snapshot controller: binds the snapshot to a content
// with handle and marks both ready (or failed, with msg).
func markReady(t *testing.T, c *snapfake.Clientset, ns, name, handle, msg string) {
	t.Helper()
	ctx := context.Background()
	vs, err := c.SnapshotV1().VolumeSnapshots(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	content := "snapcontent-" + name
	yes := true
	vsc := &snapv1.VolumeSnapshotContent{
		ObjectMeta: metav1.ObjectMeta{Name: content},
		Spec: snapv1.VolumeSnapshotContentSpec{Driver: csi.LonghornDriver, DeletionPolicy: snapv1.VolumeSnapshotContentDelete,
			VolumeSnapshotRef: corev1ObjectRef(ns, name)},
		Status: &snapv1.VolumeSnapshotContentStatus{SnapshotHandle: &handle, ReadyToUse: &yes},
	}
	if msg != "" {
		vsc.Status.ReadyToUse = nil
		vsc.Status.Error = &snapv1.VolumeSnapshotError{Message: &msg}
	}
	if _, err := c.SnapshotV1().VolumeSnapshotContents().Create(ctx, vsc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	vs.Status = &snapv1.VolumeSnapshotStatus{BoundVolumeSnapshotContentName: &content, ReadyToUse: &yes}
	if msg != "" {
		vs.Status.ReadyToUse = nil
	}
	if _, err := c.SnapshotV1().VolumeSnapshots(ns).UpdateStatus(ctx, vs, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestEnsureSnapshot(t *testing.T) {
	ctx := context.Background()
	client := snapfake.NewSimpleClientset()
	s, err := csi.NewSnapshotter(client, 0)
	if err != nil {
		t.Fatal(err)
	}
	req := csi.SnapshotRequest{Namespace: "app", Name: "data-1", PVC: "data", Class: "longhorn-snap",
		Labels: map[string]string{"voldelta.io/volumesync": "data"}}

	res, err := s.EnsureSnapshot(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Created || res.Ready || res.RetryAfter <= 0 {
		t.Fatalf("first call: %+v, want created, not ready, retry", res)
	}
	vs, err := client.SnapshotV1().VolumeSnapshots("app").Get(ctx, "data-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if *vs.Spec.Source.PersistentVolumeClaimName != "data" || *vs.Spec.VolumeSnapshotClassName != "longhorn-snap" || vs.Labels["voldelta.io/volumesync"] != "data" {
		t.Fatalf("snapshot = %+v", vs)
	}

	res, err = s.EnsureSnapshot(ctx, req)
	if err != nil || res.Created || res.Ready {
		t.Fatalf("second call before ready: %+v, %v", res, err)
	}

	markReady(t, client, "app", "data-1", "snap://pvc-1/data-1", "")
	res, err = s.EnsureSnapshot(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Ready || res.Handle != "snap://pvc-1/data-1" || res.Content != "snapcontent-data-1" || res.Driver != csi.LonghornDriver || res.RetryAfter != 0 {
		t.Fatalf("ready: %+v", res)
	}

	// A snapshot of another PVC under the same name is refused.
	other := req
	other.PVC = "other"
	if _, err := s.EnsureSnapshot(ctx, other); err == nil {
		t.Fatal("a snapshot of another PVC was accepted")
	}

	// Failure reported by the driver.
	failed := req
	failed.Name = "data-2"
	if _, err := s.EnsureSnapshot(ctx, failed); err != nil {
		t.Fatal(err)
	}
	markReady(t, client, "app", "data-2", "", "driver exploded")
	if _, err := s.EnsureSnapshot(ctx, failed); !errors.Is(err, csi.ErrSnapshotFailed) {
		t.Fatalf("failed snapshot: err = %v, want ErrSnapshotFailed", err)
	}

	// Deletion is idempotent.
	for i := 0; i < 2; i++ {
		d, err := s.EnsureDeleted(ctx, "app", "data-2")
		if err != nil || !d.Gone {
			t.Fatalf("delete %d: %+v, %v", i, d, err)
		}
	}
	if _, err := client.SnapshotV1().VolumeSnapshots("app").Get(ctx, "data-2", metav1.GetOptions{}); err == nil {
		t.Fatal("snapshot still exists")
	}
}

func corev1ObjectRef(ns, name string) corev1.ObjectReference {
	return corev1.ObjectReference{Namespace: ns, Name: name, Kind: "VolumeSnapshot", APIVersion: "snapshot.storage.k8s.io/v1"}
}
