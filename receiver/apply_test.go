package receiver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/voldelta/voldelta/chunk"
)

const MiB = 1 << 20

func randBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	var s [32]byte
	s[0], s[1] = byte(seed), byte(seed>>8)
	rand.NewChaCha8(s).Read(b)
	return b
}

// smallParams gives many chunks on small volumes.
func smallParams() chunk.Params {
	p := chunk.DefaultParams()
	p.MinSize, p.AvgSize, p.MaxSize, p.SegmentSize = 16<<10, 64<<10, 256<<10, 4<<20
	return p
}

type harness struct {
	t       *testing.T
	vol     Volume
	opt     Options
	fetched atomic.Int64
}

func newHarness(t *testing.T, path string) *harness {
	dir := t.TempDir()
	if path == "" {
		path = filepath.Join(dir, "target.img")
	}
	return &harness{t: t, vol: Volume{Name: "vol", Path: path, StateDir: filepath.Join(dir, "state")}}
}

// apply syncs src into the target in process, fetching from src.
func (h *harness) apply(src []byte, p chunk.Params) (Result, Previous, error) {
	h.t.Helper()
	m, _, err := chunk.ScanManifest(context.Background(), bytes.NewReader(src), uint64(len(src)), p, chunk.ScanOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	return ApplyManifest(context.Background(), h.vol, h.opt, m, "test", 3, func(_ context.Context, _ int, e chunk.Entry) ([]byte, error) {
		h.fetched.Add(1)
		return src[e.Offset:e.End()], nil
	})
}

func (h *harness) mustApply(src []byte, p chunk.Params) Result {
	h.t.Helper()
	r, _, err := h.apply(src, p)
	if err != nil {
		h.t.Fatalf("apply: %v", err)
	}
	h.assertTarget(src)
	return r
}

func (h *harness) assertTarget(want []byte) {
	h.t.Helper()
	got, err := os.ReadFile(h.vol.Path)
	if err != nil {
		h.t.Fatal(err)
	}
	if !bytes.Equal(got[:min(len(got), len(want))], want) || (len(got) != len(want) && !isBlock(h.vol.Path)) {
		h.t.Fatalf("target differs from the source (%d vs %d bytes)", len(got), len(want))
	}
}

func isBlock(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode()&os.ModeDevice != 0
}

func swap(b []byte, a, c, n int) {
	tmp := append([]byte{}, b[a:a+n]...)
	copy(b[a:], b[c:c+n])
	copy(b[c:], tmp)
}

// TestCopyCycles: swapping regions makes every copy wait for another; with
// room to buffer, all of it is copied locally; with no room, cycles are
// broken by fetching, and the result is identical either way.
func TestCopyCycles(t *testing.T) {
	for _, tc := range []struct {
		name    string
		buffer  int64
		fetched func(r Result) bool
	}{
		{"buffered", 64 * MiB, func(r Result) bool { return r.Fetched <= 8 }},
		{"no room", 1, func(r Result) bool { return r.Fetched > 0 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, "")
			h.opt.ApplyBuffer = tc.buffer
			p := smallParams()
			// Two segments' worth swapped: the chunks of each half are found in the other.
			src := randBytes(1, 16*MiB)
			h.mustApply(src, p)
			swap(src, 0, 8*MiB, 8*MiB)
			r := h.mustApply(src, p)
			t.Logf("swap: copied %d, fetched %d, skipped %d", r.Copied, r.Fetched, r.Skipped)
			if r.Copied == 0 || !tc.fetched(r) {
				t.Fatalf("swap with a %d-byte buffer: copied %d, fetched %d", tc.buffer, r.Copied, r.Fetched)
			}
		})
	}
}

// TestSmallShift: inserting a few bytes shifts every later chunk by less
// than its own length, so sources and destinations overlap.
func TestSmallShift(t *testing.T) {
	h := newHarness(t, "")
	p := smallParams()
	src := randBytes(2, 12*MiB)
	h.mustApply(src, p)
	src = append(append(append([]byte{}, src[:1000]...), randBytes(3, 4096)...), src[1000:]...)
	r := h.mustApply(src, p)
	if r.Copied == 0 || r.FetchBytes > 4*MiB {
		t.Fatalf("4 KiB insertion: copied %d, fetched %d bytes", r.Copied, r.FetchBytes)
	}
}

