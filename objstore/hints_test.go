package objstore

import (
	"bytes"
	"context"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/hint"
)

// fakeHints is a hint.Source that returns the extents (or the error) it is
// given, relative to the base image it names, and counts its calls.
type fakeHints struct {
	base  string
	exts  []chunk.Extent
	err   error
	calls atomic.Int32
}

func (f *fakeHints) Name() string      { return "fake" }
func (f *fakeHints) BaseImage() string { return f.base }
func (f *fakeHints) Changed(_ context.Context, _ uint64) ([]chunk.Extent, error) {
	f.calls.Add(1)
	return f.exts, f.err
}

// countingReader counts the bytes read from it.
type countingReader struct {
	r io.ReaderAt
	n atomic.Uint64
}

func (c *countingReader) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.n.Add(uint64(n))
	return n, err
}

// pushCounted pushes data as the next generation of volume and returns the
// stats and the bytes read from the source.
func pushCounted(t *testing.T, s *Store, volume string, data []byte, opt PushOptions) (*PushStats, uint64) {
	t.Helper()
	opt.Volume = volume
	if opt.Params == (chunk.Params{}) {
		opt.Params = smallParams()
	}
	src := &countingReader{r: bytes.NewReader(data)}
	st, err := s.Push(context.Background(), src, uint64(len(data)), opt)
	if err != nil {
		t.Fatalf("push %s: %v", volume, err)
	}
	return st, src.n.Load()
}

