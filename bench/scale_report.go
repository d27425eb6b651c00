package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/voldelta/voldelta/chunk"
)

// ScaleResults is everything a `bench scale` run measured; scale.json is
// this, with every row's figures derived (ScaleRow.summarize).
type ScaleResults struct {
	Started        string            `json:"started"`
	Finished       string            `json:"finished"`
	TotalSeconds   float64           `json:"total_seconds"`
	Command        string            `json:"command"`
	Commit         string            `json:"commit"`
	TreeDirty      []string          `json:"tree_dirty,omitempty"` // git status of tracked files at the start
	Machine        Machine           `json:"machine"`
	Versions       map[string]string `json:"versions"`
	Link           LinkSetup         `json:"link"`
	Probe          LinkProbe         `json:"link_probe"`
	RateBitsPerSec float64           `json:"rate_bits_per_second"` // nominal, from -rate
	Delta          ScaleDelta        `json:"delta"`
	SendFlags      map[string]bool   `json:"voldelta_send_flags"` // the flags rows need: present?
	HelpFlags      []string          `json:"voldelta_send_help_flags"`
	Verify         string            `json:"verify"`
	ResticMaxGiB   int               `json:"restic_max_gib"`
	Sizes          []*ScaleSize      `json:"sizes"`
	Checks         []ScaleCheck      `json:"acceptance"`
}

// ScaleDelta describes the fixed final delta.
type ScaleDelta struct {
	Regions      int     `json:"regions"`
	RegionBytes  int64   `json:"region_bytes"`
	Pages        int     `json:"pages"`
	PageBytes    int64   `json:"page_bytes"`
	Ranges       int     `json:"ranges"`
	ChangedBytes int64   `json:"changed_bytes"`
	FloorSeconds float64 `json:"link_floor_seconds"` // ChangedBytes at the nominal rate
}

func describeDelta(p DeltaPlan, rate float64) ScaleDelta {
	d := ScaleDelta{Regions: len(p.Regions), RegionBytes: scaleRegionBytes, Pages: len(p.Pages), PageBytes: scalePageBytes,
		Ranges: len(p.Ranges()), ChangedBytes: p.ChangedBytes()}
	if rate > 0 {
		d.FloorSeconds = float64(d.ChangedBytes) * 8 / rate
	}
	return d
}

// ScaleSize is one volume size's setup and rows.
type ScaleSize struct {
	GiB     int                `json:"gib"`
	Bytes   int64              `json:"bytes"`
	Seconds float64            `json:"seconds"`
	Setup   map[string]float64 `json:"setup"`
	Seed    *Round             `json:"seed_round,omitempty"` // voldelta's first round, replica written in place
	Rows    []*ScaleRow        `json:"rows"`
	Skipped string             `json:"skipped,omitempty"`
	Error   string             `json:"error,omitempty"`
}

// ScaleRow is one tool's delta round at one size.
type ScaleRow struct {
	Key           string   `json:"key"`
	Label         string   `json:"label"`
	Steps         []*Round `json:"steps,omitempty"` // restic: backup, restore
	Skipped       string   `json:"skipped,omitempty"`
	Error         string   `json:"error,omitempty"`
	Verified      bool     `json:"verified"`
	VerifyNote    string   `json:"verify_note,omitempty"`
	VerifySeconds float64  `json:"verify_seconds,omitempty"`

	// Derived from the steps.
	Seconds        float64  `json:"round_seconds"`
	ScanSeconds    *float64 `json:"scan_seconds,omitempty"`
	ScanMode       string   `json:"scan_mode,omitempty"`
	FullScanReason string   `json:"full_scan_reason,omitempty"`
	BytesRead      *float64 `json:"bytes_read,omitempty"` // as the tool reports it
	FSReadSrc      int64    `json:"fs_read_bytes_src"`    // GNU time %I of the source side's processes
	FSReadDst      int64    `json:"fs_read_bytes_dst"`
	LinkTxBytes    uint64   `json:"link_tx_bytes"`
	LinkRxBytes    uint64   `json:"link_rx_bytes"`
	WireBytes      *float64 `json:"wire_bytes,omitempty"`     // as voldelta reports it
	SentRaw        *float64 `json:"bytes_sent_raw,omitempty"` // chunks sent, uncompressed
	Patched        *float64 `json:"chunks_patched,omitempty"` // of them sent as their changed ranges
	ManifestBytes  *float64 `json:"manifest_bytes,omitempty"`
	Replaced       *float64 `json:"replaced_entries,omitempty"`
	ReplacedFrom   string   `json:"replaced_entries_from,omitempty"`
	FloorSeconds   float64  `json:"link_floor_seconds"`
	FloorRatio     float64  `json:"round_over_floor"`
	// LinkLimited is the time the link needs for what the row sent: the
	// busier direction's veth bytes at the probed veth rate.
	LinkLimited float64 `json:"link_limited_seconds"`
}

