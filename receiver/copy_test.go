package receiver

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCopyCommitted: the committed generation is copied byte for byte
// (zero runs included) into a file and into a block device, the copy
// reads back against the manifest, and a damaged copy does not.
func TestCopyCommitted(t *testing.T) {
	h := newHarness(t, "")
	p := smallParams()
	src := randBytes(7, 6*MiB)
	clear(src[2*MiB : 3*MiB]) // a zero run
	h.mustApply(src, p)
	ctx := context.Background()

	file := filepath.Join(t.TempDir(), "copy.img")
	if err := os.WriteFile(file, bytes.Repeat([]byte{0xAA}, 3*MiB), 0o644); err != nil {
		t.Fatal(err) // stale bytes the copy must overwrite, zero run included
	}
	res, err := CopyCommitted(ctx, h.vol, file, 2)
	if err != nil {
		t.Fatalf("copy to a file: %v", err)
	}
	if res.Generation != 1 || res.Size != 6*MiB || res.Bytes < 5*MiB || res.Bytes >= 6*MiB || res.Entries == 0 || res.Root == "" {
		t.Fatalf("result %+v", res)
	}
	got, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, src) {
		t.Fatal("the file copy differs from the committed image")
	}
	if err := VerifyCopy(ctx, h.vol, 1, file, 2); err != nil {
		t.Fatalf("verify a good copy: %v", err)
	}
	tamper(t, file, 4*MiB, 100, false)
	if err := VerifyCopy(ctx, h.vol, 1, file, 2); !errors.Is(err, ErrVerify) {
		t.Fatalf("verify a damaged copy: %v, want ErrVerify", err)
	}
	if err := VerifyCopy(ctx, h.vol, 2, file, 2); err == nil || !strings.Contains(err.Error(), "generation 1, not 2") {
		t.Fatalf("verify against a generation that is not committed: %v", err)
	}

	dev := loopDevice(t, 8*MiB)
	if _, err := CopyCommitted(ctx, h.vol, dev, 2); err != nil {
		t.Fatalf("copy to a block device: %v", err)
	}
	got, err = os.ReadFile(dev)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:len(src)], src) {
		t.Fatal("the block copy differs from the committed image")
	}
	small := loopDevice(t, 4*MiB)
	if _, err := CopyCommitted(ctx, h.vol, small, 2); !errors.Is(err, ErrTooSmall) {
		t.Fatalf("copy to a smaller device: %v, want ErrTooSmall", err)
	}
}

// TestCopyCommittedRefusesWhatIsNotCurrent: a target changed behind the
// receiver's back is not copied, and one that lies to its fingerprint is
// caught by the copy's own check and marked for a rescan; nothing
// committed, or a round holding the volume, is refused too.
func TestCopyCommittedRefusesWhatIsNotCurrent(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t, "")
	if _, err := CopyCommitted(ctx, h.vol, filepath.Join(t.TempDir(), "x"), 1); !errors.Is(err, ErrNoState) {
		t.Fatalf("copy of a volume never synced: %v", err)
	}
	p := smallParams()
	src := randBytes(8, 4*MiB)
	h.mustApply(src, p)

	unlock, err := lockVolume(volumeDir{dir: filepath.Join(h.vol.StateDir, h.vol.Name)}, h.vol.Name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := CopyCommitted(ctx, h.vol, filepath.Join(t.TempDir(), "busy"), 1); !errors.Is(err, ErrBusy) {
		t.Fatalf("copy while a round holds the volume: %v, want ErrBusy", err)
	}
	unlock()

	tamper(t, h.vol.Path, MiB, 64, false) // changes its mtime: the fingerprint sees it
	dst := filepath.Join(t.TempDir(), "copy.img")
	if _, err := CopyCommitted(ctx, h.vol, dst, 1); !errors.Is(err, ErrNotCurrent) {
		t.Fatalf("copy of a target changed outside voldelta: %v, want ErrNotCurrent", err)
	}
	h.mustApply(src, p)

	// A change the fingerprint vouches for (as one that cannot see a
	// write would): only reading the bytes finds it.
	tamper(t, h.vol.Path, 2*MiB, 64, false)
	vd := volumeDir{dir: filepath.Join(h.vol.StateDir, h.vol.Name)}
	st, err := vd.loadState()
	if err != nil {
		t.Fatal(err)
	}
	if st.Fingerprint, err = observeTarget(h.vol.Path); err != nil {
		t.Fatal(err)
	}
	if err := vd.saveState(st); err != nil {
		t.Fatal(err)
	}
	h.status(true) // the lie
	if _, err := CopyCommitted(ctx, h.vol, dst, 1); !errors.Is(err, ErrNotCurrent) {
		t.Fatalf("copy of a target that differs from its manifest: %v, want ErrNotCurrent", err)
	}
	vs := h.status(false)
	if !strings.Contains(vs.Problem, "copy") {
		t.Fatalf("problem after the failed copy: %q", vs.Problem)
	}
	h.mustApply(src, p)
	h.status(true)
}
