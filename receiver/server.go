package receiver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/transport"
)

// VerifyMode says how much of the target is read back before a commit.
type VerifyMode string

// Verify modes.
const (
	// VerifyWritten reads back every range written this session and checks
	// it against the manifest. Ranges left in place are trusted from the
	// index only when it is the committed manifest and the target's
	// fingerprint vouches for it (see Fingerprint); otherwise they are read
	// back too, and rewritten where they do not match.
	VerifyWritten VerifyMode = "written"
	// VerifyFull reads back every range of the target every round: the
	// kept ones before NEED_END (a mismatch is fetched again), the written
	// ones before the commit.
	VerifyFull VerifyMode = "full"
)

// Config configures a Server.
type Config struct {
	// Targets maps volume names to the file or block device receiving them.
	Targets map[string]string
	// StateDir keeps each volume's state (one subdirectory per volume).
	StateDir string
	// Transport configures sessions; TLS or Insecure must be set.
	Transport transport.Config
	// Verify is the check before commit; default VerifyWritten.
	Verify VerifyMode
	// ApplyBuffer bounds the memory holding chunks that arrive before they
	// may be written, and sources read ahead to break copy cycles. Default 64 MiB.
	ApplyBuffer int64
	// Workers is the parallelism of rescans and verification; 0: all cores.
	Workers int
	// Resolve, if set, maps a volume name to its target path at the start
	// of every session (e.g. from Kubernetes objects); Targets is then
	// optional. Return an error wrapping ErrUnknownVolume for names it
	// does not serve.
	Resolve func(ctx context.Context, volume string) (string, error)
	// Authorize, if set, decides whether a peer may write a volume.
	Authorize func(volume string, peer transport.Identity) error
	// OnCommit, if set, is called after a session committed a generation
	// of volume, before the result is sent to the agent (keep it short).
	OnCommit func(volume string, peer transport.Identity, r Result)
	// OnApply, if set, is called when a round's apply is about to begin
	// (after Resolve and Authorize): progress, if not nil, then receives
	// the apply's figures as Options.Progress does, and end, if not nil, is
	// called once the round is over, committed or not (e.g. to publish and
	// then clear a target's progress).
	OnApply func(volume string, peer transport.Identity) (progress func(ApplyProgress), end func())
	// Groups says the receiver can promote groups (Kubernetes mode, which
	// also makes Resolve refuse promoted targets with ErrPromoted).
	// Without it a HELLO whose group has Promote is refused (ERROR 16,
	// ErrGroup) before anything is claimed; a group without Promote is
	// recorded in the state file all the same.
	Groups bool
	// Logger; nil logs nothing.
	Logger *slog.Logger
	// Name identifies this receiver to agents; default the host name.
	Name string
	// MaxSessions bounds the sessions served at once (default
	// DefaultMaxSessions); a connection beyond it is answered ERROR 4
	// (busy, retryable). With the per-session bounds of the transport
	// (spec.md §6) it bounds the receiver's memory.
	MaxSessions int
	// MaxRounds bounds the rounds one session carries at once (default
	// DefaultMaxRounds, at most transport.MaxSessionRounds; 1 keeps every
	// session to one round). An agent asks for more than one with HELLO's
	// group Share flag; WELCOME tells it how many (transport/spec.md).
	MaxRounds int
}

// DefaultMaxSessions is Config.MaxSessions' default.
const DefaultMaxSessions = 16

// Server accepts sync sessions and applies them to its targets.
type Server struct {
	cfg      Config
	opt      Options
	log      *slog.Logger
	wg       sync.WaitGroup
	sessions chan struct{} // a token per session served
	refusals chan struct{} // a token per connection being refused
	served   atomic.Int64  // sessions set up, ever
}

// SessionsServed returns how many sessions the server set up (TLS and
// yamux running) since it started: rounds sharing a session count once.
func (s *Server) SessionsServed() int64 { return s.served.Load() }

