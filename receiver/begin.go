package receiver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
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
	// Idle, if set, ends Run with ErrInterrupted when no chunk arrives
	// from the sender for that long after the manifest was complete, so a
	// sender that goes quiet does not hold the volume. (The network server
	// bounds the wait for manifest frames itself.)
	Idle time.Duration
	// Logger; nil logs nothing.
	Logger *slog.Logger
	// Progress, if set, is called as the apply advances: when it asks for
	// chunks and as fetched or copied chunks are written. It is called
	// from the apply's own goroutine, one call at a time; keep it cheap
	// (it blocks the apply).
	Progress func(ApplyProgress)
}

// ApplyProgress is how far an apply got. NeedBytes grows while the
// manifest arrives (the plan is complete when Planned is true); the apply
// has written everything it will write once FetchedBytes reaches
// NeedBytes after Planned.
type ApplyProgress struct {
	// SourceBytes is the size of the generation being applied.
	SourceBytes uint64
	// NeedBytes is the size of the chunks asked for from the sender (or
	// the store) so far; FetchedBytes of those are written.
	NeedBytes    uint64
	FetchedBytes uint64
	// CopiedBytes were copied within the target instead of fetched.
	CopiedBytes uint64
	// Planned: the manifest is complete and every fetch was asked for.
	Planned bool
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
	if o.Idle < 0 {
		return fmt.Errorf("idle timeout %v: want >= 0", o.Idle)
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
	// Image identifies the image the sender reads (transport.Hello.Image);
	// it is recorded with the generation the round commits.
	Image string
	// Group, if set, is the group the round belongs to
	// (transport.Hello.Group); it is recorded with the generation the
	// round commits (a round without one clears it).
	Group *Group
}

// Group is the group of volumes a round belongs to: rounds of the same
// Name on Members volumes, the last of each with Promote, make a group
// commit that Kubernetes mode promotes (see package k8sreceiver).
type Group struct {
	Name    string `json:"name"`
	Members int    `json:"members"`
	Promote bool   `json:"promote,omitempty"`
}

// Previous is what the target held when the apply began.
type Previous struct {
	Generation uint64   // last committed generation, 0 if none
	Root       chunk.ID // its root hash
	Size       uint64   // its volume size
	Image      string   // the image identity its round named ("" if none)
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
	hdr       Header
	base      *chunk.Manifest // the committed manifest if the index is exactly it (Base); it shares the index's entries
	a         *applier
	events    chan event
	unlock    func()
	j         *journal
	started   time.Time
	committed bool
	ran       bool
	patched   atomic.Uint64 // chunks rebuilt from CHUNK_PATCH
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
	p := &Apply{vol: vol, opt: opt, log: opt.Logger.With("volume", vol.Name), started: time.Now(), hdr: h,
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
	if err := claimTarget(vol.StateDir, vol.Name, p.t); err != nil {
		return nil, err
	}
	k, err := p.prepare(ctx, tsize, h)
	if err != nil {
		return nil, err
	}
	// A file target grows only once the manifest was accepted (the applier
	// does it when the manifest's root checked out); until then the index
	// already knows the new tail as zeros. It shrinks after the copies,
	// which may read past the new end.
	idx := newIndex(k.exts)
	if !p.t.block && tsize < h.Size {
		idx = newIndex(withZeroTail(idx.live(), tsize, h.Size))
	}
	if k.committed {
		// The index starts with the loaded extents (a zero tail, if any,
		// comes after them), and nothing changes its entries: the base
		// shares them rather than holding a second copy.
		p.base = committedBase(idx.exts[:len(k.exts)], h.Params, p.st.Size, p.prev.Root)
		if p.base == nil {
			p.log.Warn("the committed extents do not rebuild the committed root; no base manifest is offered", "generation", p.prev.Generation)
		}
	}
	readBack := k.readBack || p.opt.Verify == VerifyFull
	p.a = &applier{log: p.log, opt: &p.opt, t: p.t, idx: idx, j: p.j, params: h.Params, size: h.Size, oldSize: tsize, readBack: readBack}
	p.events = make(chan event, 16)
	return p, nil
}

// committedBase returns the committed manifest if exts are exactly it:
// well formed for params and size, with root as their root. Otherwise nil.
func committedBase(exts []chunk.Entry, params chunk.Params, size uint64, root chunk.ID) *chunk.Manifest {
	b := chunk.NewBuilder(params, size)
	for _, e := range exts {
		if b.Add(e) != nil {
			return nil
		}
	}
	if got, err := b.Finish(); err != nil || got != root || root == (chunk.ID{}) {
		return nil
	}
	return &chunk.Manifest{Params: params, Size: size, Entries: exts, Root: root}
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

// prepare loads or rebuilds the index of the target, opens a new journal
// and saves the state as applying. A state file that does not check out
// ends the round (ErrStateCorrupt): the receiver never restarts a
// volume's generations on its own.
func (p *Apply) prepare(ctx context.Context, tsize uint64, h Header) (known, error) {
	st, err := p.vd.loadState()
	fresh := errors.Is(err, ErrNoState)
	switch {
	case fresh:
		// A first round records that it started before it writes anything
		// else: a crash after this leaves a state that says "applying,
		// nothing known" (the next round rescans), never an index without
		// a state, which reads as a lost state.
		st = &State{Volume: p.vol.Name, Target: p.vol.Path, Phase: PhaseApplying,
			Applying: &Applying{Size: h.Size, StartedAt: time.Now().UTC(), Peer: h.Peer}}
		if err := p.vd.saveState(st); err != nil {
			return known{}, err
		}
	case err != nil:
		return known{}, err
	}
	p.st = st
	resuming := !fresh && st.Phase == PhaseApplying
	p.prev = Previous{Generation: st.Generation, Size: st.Size, Image: st.Image, Incomplete: resuming}
	p.prev.Root, _ = chunk.ParseID(st.Root)

	k, err := loadIndex(ctx, p.log, p.vd, p.t, tsize, st, h.Params, p.vol.Path)
	if err != nil {
		return known{}, err
	}
	if k.exts == nil {
		if k.exts, k.how, err = p.rescan(ctx, tsize, h, k.how); err != nil {
			return known{}, err
		}
	}
	name, err := p.vd.writeExtents(h.Params, k.exts)
	if err != nil {
		return known{}, err
	}
	// The journal and the state must name each other. Coming from a
	// commit, the new journal is made first: a crash before the state is
	// saved leaves a stray journal the committed state ignores. Resuming,
	// the old journal is needed until the state records what it recovered,
	// so the state goes first: a crash between leaves a nonce mismatch,
	// which makes the next round rescan.
	nonce := rand.Uint64()
	if !resuming {
		if p.j, err = p.vd.createJournalWith(nonce); err != nil {
			return known{}, err
		}
	}
	st.Target = p.vol.Path
	st.Params = h.Params
	st.Extents = name
	st.Rescan = ""
	st.Phase = PhaseApplying
	st.Applying = &Applying{Size: h.Size, StartedAt: time.Now().UTC(), Peer: h.Peer, Image: h.Image, Journal: nonce}
	if err := p.vd.saveState(st); err != nil {
		return known{}, err
	}
	if resuming {
		if p.j, err = p.vd.createJournalWith(nonce); err != nil {
			return known{}, err
		}
	}
	p.log.Info("apply started", "size", h.Size, "previous_generation", p.prev.Generation, "resuming", p.prev.Incomplete,
		"index", k.how, "known_extents", len(k.exts), "read_back", k.readBack)
	return k, nil
}

// rescan indexes the target by reading it: all of a file (data past the
// new end may still be copied), the source's size of a device.
func (p *Apply) rescan(ctx context.Context, tsize uint64, h Header, why string) ([]chunk.Entry, string, error) {
	scanSize := tsize
	if p.t.block {
		scanSize = min(tsize, h.Size)
	}
	if scanSize == 0 {
		return []chunk.Entry{}, "empty target", nil
	}
	p.log.Info("indexing the target by reading it", "reason", why, "bytes", scanSize)
	start := time.Now()
	m, _, err := chunk.ScanManifest(ctx, p.t, scanSize, h.Params, chunk.ScanOptions{Workers: p.opt.Workers})
	if err != nil {
		return nil, "", fmt.Errorf("scan target %s: %w", p.vol.Path, err)
	}
	return m.Entries, fmt.Sprintf("rescanned (%s) in %s", why, elapsed(start)), nil
}

// Previous returns what the target held when the apply began.
func (p *Apply) Previous() Previous { return p.prev }

// Base returns the committed generation's manifest if this round holds it
// exactly, nil otherwise: the round's index is the committed manifest (no
// rescan pending or needed, not an interrupted apply, the same chunk
// parameters as the header's), and a root computed over it is the
// committed root. Its entries are shared with the index: do not modify
// them. With a base, a sender may send its manifest as a delta against it
// (AddBase).
func (p *Apply) Base() *chunk.Manifest { return p.base }

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

// AddBase hands Run the base's entries first..first+count-1 as the next
// entries of the manifest (MANIFEST_COPY). It fails with ErrBadInput
// without a base or out of its range; whether they fit where the manifest
// stands is checked as for any entry, and the root at EndManifest decides.
func (p *Apply) AddBase(ctx context.Context, first, count uint64) error {
	if err := p.checkBase(first, count); err != nil {
		return err
	}
	const batch = 4096
	for k := first; k < first+count; k += batch {
		es := p.base.Entries[k:min(k+batch, first+count)]
		if err := p.push(ctx, event{batch: es, copied: true}); err != nil {
			return err
		}
	}
	return nil
}

// checkBase says whether the base holds entries first..first+count-1.
func (p *Apply) checkBase(first, count uint64) error {
	if p.base == nil {
		return failf(ErrBadInput, "MANIFEST_COPY, but this receiver holds no base manifest for the round (WELCOME said so): send the manifest's entries")
	}
	n := uint64(len(p.base.Entries))
	if first >= n || count > n-first {
		return failf(ErrBadInput, "MANIFEST_COPY of %d entries from entry %d, but the committed manifest has %d entries", count, first, n)
	}
	return nil
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

// readTarget reads the target's bytes at off into b, as zeros past its end.
// Only entry's own chunk writes its range, so before it is written the
// range holds what it held before the round.
func (p *Apply) readTarget(b []byte, off uint64) error {
	n, err := p.t.ReadAt(b, int64(off))
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read target %s at %d for a chunk patch: %w", p.vol.Path, off, err)
	}
	clear(b[n:])
	return nil
}

// deliverPatch is deliver for a chunk rebuilt from a patch: a mismatch
// means the target's bytes under the patch were not the committed
// generation's.
func (p *Apply) deliverPatch(ctx context.Context, i uint64, e chunk.Entry, buf *[]byte, ranges []transport.PatchRange) error {
	if chunk.Sum(*buf) != e.ID {
		chunk.PutBuffer(buf)
		return p.verifyFailed(fmt.Errorf("chunk %d at offset %d rebuilt from a patch over the target's bytes does not hash to %s: the target does not hold the committed generation there", i, e.Offset, e.ID.Short()))
	}
	p.patched.Add(1)
	if err := p.push(ctx, event{chunk: &arrived{i: int(i), buf: buf, patch: ranges}}); err != nil {
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
// target, fsync it, check it is still the file or device the round opened,
// verify it against the manifest, then write the new extents and state.
// Call it after Run returned nil. A failed verification commits nothing
// and records that the index may not be used: the next round re-indexes
// the target by reading it and repairs what is wrong.
func (p *Apply) Commit(ctx context.Context) (Result, error) {
	a := p.a
	if !p.ran || !a.complete() {
		return Result{}, errors.New("commit before the apply completed")
	}
	if err := p.t.resize(a.size); err != nil {
		return Result{}, err
	}
	if err := p.t.sync(); err != nil {
		return Result{}, err
	}
	if err := p.t.stillAt(); err != nil {
		return Result{}, err
	}
	root, _ := a.builder.Finish()
	start := time.Now()
	if err := a.verifyWritten(ctx); err != nil {
		if errors.Is(err, errMismatch) {
			return Result{}, p.verifyFailed(fmt.Errorf("target %s after the apply: %w", p.vol.Path, err))
		}
		return Result{}, fmt.Errorf("verify target %s: %w", p.vol.Path, err)
	}
	p.log.Debug("verified", "mode", p.opt.Verify, "read_back", a.readBack, "took", elapsed(start))
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
	st.Image = p.hdr.Image
	st.Group = p.hdr.Group
	st.CommittedAt = now
	st.Extents = name
	st.Fingerprint = fp
	st.Applying = nil
	st.Rescan = ""
	st.History = append(st.History, Committed{Generation: st.Generation, Root: st.Root, Size: st.Size, Image: st.Image, At: now})
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
	p.log.Info("generation committed", "generation", r.Generation, "root", r.Root.Short(), "skipped", r.Skipped, "copied", r.Copied, "patched", p.patched.Load(),
		"fetched", r.Fetched, "zeroed", r.Zeroed, "fetched_bytes", r.FetchBytes, "repaired", r.Repaired, "read_back_bytes", r.ReadBackBytes,
		"manifest_literal", r.ManifestLiteral, "manifest_copied", r.ManifestCopied,
		"duration", elapsed(p.started))
	return r, nil
}

// verifyFailed records that the target did not verify, so that the next
// round rescans it instead of trusting the index again, and returns the
// ErrVerify error.
func (p *Apply) verifyFailed(cause error) error {
	p.st.Rescan = fmt.Sprintf("the round of %s failed its verification (%v)", time.Now().UTC().Format(time.RFC3339), cause)
	if err := p.vd.saveState(p.st); err != nil {
		p.log.Error("could not record the failed verification", "err", err)
	}
	return failf(ErrVerify, "%v; nothing was committed, and the next round re-indexes the target by reading it and repairs it", cause)
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