// fullRoot is the root hash a full scan of data gives with p.
func fullRoot(t *testing.T, data []byte, p chunk.Params) string {
	t.Helper()
	m, _, err := chunk.ScanManifest(context.Background(), bytes.NewReader(data), uint64(len(data)), p, chunk.ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return m.Root.String()
}

// changeRegions flips the bytes of exts in a copy of v.
func changeRegions(v []byte, exts []chunk.Extent) []byte {
	out := bytes.Clone(v)
	for _, e := range exts {
		for i := e.Offset; i < e.Offset+e.Length; i++ {
			out[i] ^= 0xa5
		}
	}
	return out
}

// A push with hints relative to the image the latest generation was pushed
// from reads about what the hints name (not the volume), stores the
// generation a full scan would, records its own image, and pulls back
// byte for byte.
func TestPushWithHintsReadsOnlyTheChange(t *testing.T) {
	s := newStore(t)
	seg := smallParams().SegmentSize
	v1 := genVolume(21, volSize)
	st1, read1 := pushCounted(t, s, "h", v1, PushOptions{Image: "img:1"})
	if st1.ScanMode != ScanFull || st1.FullScanReason != "no hints given" || st1.BytesRead != volSize || read1 < volSize {
		t.Fatalf("first push: mode %q (%q), bytes_read %d, read %d", st1.ScanMode, st1.FullScanReason, st1.BytesRead, read1)
	}
	// Three changed regions, in three of the eight segments, and an append
	// the hints need not name.
	exts := []chunk.Extent{{Offset: 12345, Length: 4096}, {Offset: 3*seg + 777, Length: 100}, {Offset: 6*seg - 2048, Length: 4096}}
	v2 := append(changeRegions(v1, exts), genVolume(22, 100<<10)...)
	h := &fakeHints{base: "img:1", exts: exts}
	st2, read2 := pushCounted(t, s, "h", v2, PushOptions{Hints: h, Image: "img:2"})
	if st2.ScanMode != ScanIncremental || st2.FullScanReason != "" || st2.HintSource != "fake" || h.calls.Load() != 1 {
		t.Fatalf("push with hints: mode %q (%q), source %q, %d calls of Changed", st2.ScanMode, st2.FullScanReason, st2.HintSource, h.calls.Load())
	}
	if want := hint.Bytes(exts); st2.ChangedBytes != want {
		t.Errorf("changed_bytes %d, want %d", st2.ChangedBytes, want)
	}
	// At most the touched segments and the tail are read (the scan may read
	// less), and the stats say what was read: the counted reads are the
	// scan's and the uploads' re-reads of their chunks.
	if limit := 4*seg + 100<<10; st2.BytesRead == 0 || st2.BytesRead > limit {
		t.Errorf("bytes_read %d, want at most the 3 changed segments and the tail (%d)", st2.BytesRead, limit)
	}
	if read2 > st2.BytesRead+st2.BytesUploadedRaw {
		t.Errorf("the push read %d source bytes; its stats say %d read by the scan and %d uploaded", read2, st2.BytesRead, st2.BytesUploadedRaw)
	}
	if st2.ReusedBytes+st2.BytesRead < uint64(len(v2)) {
		t.Errorf("reused %d + read %d bytes do not cover %d", st2.ReusedBytes, st2.BytesRead, len(v2))
	}
	if want := fullRoot(t, v2, smallParams()); st2.RootHash != want {
		t.Fatalf("incremental push stored root %s, a full scan gives %s", st2.RootHash, want)
	}
	for gen, want := range map[uint64]string{1: "img:1", 2: "img:2"} {
		if got, err := s.GenerationImage(context.Background(), "h", gen); err != nil || got != want {
			t.Errorf("generation %d records image %q (%v), want %q", gen, got, err, want)
		}
	}
	target := filepath.Join(t.TempDir(), "h.img")
	state := filepath.Join(t.TempDir(), "state")
	pull(t, s, PullOptions{Volume: "h", Target: target, StateDir: state, Generation: 1})
	pull(t, s, PullOptions{Volume: "h", Target: target, StateDir: state})
	assertFile(t, target, v2)

	// Hints that vouch for their base themselves (BaseImage "") are used
	// against whatever the latest generation is, one without an image too.
	v3 := changeRegions(v2, exts[:1])
	st3 := push(t, s, "h", v3, PushOptions{}) // records no image
	v4 := changeRegions(v3, exts[2:])
	st4, _ := pushCounted(t, s, "h", v4, PushOptions{Hints: &fakeHints{exts: exts[2:]}})
	if st3.ScanMode != ScanFull || st4.ScanMode != ScanIncremental || st4.RootHash != fullRoot(t, v4, smallParams()) {
		t.Fatalf("pushes 3 and 4: modes %q, %q (%q); root %s", st3.ScanMode, st4.ScanMode, st4.FullScanReason, st4.RootHash)
	}
	if got, err := s.GenerationImage(context.Background(), "h", 3); err != nil || got != "" {
		t.Errorf("generation 3, pushed without an image, records %q (%v)", got, err)
	}
	// No extents at all (nil) says that nothing changed: nothing is read.
	st5, read5 := pushCounted(t, s, "h", v4, PushOptions{Hints: &fakeHints{}})
	if st5.ScanMode != ScanIncremental || st5.BytesRead != 0 || read5 != 0 || st5.RootHash != st4.RootHash {
		t.Fatalf("push with no changed extents: mode %q (%q), bytes_read %d, read %d, root %s (want %s)", st5.ScanMode, st5.FullScanReason, st5.BytesRead, read5, st5.RootHash, st4.RootHash)
	}
}

// Hints are not used, and the whole source is read, when the latest
// generation is not their base, was chunked differently, the source cannot
// tell, or a full scan is asked for; the stats say why. The hints in each
// case claim that nothing changed, so a push that used them would store
// the previous generation's root.
func TestPushHintsFallBackToAFullScan(t *testing.T) {
	s := newStore(t)
	v1 := genVolume(23, 8<<20)
	push(t, s, "f", v1, PushOptions{Image: "img:1"})
	push(t, s, "n", v1, PushOptions{}) // records no image
	v2 := changeRegions(v1, []chunk.Extent{{Offset: 5000, Length: 3000}})
	other := smallParams().WithSizes(8<<10, 32<<10, 128<<10)
	for _, c := range []struct {
		name, volume string
		opt          PushOptions
		reason       string
		asked        bool // whether the hints are asked for their extents
	}{
		{"no previous generation", "new", PushOptions{Hints: &fakeHints{base: "img:1", exts: []chunk.Extent{}}},
			"no previous generation", false},
		{"another base image", "f", PushOptions{Hints: &fakeHints{base: "img:0", exts: []chunk.Extent{}}},
			"base image img:0 is not the image generation 1 was pushed from (img:1)", false},
		{"a base image where none was recorded", "n", PushOptions{Hints: &fakeHints{base: "img:1", exts: []chunk.Extent{}}},
			"base image img:1 is not the image generation 1 was pushed from (it recorded none)", false},
		{"unavailable", "f", PushOptions{Hints: &fakeHints{base: "img:1", err: hint.Unavailable("no shared extents")}},
			"hints unavailable: no shared extents", true},
		{"other params", "f", PushOptions{Params: other, Hints: &fakeHints{base: "img:1", exts: []chunk.Extent{}}},
			"chunking parameters differ from generation 1's", false},
		{"full scan asked for", "f", PushOptions{FullScan: true, Hints: &fakeHints{base: "img:1", exts: []chunk.Extent{}}},
			"full scan asked for", false},
		{"no hints", "f", PushOptions{}, "no hints given", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			vol := c.volume
			p := c.opt.Params
			if p == (chunk.Params{}) {
				p = smallParams()
			}
			st, read := pushCounted(t, s, vol, v2, c.opt)
			if st.ScanMode != ScanFull || st.FullScanReason != c.reason {
				t.Errorf("scan mode %q, reason %q; want full, %q", st.ScanMode, st.FullScanReason, c.reason)
			}
			if st.BytesRead != uint64(len(v2)) || read < uint64(len(v2)) || st.ReusedBytes != 0 || st.ChangedBytes != 0 {
				t.Errorf("bytes_read %d (read %d), reused %d, changed %d; want the whole %d bytes read", st.BytesRead, read, st.ReusedBytes, st.ChangedBytes, len(v2))
			}
			if want := fullRoot(t, v2, p); st.RootHash != want {
				t.Errorf("root %s, a full scan gives %s", st.RootHash, want)
			}
			if h, ok := c.opt.Hints.(*fakeHints); ok && (h.calls.Load() > 0) != c.asked {
				t.Errorf("Changed called %d times", h.calls.Load())
			}
			// The next push of this volume uses its base again.
			s.mustDropTo(t, vol, st.Generation-1)
		})
	}
}

