package receiver

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/voldelta/voldelta/internal/atomicfile"
	"golang.org/x/sys/unix"
)

// Claims keep one target from holding two volumes. Two volume names on
// one file or device would both be reported current while it holds only
// one of them, so a target is claimed by the first volume that syncs into
// it: StateDir/.claims/<identity> holds that volume's name, where the
// identity is the device number of a block device or the device and inode
// of a file, the same for every path (or symlink) that reaches it. A claim
// is dropped only when its volume's state no longer points at the target.
const claimsDir = ".claims"

// claimTarget claims t for volume, or returns ErrTargetClaimed if another
// volume holds it.
func claimTarget(stateDir, volume string, t *target) error {
	id, err := t.identity()
	if err != nil {
		return err
	}
	dir := filepath.Join(stateDir, claimsDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return classifySpace(fmt.Errorf("create %s: %w", dir, err), "the state directory "+stateDir)
	}
	path := filepath.Join(dir, id)
	for range 2 {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err == nil {
			_, werr := f.WriteString(volume + "\n")
			if serr := f.Sync(); werr == nil {
				werr = serr
			}
			if cerr := f.Close(); werr == nil {
				werr = cerr
			}
			if werr != nil {
				os.Remove(path)
				return classifySpace(fmt.Errorf("write claim %s: %w", path, werr), "the state directory "+stateDir)
			}
			return atomicfile.SyncDir(dir)
		}
		if !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("claim target %s: %w", t.path, err)
		}
		b, err := os.ReadFile(path)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("read claim %s: %w", path, err)
		}
		owner := strings.TrimSpace(string(b))
		if owner == volume {
			return nil
		}
		if err == nil && claimLive(stateDir, owner, id) {
			return failf(ErrTargetClaimed, "target %s already holds volume %q (claim %s): one target can be the replica of one volume only. "+
				"Give %q its own target, or, if %q is gone, remove its state directory %s", t.path, owner, path, volume, owner, filepath.Join(stateDir, owner))
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("drop stale claim %s: %w", path, err)
		}
	}
	return failf(ErrBusy, "target %s is being claimed concurrently", t.path)
}

// claimLive reports whether owner's state still points at the target with
// this identity. A state that cannot be read counts as live: better to
// refuse than to let two volumes share a target.
func claimLive(stateDir, owner, id string) bool {
	if owner == "" || strings.ContainsAny(owner, `/\`) {
		return false
	}
	st, err := volumeDir{dir: filepath.Join(stateDir, owner)}.loadState()
	if errors.Is(err, ErrNoState) {
		return false
	}
	if err != nil {
		return true
	}
	cur, err := identityOfPath(st.Target)
	return err != nil && !errors.Is(err, fs.ErrNotExist) || cur == id
}

func identityOf(st *unix.Stat_t) string {
	if st.Mode&unix.S_IFMT == unix.S_IFBLK {
		return fmt.Sprintf("blk-%d-%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	return fmt.Sprintf("file-%d-%d", st.Dev, st.Ino)
}

func identityOfPath(path string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return "", &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	return identityOf(&st), nil
}

// CheckDistinctTargets refuses a configuration that names one file or
// device under two volume names (also through different paths or
// symlinks), with an error that names both.
func CheckDistinctTargets(targets map[string]string) error {
	names := make([]string, 0, len(targets))
	for n := range targets {
		names = append(names, n)
	}
	sort.Strings(names)
	seen := make(map[string]string)
	for _, n := range names {
		keys := []string{"path:" + filepath.Clean(targets[n])}
		if abs, err := filepath.Abs(targets[n]); err == nil {
			keys = append(keys, "path:"+abs)
		}
		if id, err := identityOfPath(targets[n]); err == nil {
			keys = append(keys, id)
		}
		for _, k := range keys {
			if other, dup := seen[k]; dup && other != n {
				return failf(ErrTargetClaimed, "targets %q and %q are the same file or device (%s): each volume needs a target of its own", other, n, targets[n])
			}
			seen[k] = n
		}
	}
	return nil
}
