package receiver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sort"
	"sync"
	"time"

	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/transport"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// opKind is what the plan does with one manifest entry.
type opKind uint8

const (
	opSkip     opKind = iota // already in place
	opFetch                  // requested from the agent, not yet written
	opBuffered               // received early, held in memory until the copies are done
	opCopy                   // to be copied from elsewhere in the target
	opZero                   // to be zeroed
	opDone                   // written this session
)

// arrived is a verified chunk from the sender.
type arrived struct {
	i   int
	buf *[]byte
	// patch, if not nil, are the only ranges of the chunk that differ
	// from the target's bytes (CHUNK_PATCH): only they are written.
	patch []transport.PatchRange
}

type manifestEnd struct {
	count uint64
	root  chunk.ID
}

type event struct {
	batch  []chunk.Entry
	copied bool // batch comes from the base manifest (MANIFEST_COPY)
	end    *manifestEnd
	chunk  *arrived
	err    error
}

// Requester is how an apply asks its sender for chunks. Calls come from
// the goroutine running Apply.Run; they must not wait for chunks to be
// delivered (deliveries are only taken in while Run is not inside a call).
type Requester interface {
	// Need asks for the chunks of these manifest entries (indexes in
	// manifest order). Their intents are durable before it is called.
	Need(indexes []int) error
	// NeedEnd says no more Need calls follow; total counts every index
	// asked for in this apply.
	NeedEnd(total uint64) error
}

// Result describes a committed apply.
type Result struct {
	Generation uint64
	Root       chunk.ID
	Skipped    uint64 // entries already in place
	Copied     uint64 // chunks copied from elsewhere in the target
	Fetched    uint64 // chunks received from the sender
	Zeroed     uint64 // zero runs written
	CopyBytes  uint64
	FetchBytes uint64
	// Repaired counts entries the index said were in place that did not
	// read back right, and were written again.
	Repaired uint64
	// ReadBackBytes is what was read to check entries kept in place
	// (resumed rounds, rounds whose target's fingerprint could not vouch
	// for it, and --verify full).
	ReadBackBytes uint64
	// ManifestLiteral counts the manifest's entries the sender sent,
	// ManifestCopied those it named from the committed manifest
	// (MANIFEST_COPY).
	ManifestLiteral uint64
	ManifestCopied  uint64
}

// applyPhase is where an apply's plan stands.
type applyPhase uint8

const (
	// phaseStreaming: the manifest is arriving. Entries are classified as
	// they come; while the target's index holds data, fetched chunks that
	// could overwrite a copy's source are held back.
	phaseStreaming applyPhase = iota
	// phasePlanned: the manifest is complete and its root checked, kept
	// entries were read back where required, copies and zero runs are
	// done: every fetched chunk goes straight to the target. The apply is
	// complete once no fetch is pending.
	phasePlanned
)

// applier runs one apply's plan and writes. Only the goroutine in run
// touches the target, the index and the journal; deliveries are decoded
// and verified by the senders' goroutines and handed over as events.
type applier struct {
	log     *slog.Logger
	opt     *Options
	t       *target
	idx     *index
	j       *journal
	req     Requester
	params  chunk.Params
	size    uint64 // the source's size
	oldSize uint64 // the target's size when the apply began
	// readBack: entries kept in place are read and checked before NEED_END
	// (and fetched if they do not match), because nothing vouches for the
	// index or because --verify full asks for it.
	readBack bool

	mu      sync.RWMutex
	entries []chunk.Entry // the sender's manifest so far; read by deliverers

	phase       applyPhase
	kind        []opKind
	buffered    map[int]*[]byte
	bufBytes    int64
	staged      []*arrived // fetched, waiting for their intents to be journaled
	stagedBytes uint64
	builder     *chunk.Builder
	needQueue   []int
	needTotal   uint64
	needBytes   uint64 // of the chunks asked for (Options.Progress)
	needEnded   bool   // NEED_END sent: every fetch was asked for
	pending     int    // fetches requested and not yet written
	ordered     bool   // the index holds data: writes wait for the copy plan

	sinceCheckpoint []int
	ckptBytes       uint64
	written         []int // every entry written this session, for verification
	result          Result
}