// mustDropTo removes volume's generations after gen (tests only), so that
// the next push's base is gen again.
func (s *Store) mustDropTo(t *testing.T, volume string, gen uint64) {
	t.Helper()
	gens, err := s.Generations(context.Background(), volume)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range gens {
		if g > gen {
			if err := s.remove(context.Background(), "drop generation", s.manifestKey(volume, g)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// A hint error other than hint.ErrUnavailable, malformed extents included,
// fails the push, named, and stores nothing; so does a push given both
// Hints and Previous, or an image identity too long to record.
func TestPushHintErrorsFailThePush(t *testing.T) {
	s := newStore(t)
	v1 := genVolume(24, 8<<20)
	st1 := push(t, s, "e", v1, PushOptions{Image: "img:1"})
	boom := errors.New("fiemap: input/output error")
	for _, c := range []struct {
		name string
		opt  PushOptions
		want string
		is   error
	}{
		{"source error", PushOptions{Hints: &fakeHints{base: "img:1", err: boom}}, "change hints (fake): fiemap: input/output error", boom},
		{"overlapping extents", PushOptions{Hints: &fakeHints{base: "img:1", exts: []chunk.Extent{{Offset: 0, Length: 100}, {Offset: 50, Length: 100}}}},
			"change hints (fake): ", hint.ErrInvalid},
		{"extent past the end", PushOptions{Hints: &fakeHints{base: "img:1", exts: []chunk.Extent{{Offset: 8 << 20, Length: 1}}}},
			"change hints (fake): ", hint.ErrInvalid},
		{"hints and previous", PushOptions{Hints: &fakeHints{base: "img:1"}, Previous: st1.Manifest, Changed: []chunk.Extent{}},
			"exclusive", nil},
		{"image too long", PushOptions{Image: strings.Repeat("\x01", 400)}, "image identity", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			opt := c.opt
			opt.Volume, opt.Params = "e", smallParams()
			_, err := s.Push(context.Background(), bytes.NewReader(v1), uint64(len(v1)), opt)
			if err == nil || !strings.Contains(err.Error(), c.want) || c.is != nil && !errors.Is(err, c.is) {
				t.Fatalf("push: %v; want an error with %q", err, c.want)
			}
			if gens, err := s.Generations(context.Background(), "e"); err != nil || len(gens) != 1 {
				t.Fatalf("a failed push left generations %v (%v)", gens, err)
			}
		})
	}
}

// A hint source that misses a changed extent is believed: the push cannot
// tell, stores the image the hints describe (not the source) and a pull
// writes that. A full scan (FullScan) stores the source again.
func TestPushTrustsLyingHints(t *testing.T) {
	s := newStore(t)
	seg := smallParams().SegmentSize
	v1 := genVolume(25, 16<<20)
	push(t, s, "l", v1, PushOptions{Image: "img:1"})
	told := chunk.Extent{Offset: 100, Length: 4096}
	missed := chunk.Extent{Offset: 2*seg + 100, Length: 4096}
	v2 := changeRegions(v1, []chunk.Extent{told, missed})
	st2 := push(t, s, "l", v2, PushOptions{Image: "img:2", Hints: &fakeHints{base: "img:1", exts: []chunk.Extent{told}}})
	if st2.ScanMode != ScanIncremental {
		t.Fatalf("scan mode %q (%q)", st2.ScanMode, st2.FullScanReason)
	}
	believed := changeRegions(v1, []chunk.Extent{told})
	if want := fullRoot(t, believed, smallParams()); st2.RootHash != want || st2.RootHash == fullRoot(t, v2, smallParams()) {
		t.Fatalf("a push with a missed extent stored root %s; the image the hints describe has %s", st2.RootHash, want)
	}
	target := filepath.Join(t.TempDir(), "l.img")
	state := filepath.Join(t.TempDir(), "state")
	pull(t, s, PullOptions{Volume: "l", Target: target, StateDir: state})
	assertFile(t, target, believed)

	st3 := push(t, s, "l", v2, PushOptions{Image: "img:2", FullScan: true, Hints: &fakeHints{base: "img:2", exts: []chunk.Extent{}}})
	if st3.ScanMode != ScanFull || st3.FullScanReason != "full scan asked for" || st3.RootHash != fullRoot(t, v2, smallParams()) {
		t.Fatalf("full scan: mode %q (%q), root %s", st3.ScanMode, st3.FullScanReason, st3.RootHash)
	}
	pull(t, s, PullOptions{Volume: "l", Target: target, StateDir: state})
	assertFile(t, target, v2)
}

// An image identity survives the store whatever its bytes: escaped into
// the manifest's metadata and back.
func TestImageIdentityRoundTrip(t *testing.T) {
	s := newStore(t)
	v := genVolume(26, 1<<20)
	for i, image := range []string{"file:dev=64769,ino=131,size=1048576,ctime=1764636000.123456789", "snap: ä%20b\n\x00c", "%", " lead and trail "} {
		st := push(t, s, "i", v, PushOptions{Image: image})
		got, err := s.GenerationImage(context.Background(), "i", st.Generation)
		if err != nil || got != image {
			t.Errorf("image %d: recorded %q (%v), want %q", i, got, err, image)
		}
		_, _, got, err = s.readManifest(context.Background(), "i", st.Generation)
		if err != nil || got != image {
			t.Errorf("image %d: read with the manifest as %q (%v), want %q", i, got, err, image)
		}
	}
}
