package receiver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/transport"
)

// ErrNotCurrent: the volume's committed generation is not what its target
// holds now (changed outside voldelta, or nothing vouches for it); the next
// round, or a scrub, makes it current again.
var ErrNotCurrent = errors.New("target not current")

// CopyResult is what CopyCommitted copied.
type CopyResult struct {
	Volume     string        `json:"volume"`
	Generation uint64        `json:"generation"`
	Root       string        `json:"root_hash"`
	Size       uint64        `json:"size"`
	Entries    uint64        `json:"entries"`       // manifest entries copied, and verified twice
	Bytes      uint64        `json:"bytes_written"` // data bytes written (zero ranges are not counted)
	Duration   time.Duration `json:"duration_ns"`
}

// CopyCommitted copies the committed generation of vol into dst, a file
// (created or grown as needed) or a block device at least as large as the
// image. Every entry is checked against the committed manifest as it is
// read from the target, and again after dst was synced, as it reads back
// from dst: the copy is the generation's bytes or the call fails. Bytes of
// dst past the image are left as they are.
//
// It holds the volume's lock, so no round writes the target meanwhile
// (an agent's round that arrives is refused as busy and retried by its
// agent); if a round runs now it fails with ErrBusy. A target that is not
// current fails with ErrNotCurrent, one with nothing committed with
// ErrNotCommitted or ErrNoState.
func CopyCommitted(ctx context.Context, vol Volume, dst string, workers int) (CopyResult, error) {
	res := CopyResult{Volume: vol.Name}
	if workers <= 0 {
		workers = defaultWorkers()
	}
	vd, unlock, err := lockExisting(vol)
	if err != nil {
		return res, err
	}
	defer unlock()
	st, exts, err := committedExtents(vd, vol.Name)
	if err != nil {
		return res, err
	}
	res.Generation, res.Root, res.Size = st.Generation, st.Root, st.Size
	src, err := openForScrub(st.Target)
	if err != nil {
		return res, err
	}
	defer src.Close()
	before, err := src.fingerprint()
	if err != nil {
		return res, err
	}
	out, err := openCopyTarget(dst, st.Size)
	if err != nil {
		return res, err
	}
	defer out.Close()
	start := time.Now()
	written, err := copyEntries(ctx, src, out, exts, workers)
	if errors.Is(err, errMismatch) {
		// The target does not hold what the state says: not current, and
		// the next round rescans it (as a scrub that finds it would).
		st.Rescan = fmt.Sprintf("a copy at %s found the target differs from generation %d: %v", time.Now().UTC().Format(time.RFC3339), st.Generation, err)
		return res, errors.Join(fmt.Errorf("copy %q: %w: %v", vol.Name, ErrNotCurrent, err), vd.saveState(st))
	}
	if err != nil {
		return res, fmt.Errorf("copy generation %d of %q to %s: %w", st.Generation, vol.Name, dst, err)
	}
	if err := out.sync(); err != nil {
		return res, err
	}
	after, err := src.fingerprint()
	if err != nil {
		return res, err
	}
	if v, why := before.compare(after); v == changedContent {
		return res, fmt.Errorf("copy %q: the target changed while it was read (%s)", vol.Name, why)
	}
	if err := verifyEntries(ctx, out, exts, workers); err != nil {
		return res, fmt.Errorf("copy of generation %d of %q to %s does not read back: %w", st.Generation, vol.Name, dst, err)
	}
	res.Entries, res.Bytes, res.Duration = uint64(len(exts)), written, time.Since(start)
	return res, nil
}

// VerifyCopy reads path back against the committed generation of vol: nil
// if every entry of its manifest matches (and the generation is still
// gen), an error wrapping ErrVerify naming the first mismatch otherwise.
// It takes the volume's lock only to read the manifest.
func VerifyCopy(ctx context.Context, vol Volume, gen uint64, path string, workers int) error {
	if workers <= 0 {
		workers = defaultWorkers()
	}
	vd, unlock, err := lockExisting(vol)
	if err != nil {
		return err
	}
	st, err := vd.loadState()
	if err == nil && st.Generation != gen {
		err = fmt.Errorf("volume %q is at generation %d, not %d", vol.Name, st.Generation, gen)
	}
	var exts []chunk.Entry
	if err == nil {
		_, exts, err = vd.readExtents(st.Extents)
	}
	unlock()
	if err != nil {
		return fmt.Errorf("verify copy of %q: %w", vol.Name, err)
	}
	t, err := openForScrub(path)
	if err != nil {
		return err
	}
	defer t.Close()
	return verifyEntries(ctx, t, clip(exts, st.Size), workers)
}

