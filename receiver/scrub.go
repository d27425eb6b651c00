package receiver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// ScrubResult is what a scrub found.
type ScrubResult struct {
	Volume     string        `json:"volume"`
	Generation uint64        `json:"generation"`
	Entries    uint64        `json:"entries"`     // manifest entries read and checked
	Bytes      uint64        `json:"bytes"`       // bytes read
	Bad        uint64        `json:"bad_entries"` // entries that did not match
	Current    bool          `json:"current"`     // the target holds the committed generation
	Duration   time.Duration `json:"duration_ns"`
}

// ErrNotCommitted is returned by Scrub for a volume with no committed
// generation to check (never synced, or a round is incomplete).
var ErrNotCommitted = errors.New("no committed generation")

// Scrub reads the whole target of a committed volume and checks every
// entry of its committed manifest. It is the full verification for what
// fingerprints cannot see (bit rot, writes that bypass the device, a
// reboot that reset a block device's write counters). A mismatch makes the
// volume not current and marks its index for a rescan, so the next round
// repairs it; a clean scrub renews the target's fingerprint, so a target
// that nothing vouched for (after a reboot) is current again. It holds the
// volume's lock: no round runs meanwhile.
func Scrub(ctx context.Context, vol Volume, workers int, log *slog.Logger) (ScrubResult, error) {
	res := ScrubResult{Volume: vol.Name}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if workers <= 0 {
		workers = defaultWorkers()
	}
	vd, unlock, err := lockExisting(vol)
	if err != nil {
		return res, err
	}
	defer unlock()
	st, err := vd.loadState()
	if err != nil {
		return res, fmt.Errorf("volume %q: %w", vol.Name, err)
	}
	if st.Phase != PhaseCommitted || st.Generation == 0 {
		return res, fmt.Errorf("volume %q: %w: the next round verifies what it writes", vol.Name, ErrNotCommitted)
	}
	res.Generation = st.Generation
	_, exts, err := vd.readExtents(st.Extents)
	if err != nil {
		return res, fmt.Errorf("volume %q: %w", vol.Name, err)
	}
	t, err := openForScrub(st.Target)
	if err != nil {
		return res, err
	}
	defer t.Close()
	before, err := t.fingerprint()
	if err != nil {
		return res, err
	}
	start := time.Now()
	var bad, bytes atomic.Uint64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(workers)
	for _, e := range exts {
		if e.End() > st.Size {
			break
		}
		g.Go(func() error {
			if err := gctx.Err(); err != nil {
				return err
			}
			err := verifyEntry(t, e)
			bytes.Add(e.Length)
			if errors.Is(err, errMismatch) {
				bad.Add(1)
				log.Warn("scrub: entry does not match", "volume", vol.Name, "entry", e.String())
				return nil
			}
			return err
		})
		res.Entries++
	}
	if err := g.Wait(); err != nil {
		return res, fmt.Errorf("scrub %q: %w", vol.Name, err)
	}
	res.Bytes, res.Bad, res.Duration = bytes.Load(), bad.Load(), time.Since(start)
	after, err := t.fingerprint()
	if err != nil {
		return res, err
	}
	if res.Bad > 0 {
		st.Rescan = fmt.Sprintf("the scrub of %s found %d of %d entries that do not match generation %d", time.Now().UTC().Format(time.RFC3339), res.Bad, res.Entries, st.Generation)
		return res, vd.saveState(st)
	}
	if v, why := before.compare(after); v == changedContent {
		return res, fmt.Errorf("scrub %q: the target changed while it was read (%s): scrub again once nothing else writes it", vol.Name, why)
	}
	res.Current = true
	st.Fingerprint = after
	return res, vd.saveState(st)
}

// openForScrub opens a target read-only, exclusively for a block device
// (so it cannot be mounted while it is read).
func openForScrub(path string) (*target, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("target %s: %w", path, err)
	}
	block := fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0
	flags := os.O_RDONLY
	if block {
		flags |= unix.O_EXCL
	}
	f, err := os.OpenFile(path, flags, 0)
	if err != nil {
		return nil, fmt.Errorf("open target %s: %w", path, err)
	}
	return &target{path: path, f: f, block: block}, nil
}
