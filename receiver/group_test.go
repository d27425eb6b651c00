package receiver

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/voldelta/voldelta/transport"
)

// TestGroupRecordedWithCommit: a round's group is kept with the generation
// it commits, and a later round without one clears it.
func TestGroupRecordedWithCommit(t *testing.T) {
	src := gen1Source()
	s, m1 := committedWith(t, src, func(c *Config) { c.Groups = true })
	if vs := s.status(); vs.Group != nil {
		t.Fatalf("a round without a group recorded %+v", vs.Group)
	}
	h := hello(m1.Size, m1.Params, "img-2")
	h.Group = &transport.Group{Name: "shop-1a2b", Members: 2, Promote: true}
	a := s.mustDial(h)
	if _, err := a.round(src, m1, sendFull(m1)); err != nil {
		t.Fatal(err)
	}
	a.sess.Close()
	vs := s.status()
	if vs.Generation != 2 || vs.Group == nil || *vs.Group != (Group{Name: "shop-1a2b", Members: 2, Promote: true}) {
		t.Fatalf("after a group round: generation %d, group %+v", vs.Generation, vs.Group)
	}
	a = s.mustDial(hello(m1.Size, m1.Params, "img-3"))
	if _, err := a.round(src, m1, sendFull(m1)); err != nil {
		t.Fatal(err)
	}
	a.sess.Close()
	if vs := s.status(); vs.Generation != 3 || vs.Group != nil {
		t.Fatalf("a round without a group left generation %d with group %+v", vs.Generation, vs.Group)
	}
}

// TestPromoteRefusedWithoutGroups: a receiver that cannot promote refuses
// a Promote round with ERROR 16 before claiming anything, and takes a
// group without Promote.
func TestPromoteRefusedWithoutGroups(t *testing.T) {
	src := gen1Source()
	s, m1 := committed(t, src)
	h := hello(m1.Size, m1.Params, "img-2")
	h.Group = &transport.Group{Name: "g", Members: 2, Promote: true}
	_, err := s.dial(h)
	var re *transport.RemoteError
	if !errors.As(err, &re) || re.Code != transport.ErrCodeGroup || re.Code.Retryable() || !strings.Contains(re.Message, "Kubernetes mode") {
		t.Fatalf("Promote to a standalone receiver answered %v, want ERROR 16 (group refused)", err)
	}
	if vs := s.status(); !vs.Current || vs.Generation != 1 || vs.Incomplete {
		t.Fatalf("a refused HELLO changed the target's state: %+v", vs)
	}
	h.Group.Promote = false
	a := s.mustDial(h)
	if _, err := a.round(src, m1, sendFull(m1)); err != nil {
		t.Fatalf("a group without Promote: %v", err)
	}
	a.sess.Close()
	if vs := s.status(); vs.Generation != 2 || vs.Group == nil || vs.Group.Name != "g" || vs.Group.Promote {
		t.Fatalf("group without Promote: %+v", vs)
	}
}

// TestResolvePromoted: Resolve's ErrPromoted reaches the agent as ERROR
// 15 (promoted), not retryable, and the target is left as it was.
func TestResolvePromoted(t *testing.T) {
	src := gen1Source()
	var promoted atomic.Bool
	s, m1 := committedWith(t, src, func(c *Config) {
		target := c.Targets["vol"]
		c.Targets = nil
		c.Groups = true
		c.Resolve = func(_ context.Context, volume string) (string, error) {
			if promoted.Load() {
				return "", failf(ErrPromoted, "volume %q was promoted with group g: re-arm it to sync again", volume)
			}
			return target, nil
		}
	})
	promoted.Store(true)
	_, err := s.dial(hello(m1.Size, m1.Params, "img-2"))
	var re *transport.RemoteError
	if !errors.As(err, &re) || re.Code != transport.ErrCodePromoted || re.Code.Retryable() || !strings.Contains(re.Message, "re-arm") {
		t.Fatalf("a promoted target answered %v, want ERROR 15 (promoted)", err)
	}
	if vs := s.status(); !vs.Current || vs.Generation != 1 {
		t.Fatalf("a refused HELLO changed the target's state: %+v", vs)
	}
}