// complete reports whether every entry of the manifest is in place.
func (a *applier) complete() bool { return a.phase == phasePlanned && a.pending == 0 }

// entry returns manifest entry i for a deliverer.
func (a *applier) entry(i uint64) (chunk.Entry, bool) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	if i >= uint64(len(a.entries)) {
		return chunk.Entry{}, false
	}
	return a.entries[i], true
}

const checkpointBytes = 256 << 20

func (a *applier) run(ctx context.Context, events <-chan event) error {
	a.ordered = a.idx.hasData()
	a.builder = chunk.NewBuilder(a.params, a.size)
	a.buffered = make(map[int]*[]byte)
	defer func() {
		for _, b := range a.buffered {
			chunk.PutBuffer(b)
		}
		a.buffered = nil
	}()
	// The idle timer runs only while the loop waits for a chunk after the
	// manifest: it is restarted after each event is handled (a long
	// read-back is not idle).
	var idle <-chan time.Time
	var timer *time.Timer
	if a.opt.Idle > 0 {
		timer = time.NewTimer(a.opt.Idle)
		defer timer.Stop()
		idle = timer.C
	}
	for !a.complete() {
		// While the manifest streams in, the session's own deadline on it
		// applies; the apply's starts once it is complete.
		wait := idle
		if a.phase == phasePlanned && timer != nil {
			timer.Reset(a.opt.Idle)
		} else {
			wait = nil
		}
		var ev event
		select {
		case ev = <-events:
		case <-wait:
			return failf(ErrInterrupted, "nothing from the sender for %s with %d chunks outstanding: giving the volume up (the next round resumes)", a.opt.Idle, a.pending)
		case <-ctx.Done():
			if errors.Is(context.Cause(ctx), ErrInterrupted) {
				return context.Cause(ctx)
			}
			return failf(ErrShutdown, "apply stopped: %w", context.Cause(ctx))
		}
		var err error
		switch {
		case ev.err != nil:
			err = ev.err
		case ev.batch != nil:
			err = a.onBatch(ev.batch, ev.copied)
		case ev.end != nil:
			err = a.onEnd(*ev.end)
		case ev.chunk != nil:
			err = a.onChunk(ev.chunk)
		}
		if err != nil {
			return err
		}
		if len(events) == 0 { // idle: write what is staged
			if err := a.flushStaged(); err != nil {
				return err
			}
		}
	}
	return nil
}

func (a *applier) onBatch(batch []chunk.Entry, copied bool) error {
	if a.phase != phaseStreaming {
		return failf(ErrBadInput, "MANIFEST after MANIFEST_END")
	}
	for _, e := range batch {
		if err := a.builder.Add(e); err != nil {
			if copied {
				return failf(ErrBadInput, "manifest entry %d, copied from the committed manifest (MANIFEST_COPY): %w", a.builder.Count(), err)
			}
			return failf(ErrBadInput, "manifest entry %d: %w", a.builder.Count(), err)
		}
	}
	if copied {
		a.result.ManifestCopied += uint64(len(batch))
	} else {
		a.result.ManifestLiteral += uint64(len(batch))
	}
	a.mu.Lock()
	base := len(a.entries)
	a.entries = append(a.entries, batch...)
	a.mu.Unlock()
	for k, e := range batch {
		i := base + k
		switch {
		case a.idx.inPlace(e):
			a.kind = append(a.kind, opSkip)
			a.result.Skipped++
		case e.Zero:
			a.kind = append(a.kind, opZero)
		case a.ordered && hasSource(a.idx, e):
			a.kind = append(a.kind, opCopy)
		default:
			a.kind = append(a.kind, opFetch)
			a.needQueue = append(a.needQueue, i)
		}
	}
	return a.sendNeeds()
}

func hasSource(x *index, e chunk.Entry) bool { _, ok := x.source(e); return ok }

// sendNeeds asks the sender for every queued fetch.
func (a *applier) sendNeeds() error {
	if len(a.needQueue) == 0 {
		return nil
	}
	if err := a.req.Need(a.needQueue); err != nil {
		return err
	}
	a.pending += len(a.needQueue)
	a.needTotal += uint64(len(a.needQueue))
	for _, i := range a.needQueue {
		a.needBytes += a.entries[i].Length
	}
	a.needQueue = a.needQueue[:0]
	a.progress()
	return nil
}

