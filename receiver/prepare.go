package receiver

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/voldelta/voldelta/chunk"
)

// loadIndex returns the extents the state proves, or nil and the reason
// why the target must be rescanned.
func loadIndex(ctx context.Context, log *slog.Logger, vd volumeDir, t *target, tsize uint64, st *State, params chunk.Params, path string) ([]chunk.Entry, string, error) {
	if st.Extents == "" {
		return nil, "no state", nil
	}
	if st.Params != params {
		return nil, "chunk parameters changed", nil
	}
	if st.Target != path {
		return nil, fmt.Sprintf("target path changed from %s", st.Target), nil
	}
	p, exts, err := vd.readExtents(st.Extents)
	if err != nil {
		log.Warn("extents file unreadable", "err", err)
		return nil, "extents file unreadable", nil
	}
	if p != params {
		return nil, "extents file has other chunk parameters", nil
	}
	switch st.Phase {
	case PhaseCommitted:
		fp, err := t.fingerprint()
		if err != nil {
			return nil, "", err
		}
		if !t.block && fp != st.Fingerprint {
			return nil, "target changed outside voldelta (size, mtime or inode differ)", nil
		}
		if t.block {
			if fp.Size != st.Fingerprint.Size {
				return nil, "block device size changed", nil
			}
			if err := spotCheck(t, exts, 16); err != nil {
				log.Warn("spot check failed", "err", err)
				return nil, "block device content changed outside voldelta (spot check)", nil
			}
		}
		return exts, "committed manifest", nil
	case PhaseApplying:
		intents, done, err := vd.readJournal()
		if err != nil {
			return nil, "", err
		}
		start := time.Now()
		exts, verified, err := recoverExtents(ctx, t, tsize, exts, intents, done)
		if err != nil {
			return nil, "", err
		}
		log.Info("resuming an interrupted apply", "intents", len(intents), "done", len(done), "verified_by_reading", verified, "took", elapsed(start))
		return exts, "recovered from the journal", nil
	}
	return nil, fmt.Sprintf("unknown phase %q", st.Phase), nil
}

// recoverExtents rebuilds what the target holds after an interrupted
// apply: the base extents minus every range that had an intent, plus the
// entries recorded as done, plus the other intended entries that read back
// correctly.
func recoverExtents(ctx context.Context, t *target, tsize uint64, base, intents, done []chunk.Entry) ([]chunk.Entry, int, error) {
	x := newIndex(base)
	for _, e := range intents {
		x.clobber(e.Offset, e.Length)
	}
	for _, e := range done {
		x.clobber(e.Offset, e.Length)
	}
	x.truncate(tsize)
	proven := make(map[uint64]chunk.Entry)
	for _, e := range done {
		if e.End() <= tsize {
			proven[e.Offset] = e
		}
	}
	verified := 0
	for _, e := range intents {
		if _, ok := proven[e.Offset]; ok || e.End() > tsize {
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, 0, err
		}
		if verifyEntry(t, e) == nil {
			proven[e.Offset] = e
			verified++
		}
	}
	list := make([]chunk.Entry, 0, len(proven))
	for _, e := range proven {
		list = append(list, e)
	}
	return merge(x.live(), list), verified, nil
}

// spotCheck reads up to n data extents spread over the target and checks
// their hashes.
func spotCheck(t *target, exts []chunk.Entry, n int) error {
	var data []chunk.Entry
	for _, e := range exts {
		if !e.Zero {
			data = append(data, e)
		}
	}
	if len(data) == 0 {
		return nil
	}
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	for k := 0; k < n && k < len(data); k++ {
		e := data[r.IntN(len(data))]
		if err := verifyEntry(t, e); err != nil {
			return err
		}
	}
	return nil
}
