package csi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/csi"
	"github.com/voldelta/voldelta/csi/longhorn"
	"github.com/voldelta/voldelta/hint"
	"github.com/voldelta/voldelta/internal/k8stest"
)

const hintsVolSize = 1 << 20

// threeSnapshots builds a replica of pvc-1 with snapshots s1, s2 and s3,
// each writing one more 4 KiB block: s1 [4096, 12288), s2 [12288, 16384),
// s3 [32768, 36864).
func threeSnapshots(t *testing.T) (*csi.Images, *csi.Volume, *k8stest.LonghornReplica) {
	t.Helper()
	data := t.TempDir()
	r, err := k8stest.NewLonghornReplica(data, "pvc-1", hintsVolSize)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []struct {
		name string
		off  int64
		n    int
	}{{"s1", 4096, 8192}, {"s2", 12288, 4096}, {"s3", 32768, 4096}} {
		if err := r.WriteHead(bytes.Repeat([]byte(w.name[1:]), w.n), w.off); err != nil {
			t.Fatal(err)
		}
		if err := r.Snapshot(w.name); err != nil {
			t.Fatal(err)
		}
	}
	return &csi.Images{LonghornDataPaths: []string{data}}, &csi.Volume{Driver: csi.LonghornDriver, Handle: "pvc-1", PV: "pv-1"}, r
}

// setMeta rewrites key of snapshot name's .img.meta.
func setMeta(t *testing.T, r *k8stest.LonghornReplica, name, key string, value any) {
	t.Helper()
	p := filepath.Join(r.Dir, "volume-snap-"+name+".img.meta")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]any{}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	m[key] = value
	if b, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func open(t *testing.T, src *csi.Images, v *csi.Volume, handle string) csi.Image {
	t.Helper()
	img, err := src.Open(context.Background(), v, csi.SnapshotResult{Ready: true, Handle: handle})
	if err != nil {
		t.Fatalf("Open(%s): %v", handle, err)
	}
	t.Cleanup(func() { img.Close() })
	return img
}

func TestChangeHints(t *testing.T) {
	src, v, _ := threeSnapshots(t)
	ctx := context.Background()
	s1 := open(t, src, v, "snap://pvc-1/s1")
	id := csi.ImageID(s1)
	if !strings.HasPrefix(id, "longhorn:pvc-1/s1@") {
		t.Fatalf("ImageID(s1) = %q", id)
	}
	if got, err := src.SnapshotID(ctx, v, "snap://pvc-1/s1"); err != nil || got != id {
		t.Fatalf("SnapshotID(s1) = %q, %v; ImageID %q", got, err, id)
	}
	if id2 := csi.ImageID(open(t, src, v, "snap://pvc-1/s2")); id2 == id || id2 == "" {
		t.Fatalf("ImageID(s2) = %q, s1's %q", id2, id)
	}

	h := csi.ChangeHints(src, v, "snap://pvc-1/s1", "snap://pvc-1/s3")
	if h.Name() != "longhorn" {
		t.Fatalf("Name %q", h.Name())
	}
	if h.BaseImage() != id {
		t.Fatalf("BaseImage %q, the image read from s1 is %q", h.BaseImage(), id)
	}
	got, err := h.Changed(ctx, hintsVolSize)
	if err != nil {
		t.Fatal(err)
	}
	want := []chunk.Extent{{Offset: 12288, Length: 4096}, {Offset: 32768, Length: 4096}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("Changed = %v, want %v", got, want)
	}
	// Outside the extents s1 and s3 read the same.
	a, b := readAll(t, s1), readAll(t, open(t, src, v, "snap://pvc-1/s3"))
	var off uint64
	for _, e := range append(got, chunk.Extent{Offset: hintsVolSize}) {
		if !bytes.Equal(a[off:e.Offset], b[off:e.Offset]) {
			t.Fatalf("s1 and s3 differ in [%d, %d), outside the hints", off, e.Offset)
		}
		off = e.Offset + e.Length
	}
	// The image read is not the target.
	if _, err := h.Changed(ctx, hintsVolSize/2); !errors.Is(err, hint.ErrUnavailable) {
		t.Fatalf("Changed for another size: %v", err)
	}
	// No change.
	if got, err := csi.ChangeHints(src, v, "snap://pvc-1/s3", "snap://pvc-1/s3").Changed(ctx, hintsVolSize); err != nil || got == nil || len(got) != 0 {
		t.Fatalf("Changed(s3, s3) = %v, %v", got, err)
	}
}

