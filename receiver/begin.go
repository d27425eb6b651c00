package receiver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/transport"
	"golang.org/x/sys/unix"
)

// Volume is a target and the directory keeping its state.
type Volume struct {
	Name     string // validated with transport.ValidateVolumeName
	Path     string // file (created if missing) or block device
	StateDir string // the volume's state lives in StateDir/Name
}

// Options tune an apply.
type Options struct {
	// Verify is the check before commit; default VerifyWritten.
	Verify VerifyMode
	// ApplyBuffer bounds the memory for chunks that arrive before they may
	// be written, and for sources read ahead to break copy cycles; 0 means
	// 64 MiB. A chunk that does not fit is written at once (and a copy
	// whose source it overwrites is fetched instead), a cycle that cannot
	// be buffered is broken by fetching.
	ApplyBuffer int64
	// Workers is the parallelism of scans and verification.
	Workers int
	// Logger; nil logs nothing.
	Logger *slog.Logger
}

func (o *Options) defaults() error {
	switch o.Verify {
	case "":
		o.Verify = VerifyWritten
	case VerifyWritten, VerifyFull:
	default:
		return fmt.Errorf("verify mode %q: want %q or %q", o.Verify, VerifyWritten, VerifyFull)
	}
	if o.ApplyBuffer == 0 {
		o.ApplyBuffer = 64 << 20
	}
	if o.ApplyBuffer < 0 {
		return fmt.Errorf("apply buffer %d: want >= 0", o.ApplyBuffer)
	}
	if o.Workers <= 0 {
		o.Workers = defaultWorkers()
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Header describes what a sender is about to apply.
type Header struct {
	Size   uint64
	Params chunk.Params
	Peer   string // who sends, for the state file and logs
}

// Previous is what the target held when the apply began.
type Previous struct {
	Generation uint64   // last committed generation, 0 if none
	Root       chunk.ID // its root hash
	Incomplete bool     // an earlier apply was interrupted; this one resumes it
}

// Apply is one round applied to a volume: Begin it, feed it the manifest
// (AddManifest, EndManifest) and the chunks it asks for (Deliver) while
// Run plans and writes, then Commit. Close releases it; an apply closed
// without a commit leaves the target incomplete, with its progress
// journaled for the next one.
type Apply struct {
	vol       Volume
	opt       Options
	log       *slog.Logger
	vd        volumeDir
	t         *target
	st        *State
	prev      Previous
	a         *applier
	events    chan event
	unlock    func()
	j         *journal
	started   time.Time
	committed bool
	ran       bool
}

// busy holds the volumes applied in this process, by state directory.
var busy = struct {
	sync.Mutex
	m map[string]bool
}{m: make(map[string]bool)}

// Begin claims the volume, opens its target, learns what it holds (from
// the state, the journal of an interrupted apply, or by scanning it) and
// records durably that an apply has started: from then on the target is
// not current until a Commit.
func Begin(ctx context.Context, vol Volume, opt Options, h Header) (_ *Apply, err error) {
	if err := transport.ValidateVolumeName(vol.Name); err != nil {
		return nil, err
	}
	if err := h.Params.Validate(); err != nil {
		return nil, err
	}
	if err := opt.defaults(); err != nil {
		return nil, err
	}
	p := &Apply{vol: vol, opt: opt, log: opt.Logger.With("volume", vol.Name), started: time.Now(),
		vd: volumeDir{dir: filepath.Join(vol.StateDir, vol.Name)}}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	if p.unlock, err = lockVolume(p.vd, vol.Name); err != nil {
		return nil, err
	}
	if p.t, err = openTarget(vol.Path); err != nil {
		return nil, err
	}
	tsize, err := p.t.size()
	if err != nil {
		return nil, err
	}
	if p.t.block && tsize < h.Size {
		return nil, failf(ErrTooSmall, "block device %s holds %d bytes, the source %d: give the target at least the source's size", vol.Path, tsize, h.Size)
	}
	exts, err := p.prepare(ctx, tsize, h)
	if err != nil {
		return nil, err
	}
	// Grow a file target now; shrink it only after the copies, which may
	// read past the new end.
	idx := newIndex(exts)
	if !p.t.block && tsize < h.Size {
		if err := p.t.resize(h.Size); err != nil {
			return nil, err
		}
		idx = newIndex(withZeroTail(idx.live(), tsize, h.Size))
	}
	if p.j, err = p.vd.createJournal(); err != nil {
		return nil, err
	}
	p.a = &applier{log: p.log, opt: &p.opt, t: p.t, idx: idx, j: p.j, params: h.Params, size: h.Size}
	p.events = make(chan event, 16)
	return p, nil
}

// lockVolume claims a volume in this process and, through flock(2) on its
// lock file, against other processes sharing the state directory.
func lockVolume(vd volumeDir, name string) (func(), error) {
	key, _ := filepath.Abs(vd.dir)
	busy.Lock()
	if busy.m[key] {
		busy.Unlock()
		return nil, failf(ErrBusy, "volume %q is being synced by another session", name)
	}
	busy.m[key] = true
	busy.Unlock()
	unbusy := func() { busy.Lock(); delete(busy.m, key); busy.Unlock() }
	if err := os.MkdirAll(vd.dir, 0o755); err != nil {
		unbusy()
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	f, err := os.OpenFile(vd.path("lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		unbusy()
		return nil, fmt.Errorf("open lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		unbusy()
		return nil, failf(ErrBusy, "volume %q is locked by another process (%s)", name, vd.path("lock"))
	}
	return func() { f.Close(); unbusy() }, nil
}

// prepare loads or rebuilds the index of the target and saves the state
// as applying.
func (p *Apply) prepare(ctx context.Context, tsize uint64, h Header) ([]chunk.Entry, error) {
	st, err := p.vd.loadState()
	switch {
	case errors.Is(err, ErrNoState):
		st = &State{Volume: p.vol.Name}
	case err != nil:
		p.log.Warn("state unreadable; rescanning the target", "err", err)
		st = &State{Volume: p.vol.Name}
	}
	p.st = st
	p.prev = Previous{Generation: st.Generation, Incomplete: st.Phase == PhaseApplying}
	p.prev.Root, _ = chunk.ParseID(st.Root)

	exts, how, err := loadIndex(ctx, p.log, p.vd, p.t, tsize, st, h.Params, p.vol.Path)
	if err != nil {
		return nil, err
	}
	if exts == nil {
		// Index all of a file (data past the new end may still be copied),
		// the source's size of a device.
		scanSize := tsize
		if p.t.block {
			scanSize = min(tsize, h.Size)
		}
		if scanSize == 0 {
			how = "empty target"
		} else {
			p.log.Info("indexing the target by reading it", "reason", how, "bytes", scanSize)
			start := time.Now()
			m, _, err := chunk.ScanManifest(ctx, p.t, scanSize, h.Params, chunk.ScanOptions{Workers: p.opt.Workers})
			if err != nil {
				return nil, fmt.Errorf("scan target %s: %w", p.vol.Path, err)
			}
			exts = m.Entries
			how = fmt.Sprintf("rescanned (%s) in %s", how, elapsed(start))
		}
	}
	name, err := p.vd.writeExtents(h.Params, exts)
	if err != nil {
		return nil, err
	}
	st.Target = p.vol.Path
	st.Params = h.Params
	st.Extents = name
	st.Phase = PhaseApplying
	st.Applying = &Applying{Size: h.Size, StartedAt: time.Now().UTC(), Peer: h.Peer}
	if err := p.vd.saveState(st); err != nil {
		return nil, err
	}
	p.log.Info("apply started", "size", h.Size, "previous_generation", p.prev.Generation, "resuming", p.prev.Incomplete,
		"index", how, "known_extents", len(exts))
	return exts, nil
}

// Previous returns what the target held when the apply began.
func (p *Apply) Previous() Previous { return p.prev }

func (p *Apply) push(ctx context.Context, ev event) error {
	select {
	case p.events <- ev:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// AddManifest hands Run the next entries of the sender's manifest; the
// slice is kept.
func (p *Apply) AddManifest(ctx context.Context, entries []chunk.Entry) error {
	if len(entries) == 0 {
		return nil
	}
	return p.push(ctx, event{batch: entries})
}

// EndManifest says the manifest is complete, with the sender's count and root.
func (p *Apply) EndManifest(ctx context.Context, count uint64, root chunk.ID) error {
	return p.push(ctx, event{end: &manifestEnd{count: count, root: root}})
}

// Fail ends Run with err (the sender failed).
func (p *Apply) Fail(ctx context.Context, err error) {
	_ = p.push(ctx, event{err: err})
}

// Entry returns manifest entry i, once AddManifest handed it to Run.
func (p *Apply) Entry(i uint64) (chunk.Entry, bool) { return p.a.entry(i) }

// Deliver hands Run the bytes of the chunk at manifest index i, which Run
// asked for. It checks them against the entry (ErrBadInput,
// ErrSourceChanged) and copies them; it may be called from many
// goroutines.
func (p *Apply) Deliver(ctx context.Context, i uint64, data []byte) error {
	e, ok := p.a.entry(i)
	if !ok || e.Zero {
		return failf(ErrBadInput, "chunk %d is not a data entry of the manifest", i)
	}
	if uint64(len(data)) != e.Length {
		return failf(ErrBadInput, "chunk %d is %d bytes, the manifest says %d", i, len(data), e.Length)
	}
	buf := chunk.GetBuffer(len(data))
	copy(*buf, data)
	return p.deliver(ctx, i, e, buf)
}

// deliver verifies buf (which holds entry e's bytes) and hands it to Run,
// which then owns it.
func (p *Apply) deliver(ctx context.Context, i uint64, e chunk.Entry, buf *[]byte) error {
	if chunk.Sum(*buf) != e.ID {
		chunk.PutBuffer(buf)
		return failf(ErrSourceChanged, "chunk %d at offset %d does not hash to %s: the source changed while it was read (sync from a snapshot)", i, e.Offset, e.ID.Short())
	}
	if err := p.push(ctx, event{chunk: &arrived{i: int(i), buf: buf}}); err != nil {
		chunk.PutBuffer(buf)
		return err
	}
	return nil
}

// Run plans and writes until every chunk of the manifest is in place, asking
// req for what the target lacks. It ends early with ctx (cancel with
// ErrInterrupted as the cause when the sender went away) or the first
// error; the progress stays journaled either way.
func (p *Apply) Run(ctx context.Context, req Requester) error {
	if p.ran {
		return errors.New("apply already ran")
	}
	p.ran = true
	p.a.req = req
	if err := p.a.run(ctx, p.events); err != nil {
		// Keep what arrived: write the staged chunks, make them durable and
		// record them, so the next apply does not fetch them again.
		if ferr := p.a.flushStaged(); ferr != nil {
			p.log.Warn("write staged chunks after failure", "err", ferr)
		}
		if cerr := p.a.checkpoint(); cerr != nil {
			p.log.Warn("checkpoint after failure", "err", cerr)
		}
		return err
	}
	return nil
}

// Commit makes the applied generation durable and current: shrink a file
// target, fsync it, verify it against the manifest's root, then write the
// new extents and state. Call it after Run returned nil.
func (p *Apply) Commit(ctx context.Context) (Result, error) {
	a := p.a
	if !p.ran || !a.endSeen || !a.planned || a.pending != 0 {
		return Result{}, errors.New("commit before the apply completed")
	}
	if err := p.t.resize(a.size); err != nil {
		return Result{}, err
	}
	if err := p.t.sync(); err != nil {
		return Result{}, err
	}
	root, _ := a.builder.Finish()
	start := time.Now()
	switch p.opt.Verify {
	case VerifyFull:
		m, _, err := chunk.ScanManifest(ctx, p.t, a.size, a.params, chunk.ScanOptions{Workers: p.opt.Workers})
		if err != nil {
			return Result{}, fmt.Errorf("verify: scan target: %w", err)
		}
		if m.Root != root {
			return Result{}, failf(ErrVerify, "target %s hashes to %s after the apply, the sender's root is %s", p.vol.Path, m.Root.Short(), root.Short())
		}
	default:
		if err := a.verifyWritten(ctx); err != nil {
			return Result{}, failf(ErrVerify, "target %s after the apply: %w", p.vol.Path, err)
		}
	}
	p.log.Debug("verified", "mode", p.opt.Verify, "took", elapsed(start))
	name, err := p.vd.writeExtents(a.params, a.entries)
	if err != nil {
		return Result{}, err
	}
	fp, err := p.t.fingerprint()
	if err != nil {
		return Result{}, err
	}
	st := p.st
	now := time.Now().UTC()
	st.Phase = PhaseCommitted
	st.Generation++
	st.Root = root.String()
	st.Size = a.size
	st.CommittedAt = now
	st.Extents = name
	st.Fingerprint = fp
	st.Applying = nil
	st.History = append(st.History, Committed{Generation: st.Generation, Root: st.Root, Size: st.Size, At: now})
	if len(st.History) > historyLen {
		st.History = st.History[len(st.History)-historyLen:]
	}
	if err := p.vd.saveState(st); err != nil { // the commit point
		return Result{}, err
	}
	p.committed = true
	p.vd.removeStaleExtents(name)
	os.Remove(p.vd.path(journalName))
	a.result.Generation = st.Generation
	a.result.Root = root
	r := a.result
	p.log.Info("generation committed", "generation", r.Generation, "root", r.Root.Short(), "skipped", r.Skipped, "copied", r.Copied,
		"fetched", r.Fetched, "zeroed", r.Zeroed, "fetched_bytes", r.FetchBytes, "duration", elapsed(p.started))
	return r, nil
}

// Close releases the volume. Without a commit the target stays incomplete.
func (p *Apply) Close() error {
	var err error
	if p.j != nil {
		err = p.j.close()
		p.j = nil
	}
	if p.t != nil {
		if cerr := p.t.Close(); err == nil {
			err = cerr
		}
		p.t = nil
	}
	if p.unlock != nil {
		p.unlock()
		p.unlock = nil
	}
	return err
}
