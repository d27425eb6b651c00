package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// renderMarkdown renders the study-shaped table, the voldelta-vs-restic
// comparison and the per-round details. It only reads res.
func renderMarkdown(res *Results) string {
	var b strings.Builder
	m := res.Machine
	fmt.Fprintf(&b, "# voldelta vs restic (+MinIO) vs rsync over an emulated WAN\n\n")
	fmt.Fprintf(&b, "Scale **%s** (the study's sizes ÷ %d). Link: %s each way, %.0f ms RTT added by the delay proxies. ",
		res.Scale.Name, res.Scale.Divisor, res.Link.Rate, 2*res.Link.OneWayDelayMs)
	fmt.Fprintf(&b, "Machine: %d × %s, kernel %s, %s, %.0f GiB; load average %s at the start, %s at the end. ",
		m.NProc, m.CPUModel, m.Kernel, m.GoVersion, m.MemGiB, m.LoadBefore, m.LoadAfter)
	fmt.Fprintf(&b, "Run: `%s`, %s, %.1f min.\n\n", res.Command, res.Started, res.TotalSeconds/60)
	fmt.Fprintf(&b, "GB = 10^9 bytes. Cutover downtime = the final delta transfer + the restore/apply at the target; voldelta and rsync apply in place during their sync, restic needs a restore after its backup, voldelta via MinIO a pull after its push.\n\n")

	// The study's shape.
	fmt.Fprintf(&b, "## The study's table\n\n")
	fmt.Fprintf(&b, "| scenario | flow | initial data | delta data | initial copy | delta copy | restore/apply at target | cutover downtime | verified |\n")
	fmt.Fprintf(&b, "|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range res.Scenarios {
		init := fmt.Sprintf("%.2f GB", float64(s.DataBytes)/gb)
		if s.Continues != "" {
			init = fmt.Sprintf("(state after %s) %.2f GB", s.Continues, float64(s.DataBytes)/gb)
		}
		for _, f := range s.Summary {
			initCopy := "—"
			if f.InitialSeconds > 0 {
				initCopy = fmt.Sprintf("%.2f GB/min (%s)", f.InitialGBMin, secs(f.InitialSeconds))
			}
			restore := fmt.Sprintf("%.2f GB/min (%s), full", f.RestoreGBMin, secs(f.RestoreSeconds))
			switch {
			case f.RestoreIsInTheSync:
				restore = "in the sync (0 s after it)"
			case f.RestoreInPlace:
				restore = fmt.Sprintf("%s, in place", secs(f.RestoreSeconds))
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %.3f GB | %s | %.3f GB/min (%s) | %s | **%s** | %s |\n",
				s.Name, f.Flow, init, float64(s.DeltaBytes)/gb, initCopy, f.DeltaGBMin, secs(f.DeltaSeconds),
				restore, secs(f.CutoverSeconds), yesNo(f.Verified))
		}
	}

	// voldelta against the link and against restic.
	fmt.Fprintf(&b, "\n## voldelta against the link and against restic\n\n")
	fmt.Fprintf(&b, "Link-limited time = bytes that crossed the veth in the busier direction ÷ the link rate measured on the same veth before the scenario.\n\n")
	fmt.Fprintf(&b, "| scenario | link measured | voldelta delta | its link bytes | link-limited | delta ÷ link-limited | voldelta scan | restic delta | voldelta cutover | restic + full restore | ratio | restic + in-place | ratio |\n")
	fmt.Fprintf(&b, "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range res.Scenarios {
		v, rf, ri := s.flow("voldelta"), s.flow("restic + full restore"), s.flow("restic + in-place restore")
		if v == nil || rf == nil || ri == nil {
			continue
		}
		scan := "?"
		if s.Voldelta != nil && s.Voldelta.Delta != nil {
			if x, ok := s.Voldelta.Delta.Stats["scan_seconds"].(float64); ok {
				scan = secs(x)
			}
		}
		fmt.Fprintf(&b, "| %s | %.1f Mbit/s, %.1f ms | %s | %s | %s | %s | %s | %s | **%s** | %s | %s | %s | %s |\n",
			s.Name, s.Probe.LinkRateMbit, s.Probe.RTTMillisMed, secs(v.DeltaSeconds), mbs(v.DeltaLinkBytes),
			secs(v.DeltaLinkLimitedS), ratio(v.DeltaSeconds, v.DeltaLinkLimitedS), scan,
			secs(rf.DeltaSeconds), secs(v.CutoverSeconds), secs(rf.CutoverSeconds), ratio(v.CutoverSeconds, rf.CutoverSeconds),
			secs(ri.CutoverSeconds), ratio(v.CutoverSeconds, ri.CutoverSeconds))
	}

	renderStoreRows(&b, res)

	// Every round.
	fmt.Fprintf(&b, "\n## Every round\n\n")
	fmt.Fprintf(&b, "CPU = user+system seconds and peak RSS per process from GNU time; peak RSS per side = the sum of the peak RSS of the side's processes (an upper bound: they run at once). Source side: voldelta send, voldelta push, restic backup, rsync client; destination side: voldelta receive, MinIO (+ restic restore, + voldelta pull), rsync daemon. syncfs of the target is part of restic's restores and rsync's rounds.\n\n")
	fmt.Fprintf(&b, "| scenario | round | wall | link → | link ← | link-limited | CPU src | CPU dst | peak RSS src | peak RSS dst | verified |\n")
	fmt.Fprintf(&b, "|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range res.Scenarios {
		for _, t := range s.tools() {
			for _, r := range t.rounds() {
				ver := "—"
				if r.VerifyNote != "" {
					ver = yesNo(r.Verified)
				}
				fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %.1f s | %.1f s | %.0f MiB | %.0f MiB | %s |\n",
					s.Name, r.Name, secs(r.Seconds), mbs(r.LinkTxBytes), mbs(r.LinkRxBytes), secs(r.LinkLimitedSeconds(s.Probe)),
					r.CPU(SideSrc), r.CPU(SideDst), r.RSSMiB(SideSrc), r.RSSMiB(SideDst), ver)
			}
		}
	}
	fmt.Fprintf(&b, "\nConsistency: %s.\n", res.Consistency)
	var vs []string
	for _, k := range []string{"voldelta", "restic", "minio", "rsync", "mariadb", "go"} {
		if v, ok := res.Versions[k]; ok {
			vs = append(vs, fmt.Sprintf("%s: %s", k, v))
		}
	}
	fmt.Fprintf(&b, "\nVersions: %s.\n", strings.Join(vs, "; "))
	for _, s := range res.Scenarios {
		if s.Error != "" {
			fmt.Fprintf(&b, "\n**%s failed:** %s\n", s.Name, firstLine(s.Error))
		}
	}
	return b.String()
}

