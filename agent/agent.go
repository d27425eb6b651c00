package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/hint"
	"github.com/voldelta/voldelta/transport"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// Options configure one sync round.
type Options struct {
	// Source is the file or block device to read; it should be a
	// point-in-time snapshot, or not be written during the sync. With
	// Image set it only names the source in logs and stats.
	Source string
	// Image, if set, is read instead of opening Source: e.g. a snapshot
	// assembled from a storage system's snapshot chain.
	Image Image
	// Addr is the receiver's host:port.
	Addr string
	// Volume is the name of the volume on the receiver.
	Volume string
	// Params are the chunking parameters; zero value: chunk.DefaultParams().
	Params chunk.Params
	// Transport configures the session (TLS, streams, bandwidth limit).
	Transport transport.Config
	// Compression is the zstd level for chunks; "" is fastest.
	Compression transport.CompressionLevel
	// ScanWorkers is the number of segments chunked at once; 0: all cores.
	ScanWorkers int
	// Hints, if set, say which extents changed since a base image; the
	// round uses them (an incremental scan from the committed generation's
	// manifest) only when the base is the image the receiver's committed
	// generation was made from and this agent or the receiver holds that
	// manifest, and otherwise scans in full, saying why (Stats.ScanMode,
	// FullScanReason). See package hint.
	Hints hint.Source
	// ImageID identifies the image this round reads (hint.FileIdentity, a
	// snapshot's identity); the receiver records it with the generation so
	// the next round can tell whether its hints' base is that image.
	ImageID string
	// Cache keeps the manifests of committed rounds and each volume's hint
	// policy; nil keeps nothing (a hinted round then fetches the base
	// manifest from the receiver).
	Cache *Cache
	// FullScan is the periodic full-scan policy for hinted rounds;
	// ForceFullScan reads the whole volume this round (and, with hints,
	// checks them against the result).
	FullScan      FullScanPolicy
	ForceFullScan bool
	// Previous and Changed are hints the caller vouches for: Previous the
	// manifest of an earlier image of this volume (Stats.Manifest of its
	// round), Changed every extent that may differ since. Used when Hints
	// is nil. See chunk.ScanOptions.
	Previous *chunk.Manifest
	Changed  []chunk.Extent
	// Progress, if set, is called as the round advances (from several
	// goroutines; keep it cheap).
	Progress func(Progress)
	// Logger; nil logs nothing.
	Logger *slog.Logger
	// Name identifies this agent in the receiver's logs; default host name.
	Name string
	// Group, if set, makes the round a member of a group committed
	// together (HELLO's group trailer, transport/spec.md): the receiver
	// records it with the generation and, in Kubernetes mode, promotes the
	// group's targets when every member committed a Promote round. A
	// receiver that cannot promote refuses Promote (ERROR 16); a promoted
	// target refuses every round until re-armed (ERROR 15).
	Group *transport.Group
	// OnWelcome, if set, is called once the receiver accepted the round
	// (WELCOME) with the number of rounds it runs at once on the round's
	// session: 1 unless the round asked to share it (SyncOn with a Group)
	// and the receiver allows more (WELCOME's rounds trailer).
	OnWelcome func(rounds int)
}

// Progress is a snapshot of a running round.
type Progress struct {
	SourceBytes  uint64
	ScannedBytes uint64
	NeedBytes    uint64 // bytes of the chunks the receiver asked for so far
	SentBytes    uint64 // of those, bytes sent
	ScanDone     bool
}

// Image is a point-in-time volume image.
type Image interface {
	io.ReaderAt
	// Size is the image's size in bytes.
	Size() uint64
}