// New checks cfg and prepares the state directory.
func New(cfg Config) (*Server, error) {
	if len(cfg.Targets) == 0 && cfg.Resolve == nil {
		return nil, errors.New("no targets: give at least one --target NAME=PATH")
	}
	for name, path := range cfg.Targets {
		if err := transport.ValidateVolumeName(name); err != nil {
			return nil, err
		}
		if path == "" {
			return nil, fmt.Errorf("target %q has an empty path", name)
		}
	}
	if cfg.StateDir == "" {
		return nil, errors.New("no state directory: give --state-dir")
	}
	if err := CheckDistinctTargets(cfg.Targets); err != nil {
		return nil, err
	}
	if err := cfg.Transport.Validate(); err != nil {
		return nil, err
	}
	if cfg.MaxSessions == 0 {
		cfg.MaxSessions = DefaultMaxSessions
	}
	if cfg.MaxSessions < 0 {
		return nil, fmt.Errorf("max sessions %d: want at least 1", cfg.MaxSessions)
	}
	if cfg.MaxRounds == 0 {
		cfg.MaxRounds = DefaultMaxRounds
	}
	if cfg.MaxRounds < 0 || cfg.MaxRounds > transport.MaxSessionRounds {
		return nil, fmt.Errorf("max rounds per session %d: want 1..%d", cfg.MaxRounds, transport.MaxSessionRounds)
	}
	opt := Options{Verify: cfg.Verify, ApplyBuffer: cfg.ApplyBuffer, Workers: cfg.Workers, Logger: cfg.Logger}
	if err := opt.defaults(); err != nil {
		return nil, err
	}
	if cfg.Name == "" {
		cfg.Name, _ = os.Hostname()
	}
	if err := os.MkdirAll(cfg.StateDir, 0o755); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	return &Server{cfg: cfg, opt: opt, log: opt.Logger,
		sessions: make(chan struct{}, cfg.MaxSessions), refusals: make(chan struct{}, cfg.MaxSessions)}, nil
}

// Serve accepts connections on ln until ctx is done, then stops accepting,
// ends running sessions (their progress is journaled, so the next sync
// resumes) and returns once they are gone.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	s.log.Info("receiver listening", "addr", ln.Addr().String(), "targets", s.targetNames(), "tls", s.cfg.Transport.TLS != nil)
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				s.wg.Wait()
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			s.wg.Wait()
			return fmt.Errorf("accept: %w", err)
		}
		select {
		case s.sessions <- struct{}{}:
			s.wg.Go(func() {
				defer func() { <-s.sessions }()
				s.serveConn(ctx, c)
			})
		default:
			select {
			case s.refusals <- struct{}{}:
				s.wg.Go(func() {
					defer func() { <-s.refusals }()
					s.refuse(ctx, c)
				})
			default: // refusing as many as it serves: just hang up
				c.Close()
			}
		}
	}
}

func (s *Server) targetNames() []string {
	names := make([]string, 0, len(s.cfg.Targets))
	for n := range s.cfg.Targets {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func (s *Server) serveConn(ctx context.Context, c net.Conn) {
	log := s.log.With("peer", c.RemoteAddr().String())
	sess, err := transport.Server(ctx, c, s.cfg.Transport)
	if err != nil {
		lvl := slog.LevelWarn
		if errors.Is(err, io.EOF) {
			lvl = slog.LevelDebug // a TCP health check: connected and hung up
		}
		log.Log(ctx, lvl, "session setup failed", "err", err)
		c.Close()
		return
	}
	defer sess.Close()
	srvCtx := ctx
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-sess.Done():
			cancel(agentGone(sess))
		case <-ctx.Done():
		}
	}()
	s.served.Add(1)
	ss := &session{srv: s, sess: sess, log: log, rounds: map[uint32]*round{}}
	ss.serve(ctx, srvCtx)
}

// sessionError carries a protocol error code decided by the server itself.
type sessionError struct {
	code transport.ErrorCode
	err  error
}

func (e *sessionError) Error() string { return e.err.Error() }
func (e *sessionError) Unwrap() error { return e.err }

func fail(code transport.ErrorCode, format string, a ...any) error {
	return &sessionError{code: code, err: fmt.Errorf(format, a...)}
}

