package receiver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/voldelta/voldelta/chunk"
)

// known is what a round may believe of its target before it reads it.
type known struct {
	exts []chunk.Entry // the index; nil: none, the target is re-indexed by reading it
	how  string        // where it came from, or why there is none
	// readBack: the index comes from before and nothing vouches that the
	// target still matches it, so every entry the round keeps in place is
	// read and checked before the commit (and fetched if it does not match).
	readBack bool
	// committed: exts are the committed generation's extents file, as
	// committed (the state is committed, with no rescan pending, for these
	// params and this target path).
	committed bool
}

// loadIndex returns what the state proves of the target: the committed
// manifest when the target's fingerprint vouches that nothing changed it,
// what an interrupted apply's journal recovered (to be read back), or no
// index and the reason why the target must be rescanned.
func loadIndex(ctx context.Context, log *slog.Logger, vd volumeDir, t *target, tsize uint64, st *State, params chunk.Params, path string) (known, error) {
	switch {
	case st.Rescan != "":
		return known{how: st.Rescan}, nil
	case st.Extents == "":
		return known{how: "no state"}, nil
	case st.Params != params:
		return known{how: "chunk parameters changed"}, nil
	case st.Target != path:
		return known{how: fmt.Sprintf("target path changed from %s", st.Target)}, nil
	}
	p, exts, err := vd.readExtents(st.Extents)
	if err != nil {
		log.Warn("extents file unreadable; rescanning the target", "err", err)
		return known{how: fmt.Sprintf("extents file unreadable (%v)", err)}, nil
	}
	if p != params {
		return known{how: "extents file has other chunk parameters"}, nil
	}
	switch st.Phase {
	case PhaseCommitted:
		fp, err := t.fingerprint()
		if err != nil {
			return known{}, err
		}
		switch v, why := st.Fingerprint.compare(fp); v {
		case changedContent:
			return known{how: "target changed outside voldelta: " + why}, nil
		case unknownContent:
			return known{exts: exts, how: "committed manifest, read back: " + why, readBack: true, committed: true}, nil
		}
		return known{exts: exts, how: "committed manifest", committed: true}, nil
	case PhaseApplying:
		intents, done, err := vd.readJournalFor(st.Applying.Journal)
		if errors.Is(err, errJournalLost) || errors.Is(err, errJournalDamaged) || errors.Is(err, errJournalOther) {
			log.Warn("the interrupted apply's journal cannot be used; rescanning the target", "err", err)
			return known{how: fmt.Sprintf("interrupted apply, %v", err)}, nil
		}
		if err != nil {
			return known{}, err
		}
		start := time.Now()
		exts, verified, err := recoverExtents(ctx, t, tsize, exts, intents, done)
		if err != nil {
			return known{}, err
		}
		log.Info("resuming an interrupted apply", "intents", len(intents), "done", len(done), "verified_by_reading", verified, "took", elapsed(start))
		return known{exts: exts, how: "recovered from the journal, read back", readBack: true}, nil
	}
	return known{}, failf(ErrStateCorrupt, "unknown phase %q in %s", st.Phase, vd.path("state.json"))
}

// recoverExtents rebuilds what the target holds after an interrupted
// apply: the base extents minus every range that had an intent, plus the
// entries recorded as done, plus the other intended entries that read back
// correctly. The result is only a plan: the round reads back every entry
// it keeps before it commits.
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