// Stats describe a finished round. The JSON names are a stable contract
// (`voldelta send --stats-json`).
type Stats struct {
	Volume           string `json:"volume"`
	Source           string `json:"source"`
	Receiver         string `json:"receiver"`
	SourceBytes      uint64 `json:"source_bytes"`
	ChunksTotal      uint64 `json:"chunks_total"`
	ChunksData       uint64 `json:"chunks_data"`
	ChunksZero       uint64 `json:"chunks_zero"`
	ManifestEntries  uint64 `json:"manifest_entries"`
	ChunksSent       uint64 `json:"chunks_sent"`
	BytesSentRaw     uint64 `json:"bytes_sent_raw"`
	BytesSentPayload uint64 `json:"bytes_sent_payload"`
	ChunksCompressed uint64 `json:"chunks_compressed"`
	ManifestBytes    uint64 `json:"manifest_bytes"`
	// WireBytes and WireBytesReceived are what crossed the TCP connection,
	// TLS records and yamux headers included, for a round on a session of
	// its own (Sync). A round on a shared session (SyncOn) counts its own
	// streams only: the bytes of the frames it sent and read, their
	// voldelta headers included, yamux's and TLS's framing not (the
	// session's whole traffic is Session.WireBytesWritten).
	WireBytes         int64   `json:"wire_bytes"`
	WireBytesReceived int64   `json:"wire_bytes_received"`
	ChunksSkipped     uint64  `json:"chunks_skipped"`
	ChunksCopied      uint64  `json:"chunks_copied"`
	ChunksZeroed      uint64  `json:"chunks_zeroed"`
	BytesCopied       uint64  `json:"bytes_copied"`
	TargetState       string  `json:"target_state"`
	PreviousGen       uint64  `json:"previous_generation"`
	ScanSeconds       float64 `json:"scan_seconds"`
	DurationSeconds   float64 `json:"duration_seconds"`
	RootHash          string  `json:"root_hash"`
	Generation        uint64  `json:"generation"`
	Params            string  `json:"params"`
	ReusedBytes       uint64  `json:"reused_bytes"`
	// How the volume was scanned: ScanMode "incremental" (only what the
	// hints name was read) or "full", FullScanReason why full, HintSource
	// the hint source's name, ChangedBytes what it named, BytesRead what
	// was read of the source, HintCheck "match" or "mismatch" when a
	// periodic full scan was compared with the hints.
	ScanMode       string `json:"scan_mode"`
	FullScanReason string `json:"full_scan_reason,omitempty"`
	HintSource     string `json:"hint_source,omitempty"`
	ChangedBytes   uint64 `json:"changed_bytes"`
	BytesRead      uint64 `json:"bytes_read"`
	HintCheck      string `json:"hint_check,omitempty"`
	// The manifest on the wire: entries sent in full, entries sent as
	// copies of the receiver's committed manifest, and whether that
	// manifest was fetched from the receiver (BaseBytes on the wire).
	// ChunksPatched counts the chunks sent as only their changed ranges
	// (the receiver rebuilt them over its target's bytes); BytesSentRaw
	// counts what was sent of them.
	ChunksPatched         uint64 `json:"chunks_patched"`
	ManifestEntriesSent   uint64 `json:"manifest_entries_sent"`
	ManifestEntriesCopied uint64 `json:"manifest_entries_copied"`
	BaseFetched           bool   `json:"base_fetched"`
	// Manifest is the manifest the receiver committed; pass it as
	// Options.Previous to the next round together with changed extents.
	Manifest *chunk.Manifest `json:"-"`
}

// ErrRootMismatch is returned when the receiver committed a root other than
// the agent's: the target does not hold the source.
var ErrRootMismatch = errors.New("receiver committed a different root hash")

// ErrSourceRead is wrapped by a round that failed because the source could
// not be read (it shrank, or a read failed): the connection is not to blame.
var ErrSourceRead = errors.New("source read failed")

// OpenSource opens a file or block device for reading and returns its size.
func OpenSource(path string) (*os.File, uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, fmt.Errorf("open source: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("stat source: %w", err)
	}
	switch {
	case fi.Mode().IsRegular():
		return f, uint64(fi.Size()), nil
	case fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0:
		n, err := f.Seek(0, io.SeekEnd)
		if err != nil {
			f.Close()
			return nil, 0, fmt.Errorf("size of source device %s: %w", path, err)
		}
		return f, uint64(n), nil
	}
	f.Close()
	return nil, 0, fmt.Errorf("source %s is neither a regular file nor a block device", path)
}

// Sync runs one round: it chunks the source, streams the manifest to the
// receiver, sends the chunks the receiver asks for and returns once the
// receiver committed a generation whose root equals the source's. It dials
// a session of its own and closes it.
func Sync(ctx context.Context, opt Options) (*Stats, error) {
	r, closeSrc, err := newRound(opt)
	if err != nil {
		return nil, err
	}
	defer closeSrc()
	sess, err := transport.Dial(ctx, r.opt.Addr, r.opt.Transport)
	if err != nil {
		return nil, err
	}
	defer sess.Close()
	r.sess, r.own = sess, true
	if err := r.run(ctx); err != nil {
		return nil, err
	}
	r.stats.DurationSeconds = time.Since(r.start).Seconds()
	r.stats.WireBytes = sess.WireBytesWritten()
	r.stats.WireBytesReceived = sess.WireBytesRead()
	return &r.stats, nil
}