// progress reports the apply's figures to Options.Progress.
func (a *applier) progress() {
	if a.opt.Progress == nil {
		return
	}
	a.opt.Progress(ApplyProgress{SourceBytes: a.size, NeedBytes: a.needBytes, FetchedBytes: a.result.FetchBytes,
		CopiedBytes: a.result.CopyBytes, Planned: a.needEnded})
}

func (a *applier) onChunk(c *arrived) error {
	if c.i >= len(a.kind) || a.kind[c.i] != opFetch {
		chunk.PutBuffer(c.buf)
		return failf(ErrBadInput, "chunk %d was not asked for (or sent twice)", c.i)
	}
	e := a.entries[c.i]
	if a.ordered && a.phase == phaseStreaming && a.bufBytes+int64(e.Length) <= a.opt.ApplyBuffer {
		// Hold it: writing now could overwrite a region a later copy reads.
		a.kind[c.i] = opBuffered
		a.buffered[c.i] = c.buf
		a.bufBytes += int64(e.Length)
		return nil
	}
	a.staged = append(a.staged, c)
	a.stagedBytes += e.Length
	if a.stagedBytes >= stageBytes {
		return a.flushStaged()
	}
	return nil
}

// stageBytes is how much fetched data is collected before its intents are
// journaled (one fsync) and it is written.
const stageBytes = 8 << 20

// flushStaged journals intents for the staged chunks, then writes them.
// Intents are durable before any byte of their range changes, so a crash
// leaves the journal naming every range that may hold new data.
func (a *applier) flushStaged() error {
	if len(a.staged) == 0 {
		return nil
	}
	for _, c := range a.staged {
		a.j.add(recIntent, a.entries[c.i])
	}
	if err := a.j.flush(); err != nil {
		return err
	}
	staged := a.staged
	a.staged, a.stagedBytes = nil, 0
	for k, c := range staged {
		err := a.writeFetched(c.i, *c.buf, c.patch)
		chunk.PutBuffer(c.buf)
		if err != nil {
			for _, rest := range staged[k+1:] {
				chunk.PutBuffer(rest.buf)
			}
			return err
		}
	}
	return nil
}

// writeFetched writes a fetched chunk in place. Before the copy plan ran,
// that forgets what the index knew about the region, so a copy that would
// have read it is fetched instead.
func (a *applier) writeFetched(i int, data []byte, patch []transport.PatchRange) error {
	e := a.entries[i]
	if patch == nil {
		if _, err := a.t.WriteAt(data, int64(e.Offset)); err != nil {
			return fmt.Errorf("apply chunk %s at %d: %w", e.ID.Short(), e.Offset, err)
		}
	}
	for _, r := range patch { // the rest of the chunk is on the target already
		if _, err := a.t.WriteAt(data[r.Offset:r.Offset+r.Length], int64(e.Offset)+int64(r.Offset)); err != nil {
			return fmt.Errorf("apply chunk %s at %d: %w", e.ID.Short(), e.Offset+uint64(r.Offset), err)
		}
	}
	a.idx.clobber(e.Offset, e.Length)
	a.pending--
	a.result.Fetched++
	a.result.FetchBytes += e.Length
	a.progress()
	return a.markWritten(i)
}

func (a *applier) markWritten(i int) error {
	a.kind[i] = opDone
	a.written = append(a.written, i)
	a.sinceCheckpoint = append(a.sinceCheckpoint, i)
	a.ckptBytes += a.entries[i].Length
	if a.ckptBytes >= checkpointBytes {
		return a.checkpoint()
	}
	return nil
}

// checkpoint makes the writes since the last one durable and records them
// as done, so an interrupted apply need not re-read them.
func (a *applier) checkpoint() error {
	if len(a.sinceCheckpoint) == 0 {
		return nil
	}
	if err := a.t.sync(); err != nil {
		return err
	}
	for _, i := range a.sinceCheckpoint {
		a.j.add(recDone, a.entries[i])
	}
	if err := a.j.flush(); err != nil {
		return err
	}
	a.sinceCheckpoint = a.sinceCheckpoint[:0]
	a.ckptBytes = 0
	return nil
}