// renderStoreRows is the voldelta-via-MinIO section: per round, the push,
// the pull and what each process cost.
func renderStoreRows(b *strings.Builder, res *Results) {
	fmt.Fprintf(b, "\n## voldelta via MinIO: push at the source, pull at the destination\n\n")
	fmt.Fprintf(b, "The study's topology with voldelta: `voldelta push` reads the source device (frozen) and stores the new generation in MinIO at the destination, across the link; then `voldelta pull`, at the destination, applies it from the local MinIO to its own replica in place and verifies it. Total = push + pull; cutover downtime = the delta round's total (the pull is what a cutover waits for at the target after the last push). Link = both directions on the veth during push and pull. Uploaded and downloaded = chunk objects and manifest as stored, as push and pull report them. CPU and peak RSS per process: push, pull (GNU time), MinIO (charged per step: CPU summed, peak the larger of the two steps).\n\n")
	fmt.Fprintf(b, "| scenario | round | push | pull | total | link | uploaded | downloaded | CPU push / pull / MinIO | peak RSS push / pull / MinIO | verified | cutover | ÷ voldelta | ÷ restic + in-place |\n")
	fmt.Fprintf(b, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range res.Scenarios {
		t := s.VoldeltaMinio
		if t == nil {
			continue
		}
		for _, ph := range []struct {
			name       string
			push, pull *Round
		}{{"initial", t.Initial, t.InitialPull}, {"delta", t.Delta, t.DeltaPull}} {
			if ph.push == nil {
				continue
			}
			pull := ph.pull
			if pull == nil { // the pull did not run
				pull = &Round{}
			}
			pu, _ := ph.push.Proc("voldelta push")
			pl, _ := pull.Proc("voldelta pull")
			m1, _ := ph.push.Proc("minio")
			m2, _ := pull.Proc("minio")
			ver := "—"
			if pull.VerifyNote != "" {
				ver = yesNo(pull.Verified)
			}
			cut, vsVd, vsRi := "—", "—", "—"
			if f := s.flow("voldelta via MinIO"); f != nil && ph.name == "delta" {
				cut = "**" + secs(f.CutoverSeconds) + "**"
				if v := s.flow("voldelta"); v != nil {
					vsVd = ratio(f.CutoverSeconds, v.CutoverSeconds)
				}
				if ri := s.flow("restic + in-place restore"); ri != nil {
					vsRi = ratio(f.CutoverSeconds, ri.CutoverSeconds)
				}
			}
			fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s | %s | %s | %.1f / %.1f / %.1f s | %.0f / %.0f / %.0f MiB | %s | %s | %s | %s |\n",
				s.Name, ph.name, secs(ph.push.Seconds), secs(pull.Seconds), secs(ph.push.Seconds+pull.Seconds),
				mbs(ph.push.LinkBytes()+pull.LinkBytes()), statMB(ph.push.Stats, "bytes_uploaded"), statMB(pull.Stats, "bytes_downloaded"),
				pu.CPU(), pl.CPU(), m1.CPU()+m2.CPU(), kib2mib(pu.MaxRSSKiB), kib2mib(pl.MaxRSSKiB), kib2mib(max(m1.MaxRSSKiB, m2.MaxRSSKiB)),
				ver, cut, vsVd, vsRi)
		}
	}
}

