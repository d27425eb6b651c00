package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/voldelta/voldelta/agent"
	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/hint"
)

// fixedHints is a hint.Source that names a base image and returns given
// extents, as an orchestrator's changed-extent list would.
type fixedHints struct {
	base string
	exts []chunk.Extent
	err  error
}

func (h fixedHints) Name() string      { return "test" }
func (h fixedHints) BaseImage() string { return h.base }
func (h fixedHints) Changed(context.Context, uint64) ([]chunk.Extent, error) {
	return h.exts, h.err
}

// hintWorld is a receiver and a source image whose rounds the tests drive
// with hints.
type hintWorld struct {
	t     *testing.T
	p     *pair
	src   string
	data  []byte
	cache *agent.Cache
}

func newHintWorld(t *testing.T, size int) *hintWorld {
	t.Helper()
	w := &hintWorld{t: t, p: newPair(t, pairOpts{insecure: true})}
	w.src = filepath.Join(w.p.dir, "source.img")
	w.data = randBytes(77, size)
	clear(w.data[size/2 : size/2+size/8]) // a zero run, reused as such
	writeFile(t, w.src, w.data)
	var err error
	if w.cache, err = agent.OpenCache(filepath.Join(w.p.dir, "agent-cache")); err != nil {
		t.Fatal(err)
	}
	return w
}

// round runs one round reading the image as image id, with hints h.
func (w *hintWorld) round(id string, h hint.Source, edit func(*agent.Options)) *agent.Stats {
	w.t.Helper()
	opt := w.p.options(w.src, "vol")
	opt.ImageID, opt.Hints, opt.Cache = id, h, w.cache
	opt.FullScan = agent.FullScanPolicy{Every: 100}
	if edit != nil {
		edit(&opt)
	}
	st, err := agent.Sync(context.Background(), opt)
	if err != nil {
		w.t.Fatalf("round %s: %v", id, err)
	}
	assertSame(w.t, w.p.targets["vol"], w.data)
	if st.Manifest.Root != rootOf(w.t, w.data) {
		w.t.Fatalf("round %s committed root %s, a full scan of the source gives another", id, st.Manifest.Root.Short())
	}
	return st
}

// write changes the source at off and returns the extent changed.
func (w *hintWorld) write(seed uint64, off, n int) chunk.Extent {
	w.t.Helper()
	copy(w.data[off:off+n], randBytes(seed, n))
	writeFile(w.t, w.src, w.data)
	return chunk.Extent{Offset: uint64(off), Length: uint64(n)}
}

func requireMode(t *testing.T, st *agent.Stats, mode, reason string) {
	t.Helper()
	if st.ScanMode != mode || !strings.Contains(st.FullScanReason, reason) {
		t.Fatalf("scan %q (%q), want %q with a reason containing %q", st.ScanMode, st.FullScanReason, mode, reason)
	}
}

// TestHintedRounds: with hints whose base is the committed generation's
// image, a round reads about what changed and sends the manifest as a
// delta; the target holds the source's bytes and root.
func TestHintedRounds(t *testing.T) {
	const size = 48 << 20
	w := newHintWorld(t, size)
	st := w.round("img-1", nil, nil)
	requireMode(t, st, agent.ScanFull, "first round")

	exts := []chunk.Extent{w.write(1, 3<<20, 16<<10), w.write(2, 30<<20, 4<<20), w.write(3, size-5000, 5000)}
	st = w.round("img-2", fixedHints{base: "img-1", exts: exts}, nil)
	requireMode(t, st, agent.ScanIncremental, "")
	changed := hint.Bytes(exts)
	if st.ChangedBytes != changed || st.BytesRead > 2*changed+uint64(len(exts))*2*chunk.DefaultMaxSize {
		t.Fatalf("read %d bytes for %d changed (hints said %d)", st.BytesRead, changed, st.ChangedBytes)
	}
	if st.ManifestEntriesCopied == 0 || st.ManifestBytes > 64*st.ManifestEntriesSent+4096 {
		t.Fatalf("manifest: %d entries sent, %d copied, %d bytes on the wire: want copies and <= 64 B per entry sent + 4 KiB",
			st.ManifestEntriesSent, st.ManifestEntriesCopied, st.ManifestBytes)
	}
	if st.BaseFetched {
		t.Fatal("the base was fetched although the agent cached it")
	}
	// The chunks around the 16 KiB write and the 5000-byte tail go as
	// their changed bytes only; the 4 MiB region's chunks whole.
	if st.ChunksPatched == 0 || st.BytesSentRaw > changed+uint64(len(exts))*2*chunk.DefaultMaxSize {
		t.Fatalf("%d chunks patched, %d bytes sent for %d changed", st.ChunksPatched, st.BytesSentRaw, changed)
	}

	// Nothing changed, hints say so: nothing read, nothing sent.
	st = w.round("img-3", fixedHints{base: "img-2", exts: []chunk.Extent{}}, nil)
	requireMode(t, st, agent.ScanIncremental, "")
	if st.BytesRead != 0 || st.ChunksSent != 0 || st.ManifestEntriesSent != 0 {
		t.Fatalf("unchanged volume: read %d, sent %d chunks and %d manifest entries", st.BytesRead, st.ChunksSent, st.ManifestEntriesSent)
	}
}

