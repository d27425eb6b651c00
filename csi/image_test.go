package csi_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/voldelta/voldelta/csi"
	"github.com/voldelta/voldelta/internal/k8stest"
)

func TestParseLonghornSnapshotHandle(t *testing.T) {
	for _, tc := range []struct {
		in, vol, snap string
		ok            bool
	}{
		{"snap://pvc-1/snapshot-abc", "pvc-1", "snapshot-abc", true},
		{"bak://pvc-1/backup-1", "", "", false},
		{"bs://pvc-1/backup-1", "", "", false},
		{"bi://backing/x", "", "", false},
		{"snap://pvc-1", "", "", false},
		{"snap://pvc-1/a/b", "", "", false},
		{"snap://../x", "", "", false},
		{"pvc-1", "", "", false},
	} {
		vol, snap, err := csi.ParseLonghornSnapshotHandle(tc.in)
		if tc.ok != (err == nil) || vol != tc.vol || snap != tc.snap {
			t.Errorf("%q: %q %q %v", tc.in, vol, snap, err)
		}
		if err != nil && !errors.Is(err, csi.ErrUnsupported) {
			t.Errorf("%q: %v does not wrap ErrUnsupported", tc.in, err)
		}
	}
}

func TestImagesLonghorn(t *testing.T) {
	data := t.TempDir()
	const size = 1 << 20
	r, err := k8stest.NewLonghornReplica(data, "pvc-1", size)
	if err != nil {
		t.Fatal(err)
	}
	first := bytes.Repeat([]byte{1}, 8192)
	if err := r.WriteHead(first, 4096); err != nil {
		t.Fatal(err)
	}
	if err := r.Snapshot("s1"); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteHead(bytes.Repeat([]byte{2}, 4096), 8192); err != nil {
		t.Fatal(err)
	}
	if err := r.Snapshot("s2"); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteHead(bytes.Repeat([]byte{3}, 4096), 0); err != nil { // after s2: not in it
		t.Fatal(err)
	}
	want := make([]byte, size)
	copy(want[4096:], first)
	copy(want[8192:], bytes.Repeat([]byte{2}, 4096))

	src := &csi.Images{LonghornDataPaths: []string{t.TempDir(), data}}
	v := &csi.Volume{Driver: csi.LonghornDriver, Handle: "pvc-1", PV: "pv-1"}
	img, err := src.Open(context.Background(), v, csi.SnapshotResult{Ready: true, Handle: "snap://pvc-1/s2"})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if img.Size() != size {
		t.Fatalf("size %d", img.Size())
	}
	got, err := io.ReadAll(io.NewSectionReader(img, 0, size))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("snapshot s2 reads other bytes than were written before it")
	}

	// Between s1 and s2 only [8192, 12288) was written.
	changed, err := src.Changed(context.Background(), v, "snap://pvc-1/s1", "snap://pvc-1/s2")
	if err != nil {
		t.Fatal(err)
	}
	if len(changed) != 1 || changed[0].Offset != 8192 || changed[0].Length != 4096 {
		t.Fatalf("changed %+v", changed)
	}
	if _, err := src.Changed(context.Background(), v, "snap://pvc-1/s2", "snap://pvc-1/s1"); err == nil {
		t.Fatal("changes from a descendant to its ancestor were reported")
	}
	if _, err := src.Changed(context.Background(), &csi.Volume{Driver: "other"}, "a", "b"); !errors.Is(err, csi.ErrUnsupported) {
		t.Fatalf("other driver: %v", err)
	}

	for _, tc := range []struct {
		name   string
		handle string
		want   error
	}{
		{"backup handle", "bak://pvc-1/b", csi.ErrUnsupported},
		{"missing snapshot", "snap://pvc-1/nope", nil},
		{"other volume", "snap://pvc-2/s1", nil},
	} {
		_, err := src.Open(context.Background(), v, csi.SnapshotResult{Ready: true, Handle: tc.handle})
		if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("%s: err = %v", tc.name, err)
		}
	}
}

func TestImagesLiveDevice(t *testing.T) {
	dev := filepath.Join(t.TempDir(), "dev")
	if err := os.WriteFile(dev, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	v := &csi.Volume{Driver: "ebs.csi.aws.com", Handle: "vol-1", DevicePath: dev}
	snap := csi.SnapshotResult{Ready: true, Handle: "snap-123"}
	if _, err := (&csi.Images{}).Open(context.Background(), v, snap); !errors.Is(err, csi.ErrUnsupported) {
		t.Fatalf("without LiveDevice: err = %v, want ErrUnsupported", err)
	}
	img, err := (&csi.Images{LiveDevice: true}).Open(context.Background(), v, snap)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if img.Size() != 5 {
		t.Fatalf("size %d", img.Size())
	}
	v.DevicePath = filepath.Join(t.TempDir(), "missing")
	if _, err := (&csi.Images{LiveDevice: true}).Open(context.Background(), v, snap); !errors.Is(err, csi.ErrNotFound) {
		t.Fatalf("missing device: err = %v", err)
	}
}
