package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
)

// WarmResults is everything a warm run measured; warm.json is this, with
// each flow's downtime and the acceptance checks filled in.
type WarmResults struct {
	Started         string             `json:"started"`
	Finished        string             `json:"finished"`
	TotalSeconds    float64            `json:"total_seconds"`
	Command         string             `json:"command"`
	Commit          string             `json:"commit"`
	TreeDirty       []string           `json:"tree_dirty,omitempty"`
	Machine         Machine            `json:"machine"`
	Versions        map[string]string  `json:"versions"`
	Link            LinkSetup          `json:"link"`
	Probe           LinkProbe          `json:"link_probe"`
	Params          WarmParams         `json:"params"`
	Setup           map[string]float64 `json:"setup_seconds"`
	FillRows        int64              `json:"fill_rows"`
	DataBytes       int64              `json:"datadir_bytes_after_fill"`
	DataBytesAtStop int64              `json:"datadir_bytes_at_stop"`
	Precopy         []*WarmRound       `json:"precopy"`
	Converged       bool               `json:"converged"`
	// OthersPrecopy are restic's backup and restore and rsync's round of
	// the converged snapshot, run while the load was paused (PauseSeconds).
	OthersPrecopy []*Round    `json:"others_precopy"`
	PauseSeconds  float64     `json:"others_precopy_pause_seconds"`
	WindowSeconds float64     `json:"final_window_seconds"`
	InsertedRows  int64       `json:"inserted_rows"`
	RowsAtStop    int64       `json:"rows_at_stop"`
	MaxIDAtStop   int64       `json:"max_id_at_stop"`
	StopSeconds   float64     `json:"stop_seconds"`
	Flows         []*WarmFlow `json:"flows"`
	// FinalLinkSeconds is the link time of voldelta's final round: its
	// busier direction's veth bytes at the probed rate.
	FinalLinkSeconds float64      `json:"final_link_seconds"`
	Checks           []ScaleCheck `json:"acceptance"`
	SourceRecheck    string       `json:"source_recheck,omitempty"`
	Error            string       `json:"error,omitempty"`
}

// WarmParams are the run's sizes and knobs.
type WarmParams struct {
	DataMiB       int    `json:"data_mib"`
	FillRows      int64  `json:"fill_rows"`
	VolumeBytes   int64  `json:"volume_bytes"`
	RowsPerSec    int    `json:"rows_per_sec"`
	ConvergeBytes int64  `json:"converge_bytes"`
	MaxRounds     int    `json:"max_rounds"`
	Rate          string `json:"rate"`
	Preflush      bool   `json:"preflush"`
}

// WarmRound is one voldelta pre-copy round.
type WarmRound struct {
	N               int     `json:"n"`
	AtSeconds       float64 `json:"snapshot_at_seconds"` // since the load started
	EndSeconds      float64 `json:"committed_at_seconds"`
	RowsInserted    int64   `json:"rows_inserted_by_then"`
	SnapshotSeconds float64 `json:"snapshot_seconds"` // freeze + reflink + thaw
	Base            string  `json:"base,omitempty"`
	Round           *Round  `json:"round"`
}

// WarmFlow is one tool's cutover: database stopped (t0) → replica
// verified and MariaDB started on it at the destination with the
// source's row count (t1).
type WarmFlow struct {
	Key             string   `json:"key"`
	Label           string   `json:"label"`
	StopSeconds     float64  `json:"stop_seconds"`
	SnapshotSeconds float64  `json:"snapshot_seconds,omitempty"`
	Steps           []*Round `json:"steps"`
	PromoteSeconds  float64  `json:"promote_seconds"`
	PromoteNote     string   `json:"promote_note,omitempty"`
	Rows            int64    `json:"rows"`
	MaxID           int64    `json:"max_id"`
	RowsOK          bool     `json:"rows_ok"`
	Verified        bool     `json:"verified"`
	VerifyNote      string   `json:"verify_note,omitempty"`
	// WallSeconds is t1 − t0 on the clock (voldelta's flow runs right at
	// the cutover); DowntimeSeconds is the sum of the flow's parts (for
	// restic and rsync, whose steps ran later from the same snapshot).
	WallSeconds     float64 `json:"wall_seconds,omitempty"`
	DowntimeSeconds float64 `json:"downtime_seconds"`
	LinkTxBytes     uint64  `json:"link_tx_bytes"`
	LinkRxBytes     uint64  `json:"link_rx_bytes"`
	Error           string  `json:"error,omitempty"`
}

