package receiver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/voldelta/voldelta/transport"
)

// DefaultMaxRounds is Config.MaxRounds' default: a session may carry as
// many rounds at once as a group has members.
const DefaultMaxRounds = transport.MaxSessionRounds

// session serves one agent session: the rounds it carries, each with its
// control stream and the data streams that name it (transport/spec.md,
// "Rounds sharing a session").
type session struct {
	srv  *Server
	sess *transport.Session
	log  *slog.Logger

	mu     sync.Mutex
	rounds map[uint32]*round // by control stream ID
	// shared is set once a WELCOME allowed further rounds on the session;
	// until then it carries one round, as sessions always did.
	shared bool
	ending bool // the accept loop ended: no round starts any more
	// maxStreams is the most data streams a later round may announce: as
	// many as the window budget holds at the window the first round set.
	maxStreams int
	idle       *time.Timer // ends a shared session without rounds
	stop       context.CancelFunc
	wg         sync.WaitGroup
}

// round is one round of a session.
type round struct {
	ctrl  *transport.Stream
	hello transport.Hello
	// data carries the data streams dispatched to the round, or the error
	// that fails it (a stream beyond those HELLO announced).
	data    chan dataStream
	opened  int  // items sent on data, under session.mu
	closed  bool // the round ended; under session.mu
	streams []*transport.Stream
}

type dataStream struct {
	st  *transport.Stream
	err error
}

// serve runs the session until its rounds ended and, for a shared
// session, no new one came for HandshakeTimeout, or until it is lost.
func (ss *session) serve(ctx, srvCtx context.Context) {
	cfg := ss.srv.cfg.Transport
	actx, stop := context.WithTimeout(ctx, cfg.HandshakeTimeout)
	ctrl, err := ss.sess.Accept(actx)
	stop()
	if err != nil {
		ss.log.Warn("no control stream", "err", err, "within", cfg.HandshakeTimeout)
		return
	}
	loopCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	ss.stop = cancel
	ss.idle = time.AfterFunc(time.Hour, ss.idleEnd)
	ss.idle.Stop()
	// The first frame of the first stream is read before any other stream
	// is: its HELLO sets the session's stream window, which yamux reads on
	// every stream read.
	m, err := ctrl.RecvWithin(cfg.HandshakeTimeout, "HELLO after the control stream opened")
	n := transport.MaxDataStreams
	if h, ok := m.(transport.Hello); ok && err == nil && h.Streams >= 1 && int(h.Streams) <= transport.MaxDataStreams {
		n = int(h.Streams)
	}
	ss.sess.LimitStreams(n)
	// A later round may have as many data streams as the first, or as
	// many as fit its own window budget at the window the first set.
	ss.maxStreams = max(n, min(transport.MaxDataStreams, int(cfg.WindowBudget/uint64(ss.sess.StreamWindow()))-1))
	ss.start(ctx, srvCtx, ctrl, m, err)
	if _, ok := m.(transport.Hello); err != nil || !ok {
		// No HELLO: the round only reports the error. No other stream is
		// accepted, so that what the agent opened holds no memory here.
		ss.wg.Wait()
		return
	}
	// Streams whose first frame is being read: as many as yamux's accept
	// backlog, so that a session holds no more of them than before.
	pending := make(chan struct{}, 1+transport.MaxDataStreams)
	for {
		st, err := ss.sess.Accept(loopCtx)
		if err != nil {
			break
		}
		select {
		case pending <- struct{}{}:
		case <-loopCtx.Done():
			st.Abort()
			continue
		}
		go func() {
			defer func() { <-pending }()
			ss.dispatch(ctx, srvCtx, st)
		}()
	}
	ss.mu.Lock()
	ss.ending = true
	ss.mu.Unlock()
	ss.idle.Stop()
	ss.wg.Wait()
}

// idleEnd ends a shared session that carried no round for HandshakeTimeout.
func (ss *session) idleEnd() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if len(ss.rounds) == 0 {
		ss.ending = true
		ss.stop()
	}
}

// dispatch reads a stream's first frame: HELLO starts a round, DATA_OPEN
// joins the round whose control stream it names.
func (ss *session) dispatch(ctx, srvCtx context.Context, st *transport.Stream) {
	m, err := st.RecvWithin(ss.srv.cfg.Transport.HandshakeTimeout, "first frame of a stream")
	if err == nil {
		switch m := m.(type) {
		case transport.Hello:
			ss.start(ctx, srvCtx, st, m, nil)
			return
		case transport.DataOpen:
			ss.route(st, m)
			return
		}
		err = failf(ErrBadInput, "data stream starts with %v, want DATA_OPEN", m.FrameType())
	} else {
		err = fmt.Errorf("data stream: %w", err)
	}
	ss.mu.Lock()
	if r := ss.only(); r != nil && !ss.shared {
		// A session of one round: the stream was that round's, as always.
		ss.push(r, dataStream{err: err})
		ss.mu.Unlock()
		st.Abort()
		return
	}
	ss.mu.Unlock()
	ss.refuseStream(st, transport.ErrCodeProtocol, "stream %d: %v", st.ID(), err)
}

// only returns the session's round if it has exactly one. ss.mu is held.
func (ss *session) only() *round {
	if len(ss.rounds) != 1 {
		return nil
	}
	for _, r := range ss.rounds {
		return r
	}
	return nil
}