func (a *applier) onEnd(end manifestEnd) error {
	if a.phase != phaseStreaming {
		return failf(ErrBadInput, "second MANIFEST_END")
	}
	root, err := a.builder.Finish()
	if err != nil {
		return failf(ErrBadInput, "manifest: %w", err)
	}
	if end.count != a.builder.Count() || end.root != root {
		return failf(ErrBadInput, "manifest damaged in transit: %d entries with root %s, agent says %d with root %s",
			a.builder.Count(), root.Short(), end.count, end.root.Short())
	}
	if err := a.grow(); err != nil {
		return err
	}
	return a.plan()
}

// grow extends a file target to the source's size, now that the manifest
// was accepted: a HELLO alone never grows a target.
func (a *applier) grow() error {
	if a.t.block {
		return nil
	}
	cur, err := a.t.size()
	if err != nil {
		return err
	}
	if cur < a.size {
		return a.t.resize(a.size)
	}
	return nil
}

type copyOp struct {
	i        int
	src, dst uint64
	n        uint64
	id       chunk.ID
	data     *[]byte // preloaded source bytes, when a cycle was broken
	out      []int   // ops that overwrite this op's source
	indeg    int
	gone     bool // executed or turned into a fetch
}

// plan runs once the whole manifest is known: it journals every write
// still to come, performs the local copies in an order that never
// overwrites a source before it was read, writes what was held back, and
// asks for what could not be copied.
func (a *applier) plan() error {
	// Early fetches land first: the copy sources are chosen among what they left intact.
	if err := a.flushStaged(); err != nil {
		return err
	}
	if a.readBack {
		if err := a.readBackKept(); err != nil {
			return err
		}
	}
	var ops []*copyOp
	for i, k := range a.kind {
		if k != opCopy {
			continue
		}
		e := a.entries[i]
		if src, ok := a.idx.source(e); ok {
			ops = append(ops, &copyOp{i: i, src: src, dst: e.Offset, n: e.Length, id: e.ID})
		} else { // its source was overwritten by an early fetch
			a.kind[i] = opFetch
			a.needQueue = append(a.needQueue, i)
		}
	}
	for i, k := range a.kind {
		if k == opCopy || k == opZero || k == opBuffered {
			a.j.add(recIntent, a.entries[i])
		}
	}
	if err := a.j.flush(); err != nil {
		return err
	}
	if err := a.reserve(); err != nil {
		return err
	}
	if err := a.runCopies(ops); err != nil {
		return err
	}
	a.phase = phasePlanned
	// Held-back chunks, in offset order, then zero runs.
	held := make([]int, 0, len(a.buffered))
	for i := range a.buffered {
		held = append(held, i)
	}
	sort.Ints(held)
	for _, i := range held {
		buf := a.buffered[i]
		delete(a.buffered, i)
		a.bufBytes -= int64(len(*buf))
		err := a.writeFetched(i, *buf, nil)
		chunk.PutBuffer(buf)
		if err != nil {
			return err
		}
	}
	for i, k := range a.kind {
		if k != opZero {
			continue
		}
		e := a.entries[i]
		if err := a.t.zero(e.Offset, e.Length); err != nil {
			return err
		}
		a.result.Zeroed++
		if err := a.markWritten(i); err != nil {
			return err
		}
	}
	if err := a.sendNeeds(); err != nil {
		return err
	}
	if err := a.req.NeedEnd(a.needTotal); err != nil {
		return err
	}
	a.needEnded = true
	a.progress()
	return nil
}