// TestDuplicatesAndZeros: repeated content and zero runs.
func TestDuplicatesAndZeros(t *testing.T) {
	h := newHarness(t, "")
	p := smallParams()
	block := randBytes(4, MiB)
	var src []byte
	for i := 0; i < 6; i++ {
		src = append(src, block...)
		src = append(src, make([]byte, 3*MiB)...)
	}
	h.mustApply(src, p)
	clear(src[:MiB])
	copy(src[2*MiB:], block)
	h.mustApply(src, p)
}

// TestResumeAfterFailedFetch: an apply that fails half way leaves the
// target incomplete; the next one fetches only what is missing.
func TestResumeAfterFailedFetch(t *testing.T) {
	h := newHarness(t, "")
	p := smallParams()
	src := randBytes(5, 20*MiB)
	m, _, err := chunk.ScanManifest(context.Background(), bytes.NewReader(src), uint64(len(src)), p, chunk.ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	errDown := errors.New("store unreachable")
	_, _, err = ApplyManifest(context.Background(), h.vol, h.opt, m, "test", 2, func(_ context.Context, _ int, e chunk.Entry) ([]byte, error) {
		if n.Add(1) > int64(len(m.Entries)/2) {
			return nil, errDown
		}
		return src[e.Offset:e.End()], nil
	})
	if !errors.Is(err, errDown) {
		t.Fatalf("want the fetch error, got %v", err)
	}
	vs, err := ReadStatus(h.vol.StateDir, "vol")
	if err != nil || vs.Current || !vs.Incomplete {
		t.Fatalf("after a failed apply: %+v, %v", vs, err)
	}
	r, prev, err := h.apply(src, p)
	if err != nil {
		t.Fatal(err)
	}
	h.assertTarget(src)
	// Slack: chunks fetched but still queued for the apply (its event queue
	// and the two fetchers) when the failure ended it are fetched again.
	if !prev.Incomplete || r.Fetched == 0 || r.Fetched > uint64(len(m.Entries))/2+24 {
		t.Fatalf("resume: previous %+v, fetched %d of %d", prev, r.Fetched, len(m.Entries))
	}
}

// TestChangedParamsRescans: other chunk parameters make the index useless,
// so the target is rescanned, and still nothing unchanged is fetched
// (the rescan finds it in place).
func TestChangedParamsRescans(t *testing.T) {
	h := newHarness(t, "")
	src := randBytes(6, 10*MiB)
	h.mustApply(src, smallParams())
	h.fetched.Store(0)
	r := h.mustApply(src, chunk.DefaultParams())
	if r.Fetched != 0 {
		t.Fatalf("rescanned identical target still fetched %d chunks", r.Fetched)
	}
}

func TestBusy(t *testing.T) {
	h := newHarness(t, "")
	ap, err := Begin(context.Background(), h.vol, h.opt, Header{Size: 10, Params: smallParams()})
	if err != nil {
		t.Fatal(err)
	}
	defer ap.Close()
	if _, err := Begin(context.Background(), h.vol, h.opt, Header{Size: 10, Params: smallParams()}); !errors.Is(err, ErrBusy) {
		t.Fatalf("second Begin on a busy volume: %v", err)
	}
}

func TestBadManifestRefused(t *testing.T) {
	h := newHarness(t, "")
	ap, err := Begin(context.Background(), h.vol, h.opt, Header{Size: 100, Params: smallParams()})
	if err != nil {
		t.Fatal(err)
	}
	defer ap.Close()
	ctx := context.Background()
	go func() {
		ap.AddManifest(ctx, []chunk.Entry{{Offset: 0, Length: 60, ID: chunk.ID{1}}, {Offset: 70, Length: 30, ID: chunk.ID{2}}})
	}()
	if err := ap.Run(ctx, newFetchPool(ctx, ap, 1, nil)); !errors.Is(err, ErrBadInput) {
		t.Fatalf("manifest with a gap: %v", err)
	}
}

func TestIndex(t *testing.T) {
	x := newIndex([]chunk.Entry{
		{Offset: 0, Length: 100, ID: chunk.ID{1}},
		{Offset: 100, Length: 50, Zero: true},
		{Offset: 150, Length: 50, Zero: true},
		{Offset: 200, Length: 100, ID: chunk.ID{2}},
	})
	cases := []struct {
		e    chunk.Entry
		want bool
	}{
		{chunk.Entry{Offset: 0, Length: 100, ID: chunk.ID{1}}, true},
		{chunk.Entry{Offset: 0, Length: 100, ID: chunk.ID{2}}, false},
		{chunk.Entry{Offset: 100, Length: 100, Zero: true}, true},
		{chunk.Entry{Offset: 120, Length: 60, Zero: true}, true},
		{chunk.Entry{Offset: 120, Length: 100, Zero: true}, false},
	}
	for _, c := range cases {
		if got := x.inPlace(c.e); got != c.want {
			t.Errorf("inPlace(%v) = %v", c.e, got)
		}
	}
	if off, ok := x.source(chunk.Entry{Length: 100, ID: chunk.ID{2}}); !ok || off != 200 {
		t.Errorf("source = %d, %v", off, ok)
	}
	x.clobber(250, 1)
	if _, ok := x.source(chunk.Entry{Length: 100, ID: chunk.ID{2}}); ok {
		t.Error("clobbered extent still a source")
	}
	x.clobber(149, 2)
	if x.inPlace(chunk.Entry{Offset: 100, Length: 100, Zero: true}) {
		t.Error("clobbered zero run still in place")
	}
	if !x.hasData() {
		t.Error("hasData false with a live data extent")
	}
	x.clobber(0, 1)
	if x.hasData() {
		t.Error("hasData true after clobbering all data")
	}
}

func TestJournalTornRecord(t *testing.T) {
	vd := volumeDir{dir: t.TempDir()}
	j, err := vd.createJournal()
	if err != nil {
		t.Fatal(err)
	}
	j.add(recIntent, chunk.Entry{Offset: 1, Length: 2, ID: chunk.ID{9}})
	j.add(recDone, chunk.Entry{Offset: 1, Length: 2, ID: chunk.ID{9}})
	j.add(recIntent, chunk.Entry{Offset: 3, Length: 4, ID: chunk.ID{8}})
	if err := j.flush(); err != nil {
		t.Fatal(err)
	}
	j.close()
	// Tear the last record.
	path := vd.path(journalName)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, fi.Size()-5); err != nil {
		t.Fatal(err)
	}
	intents, done, err := vd.readJournal()
	if err != nil || len(intents) != 1 || len(done) != 1 || intents[0].Offset != 1 {
		t.Fatalf("journal: %v %v %v", intents, done, err)
	}
}

