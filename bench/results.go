package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// Results is everything one run measured; results.json is this, with the
// derived Summary of each scenario filled in.
type Results struct {
	Started      string            `json:"started"`
	Finished     string            `json:"finished"`
	TotalSeconds float64           `json:"total_seconds"`
	Command      string            `json:"command"`
	Machine      Machine           `json:"machine"`
	Versions     map[string]string `json:"versions"`
	Scale        Scale             `json:"scale"`
	Link         LinkSetup         `json:"link"`
	Consistency  string            `json:"consistency"`
	Scenarios    []*ScenarioResult `json:"scenarios"`
}

// Machine describes where the run happened.
type Machine struct {
	NProc      int     `json:"nproc"`
	CPUModel   string  `json:"cpu_model"`
	Kernel     string  `json:"kernel"`
	GoVersion  string  `json:"go_version"`
	MemGiB     float64 `json:"mem_gib"`
	LoadBefore string  `json:"loadavg_before"`
	LoadAfter  string  `json:"loadavg_after"`
}

// LinkSetup is how the WAN was emulated.
type LinkSetup struct {
	Rate          string  `json:"rate"`
	OneWayDelayMs float64 `json:"one_way_delay_ms"`
	Shaping       string  `json:"shaping"`
}

// ScenarioResult is one scenario's raw figures.
type ScenarioResult struct {
	Name              string      `json:"name"`
	Title             string      `json:"title"`
	Continues         string      `json:"continues,omitempty"`
	Seconds           float64     `json:"seconds"`
	SourceVolumeBytes int64       `json:"source_volume_bytes"`
	DataBytes         int64       `json:"data_bytes"`       // files on the source before the delta
	DataBytesAfter    int64       `json:"data_bytes_after"` // and after
	DeltaBytes        int64       `json:"delta_bytes"`      // what the workload added or rewrote
	Probe             LinkProbe   `json:"link_probe"`
	Voldelta          *ToolResult `json:"voldelta,omitempty"`
	VoldeltaMinio     *ToolResult `json:"voldelta_minio,omitempty"` // push at the source, pull at the destination
	Restic            *ToolResult `json:"restic,omitempty"`
	Rsync             *ToolResult `json:"rsync,omitempty"`
	Summary           []FlowRow   `json:"summary,omitempty"`
	Error             string      `json:"error,omitempty"`
}

// newTools starts the scenario's (or a further round's) results of every
// tool.
func (s *ScenarioResult) newTools() {
	s.Voldelta, s.VoldeltaMinio = &ToolResult{Tool: "voldelta"}, &ToolResult{Tool: "voldelta via MinIO"}
	s.Restic, s.Rsync = &ToolResult{Tool: "restic"}, &ToolResult{Tool: "rsync"}
}

// tools are the scenario's tool results, in the order of the report.
func (s *ScenarioResult) tools() []*ToolResult {
	var ts []*ToolResult
	for _, t := range []*ToolResult{s.Voldelta, s.VoldeltaMinio, s.Restic, s.Rsync} {
		if t != nil {
			ts = append(ts, t)
		}
	}
	return ts
}

// ToolResult holds a tool's rounds in one scenario. For voldelta via
// MinIO, Initial and Delta are the pushes and InitialPull and DeltaPull
// the pulls that follow them.
type ToolResult struct {
	Tool           string `json:"tool"`
	Initial        *Round `json:"initial,omitempty"`
	InitialRestore *Round `json:"initial_restore,omitempty"`
	InitialPull    *Round `json:"initial_pull,omitempty"`
	Delta          *Round `json:"delta,omitempty"`
	FullRestore    *Round `json:"full_restore,omitempty"`
	InPlaceRestore *Round `json:"in_place_restore,omitempty"`
	DeltaPull      *Round `json:"delta_pull,omitempty"`
}

// rounds are t's rounds in the order they ran.
func (t *ToolResult) rounds() []*Round {
	var rs []*Round
	for _, r := range []*Round{t.Initial, t.InitialRestore, t.InitialPull, t.Delta, t.FullRestore, t.InPlaceRestore, t.DeltaPull} {
		if r != nil {
			rs = append(rs, r)
		}
	}
	return rs
}