// errorCode maps an apply's error to the code sent to the agent.
func errorCode(ctx context.Context, err error) transport.ErrorCode {
	var se *sessionError
	switch {
	case errors.As(err, &se):
		return se.code
	case errors.Is(err, ErrUnknownVolume):
		return transport.ErrCodeUnknown
	case errors.Is(err, ErrBusy):
		return transport.ErrCodeBusy
	case errors.Is(err, ErrTooSmall):
		return transport.ErrCodeTooSmall
	case errors.Is(err, ErrSourceChanged):
		return transport.ErrCodeSourceChange
	case errors.Is(err, ErrVerify):
		return transport.ErrCodeVerify
	case errors.Is(err, ErrInterrupted):
		return transport.ErrCodeCanceled
	case errors.Is(err, ErrShutdown):
		return transport.ErrCodeShutdown
	case errors.Is(err, ErrTargetFull):
		return transport.ErrCodeTargetFull
	case errors.Is(err, ErrPromoted):
		return transport.ErrCodePromoted
	case errors.Is(err, ErrGroup):
		return transport.ErrCodeGroup
	case errors.Is(err, ErrStateCorrupt), errors.Is(err, ErrTargetClaimed), errors.Is(err, ErrTargetGone):
		return transport.ErrCodeTargetState
	case errors.Is(err, chunk.ErrParams):
		return transport.ErrCodeParams
	case errors.Is(err, ErrBadInput), errors.Is(err, transport.ErrProtocol), errors.Is(err, transport.ErrFrameTooLarge):
		return transport.ErrCodeProtocol
	case ctx.Err() != nil:
		return transport.ErrCodeShutdown
	}
	return transport.ErrCodeApply
}

var errAgentGone = failf(ErrInterrupted, "connection to the agent lost")

// agentGone is why a session ended under the apply: a stall this end
// detected (transport.ErrStalled), or the agent gone.
func agentGone(sess *transport.Session) error {
	if err := sess.Err(); err != nil {
		return failf(ErrInterrupted, "connection to the agent lost: %w", err)
	}
	return errAgentGone
}

// refuse answers a connection beyond MaxSessions with ERROR 4 (busy).
func (s *Server) refuse(ctx context.Context, c net.Conn) {
	cfg := s.cfg.Transport
	sess, err := transport.Server(ctx, c, cfg)
	if err != nil {
		c.Close()
		return
	}
	defer sess.Close()
	actx, stop := context.WithTimeout(ctx, cfg.HandshakeTimeout)
	defer stop()
	ctrl, err := sess.Accept(actx)
	if err != nil {
		return
	}
	s.log.Warn("session refused: too many sessions", "peer", sess.RemoteAddr().String(), "max_sessions", s.cfg.MaxSessions)
	ctrl.SendError(transport.ErrCodeBusy, "receiver %s serves its maximum of %d sessions at once (--max-sessions): retry later", s.cfg.Name, s.cfg.MaxSessions)
	select {
	case <-sess.Done():
	case <-actx.Done():
	}
}