func TestStateAtomicAndStatus(t *testing.T) {
	h := newHarness(t, "")
	src := randBytes(7, 3*MiB)
	h.mustApply(src, smallParams())
	vs, err := ReadStatus(h.vol.StateDir, "vol")
	if err != nil || !vs.Current || vs.Generation != 1 || vs.CommittedAt == nil {
		t.Fatalf("status %+v %v", vs, err)
	}
	list, err := ListStatus(h.vol.StateDir)
	if err != nil || len(list) != 1 {
		t.Fatalf("list %v %v", list, err)
	}
	leftovers, err := filepath.Glob(filepath.Join(h.vol.StateDir, "vol", ".*tmp*"))
	if err != nil || len(leftovers) != 0 {
		t.Fatalf("temporary files left: %v", leftovers)
	}
	if _, err := ReadStatus(h.vol.StateDir, "../x"); err == nil {
		t.Fatal("invalid volume name accepted")
	}
}

// loopDevice attaches a loop device of size bytes backed by a temp file and
// detaches it (by name) at the end of the test.
func loopDevice(t *testing.T, size int64) string {
	t.Helper()
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Fatal("losetup not found: install util-linux (apt-get install util-linux); the block-device tests need loop devices and root")
	}
	backing := filepath.Join(t.TempDir(), "loop.img")
	if err := os.WriteFile(backing, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(backing, size); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "-f", "--show", backing).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup -f --show: %v: %s (the block-device tests need root and loop devices)", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	return dev
}

