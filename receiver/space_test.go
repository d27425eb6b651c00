package receiver

import (
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/voldelta/voldelta/transport"
)

// smallFS mounts a tmpfs of size bytes for the test and unmounts it after.
func smallFS(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount a %s tmpfs: %v: %s (the disk-full tests need root: run them as root)", size, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// TestTargetFull (item 10): no space left for a file target is its own,
// non-retryable kind, on the first round (writes as chunks arrive) and on
// a delta round (the ranges to write are reserved before any copy).
func TestTargetFull(t *testing.T) {
	p := smallParams()
	check := func(t *testing.T, h *harness, err error) {
		t.Helper()
		if !errors.Is(err, ErrTargetFull) {
			t.Fatalf("want ErrTargetFull, got %v", err)
		}
		if !strings.Contains(err.Error(), "no space left") {
			t.Fatalf("message %q does not say what is wrong", err)
		}
		if c := errorCode(context.Background(), err); c != transport.ErrCodeTargetFull || c.Retryable() {
			t.Fatalf("code %v (retryable %v), want target full, not retryable", c, c.Retryable())
		}
		h.status(false)
	}
	t.Run("first round", func(t *testing.T) {
		dir := smallFS(t, "8m")
		h := newHarness(t, filepath.Join(dir, "t.img"))
		_, _, err := h.apply(randBytes(110, 16*MiB), p)
		check(t, h, err)
	})
	t.Run("delta round", func(t *testing.T) {
		dir := smallFS(t, "8m")
		h := newHarness(t, filepath.Join(dir, "t.img"))
		small := randBytes(111, 4*MiB)
		h.mustApply(small, p)
		big := append(append([]byte{}, small...), randBytes(112, 12*MiB)...)
		_, _, err := h.apply(big, p)
		check(t, h, err)
		// A round that fits commits again.
		h.mustApply(small, p)
		h.status(true)
	})
}
