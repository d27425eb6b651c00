package receiver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"time"

	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/transport"
)

// prepared is what a session knows of its target before the first write.
type prepared struct {
	st            *State
	exts          []chunk.Entry // extents known to be intact
	how           string        // where they came from, for logs
	welcome       transport.TargetState
	committedRoot chunk.ID
}

// prepare loads (or rebuilds) the index of the target and records durably
// that an apply is starting: from here on the target is incomplete until
// a commit.
func (s *Server) prepare(ctx context.Context, log *slog.Logger, vd volumeDir, t *target, tsize uint64, hello transport.Hello, path string, p *prepared) error {
	st, err := vd.loadState()
	switch {
	case errors.Is(err, ErrNoState):
		st = &State{Volume: hello.Volume}
	case err != nil:
		log.Warn("state unreadable; rescanning the target", "err", err)
		st = &State{Volume: hello.Volume}
	}
	p.st = st
	switch {
	case st.Phase == PhaseApplying:
		p.welcome = transport.TargetIncomplete
	case st.Generation > 0:
		p.welcome = transport.TargetCommitted
		p.committedRoot, _ = chunk.ParseID(st.Root)
	}

	// scanSize is the part of the target worth indexing: all of a file
	// (data past the new end may still be copied), the source's size of a
	// device.
	scanSize := tsize
	if t.block {
		scanSize = min(tsize, hello.Size)
	}
	exts, how, err := s.loadIndex(ctx, log, vd, t, tsize, st, hello.Params, path)
	if err != nil {
		return err
	}
	if exts == nil {
		if scanSize == 0 {
			how = "empty target"
		} else {
			log.Info("indexing the target by scanning it", "reason", how, "bytes", scanSize)
			start := time.Now()
			m, _, err := chunk.ScanManifest(ctx, t, scanSize, hello.Params, chunk.ScanOptions{Workers: s.cfg.Workers})
			if err != nil {
				return fail(transport.ErrCodeApply, "scan target %s: %w", path, err)
			}
			exts = m.Entries
			how = fmt.Sprintf("rescanned (%s) in %s", how, elapsed(start))
		}
	}
	p.exts, p.how = exts, how

	name, err := vd.writeExtents(hello.Params, exts)
	if err != nil {
		return fail(transport.ErrCodeApply, "%w", err)
	}
	st.Target = path
	st.Params = hello.Params
	st.Extents = name
	st.Phase = PhaseApplying
	st.Applying = &Applying{Size: hello.Size, StartedAt: time.Now().UTC(), Peer: hello.Agent}
	if err := vd.saveState(st); err != nil {
		return fail(transport.ErrCodeApply, "%w", err)
	}
	return nil
}

// loadIndex returns the extents the state proves, or nil and the reason
// why the target must be rescanned.
func (s *Server) loadIndex(ctx context.Context, log *slog.Logger, vd volumeDir, t *target, tsize uint64, st *State, params chunk.Params, path string) ([]chunk.Entry, string, error) {
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
			return nil, "", fail(transport.ErrCodeApply, "%v", err)
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
			return nil, "", fail(transport.ErrCodeApply, "%v", err)
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

// commit makes the applied generation durable and current: shrink a file
// target, fsync it, verify, then write the new extents and state.
func (s *Server) commit(ctx context.Context, log *slog.Logger, vd volumeDir, t *target, a *applier, st *State, hello transport.Hello, path string, sess *transport.Session) error {
	if !t.block {
		if err := t.resize(hello.Size); err != nil {
			return fail(transport.ErrCodeApply, "%v", err)
		}
	}
	if err := t.sync(); err != nil {
		return fail(transport.ErrCodeApply, "%v", err)
	}
	root, _ := a.builder.Finish()
	start := time.Now()
	switch s.cfg.Verify {
	case VerifyFull:
		m, _, err := chunk.ScanManifest(ctx, t, hello.Size, hello.Params, chunk.ScanOptions{Workers: s.cfg.Workers})
		if err != nil {
			return fail(transport.ErrCodeApply, "verify: scan target: %w", err)
		}
		if m.Root != root {
			return fail(transport.ErrCodeVerify, "target %s hashes to %s after the apply, the agent's root is %s", path, m.Root.Short(), root.Short())
		}
	default:
		if err := a.verifyWritten(ctx); err != nil {
			return fail(transport.ErrCodeVerify, "target %s after the apply: %w", path, err)
		}
	}
	log.Debug("verified", "mode", s.cfg.Verify, "took", elapsed(start))
	name, err := vd.writeExtents(hello.Params, a.entries)
	if err != nil {
		return fail(transport.ErrCodeApply, "%v", err)
	}
	fp, err := t.fingerprint()
	if err != nil {
		return fail(transport.ErrCodeApply, "%v", err)
	}
	now := time.Now().UTC()
	st.Phase = PhaseCommitted
	st.Generation++
	st.Root = root.String()
	st.Size = hello.Size
	st.CommittedAt = now
	st.Extents = name
	st.Fingerprint = fp
	st.Applying = nil
	st.History = append(st.History, Committed{Generation: st.Generation, Root: st.Root, Size: st.Size, At: now})
	if len(st.History) > historyLen {
		st.History = st.History[len(st.History)-historyLen:]
	}
	if err := vd.saveState(st); err != nil { // the commit point
		return fail(transport.ErrCodeApply, "%v", err)
	}
	vd.removeStaleExtents(name)
	os.Remove(vd.path(journalName))
	a.result.Generation = st.Generation
	a.result.Root = root
	return nil
}
