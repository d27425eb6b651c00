package main

// Tests of the harness's pieces that need no root: the figures it derives,
// the table and chart data it renders, tree comparison, the cleanup stack,
// process accounting, the SQL it generates and the link probe over real
// TCP. The benchmark itself runs only through `make bench` / `make
// bench-quick`, never as part of `make test`.

import (
	"encoding/json"
	"errors"
	"math"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

func sampleResults() *Results {
	probe := LinkProbe{RTTMillisMed: 20.5, LinkRateMbit: 100, LinkRateBytesS: 12.5e6}
	r := func(name string, secs float64, tx, rx uint64, verified bool, procs ...Usage) *Round {
		return &Round{Name: name, Seconds: secs, LinkTxBytes: tx, LinkRxBytes: rx, Verified: verified,
			VerifyNote: "checked", Procs: procs}
	}
	src := func(cpu float64, rssKiB int64) Usage {
		return Usage{Name: "client", Side: SideSrc, UserCPU: cpu, MaxRSSKiB: rssKiB}
	}
	dst := func(cpu float64, rssKiB int64) Usage {
		return Usage{Name: "server", Side: SideDst, SysCPU: cpu, MaxRSSKiB: rssKiB}
	}
	named := func(name string, u Usage) Usage { u.Name = name; return u }
	push := func(cpu float64, rssKiB int64) Usage { return named("voldelta push", src(cpu, rssKiB)) }
	pull := func(cpu float64, rssKiB int64) Usage { return named("voldelta pull", dst(cpu, rssKiB)) }
	minio := func(cpu float64, rssKiB int64) Usage { return named("minio", dst(cpu, rssKiB)) }
	stats := func(r *Round, key string, n float64) *Round { r.Stats = map[string]any{key: n}; return r }
	unverified := func(r *Round) *Round { r.VerifyNote = ""; return r }
	s := &ScenarioResult{Name: "large-file", Title: "t", DataBytes: 1.5e9, DataBytesAfter: 1.52e9, DeltaBytes: 20e6, Probe: probe,
		Voldelta: &ToolResult{Tool: "voldelta",
			Initial: r("voldelta initial", 120, 1.5e9, 1e6, true, src(10, 1024), dst(5, 2048)),
			Delta:   r("voldelta delta", 6, 25e6, 5e6, true, src(4, 1024), dst(1, 4096))},
		VoldeltaMinio: &ToolResult{Tool: "voldelta via MinIO",
			Initial: stats(unverified(r("voldelta push initial", 110, 1.45e9, 3e6, false,
				push(12, 50*1024), minio(6, 200*1024))), "bytes_uploaded", 1.44e9),
			InitialPull: stats(r("voldelta pull initial", 15, 0, 0, true,
				pull(7, 60*1024), minio(3, 150*1024)), "bytes_downloaded", 1.44e9),
			Delta: stats(unverified(r("voldelta push delta", 4, 22e6, 1e6, false,
				push(3, 40*1024), minio(0.5, 100*1024))), "bytes_uploaded", 20.5e6),
			DeltaPull: stats(r("voldelta pull delta", 2, 1e3, 1e3, true,
				pull(1, 30*1024), minio(0.25, 120*1024)), "bytes_downloaded", 20.5e6)},
		Restic: &ToolResult{Tool: "restic",
			Initial:        r("restic backup initial", 130, 1.5e9, 2e6, false, src(30, 512*1024), dst(8, 256*1024)),
			InitialRestore: r("restic restore initial", 20, 0, 0, true, dst(15, 300*1024)),
			Delta:          r("restic backup delta", 12, 21e6, 1e6, false, src(9, 512*1024), dst(1, 256*1024)),
			FullRestore:    r("restic restore full", 18, 0, 0, true, dst(14, 300*1024)),
			InPlaceRestore: r("restic restore in-place", 9, 0, 0, true, dst(7, 200*1024))},
		Rsync: &ToolResult{Tool: "rsync",
			Initial: r("rsync initial", 125, 1.5e9, 3e6, true),
			Delta:   r("rsync delta", 15, 22e6, 2e6, true)},
	}
	upd := &ScenarioResult{Name: "mariadb-update", Continues: "mariadb-insert", DataBytes: 8e8, DataBytesAfter: 8e8, DeltaBytes: 17e6, Probe: probe,
		Voldelta: &ToolResult{Delta: r("voldelta delta", 3, 10e6, 1e6, true)},
		VoldeltaMinio: &ToolResult{Delta: unverified(r("voldelta push delta", 2.5, 9e6, 1e6, false)),
			DeltaPull: r("voldelta pull delta", 1.5, 0, 0, false)},
		Restic: &ToolResult{Delta: r("restic backup delta", 8, 9e6, 1e6, false),
			FullRestore:    r("restic restore full", 10, 0, 0, true),
			InPlaceRestore: r("restic restore in-place", 6, 0, 0, false)},
		Rsync: &ToolResult{Delta: r("rsync delta", 9, 20e6, 1e6, true)},
	}
	return &Results{Scale: scales["default"], Link: LinkSetup{Rate: "100mbit", OneWayDelayMs: 10},
		Machine: Machine{NProc: 2, CPUModel: "Test CPU"}, Command: "bench -scale default",
		Scenarios: []*ScenarioResult{s, upd}}
}

// summarized is res with every scenario's flows derived, as writeResults
// does before it renders.
func summarized(res *Results) *Results {
	for _, s := range res.Scenarios {
		s.summarize()
	}
	return res
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9*math.Max(1, math.Abs(b)) }

func TestSummarize(t *testing.T) {
	res := sampleResults()
	s := res.Scenarios[0]
	s.summarize()
	if len(s.Summary) != 5 {
		t.Fatalf("got %d flows, want 5", len(s.Summary))
	}
	var order []string
	for _, f := range s.Summary {
		order = append(order, f.Flow)
	}
	if got, want := strings.Join(order, ", "), "voldelta, voldelta via MinIO, restic + full restore, restic + in-place restore, rsync --inplace"; got != want {
		t.Errorf("flows %s, want %s", got, want)
	}
	v, vm, rf, ri, rs := s.flow("voldelta"), s.flow("voldelta via MinIO"), s.flow("restic + full restore"), s.flow("restic + in-place restore"), s.flow("rsync --inplace")
	if v == nil || vm == nil || rf == nil || ri == nil || rs == nil {
		t.Fatalf("missing flows: %+v", s.Summary)
	}
	// voldelta's apply is in its sync: cutover = the delta round.
	if v.CutoverSeconds != 6 || v.RestoreSeconds != 0 || !v.RestoreIsInTheSync {
		t.Errorf("voldelta: %+v", v)
	}
	// Link-limited: the busier direction (25 MB) at 12.5 MB/s.
	if !near(v.DeltaLinkLimitedS, 2) {
		t.Errorf("voldelta link-limited = %v, want 2", v.DeltaLinkLimitedS)
	}
	if v.DeltaLinkBytes != 30e6 {
		t.Errorf("voldelta link bytes = %d, want both directions", v.DeltaLinkBytes)
	}
	// restic: cutover = delta backup + the restore; verified by the restore.
	if rf.CutoverSeconds != 30 || ri.CutoverSeconds != 21 || !rf.Verified || !ri.Verified {
		t.Errorf("restic flows: %+v / %+v", rf, ri)
	}
	// GB/min: 1.5 GB in 2 minutes; 0.02 GB in 0.1 min; 1.52 GB in 0.3 min.
	if !near(v.InitialGBMin, 0.75) || !near(v.DeltaGBMin, 0.2) || !near(rf.RestoreGBMin, 1.52/0.3) {
		t.Errorf("GB/min: %v %v %v", v.InitialGBMin, v.DeltaGBMin, rf.RestoreGBMin)
	}
	// CPU and RSS per side; the restore's destination side is added.
	if !near(rf.DeltaCPUSrc, 9) || !near(rf.DeltaCPUDst, 15) || !near(rf.DeltaRSSDstMiB, 300) || !near(rf.DeltaRSSSrcMiB, 512) {
		t.Errorf("restic resources: %+v", rf)
	}
	if !near(v.DeltaRSSDstMiB, 4) {
		t.Errorf("voldelta dst RSS = %v MiB, want 4", v.DeltaRSSDstMiB)
	}
	if v.RestoreInPlace || rf.RestoreInPlace || !ri.RestoreInPlace || rs.RestoreInPlace || rf.RestoreIsInTheSync || ri.RestoreIsInTheSync {
		t.Errorf("apply kinds: voldelta %+v, restic %+v / %+v, rsync %+v", v, rf, ri, rs)
	}
}

// voldelta via MinIO: the push is the transfer, the pull the in-place
// apply at the target; the cutover is the last push + its pull.
func TestSummarizeVoldeltaMinio(t *testing.T) {
	res := sampleResults()
	s := res.Scenarios[0]
	s.summarize()
	f := s.flow("voldelta via MinIO")
	if f == nil {
		t.Fatalf("no voldelta via MinIO flow: %+v", s.Summary)
	}
	if f.InitialSeconds != 110 || f.DeltaSeconds != 4 || f.RestoreSeconds != 2 || f.CutoverSeconds != 6 {
		t.Errorf("times: initial %v, delta %v, restore %v, cutover %v; want 110, 4 (push), 2 (pull), 6 (push + pull)",
			f.InitialSeconds, f.DeltaSeconds, f.RestoreSeconds, f.CutoverSeconds)
	}
	if !f.RestoreInPlace || f.RestoreIsInTheSync {
		t.Errorf("the pull is a separate in-place step: %+v", f)
	}
	// Verified by the pull, not by the push (which checks nothing).
	if !f.Verified {
		t.Errorf("verified = false, want the pull's verification")
	}
	if f.InitialLinkBytes != 1.453e9 || f.DeltaLinkBytes != 23e6 || !near(f.DeltaLinkLimitedS, 22e6/12.5e6) {
		t.Errorf("link: initial %d, delta %d bytes, %v s link-limited", f.InitialLinkBytes, f.DeltaLinkBytes, f.DeltaLinkLimitedS)
	}
	// Source: the push; destination: MinIO during the push, then the pull
	// and MinIO; peak RSS per side the larger of the two steps.
	if !near(f.DeltaCPUSrc, 3) || !near(f.DeltaCPUDst, 0.5+1+0.25) || !near(f.DeltaRSSSrcMiB, 40) || !near(f.DeltaRSSDstMiB, 150) {
		t.Errorf("resources: %+v", f)
	}
	// In the continued scenario a failed check of the pull shows.
	upd := res.Scenarios[1]
	upd.summarize()
	if f := upd.flow("voldelta via MinIO"); f == nil || f.CutoverSeconds != 4 || f.Verified || f.InitialSeconds != 0 {
		t.Errorf("mariadb-update: %+v", f)
	}
}

func TestSummarizeNoProbe(t *testing.T) {
	s := &ScenarioResult{Voldelta: &ToolResult{Delta: &Round{Seconds: 1, LinkTxBytes: 5}}}
	s.summarize()
	if got := s.flow("voldelta").DeltaLinkLimitedS; got != 0 {
		t.Errorf("without a link probe the link-limited time is %v, want 0 (unknown)", got)
	}
}

func TestRenderMarkdown(t *testing.T) {
	res := summarized(sampleResults())
	md := renderMarkdown(res)
	for _, want := range []string{
		"## The study's table",
		"| large-file | voldelta | 1.50 GB | 0.020 GB | 0.75 GB/min (120.0 s) | 0.200 GB/min (6.00 s) | in the sync (0 s after it) | **6.00 s** | yes |",
		"| large-file | restic + full restore | 1.50 GB | 0.020 GB | 0.69 GB/min (130.0 s) | 0.100 GB/min (12.0 s) | 5.07 GB/min (18.0 s), full | **30.0 s** | yes |",
		"| large-file | restic + in-place restore |",
		"9.00 s, in place | **21.0 s** | yes |",
		"| mariadb-update | voldelta | (state after mariadb-insert) 0.80 GB | 0.017 GB | — |",
		"| mariadb-update | restic + in-place restore |",
		"**14.0 s** | NO |",
		// voldelta via MinIO: push = the copy, pull = the in-place apply.
		"| large-file | voldelta via MinIO | 1.50 GB | 0.020 GB | 0.82 GB/min (110.0 s) | 0.300 GB/min (4.00 s) | 2.00 s, in place | **6.00 s** | yes |",
		"| mariadb-update | voldelta via MinIO | (state after mariadb-insert) 0.80 GB | 0.017 GB | — | 0.408 GB/min (2.50 s) | 1.50 s, in place | **4.00 s** | NO |",
		// Its own section: push, pull, total, link, uploaded, downloaded,
		// CPU and RSS per process, verified, cutover and its ratios.
		"## voldelta via MinIO: push at the source, pull at the destination",
		"| large-file | initial | 110.0 s | 15.0 s | 125.0 s | 1453.0 MB | 1440.0 MB | 1440.0 MB | 12.0 / 7.0 / 9.0 s | 50 / 60 / 200 MiB | yes | — | — | — |",
		"| large-file | delta | 4.00 s | 2.00 s | 6.00 s | 23.0 MB | 20.5 MB | 20.5 MB | 3.0 / 1.0 / 0.8 s | 40 / 30 / 120 MiB | yes | **6.00 s** | 1.00× | 0.29× |",
		"| mariadb-update | delta | 2.50 s | 1.50 s | 4.00 s | 10.0 MB | ? | ? | 0.0 / 0.0 / 0.0 s | 0 / 0 / 0 MiB | NO | **4.00 s** | 1.33× | 0.29× |",
		// Every round lists the push and the pull; a push has no check.
		"| large-file | voldelta push delta | 4.00 s | 22.0 MB | 1.0 MB | 1.76 s | 3.0 s | 0.5 s | 40 MiB | 100 MiB | — |",
		"| large-file | voldelta pull delta | 2.00 s | 0.0 MB | 0.0 MB | 0.00 s | 0.0 s | 1.2 s | 0 MiB | 150 MiB | yes |",
		// voldelta against the link and restic: 6 s vs 2 s link-limited, cutover 6 vs 30 and 21.
		"| large-file | 100.0 Mbit/s, 20.5 ms | 6.00 s | 30.0 MB | 2.00 s | 3.00× | ? | 12.0 s | **6.00 s** | 30.0 s | 0.20× | 21.0 s | 0.29× |",
		"| large-file | restic restore full | 18.0 s | 0.0 MB | 0.0 MB | 0 s | 0.0 s | 14.0 s | 0 MiB | 300 MiB | yes |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q\n%s", want, md)
		}
	}
	if strings.Contains(md, "NaN") {
		t.Errorf("markdown has NaN:\n%s", md)
	}
}