var scaleLabels = map[string]string{
	"voldelta-before":  "voldelta before the change-hint work, full scan",
	"voldelta-full":    "voldelta, full scan (no hints)",
	"voldelta-hints":   "voldelta --base (reflink hints)",
	"voldelta-changed": "voldelta --changed FILE",
	"rsync":            "rsync --inplace",
	"restic":           "restic backup + in-place restore",
}

var scaleRowOrder = []string{"voldelta-before", "voldelta-full", "voldelta-hints", "voldelta-changed", "rsync", "restic"}

func newScaleRow(key string) *ScaleRow { return &ScaleRow{Key: key, Label: scaleLabels[key]} }

func statNum(m map[string]any, key string) *float64 {
	if v, ok := m[key].(float64); ok {
		return &v
	}
	return nil
}

// summarize derives the row's figures from its steps.
func (r *ScaleRow) summarize(floor float64, probe LinkProbe) {
	r.Seconds, r.LinkTxBytes, r.LinkRxBytes, r.FSReadSrc, r.FSReadDst = 0, 0, 0, 0, 0
	for _, st := range r.Steps {
		r.Seconds += st.Seconds
		r.LinkTxBytes += st.LinkTxBytes
		r.LinkRxBytes += st.LinkRxBytes
		for _, p := range st.Procs {
			switch p.Side {
			case SideSrc:
				r.FSReadSrc += p.ReadBytes
			case SideDst:
				r.FSReadDst += p.ReadBytes
			}
		}
	}
	r.FloorSeconds = floor
	if probe.LinkRateBytesS > 0 {
		r.LinkLimited = float64(max(r.LinkTxBytes, r.LinkRxBytes)) / probe.LinkRateBytesS
	}
	if floor > 0 && r.Seconds > 0 {
		r.FloorRatio = r.Seconds / floor
	}
	if len(r.Steps) == 0 || r.Steps[0].Stats == nil {
		return
	}
	st := r.Steps[0].Stats
	r.ScanSeconds, r.BytesRead = statNum(st, "scan_seconds"), statNum(st, "bytes_read")
	r.WireBytes, r.ManifestBytes = statNum(st, "wire_bytes"), statNum(st, "manifest_bytes")
	r.SentRaw, r.Patched = statNum(st, "bytes_sent_raw"), statNum(st, "chunks_patched")
	r.ScanMode, _ = st["scan_mode"].(string)
	r.FullScanReason, _ = st["full_scan_reason"].(string)
	r.Replaced, r.ReplacedFrom = replacedEntries(st)
}