// refuseStream answers one stream with ERROR and closes it; the session's
// other streams are not affected.
func (ss *session) refuseStream(st *transport.Stream, code transport.ErrorCode, format string, a ...any) {
	ss.log.Warn("stream refused", "stream", st.ID(), "code", code, "err", fmt.Sprintf(format, a...))
	st.SendError(code, format, a...)
	st.Close()
}

// route hands a data stream to the round its DATA_OPEN names: without
// the trailer, the session's only round.
func (ss *session) route(st *transport.Stream, m transport.DataOpen) {
	ss.mu.Lock()
	var r *round
	if m.Control == 0 {
		r = ss.only()
	} else {
		r = ss.rounds[m.Control]
	}
	if r == nil || r.closed {
		n := len(ss.rounds)
		ss.mu.Unlock()
		if m.Control == 0 {
			ss.refuseStream(st, transport.ErrCodeProtocol, "DATA_OPEN %d names no control stream, but the session carries %d rounds", m.Stream, n)
		} else {
			ss.refuseStream(st, transport.ErrCodeProtocol, "DATA_OPEN %d names control stream %d, which is no round of this session", m.Stream, m.Control)
		}
		return
	}
	defer ss.mu.Unlock()
	if r.opened >= int(r.hello.Streams) {
		if ss.push(r, dataStream{err: failf(ErrBadInput, "agent opened more data streams than the %d its HELLO announced", r.hello.Streams)}) {
			st.Abort()
			return
		}
	}
	if !ss.push(r, dataStream{st: st}) {
		st.Abort()
		return
	}
	r.streams = append(r.streams, st)
}

// push sends d to r unless r's channel is full. ss.mu is held.
func (ss *session) push(r *round, d dataStream) bool {
	select {
	case r.data <- d:
		r.opened++
		return true
	default:
		return false
	}
}

// start registers and runs the round whose HELLO (or failure to read
// one) came on ctrl; beyond the session's rounds it is answered ERROR 4.
func (ss *session) start(ctx, srvCtx context.Context, ctrl *transport.Stream, m transport.Message, err error) {
	ss.mu.Lock()
	limit := 1
	if ss.shared {
		limit = ss.srv.cfg.MaxRounds
	}
	if ss.ending || len(ss.rounds) >= limit {
		n := len(ss.rounds)
		ss.mu.Unlock()
		ss.refuseStream(ctrl, transport.ErrCodeBusy, "receiver %s runs %d rounds on this session, its maximum: open another session", ss.srv.cfg.Name, n)
		return
	}
	r := &round{ctrl: ctrl, data: make(chan dataStream, transport.MaxDataStreams+1)}
	if h, ok := m.(transport.Hello); ok {
		r.hello = h
	}
	ss.rounds[ctrl.ID()] = r
	ss.idle.Stop()
	ss.wg.Add(1)
	ss.mu.Unlock()
	go func() {
		defer ss.wg.Done()
		defer ss.end(r)
		ss.srv.runRound(ctx, srvCtx, ss, r, m, err)
	}()
}

// end removes r from the session and closes its streams; the last round
// of a session of one round ends it, as always.
func (ss *session) end(r *round) {
	ss.mu.Lock()
	r.closed = true
	delete(ss.rounds, r.ctrl.ID())
	if len(ss.rounds) == 0 {
		if ss.shared {
			ss.idle.Reset(ss.srv.cfg.Transport.HandshakeTimeout)
		} else {
			ss.ending = true // before the loop ends: no round may start after
			ss.stop()
		}
	}
	streams := r.streams
	ss.mu.Unlock()
	for _, st := range streams {
		st.Abort()
	}
	for {
		select {
		case d := <-r.data:
			if d.st != nil {
				d.st.Abort()
			}
		default:
			// Abort, not Close: the round's control reader may still be
			// in a Recv, and Close gives back the frame it reads into.
			r.ctrl.Abort()
			return
		}
	}
}

// share marks the session shared, if the receiver allows more than one
// round on a session and the agent asked (HELLO group Share), and returns
// the rounds WELCOME allows: 0 (no trailer) otherwise.
func (ss *session) share(h transport.Hello) uint16 {
	if h.Group == nil || !h.Group.Share || ss.srv.cfg.MaxRounds < 2 {
		return 0
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.shared = true
	return uint16(ss.srv.cfg.MaxRounds)
}

// isShared says whether a WELCOME allowed further rounds on the session.
func (ss *session) isShared() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.shared
}

// runRound runs one round and answers its failure on its control stream.
func (s *Server) runRound(ctx, srvCtx context.Context, ss *session, r *round, m transport.Message, recvErr error) {
	log := ss.log
	if ss.isShared() {
		log = log.With("control_stream", r.ctrl.ID())
	}
	err := s.sync(ctx, srvCtx, log, ss, r, m, recvErr)
	if err == nil {
		return
	}
	var re *transport.RemoteError
	if errors.As(err, &re) {
		log.Warn("agent ended the round", "err", err)
		return
	}
	log.Error("sync failed", "err", err)
	r.ctrl.SendError(errorCode(ctx, err), "%v", err)
	if ss.isShared() {
		return // the other rounds go on; the control stream is closed
	}
	// Give the agent a moment to read the error before the session closes.
	waitCtx, stop := context.WithTimeout(context.Background(), 2*time.Second)
	defer stop()
	select {
	case <-ss.sess.Done():
	case <-waitCtx.Done():
	}
}
