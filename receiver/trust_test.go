package receiver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/voldelta/voldelta/chunk"
	"golang.org/x/sys/unix"
)

// These tests pin the receiver's one promise: a target is reported current
// only when its bytes are the source's. Each starts from something the
// receiver carries from before (index, journal, state, fingerprint) going
// wrong behind its back.

// interrupt runs an apply of src that fails after about frac of its
// chunks were fetched, leaving the target incomplete.
func (h *harness) interrupt(src []byte, p chunk.Params, frac float64) {
	h.t.Helper()
	m, _, err := chunk.ScanManifest(context.Background(), bytes.NewReader(src), uint64(len(src)), p, chunk.ScanOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	var n atomic.Int64
	errDown := errors.New("link down")
	limit := int64(float64(len(m.Entries)) * frac)
	_, _, err = ApplyManifest(context.Background(), h.vol, h.opt, m, "test", 2, func(_ context.Context, _ int, e chunk.Entry) ([]byte, error) {
		if n.Add(1) > limit {
			return nil, errDown
		}
		return src[e.Offset:e.End()], nil
	})
	if !errors.Is(err, errDown) {
		h.t.Fatalf("interrupted apply: want the fetch error, got %v", err)
	}
	h.status(false)
}

// status reads the volume's status and checks Current.
func (h *harness) status(current bool) *VolumeStatus {
	h.t.Helper()
	vs, err := ReadStatus(h.vol.StateDir, h.vol.Name)
	if err != nil {
		h.t.Fatalf("status: %v", err)
	}
	if vs.Current != current {
		h.t.Fatalf("status current=%v, want %v: %+v", vs.Current, current, vs)
	}
	return vs
}

// tamper overwrites n bytes of path at off with garbage, behind
// voldelta's back, and restores the file's mtime (as a careless copy or
// a restore tool would).
func tamper(t *testing.T, path string, off int64, n int, keepMtime bool) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(randBytes(999, n), off); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if keepMtime && fi.Mode().IsRegular() {
		if err := os.Chtimes(path, fi.ModTime(), fi.ModTime()); err != nil {
			t.Fatal(err)
		}
		after, err := os.Stat(path)
		if err != nil || !after.ModTime().Equal(fi.ModTime()) {
			t.Fatalf("mtime not restored: %v", err)
		}
	}
}

// TestResumeAfterOutsideChange (lie 1): an interrupted round, then the
// replica changed outside voldelta, then a resume: the resume must not
// trust the index it recovered, and ends with the source's bytes.
func TestResumeAfterOutsideChange(t *testing.T) {
	h := newHarness(t, "")
	p := smallParams()
	src1 := randBytes(30, 16*MiB)
	h.mustApply(src1, p)
	src2 := append([]byte{}, src1...)
	copy(src2[8*MiB:], randBytes(31, 8*MiB)) // the second half changes
	h.interrupt(src2, p, 0.3)
	tamper(t, h.vol.Path, 2*MiB, 64<<10, true) // in the half that did not change
	r := h.mustApply(src2, p)
	if r.Repaired == 0 {
		t.Fatalf("the tampered range was not rewritten: %+v", r)
	}
	h.status(true)
}

// TestJournalLostOrDamaged (lie 2): after an interrupted round the journal
// is deleted, garbled in the middle, or replaced by another apply's: the
// next round must not read that as "no intents" (which would send nothing
// and commit the torn bytes), and ends identical.
func TestJournalLostOrDamaged(t *testing.T) {
	for _, c := range []struct {
		name string
		harm func(t *testing.T, path string)
	}{
		{"lost", func(t *testing.T, path string) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		}},
		{"garbled", func(t *testing.T, path string) {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if len(b) < journalHeader+3*journalRec {
				t.Fatalf("journal holds only %d bytes", len(b))
			}
			b[journalHeader+journalRec+10] ^= 0xff // the second record
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
			vd := volumeDir{dir: filepath.Dir(path)}
			if _, _, err := vd.readJournal(); !errors.Is(err, errJournalDamaged) {
				t.Fatalf("a journal damaged before its tail read as %v", err)
			}
		}},
		{"another apply's", func(t *testing.T, path string) {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			b[len(journalMagic)] ^= 1 // the nonce
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			// Committed src1, a round of src2 torn half way, then a round of
			// src1 again (the agent's next snapshot): what the torn round
			// wrote is known only from its journal.
			h := newHarness(t, "")
			p := smallParams()
			src1 := randBytes(40, 12*MiB)
			h.mustApply(src1, p)
			src2 := randBytes(41, 12*MiB)
			h.interrupt(src2, p, 0.6)
			c.harm(t, filepath.Join(h.vol.StateDir, h.vol.Name, journalName))
			h.mustApply(src1, p)
			h.status(true)
		})
	}
}