var warmLabels = map[string]string{
	"voldelta":       "voldelta (pre-copy + final round --base)",
	"restic-full":    "restic backup + full restore",
	"restic-inplace": "restic backup + in-place restore",
	"rsync":          "rsync --inplace",
}

// syncSeconds is the flow's transfer and restore time (its steps).
func (f *WarmFlow) syncSeconds() float64 {
	var s float64
	for _, r := range f.Steps {
		if r != nil {
			s += r.Seconds
		}
	}
	return s
}

func (f *WarmFlow) ok() bool { return f != nil && f.Error == "" && f.RowsOK && len(f.Steps) > 0 }

// summarize fills the derived figures of f.
func (f *WarmFlow) summarize() {
	f.LinkTxBytes, f.LinkRxBytes = 0, 0
	for _, r := range f.Steps {
		if r != nil {
			f.LinkTxBytes += r.LinkTxBytes
			f.LinkRxBytes += r.LinkRxBytes
		}
	}
	f.DowntimeSeconds = f.StopSeconds + f.SnapshotSeconds + f.syncSeconds() + f.PromoteSeconds
	if f.WallSeconds > 0 {
		f.DowntimeSeconds = f.WallSeconds
	}
}

func (res *WarmResults) flow(key string) *WarmFlow {
	for _, f := range res.Flows {
		if f.Key == key {
			return f
		}
	}
	return nil
}

// warmAcceptance evaluates the bench targets: voldelta's downtime
// ≤ 1.5 × the link time of its final delta + 2 s, and ≤ 0.3 × restic's
// backup + full restore downtime on the same run.
func warmAcceptance(res *WarmResults) []ScaleCheck {
	vd, rf := res.flow("voldelta"), res.flow("restic-full")
	status := func(measurable, ok bool) string {
		switch {
		case !measurable:
			return "n/a"
		case ok:
			return "PASS"
		}
		return "FAIL"
	}
	var out []ScaleCheck
	c := ScaleCheck{Target: "downtime ≤ 1.5 × link time of the final delta + 2 s", Unit: "s"}
	m := vd.ok() && !math.IsNaN(res.FinalLinkSeconds)
	if m {
		c.Value, c.Limit = vd.DowntimeSeconds, 1.5*res.FinalLinkSeconds+2
		c.Note = fmt.Sprintf("final delta %s on the link (busier direction) = %s at %.1f Mbit/s", mbs(max(vd.LinkTxBytes, vd.LinkRxBytes)), secs(res.FinalLinkSeconds), res.Probe.LinkRateMbit)
	} else {
		c.Note = "voldelta's flow did not complete"
	}
	c.Status = status(m, c.Value <= c.Limit)
	out = append(out, c)
	c = ScaleCheck{Target: "downtime ≤ 0.3 × restic backup + full restore", Unit: "s"}
	m = vd.ok() && rf.ok()
	if m {
		c.Value, c.Limit = vd.DowntimeSeconds, 0.3*rf.DowntimeSeconds
		c.Note = fmt.Sprintf("restic backup + full restore: %s; ratio %s", secs(rf.DowntimeSeconds), ratio(vd.DowntimeSeconds, rf.DowntimeSeconds))
	} else {
		c.Note = "voldelta's or restic's flow did not complete"
	}
	c.Status = status(m, c.Value <= c.Limit)
	return append(out, c)
}

// finishWarm fills every derived figure.
func finishWarm(res *WarmResults) {
	for _, f := range res.Flows {
		f.summarize()
	}
	res.FinalLinkSeconds = math.NaN()
	if vd := res.flow("voldelta"); vd != nil && res.Probe.LinkRateBytesS > 0 {
		res.FinalLinkSeconds = float64(max(vd.LinkTxBytes, vd.LinkRxBytes)) / res.Probe.LinkRateBytesS
	}
	res.Checks = warmAcceptance(res)
}