// sync runs one round of a session: m (or err) is the first frame read
// from its control stream. ctx ends with the session; srvCtx only with the
// server, so that a round whose data all arrived is committed even if the
// agent hangs up before the RESULT.
func (s *Server) sync(ctx, srvCtx context.Context, log *slog.Logger, ss *session, rd *round, m transport.Message, err error) error {
	sess, ctrl := ss.sess, rd.ctrl
	// Nothing is claimed before the HELLO was read and checked: an agent
	// that says nothing, or something wrong, leaves the target as it was.
	switch {
	case errors.Is(err, io.EOF):
		return fail(transport.ErrCodeProtocol, "agent closed the control stream without a HELLO")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fail(transport.ErrCodeProtocol, "truncated HELLO: %v", err)
	case errors.Is(err, transport.ErrIdle):
		return fail(transport.ErrCodeProtocol, "%v", err)
	case err != nil:
		var re *transport.RemoteError
		if errors.As(err, &re) || transport.IsConnLost(err) {
			return fmt.Errorf("read HELLO: %w", err)
		}
		return fail(transport.ErrCodeProtocol, "read HELLO: %v", err)
	}
	hello, ok := m.(transport.Hello)
	if !ok {
		return failf(ErrBadInput, "expected HELLO, got %v", m.FrameType())
	}
	if hello.Version != transport.ProtocolVersion {
		return fail(transport.ErrCodeVersion, "protocol version mismatch: agent speaks %d, receiver speaks %d; run the same voldelta release on both ends",
			hello.Version, transport.ProtocolVersion)
	}
	if err := transport.ValidateVolumeName(hello.Volume); err != nil {
		return failf(ErrUnknownVolume, "%v", err)
	}
	var group *Group
	if g := hello.Group; g != nil {
		if g.Promote && !s.cfg.Groups {
			return failf(ErrGroup, "round of volume %q asks to promote group %q, but receiver %s cannot promote groups: "+
				"promotion needs the receiver in Kubernetes mode (voldelta k8s-receiver, VolumeTargets)", hello.Volume, g.Name, s.cfg.Name)
		}
		group = &Group{Name: g.Name, Members: int(g.Members), Promote: g.Promote}
	}
	path, ok := s.cfg.Targets[hello.Volume]
	if !ok && s.cfg.Resolve != nil {
		var err error
		if path, err = s.cfg.Resolve(ctx, hello.Volume); err != nil {
			return err
		}
		ok = path != ""
	}
	if !ok {
		return failf(ErrUnknownVolume, "no target for volume %q on this receiver (it has: %s)", hello.Volume, strings.Join(s.targetNames(), ", "))
	}
	if err := hello.Params.Validate(); err != nil {
		return fail(transport.ErrCodeParams, "%v", err)
	}
	if !utf8.ValidString(hello.Image) {
		// It is kept in the JSON state, which would not keep it unchanged,
		// and given back in WELCOME for the agent to compare.
		return failf(ErrBadInput, "HELLO names an image identity that is not valid UTF-8 (%q)", hello.Image)
	}
	if hello.Streams < 1 || hello.Streams > transport.MaxDataStreams {
		return failf(ErrBadInput, "agent announces %d data streams, want 1..%d", hello.Streams, transport.MaxDataStreams)
	}
	if int(hello.Streams) > ss.maxStreams {
		// The first round set the session's window; a later one must fit
		// its own window budget at it.
		return failf(ErrBadInput, "round announces %d data streams, but a round of this session may have at most %d (window %d bytes, window budget %d)",
			hello.Streams, ss.maxStreams, sess.StreamWindow(), s.cfg.Transport.WindowBudget)
	}
	if s.cfg.Authorize != nil {
		if err := s.cfg.Authorize(hello.Volume, sess.Peer()); err != nil {
			return fail(transport.ErrCodeForbidden, "%v", err)
		}
	}
	opt := s.opt
	opt.Logger = log.With("agent", hello.Agent, "image", hello.Image)
	opt.Idle = s.cfg.Transport.IdleTimeout
	if s.cfg.OnApply != nil {
		progress, end := s.cfg.OnApply(hello.Volume, sess.Peer())
		opt.Progress = progress
		if end != nil {
			defer end()
		}
	}
	ap, err := Begin(ctx, Volume{Name: hello.Volume, Path: path, StateDir: s.cfg.StateDir}, opt,
		Header{Size: hello.Size, Params: hello.Params, Peer: hello.Agent, Image: hello.Image, Group: group})
	if err != nil {
		return err
	}
	defer ap.Close()
	prev := ap.Previous()
	state := transport.TargetNew
	switch {
	case prev.Incomplete:
		state = transport.TargetIncomplete
	case prev.Generation > 0:
		state = transport.TargetCommitted
	}
	welcome := transport.Welcome{Generation: prev.Generation, Root: prev.Root, State: state, Receiver: s.cfg.Name,
		Size: prev.Size, Image: prev.Image, HasBase: ap.Base() != nil, AcceptsPatch: ap.Base() != nil, Rounds: ss.share(hello)}
	if err := ctrl.Send(welcome); err != nil {
		return err
	}

	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	dec, err := transport.NewDecompressor()
	if err != nil {
		return err
	}
	defer dec.Close()
	ctrlDone := make(chan struct{})
	go func() {
		defer close(ctrlDone)
		readControl(sctx, ctrl, ap, hello, s.cfg.Transport.IdleTimeout)
	}()
	go takeData(sctx, rd.data, ap, dec)
	if err := ap.Run(sctx, netRequester{ctrl}); err != nil {
		return err
	}
	r, err := ap.Commit(srvCtx)
	if err != nil {
		return err
	}
	ap.Close() // release the volume before waiting for the agent to hang up
	if s.cfg.OnCommit != nil {
		s.cfg.OnCommit(hello.Volume, sess.Peer(), r)
	}
	msg := transport.Result{Generation: r.Generation, Root: r.Root, Skipped: r.Skipped, Copied: r.Copied, Fetched: r.Fetched,
		Zeroed: r.Zeroed, CopyBytes: r.CopyBytes, FetchBytes: r.FetchBytes}
	if err := ctrl.Send(msg); err != nil {
		// Committed all the same; the agent learns it in its next round.
		log.Info("generation committed; the result could not be sent (the agent hung up)", "err", err)
		return nil
	}
	// Wait for the agent to hang up (on a shared session: to close the
	// round's control stream), so the RESULT is not lost in a reset.
	hungUp := sess.Done()
	if ss.isShared() {
		hungUp = ctrlDone
	}
	select {
	case <-hungUp:
	case <-sess.Done():
	case <-time.After(10 * time.Second):
	case <-ctx.Done():
	}
	return nil
}

