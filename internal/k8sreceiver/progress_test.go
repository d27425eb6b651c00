package k8sreceiver

import (
	"bytes"
	"math/rand/v2"
	"testing"
	"time"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/receiver"
)

// targetProgress: the rate is what was fetched since the pull began; the
// ETA is known only once the plan is complete and something moved.
func TestTargetProgress(t *testing.T) {
	start := time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC)
	now := start.Add(4 * time.Second)
	pr := receiver.ApplyProgress{SourceBytes: 1000, NeedBytes: 600, FetchedBytes: 200, CopiedBytes: 50}
	tp := targetProgress(pr, start, now)
	if tp.BytesPerSecond != 50 || tp.ETA != nil || tp.SourceBytes != 1000 || tp.NeededBytes != 600 || tp.FetchedBytes != 200 ||
		tp.CopiedBytes != 50 || !tp.StartTime.Time.Equal(start) || !tp.UpdateTime.Time.Equal(now) {
		t.Fatalf("while planning: %+v", tp)
	}
	pr.Planned = true
	if tp := targetProgress(pr, start, now); tp.ETA == nil || tp.ETA.Duration != 8*time.Second {
		t.Fatalf("planned: %+v", tp)
	}
	pr.FetchedBytes = 600
	if tp := targetProgress(pr, start, now); tp.ETA == nil || tp.ETA.Duration != 0 {
		t.Fatalf("all fetched: %+v", tp)
	}
	pr.FetchedBytes, pr.NeedBytes = 0, 0 // nothing to fetch: done
	if tp := targetProgress(pr, start, start); tp.ETA == nil || tp.ETA.Duration != 0 || tp.BytesPerSecond != 0 {
		t.Fatalf("nothing to fetch: %+v", tp)
	}
}

// While a store target pulls, status.progress says how far it got (held
// mid-pull here until the test saw it); after the commit it is gone.
func TestStoreTargetPullProgress(t *testing.T) {
	f, s, clk := storeFixture(t, storeTarget("replica", "shop-db", "", "s3://replicas/prod", "s3"))
	f.tg.o.ProgressInterval = 10 * time.Millisecond
	data := make([]byte, 4<<20)
	rand.NewChaCha8([32]byte{9}).Read(data)
	pushBytes(t, s, "shop-db", data)

	blocked, release := make(chan receiver.ApplyProgress), make(chan struct{})
	held := false
	f.tg.o.Apply.Progress = func(p receiver.ApplyProgress) {
		if held || p.FetchedBytes == 0 {
			return
		}
		held = true
		blocked <- p
		<-release
	}
	clk.Step(time.Hour)
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.reconcile("replica")
	}()
	at := <-blocked
	clk.Step(2 * time.Second)
	var seen *v1alpha1.TargetProgress
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if p := f.get("replica").Status.Progress; p != nil && p.UpdateTime.Time.Equal(clk.Now()) {
			seen = p
			break
		}
	}
	close(release)
	<-done
	if seen == nil {
		t.Fatal("no status.progress while the pull was held")
	}
	if seen.SourceBytes != int64(len(data)) || seen.FetchedBytes != int64(at.FetchedBytes) || seen.NeededBytes < seen.FetchedBytes ||
		seen.BytesPerSecond != seen.FetchedBytes/2 || !seen.StartTime.Time.Equal(clk.Now().Add(-2*time.Second)) {
		t.Fatalf("status.progress mid-pull %+v, the apply reported %+v", seen, at)
	}
	vt := f.get("replica")
	if vt.Status.Progress != nil || vt.Status.Generation != 1 || !bytes.Equal(f.device(), data) {
		t.Fatalf("after the pull: progress %+v, generation %d", vt.Status.Progress, vt.Status.Generation)
	}
}