func TestJournalTornTailOnly(t *testing.T) {
	vd := volumeDir{dir: t.TempDir()}
	j, err := vd.createJournal()
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		j.add(recIntent, chunk.Entry{Offset: uint64(i * 10), Length: 10, ID: chunk.ID{byte(i + 1)}})
	}
	if err := j.flush(); err != nil {
		t.Fatal(err)
	}
	j.close()
	path := vd.path(journalName)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// A bad last record is a torn tail: ignored.
	last := append([]byte{}, b...)
	last[len(last)-1] ^= 1
	if intents, _, err := decodeJournalRecords(last[journalHeader:]); err != nil || len(intents) != 3 {
		t.Fatalf("torn last record: %d intents, %v", len(intents), err)
	}
	// A bad record with another after it is damage.
	mid := append([]byte{}, b...)
	mid[journalHeader+2*journalRec+5] ^= 1
	if _, _, err := decodeJournalRecords(mid[journalHeader:]); !errors.Is(err, errJournalDamaged) {
		t.Fatalf("bad third of four records: %v", err)
	}
	if intents, _, err := vd.readJournalFor(j.nonce); err != nil || len(intents) != 4 {
		t.Fatalf("intact journal: %d intents, %v", len(intents), err)
	}
	if _, _, err := vd.readJournalFor(j.nonce + 1); !errors.Is(err, errJournalOther) {
		t.Fatalf("journal of another apply: %v", err)
	}
}

// TestFileChangedWithMtimeRestored (lie 3, file): the change time gives
// away a write whose mtime was set back.
func TestFileChangedWithMtimeRestored(t *testing.T) {
	h := newHarness(t, "")
	p := smallParams()
	src := randBytes(50, 8*MiB)
	h.mustApply(src, p)
	h.status(true)
	tamper(t, h.vol.Path, 3*MiB, 64<<10, true)
	vs := h.status(false)
	if !strings.Contains(vs.Problem, "outside voldelta") {
		t.Fatalf("problem %q", vs.Problem)
	}
	h.mustApply(src, p)
	h.status(true)
}

// TestBlockDeviceChangedOutside (lie 3, block device): 64 KiB written to
// the device between rounds is seen in its write counters; where the
// counters cannot be read, the round reads back what it keeps.
func TestBlockDeviceChangedOutside(t *testing.T) {
	p := smallParams()
	t.Run("counters", func(t *testing.T) {
		dev := loopDevice(t, 16*MiB)
		h := newHarness(t, dev)
		src := randBytes(60, 16*MiB)
		for round := range 5 {
			h.mustApply(src, p)
			h.status(true)
			tamper(t, dev, int64(round)*3*MiB+12345, 64<<10, false)
			vs := h.status(false)
			if !strings.Contains(vs.Problem, "written outside voldelta") {
				t.Fatalf("round %d: problem %q", round, vs.Problem)
			}
		}
		h.mustApply(src, p)
		h.status(true)
	})
	t.Run("no counters", func(t *testing.T) {
		dev := loopDevice(t, 16*MiB)
		h := newHarness(t, dev)
		src := randBytes(61, 16*MiB)
		h.mustApply(src, p)
		old := sysfs
		sysfs = t.TempDir()
		defer func() { sysfs = old }()
		h.status(false) // nothing vouches for it now
		tamper(t, dev, 5*MiB, 64<<10, false)
		r := h.mustApply(src, p)
		if r.Repaired == 0 || r.ReadBackBytes == 0 {
			t.Fatalf("round without counters did not read back and repair: %+v", r)
		}
	})
	t.Run("mounted device refused", func(t *testing.T) {
		dev := loopDevice(t, 16*MiB)
		f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_EXCL, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		h := newHarness(t, dev)
		if _, _, err := h.apply(randBytes(62, MiB), p); !errors.Is(err, ErrBusy) {
			t.Fatalf("device held exclusively by another program: %v", err)
		}
	})
}

