package k8sagent

import (
	"testing"
	"time"

	"github.com/voldelta/voldelta/agent"
)

// roundProgress: the rate is what was sent since the round began; the ETA
// is known only once the scan is done (the needed bytes are final) and
// something was sent.
func TestRoundProgress(t *testing.T) {
	start := time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC)
	now := start.Add(2 * time.Second)
	pr := agent.Progress{SourceBytes: 4096, ScannedBytes: 2048, NeedBytes: 1024, SentBytes: 512}
	p := roundProgress(pr, start, now)
	if p.BytesPerSecond != 256 || p.ETA != nil || p.ScanDone || p.StartTime == nil || !p.StartTime.Time.Equal(start) ||
		!p.UpdateTime.Time.Equal(now) || p.SourceBytes != 4096 || p.ScannedBytes != 2048 || p.NeededBytes != 1024 || p.SentBytes != 512 {
		t.Fatalf("while scanning: %+v", p)
	}
	pr.ScanDone, pr.ScannedBytes = true, 4096
	if p := roundProgress(pr, start, now); p.ETA == nil || p.ETA.Duration != 2*time.Second || !p.ScanDone {
		t.Fatalf("scan done: %+v", p)
	}
	pr.SentBytes = 1024
	if p := roundProgress(pr, start, now); p.ETA == nil || p.ETA.Duration != 0 {
		t.Fatalf("all sent: %+v", p)
	}
}
