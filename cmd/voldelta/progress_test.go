package main

import (
	"sync"
	"testing"

	"github.com/voldelta/voldelta/agent"
)

// The bar follows the scan, then the transfer; reports from several
// goroutines (a push's uploads) and late scan reports keep it consistent.
func TestSendBar(t *testing.T) {
	b := newSendBar("upload")
	b.update(agent.Progress{SourceBytes: 1000, ScannedBytes: 400})
	if st := b.bar.State(); st.Max != 1000 || st.CurrentNum != 400 || st.Description != "scan (upload 0 B)" {
		t.Fatalf("while scanning: %+v", st)
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.update(agent.Progress{SourceBytes: 1000, ScannedBytes: 1000, ScanDone: true, NeedBytes: 800, SentBytes: uint64(100 * (i + 1))})
		}()
	}
	wg.Wait()
	b.update(agent.Progress{SourceBytes: 1000, ScannedBytes: 900}) // late: ignored
	st := b.bar.State()
	if st.Max != 800 || st.Description != "upload" || st.CurrentNum < 100 || st.CurrentNum > 800 {
		t.Fatalf("while uploading: %+v", st)
	}
	b.update(agent.Progress{SourceBytes: 1000, ScannedBytes: 1000, ScanDone: true, NeedBytes: 800, SentBytes: 800})
	if st := b.bar.State(); st.CurrentNum != 800 {
		t.Fatalf("at the end: %+v", st)
	}
	b.finish()
}
