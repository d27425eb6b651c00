package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPlanDelta(t *testing.T) {
	for _, gib := range []int64{1, 4} {
		size := gib << 30
		p, err := planDelta(size, uint64(gib))
		if err != nil {
			t.Fatal(err)
		}
		rs := p.Ranges()
		if len(p.Regions) != scaleRegions || len(p.Pages) != scalePages || len(rs) != scaleRegions+scalePages {
			t.Fatalf("%d regions, %d pages, %d ranges", len(p.Regions), len(p.Pages), len(rs))
		}
		if got, want := p.ChangedBytes(), int64(64*mib+scalePages*scalePageBytes); got != want {
			t.Errorf("changed %d bytes, want %d", got, want)
		}
		for i, e := range rs {
			if e.Off < 0 || e.End() > size {
				t.Fatalf("range %v outside the volume", e)
			}
			if i > 0 && rs[i-1].End() >= e.Off {
				t.Fatalf("ranges %v and %v touch", rs[i-1], e)
			}
		}
		for i, e := range p.Regions {
			if e.Off/(size/scaleRegions) != int64(i) || e.Off%scaleAlign != 0 {
				t.Errorf("region %d at %d: not in its sixteenth or not aligned", i, e.Off)
			}
		}
		again, _ := planDelta(size, uint64(gib))
		if changedList(again.Ranges()) != changedList(rs) {
			t.Error("planDelta is not deterministic")
		}
	}
	if _, err := planDelta(64*mib, 1); err == nil {
		t.Error("a 64 MiB volume accepted")
	}
}

func TestChangedList(t *testing.T) {
	got := changedList([]Extent{{0, 4096}, {1 << 30, 16384}})
	if want := "0 4096\n1073741824 16384\n"; got != want {
		t.Errorf("changedList = %q, want %q", got, want)
	}
}

func TestImagesDeltaAndCompare(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	const size = 20*mib + 12345
	if err := writeImages([]string{a, b}, size, "x"); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(a); err != nil || st.Size() != size {
		t.Fatalf("size %v, %v", st, err)
	}
	if d, err := compareFiles(a, b, nil); err != nil || d != "" {
		t.Fatalf("identical images differ: %q %v", d, err)
	}
	rs := []Extent{{4096, 16384}, {10 * mib, 5 * mib}}
	if err := applyDelta(b, rs, "gen 2"); err != nil {
		t.Fatal(err)
	}
	if d, _ := compareFiles(a, b, nil); d == "" {
		t.Error("a delta went unnoticed by the full comparison")
	}
	if d, _ := compareFiles(a, b, checkExtents(rs, size, 4, 1)); d == "" {
		t.Error("a delta went unnoticed by the range comparison")
	}
	if d, _ := compareFiles(a, b, []Extent{{0, 4096}, {20 * mib, 12345}}); d != "" {
		t.Errorf("unchanged ranges differ: %s", d)
	}
	// The same label writes the same bytes: the delta is reproducible.
	if err := applyDelta(a, rs, "gen 2"); err != nil {
		t.Fatal(err)
	}
	if d, _ := compareFiles(a, b, nil); d != "" {
		t.Errorf("the same delta twice differs: %s", d)
	}
}

func TestScaleFlags(t *testing.T) {
	if got, err := parseSizes("1 4,16"); err != nil || len(got) != 3 || got[2] != 16 {
		t.Errorf("parseSizes = %v, %v", got, err)
	}
	for _, bad := range []string{"", "0", "1.5", "x"} {
		if _, err := parseSizes(bad); err == nil {
			t.Errorf("parseSizes(%q) accepted", bad)
		}
	}
	if r, err := parseRate("100mbit"); err != nil || r != 100e6 {
		t.Errorf("parseRate = %v, %v", r, err)
	}
	if _, err := parseRate("fast"); err == nil {
		t.Error("parseRate(fast) accepted")
	}
	help := `Flags:
      --base string           a snapshot
      --cache-dir string      dir
  -q, --quiet                 quiet
      --source string         what
`
	got := strings.Join(helpFlags(help), " ")
	if got != "--base --cache-dir --quiet --source" {
		t.Errorf("helpFlags = %q", got)
	}
}