func readAll(t *testing.T, img csi.Image) []byte {
	t.Helper()
	b, err := io.ReadAll(io.NewSectionReader(img, 0, int64(img.Size())))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestChangeHintsUnavailable: every Longhorn state in which the delta is
// not to be trusted gives hint.ErrUnavailable, with the cause.
func TestChangeHintsUnavailable(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		name         string
		base, target string
		setup        func(t *testing.T, r *k8stest.LonghornReplica)
		cause        error
		says         []string
	}{
		{"removed snapshot below the base", "s2", "s3", func(t *testing.T, r *k8stest.LonghornReplica) {
			setMeta(t, r, "s1", "Removed", true)
		}, longhorn.ErrRemovedBelowBase, []string{"s1", "s2", "full scan"}},
		{"base removed", "s2", "s3", func(t *testing.T, r *k8stest.LonghornReplica) {
			setMeta(t, r, "s2", "Removed", true)
		}, longhorn.ErrSnapshotRemoved, []string{"s2", "full scan"}},
		{"base purged", "s2", "s3", func(t *testing.T, r *k8stest.LonghornReplica) {
			setMeta(t, r, "s3", "Parent", "volume-snap-s1.img")
			os.Remove(filepath.Join(r.Dir, "volume-snap-s2.img"))
			os.Remove(filepath.Join(r.Dir, "volume-snap-s2.img.meta"))
		}, longhorn.ErrSnapshotNotFound, nil},
		{"chain changed: a layer replaced", "s1", "s3", func(t *testing.T, r *k8stest.LonghornReplica) {
			os.Remove(filepath.Join(r.Dir, "volume-snap-s2.img"))
		}, longhorn.ErrChainChanged, nil},
		{"not an ancestor", "s3", "s1", nil, longhorn.ErrNotAncestor, nil},
		{"base taken again", "s1", "s3", func(t *testing.T, r *k8stest.LonghornReplica) {
			setMeta(t, r, "s1", "Created", "2031-01-01T00:00:00Z")
		}, nil, []string{"s1", "full scan"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			src, v, r := threeSnapshots(t)
			h := csi.ChangeHints(src, v, "snap://pvc-1/"+c.base, "snap://pvc-1/"+c.target)
			_ = h.BaseImage() // the identity is taken first, as the agent does
			if c.setup != nil {
				c.setup(t, r)
			}
			_, err := h.Changed(ctx, hintsVolSize)
			if !errors.Is(err, hint.ErrUnavailable) {
				t.Fatalf("Changed: %v, want hint.ErrUnavailable", err)
			}
			if c.cause != nil && !errors.Is(err, c.cause) {
				t.Fatalf("Changed: %v, want it to wrap %v", err, c.cause)
			}
			for _, w := range c.says {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
	// Drivers without change tracking.
	h := csi.ChangeHints(&csi.Images{}, &csi.Volume{Driver: "ebs.csi.aws.com", Handle: "vol-1"}, "snap-1", "snap-2")
	if h.BaseImage() == "" {
		t.Fatal(`BaseImage "" would make the caller vouch for the base`)
	}
	if _, err := h.Changed(ctx, 100); !errors.Is(err, hint.ErrUnavailable) || !errors.Is(err, csi.ErrUnsupported) {
		t.Fatalf("other driver: %v", err)
	}
	// A base without an identity.
	src, v, r := threeSnapshots(t)
	setMeta(t, r, "s1", "Created", "")
	h = csi.ChangeHints(src, v, "snap://pvc-1/s1", "snap://pvc-1/s2")
	if id := h.BaseImage(); id == "" || id == csi.ImageID(open(t, src, v, "snap://pvc-1/s1")) {
		t.Fatalf("BaseImage %q of a snapshot without a creation time", id)
	}
	if _, err := h.Changed(ctx, hintsVolSize); !errors.Is(err, hint.ErrUnavailable) {
		t.Fatalf("base without identity: %v", err)
	}
}

// TestLonghornLUKS: a snapshot whose image starts with a LUKS header is
// refused like a volume marked Encrypted, by Open and by change tracking;
// with the live-device fallback Open reads the device instead.
func TestLonghornLUKS(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		name string
		hdr  []byte
		want string
	}{
		{"LUKS1", []byte("LUKS\xba\xbe\x00\x01"), "LUKS1"},
		{"LUKS2", []byte("LUKS\xba\xbe\x00\x02"), "LUKS2"},
	} {
		t.Run(c.name, func(t *testing.T) {
			data := t.TempDir()
			r, err := k8stest.NewLonghornReplica(data, "pvc-1", hintsVolSize)
			if err != nil {
				t.Fatal(err)
			}
			blk := make([]byte, 4096)
			copy(blk, c.hdr)
			if err := r.WriteHead(blk, 0); err != nil {
				t.Fatal(err)
			}
			for _, s := range []string{"s1", "s2"} {
				if err := r.Snapshot(s); err != nil {
					t.Fatal(err)
				}
			}
			src := &csi.Images{LonghornDataPaths: []string{data}}
			v := &csi.Volume{Driver: csi.LonghornDriver, Handle: "pvc-1", PV: "pv-1"}
			_, err = src.Open(ctx, v, csi.SnapshotResult{Ready: true, Handle: "snap://pvc-1/s2"})
			if !errors.Is(err, csi.ErrUnsupported) || !strings.Contains(err.Error(), "encrypted") || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Open: %v, want the encrypted refusal naming %s", err, c.want)
			}
			if _, err := src.Changed(ctx, v, "snap://pvc-1/s1", "snap://pvc-1/s2"); !errors.Is(err, csi.ErrUnsupported) {
				t.Fatalf("Changed: %v", err)
			}
			if _, err := csi.ChangeHints(src, v, "snap://pvc-1/s1", "snap://pvc-1/s2").Changed(ctx, hintsVolSize); !errors.Is(err, hint.ErrUnavailable) {
				t.Fatalf("ChangeHints: %v", err)
			}
			// The live-device fallback reads the (plain text) device.
			dev := filepath.Join(t.TempDir(), "mapper")
			if err := os.WriteFile(dev, []byte("plain"), 0o644); err != nil {
				t.Fatal(err)
			}
			v.DevicePath = dev
			img, err := (&csi.Images{LonghornDataPaths: []string{data}, LiveDevice: true}).Open(ctx, v, csi.SnapshotResult{Ready: true, Handle: "snap://pvc-1/s2"})
			if err != nil {
				t.Fatalf("Open with the live-device fallback: %v", err)
			}
			defer img.Close()
			if img.Size() != 5 || csi.ImageID(img) != "" {
				t.Fatalf("fallback image: size %d, id %q", img.Size(), csi.ImageID(img))
			}
		})
	}
	// The same image without the magic is read; and a volume the resolver
	// knows as encrypted is refused before its replica is opened.
	src, v, _ := threeSnapshots(t)
	open(t, src, v, "snap://pvc-1/s1")
	v.Encrypted = true
	if _, err := src.Open(ctx, v, csi.SnapshotResult{Ready: true, Handle: "snap://pvc-1/s1"}); !errors.Is(err, csi.ErrUnsupported) {
		t.Fatalf("Open of an encrypted volume: %v", err)
	}
	if _, err := src.Changed(ctx, v, "snap://pvc-1/s1", "snap://pvc-1/s2"); !errors.Is(err, csi.ErrUnsupported) {
		t.Fatalf("Changed of an encrypted volume: %v", err)
	}
}