// lockExisting locks the state of a volume that has one: ErrNoState if it
// was never synced, ErrBusy if a round or another copy holds it.
func lockExisting(vol Volume) (volumeDir, func(), error) {
	vd := volumeDir{dir: filepath.Join(vol.StateDir, vol.Name)}
	if err := transport.ValidateVolumeName(vol.Name); err != nil {
		return vd, nil, err
	}
	if _, err := os.Stat(vd.dir); err != nil {
		return vd, nil, fmt.Errorf("volume %q: %w", vol.Name, ErrNoState)
	}
	unlock, err := lockVolume(vd, vol.Name)
	return vd, unlock, err
}

// committedExtents loads the volume's state and manifest if it holds a
// current committed generation.
func committedExtents(vd volumeDir, name string) (*State, []chunk.Entry, error) {
	st, err := vd.loadState()
	if err != nil {
		return nil, nil, fmt.Errorf("volume %q: %w", name, err)
	}
	if st.Phase != PhaseCommitted || st.Generation == 0 {
		return nil, nil, fmt.Errorf("volume %q: %w", name, ErrNotCommitted)
	}
	if ok, why := judge(st); !ok {
		return nil, nil, fmt.Errorf("volume %q, generation %d: %w: %s", name, st.Generation, ErrNotCurrent, why)
	}
	_, exts, err := vd.readExtents(st.Extents)
	if err != nil {
		return nil, nil, fmt.Errorf("volume %q: %w", name, err)
	}
	return st, clip(exts, st.Size), nil
}

// clip drops the entries past size.
func clip(exts []chunk.Entry, size uint64) []chunk.Entry {
	for i, e := range exts {
		if e.End() > size {
			return exts[:i]
		}
	}
	return exts
}

// openCopyTarget opens dst for a copy of size bytes: a file is created or
// grown to size, a block device must hold size bytes.
func openCopyTarget(dst string, size uint64) (*target, error) {
	out, err := openTarget(dst)
	if err != nil {
		return nil, err
	}
	have, err := out.size()
	if err != nil {
		out.Close()
		return nil, err
	}
	switch {
	case have >= size:
	case out.block:
		out.Close()
		return nil, failf(ErrTooSmall, "block device %s holds %d bytes, the image %d", dst, have, size)
	default:
		if err := out.resize(size); err != nil {
			out.Close()
			return nil, err
		}
	}
	if err := out.reserve(0, size); err != nil {
		out.Close()
		return nil, err
	}
	return out, nil
}

// copyEntries copies every entry from src to out, checking each against
// its ID as read; zero entries are zeroed. It returns the data bytes
// written.
func copyEntries(ctx context.Context, src, out *target, exts []chunk.Entry, workers int) (uint64, error) {
	var written atomic.Uint64
	err := forEntries(ctx, exts, workers, func(e chunk.Entry) error {
		if e.Zero {
			return out.zero(e.Offset, e.Length)
		}
		buf := chunk.GetBuffer(int(e.Length))
		defer chunk.PutBuffer(buf)
		b := (*buf)[:e.Length]
		if _, err := src.ReadAt(b, int64(e.Offset)); err != nil {
			return fmt.Errorf("read %v: %w", e, err)
		}
		if chunk.Sum(b) != e.ID {
			return fmt.Errorf("read %v from the target: %w", e, errMismatch)
		}
		if _, err := out.WriteAt(b, int64(e.Offset)); err != nil {
			return err
		}
		written.Add(e.Length)
		return nil
	})
	return written.Load(), err
}

// verifyEntries checks every entry of t against the manifest.
func verifyEntries(ctx context.Context, t *target, exts []chunk.Entry, workers int) error {
	return forEntries(ctx, exts, workers, func(e chunk.Entry) error {
		err := verifyEntry(t, e)
		if errors.Is(err, errMismatch) {
			return fmt.Errorf("%w: %v", ErrVerify, err)
		}
		return err
	})
}

// forEntries runs f on every entry, workers at a time, until one fails
// or ctx ends.
func forEntries(ctx context.Context, exts []chunk.Entry, workers int, f func(chunk.Entry) error) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(workers)
	for _, e := range exts {
		g.Go(func() error {
			if err := gctx.Err(); err != nil {
				return err
			}
			return f(e)
		})
	}
	return g.Wait()
}
