package receiver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/transport"
	"golang.org/x/sys/unix"
)

// VerifyMode says how much of the target is read back before a commit.
type VerifyMode string

// Verify modes.
const (
	// VerifyWritten reads back every range written this session and checks
	// it against the manifest; ranges left in place are trusted from the
	// index, which only holds what was verified before.
	VerifyWritten VerifyMode = "written"
	// VerifyFull re-chunks the whole target and compares its root hash with
	// the agent's.
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
	// Authorize, if set, decides whether a peer may write a volume.
	Authorize func(volume string, peer transport.Identity) error
	// Logger; nil logs nothing.
	Logger *slog.Logger
	// Name identifies this receiver to agents; default the host name.
	Name string
}

// Server accepts sync sessions and applies them to its targets.
type Server struct {
	cfg  Config
	log  *slog.Logger
	mu   sync.Mutex
	busy map[string]bool
	wg   sync.WaitGroup
}

// New checks cfg and prepares the state directory.
func New(cfg Config) (*Server, error) {
	if len(cfg.Targets) == 0 {
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
	if err := cfg.Transport.Validate(); err != nil {
		return nil, err
	}
	switch cfg.Verify {
	case "":
		cfg.Verify = VerifyWritten
	case VerifyWritten, VerifyFull:
	default:
		return nil, fmt.Errorf("verify mode %q: want %q or %q", cfg.Verify, VerifyWritten, VerifyFull)
	}
	if cfg.ApplyBuffer == 0 {
		cfg.ApplyBuffer = 64 << 20
	}
	if cfg.ApplyBuffer < chunk.MaxChunkSize {
		return nil, fmt.Errorf("apply buffer %d is below the largest chunk (%d)", cfg.ApplyBuffer, chunk.MaxChunkSize)
	}
	if cfg.Workers <= 0 {
		cfg.Workers = defaultWorkers()
	}
	if cfg.Name == "" {
		cfg.Name, _ = os.Hostname()
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o755); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	return &Server{cfg: cfg, log: log, busy: make(map[string]bool)}, nil
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
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveConn(ctx, c)
		}()
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
			cancel(errAgentGone)
		case <-ctx.Done():
		}
	}()
	ctrl, err := sess.Accept(ctx)
	if err != nil {
		log.Warn("no control stream", "err", err)
		return
	}
	if err := s.sync(ctx, srvCtx, log, sess, ctrl); err != nil {
		code := transport.ErrCodeApply
		var se *sessionError
		var re *transport.RemoteError
		switch {
		case errors.As(err, &se):
			code = se.code
		case errors.As(err, &re):
			log.Warn("agent ended the session", "err", err)
			return
		case errors.Is(err, transport.ErrProtocol) || errors.Is(err, transport.ErrFrameTooLarge):
			code = transport.ErrCodeProtocol
		case ctx.Err() != nil:
			code = transport.ErrCodeShutdown
		}
		log.Error("sync failed", "err", err)
		ctrl.SendError(code, "%v", err)
		// Give the agent a moment to read the error before the session closes.
		waitCtx, stop := context.WithTimeout(context.Background(), 2*time.Second)
		defer stop()
		select {
		case <-sess.Done():
		case <-waitCtx.Done():
		}
	}
}

var errAgentGone = errors.New("connection to the agent lost")