// TestHintsStaleBase: hints relative to an image other than the one the
// committed generation was made from are not used: the round scans in
// full, says why, and the target is right although the hints are wrong
// for it.
func TestHintsStaleBase(t *testing.T) {
	w := newHintWorld(t, 24<<20)
	w.round("img-1", nil, nil)
	w.write(1, 1<<20, 64<<10)
	w.round("img-2", nil, nil) // sent without hints: the receiver holds img-2
	w.write(2, 9<<20, 64<<10)
	// Hints from img-1 to now miss the change made before img-2... and
	// name img-1: refused.
	st := w.round("img-3", fixedHints{base: "img-1", exts: []chunk.Extent{{Offset: 9 << 20, Length: 64 << 10}}}, nil)
	requireMode(t, st, agent.ScanFull, "is not the image generation 2 was made from (img-2)")
	// A source that cannot tell: full scan naming it.
	w.write(3, 12<<20, 4096)
	st = w.round("img-4", fixedHints{base: "img-3", err: hint.Unavailable("snapshot chain rewritten")}, nil)
	requireMode(t, st, agent.ScanFull, "snapshot chain rewritten")
	// A receiver that records no image for its generation.
	w.write(4, 13<<20, 4096)
	w.round("", nil, nil)
	w.write(5, 14<<20, 4096)
	st = w.round("img-6", fixedHints{base: "img-5", exts: []chunk.Extent{{Offset: 14 << 20, Length: 4096}}}, nil)
	requireMode(t, st, agent.ScanFull, "does not record which image")
}

// TestHintsBaseFromReceiver: an agent without the committed manifest
// (cache lost or damaged) fetches it from the receiver, checks its root and
// goes on incrementally; a damaged cache file is reported, not used.
func TestHintsBaseFromReceiver(t *testing.T) {
	w := newHintWorld(t, 24<<20)
	w.round("img-1", nil, nil)
	ext := w.write(1, 5<<20, 20000)
	noCache := func(o *agent.Options) { o.Cache = nil }
	st := w.round("img-2", fixedHints{base: "img-1", exts: []chunk.Extent{ext}}, noCache)
	requireMode(t, st, agent.ScanIncremental, "")
	if !st.BaseFetched {
		t.Fatal("no cache, yet the base was not fetched")
	}
	// The round above kept nothing: generation 2's manifest is fetched,
	// then kept.
	ext = w.write(2, 7<<20, 20000)
	st = w.round("img-3", fixedHints{base: "img-2", exts: []chunk.Extent{ext}}, nil)
	requireMode(t, st, agent.ScanIncremental, "")
	if !st.BaseFetched {
		t.Fatal("generation 2's manifest was never cached, yet not fetched")
	}
	// Damage the kept manifest of generation 3: reported, not used.
	path := filepath.Join(w.cache.Dir(), "vol", st.Manifest.Root.String()+".manifest")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 1
	writeFile(t, path, b)
	if _, err := w.cache.Load("vol", st.Manifest.Root); err == nil {
		t.Fatal("a damaged cached manifest loaded")
	}
	ext = w.write(3, 11<<20, 20000)
	st = w.round("img-4", fixedHints{base: "img-3", exts: []chunk.Extent{ext}}, nil)
	requireMode(t, st, agent.ScanIncremental, "")
	if !st.BaseFetched {
		t.Fatal("the cached manifest was damaged, yet the base was not fetched")
	}
}