// writeDevice writes data at off into the block device dev, as a program
// other than voldelta would, and closes it (the last close flushes it).
func writeDevice(t *testing.T, dev string, data []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(data, off); err != nil {
		f.Close()
		t.Fatalf("write %d bytes at %d into %s: %v", len(data), off, dev, err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("close %s: %v", dev, err)
	}
}

func TestBlockDeviceTarget(t *testing.T) {
	p := smallParams()
	t.Run("too small", func(t *testing.T) {
		dev := loopDevice(t, 4*MiB)
		marker := randBytes(8, 4*MiB)
		writeDevice(t, dev, marker, 0)
		h := newHarness(t, dev)
		_, _, err := h.apply(randBytes(9, 6*MiB), p)
		if !errors.Is(err, ErrTooSmall) {
			t.Fatalf("6 MiB into a 4 MiB device: %v", err)
		}
		got, err := os.ReadFile(dev)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, marker) {
			t.Fatal("refused sync wrote to the device")
		}
	})
	t.Run("larger device", func(t *testing.T) {
		dev := loopDevice(t, 16*MiB)
		tail := randBytes(10, 4*MiB)
		writeDevice(t, dev, tail, 12*MiB)
		h := newHarness(t, dev)
		src := randBytes(11, 10*MiB)
		clear(src[2*MiB : 5*MiB])
		h.mustApply(src, p)
		copy(src[7*MiB:], randBytes(12, 100))
		r := h.mustApply(src, p)
		if r.Fetched == 0 || r.Fetched > 3 {
			t.Fatalf("second apply fetched %d chunks for a 100-byte change", r.Fetched)
		}
		got, err := os.ReadFile(dev)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got[12*MiB:], tail) {
			t.Fatal("bytes past the source's size were changed")
		}
		// A change behind voldelta's back is caught by the device's write
		// counters (its fingerprint), and the round re-indexes the target
		// by reading it. The change overwrote the whole source range with
		// other random bytes, so nothing of the manifest is in place or
		// anywhere else in the target: every data chunk (96 with these
		// bytes and params: 7 MiB of data, the 3 MiB zero run is one
		// entry) is fetched again and every zero run rewritten.
		m, _, err := chunk.ScanManifest(context.Background(), bytes.NewReader(src), uint64(len(src)), p, chunk.ScanOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var data, zeros uint64
		for _, e := range m.Entries {
			if e.Zero {
				zeros++
			} else {
				data++
			}
		}
		if data < 16 || zeros == 0 {
			t.Fatalf("the source has %d data chunks and %d zero runs; the test wants more than 16 and some", data, zeros)
		}
		writeDevice(t, dev, randBytes(13, 10*MiB), 0)
		r = h.mustApply(src, p)
		t.Logf("after the outside write: %+v (%d data chunks, %d zero runs)", r, data, zeros)
		if r.Fetched != data || r.Zeroed != zeros || r.Copied != 0 || r.Skipped != 0 {
			t.Fatalf("after the outside write: fetched %d of %d data chunks, zeroed %d of %d zero runs, copied %d, skipped %d; want every chunk fetched and every zero run written",
				r.Fetched, data, r.Zeroed, zeros, r.Copied, r.Skipped)
		}
	})
}

func TestManyVolumesNamesInStateDir(t *testing.T) {
	dir := t.TempDir()
	for i := 0; i < 3; i++ {
		h := &harness{t: t, vol: Volume{Name: fmt.Sprintf("v%d", i), Path: filepath.Join(dir, fmt.Sprintf("t%d", i)), StateDir: filepath.Join(dir, "state")}}
		h.mustApply(randBytes(uint64(20+i), MiB), smallParams())
	}
	list, err := ListStatus(filepath.Join(dir, "state"))
	if err != nil || len(list) != 3 {
		t.Fatalf("%d volumes listed, %v", len(list), err)
	}
}