// netRequester asks the agent for chunks with NEED frames.
type netRequester struct{ ctrl *transport.Stream }

func (r netRequester) Need(indexes []int) error {
	var ranges []transport.IndexRange
	for _, i := range indexes {
		if n := len(ranges); n > 0 && ranges[n-1].First+uint64(ranges[n-1].Count) == uint64(i) && ranges[n-1].Count < 1<<30 {
			ranges[n-1].Count++
		} else {
			ranges = append(ranges, transport.IndexRange{First: uint64(i), Count: 1})
		}
	}
	const perFrame = 64 << 10
	for len(ranges) > 0 {
		n := min(len(ranges), perFrame)
		if err := r.ctrl.Send(transport.Need{Ranges: ranges[:n]}); err != nil {
			return err
		}
		ranges = ranges[n:]
	}
	return nil
}

func (r netRequester) NeedEnd(total uint64) error {
	return r.ctrl.Send(transport.NeedEnd{Total: total})
}

// MaxManifestEntries is the most entries a manifest of a volume of size
// bytes may have: every chunk but the last of a segment is at least
// params.MinSize long. A longer manifest is a protocol error, found before
// the entries are held.
func MaxManifestEntries(size uint64, p chunk.Params) uint64 {
	if p.MinSize == 0 || p.SegmentSize == 0 {
		return 0
	}
	return size/uint64(p.MinSize) + size/p.SegmentSize + 1
}

// baseBatch is the most entries of a MANIFEST frame answering BASE_GET.
const baseBatch = 2048