// Round is one timed step of one tool.
type Round struct {
	Name          string         `json:"name"`
	Seconds       float64        `json:"seconds"`
	SyncSeconds   float64        `json:"syncfs_seconds,omitempty"` // part of Seconds
	LinkTxBytes   uint64         `json:"link_tx_bytes"`            // source → destination, veth counter
	LinkRxBytes   uint64         `json:"link_rx_bytes"`            // destination → source
	Procs         []Usage        `json:"processes"`
	Verified      bool           `json:"verified"`
	VerifyNote    string         `json:"verify_note,omitempty"`
	VerifySeconds float64        `json:"verify_seconds,omitempty"`
	Stats         map[string]any `json:"voldelta_stats,omitempty"`
	Command       string         `json:"command,omitempty"`
}

// CPU is the CPU seconds of the round's processes on side.
func (r *Round) CPU(side Side) float64 {
	var s float64
	for _, p := range r.Procs {
		if p.Side == side {
			s += p.CPU()
		}
	}
	return s
}

// RSSMiB is the sum of the peak RSS of the round's processes on side (an
// upper bound of the side's peak: they run at the same time).
func (r *Round) RSSMiB(side Side) float64 {
	var s int64
	for _, p := range r.Procs {
		if p.Side == side {
			s += p.MaxRSSKiB
		}
	}
	return float64(s) / 1024
}

// LinkBytes is what crossed the link both ways.
func (r *Round) LinkBytes() uint64 { return r.LinkTxBytes + r.LinkRxBytes }

// Proc is the usage of the round's process called name.
func (r *Round) Proc(name string) (Usage, bool) {
	for _, p := range r.Procs {
		if p.Name == name {
			return p, true
		}
	}
	return Usage{}, false
}

// LinkLimitedSeconds is the time the link alone needs for the round's
// traffic: the busier direction's bytes over the measured per-direction
// rate (both read off the same veth counters).
func (r *Round) LinkLimitedSeconds(p LinkProbe) float64 {
	if p.LinkRateBytesS <= 0 {
		return math.NaN()
	}
	return float64(max(r.LinkTxBytes, r.LinkRxBytes)) / p.LinkRateBytesS
}

// FlowRow is one line of the study-shaped table: a tool's migration flow
// in one scenario.
type FlowRow struct {
	Flow               string  `json:"flow"`
	InitialSeconds     float64 `json:"initial_seconds"` // NaN-free: 0 when not run
	DeltaSeconds       float64 `json:"delta_seconds"`
	RestoreSeconds     float64 `json:"restore_seconds"` // apply at the target after the delta transfer
	CutoverSeconds     float64 `json:"cutover_seconds"` // delta + restore
	InitialGBMin       float64 `json:"initial_gb_per_min"`
	DeltaGBMin         float64 `json:"delta_gb_per_min"`
	RestoreGBMin       float64 `json:"restore_gb_per_min"`
	DeltaLinkBytes     uint64  `json:"delta_link_bytes"`
	DeltaLinkLimitedS  float64 `json:"delta_link_limited_seconds"`
	InitialLinkBytes   uint64  `json:"initial_link_bytes"`
	Verified           bool    `json:"verified"`
	DeltaCPUSrc        float64 `json:"delta_cpu_src_seconds"`
	DeltaCPUDst        float64 `json:"delta_cpu_dst_seconds"` // restore included
	DeltaRSSSrcMiB     float64 `json:"delta_peak_rss_src_mib"`
	DeltaRSSDstMiB     float64 `json:"delta_peak_rss_dst_mib"` // restore included (max of the steps)
	RestoreIsInTheSync bool    `json:"restore_is_in_the_sync"`
	RestoreInPlace     bool    `json:"restore_in_place"` // a separate step that updates the target in place
}

// apply is how a flow brings its target up to date.
type apply int

const (
	applyInSync  apply = iota // the sync writes the target (voldelta send, rsync)
	applyFull                 // a full restore into an empty target after the sync
	applyInPlace              // a separate step after the sync updates the target in place
)

const gb = 1e9

func gbPerMin(bytes int64, secs float64) float64 {
	if secs <= 0 || bytes <= 0 {
		return 0
	}
	return float64(bytes) / gb / (secs / 60)
}