// readBackKept reads every entry the plan keeps in place and checks it;
// one that does not match is forgotten by the index and written again
// (fetched, or zeroed). It runs before NEED_END, so a wrong index is
// repaired within the round instead of failing its verification.
func (a *applier) readBackKept() error {
	var kept []int
	for i, k := range a.kind {
		if k == opSkip {
			kept = append(kept, i)
		}
	}
	start := time.Now()
	var mu sync.Mutex
	var bad []int
	var g errgroup.Group
	g.SetLimit(max(1, a.opt.Workers))
	for _, i := range kept {
		e := a.entries[i]
		g.Go(func() error {
			err := verifyEntry(a.t, e)
			if errors.Is(err, errMismatch) {
				mu.Lock()
				bad = append(bad, i)
				mu.Unlock()
				return nil
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("read back the target: %w", err)
	}
	sort.Ints(bad)
	for _, i := range bad {
		e := a.entries[i]
		a.idx.clobber(e.Offset, e.Length)
		a.result.Skipped--
		a.result.Repaired++
		if e.Zero {
			a.kind[i] = opZero
		} else {
			a.kind[i] = opFetch
			a.needQueue = append(a.needQueue, i)
		}
	}
	for _, i := range kept {
		a.result.ReadBackBytes += a.entries[i].Length
	}
	if len(bad) > 0 {
		a.log.Warn("entries kept in place did not read back right; writing them again", "entries", len(bad), "checked", len(kept))
	}
	a.log.Debug("read back kept entries", "entries", len(kept), "bytes", a.result.ReadBackBytes, "took", elapsed(start))
	return nil
}

// reserve allocates the file blocks of every range still to be written,
// so that a full filesystem fails the round here (ErrTargetFull), before
// the copies, rather than half way through its writes.
func (a *applier) reserve() error {
	var off, n uint64
	for i, k := range a.kind {
		if k != opCopy && k != opFetch && k != opBuffered {
			continue
		}
		e := a.entries[i]
		if n > 0 && off+n == e.Offset {
			n += e.Length
			continue
		}
		if err := a.t.reserve(off, n); err != nil {
			return err
		}
		off, n = e.Offset, e.Length
	}
	return a.t.reserve(off, n)
}

// runCopies performs ops in dependency order (Kahn's algorithm): an op
// that writes over another op's source waits until that source was read.
// A cycle is broken by reading one source into memory (within the apply
// buffer) or, past the buffer, by fetching that chunk instead.
func (a *applier) runCopies(ops []*copyOp) error {
	if len(ops) == 0 {
		return nil
	}
	// ops are in destination order; destinations do not overlap.
	for _, o := range ops {
		end := o.src + o.n
		k := sort.Search(len(ops), func(k int) bool { return ops[k].dst+ops[k].n > o.src })
		for ; k < len(ops) && ops[k].dst < end; k++ {
			if ops[k] != o {
				o.out = append(o.out, k)
				ops[k].indeg++
			}
		}
	}
	var ready []int
	for k, o := range ops {
		if o.indeg == 0 {
			ready = append(ready, k)
		}
	}
	release := func(o *copyOp) {
		for _, k := range o.out {
			ops[k].indeg--
			if ops[k].indeg == 0 && !ops[k].gone {
				ready = append(ready, k)
			}
		}
		o.out = nil
	}
	var preloaded int64
	left := len(ops)
	next := 0 // scan position for cycle breaking
	for left > 0 {
		if len(ready) == 0 {
			for next < len(ops) && (ops[next].gone || ops[next].data != nil) {
				next++
			}
			if next == len(ops) {
				return fmt.Errorf("copy plan stuck with %d ops left", left) // cannot happen: every cycle has an op left to preload
			}
			o := ops[next]
			if preloaded+int64(o.n) <= a.opt.ApplyBuffer {
				buf, ok, err := a.readSource(o)
				if err != nil {
					return err
				}
				if ok {
					o.data = buf
					preloaded += int64(o.n)
				} else {
					a.copyToFetch(o)
					left--
				}
			} else {
				a.copyToFetch(o)
				left--
			}
			release(o)
			continue
		}
		k := ready[len(ready)-1]
		ready = ready[:len(ready)-1]
		o := ops[k]
		if o.gone {
			continue
		}
		buf := o.data
		if buf == nil {
			var ok bool
			var err error
			if buf, ok, err = a.readSource(o); err != nil {
				return err
			}
			if !ok {
				a.copyToFetch(o)
				left--
				release(o)
				continue
			}
		} else {
			preloaded -= int64(o.n)
		}
		_, err := a.t.WriteAt(*buf, int64(o.dst))
		chunk.PutBuffer(buf)
		if err != nil {
			return fmt.Errorf("copy chunk %s from %d to %d: %w", o.id.Short(), o.src, o.dst, err)
		}
		o.gone = true
		left--
		a.result.Copied++
		a.result.CopyBytes += o.n
		if err := a.markWritten(o.i); err != nil {
			return err
		}
		release(o)
	}
	return nil
}

// readSource reads a copy's source and checks it still hashes to the
// chunk ID; ok is false if it does not (the chunk is then fetched).
func (a *applier) readSource(o *copyOp) (*[]byte, bool, error) {
	buf := chunk.GetBuffer(int(o.n))
	if _, err := a.t.ReadAt(*buf, int64(o.src)); err != nil {
		chunk.PutBuffer(buf)
		return nil, false, fmt.Errorf("read chunk %s at %d for a local copy: %w", o.id.Short(), o.src, err)
	}
	if chunk.Sum(*buf) != o.id {
		chunk.PutBuffer(buf)
		a.log.Warn("local copy source does not match its index entry; fetching instead", "chunk", o.id.Short(), "offset", o.src)
		return nil, false, nil
	}
	return buf, true, nil
}

func (a *applier) copyToFetch(o *copyOp) {
	if o.data != nil {
		chunk.PutBuffer(o.data)
		o.data = nil
	}
	o.gone = true
	a.kind[o.i] = opFetch
	a.needQueue = append(a.needQueue, o.i)
}

// verifyWritten reads back every entry written this session and checks it.
func (a *applier) verifyWritten(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(max(1, a.opt.Workers))
	for _, i := range a.written {
		e := a.entries[i]
		g.Go(func() error {
			if err := ctx.Err(); err != nil {
				return err
			}
			return verifyEntry(a.t, e)
		})
	}
	return g.Wait()
}

var errMismatch = errors.New("target does not hold the expected bytes")

// verifyZeroFile checks that a file reads as zeros over e, reading only
// its data extents (SEEK_DATA/SEEK_HOLE): a hole reads as zeros.
func verifyZeroFile(t *target, e chunk.Entry) error {
	fd := int(t.f.Fd())
	for off := e.Offset; off < e.End(); {
		data, err := unix.Seek(fd, int64(off), unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) || err == nil && uint64(data) >= e.End() {
			return nil // holes up to the end (ENXIO: past the last data)
		}
		if err != nil { // no SEEK_DATA here: read it all
			return verifyRange(t, chunk.Entry{Offset: off, Length: e.End() - off, Zero: true})
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return verifyRange(t, chunk.Entry{Offset: uint64(data), Length: e.End() - uint64(data), Zero: true})
		}
		end := min(uint64(hole), e.End())
		if err := verifyRange(t, chunk.Entry{Offset: uint64(data), Length: end - uint64(data), Zero: true}); err != nil {
			return err
		}
		off = end
	}
	return nil
}

// verifyEntry checks that the target holds e.
func verifyEntry(t *target, e chunk.Entry) error {
	if e.Zero && !t.block {
		return verifyZeroFile(t, e)
	}
	return verifyRange(t, e)
}

// verifyRange reads e's range of the target and checks it.
func verifyRange(t *target, e chunk.Entry) error {
	step := uint64(chunk.MaxChunkSize)
	if !e.Zero {
		step = e.Length
	}
	buf := chunk.GetBuffer(int(min(step, e.Length)))
	defer chunk.PutBuffer(buf)
	for off := e.Offset; off < e.End(); off += step {
		b := (*buf)[:min(step, e.End()-off)]
		if _, err := t.ReadAt(b, int64(off)); err != nil {
			return fmt.Errorf("verify %v: %w", e, err)
		}
		if e.Zero && !chunk.IsZero(b) || !e.Zero && chunk.Sum(b) != e.ID {
			return fmt.Errorf("verify %v: %w", e, errMismatch)
		}
	}
	return nil
}

// defaultWorkers is the parallelism of scans and verification.
func defaultWorkers() int { return runtime.GOMAXPROCS(0) }

// elapsed formats a duration for logs.
func elapsed(since time.Time) string { return time.Since(since).Round(time.Millisecond).String() }