// readControl forwards the agent's manifest to the apply: MANIFEST
// frames, and MANIFEST_COPY ranges of the base (the committed manifest)
// when the apply has one. Before the first of them the agent may ask once
// for the base (BASE_GET), which is answered here. Until MANIFEST_END,
// each frame must start within idle.
func readControl(ctx context.Context, ctrl *transport.Stream, ap *Apply, hello transport.Hello, idle time.Duration) {
	limit := MaxManifestEntries(hello.Size, hello.Params)
	base := ap.Base()
	var (
		count    uint64 // entries of the manifest so far, sent and copied
		next     uint64 // the offset the next entry must start at
		started  bool   // a manifest frame (MANIFEST, MANIFEST_COPY, MANIFEST_END) came
		ended    bool   // MANIFEST_END came
		baseSent bool   // BASE_GET was answered
	)
	tooMany := func() error {
		return failf(ErrBadInput, "manifest of more than %d entries for a volume of %d bytes with %d-byte minimum chunks and %d-byte segments", limit, hello.Size, hello.Params.MinSize, hello.Params.SegmentSize)
	}
	// literal adds entries sent in full (MANIFEST, MANIFEST_NEXT).
	literal := func(entries []chunk.Entry) error {
		started = true
		count += uint64(len(entries))
		if count > limit {
			err := tooMany()
			ap.Fail(ctx, err)
			return err
		}
		if n := len(entries); n > 0 {
			next = entries[n-1].End()
		}
		return ap.AddManifest(ctx, entries)
	}
	for {
		var m transport.Message
		var err error
		switch {
		case ended:
			m, err = ctrl.Recv()
		case count == 0 && baseSent:
			m, err = ctrl.RecvWithin(idle, "MANIFEST after the base manifest")
		case count == 0:
			m, err = ctrl.RecvWithin(idle, "MANIFEST after WELCOME")
		default:
			m, err = ctrl.RecvWithin(idle, fmt.Sprintf("MANIFEST frame after entry %d", count))
		}
		if err != nil {
			switch {
			case errors.Is(err, io.EOF):
				err = failf(ErrInterrupted, "agent closed the control stream before the sync committed")
			case errors.Is(err, transport.ErrIdle):
				err = fail(transport.ErrCodeProtocol, "agent alive but silent: %v", err)
			case ctx.Err() == nil:
				err = fmt.Errorf("control stream: %w", err)
			}
			ap.Fail(ctx, err)
			return
		}
		switch m := m.(type) {
		case transport.BaseGet:
			if err := checkBaseGet(m, base, started, baseSent); err != nil {
				ap.Fail(ctx, err)
				return
			}
			baseSent = true
			if err := sendBase(ctrl, base, idle); err != nil {
				if errors.Is(err, transport.ErrNotReading) {
					err = fail(transport.ErrCodeProtocol, "agent alive but not reading: %v", err)
				}
				ap.Fail(ctx, err)
				return
			}
			ap.log.Info("sent the base manifest", "entries", len(base.Entries), "root", base.Root.Short())
			continue
		case transport.ManifestBatch:
			err = literal(m.Entries)
		case transport.ManifestNext:
			// Offsets count from the manifest's end so far.
			for i := range m.Entries {
				m.Entries[i].Offset += next
			}
			err = literal(m.Entries)
		case transport.ManifestCopy:
			if ended {
				ap.Fail(ctx, failf(ErrBadInput, "MANIFEST_COPY after MANIFEST_END"))
				return
			}
			started = true
			if err := ap.checkBase(m.First, m.Count); err != nil {
				ap.Fail(ctx, err)
				return
			}
			if base.Entries[m.First].Offset != next {
				ap.Fail(ctx, failf(ErrBadInput, "MANIFEST_COPY from entry %d, which starts at offset %d, but the manifest so far ends at %d: copied entries must continue it",
					m.First, base.Entries[m.First].Offset, next))
				return
			}
			if count+m.Count > limit || count+m.Count < count {
				ap.Fail(ctx, tooMany())
				return
			}
			if err := ap.AddBase(ctx, m.First, m.Count); err != nil {
				ap.Fail(ctx, err)
				return
			}
			count += m.Count
			next = base.Entries[m.First+m.Count-1].End()
		case transport.ManifestEnd:
			started, ended = true, true
			err = ap.EndManifest(ctx, m.Count, m.Root)
		default:
			ap.Fail(ctx, failf(ErrBadInput, "unexpected %v on the control stream", m.FrameType()))
			return
		}
		if err != nil {
			return
		}
	}
}

// checkBaseGet says whether BASE_GET may be answered: once, before the
// first manifest frame, naming the root of a base the round holds.
func checkBaseGet(m transport.BaseGet, base *chunk.Manifest, started, sent bool) error {
	switch {
	case started:
		return failf(ErrBadInput, "BASE_GET after the manifest began: ask for the base manifest before the first MANIFEST frame")
	case sent:
		return failf(ErrBadInput, "second BASE_GET: the base manifest is sent once per session")
	case base == nil:
		return failf(ErrBadInput, "BASE_GET, but this receiver holds no base manifest for the round (WELCOME said so): send the whole manifest")
	case m.Root != base.Root:
		return failf(ErrBadInput, "BASE_GET for root %s, but the committed manifest's root is %s", m.Root.Short(), base.Root.Short())
	}
	return nil
}

// sendBase answers BASE_GET: the base's entries in MANIFEST frames of at
// most baseBatch entries, then MANIFEST_END with its count and root. Each
// frame must be taken within idle: an agent that asks and does not read
// would otherwise hold the volume.
func sendBase(ctrl *transport.Stream, base *chunk.Manifest, idle time.Duration) error {
	for k := 0; k < len(base.Entries); k += baseBatch {
		m := transport.ManifestBatch{Entries: base.Entries[k:min(k+baseBatch, len(base.Entries))]}
		if err := ctrl.SendWithin(idle, "MANIFEST frame of the base manifest", m); err != nil {
			return fmt.Errorf("send the base manifest: %w", err)
		}
	}
	if err := ctrl.SendWithin(idle, "MANIFEST_END of the base manifest", transport.ManifestEnd{Count: uint64(len(base.Entries)), Root: base.Root}); err != nil {
		return fmt.Errorf("send the base manifest: %w", err)
	}
	return nil
}