// TestTwoNamesOneTarget (lie 4): a second volume name on the same file is
// refused, through another path too, and at configuration time.
func TestTwoNamesOneTarget(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	path := filepath.Join(dir, "t.img")
	a := &harness{t: t, vol: Volume{Name: "a", Path: path, StateDir: state}}
	a.mustApply(randBytes(70, 2*MiB), smallParams())
	link := filepath.Join(dir, "link.img")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	b := &harness{t: t, vol: Volume{Name: "b", Path: link, StateDir: state}}
	if _, _, err := b.apply(randBytes(71, 2*MiB), smallParams()); !errors.Is(err, ErrTargetClaimed) {
		t.Fatalf("second name on the same file: %v", err)
	}
	a.assertTarget(randBytes(70, 2*MiB))
	a.status(true)
	if err := CheckDistinctTargets(map[string]string{"a": path, "b": link}); !errors.Is(err, ErrTargetClaimed) {
		t.Fatalf("config with two names on one file: %v", err)
	}
	if err := CheckDistinctTargets(map[string]string{"a": path, "b": filepath.Join(dir, "other.img")}); err != nil {
		t.Fatalf("distinct targets refused: %v", err)
	}
	// Once a's state points elsewhere, its claim is stale and b may take the file.
	a.vol.Path = filepath.Join(dir, "a2.img")
	a.mustApply(randBytes(72, 2*MiB), smallParams())
	b.mustApply(randBytes(71, 2*MiB), smallParams())
}