// statMB is a byte count of a voldelta --stats-json, in MB ("?" if absent).
func statMB(stats map[string]any, key string) string {
	n, ok := stats[key].(float64)
	if !ok {
		return "?"
	}
	return mbs(uint64(n))
}

func kib2mib(k int64) float64 { return float64(k) / 1024 }

func secs(s float64) string {
	switch {
	case s <= 0:
		return "0 s"
	case s < 10:
		return fmt.Sprintf("%.2f s", s)
	default:
		return fmt.Sprintf("%.1f s", s)
	}
}

func mbs(n uint64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }

func ratio(a, b float64) string {
	if b <= 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

func yesNo(ok bool) string {
	if ok {
		return "yes"
	}
	return "NO"
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// chartData is the gnuplot data: one line per scenario, the delta time and
// the cutover downtime of each flow.
func chartData(res *Results) string {
	var b strings.Builder
	flows := []string{"voldelta", "restic + full restore", "restic + in-place restore", "rsync --inplace", "voldelta via MinIO"}
	fmt.Fprintf(&b, "# scenario")
	for _, f := range flows {
		fmt.Fprintf(&b, " %q-delta %q-cutover", f, f)
	}
	b.WriteString("\n")
	for _, s := range res.Scenarios {
		if len(s.Summary) == 0 {
			continue
		}
		fmt.Fprintf(&b, "%q", s.Name)
		for _, f := range flows {
			r := s.flow(f)
			if r == nil {
				b.WriteString(" 0 0")
				continue
			}
			fmt.Fprintf(&b, " %.3f %.3f", r.DeltaSeconds, r.CutoverSeconds)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// chartScript draws two clustered histograms; in a cluster of n bars with
// gap 1, bar i stands at x + (i-(n-1)/2)/(n+1), where its value is printed.
const chartScript = `set terminal pngcairo size 1400,900 font "sans,11"
set output '%s'
set multiplot layout 2,1 title "%s"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key below horizontal
set ylabel "seconds"
set yrange [0:*]
set offsets 0,0,graph 0.12,0
lbl(v) = v > 0 ? sprintf("%%.1f", v) : ""
set title "Delta transfer time (the last sync before cutover)"
plot '%[3]s' using 2:xtic(1) title "voldelta" lc rgb "#1b9e77", \
     '' using 10 title "voldelta push (to MinIO)" lc rgb "#66c2a5", \
     '' using 4 title "restic backup" lc rgb "#d95f02", \
     '' using 8 title "rsync --inplace" lc rgb "#7570b3", \
     '' using ($0-0.3):2:(lbl($2)) with labels offset 0,0.7 notitle, \
     '' using ($0-0.1):10:(lbl($10)) with labels offset 0,0.7 notitle, \
     '' using ($0+0.1):4:(lbl($4)) with labels offset 0,0.7 notitle, \
     '' using ($0+0.3):8:(lbl($8)) with labels offset 0,0.7 notitle
set title "Cutover downtime = delta transfer + restore/apply at the target"
plot '%[3]s' using 3:xtic(1) title "voldelta (applied in the sync)" lc rgb "#1b9e77", \
     '' using 11 title "voldelta push + pull via MinIO" lc rgb "#66c2a5", \
     '' using 5 title "restic + full restore (the study's flow)" lc rgb "#d95f02", \
     '' using 7 title "restic + in-place restore" lc rgb "#e6ab02", \
     '' using 9 title "rsync --inplace (applied in the sync)" lc rgb "#7570b3", \
     '' using ($0-2/6.):3:(lbl($3)) with labels offset 0,0.7 notitle, \
     '' using ($0-1/6.):11:(lbl($11)) with labels offset 0,0.7 notitle, \
     '' using ($0):5:(lbl($5)) with labels offset 0,0.7 notitle, \
     '' using ($0+1/6.):7:(lbl($7)) with labels offset 0,0.7 notitle, \
     '' using ($0+2/6.):9:(lbl($9)) with labels offset 0,0.7 notitle
unset multiplot
`

// renderChart draws results.png with gnuplot.
func renderChart(res *Results, out string) error {
	dat := filepath.Join(out, "chart.dat")
	if err := os.WriteFile(dat, []byte(chartData(res)), 0o644); err != nil {
		return err
	}
	title := fmt.Sprintf("voldelta vs restic+MinIO vs rsync, %s link, %.0f ms RTT, scale %s (study ÷ %d)",
		res.Link.Rate, 2*res.Link.OneWayDelayMs, res.Scale.Name, res.Scale.Divisor)
	script := fmt.Sprintf(chartScript, filepath.Join(out, "results.png"), title, dat)
	return runGnuplot(script)
}

// runGnuplot runs a gnuplot script.
func runGnuplot(script string) error {
	cmd := exec.Command("gnuplot")
	cmd.Stdin = strings.NewReader(script)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("gnuplot: %w: %s", err, stderr.String())
	}
	return nil
}