// lockVolume claims a volume for one session, in this process and, through
// flock(2) on its lock file, against other receivers sharing the state dir.
func (s *Server) lockVolume(vd volumeDir, name string) (func(), error) {
	s.mu.Lock()
	if s.busy[name] {
		s.mu.Unlock()
		return nil, fail(transport.ErrCodeBusy, "volume %q is being synced by another session", name)
	}
	s.busy[name] = true
	s.mu.Unlock()
	unbusy := func() { s.mu.Lock(); delete(s.busy, name); s.mu.Unlock() }
	if err := os.MkdirAll(vd.dir, 0o755); err != nil {
		unbusy()
		return nil, fail(transport.ErrCodeApply, "create state dir: %w", err)
	}
	f, err := os.OpenFile(vd.path("lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		unbusy()
		return nil, fail(transport.ErrCodeApply, "open lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		unbusy()
		return nil, fail(transport.ErrCodeBusy, "volume %q is locked by another receiver process (%s)", name, vd.path("lock"))
	}
	return func() { f.Close(); unbusy() }, nil
}

func (s *Server) volumeDir(name string) volumeDir {
	return volumeDir{dir: filepath.Join(s.cfg.StateDir, name)}
}

// sync runs one session on an accepted control stream. ctx ends with the
// session; srvCtx only with the server, so that a round whose data all
// arrived is committed even if the agent hangs up before the RESULT.
func (s *Server) sync(ctx, srvCtx context.Context, log *slog.Logger, sess *transport.Session, ctrl *transport.Stream) error {
	m, err := ctrl.Recv()
	if err != nil {
		return fmt.Errorf("read HELLO: %w", err)
	}
	hello, ok := m.(transport.Hello)
	if !ok {
		return fail(transport.ErrCodeProtocol, "expected HELLO, got %v", m.FrameType())
	}
	if hello.Version != transport.ProtocolVersion {
		return fail(transport.ErrCodeVersion, "protocol version mismatch: agent speaks %d, receiver speaks %d; run the same voldelta release on both ends",
			hello.Version, transport.ProtocolVersion)
	}
	if err := transport.ValidateVolumeName(hello.Volume); err != nil {
		return fail(transport.ErrCodeUnknown, "%v", err)
	}
	path, ok := s.cfg.Targets[hello.Volume]
	if !ok {
		return fail(transport.ErrCodeUnknown, "no target for volume %q on this receiver (it has: %s)", hello.Volume, strings.Join(s.targetNames(), ", "))
	}
	if err := hello.Params.Validate(); err != nil {
		return fail(transport.ErrCodeParams, "%v", err)
	}
	if hello.Streams < 1 || hello.Streams > 64 {
		return fail(transport.ErrCodeProtocol, "agent announces %d data streams, want 1..64", hello.Streams)
	}
	if s.cfg.Authorize != nil {
		if err := s.cfg.Authorize(hello.Volume, sess.Peer()); err != nil {
			return fail(transport.ErrCodeForbidden, "%v", err)
		}
	}
	log = log.With("volume", hello.Volume, "agent", hello.Agent)
	vd := s.volumeDir(hello.Volume)
	unlock, err := s.lockVolume(vd, hello.Volume)
	if err != nil {
		return err
	}
	defer unlock()

	t, err := openTarget(path)
	if err != nil {
		return fail(transport.ErrCodeApply, "%v", err)
	}
	defer t.Close()
	tsize, err := t.size()
	if err != nil {
		return fail(transport.ErrCodeApply, "%v", err)
	}
	if t.block && tsize < hello.Size {
		return fail(transport.ErrCodeTooSmall, "block device %s holds %d bytes, the source %d: give the target at least the source's size", path, tsize, hello.Size)
	}

	started := time.Now()
	p := &prepared{}
	if err := s.prepare(ctx, log, vd, t, tsize, hello, path, p); err != nil {
		return err
	}
	if err := ctrl.Send(transport.Welcome{Generation: p.st.Generation, Root: p.committedRoot, State: p.welcome, Receiver: s.cfg.Name}); err != nil {
		return err
	}
	log.Info("sync started", "size", hello.Size, "state", p.welcome, "index", p.how, "known_extents", len(p.exts))

	// Grow a file target now; shrink it only after the copies, which may
	// read past the new end.
	idx := newIndex(p.exts)
	if !t.block && tsize < hello.Size {
		if err := t.resize(hello.Size); err != nil {
			return fail(transport.ErrCodeApply, "%v", err)
		}
		idx = newIndex(withZeroTail(idx.live(), tsize, hello.Size))
	}
	j, err := vd.createJournal()
	if err != nil {
		return fail(transport.ErrCodeApply, "%v", err)
	}
	defer j.close()

	a := &applier{log: log, cfg: &s.cfg, t: t, idx: idx, j: j, ctrl: ctrl, params: hello.Params, size: hello.Size}
	events := make(chan event, 4*int(hello.Streams)+4)
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	dec, err := transport.NewDecompressor()
	if err != nil {
		return err
	}
	defer dec.Close()
	go readControl(sctx, ctrl, events)
	go acceptData(sctx, sess, int(hello.Streams), a, dec, events)

	runErr := a.run(sctx, events)
	if runErr != nil {
		// Keep what was written: make it durable and record it, so the
		// next session resumes instead of starting over.
		if err := a.checkpoint(); err != nil {
			log.Warn("checkpoint after failure", "err", err)
		}
		return runErr
	}
	if err := s.commit(srvCtx, log, vd, t, a, p.st, hello, path, sess); err != nil {
		return err
	}
	r := a.result
	log.Info("sync committed", "generation", r.Generation, "root", r.Root.Short(), "skipped", r.Skipped, "copied", r.Copied,
		"fetched", r.Fetched, "zeroed", r.Zeroed, "fetched_bytes", r.FetchBytes, "duration", elapsed(started))
	if err := ctrl.Send(r); err != nil {
		// Committed all the same; the agent learns it in its next round.
		log.Info("generation committed; the result could not be sent (the agent hung up)", "err", err)
		return nil
	}
	// Wait for the agent to hang up, so the RESULT is not lost in a reset.
	select {
	case <-sess.Done():
	case <-time.After(10 * time.Second):
	case <-ctx.Done():
	}
	return nil
}

// readControl forwards the agent's manifest to the applier.
func readControl(ctx context.Context, ctrl *transport.Stream, events chan<- event) {
	send := func(ev event) bool {
		select {
		case events <- ev:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for {
		m, err := ctrl.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = fail(transport.ErrCodeCanceled, "agent closed the control stream before the sync committed")
			} else if ctx.Err() == nil {
				err = fmt.Errorf("control stream: %w", err)
			}
			send(event{err: err})
			return
		}
		switch m := m.(type) {
		case transport.ManifestBatch:
			if !send(event{batch: m.Entries}) {
				return
			}
		case transport.ManifestEnd:
			if !send(event{end: &m}) {
				return
			}
		default:
			send(event{err: fail(transport.ErrCodeProtocol, "unexpected %v on the control stream", m.FrameType())})
			return
		}
	}
}

// acceptData accepts the agent's data streams and reads chunks from each.
func acceptData(ctx context.Context, sess *transport.Session, n int, a *applier, dec *transport.Decompressor, events chan<- event) {
	for k := 0; k < n; k++ {
		st, err := sess.Accept(ctx)
		if err != nil {
			if ctx.Err() == nil {
				select {
				case events <- event{err: fmt.Errorf("accept data stream: %w", err)}:
				case <-ctx.Done():
				}
			}
			return
		}
		go func() {
			if err := readData(ctx, st, a, dec, events); err != nil && ctx.Err() == nil {
				select {
				case events <- event{err: err}:
				case <-ctx.Done():
				}
			}
		}()
	}
}

func readData(ctx context.Context, st *transport.Stream, a *applier, dec *transport.Decompressor, events chan<- event) error {
	defer st.Close()
	m, err := st.Recv()
	if err != nil {
		return fmt.Errorf("data stream: %w", err)
	}
	if _, ok := m.(transport.DataOpen); !ok {
		return fail(transport.ErrCodeProtocol, "data stream starts with %v, want DATA_OPEN", m.FrameType())
	}
	for {
		m, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("data stream: %w", err)
		}
		c, ok := m.(transport.Chunk)
		if !ok {
			return fail(transport.ErrCodeProtocol, "unexpected %v on a data stream", m.FrameType())
		}
		e, ok := a.entry(c.Index)
		if !ok || e.Zero {
			return fail(transport.ErrCodeProtocol, "chunk %d is not a data entry of the manifest", c.Index)
		}
		if uint64(c.RawLen) != e.Length {
			return fail(transport.ErrCodeProtocol, "chunk %d is %d bytes, the manifest says %d", c.Index, c.RawLen, e.Length)
		}
		buf := chunk.GetBuffer(int(e.Length))
		raw, err := dec.Decode(c, *buf)
		if err != nil {
			chunk.PutBuffer(buf)
			return fail(transport.ErrCodeProtocol, "%v", err)
		}
		if c.Codec == transport.CodecRaw {
			copy(*buf, raw)
		}
		if chunk.Sum(*buf) != e.ID {
			chunk.PutBuffer(buf)
			return fail(transport.ErrCodeSourceChange, "chunk %d at offset %d does not hash to %s: the source changed while it was read (sync from a snapshot)", c.Index, e.Offset, e.ID.Short())
		}
		select {
		case events <- event{chunk: &arrived{i: int(c.Index), buf: buf}}:
		case <-ctx.Done():
			chunk.PutBuffer(buf)
			return nil
		}
	}
}