// takeData reads chunks from the data streams the session dispatches to
// the round (their DATA_OPEN read); an error item (a stream beyond the n
// that HELLO announced, a stream that did not start with DATA_OPEN) fails
// the round.
func takeData(ctx context.Context, data <-chan dataStream, ap *Apply, dec *transport.Decompressor) {
	for {
		select {
		case <-ctx.Done():
			return
		case d := <-data:
			if d.err != nil {
				ap.Fail(ctx, d.err)
				return
			}
			go func() {
				if err := readData(ctx, d.st, ap, dec); err != nil && ctx.Err() == nil {
					ap.Fail(ctx, err)
				}
			}()
		}
	}
}

func readData(ctx context.Context, st *transport.Stream, ap *Apply, dec *transport.Decompressor) error {
	defer st.Close()
	defer st.Release()
	for {
		m, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("data stream: %w", err)
		}
		if pm, ok := m.(transport.ChunkPatch); ok {
			if err := readPatch(ctx, st, ap, dec, pm); err != nil {
				return err
			}
			continue
		}
		c, ok := m.(transport.Chunk)
		if !ok {
			return failf(ErrBadInput, "unexpected %v on a data stream", m.FrameType())
		}
		e, ok := ap.Entry(c.Index)
		if !ok || e.Zero {
			return failf(ErrBadInput, "chunk %d is not a data entry of the manifest", c.Index)
		}
		if uint64(c.RawLen) != e.Length {
			return failf(ErrBadInput, "chunk %d is %d bytes, the manifest says %d", c.Index, c.RawLen, e.Length)
		}
		// Decode straight into the buffer the apply will own.
		buf := chunk.GetBuffer(int(e.Length))
		raw, err := dec.Decode(c, *buf)
		if err != nil {
			chunk.PutBuffer(buf)
			return failf(ErrBadInput, "%v", err)
		}
		if c.Codec == transport.CodecRaw {
			copy(*buf, raw)
		}
		st.Release() // the frame is copied: let another stream read one
		if err := ap.deliver(ctx, c.Index, e, buf); err != nil {
			return err
		}
	}
}

// readPatch rebuilds a chunk from a CHUNK_PATCH: the target's bytes at the
// chunk's offset with the patch's ranges written over them. The result
// must hash to the chunk's ID, like any fetched chunk; if it does not, the
// target did not hold the committed generation there, and the round fails
// marking the index for a rescan.
func readPatch(ctx context.Context, st *transport.Stream, ap *Apply, dec *transport.Decompressor, pm transport.ChunkPatch) error {
	if ap.Base() == nil {
		return failf(ErrBadInput, "CHUNK_PATCH %d, but this round's WELCOME did not accept patches", pm.Index)
	}
	e, ok := ap.Entry(pm.Index)
	if !ok || e.Zero {
		return failf(ErrBadInput, "chunk patch %d is not for a data entry of the manifest", pm.Index)
	}
	if n := len(pm.Ranges); n > 0 {
		if last := pm.Ranges[n-1]; uint64(last.Offset)+uint64(last.Length) > e.Length {
			return failf(ErrBadInput, "chunk patch %d reaches byte %d of a %d-byte chunk", pm.Index, last.Offset+last.Length, e.Length)
		}
	}
	tmp := chunk.GetBuffer(int(pm.RawLen))
	defer chunk.PutBuffer(tmp)
	raw, err := dec.Decode(pm.Chunk(), *tmp)
	if err != nil {
		return failf(ErrBadInput, "%v", err)
	}
	buf := chunk.GetBuffer(int(e.Length))
	if err := ap.readTarget(*buf, e.Offset); err != nil {
		chunk.PutBuffer(buf)
		return err
	}
	for _, r := range pm.Ranges {
		copy((*buf)[r.Offset:r.Offset+r.Length], raw[:r.Length])
		raw = raw[r.Length:]
	}
	st.Release()
	// The ranges alias the frame: copy them before the next one is read.
	return ap.deliverPatch(ctx, pm.Index, e, buf, append([]transport.PatchRange{}, pm.Ranges...))
}