// SyncOn runs one round as Sync does, over sess, an open session to the
// receiver at opt.Addr, and leaves the session open: other rounds may run
// on it at the same time (transport/spec.md, "Rounds sharing a session"),
// and share its bandwidth limit (opt.Transport's is the session's, set
// when it was dialled). A round with a Group asks the receiver to let
// further rounds share the session (Group.Share), and opt.OnWelcome learns
// how many it allows; the caller opens a second round on sess only if the
// answer was more than 1. A failure ends this round's streams, not the
// session. Stats.WireBytes counts the round's own streams.
func SyncOn(ctx context.Context, sess *transport.Session, opt Options) (*Stats, error) {
	if opt.Group != nil {
		g := *opt.Group
		g.Share = true
		opt.Group = &g
	}
	r, closeSrc, err := newRound(opt)
	if err != nil {
		return nil, err
	}
	defer closeSrc()
	r.sess = sess
	err = r.run(ctx)
	r.abortStreams()
	if err != nil {
		return nil, err
	}
	r.stats.DurationSeconds = time.Since(r.start).Seconds()
	r.stats.WireBytes, r.stats.WireBytesReceived = r.streamBytes()
	return &r.stats, nil
}

// newRound checks opt and opens the source; closeSrc closes it.
func newRound(opt Options) (r *round, closeSrc func(), err error) {
	if err := transport.ValidateVolumeName(opt.Volume); err != nil {
		return nil, nil, err
	}
	opt.Params = opt.Params.OrDefault()
	if err := opt.Params.Validate(); err != nil {
		return nil, nil, err
	}
	if err := opt.Transport.Validate(); err != nil {
		return nil, nil, err
	}
	if opt.Group != nil {
		if err := opt.Group.Validate(); err != nil {
			return nil, nil, err
		}
	}
	comp, err := transport.NewCompressor(opt.Compression)
	if err != nil {
		return nil, nil, err
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.Name == "" {
		h, _ := os.Hostname()
		opt.Name = "voldelta-agent@" + h
	}
	var src io.ReaderAt
	var size uint64
	closeSrc = func() {}
	if opt.Image != nil {
		src, size = opt.Image, opt.Image.Size()
	} else {
		f, n, err := OpenSource(opt.Source)
		if err != nil {
			return nil, nil, err
		}
		src, size, closeSrc = f, n, func() { f.Close() }
	}
	r = &round{opt: opt, src: src, size: size, comp: comp, start: time.Now(),
		stats: Stats{Volume: opt.Volume, Source: opt.Source, Receiver: opt.Addr, SourceBytes: size, Params: opt.Params.String()}}
	return r, closeSrc, nil
}

type round struct {
	opt  Options
	src  io.ReaderAt
	size uint64
	sess *transport.Session
	own  bool // the session is this round's: a failure closes it
	comp *transport.Compressor

	smu     sync.Mutex
	streams []*transport.Stream // the round's streams (control first)
	start   time.Time
	stats   Stats

	mu      sync.RWMutex
	entries []chunk.Entry

	// patchExts, if set, are the extents in which the source may differ
	// from what the receiver's target holds (the hints, and what the
	// volume grew by): a needed chunk is sent as its bytes in them
	// (CHUNK_PATCH) when that is smaller.
	patchExts []chunk.Extent
	patched   atomic.Uint64

	queue     workQueue
	scanned   atomic.Uint64
	needBytes atomic.Uint64
	sentBytes atomic.Uint64
	scanDone  atomic.Bool
	sent      atomic.Uint64
	sentRaw   atomic.Uint64
	sentWire  atomic.Uint64
	zstd      atomic.Uint64
}

func (r *round) progress() {
	if r.opt.Progress != nil {
		r.opt.Progress(Progress{SourceBytes: r.size, ScannedBytes: r.scanned.Load(), NeedBytes: r.needBytes.Load(),
			SentBytes: r.sentBytes.Load(), ScanDone: r.scanDone.Load()})
	}
}

// open opens one of the round's streams.
func (r *round) open(ctx context.Context) (*transport.Stream, error) {
	st, err := r.sess.Open(ctx)
	if err != nil {
		return nil, err
	}
	r.smu.Lock()
	r.streams = append(r.streams, st)
	r.smu.Unlock()
	return st, nil
}

// abort ends the round's traffic: its session if it owns it, otherwise its
// own streams, so that rounds sharing the session go on.
func (r *round) abort() {
	if r.own {
		r.sess.Close()
		return
	}
	r.abortStreams()
}

func (r *round) abortStreams() {
	r.smu.Lock()
	defer r.smu.Unlock()
	for _, st := range r.streams {
		st.Abort()
	}
}

// streamBytes sums what the round's streams sent and read.
func (r *round) streamBytes() (written, read int64) {
	r.smu.Lock()
	defer r.smu.Unlock()
	for _, st := range r.streams {
		written += st.BytesWritten()
		read += st.BytesRead()
	}
	return written, read
}

func (r *round) run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, r.abort)
	defer stop()
	ctrl, err := r.open(ctx)
	if err != nil {
		return err
	}
	err = ctrl.Send(transport.Hello{Version: transport.ProtocolVersion, Volume: r.opt.Volume, Size: r.size,
		Params: r.opt.Params, Streams: uint16(r.opt.Transport.Streams), Agent: r.opt.Name, Image: r.opt.ImageID, Group: r.opt.Group})
	if err != nil {
		return err
	}
	m, err := recvCtx(ctx, r.abort, ctrl, r.opt.Transport.PrepareTimeout, "WELCOME after HELLO")
	switch {
	case errors.Is(err, transport.ErrIdle):
		return fmt.Errorf("receiver %s did not answer HELLO for volume %q: %w (it may be indexing a large target it has no state for: raise --prepare-timeout)", r.opt.Addr, r.opt.Volume, err)
	case err != nil && transport.IsConnLost(err):
		return fmt.Errorf("connection to receiver %s lost before it answered HELLO: %w", r.opt.Addr, err)
	case err != nil:
		return fmt.Errorf("receiver %s refused volume %q: %w", r.opt.Addr, r.opt.Volume, err)
	}
	w, ok := m.(transport.Welcome)
	if !ok {
		return fmt.Errorf("%w: expected WELCOME, got %v", transport.ErrProtocol, m.FrameType())
	}
	r.stats.TargetState = w.State.String()
	r.stats.PreviousGen = w.Generation
	r.opt.Logger.Info("receiver accepted", "receiver", w.Receiver, "target", w.State, "generation", w.Generation, "session_rounds", max(w.Rounds, 1))
	if r.opt.OnWelcome != nil {
		r.opt.OnWelcome(int(max(w.Rounds, 1)))
	}
	plan, err := r.plan(ctx, ctrl, w)
	if err != nil {
		return err
	}
	if plan.cacheErr != nil {
		r.opt.Logger.Warn("agent cache", "err", plan.cacheErr)
	}
	r.stats.ScanMode, r.stats.FullScanReason, r.stats.HintSource = plan.mode, plan.reason, plan.source
	r.stats.BaseFetched = plan.fetched
	if plan.changed != nil {
		r.stats.ChangedBytes = hint.Bytes(plan.changed)
	}
	r.opt.Logger.Info("scan plan", "mode", plan.mode, "reason", plan.reason, "hints", plan.source, "changed_bytes", r.stats.ChangedBytes)
	var copyBase *chunk.Manifest
	if w.HasBase && plan.base != nil && plan.base.Root == w.Root {
		copyBase = plan.base
	}
	r.patchExts = patchExtents(plan, w, r.size)
	if f, ok := r.src.(*os.File); ok && plan.mode == ScanIncremental {
		// Scattered reads of what changed: read-ahead would only add to them.
		if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_RANDOM); err != nil {
			r.opt.Logger.Debug("fadvise random", "err", err)
		}
	}

	// After a WELCOME with the rounds trailer the session may carry other
	// rounds: every data stream names this round's control stream.
	var control uint32
	if w.Rounds != 0 {
		control = ctrl.ID()
	}
	data := make([]*transport.Stream, r.opt.Transport.Streams)
	for k := range data {
		if data[k], err = r.open(ctx); err != nil {
			return err
		}
		if err := data[k].Send(transport.DataOpen{Stream: uint16(k), Control: control}); err != nil {
			return err
		}
	}

	g, gctx := errgroup.WithContext(ctx)
	var root chunk.ID
	var result transport.Result
	var ctrlErr error
	ctrlDone := make(chan struct{})
	go func() { // the control reader decides how the round ends
		defer close(ctrlDone)
		result, ctrlErr = r.readControl(ctrl)
		r.queue.close()
		if ctrlErr != nil && !r.own {
			// A data stream waiting for window space would wait until the
			// receiver's close timeout: the receiver no longer reads the
			// streams of a round it ended, and the session lives on.
			r.abortStreams()
		}
	}()
	// The first failure stops the data streams too: they would wait for
	// work that no longer comes.
	g.Go(func() error {
		var err error
		if root, err = r.sendManifest(gctx, ctrl, plan, copyBase); err != nil {
			r.queue.abort()
		}
		return err
	})
	for _, st := range data {
		g.Go(func() error {
			err := r.sendChunks(st)
			if err != nil {
				r.queue.abort()
			}
			return err
		})
	}
	sendErr := g.Wait()
	if errors.Is(sendErr, ErrSourceRead) {
		ctrl.SendError(transport.ErrCodeCanceled, "agent %s: %v", r.opt.Name, sendErr)
	}
	if sendErr != nil {
		r.abort() // unblocks the control reader
	}
	select {
	case <-ctrlDone:
	case <-ctx.Done():
		r.abort()
		<-ctrlDone
		return fmt.Errorf("sync canceled: %w", context.Cause(ctx))
	}
	var re *transport.RemoteError
	switch {
	case errors.Is(sendErr, ErrSourceRead):
		return sendErr // the session ended because of it
	case (sendErr != nil || ctrlErr != nil) && r.shrank():
		// Whatever failed first (a short scan, a chunk the receiver found
		// changed, the session closed under it), the source is to blame.
		return r.sourceError("read", r.scanned.Load(), firstErr(sendErr, ctrlErr))
	case errors.As(ctrlErr, &re):
		return fmt.Errorf("receiver %s: %w", r.opt.Addr, ctrlErr)
	case ctx.Err() != nil:
		return fmt.Errorf("sync canceled: %w", context.Cause(ctx))
	case sendErr != nil && transport.IsConnLost(sendErr) || ctrlErr != nil && transport.IsConnLost(ctrlErr):
		return fmt.Errorf("connection to receiver %s lost before it committed (the next sync resumes): %w", r.opt.Addr, firstErr(ctrlErr, sendErr))
	case sendErr != nil:
		return sendErr
	case ctrlErr != nil:
		return ctrlErr
	}
	if result.Root != root {
		return fmt.Errorf("%w: source %s, receiver %s", ErrRootMismatch, root, result.Root)
	}
	r.stats.RootHash = root.String()
	r.stats.Generation = result.Generation
	r.mu.RLock()
	r.stats.Manifest = &chunk.Manifest{Params: r.opt.Params, Size: r.size, Entries: r.entries, Root: root}
	r.mu.RUnlock()
	r.stats.ChunksSkipped = result.Skipped
	r.stats.ChunksCopied = result.Copied
	r.stats.ChunksZeroed = result.Zeroed
	r.stats.BytesCopied = result.CopyBytes
	r.stats.ChunksSent = r.sent.Load()
	r.stats.BytesSentRaw = r.sentRaw.Load()
	r.stats.BytesSentPayload = r.sentWire.Load()
	r.stats.ChunksCompressed = r.zstd.Load()
	r.stats.ChunksPatched = r.patched.Load()
	if result.Fetched != r.stats.ChunksSent {
		return fmt.Errorf("%w: receiver wrote %d fetched chunks, agent sent %d", transport.ErrProtocol, result.Fetched, r.stats.ChunksSent)
	}
	ctrl.CloseWrite()
	r.afterCommit(ctx, plan)
	return nil
}

