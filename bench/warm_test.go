package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWarmFlags(t *testing.T) {
	cfg, err := parseWarmFlags([]string{"-data-mib", "512", "-rows-per-sec", "10", "-max-rounds", "3", "-work", t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DataMiB != 512 || cfg.RowsPerSec != 10 || cfg.MaxRounds != 3 || cfg.ConvergeBytes != 16<<20 || cfg.Scale.RedoLog != "96M" {
		t.Errorf("config %+v", cfg)
	}
	if !strings.HasPrefix(filepath.Base(cfg.Out), "warm-") {
		t.Errorf("out %q", cfg.Out)
	}
	for _, bad := range [][]string{{"-max-rounds", "1"}, {"-data-mib", "10"}, {"-rows-per-sec", "0"}} {
		if _, err := parseWarmFlags(bad); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

func TestInsertBatch(t *testing.T) {
	got := insertBatch(7)
	if !strings.HasPrefix(got, "insert into person (long_name, age, birth_day) select repeat(md5(rand()), 1000)") ||
		!strings.HasSuffix(got, "from seq_1_to_7;\n") {
		t.Errorf("insertBatch(7) = %q", got)
	}
}

// warmFixture is a run with every flow: voldelta's final round carried
// 2.5 MB (each direction ≤), at 12.5 MB/s a link time of 0.2 s.
func warmFixture() *WarmResults {
	vd := &WarmFlow{Key: "voldelta", Label: warmLabels["voldelta"], StopSeconds: 0.5, SnapshotSeconds: 0.1,
		Steps: []*Round{{Name: "voldelta send final", Seconds: 1.2, LinkTxBytes: 2.5e6, LinkRxBytes: 1e5,
			Stats: map[string]any{"scan_seconds": 0.2, "duration_seconds": 1.1, "scan_mode": "incremental", "hint_source": "reflink"}}},
		PromoteSeconds: 0.6, WallSeconds: 2.45, Rows: 100, MaxID: 120, RowsOK: true, Verified: true}
	bk := &Round{Name: "restic backup final", Seconds: 4, LinkTxBytes: 3e6}
	rf := &WarmFlow{Key: "restic-full", Label: warmLabels["restic-full"], StopSeconds: 0.5, PromoteSeconds: 0.5,
		Steps: []*Round{bk, {Name: "restic restore full", Seconds: 5}}, Rows: 100, MaxID: 120, RowsOK: true, Verified: true}
	ri := &WarmFlow{Key: "restic-inplace", Label: warmLabels["restic-inplace"], StopSeconds: 0.5, PromoteSeconds: 0.5,
		Steps: []*Round{bk, {Name: "restic restore in-place", Seconds: 3}}, Rows: 100, MaxID: 120, RowsOK: true}
	rs := &WarmFlow{Key: "rsync", Label: warmLabels["rsync"], StopSeconds: 0.5, Error: "rsync: exit status 23",
		Steps: []*Round{{Name: "rsync final", Seconds: 9}}}
	return &WarmResults{Versions: map[string]string{}, Setup: map[string]float64{}, Params: WarmParams{ConvergeBytes: 16 << 20, MaxRounds: 6},
		Probe:   LinkProbe{LinkRateBytesS: 12.5e6, LinkRateMbit: 100},
		Precopy: []*WarmRound{{N: 1, Round: &Round{Seconds: 30, Stats: map[string]any{"scan_mode": "full", "full_scan_reason": "first round: the receiver has no generation"}}}},
		Flows:   []*WarmFlow{vd, rf, ri, rs}, RowsAtStop: 100, MaxIDAtStop: 120}
}

func checkStatus(t *testing.T, res *WarmResults, want ...string) {
	t.Helper()
	if len(res.Checks) != len(want) {
		t.Fatalf("%d checks, want %d: %+v", len(res.Checks), len(want), res.Checks)
	}
	for i, c := range res.Checks {
		if c.Status != want[i] {
			t.Errorf("check %q: %s (%.3f against %.3f), want %s", c.Target, c.Status, c.Value, c.Limit, want[i])
		}
	}
}

func TestWarmReport(t *testing.T) {
	res := warmFixture()
	dir := t.TempDir()
	if err := writeWarmResults(dir, res, false); err != nil && !strings.Contains(err.Error(), "gnuplot") {
		t.Fatal(err)
	}
	vd, rf, ri := res.flow("voldelta"), res.flow("restic-full"), res.flow("restic-inplace")
	// voldelta: the clock's t1 − t0; the others: the sum of their parts.
	if vd.DowntimeSeconds != 2.45 || rf.DowntimeSeconds != 10 || ri.DowntimeSeconds != 8 {
		t.Errorf("downtimes %.2f %.2f %.2f", vd.DowntimeSeconds, rf.DowntimeSeconds, ri.DowntimeSeconds)
	}
	if res.FinalLinkSeconds != 0.2 || vd.LinkTxBytes != 2.5e6 || rf.LinkTxBytes != 3e6 {
		t.Errorf("final link %.3f s, link bytes %d %d", res.FinalLinkSeconds, vd.LinkTxBytes, rf.LinkTxBytes)
	}
	// 2.45 ≤ 1.5 × 0.2 + 2 = 2.3? no; 2.45 ≤ 0.3 × 10 = 3: yes.
	checkStatus(t, res, "FAIL", "PASS")

	res.Flows[0].WallSeconds = 2.2
	res.Flows[1].Steps[1].Seconds = 2 // restic: 7 s, 0.3 × 7 = 2.1
	finishWarm(res)
	checkStatus(t, res, "PASS", "FAIL")

	res.Flows[1].Error = "restic restore: exit status 1"
	res.Probe.LinkRateBytesS = 0
	finishWarm(res)
	checkStatus(t, res, "n/a", "n/a")

	md, err := os.ReadFile(filepath.Join(dir, "warm.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{
		"| downtime ≤ 1.5 × link time of the final delta + 2 s | 2.45 s | 2.30 s | **FAIL** |",
		"| voldelta (pre-copy + final round --base) | **2.45 s** | 0.50 s | 0.10 s | 1.20 s | 0 s | 0.60 s | 2.5 MB / 0.1 MB | 100 | yes | — |",
		"| restic backup + full restore | **10.0 s** | 0.50 s | 0 s | 4.00 s | 5.00 s | 0.50 s | 3.0 MB / 0.0 MB | 100 | yes | 4.08× |",
		"| rsync --inplace | **failed: rsync: exit status 23** |",
		"full (first round: the receiver has no generation)",
		"scan 0.20 s (`scan_mode` incremental",
	} {
		if !strings.Contains(string(md), s) {
			t.Errorf("warm.md lacks %q:\n%s", s, md)
		}
	}
	// The JSON renders again (NaN is stored as -1).
	raw, err := os.ReadFile(filepath.Join(dir, "warm.json"))
	if err != nil {
		t.Fatal(err)
	}
	var back WarmResults
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Flows) != 4 || back.Flows[0].DowntimeSeconds != 2.45 {
		t.Errorf("warm.json: %+v", back.Flows)
	}
	if err := renderWarmDir(dir); err != nil && !strings.Contains(err.Error(), "gnuplot") {
		t.Fatal(err)
	}
}

func TestWarmChartData(t *testing.T) {
	res := warmFixture()
	finishWarm(res)
	got := warmChartData(res)
	// rsync failed: no bar; voldelta's promote bar is what the clock saw
	// beyond stop, snapshot and round (2.45 − 0.5 − 0.1 − 1.2).
	want := "# flow stop snapshot transfer restore promote\n" +
		"\"voldelta (pre-copy + final round --base)\" 0.500 0.100 1.200 0.000 0.650\n" +
		"\"restic backup + full restore\" 0.500 0.000 4.000 5.000 0.500\n" +
		"\"restic backup + in-place restore\" 0.500 0.000 4.000 3.000 0.500\n"
	if got != want {
		t.Errorf("chart data:\n%s\nwant:\n%s", got, want)
	}
}