func TestRenderMarkdownFailedScenario(t *testing.T) {
	res := &Results{Scale: scales["quick"], Scenarios: []*ScenarioResult{{Name: "small-files", Error: "rsync: exit status 12\nmore"}}}
	md := renderMarkdown(res)
	if !strings.Contains(md, "**small-files failed:** rsync: exit status 12\n") {
		t.Errorf("failure not reported:\n%s", md)
	}
}

func TestChartData(t *testing.T) {
	res := summarized(sampleResults())
	lines := strings.Split(strings.TrimSpace(chartData(res)), "\n")
	if len(lines) != 3 {
		t.Fatalf("got %d lines, want a header and 2 scenarios:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	// The gnuplot script reads columns 2..11: delta and cutover of 5 flows,
	// voldelta via MinIO last (push; push + pull).
	want := `"large-file" 6.000 6.000 12.000 30.000 12.000 21.000 15.000 15.000 4.000 6.000`
	if lines[1] != want {
		t.Errorf("line 1 = %q, want %q", lines[1], want)
	}
	if f := strings.Fields(lines[2]); len(f) != 11 {
		t.Errorf("line 2 has %d columns, want 11: %q", len(f), lines[2])
	}
	// Every column the script plots is in the data, and every flow's is
	// plotted.
	cols := len(strings.Fields(lines[1]))
	plotted := map[int]bool{}
	for _, m := range regexp.MustCompile(`using (?:\(?\$0[^:]*:)?(\d+)`).FindAllStringSubmatch(chartScript, -1) {
		n, _ := strconv.Atoi(m[1])
		if n < 2 || n > cols {
			t.Errorf("the chart plots column %d; the data has columns 2..%d", n, cols)
		}
		plotted[n] = true
	}
	for n := 2; n <= cols; n++ {
		if !plotted[n] && n != 6 { // 6: restic's backup again, drawn once (column 4)
			t.Errorf("column %d is not plotted", n)
		}
	}
}

// results.json carries the new row: render (from results.json) draws the
// same report as the run did.
func TestResultsJSONRoundTrip(t *testing.T) {
	res := summarized(sampleResults())
	raw, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"voldelta_minio":`, `"initial_pull":`, `"delta_pull":`, `"flow":"voldelta via MinIO"`, `"restore_in_place":true`} {
		if !strings.Contains(string(raw), key) {
			t.Errorf("results.json lacks %s", key)
		}
	}
	var back Results
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	if got, want := renderMarkdown(summarized(&back)), renderMarkdown(res); got != want {
		t.Errorf("report from results.json differs:\n%s\nwant:\n%s", got, want)
	}
}

func TestTreeDiff(t *testing.T) {
	mk := func(files map[string]string) string {
		dir := t.TempDir()
		for name, content := range files {
			p := filepath.Join(dir, name)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	list := func(dir string, skip ...string) Tree {
		tr, err := listTree(dir, skip...)
		if err != nil {
			t.Fatal(err)
		}
		return tr
	}
	a := list(mk(map[string]string{"x": "hello", "d/y": "world"}))
	if d := a.Diff(list(mk(map[string]string{"x": "hello", "d/y": "world"}))); d != "" {
		t.Errorf("identical trees differ: %s", d)
	}
	if a.Bytes() != 10 {
		t.Errorf("Bytes = %d, want 10", a.Bytes())
	}
	d := a.Diff(list(mk(map[string]string{"x": "hellO", "z": "new"})))
	for _, want := range []string{"4 differences", "differs x", "missing d", "missing d/y", "extra z"} {
		if !strings.Contains(d, want) {
			t.Errorf("diff %q lacks %q", d, want)
		}
	}
	if d := a.Diff(list(mk(map[string]string{"x": "hello", "d/y": "world", "lost+found/q": "1"}), "lost+found")); d != "" {
		t.Errorf("skipped entries compared: %s", d)
	}
}

func TestCleanup(t *testing.T) {
	var cl Cleanup
	var order []string
	add := func(name string, err error) func() error {
		return cl.Add(name, func() error { order = append(order, name); return err })
	}
	add("a", nil)
	undoB := add("b", nil)
	add("c", errors.New("fails, and the rest still runs"))
	if err := undoB(); err != nil {
		t.Fatal(err)
	}
	undoB() // once only
	cl.Run()
	cl.Run() // idempotent
	if got := strings.Join(order, ""); got != "bca" {
		t.Errorf("order %q, want b (undone early) then c, a (newest first), each once", got)
	}
}

func TestProcAccounting(t *testing.T) {
	m, err := markProc(os.Getpid())
	if err != nil {
		t.Fatalf("markProc on this process: %v", err)
	}
	x := 0
	for i := range 20_000_000 {
		x += i % 7
	}
	_ = x
	u, err := m.Since("self", SideHost)
	if err != nil {
		t.Fatal(err)
	}
	if u.UserCPU < 0 || u.MaxRSSKiB <= 0 || u.Seconds <= 0 {
		t.Errorf("usage %+v", u)
	}
}

func TestSQL(t *testing.T) {
	ins := insertRows(1234)
	if n := strings.Count(ins, "insert into arctic.person"); n != 3 {
		t.Errorf("%d insert statements for 1234 rows, want 3 batches", n)
	}
	for _, want := range []string{"use arctic;", "seq_1_to_500;", "seq_1_to_234;", "repeat(md5(rand()), 1000)"} {
		if !strings.Contains(ins, want) {
			t.Errorf("inserts lack %q", want)
		}
	}
	upd := updateRows(450, 1000, 1)
	if n := strings.Count(upd, "update arctic.person"); n != 3 {
		t.Errorf("%d update statements for 450 rows, want 3", n)
	}
	seen := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(upd), "\n") {
		_, list, _ := strings.Cut(line, "where id in (")
		for _, id := range strings.Split(strings.TrimSuffix(list, ");"), ",") {
			if seen[id] {
				t.Errorf("id %s updated twice", id)
			}
			seen[id] = true
		}
	}
	if len(seen) != 450 {
		t.Errorf("%d distinct ids, want 450", len(seen))
	}
}

func TestParseFlags(t *testing.T) {
	cfg, err := parseFlags([]string{"-scale", "default", "-scenarios", "large-file, mariadb-insert"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Scale.Divisor != 70 || strings.Join(cfg.Scenarios, ",") != "large-file,mariadb-insert" || !filepath.IsAbs(cfg.Out) {
		t.Errorf("cfg %+v", cfg)
	}
	for _, bad := range [][]string{{"-scale", "huge"}, {"-scenarios", "nope"}, {"-scenarios", "mariadb-update"}} {
		if _, err := parseFlags(bad); err == nil {
			t.Errorf("parseFlags(%q) accepted", bad)
		}
	}
}

func TestScalesKeepTheStudysProportions(t *testing.T) {
	s := scales["default"]
	// The study: 70 GB + 1 GB (1.43 %) for both file scenarios, 27k rows
	// on 1M (2.7 %) for the database.
	if r := float64(s.AppendMiB) / float64(s.BigFileMiB); math.Abs(r-1.0/70) > 0.001 {
		t.Errorf("append ratio %.4f", r)
	}
	if r := float64(s.NewFiles) / float64(s.SmallFiles); math.Abs(r-1.0/70) > 0.005 { // whole files
		t.Errorf("new files ratio %.4f", r)
	}
	if s.SmallFiles*s.FileMiB != s.BigFileMiB {
		t.Errorf("the file scenarios differ in size: %d vs %d MiB", s.SmallFiles*s.FileMiB, s.BigFileMiB)
	}
	if r := float64(s.DBNewRows) / float64(s.DBRows); math.Abs(r-0.027) > 0.001 {
		t.Errorf("new rows ratio %.4f", r)
	}
}

func TestProbeOverTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serveProbes(ln)
	p, err := runProbe(ln.Addr().String(), 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	if p.Bytes != 4<<20 || p.Seconds <= 0 || p.GoodputMbit <= 0 || p.RTTMillisMin <= 0 || p.RTTMillisMed < p.RTTMillisMin {
		t.Errorf("probe %+v", p)
	}
}

func TestParseTimeUsage(t *testing.T) {
	for _, tc := range []struct {
		out       string
		ok        bool
		user, sys float64
		rss       int64
	}{
		{"1.25 0.50 40960\n", true, 1.25, 0.5, 40960},
		{"Command terminated by signal 15\n0.03 0.01 12345\n", true, 0.03, 0.01, 12345},
		{"Command exited with non-zero status 1\n0.00 0.00 3000\n", true, 0, 0, 3000},
		{"", false, 0, 0, 0},
	} {
		var u Usage
		if ok := parseTimeUsage(tc.out, &u); ok != tc.ok || u.UserCPU != tc.user || u.SysCPU != tc.sys || u.MaxRSSKiB != tc.rss {
			t.Errorf("parseTimeUsage(%q) = %v %+v", tc.out, ok, u)
		}
	}
}