func TestScaleReport(t *testing.T) {
	p, err := planDelta(1<<30, 1)
	if err != nil {
		t.Fatal(err)
	}
	res := &ScaleResults{Versions: map[string]string{}, RateBitsPerSec: 100e6, Delta: describeDelta(p, 100e6),
		SendFlags: map[string]bool{"--base": true}, Verify: "ranges"}
	if f := res.Delta.FloorSeconds; f < 7.98 || f > 8.0 {
		t.Errorf("floor %.3f s, want 7.99 s", f)
	}
	hints := newScaleRow("voldelta-hints")
	hints.Steps = []*Round{{Seconds: 9, LinkTxBytes: 100e6, Stats: map[string]any{"bytes_read": 150e6, "manifest_bytes": 100000.0,
		"chunks_sent": 2000.0, "scan_mode": "incremental"}}}
	full := newScaleRow("voldelta-full")
	full.Steps = []*Round{{Seconds: 7, Procs: []Usage{{Side: SideSrc, ReadBytes: 1 << 30}}}}
	before := newScaleRow("voldelta-before")
	before.Steps = []*Round{{Seconds: 6.5, Stats: map[string]any{"scan_seconds": 4.0}}}
	skipped := newScaleRow("voldelta-changed")
	skipped.Skipped = "voldelta send has no --changed flag"
	res.Sizes = []*ScaleSize{{GiB: 1, Bytes: 1 << 30, Rows: []*ScaleRow{before, full, hints, skipped}, Setup: map[string]float64{}}}
	dir := t.TempDir()
	if err := writeScaleResults(dir, res, false); err != nil && !strings.Contains(err.Error(), "gnuplot") {
		t.Fatal(err)
	}
	want := map[string]string{
		"with hints (--base): round":             "PASS", // 9 s ≤ 10.59 s
		"with hints (--base): bytes read":        "PASS",
		"with hints (--base): manifest bytes":    "PASS", // 100000 ≤ 64 × 2000 + 4096
		"with hints (--changed): round":          "n/a",  // skipped
		"with hints (--changed): manifest bytes": "n/a",
		"without hints":                          "FAIL", // 7 s > 6.5 s × 1.05
	}
	seen := map[string]bool{}
	for _, c := range res.Checks {
		for prefix, st := range want {
			if strings.HasPrefix(c.Target, prefix) {
				seen[prefix] = true
				if c.Status != st {
					t.Errorf("%s: %s, want %s (%+v)", prefix, c.Status, st, c)
				}
			}
		}
	}
	for prefix := range want {
		if !seen[prefix] {
			t.Errorf("no check %q in %+v", prefix, res.Checks)
		}
	}
	before.Steps[0].Seconds = 6.8 // 7 s ≤ 6.8 s × 1.05: within the noise
	before.summarize(res.Delta.FloorSeconds, res.Probe)
	if c, ok, m := noWorseCheck(res.Sizes[0]); !ok || !m {
		t.Errorf("7 s against 6.8 s before: %+v", c)
	}
	if full.FSReadSrc != 1<<30 || full.FloorRatio < 0.87 || full.FloorRatio > 0.88 {
		t.Errorf("full row: %+v", full)
	}
	md, err := os.ReadFile(filepath.Join(dir, "scale.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"| 1 GiB | voldelta --base (reflink hints) | **9.00 s** | 1.13× |", "skipped: voldelta send has no --changed flag", "incremental"} {
		if !strings.Contains(string(md), s) {
			t.Errorf("scale.md lacks %q:\n%s", s, md)
		}
	}
	if dat := scaleChartData(res); !strings.Contains(dat, "\n1 6.800 7.000 9.000 ? ? ? 7.990 10.588\n") {
		t.Errorf("chart data:\n%s", dat)
	}
}
