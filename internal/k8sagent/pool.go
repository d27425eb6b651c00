package k8sagent

import (
	"context"
	"sync"

	"github.com/voldelta/voldelta/agent"
	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/transport"
)

// poolKey names the rounds that may share a session: those of one group
// (spec.group) to one receiver address with one TLS Secret.
type poolKey struct {
	addr   string
	secret string // namespace/name of the TLS Secret
	group  string
}

// sessionKey is the pool key of a round of vs to addr in group.
func sessionKey(vs *v1alpha1.VolumeSync, addr, group string) poolKey {
	return poolKey{addr: addr, secret: vs.Namespace + "/" + vs.Spec.Destination.TLSSecretName, group: group}
}

// sessionPool lets the rounds of a group share one session to their
// receiver (transport/spec.md, "Rounds sharing a session"), so that they
// run concurrently under one bandwidth limit: the limit of the round that
// opened the session, which the Migration controller sets alike on every
// member. A session is refcounted by the rounds using or waiting for it and
// closed when the last one ends. The first round on a new session learns
// from its WELCOME how many rounds the receiver runs on it; the others wait
// for that answer and run beside it, or, when the receiver takes no more
// (or is of a build that does not share sessions), over a session of their
// own, as every round did before.
type sessionPool struct {
	dial   func(ctx context.Context, addr string, cfg transport.Config) (*transport.Session, error)
	syncOn func(ctx context.Context, sess *transport.Session, opt agent.Options) (*agent.Stats, error)
	sync   SyncFunc

	mu      sync.Mutex
	entries map[poolKey]*pooledSession
}

// pooledSession is one shared session; its fields but ready are under
// sessionPool.mu.
type pooledSession struct {
	sess *transport.Session // nil until dialled, and if the dial failed
	// ready is closed once the first round's WELCOME said how many rounds
	// the session takes (allowed), or the first round ended without one.
	ready   chan struct{}
	once    sync.Once
	allowed int
	active  int // rounds running on the session
	holders int // rounds running on or waiting for it
}

func newSessionPool() *sessionPool {
	return &sessionPool{dial: transport.Dial, syncOn: agent.SyncOn, sync: agent.Sync, entries: map[poolKey]*pooledSession{}}
}

// run runs one round of key's group, on the group's session if it has one
// with room.
func (p *sessionPool) run(ctx context.Context, key poolKey, opt agent.Options) (*agent.Stats, error) {
	e, lead := p.acquire(key)
	joined := lead
	defer func() { p.release(key, e, joined) }()
	if lead {
		return p.lead(ctx, e, opt)
	}
	select {
	case <-e.ready:
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
	if joined = p.join(e); !joined {
		return p.sync(ctx, opt)
	}
	return p.syncOn(ctx, e.sess, opt)
}

// acquire returns key's session, a new one (lead: the caller dials it)
// if there is none or it ended.
func (p *sessionPool) acquire(key poolKey) (e *pooledSession, lead bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e = p.entries[key]
	if e != nil && e.sess != nil && !ended(e.sess) {
		e.holders++
		return e, false
	}
	if e != nil && e.sess == nil && e.holders > 0 {
		e.holders++ // being dialled: wait for its first WELCOME
		return e, false
	}
	e = &pooledSession{ready: make(chan struct{}), holders: 1, active: 1}
	p.entries[key] = e
	return e, true
}

func ended(s *transport.Session) bool {
	select {
	case <-s.Done():
		return true
	default:
		return false
	}
}

// lead dials e's session and runs the first round on it.
func (p *sessionPool) lead(ctx context.Context, e *pooledSession, opt agent.Options) (*agent.Stats, error) {
	defer e.once.Do(func() { close(e.ready) })
	sess, err := p.dial(ctx, opt.Addr, opt.Transport)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	e.sess = sess
	p.mu.Unlock()
	welcome := opt.OnWelcome
	opt.OnWelcome = func(rounds int) {
		p.mu.Lock()
		e.allowed = rounds
		p.mu.Unlock()
		e.once.Do(func() { close(e.ready) })
		if welcome != nil {
			welcome(rounds)
		}
	}
	return p.syncOn(ctx, sess, opt)
}

// join takes a place on e's session, if it is up and has one free.
func (p *sessionPool) join(e *pooledSession) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e.sess == nil || ended(e.sess) || e.active >= e.allowed {
		return false
	}
	e.active++
	return true
}

// release ends a round's hold on e (joined: it ran on e's session); the
// last one closes the session.
func (p *sessionPool) release(key poolKey, e *pooledSession, joined bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e.holders--
	if joined {
		e.active--
	}
	if e.holders > 0 {
		return
	}
	if p.entries[key] == e {
		delete(p.entries, key)
	}
	if e.sess != nil {
		e.sess.Close()
	}
}