// afterCommit checks a periodic full scan against the hints, and keeps the
// committed manifest and the volume's policy in the cache.
func (r *round) afterCommit(ctx context.Context, plan *scanPlan) {
	pol := plan.policy
	now := time.Now()
	if plan.check {
		hinted, _, err := chunk.ScanManifest(ctx, r.src, r.size, r.opt.Params, chunk.ScanOptions{Workers: r.opt.ScanWorkers, Previous: plan.prev, Changed: plan.changed})
		switch {
		case err != nil:
			r.opt.Logger.Warn("check the hints against the full scan", "err", err)
		case hinted.Root == r.stats.Manifest.Root:
			r.stats.HintCheck = "match"
		default:
			r.stats.HintCheck = "mismatch"
			why := fmt.Sprintf("on %s a full scan found root %s where its hints gave %s", now.UTC().Format(time.RFC3339), r.stats.Manifest.Root.Short(), hinted.Root.Short())
			r.opt.Logger.Error("change hints missed a change: distrusting them for this volume", "hints", plan.source, "detail", why)
			if pol.Distrusted == nil {
				pol.Distrusted = map[string]string{}
			}
			pol.Distrusted[plan.source] = why
		}
	}
	if r.opt.Cache == nil {
		return
	}
	if plan.mode == ScanFull {
		pol.LastFullScan, pol.RoundsSinceFullScan = now, 0
	} else {
		pol.RoundsSinceFullScan++
	}
	if err := r.opt.Cache.Store(r.opt.Volume, r.stats.Manifest); err != nil {
		r.opt.Logger.Warn("keep the committed manifest", "err", err)
	}
	if err := r.opt.Cache.SavePolicy(r.opt.Volume, pol); err != nil {
		r.opt.Logger.Warn("keep the volume's hint policy", "err", err)
	}
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// recvCtx receives one message within d, giving up (abort) when ctx ends.
func recvCtx(ctx context.Context, abort func(), st *transport.Stream, d time.Duration, what string) (transport.Message, error) {
	stop := context.AfterFunc(ctx, abort)
	defer stop()
	m, err := st.RecvWithin(d, what)
	if err != nil && ctx.Err() != nil {
		return nil, context.Cause(ctx)
	}
	return m, err
}

// sendManifest scans the source and streams the manifest as it is cut: as
// copies of base's entries where it has them (MANIFEST_COPY), the rest in
// MANIFEST_NEXT batches (entries without their offsets); base nil sends
// every entry.
func (r *round) sendManifest(ctx context.Context, ctrl *transport.Stream, plan *scanPlan, base *chunk.Manifest) (chunk.ID, error) {
	const batchSize = 2048
	b := chunk.NewBuilder(r.opt.Params, r.size)
	enc := &manifestEncoder{}
	if base != nil {
		enc.base = base.Entries
	}
	batch := make([]chunk.Entry, 0, batchSize)
	var pending []chunk.Entry // entries not yet in r.entries
	var frameBytes, literal, queuedBytes uint64
	var sendFailed error
	var queue []transport.Message // frames not yet written, in order
	// write sends the queued frames in one write.
	write := func() error {
		if len(queue) == 0 {
			return nil
		}
		// NEED refers to entries by index: they are known before sent.
		r.mu.Lock()
		r.entries = append(r.entries, pending...)
		r.mu.Unlock()
		pending = pending[:0]
		err := ctrl.SendAll(queue)
		clear(queue)
		queue, queuedBytes = queue[:0], 0
		if err != nil && sendFailed == nil {
			sendFailed = err
		}
		return err
	}
	send := func(m transport.Message, n uint64) error {
		frameBytes += transport.HeaderSize + n
		queue = append(queue, m)
		if queuedBytes += n; queuedBytes >= 256<<10 {
			return write()
		}
		return nil
	}
	flushCopy := func() error {
		if enc.count == 0 {
			return nil
		}
		m := transport.ManifestCopy{First: enc.first, Count: enc.count}
		enc.copied += enc.count
		enc.count = 0
		return send(m, 16)
	}
	flushBatch := func() error {
		if len(batch) == 0 {
			return nil
		}
		literal += uint64(len(batch))
		// The queue keeps the batch until it is written: a new one.
		err := send(transport.ManifestNext{Entries: batch}, transport.ManifestNextSize(batch))
		batch = make([]chunk.Entry, 0, batchSize)
		return err
	}
	flush := func() error {
		if err := flushCopy(); err != nil {
			return err
		}
		if err := flushBatch(); err != nil {
			return err
		}
		return write()
	}
	emit := func(e chunk.Entry) error {
		if err := b.Add(e); err != nil {
			return err
		}
		if enc.match(e) {
			if err := flushBatch(); err != nil {
				return err
			}
			if enc.count > 0 && enc.first+enc.count != uint64(enc.j) {
				if err := flushCopy(); err != nil {
					return err
				}
			}
			if enc.count == 0 {
				enc.first = uint64(enc.j)
			}
			enc.count++
			pending = append(pending, e)
			return nil
		}
		if err := flushCopy(); err != nil {
			return err
		}
		pending = append(pending, e)
		batch = append(batch, e)
		if len(batch) == batchSize {
			return flushBatch()
		}
		return nil
	}
	so := chunk.ScanOptions{
		Workers: r.opt.ScanWorkers,
		Progress: func(n uint64) {
			r.scanned.Store(n)
			if err := flush(); err != nil {
				r.opt.Logger.Debug("manifest flush", "err", err)
			}
			r.progress()
		},
	}
	if plan.mode == ScanIncremental {
		so.Previous, so.Changed = plan.prev, plan.changed
		if so.Workers == 0 {
			// Scattered small reads wait on the disk, not the CPU: more in
			// flight keep it busy.
			so.Workers = min(16, 4*runtime.GOMAXPROCS(0))
		}
	}
	scanStart := time.Now()
	st, err := chunk.Scan(ctx, r.src, r.size, r.opt.Params, so, emit)
	switch {
	case err == nil:
	case sendFailed != nil:
		return chunk.ID{}, sendFailed
	case ctx.Err() != nil:
		return chunk.ID{}, fmt.Errorf("scan source %s: %w", r.opt.Source, err)
	default:
		return chunk.ID{}, r.sourceError("scan", r.scanned.Load(), err)
	}
	if err := flush(); err != nil {
		return chunk.ID{}, err
	}
	r.stats.ScanSeconds = time.Since(scanStart).Seconds()
	r.scanDone.Store(true)
	r.progress()
	root, err := b.Finish()
	if err != nil {
		return chunk.ID{}, err
	}
	r.stats.ChunksTotal = st.Chunks()
	r.stats.ChunksData = st.DataChunks
	r.stats.ChunksZero = st.ZeroChunks
	r.stats.ReusedBytes = st.ReusedBytes
	r.stats.BytesRead = st.ReadBytes
	r.stats.ManifestEntries = b.Count()
	r.stats.ManifestEntriesSent = literal
	r.stats.ManifestEntriesCopied = enc.copied
	frameBytes += transport.HeaderSize + 8 + 32
	r.stats.ManifestBytes = frameBytes
	r.opt.Logger.Info("scan done", "mode", plan.mode, "bytes", r.size, "read", st.ReadBytes, "chunks", st.Chunks(), "entries", b.Count(),
		"entries_sent", literal, "entries_copied", enc.copied, "root", root.Short(), "seconds", r.stats.ScanSeconds)
	if err := ctrl.Send(transport.ManifestEnd{Count: b.Count(), Root: root}); err != nil {
		return chunk.ID{}, err
	}
	return root, nil
}

// sourceError explains a failed read of the source: one that shrank is
// named as such (its bytes are no longer those of the manifest).
func (r *round) sourceError(op string, off uint64, err error) error {
	if r.opt.Image == nil {
		if fi, serr := os.Stat(r.opt.Source); serr == nil && fi.Mode().IsRegular() && uint64(fi.Size()) < r.size {
			return fmt.Errorf("%w: source %s shrank from %d to %d bytes while it was read (%s at offset %d: %v): sync from a snapshot",
				ErrSourceRead, r.opt.Source, r.size, fi.Size(), op, off, err)
		}
	}
	return fmt.Errorf("%w: source %s: %s failed at offset %d: %w", ErrSourceRead, r.opt.Source, op, off, err)
}

// shrank reports whether a source file is now shorter than when the round
// began.
func (r *round) shrank() bool {
	if r.opt.Image != nil {
		return false
	}
	fi, err := os.Stat(r.opt.Source)
	return err == nil && fi.Mode().IsRegular() && uint64(fi.Size()) < r.size
}

// readControl handles NEED, NEED_END and RESULT from the receiver.
func (r *round) readControl(ctrl *transport.Stream) (transport.Result, error) {
	needEnd := false
	for {
		m, err := ctrl.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("receiver %s closed the session before committing: %w", r.opt.Addr, err)
			}
			return transport.Result{}, err
		}
		switch m := m.(type) {
		case transport.Need:
			if needEnd {
				return transport.Result{}, fmt.Errorf("%w: receiver sent NEED after NEED_END", transport.ErrProtocol)
			}
			r.mu.RLock()
			n := uint64(len(r.entries))
			for _, rg := range m.Ranges {
				for i := rg.First; i < rg.First+uint64(rg.Count); i++ {
					if i >= n || r.entries[i].Zero {
						r.mu.RUnlock()
						return transport.Result{}, fmt.Errorf("%w: receiver asked for entry %d, which is not a data chunk sent so far", transport.ErrProtocol, i)
					}
					r.needBytes.Add(r.entries[i].Length)
				}
			}
			r.mu.RUnlock()
			r.queue.push(m.Ranges)
		case transport.NeedEnd:
			if needEnd {
				return transport.Result{}, fmt.Errorf("%w: receiver sent NEED_END twice", transport.ErrProtocol)
			}
			needEnd = true
			r.queue.close()
		case transport.Result:
			if !needEnd {
				return transport.Result{}, fmt.Errorf("%w: receiver sent RESULT before NEED_END", transport.ErrProtocol)
			}
			return m, nil
		default:
			return transport.Result{}, fmt.Errorf("%w: unexpected %v from the receiver", transport.ErrProtocol, m.FrameType())
		}
	}
}