// TestTargetDeletedMidRound (lie 4): the round's file is unlinked while it
// is written: nothing is committed and nothing reports current.
func TestTargetDeletedMidRound(t *testing.T) {
	h := newHarness(t, "")
	p := smallParams()
	src := randBytes(80, 8*MiB)
	m, _, err := chunk.ScanManifest(context.Background(), bytes.NewReader(src), uint64(len(src)), p, chunk.ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var once atomic.Bool
	_, _, err = ApplyManifest(context.Background(), h.vol, h.opt, m, "test", 2, func(_ context.Context, _ int, e chunk.Entry) ([]byte, error) {
		if once.CompareAndSwap(false, true) {
			if err := os.Remove(h.vol.Path); err != nil {
				return nil, err
			}
		}
		return src[e.Offset:e.End()], nil
	})
	if !errors.Is(err, ErrTargetGone) {
		t.Fatalf("target deleted mid-round: %v", err)
	}
	h.status(false)
	h.mustApply(src, p) // a new file, re-indexed
	h.status(true)
}

// TestCorruptState (lie 5): a damaged state.json refuses the round and
// keeps the generation history; it is never read as "never synced".
func TestCorruptState(t *testing.T) {
	for _, c := range []struct {
		name string
		harm func(t *testing.T, path string)
	}{
		{"garbage", func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte("{\"volume\": \"vol\", \x00\x01"), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
		{"one digit changed", func(t *testing.T, path string) {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			s := strings.Replace(string(b), `"generation": 2,`, `"generation": 7,`, 1)
			if s == string(b) {
				t.Fatalf("no generation 2 in %s", b)
			}
			if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
		{"missing", func(t *testing.T, path string) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, "")
			p := smallParams()
			src := randBytes(90, 4*MiB)
			h.mustApply(src, p)
			h.mustApply(src, p)
			path := filepath.Join(h.vol.StateDir, h.vol.Name, "state.json")
			c.harm(t, path)
			before, _ := os.ReadFile(path)
			if _, _, err := h.apply(src, p); !errors.Is(err, ErrStateCorrupt) {
				t.Fatalf("round on a damaged state: %v", err)
			}
			if _, err := ReadStatus(h.vol.StateDir, h.vol.Name); !errors.Is(err, ErrStateCorrupt) {
				t.Fatalf("status of a damaged state: %v", err)
			}
			after, _ := os.ReadFile(path)
			if !bytes.Equal(before, after) {
				t.Fatal("the refused round rewrote the damaged state")
			}
		})
	}
}

func TestStateChecksumRoundTrip(t *testing.T) {
	vd := volumeDir{dir: t.TempDir()}
	st := &State{Volume: "v", Target: "/x", Phase: PhaseCommitted, Generation: 3, Root: "ab", CommittedAt: time.Now().UTC(),
		Params: smallParams(), History: []Committed{{Generation: 3, Root: "ab", At: time.Now().UTC()}}}
	if err := vd.saveState(st); err != nil {
		t.Fatal(err)
	}
	got, err := vd.loadState()
	if err != nil {
		t.Fatal(err)
	}
	if got.Generation != 3 || got.Checksum == "" {
		t.Fatalf("%+v", got)
	}
	b, _ := json.Marshal(got)
	if _, err := decodeState(b); err != nil {
		t.Fatalf("compact re-encoding: %v", err)
	}
}

// TestFailedVerificationRescans: bytes changed between the writes and the
// verification commit nothing, and make the next round rescan and repair
// instead of trusting the same index again.
func TestFailedVerificationRescans(t *testing.T) {
	h := newHarness(t, "")
	p := smallParams()
	src := randBytes(100, 8*MiB)
	m, _, err := chunk.ScanManifest(context.Background(), bytes.NewReader(src), uint64(len(src)), p, chunk.ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ap, err := Begin(ctx, h.vol, h.opt, Header{Size: m.Size, Params: m.Params, Peer: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer ap.Close()
	go func() {
		if ap.AddManifest(ctx, m.Entries) == nil {
			ap.EndManifest(ctx, uint64(len(m.Entries)), m.Root)
		}
	}()
	f := newFetchPool(ctx, ap, 2, func(_ context.Context, _ int, e chunk.Entry) ([]byte, error) { return src[e.Offset:e.End()], nil })
	if err := ap.Run(ctx, f); err != nil {
		t.Fatal(err)
	}
	f.stop()
	f.wg.Wait()
	tamper(t, h.vol.Path, 1*MiB, 4096, true)
	if _, err := ap.Commit(ctx); !errors.Is(err, ErrVerify) {
		t.Fatalf("commit of a target changed after its writes: %v", err)
	}
	ap.Close()
	vs := h.status(false)
	if !strings.Contains(vs.Problem, "verification") {
		t.Fatalf("problem %q", vs.Problem)
	}
	h.mustApply(src, p)
	h.status(true)
}

// TestHelloSizeDoesNotGrowTarget (item 8): a round that never delivers an
// accepted manifest leaves a file target its size.
func TestHelloSizeDoesNotGrowTarget(t *testing.T) {
	h := newHarness(t, "")
	ap, err := Begin(context.Background(), h.vol, h.opt, Header{Size: 4 << 40, Params: smallParams()})
	if err != nil {
		t.Fatal(err)
	}
	ap.Close()
	fi, err := os.Stat(h.vol.Path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != 0 {
		t.Fatalf("a HELLO of 4 TiB grew the target to %d bytes", fi.Size())
	}
}

// TestScrub: a full read finds what no fingerprint sees, makes the volume
// not current and the next round repairs it; a clean scrub makes a target
// nothing vouched for current again.
func TestScrub(t *testing.T) {
	dev := loopDevice(t, 8*MiB)
	h := newHarness(t, dev)
	p := smallParams()
	src := randBytes(120, 8*MiB)
	h.mustApply(src, p)
	res, err := Scrub(context.Background(), h.vol, 2, nil)
	if err != nil || !res.Current || res.Bad != 0 || res.Bytes != 8*MiB {
		t.Fatalf("clean scrub: %+v, %v", res, err)
	}
	// After a reboot the counters count from zero and cannot vouch: status
	// is not current until a scrub renews the fingerprint.
	realBoot := bootID
	defer func() { bootID = realBoot }()
	bootID = func() string { return "after-a-reboot" }
	vs := h.status(false)
	if !strings.Contains(vs.Problem, "rebooted") {
		t.Fatalf("problem after a reboot: %q", vs.Problem)
	}
	if res, err := Scrub(context.Background(), h.vol, 2, nil); err != nil || !res.Current {
		t.Fatalf("scrub after a reboot: %+v, %v", res, err)
	}
	h.status(true)
	// A write before a reboot is seen by no counter: the scrub finds it.
	tamper(t, dev, 3*MiB, 4096, false)
	bootID = func() string { return "after-another-reboot" }
	res, err = Scrub(context.Background(), h.vol, 2, nil)
	if err != nil || res.Current || res.Bad == 0 {
		t.Fatalf("scrub of a damaged target: %+v, %v", res, err)
	}
	vs = h.status(false)
	if !strings.Contains(vs.Problem, "scrub") {
		t.Fatalf("problem %q", vs.Problem)
	}
	h.mustApply(src, p)
	h.status(true)
	if _, err := Scrub(context.Background(), Volume{Name: "nope", StateDir: h.vol.StateDir}, 1, nil); !errors.Is(err, ErrNoState) {
		t.Fatalf("scrub of an unknown volume: %v", err)
	}
}

// TestVerifyZeroFile: zero runs of a file are checked through its data
// extents only, and non-zero bytes inside a hole-y range are still found.
func TestVerifyZeroFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sparse")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(64 * MiB); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, MiB), 10*MiB); err != nil { // allocated zeros
		t.Fatal(err)
	}
	tg := &target{path: path, f: f}
	if err := verifyEntry(tg, chunk.Entry{Offset: 0, Length: 64 * MiB, Zero: true}); err != nil {
		t.Fatalf("holes and written zeros: %v", err)
	}
	if _, err := f.WriteAt([]byte{1}, 40*MiB+7); err != nil {
		t.Fatal(err)
	}
	if err := verifyEntry(tg, chunk.Entry{Offset: 0, Length: 64 * MiB, Zero: true}); !errors.Is(err, errMismatch) {
		t.Fatalf("a non-zero byte in a zero run: %v", err)
	}
	if err := verifyEntry(tg, chunk.Entry{Offset: 41 * MiB, Length: 23 * MiB, Zero: true}); err != nil {
		t.Fatalf("zero run past the byte: %v", err)
	}
}

// TestFirstRoundKilledBeforeItsIndex: a first round killed after it wrote
// its index but before it saved the state that names it leaves a volume
// the next round resumes (by rescanning), not one refused as "state lost".
func TestFirstRoundKilledBeforeItsIndex(t *testing.T) {
	h := newHarness(t, "")
	p := smallParams()
	src := randBytes(130, 4*MiB)
	// What Begin has written when the kill comes: the first state, then the index.
	vd := volumeDir{dir: filepath.Join(h.vol.StateDir, h.vol.Name)}
	ap, err := Begin(context.Background(), h.vol, h.opt, Header{Size: uint64(len(src)), Params: p})
	if err != nil {
		t.Fatal(err)
	}
	st, err := vd.loadState()
	ap.Close()
	if err != nil || st.Phase != PhaseApplying || st.Generation != 0 {
		t.Fatalf("state after Begin: %+v, %v", st, err)
	}
	st.Extents = ""
	st.Applying.Journal = 0
	if err := vd.saveState(st); err != nil { // as saved before the index was written
		t.Fatal(err)
	}
	h.status(false)
	h.mustApply(src, p)
	h.status(true)
}

// silentSender asks for nothing to be sent: it swallows NEEDs.
type silentSender struct{}

func (silentSender) Need([]int) error     { return nil }
func (silentSender) NeedEnd(uint64) error { return nil }

// TestQuietSenderGivesUpTheVolume: a sender that sends its manifest and
// then no chunk does not hold the volume past Options.Idle.
func TestQuietSenderGivesUpTheVolume(t *testing.T) {
	h := newHarness(t, "")
	h.opt.Idle = 200 * time.Millisecond
	src := randBytes(140, 2*MiB)
	m, _, err := chunk.ScanManifest(context.Background(), bytes.NewReader(src), uint64(len(src)), smallParams(), chunk.ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ap, err := Begin(ctx, h.vol, h.opt, Header{Size: m.Size, Params: m.Params})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		if ap.AddManifest(ctx, m.Entries) == nil {
			ap.EndManifest(ctx, uint64(len(m.Entries)), m.Root)
		}
	}()
	err = ap.Run(ctx, silentSender{})
	ap.Close()
	if !errors.Is(err, ErrInterrupted) || !strings.Contains(err.Error(), "nothing from the sender") {
		t.Fatalf("quiet sender: %v", err)
	}
	h.status(false)
	h.opt.Idle = 0
	h.mustApply(src, smallParams()) // the volume is free again
}
