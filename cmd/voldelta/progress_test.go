package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/voldelta/voldelta/agent"
	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/internal/miniotest"
	"github.com/voldelta/voldelta/objstore"
)

// The bar follows the scan, then the transfer; reports from several
// goroutines (a push's uploads) and late scan reports keep it consistent.
func TestSendBar(t *testing.T) {
	b := newSendBar(phasesUpload)
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

// fakeClock is a settable clock for jsonProgress.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

// The JSON lines name the phase, and estimate the time left in it from
// the rate since it began: the scan from the source's size, the transfer
// once its total is known.
func TestJSONProgressLines(t *testing.T) {
	clk := &fakeClock{t: time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC)}
	var buf bytes.Buffer
	j := newJSONProgress(&buf, time.Hour, phasesSend, clk.now) // lines only when asked
	eta := func(l progressLine) float64 {
		t.Helper()
		if l.ETASeconds == nil {
			t.Fatalf("no ETA in %+v", l)
		}
		return *l.ETASeconds
	}

	clk.t = clk.t.Add(2 * time.Second)
	j.update(agent.Progress{SourceBytes: 1000, ScannedBytes: 250, NeedBytes: 100, SentBytes: 40})
	l := j.line(clk.t)
	if l.Phase != "scan" || l.Percent != 25 || l.BytesPerSecond != 125 || eta(l) != 6 || l.TotalBytes != 100 || l.DoneBytes != 40 {
		t.Fatalf("while scanning: %+v (eta %v)", l, eta(l))
	}

	j.update(agent.Progress{SourceBytes: 1000, ScannedBytes: 1000, ScanDone: true, NeedBytes: 400, SentBytes: 40})
	clk.t = clk.t.Add(4 * time.Second)
	j.update(agent.Progress{SourceBytes: 1000, ScannedBytes: 1000, ScanDone: true, NeedBytes: 400, SentBytes: 200})
	j.update(agent.Progress{SourceBytes: 1000, ScannedBytes: 900}) // late scan report: ignored
	l = j.line(clk.t)
	if l.Phase != "send" || l.Percent != 50 || l.BytesPerSecond != 50 || eta(l) != 4 || l.ElapsedSeconds != 6 {
		t.Fatalf("while sending: %+v (eta %v)", l, eta(l))
	}

	fresh := newJSONProgress(&buf, time.Hour, phasesSend, clk.now)
	if l := fresh.line(clk.t); l.ETASeconds != nil {
		t.Fatalf("an ETA before anything moved: %+v", l)
	}
	fresh.finish()

	buf.Reset()
	j.update(agent.Progress{SourceBytes: 1000, ScannedBytes: 1000, ScanDone: true, NeedBytes: 400, SentBytes: 400})
	j.finish()
	lines := decodeProgress(t, &buf)
	if len(lines) != 1 || !lines[0].Done || lines[0].Percent != 100 || eta(lines[0]) != 0 {
		t.Fatalf("final lines: %+v", lines)
	}
}

// decodeProgress reads --progress json lines.
func decodeProgress(t *testing.T, r io.Reader) []progressLine {
	t.Helper()
	var out []progressLine
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		var l progressLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("progress line %q: %v", sc.Text(), err)
		}
		out = append(out, l)
	}
	return out
}

// runPush and runPull, as the commands call them, with --progress json
// against a real MinIO: the last line of each says done and accounts for
// exactly what the statistics say moved; a pull onto a warm target reports
// only the changed chunks.
func TestPushPullProgressJSON(t *testing.T) {
	srv, err := miniotest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	cl, err := srv.Client()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := cl.MakeBucket(ctx, "progress", minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	s, err := objstore.Open(ctx, objstore.Config{Endpoint: srv.Endpoint, Insecure: true, Bucket: "progress", Prefix: "vd",
		Creds: miniotest.Creds()})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "src.img")
	data := make([]byte, 8<<20)
	rand.NewChaCha8([32]byte{1}).Read(data[:6<<20]) // the last 2 MiB zero
	if err := os.WriteFile(img, data, 0o644); err != nil {
		t.Fatal(err)
	}
	p := chunk.DefaultParams().WithSizes(16<<10, 64<<10, 256<<10)
	p.SegmentSize = 1 << 20
	clk := &fakeClock{t: time.Now()}

	push := func() *objstore.PushStats {
		t.Helper()
		var buf bytes.Buffer
		o := pushOptions{Source: img, Quiet: true, Progress: newJSONProgress(&buf, time.Hour, phasesUpload, clk.now),
			Push: objstore.PushOptions{Volume: "vol", Params: p, Grace: objstore.DefaultGrace}}
		st, err := runPush(ctx, s, o, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		last := lastLine(t, &buf)
		if last.Phase != "upload" || last.DoneBytes != st.BytesUploadedRaw || last.TotalBytes != st.BytesUploadedRaw {
			t.Fatalf("push progress %+v, stats uploaded %d raw bytes", last, st.BytesUploadedRaw)
		}
		return st
	}
	pull := func() *objstore.PullStats {
		t.Helper()
		var buf, summary bytes.Buffer
		o := pullOptions{Progress: newJSONProgress(&buf, time.Hour, phasesPull, clk.now),
			Pull: objstore.PullOptions{Volume: "vol", Target: filepath.Join(dir, "replica.img"), StateDir: filepath.Join(dir, "state")}}
		st, err := runPull(ctx, s, o, &summary)
		if err != nil {
			t.Fatal(err)
		}
		last := lastLine(t, &buf)
		if last.Phase != "fetch" || last.DoneBytes != st.BytesFetchedRaw || last.TotalBytes != st.BytesFetchedRaw || last.SourceBytes != uint64(len(data)) {
			t.Fatalf("pull progress %+v, stats fetched %d raw bytes", last, st.BytesFetchedRaw)
		}
		if !strings.Contains(summary.String(), "applied to") {
			t.Fatalf("pull summary: %q", summary.String())
		}
		return st
	}

	push()
	cold := pull()
	if cold.BytesFetchedRaw != 6<<20 {
		t.Fatalf("cold pull fetched %d bytes, want the 6 MiB of data", cold.BytesFetchedRaw)
	}
	copy(data[3<<20:], bytes.Repeat([]byte{0xaa}, 64<<10))
	if err := os.WriteFile(img, data, 0o644); err != nil {
		t.Fatal(err)
	}
	push()
	warm := pull()
	if warm.BytesFetchedRaw == 0 || warm.BytesFetchedRaw > 1<<20 {
		t.Fatalf("warm pull fetched %d bytes for a 64 KiB change", warm.BytesFetchedRaw)
	}
}

func lastLine(t *testing.T, r io.Reader) progressLine {
	t.Helper()
	lines := decodeProgress(t, r)
	if len(lines) == 0 || !lines[len(lines)-1].Done {
		t.Fatalf("progress lines %+v: want a final line with done", lines)
	}
	return lines[len(lines)-1]
}