// sendChunks sends the queued chunks on one data stream.
func (r *round) sendChunks(st *transport.Stream) error {
	raw := make([]byte, r.opt.Params.MaxSize)
	enc := make([]byte, 0, r.opt.Params.MaxSize+r.opt.Params.MaxSize/8+1024)
	for {
		i, ok := r.queue.pop()
		if !ok {
			return st.CloseWrite()
		}
		r.mu.RLock()
		e := r.entries[i]
		r.mu.RUnlock()
		msg, n, err := r.chunkMessage(i, e, raw, enc)
		if err != nil {
			return err
		}
		if err := st.Send(msg); err != nil {
			return fmt.Errorf("send chunk %s at %d: %w", e.ID.Short(), e.Offset, err)
		}
		r.sent.Add(1)
		r.sentRaw.Add(n.raw)
		r.sentWire.Add(n.wire)
		codec := n.codec
		if codec == transport.CodecZstd {
			r.zstd.Add(1)
		}
		r.sentBytes.Add(e.Length)
		r.progress()
	}
}

// sentBytes is what one chunk message carried.
type sentBytes struct {
	raw, wire uint64
	codec     transport.Codec
}

// chunkMessage reads entry i's bytes (those it needs) and encodes them as
// a CHUNK, or as a CHUNK_PATCH when only part of them may differ from the
// receiver's target.
func (r *round) chunkMessage(i uint64, e chunk.Entry, raw, enc []byte) (transport.Message, sentBytes, error) {
	if ranges, n, ok := patchRanges(r.patchExts, e); ok {
		b := raw[:0]
		for _, pr := range ranges {
			off := e.Offset + uint64(pr.Offset)
			part := raw[len(b) : len(b)+int(pr.Length)]
			if _, err := r.src.ReadAt(part, int64(off)); err != nil {
				return nil, sentBytes{}, r.sourceError("read chunk "+e.ID.Short(), off, err)
			}
			b = raw[:len(b)+int(pr.Length)]
		}
		codec, payload := r.comp.Compress(b, enc)
		r.patched.Add(1)
		return transport.ChunkPatch{Index: i, Codec: codec, RawLen: uint32(n), Ranges: ranges, Data: payload},
			sentBytes{raw: n, wire: uint64(len(payload)), codec: codec}, nil
	}
	b := raw[:e.Length]
	if _, err := r.src.ReadAt(b, int64(e.Offset)); err != nil {
		return nil, sentBytes{}, r.sourceError("read chunk "+e.ID.Short(), e.Offset, err)
	}
	codec, payload := r.comp.Compress(b, enc)
	return transport.Chunk{Index: i, Codec: codec, RawLen: uint32(e.Length), Data: payload},
		sentBytes{raw: e.Length, wire: uint64(len(payload)), codec: codec}, nil
}