// TestHintsPeriodicFullScanCatchesALie: hints that miss a change make an
// incremental round describe stale bytes — the one lie a hint source can
// cause — so every so often a hinted round reads everything, compares, and
// a source caught missing a change is not used again for the volume.
func TestHintsPeriodicFullScanCatchesALie(t *testing.T) {
	w := newHintWorld(t, 24<<20)
	w.round("img-1", nil, nil)
	told := w.write(1, 2<<20, 8192)
	w.write(2, 17<<20, 8192) // the hints miss this one
	force := func(o *agent.Options) { o.ForceFullScan = true }
	st := w.round("img-2", fixedHints{base: "img-1", exts: []chunk.Extent{told}}, force)
	requireMode(t, st, agent.ScanFull, "full scan requested")
	if st.HintCheck != "mismatch" {
		t.Fatalf("hint check %q, want mismatch", st.HintCheck)
	}
	ext := w.write(3, 3<<20, 8192)
	st = w.round("img-3", fixedHints{base: "img-2", exts: []chunk.Extent{ext}}, nil)
	requireMode(t, st, agent.ScanFull, "distrusted")
	// Honest hints checked by a full scan match.
	pol, err := w.cache.LoadPolicy("vol")
	if err != nil {
		t.Fatal(err)
	}
	pol.Distrusted = nil
	if err := w.cache.SavePolicy("vol", pol); err != nil {
		t.Fatal(err)
	}
	ext = w.write(4, 4<<20, 8192)
	st = w.round("img-4", fixedHints{base: "img-3", exts: []chunk.Extent{ext}}, force)
	if st.HintCheck != "match" {
		t.Fatalf("honest hints: check %q, want match", st.HintCheck)
	}
	// The policy: every N rounds.
	every := func(o *agent.Options) { o.FullScan = agent.FullScanPolicy{Every: 2} }
	ext = w.write(5, 5<<20, 8192)
	st = w.round("img-5", fixedHints{base: "img-4", exts: []chunk.Extent{ext}}, every)
	requireMode(t, st, agent.ScanIncremental, "")
	ext = w.write(6, 6<<20, 8192)
	st = w.round("img-6", fixedHints{base: "img-5", exts: []chunk.Extent{ext}}, every)
	requireMode(t, st, agent.ScanFull, "periodic full scan")
}

// TestHintsBadExtentsFailTheRound: malformed extents from a source are an
// error, never used.
func TestHintsBadExtentsFailTheRound(t *testing.T) {
	w := newHintWorld(t, 8<<20)
	w.round("img-1", nil, nil)
	opt := w.p.options(w.src, "vol")
	opt.ImageID, opt.Cache = "img-2", w.cache
	opt.Hints = fixedHints{base: "img-1", exts: []chunk.Extent{{Offset: 1 << 20, Length: 10}, {Offset: 0, Length: 10}}}
	_, err := agent.Sync(context.Background(), opt)
	if err == nil || !strings.Contains(err.Error(), "change hints (test)") {
		t.Fatalf("unsorted extents: %v", err)
	}
}

// TestPatchesCatchAMissedChange: a chunk sent as its changed ranges is
// rebuilt by the receiver over its own bytes and must hash to the chunk's
// ID, so hints that miss a change inside a chunk they touch fail the round
// (nothing committed, the target re-indexed), and the next round, without
// those hints, repairs it.
func TestPatchesCatchAMissedChange(t *testing.T) {
	w := newHintWorld(t, 16<<20)
	w.round("img-1", nil, nil)
	told := w.write(1, 6<<20, 4096)
	w.write(2, 6<<20+4096+512, 100) // the hints miss this, 512 bytes further
	opt := w.p.options(w.src, "vol")
	opt.ImageID, opt.Cache = "img-2", w.cache
	opt.FullScan = agent.FullScanPolicy{Every: 100}
	opt.Hints = fixedHints{base: "img-1", exts: []chunk.Extent{told}}
	_, err := agent.Sync(context.Background(), opt)
	if err == nil || !strings.Contains(err.Error(), "rebuilt from a patch") {
		t.Fatalf("round with hints that missed a change in a patched chunk: %v", err)
	}
	st := w.round("img-2", nil, nil)
	if st.ChunksPatched != 0 {
		t.Fatalf("a round without hints patched %d chunks", st.ChunksPatched)
	}
}