// summarize derives the flow rows of a scenario from its raw figures.
func (s *ScenarioResult) summarize() {
	s.Summary = nil
	row := func(flow string, how apply, init, delta, restore *Round) {
		if delta == nil {
			return
		}
		f := FlowRow{Flow: flow, RestoreIsInTheSync: how == applyInSync, RestoreInPlace: how == applyInPlace}
		if init != nil {
			f.InitialSeconds = init.Seconds
			f.InitialGBMin = gbPerMin(s.DataBytes, init.Seconds)
			f.InitialLinkBytes = init.LinkBytes()
		}
		f.DeltaSeconds = delta.Seconds
		f.DeltaGBMin = gbPerMin(s.DeltaBytes, delta.Seconds)
		f.DeltaLinkBytes = delta.LinkBytes()
		f.DeltaLinkLimitedS = delta.LinkLimitedSeconds(s.Probe)
		if math.IsNaN(f.DeltaLinkLimitedS) {
			f.DeltaLinkLimitedS = 0
		}
		f.CutoverSeconds = delta.Seconds
		f.Verified = delta.Verified
		f.DeltaCPUSrc, f.DeltaCPUDst = delta.CPU(SideSrc), delta.CPU(SideDst)
		f.DeltaRSSSrcMiB, f.DeltaRSSDstMiB = delta.RSSMiB(SideSrc), delta.RSSMiB(SideDst)
		if restore != nil {
			f.RestoreSeconds = restore.Seconds
			f.RestoreGBMin = gbPerMin(s.DataBytesAfter, restore.Seconds)
			f.CutoverSeconds += restore.Seconds
			f.Verified = restore.Verified
			f.DeltaCPUDst += restore.CPU(SideDst)
			f.DeltaRSSDstMiB = max(f.DeltaRSSDstMiB, restore.RSSMiB(SideDst))
		}
		s.Summary = append(s.Summary, f)
	}
	if t := s.Voldelta; t != nil {
		row("voldelta", applyInSync, t.Initial, t.Delta, nil)
	}
	if t := s.VoldeltaMinio; t != nil {
		// The push is the transfer, the pull the apply at the target:
		// cutover = the last push + its pull.
		row("voldelta via MinIO", applyInPlace, t.Initial, t.Delta, t.DeltaPull)
	}
	if t := s.Restic; t != nil {
		row("restic + full restore", applyFull, t.Initial, t.Delta, t.FullRestore)
		row("restic + in-place restore", applyInPlace, t.Initial, t.Delta, t.InPlaceRestore)
	}
	if t := s.Rsync; t != nil {
		row("rsync --inplace", applyInSync, t.Initial, t.Delta, nil)
	}
}

func (s *ScenarioResult) flow(name string) *FlowRow {
	for i := range s.Summary {
		if s.Summary[i].Flow == name {
			return &s.Summary[i]
		}
	}
	return nil
}

func describeMachine(ctx context.Context) Machine {
	m := Machine{NProc: runtime.NumCPU(), GoVersion: runtime.Version(), LoadBefore: loadavg()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kib float64
		fmt.Sscanf(string(b), "MemTotal: %f kB", &kib)
		m.MemGiB = math.Round(kib/1024/1024*10) / 10
	}
	if out, err := exec.CommandContext(ctx, "go", "version").Output(); err == nil {
		m.GoVersion = strings.TrimSpace(string(out))
	}
	return m
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// writeResults writes results.json, results.md and results.png to cfg.Out
// and prints the Markdown.
func writeResults(cfg *Config, res *Results) error {
	for _, s := range res.Scenarios {
		s.summarize()
	}
	raw, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(cfg.Out, "results.json"), append(raw, '\n'), 0o644); err != nil {
		return err
	}
	md := renderMarkdown(res)
	if err := os.WriteFile(filepath.Join(cfg.Out, "results.md"), []byte(md), 0o644); err != nil {
		return err
	}
	fmt.Println()
	fmt.Print(md)
	if err := renderChart(res, cfg.Out); err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	fmt.Printf("\nresults: %s/results.{md,json,png}\n", cfg.Out)
	return nil
}
