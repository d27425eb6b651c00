package chunk

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"testing"
	"testing/iotest"
)

// seeded returns n reproducible pseudo-random bytes.
func seeded(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

func testParams() Params {
	p := DefaultParams()
	p.MinSize, p.AvgSize, p.MaxSize = 16<<10, 64<<10, 256<<10
	p.SegmentSize = 4 << 20
	return p
}

func scanBytes(t testing.TB, data []byte, p Params, workers int) *Manifest {
	t.Helper()
	m, _, err := ScanManifest(context.Background(), bytes.NewReader(data), uint64(len(data)), p, ScanOptions{Workers: workers})
	if err != nil {
		t.Fatalf("scan: %v", err)
	}
	return m
}

func TestDefaultParamsValid(t *testing.T) {
	if err := DefaultParams().Validate(); err != nil {
		t.Fatal(err)
	}
	if err := testParams().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestParamsValidateRejects(t *testing.T) {
	base := DefaultParams()
	cases := map[string]func(*Params){
		"algorithm":       func(p *Params) { p.Algorithm = "fastcdc" },
		"polynomial":      func(p *Params) { p.Polynomial = 4 },
		"avg not pow2":    func(p *Params) { p.AvgSize = 300 << 10 },
		"min above avg":   func(p *Params) { p.MinSize = 512 << 10 },
		"max too big":     func(p *Params) { p.MaxSize = 64 << 20 },
		"min too small":   func(p *Params) { p.MinSize = 100 },
		"segment < max":   func(p *Params) { p.SegmentSize = 1 << 20; p.MaxSize = 2 << 20 },
		"segment too big": func(p *Params) { p.SegmentSize = 1 << 40 },
	}
	for name, mut := range cases {
		p := base
		mut(&p)
		if err := p.Validate(); err == nil {
			t.Errorf("%s: Validate accepted %+v", name, p)
		}
	}
}

// TestStability pins the chunking of seeded data: a change to the
// algorithm, the defaults or the polynomial shows up here, and would make
// every stored manifest useless for diffing.
func TestStability(t *testing.T) {
	data := seeded(1, 32<<20)
	m := scanBytes(t, data, DefaultParams(), 2)
	var minLen, maxLen, sum uint64 = 1 << 62, 0, 0
	for i, e := range m.Entries {
		if e.Zero {
			t.Fatalf("random data gave a zero run at %d", i)
		}
		if i < len(m.Entries)-1 { // the last chunk is cut by the end of the volume
			minLen = min(minLen, e.Length)
		}
		maxLen = max(maxLen, e.Length)
		sum += e.Length
	}
	got := struct {
		Count    int
		Min, Max uint64
		First    string
		Root     string
	}{len(m.Entries), minLen, maxLen, m.Entries[0].ID.String()[:16], m.Root.String()[:16]}
	want := struct {
		Count    int
		Min, Max uint64
		First    string
		Root     string
	}{Count: pinnedCount, Min: pinnedMin, Max: pinnedMax, First: pinnedFirst, Root: pinnedRoot}
	if got != want {
		t.Fatalf("chunking of seeded data changed:\n got %+v\nwant %+v", got, want)
	}
	if sum != uint64(len(data)) {
		t.Fatalf("entries cover %d of %d bytes", sum, len(data))
	}
	avg := sum / uint64(len(m.Entries))
	if avg < DefaultMinSize || avg > DefaultMaxSize {
		t.Fatalf("average chunk %d outside [%d, %d]", avg, DefaultMinSize, DefaultMaxSize)
	}
}

// Values pinned from TestStability's seeded input.
const (
	pinnedCount = 440
	pinnedMin   = 16685
	pinnedMax   = 262144
	pinnedFirst = "46b77dafc2d736f6"
	pinnedRoot  = "e282a38d6706944c"
)

// randomSlices returns at most 1..max bytes per Read.
type randomSlices struct {
	r   io.Reader
	rng *rand.Rand
	max int
}

func (s *randomSlices) Read(p []byte) (int, error) {
	n := 1 + s.rng.IntN(s.max)
	if n < len(p) {
		p = p[:n]
	}
	return s.r.Read(p)
}

// TestSegmentFeeding checks that how the reader slices its data does not
// change the chunks: fed whole, byte by byte, and in random slices.
func TestSegmentFeeding(t *testing.T) {
	p := testParams()
	data := seeded(2, 3<<20)
	whole, _, err := newSegmentScanner(p).scan(context.Background(), bytes.NewReader(data), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(whole) < 10 {
		t.Fatalf("only %d chunks from 3 MiB", len(whole))
	}
	readers := map[string]io.Reader{
		"one byte":      iotest.OneByteReader(bytes.NewReader(data)),
		"random slices": &randomSlices{r: bytes.NewReader(data), rng: rand.New(rand.NewPCG(3, 4)), max: 70000},
		"half":          iotest.HalfReader(bytes.NewReader(data)),
	}
	for name, rd := range readers {
		got, _, err := newSegmentScanner(p).scan(context.Background(), rd, 0)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !equalEntries(got, whole) {
			t.Errorf("%s: %d entries differ from whole-buffer chunking (%d entries)", name, len(got), len(whole))
		}
	}
}

func equalEntries(a, b []Entry) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestWorkersAgree: the manifest does not depend on the number of workers.
func TestWorkersAgree(t *testing.T) {
	p := testParams()
	data := seeded(5, 21<<20+12345)
	one := scanBytes(t, data, p, 1)
	for _, w := range []int{2, 3, 8} {
		if m := scanBytes(t, data, p, w); m.Root != one.Root || !equalEntries(m.Entries, one.Entries) {
			t.Fatalf("workers=%d gave a different manifest", w)
		}
	}
}

func ids(m *Manifest) map[ID]bool {
	s := map[ID]bool{}
	for _, e := range m.Entries {
		if !e.Zero {
			s[e.ID] = true
		}
	}
	return s
}

// newBytes returns how many bytes of b's data chunks a does not have.
func newBytes(a, b *Manifest) uint64 {
	have := ids(a)
	var n uint64
	for _, e := range b.Entries {
		if !e.Zero && !have[e.ID] {
			n += e.Length
		}
	}
	return n
}

// TestResyncAfterInsertion: inserting bytes changes only the chunks around
// the insertion (and the chunks at the ends of the later segments, which
// are cut independently); the rest are found again.
func TestResyncAfterInsertion(t *testing.T) {
	p := testParams()
	data := seeded(6, 16<<20)
	ins := seeded(7, 100_000)
	mid := 5<<20 + 777
	changed := append(append(append([]byte{}, data[:mid]...), ins...), data[mid:]...)
	a, b := scanBytes(t, data, p, 2), scanBytes(t, changed, p, 2)
	later := uint64(len(changed)-mid) / p.SegmentSize // segments whose content shifted
	limit := uint64(len(ins)) + 2*uint64(p.MaxSize) + later*2*uint64(p.MaxSize)
	if n := newBytes(a, b); n > limit {
		t.Fatalf("insertion of %d bytes made %d new bytes (limit %d)", len(ins), n, limit)
	}
	// Within the segment of the insertion, the chunks after it resynchronise.
	if n := newBytes(a, b); n == 0 {
		t.Fatal("insertion made no new chunks")
	}
}

func TestZeroRuns(t *testing.T) {
	p := testParams()
	data := seeded(8, 12<<20)
	clear(data[1<<20 : 9<<20]) // 8 MiB of zeros across a segment boundary
	m := scanBytes(t, data, p, 2)
	var zeroRuns int
	var zeroBytes uint64
	for i, e := range m.Entries {
		if e.Zero {
			zeroRuns++
			zeroBytes += e.Length
			if i > 0 && m.Entries[i-1].Zero {
				t.Fatal("adjacent zero runs")
			}
		}
	}
	if zeroRuns != 1 {
		t.Fatalf("got %d zero runs, want 1 coalesced run", zeroRuns)
	}
	if zeroBytes < 7<<20 || zeroBytes > 8<<20 {
		t.Fatalf("zero run of %d bytes, want most of the 8 MiB hole", zeroBytes)
	}
	all := make([]byte, 5<<20)
	mz := scanBytes(t, all, p, 2)
	if len(mz.Entries) != 1 || !mz.Entries[0].Zero || mz.Entries[0].Length != uint64(len(all)) {
		t.Fatalf("all-zero volume gave %v", mz.Entries)
	}
}

func TestEmptyVolume(t *testing.T) {
	m := scanBytes(t, nil, testParams(), 2)
	if len(m.Entries) != 0 || m.Root.IsZero() {
		t.Fatalf("empty volume: %d entries, root %v", len(m.Entries), m.Root)
	}
}

func TestRootDependsOnEverything(t *testing.T) {
	p := testParams()
	data := seeded(9, 3<<20)
	base := scanBytes(t, data, p, 1)
	flip := append([]byte{}, data...)
	flip[len(flip)/2] ^= 1
	if scanBytes(t, flip, p, 1).Root == base.Root {
		t.Fatal("root unchanged by a flipped bit")
	}
	p2 := p
	p2.SegmentSize = 2 << 20
	if scanBytes(t, data, p2, 1).Root == base.Root {
		t.Fatal("root unchanged by other params")
	}
}

func TestManifestRoundTrip(t *testing.T) {
	data := seeded(10, 5<<20)
	clear(data[1<<20 : 2<<20])
	m := scanBytes(t, data, testParams(), 2)
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var got Manifest
	if err := got.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if got.Root != m.Root || !equalEntries(got.Entries, m.Entries) || got.Params != m.Params || got.Size != m.Size {
		t.Fatal("round trip changed the manifest")
	}
	for _, cut := range []int{0, 5, 40, len(b) - 1} {
		if err := new(Manifest).UnmarshalBinary(b[:cut]); err == nil {
			t.Errorf("truncated to %d bytes: no error", cut)
		}
	}
	bad := append([]byte{}, b...)
	bad[len(bad)-40] ^= 0xff // inside the last entry's id
	if err := new(Manifest).UnmarshalBinary(bad); err == nil {
		t.Error("flipped entry byte: no error")
	}
}

func TestBuilderRejects(t *testing.T) {
	p := testParams()
	cases := map[string][]Entry{
		"gap":           {{Offset: 0, Length: 10, ID: ID{1}}, {Offset: 11, Length: 89, ID: ID{2}}},
		"too long":      {{Offset: 0, Length: uint64(p.MaxSize) + 1, ID: ID{1}}},
		"adjacent zero": {{Offset: 0, Length: 50, Zero: true}, {Offset: 50, Length: 50, Zero: true}},
		"past end":      {{Offset: 0, Length: 101, ID: ID{1}}},
		"short":         {{Offset: 0, Length: 99, ID: ID{1}}},
	}
	for name, entries := range cases {
		b := NewBuilder(p, 100)
		var err error
		for _, e := range entries {
			if err = b.Add(e); err != nil {
				break
			}
		}
		if err == nil {
			_, err = b.Finish()
		}
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	b := NewBuilder(p, uint64(p.SegmentSize)+10)
	b.Add(Entry{Offset: 0, Length: uint64(p.SegmentSize) - 5, Zero: true})
	if err := b.Add(Entry{Offset: uint64(p.SegmentSize) - 5, Length: 15, ID: ID{1}}); err == nil {
		t.Error("segment-crossing entry accepted")
	}
}

func TestIDParse(t *testing.T) {
	id := Sum([]byte("voldelta"))
	got, err := ParseID(id.String())
	if err != nil || got != id {
		t.Fatalf("ParseID(String()) = %v, %v", got, err)
	}
	for _, s := range []string{"", "xyz", id.String()[:10], id.String() + "00"} {
		if _, err := ParseID(s); err == nil {
			t.Errorf("ParseID(%q) accepted", s)
		}
	}
}

func TestScanReadError(t *testing.T) {
	p := testParams()
	r := &failingReaderAt{data: seeded(11, 9<<20), failAt: 6 << 20}
	_, _, err := ScanManifest(context.Background(), r, uint64(len(r.data)), p, ScanOptions{Workers: 2})
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("disk on fire")) {
		t.Fatalf("want the read error, got %v", err)
	}
}

func TestScanCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	data := seeded(12, 9<<20)
	if _, _, err := ScanManifest(ctx, bytes.NewReader(data), uint64(len(data)), testParams(), ScanOptions{}); err == nil {
		t.Fatal("cancelled scan returned no error")
	}
}

type failingReaderAt struct {
	data   []byte
	failAt int64
}

func (f *failingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > f.failAt {
		return 0, errDisk
	}
	return bytes.NewReader(f.data).ReadAt(p, off)
}

var errDisk = &diskErr{}

type diskErr struct{}

func (*diskErr) Error() string { return "disk on fire" }

func newBytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

// TestScanReusesUnchangedSegments: with changed-extent hints, only the
// touched segments are read, and the manifest equals a full scan's.
func TestScanReusesUnchangedSegments(t *testing.T) {
	p := testParams() // 4 MiB segments
	data := seeded(30, 22<<20)
	clear(data[8<<20 : 13<<20]) // a zero run across a segment edge
	prev := scanBytes(t, data, p, 2)

	changed := append([]byte{}, data...)
	copy(changed[9<<20+100:], seeded(31, 5000))     // inside the zero run, segment 2
	copy(changed[17<<20:], seeded(32, 70000))       // segment 4
	changed = append(changed, seeded(33, 3<<20)...) // grows the last segment and adds one
	hints := []Extent{{Offset: 9<<20 + 100, Length: 5000}, {Offset: 17 << 20, Length: 70000}, {Offset: 22 << 20, Length: 3 << 20}}

	full := scanBytes(t, changed, p, 2)
	got, st, err := ScanManifest(context.Background(), bytes.NewReader(changed), uint64(len(changed)), p,
		ScanOptions{Workers: 2, Previous: prev, Changed: hints})
	if err != nil {
		t.Fatal(err)
	}
	if got.Root != full.Root || !equalEntries(got.Entries, full.Entries) {
		t.Fatal("scan with hints differs from a full scan")
	}
	// Segments 0, 1 and 3 are untouched; 2 and 4 changed around a few
	// chunks; 5 grew by 2 MiB; 6 (1 MiB) is new: about 3 MiB read.
	if st.ReusedSegments != 3 {
		t.Fatalf("reused %d whole segments, want 3", st.ReusedSegments)
	}
	if st.ReadBytes+st.ReusedBytes < uint64(len(changed)) || st.ReadBytes > 3<<20+1<<19 {
		t.Fatalf("read %d and reused %d bytes of %d: want about 3 MiB read, the rest reused", st.ReadBytes, st.ReusedBytes, len(changed))
	}
	// No hints: nothing reused.
	_, st, _ = ScanManifest(context.Background(), bytes.NewReader(changed), uint64(len(changed)), p, ScanOptions{Previous: prev})
	if st.ReusedSegments != 0 {
		t.Fatalf("reused %d segments without hints", st.ReusedSegments)
	}
	// Other params: nothing reused.
	p2 := p
	p2.MinSize = 8 << 10
	_, st, _ = ScanManifest(context.Background(), bytes.NewReader(data), uint64(len(data)), p2, ScanOptions{Previous: prev, Changed: []Extent{}})
	if st.ReusedSegments != 0 {
		t.Fatalf("reused %d segments of a manifest with other params", st.ReusedSegments)
	}
	// Empty hints on unchanged data: everything reused, same root.
	same, st, _ := ScanManifest(context.Background(), bytes.NewReader(data), uint64(len(data)), p, ScanOptions{Previous: prev, Changed: []Extent{}})
	if same.Root != prev.Root || st.ReusedBytes != uint64(len(data)) {
		t.Fatalf("unchanged volume: root %v, reused %d of %d bytes", same.Root == prev.Root, st.ReusedBytes, len(data))
	}
}
