package e2e

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"

	"github.com/voldelta/voldelta/agent"
	"github.com/voldelta/voldelta/receiver"
	"github.com/voldelta/voldelta/transport"
)

// receiver.Config.OnApply sees every round that gets to apply: the
// progress it is given ends at what the round's result says, and end is
// called once per round, after the last progress; a refused round never
// reaches it.
func TestOnApplyProgress(t *testing.T) {
	p := newPair(t, pairOpts{})
	p.stop()
	var mu sync.Mutex
	var got []receiver.ApplyProgress
	begun, ended := 0, 0
	ends := make(chan struct{}, 4) // end runs after the agent has its result
	refuse := false
	p.srvCfg.Authorize = func(volume string, _ transport.Identity) error {
		mu.Lock()
		defer mu.Unlock()
		if refuse {
			return errors.New("not now")
		}
		return nil
	}
	p.srvCfg.OnApply = func(volume string, peer transport.Identity) (func(receiver.ApplyProgress), func()) {
		mu.Lock()
		defer mu.Unlock()
		begun++
		return func(pr receiver.ApplyProgress) {
				mu.Lock()
				defer mu.Unlock()
				if ended == begun {
					t.Errorf("progress after the round's end: %+v", pr)
				}
				got = append(got, pr)
			}, func() {
				mu.Lock()
				defer mu.Unlock()
				ended++
				ends <- struct{}{}
			}
	}
	p.start()

	src := filepath.Join(p.dir, "src.img")
	data := randBytes(11, 3<<20)
	writeFile(t, src, data)
	st := p.sync(src, "vol")
	<-ends
	mu.Lock()
	n, e, reports := begun, ended, append([]receiver.ApplyProgress(nil), got...)
	mu.Unlock()
	if n != 1 || e != 1 || len(reports) == 0 {
		t.Fatalf("after a round: OnApply called %d times, end %d times, %d progress reports", n, e, len(reports))
	}
	last := reports[len(reports)-1]
	if !last.Planned || last.SourceBytes != uint64(len(data)) || last.FetchedBytes != last.NeedBytes || last.FetchedBytes != st.BytesSentRaw {
		t.Fatalf("last progress %+v, round sent %d bytes of %d", last, st.BytesSentRaw, len(data))
	}
	assertSame(t, p.targets["vol"], data)

	mu.Lock()
	refuse = true
	mu.Unlock()
	if _, err := agent.Sync(context.Background(), p.options(src, "vol")); remoteCode(err) != transport.ErrCodeForbidden {
		t.Fatalf("refused round: %v", err)
	}
	mu.Lock()
	n, e = begun, ended
	mu.Unlock()
	if n != 1 || e != 1 {
		t.Fatalf("a refused round reached OnApply (%d calls, %d ends)", n, e)
	}
}