// workQueue hands manifest indexes to the data streams. It never blocks
// the control reader: an unbounded queue of small ranges.
type workQueue struct {
	mu     sync.Mutex
	cond   *sync.Cond
	ranges []transport.IndexRange
	closed bool
}

func (q *workQueue) init() {
	if q.cond == nil {
		q.cond = sync.NewCond(&q.mu)
	}
}

func (q *workQueue) push(rs []transport.IndexRange) {
	q.mu.Lock()
	q.init()
	q.ranges = append(q.ranges, rs...)
	q.mu.Unlock()
	q.cond.Broadcast()
}

func (q *workQueue) close() {
	q.mu.Lock()
	q.init()
	q.closed = true
	q.mu.Unlock()
	q.cond.Broadcast()
}

// abort closes the queue and drops what it holds.
func (q *workQueue) abort() {
	q.mu.Lock()
	q.init()
	q.closed = true
	q.ranges = nil
	q.mu.Unlock()
	q.cond.Broadcast()
}

// pop returns the next index, or false once the queue is closed and empty.
func (q *workQueue) pop() (uint64, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.init()
	for len(q.ranges) == 0 && !q.closed {
		q.cond.Wait()
	}
	if len(q.ranges) == 0 {
		return 0, false
	}
	rg := &q.ranges[0]
	i := rg.First
	rg.First++
	rg.Count--
	if rg.Count == 0 {
		q.ranges = q.ranges[1:]
	}
	return i, true
}