// writeWarmResults writes warm.json, warm.md and warm.png to dir and
// prints the Markdown if print.
func writeWarmResults(dir string, res *WarmResults, print bool) error {
	finishWarm(res)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	md := renderWarmMarkdown(res)
	fl := res.FinalLinkSeconds
	if math.IsNaN(fl) { // JSON has no NaN
		res.FinalLinkSeconds = -1
	}
	err := writeJSONAndMarkdown(dir, "warm", res, md)
	res.FinalLinkSeconds = fl
	if err != nil {
		return err
	}
	if print {
		fmt.Printf("\n%s\nresults: %s/warm.{md,json,png}\n", md, dir)
	}
	if err := renderWarmChart(res, dir); err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	return nil
}

func renderWarmDir(dir string) error {
	raw, err := os.ReadFile(filepath.Join(dir, "warm.json"))
	if err != nil {
		return err
	}
	var res WarmResults
	if err := json.Unmarshal(raw, &res); err != nil {
		return err
	}
	return writeWarmResults(dir, &res, false)
}

func statF(m map[string]any, key string) float64 {
	v, _ := m[key].(float64)
	return v
}

func statS(m map[string]any, key string) string {
	v, _ := m[key].(string)
	return v
}

// restoreStep is a flow's restore step (restic), or nil.
func (f *WarmFlow) restoreStep() *Round {
	for _, r := range f.Steps {
		if r != nil && strings.HasPrefix(r.Name, "restic restore") {
			return r
		}
	}
	return nil
}