// replacedEntries is the count of manifest entries a round replaced: a
// statistic whose name says "replaced" if voldelta reports one, else
// manifest_entries_sent (the entries a delta manifest carries), else the
// chunks it sent, copied or zeroed (every one of them is an entry that
// changed).
func replacedEntries(st map[string]any) (*float64, string) {
	var keys []string
	for k := range st {
		if strings.Contains(k, "replaced") {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range append(keys, "manifest_entries_sent") {
		if v := statNum(st, k); v != nil {
			return v, k
		}
	}
	var n float64
	found := false
	for _, k := range []string{"chunks_sent", "chunks_copied", "chunks_zeroed"} {
		if v := statNum(st, k); v != nil {
			n += *v
			found = true
		}
	}
	if !found {
		return nil, ""
	}
	return &n, "chunks_sent + chunks_copied + chunks_zeroed (no replaced-entry statistic)"
}

func (s *ScaleSize) row(key string) *ScaleRow {
	for _, r := range s.Rows {
		if r.Key == key {
			return r
		}
	}
	return nil
}

// measured says whether r ran to its end.
func (r *ScaleRow) measured() bool {
	return r != nil && r.Skipped == "" && r.Error == "" && len(r.Steps) > 0
}

// ScaleCheck is one acceptance target at one size.
type ScaleCheck struct {
	GiB    int     `json:"gib"`
	Target string  `json:"target"`
	Value  float64 `json:"value"`
	Limit  float64 `json:"limit"`
	Unit   string  `json:"unit"`
	Status string  `json:"status"` // PASS, FAIL, n/a
	Note   string  `json:"note,omitempty"`
}

// acceptance evaluates the lead's targets at every size.
func acceptance(res *ScaleResults) []ScaleCheck {
	var out []ScaleCheck
	d := res.Delta
	add := func(c ScaleCheck, ok bool, measurable bool) {
		switch {
		case !measurable:
			c.Status = "n/a"
		case ok:
			c.Status = "PASS"
		default:
			c.Status = "FAIL"
		}
		out = append(out, c)
	}
	for _, s := range res.Sizes {
		for _, hr := range []struct{ key, flag string }{{"voldelta-hints", "--base"}, {"voldelta-changed", "--changed"}} {
			for _, c := range hintChecks(d, s, hr.key, hr.flag) {
				add(c.ScaleCheck, c.ok, c.measurable)
			}
		}
		c, ok, m := noWorseCheck(s)
		add(c, ok, m)
	}
	return out
}

// check is a ScaleCheck before its status: whether it could be measured
// and whether it held.
type check struct {
	ScaleCheck
	ok, measurable bool
}

// hintChecks are the targets of the row key (a round with change hints
// given by flag) at one size: its round time, its bytes read and its
// manifest bytes.
func hintChecks(d ScaleDelta, s *ScaleSize, key, flag string) []check {
	h := s.row(key)
	why := "the " + flag + " row did not run"
	if h != nil && h.Skipped != "" {
		why = h.Skipped
	} else if h != nil && h.Error != "" {
		why = "failed: " + firstLine(h.Error)
	}
	ok := h.measured()
	var out []check
	target := func(t string) ScaleCheck {
		return ScaleCheck{GiB: s.GiB, Target: "with hints (" + flag + "): " + t}
	}

	c := check{ScaleCheck: target("round ≤ 1.2 × link time of the changed bytes + 1 s"), measurable: ok}
	c.Limit, c.Unit = 1.2*d.FloorSeconds+1, "s"
	if ok {
		c.Value, c.ok = h.Seconds, h.Seconds <= c.Limit
	} else {
		c.Note = why
	}
	out = append(out, c)

	c = check{ScaleCheck: target(fmt.Sprintf("bytes read ≤ 2 × changed + 2 max chunks (%d KiB) per changed range (%d)", chunk.DefaultMaxSize>>10, d.Ranges)),
		measurable: ok && h.BytesRead != nil}
	c.Limit, c.Unit = float64(2*d.ChangedBytes)+float64(2*chunk.DefaultMaxSize*d.Ranges), "B"
	switch {
	case c.measurable:
		c.Value, c.ok = *h.BytesRead, *h.BytesRead <= c.Limit
		c.Note = fmt.Sprintf("the agent's bytes_read; the source side read %s from its disk (GNU time)", mbs(uint64(h.FSReadSrc)))
	case ok:
		c.Note = "voldelta reports no bytes_read"
	default:
		c.Note = why
	}
	out = append(out, c)

	c = check{ScaleCheck: target("manifest bytes ≤ 64 B per replaced entry + 4 KiB"), measurable: ok && h.ManifestBytes != nil && h.Replaced != nil}
	c.Unit = "B"
	switch {
	case c.measurable:
		c.Value, c.Limit = *h.ManifestBytes, 64**h.Replaced+4096
		c.ok = c.Value <= c.Limit
		c.Note = fmt.Sprintf("%.0f replaced entries (%s)", *h.Replaced, h.ReplacedFrom)
	case ok:
		c.Note = "voldelta reports no manifest_bytes or no entry counts"
	default:
		c.Note = why
	}
	return append(out, c)
}

// noWorseCheck is "without hints: no worse than before the change-hint
// work": the full-scan row against the voldelta-before row (the earlier
// binary's full scan of the same delta, on the same volume, in the same
// run), within beforeNoise.
func noWorseCheck(s *ScaleSize) (c ScaleCheck, ok, measurable bool) {
	c = ScaleCheck{GiB: s.GiB, Target: fmt.Sprintf("without hints: round ≤ the voldelta from before the change-hint work + %.0f%% (run-to-run noise)", 100*beforeNoise), Unit: "s"}
	f, old := s.row("voldelta-full"), s.row("voldelta-before")
	switch {
	case !old.measured():
		c.Note = "no voldelta-before row (make bench-scale builds the earlier binary; bench scale -voldelta-before)"
		return c, false, false
	case !f.measured():
		c.Note = "the full-scan row did not run"
		return c, false, false
	}
	c.Value, c.Limit = f.Seconds, old.Seconds*(1+beforeNoise)
	c.Note = fmt.Sprintf("before: %s, scan %s; now: scan %s", secs(old.Seconds), statSecs(old, "scan_seconds"), statSecs(f, "scan_seconds"))
	return c, f.Seconds <= c.Limit, true
}

// statSecs is a row's statistic key in seconds, "?" when it has none.
func statSecs(r *ScaleRow, key string) string {
	if len(r.Steps) == 0 {
		return "?"
	}
	if v := statNum(r.Steps[len(r.Steps)-1].Stats, key); v != nil {
		return secs(*v)
	}
	return "?"
}

// writeScaleResults writes scale.json, scale.md and scale.png to dir and
// prints the Markdown if print.
func writeScaleResults(dir string, res *ScaleResults, print bool) error {
	for _, s := range res.Sizes {
		for _, r := range s.Rows {
			r.summarize(res.Delta.FloorSeconds, res.Probe)
		}
	}
	res.Checks = acceptance(res)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	md := renderScaleMarkdown(res)
	if err := writeJSONAndMarkdown(dir, "scale", res, md); err != nil {
		return err
	}
	if err := renderScaleChart(res, dir); err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	if print {
		fmt.Printf("\n%s\nresults: %s/scale.{md,json,png}\n", md, dir)
	}
	return nil
}

func optSecs(v *float64) string {
	if v == nil {
		return "?"
	}
	return secs(*v)
}

func optMB(v *float64) string {
	if v == nil {
		return "?"
	}
	return mbs(uint64(*v))
}

func renderScaleMarkdown(res *ScaleResults) string {
	var b strings.Builder
	d, m := res.Delta, res.Machine
	fmt.Fprintf(&b, "# Delta round time against volume size (`make bench-scale`)\n\n")
	fmt.Fprintf(&b, "Binary: `%s` (its `--version`); the harness ran in the tree at `%s`", res.Versions["voldelta binary"], shortCommit(res.Commit))
	if len(res.TreeDirty) > 0 {
		fmt.Fprintf(&b, " (%d modified tracked files at the start)", len(res.TreeDirty))
	}
	fmt.Fprintf(&b, ". Run: `%s`, %s, %.1f min. ", res.Command, res.Started, res.TotalSeconds/60)
	fmt.Fprintf(&b, "Machine: %d × %s, kernel %s, %.0f GiB; load %s at the start, %s at the end.\n\n", m.NProc, m.CPUModel, m.Kernel, m.MemGiB, m.LoadBefore, m.LoadAfter)
	fmt.Fprintf(&b, "Link: %s each way, %.0f ms RTT added by the delay proxies; measured %.1f Mbit/s payload (%.1f on the veth), RTT %.1f ms. ",
		res.Link.Rate, 2*res.Link.OneWayDelayMs, res.Probe.GoodputMbit, res.Probe.LinkRateMbit, res.Probe.RTTMillisMed)
	fmt.Fprintf(&b, "Final delta, the same ranges at every size and in every row: %d regions × %s spread over the volume + %d scattered %d KiB pages = %d ranges, %s (%.2f MiB). ",
		d.Regions, mibs(d.RegionBytes), d.Pages, d.PageBytes>>10, d.Ranges, mbs(uint64(d.ChangedBytes)), float64(d.ChangedBytes)/mib)
	fmt.Fprintf(&b, "**Link floor** = the changed bytes at %s = **%s**. Page cache dropped (`echo 3 > /proc/sys/vm/drop_caches`) before every timed step; targets checked after each row (%s).\n\n",
		res.Link.Rate, secs(d.FloorSeconds), map[string]string{"ranges": "changed ranges ±64 KiB + 64 random MiB, byte for byte", "full": "every byte"}[res.Verify])
	var missing []string
	for _, f := range sendFlags {
		if !res.SendFlags[f] {
			missing = append(missing, "`"+f+"`")
		}
	}
	if len(missing) > 0 {
		fmt.Fprintf(&b, "This voldelta's `send --help` has no %s (it lists %s): the rows that need them are skipped.\n\n", strings.Join(missing, ", "), strings.Join(res.HelpFlags, " "))
	}

	fmt.Fprintf(&b, "| size | row | round | ÷ floor | scan | scan mode | bytes read (tool) | read from disk src / dst | link → / ← | link-limited | round − link-limited | chunks sent (raw) | manifest | verified |\n")
	fmt.Fprintf(&b, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range res.Sizes {
		if s.Skipped != "" || (s.Error != "" && len(s.Rows) == 0) {
			fmt.Fprintf(&b, "| %d GiB | — | %s |  |  |  |  |  |  |  |  |  |  |  |\n", s.GiB, firstLine(s.Skipped+s.Error))
			continue
		}
		for _, key := range scaleRowOrder {
			r := s.row(key)
			if r == nil {
				continue
			}
			if r.Skipped != "" || len(r.Steps) == 0 {
				note := r.Skipped
				if note == "" {
					note = firstLine(r.Error)
				}
				fmt.Fprintf(&b, "| %d GiB | %s | skipped: %s |  |  |  |  |  |  |  |  |  |  |  |\n", s.GiB, r.Label, note)
				continue
			}
			mode := r.ScanMode
			if r.FullScanReason != "" {
				mode += " (" + r.FullScanReason + ")"
			}
			if mode == "" {
				mode = "—"
			}
			ver := yesNo(r.Verified)
			if r.Error != "" {
				ver = "failed: " + firstLine(r.Error)
			}
			round := "**" + secs(r.Seconds) + "**"
			if len(r.Steps) > 1 {
				var parts []string
				for _, st := range r.Steps {
					parts = append(parts, secs(st.Seconds))
				}
				round += " (" + strings.Join(parts, " + ") + ")"
			}
			sent := optMB(r.SentRaw)
			if r.Patched != nil && r.SentRaw != nil {
				if chunks := statNum(r.Steps[0].Stats, "chunks_sent"); chunks != nil {
					sent = fmt.Sprintf("%s (%.0f chunks, %.0f as patches)", sent, *chunks, *r.Patched)
				}
			}
			manifest := "?"
			if r.ManifestBytes != nil {
				manifest = fmt.Sprintf("%.1f kB", *r.ManifestBytes/1e3)
			}
			fmt.Fprintf(&b, "| %d GiB | %s | %s | %.2f× | %s | %s | %s | %s / %s | %s / %s | %s | %s | %s | %s | %s |\n",
				s.GiB, r.Label, round, r.FloorRatio, optSecs(r.ScanSeconds), mode, optMB(r.BytesRead),
				mbs(uint64(r.FSReadSrc)), mbs(uint64(r.FSReadDst)), mbs(r.LinkTxBytes), mbs(r.LinkRxBytes), secs(r.LinkLimited),
				fmt.Sprintf("%.1f s", r.Seconds-r.LinkLimited), sent, manifest, ver)
		}
	}
	fmt.Fprintf(&b, "\nRound = wall time of the sync (voldelta: `send` until the receiver committed; rsync: until its target is synced; restic: backup + in-place restore). Bytes read (tool) = the agent's `bytes_read`; read from disk = GNU time's file-system inputs of each side's processes (reads the page cache served are not in it). Link = the veth counters, headers included; link-limited = the busier direction's bytes at the veth rate the probe measured (what the link alone needs for what the row sent); round − link-limited = what the round costs beyond its transfer (scan, planning, apply, round trips: the part that grows with the volume). Read from disk includes the kernel's readahead around each range. Chunks sent (raw) = voldelta's `bytes_sent_raw`: content-defined chunks (16/64/256 KiB) it sent, whole, or, where it could (`chunks_patched`), as the ranges that changed in them; a 16 KiB page write sent whole costs the one or two chunks around it. MB = 10^6 bytes.\n")

	fmt.Fprintf(&b, "\n## Acceptance targets\n\n| size | target | measured | limit | |\n|---|---|---|---|---|\n")
	for _, c := range res.Checks {
		val, lim := fmt.Sprintf("%.2f s", c.Value), fmt.Sprintf("%.2f s", c.Limit)
		if c.Unit == "B" {
			val, lim = mbs(uint64(c.Value)), mbs(uint64(c.Limit))
			if c.Limit < 10e6 {
				val, lim = fmt.Sprintf("%.0f B", c.Value), fmt.Sprintf("%.0f B", c.Limit)
			}
		}
		if c.Status == "n/a" {
			val = "—"
		}
		if c.Limit == 0 {
			lim = "—"
		}
		note := ""
		if c.Note != "" {
			note = " — " + c.Note
		}
		fmt.Fprintf(&b, "| %d GiB | %s | %s | %s | **%s**%s |\n", c.GiB, c.Target, val, lim, c.Status, note)
	}

	fmt.Fprintf(&b, "\n## Setup per size (not timed rows)\n\n| size | write images | voldelta seed round | restic seed | size total |\n|---|---|---|---|---|\n")
	for _, s := range res.Sizes {
		rs := "—"
		if v, ok := s.Setup["restic_seed_seconds"]; ok {
			rs = secs(v)
		}
		fmt.Fprintf(&b, "| %d GiB | %s | %s | %s | %s |\n", s.GiB, secs(s.Setup["write_images_seconds"]), secs(s.Setup["seed_round_seconds"]), rs, secs(s.Seconds))
	}
	var vs []string
	for _, k := range []string{"voldelta", "voldelta binary", "restic", "minio", "rsync", "xfsprogs", "go"} {
		if v, ok := res.Versions[k]; ok {
			vs = append(vs, fmt.Sprintf("%s: %s", k, v))
		}
	}
	fmt.Fprintf(&b, "\nVersions: %s.\n", strings.Join(vs, "; "))
	for _, s := range res.Sizes {
		if s.Error != "" {
			fmt.Fprintf(&b, "\n**%d GiB failed:** %s\n", s.GiB, firstLine(s.Error))
		}
	}
	return b.String()
}

func shortCommit(c string) string {
	if len(c) > 12 {
		return c[:12]
	}
	return c
}

func mibs(n int64) string { return fmt.Sprintf("%d MiB", n/mib) }

// scaleChartData is one line per size: GiB, then the round of every row
// ("?" when it did not run), the link floor and the hints target.
func scaleChartData(res *ScaleResults) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# gib")
	for _, k := range scaleRowOrder {
		fmt.Fprintf(&b, " %s", k)
	}
	fmt.Fprintf(&b, " floor target\n")
	for _, s := range res.Sizes {
		if s.Skipped != "" {
			continue
		}
		fmt.Fprintf(&b, "%d", s.GiB)
		for _, k := range scaleRowOrder {
			if r := s.row(k); r.measured() {
				fmt.Fprintf(&b, " %.3f", r.Seconds)
			} else {
				b.WriteString(" ?")
			}
		}
		fmt.Fprintf(&b, " %.3f %.3f\n", res.Delta.FloorSeconds, 1.2*res.Delta.FloorSeconds+1)
	}
	return b.String()
}

const scaleChartScript = `set terminal pngcairo size 1200,800 font "sans,11"
set output '%s'
set title "%s"
set datafile missing "?"
set logscale xy
set xlabel "volume size (GiB)"
set ylabel "delta round time (s)"
set yrange [1:*]
set xtics (%s)
set grid xtics ytics mytics
set key below vertical maxrows 4
set xrange [%[6]g:%[7]g]
floor = %[5]f
target = 1.2 * floor + 1
plot '%[4]s' using 1:2 with linespoints lw 1 dt 4 pt 2 lc rgb "#e7298a" title "voldelta before the change-hint work, full scan", \
     '' using 1:3 with linespoints lw 2 pt 7 lc rgb "#1b9e77" title "voldelta, full scan (no hints)", \
     '' using 1:4 with linespoints lw 2 pt 5 lc rgb "#66a61e" title "voldelta --base (reflink hints)", \
     '' using 1:5 with linespoints lw 2 pt 9 lc rgb "#a6d854" title "voldelta --changed FILE", \
     '' using 1:6 with linespoints lw 2 pt 11 lc rgb "#7570b3" title "rsync --inplace", \
     '' using 1:7 with linespoints lw 2 pt 13 lc rgb "#d95f02" title "restic backup + in-place restore", \
     floor with lines lw 2 dt 2 lc rgb "black" title "link floor (changed bytes at the link rate)", \
     target with lines lw 1 dt 3 lc rgb "black" title "target with hints: 1.2 × floor + 1 s"
`

func renderScaleChart(res *ScaleResults, dir string) error {
	dat := filepath.Join(dir, "scale.dat")
	if err := os.WriteFile(dat, []byte(scaleChartData(res)), 0o644); err != nil {
		return err
	}
	var tics []string
	lo, hi := 0, 0
	for _, s := range res.Sizes {
		tics = append(tics, fmt.Sprintf(`"%d" %d`, s.GiB, s.GiB))
		if lo == 0 || s.GiB < lo {
			lo = s.GiB
		}
		hi = max(hi, s.GiB)
	}
	if len(tics) == 0 {
		return nil
	}
	title := fmt.Sprintf("delta round time vs volume size: %.0f MiB changed in %d ranges, %s, %.0f ms RTT",
		float64(res.Delta.ChangedBytes)/mib, res.Delta.Ranges, res.Link.Rate, 2*res.Link.OneWayDelayMs)
	script := fmt.Sprintf(scaleChartScript, filepath.Join(dir, "scale.png"), title, strings.Join(tics, ", "), dat, res.Delta.FloorSeconds, float64(lo)/1.5, float64(hi)*1.5)
	return runGnuplot(script)
}