func renderWarmMarkdown(res *WarmResults) string {
	var b strings.Builder
	m, p := res.Machine, res.Params
	fmt.Fprintf(&b, "# Warm migration of MariaDB under load (`make bench-warm`)\n\n")
	fmt.Fprintf(&b, "Binary: `%s`; harness at `%s`", res.Versions["voldelta binary"], shortCommit(res.Commit))
	if len(res.TreeDirty) > 0 {
		fmt.Fprintf(&b, " (%d modified tracked files in the tree at the start, other engineers' work)", len(res.TreeDirty))
	}
	fmt.Fprintf(&b, ". Run: `%s`, %s, %.1f min. Machine: %d × %s, kernel %s, %.0f GiB; **load average %s at the start, %s at the end**.\n\n",
		res.Command, res.Started, res.TotalSeconds/60, m.NProc, m.CPUModel, m.Kernel, m.MemGiB, m.LoadBefore, m.LoadAfter)
	fmt.Fprintf(&b, "Link: %s each way, %.0f ms RTT added by the delay proxies; measured %.1f Mbit/s on the veth (%.1f payload), RTT %.1f ms.\n\n",
		res.Link.Rate, 2*res.Link.OneWayDelayMs, res.Probe.LinkRateMbit, res.Probe.GoodputMbit, res.Probe.RTTMillisMed)
	fmt.Fprintf(&b, "Source: MariaDB (`arctic.person`, the study's ~37 KB rows) on an ext4 on a loop device (direct I/O) whose image is on an XFS with reflinks; "+
		"filled with %d rows (datadir %s), volume %s; then a steady load of %d rows/s (one client, a batch every %v). "+
		"A snapshot = `fsfreeze` of the ext4 around `cp --reflink` of its image. Pre-flush (`innodb_max_dirty_pages_pct` = 0 from the start of the pre-copy): %s.\n\n",
		res.FillRows, mbs(uint64(res.DataBytes)), mibs(p.VolumeBytes), p.RowsPerSec, insertTick, yesNo(p.Preflush))
	if res.Error != "" {
		fmt.Fprintf(&b, "**The run failed:** `%s`\n\n", firstLine(res.Error))
	}

	fmt.Fprintf(&b, "## Acceptance\n\n| target | value | limit | status | note |\n|---|---|---|---|---|\n")
	for _, c := range res.Checks {
		fmt.Fprintf(&b, "| %s | %s | %s | **%s** | %s |\n", c.Target, secs(c.Value), secs(c.Limit), c.Status, c.Note)
	}

	fmt.Fprintf(&b, "\n## Downtime: database stopped (t0) → replica verified and MariaDB started on it at the destination with the source's row count (t1)\n\n")
	fmt.Fprintf(&b, "| flow | **downtime** | stop | snapshot | final transfer | restore at target | promote | link bytes → / ← | rows at t1 | verified | × voldelta |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	vd := res.flow("voldelta")
	for _, f := range res.Flows {
		transfer, restore := f.syncSeconds(), 0.0
		if r := f.restoreStep(); r != nil {
			restore = r.Seconds
			transfer -= restore
		}
		rows := fmt.Sprintf("%d", f.Rows)
		if !f.RowsOK {
			rows += " (NO)"
		}
		x := "—"
		if vd.ok() && f != vd && f.ok() {
			x = ratio(f.DowntimeSeconds, vd.DowntimeSeconds)
		}
		dt := secs(f.DowntimeSeconds)
		if f.Error != "" {
			dt = "failed: " + firstLine(f.Error)
		}
		fmt.Fprintf(&b, "| %s | **%s** | %s | %s | %s | %s | %s | %s / %s | %s | %s | %s |\n", f.Label, dt, secs(f.StopSeconds), secs(f.SnapshotSeconds),
			secs(transfer), secs(restore), secs(f.PromoteSeconds), mbs(f.LinkTxBytes), mbs(f.LinkRxBytes), rows, yesNo(f.Verified), x)
	}
	fmt.Fprintf(&b, "\nt0 = MariaDB told to shut down, once the inserter's client exited (every batch committed) and the source's `count(*), max(id)` was read: %d rows = %d filled + %d inserted under load, max(id) %d (InnoDB's auto-increment leaves gaps). Stop = MariaDB's clean shutdown. "+
		"Promote = (voldelta: a reflink of the committed replica image for the check below, then) mount of the target's ext4 read-write at the destination, `mariadbd` started there, `select count(*), max(id)` answered. "+
		"voldelta's downtime is t1 − t0 on the clock; restic's and rsync's steps ran after it from the same final snapshot (mounted read-only where their pre-copy read the converged one), so theirs is the sum of the same stop and their own steps.\n\n",
		res.RowsAtStop, res.FillRows, res.InsertedRows, res.MaxIDAtStop)
	if vd != nil && len(vd.Steps) > 0 && vd.Steps[0] != nil {
		r := vd.Steps[0]
		st := r.Stats
		scan, dur := statF(st, "scan_seconds"), statF(st, "duration_seconds")
		fmt.Fprintf(&b, "**voldelta's final round** (`--stats-json`): %s wall for `voldelta send`; its round %s, of which scan %s (`scan_mode` %s, %s read of %s changed, hints `%s`) and transfer + receiver verify + commit %s (the stats do not split these: the receiver verifies the root and commits before send returns); process start and TLS %s. "+
			"%d chunks sent (%s raw, %s on the wire), %d manifest entries sent, %d copied; generation %.0f, root `%.16s…`. Harness check: %s.\n\n",
			secs(r.Seconds), secs(dur), secs(scan), statS(st, "scan_mode"), mbs(uint64(statF(st, "bytes_read"))), mbs(uint64(statF(st, "changed_bytes"))), statS(st, "hint_source"),
			secs(dur-scan), secs(r.Seconds-dur), int(statF(st, "chunks_sent")), mbs(uint64(statF(st, "bytes_sent_raw"))), mbs(uint64(statF(st, "wire_bytes"))),
			int(statF(st, "manifest_entries_sent")), int(statF(st, "manifest_entries_copied")), statF(st, "generation"), statS(st, "root_hash"), vd.VerifyNote)
	}

	fmt.Fprintf(&b, "## voldelta pre-copy rounds (load running)\n\n")
	fmt.Fprintf(&b, "Back to back until a round's chunks sent hold under %s before compression (`bytes_sent_raw`), at most %d rounds; every round `--cache-dir`, from round 2 `--base` the previous snapshot. Converged: %s.\n\n",
		mbs(uint64(p.ConvergeBytes)), p.MaxRounds, yesNo(res.Converged))
	fmt.Fprintf(&b, "| round | snapshot at | rows inserted | snapshot | round | scan | scan mode | read | changed | sent raw | link → / ← |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, w := range res.Precopy {
		r := w.Round
		if r == nil {
			continue
		}
		st := r.Stats
		mode := statS(st, "scan_mode")
		if why := statS(st, "full_scan_reason"); why != "" {
			mode += " (" + why + ")"
		}
		fmt.Fprintf(&b, "| %d | %.1f s | %d | %s | %s | %s | %s | %s | %s | %s | %s / %s |\n", w.N, w.AtSeconds, w.RowsInserted, secs(w.SnapshotSeconds), secs(r.Seconds),
			secs(statF(st, "scan_seconds")), mode, mbs(uint64(statF(st, "bytes_read"))), mbs(uint64(statF(st, "changed_bytes"))),
			mbs(uint64(statF(st, "bytes_sent_raw"))), mbs(r.LinkTxBytes), mbs(r.LinkRxBytes))
	}
	fmt.Fprintf(&b, "\n**Fairness.** restic and rsync pre-copy the converged snapshot too (restic backup across the link + restore into the in-place target; rsync --inplace), with the load paused and MariaDB suspended (SIGSTOP: no background flushing either) meanwhile (%s); "+
		"the load then runs again for as long as the converged round took (%s, its snapshot to its commit: when a back-to-back loop would take the next snapshot) before the stop. So every tool's final delta is the same pair of snapshots (converged → final) and the same bytes of database change.\n\n",
		secs(res.PauseSeconds), secs(res.WindowSeconds))
	fmt.Fprintf(&b, "| pre-copy step (restic, rsync) | time | link → / ← |\n|---|---|---|\n")
	for _, r := range res.OthersPrecopy {
		if r != nil {
			fmt.Fprintf(&b, "| %s | %s | %s / %s |\n", r.Name, secs(r.Seconds), mbs(r.LinkTxBytes), mbs(r.LinkRxBytes))
		}
	}
	fmt.Fprintf(&b, "\n**Verification.** voldelta: the receiver verifies the root hash before it commits; the harness hashes the committed replica (a reflink taken before promotion) with `voldelta hash` after t1. restic and rsync: every file of the target against the final snapshot (path, size, SHA-256), not timed. Every flow: MariaDB started on the target at the destination returns the source's row count and max(id). %s\n\n", res.SourceRecheck)
	fmt.Fprintf(&b, "Datadir at the stop: %s. Setup: fill %s.\n", mbs(uint64(res.DataBytesAtStop)), secs(res.Setup["fill_seconds"]))
	return b.String()
}

func warmChartData(res *WarmResults) string {
	var b strings.Builder
	b.WriteString("# flow stop snapshot transfer restore promote\n")
	for _, f := range res.Flows {
		if !f.ok() {
			continue
		}
		transfer, restore := f.syncSeconds(), 0.0
		if r := f.restoreStep(); r != nil {
			restore = r.Seconds
			transfer -= restore
		}
		promote := f.PromoteSeconds
		if f.WallSeconds > 0 { // what the clock saw beyond the parts
			promote = f.WallSeconds - f.StopSeconds - f.SnapshotSeconds - f.syncSeconds()
		}
		fmt.Fprintf(&b, "%q %.3f %.3f %.3f %.3f %.3f\n", f.Label, f.StopSeconds, f.SnapshotSeconds, transfer, restore, promote)
	}
	return b.String()
}

const warmChartScript = `set terminal pngcairo size 1100,560 noenhanced font "sans,10"
set output %q
set title %q
set style data histograms
set style histogram rowstacked
set style fill solid 0.85 border -1
set boxwidth 0.6
set ylabel "downtime, s (database stopped → replica verified and started)"
set grid ytics
set key top right
set xtics rotate by -12
set yrange [0:*]
plot %q using 2:xtic(1) title "stop (MariaDB shutdown)" lc rgb "#999999", \
     '' using 3 title "snapshot (freeze + reflink)" lc rgb "#cccccc", \
     '' using 4 title "final transfer (send / backup / rsync)" lc rgb "#1b9e77", \
     '' using 5 title "restore at the target" lc rgb "#d95f02", \
     '' using 6 title "promote (mount, mariadbd start, row count)" lc rgb "#7570b3"
`

func renderWarmChart(res *WarmResults, dir string) error {
	dat := filepath.Join(dir, "warm.dat")
	data := warmChartData(res)
	if strings.Count(data, "\n") < 2 {
		return nil
	}
	if err := os.WriteFile(dat, []byte(data), 0o644); err != nil {
		return err
	}
	title := fmt.Sprintf("warm migration of MariaDB under load: downtime per flow, %s link, %.0f ms RTT, datadir %.1f GB",
		res.Link.Rate, 2*res.Link.OneWayDelayMs, float64(res.DataBytesAtStop)/1e9)
	return runGnuplot(fmt.Sprintf(warmChartScript, filepath.Join(dir, "warm.png"), title, dat))
}
