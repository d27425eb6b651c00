// Command faults is voldelta's fault suite: it runs the real binary (built
// from this tree into a temporary directory) against injected faults —
// SIGKILL of either side at points spread over a round's phases, cut and
// stalled links, a full disk, tampered replicas, lost or garbled journals,
// corrupt state, a target deleted mid-round, two names on one target, a
// source changing under send, hostile frames, and a MinIO store killed,
// damaged or reached with bad credentials — and prints one row per case:
// what is expected, what was observed, PASS or FAIL and whether data was
// lost (a replica reported current, or committed, with bytes that are not
// the source's). See docs/reliability.md.
//
//	sudo go run ./faults                 # everything (make faults)
//	go run ./faults -quick               # the short subset (go test ./faults runs it too)
//	go run ./faults -only 'tamper|journal'
//
// Knobs (flags override): FAULTS_KILLS (kills per side, default 20),
// FAULTS_SIZE_MIB (source size of the kill rounds, default 128),
// FAULTS_SEED, FAULTS_STALL_MAX (how long to wait for a stalled link to be
// detected, default 120s), FAULTS_ONLY, FAULTS_JSON (where the JSON copy of
// the table goes), FAULTS_KEEP=1 (keep the work directory).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// Case is one named fault case; it may return several rows.
type Case struct {
	Name  string
	Quick bool // part of the short subset
	Root  bool // needs root (loop devices, mounts)
	Run   func(ctx context.Context, e *Env) []Result
}

func one(f func(e *Env, ctx context.Context) Result) func(context.Context, *Env) []Result {
	return func(ctx context.Context, e *Env) []Result { return []Result{f(e, ctx)} }
}

func many(f func(e *Env, ctx context.Context) []Result) func(context.Context, *Env) []Result {
	return func(ctx context.Context, e *Env) []Result { return f(e, ctx) }
}

// Cases lists every case in the order the suite runs them. quick selects
// the short subset, whose kill cases kill once per side.
func Cases(quick bool) []Case {
	killsOf := func(e *Env) int {
		if quick {
			return 1
		}
		return e.Kills
	}
	all := []Case{
		{Name: "kill-receiver", Quick: true, Run: one(func(e *Env, ctx context.Context) Result { return e.CaseKills(ctx, "receiver", killsOf(e)) })},
		{Name: "kill-agent", Quick: true, Run: one(func(e *Env, ctx context.Context) Result { return e.CaseKills(ctx, "agent", killsOf(e)) })},
		{Name: "tamper-file", Quick: true, Run: one((*Env).CaseTamperFile)},
		{Name: "tamper-block", Root: true, Run: one((*Env).CaseTamperBlock)},
		{Name: "tamper-ext4", Root: true, Run: one((*Env).CaseTamperExt4)},
		{Name: "journal-lost", Quick: true, Run: one(func(e *Env, ctx context.Context) Result { return e.CaseJournal(ctx, "lost") })},
		{Name: "journal-garbled", Run: one(func(e *Env, ctx context.Context) Result { return e.CaseJournal(ctx, "garbled") })},
		{Name: "state-garbage", Quick: true, Run: one(func(e *Env, ctx context.Context) Result { return e.CaseState(ctx, "garbage") })},
		{Name: "state-generation", Run: one(func(e *Env, ctx context.Context) Result { return e.CaseState(ctx, "generation") })},
		{Name: "target-deleted", Run: one((*Env).CaseTargetDeleted)},
		{Name: "two-names", Run: many((*Env).CaseTwoNames)},
		{Name: "source-changes", Run: many((*Env).CaseSourceChanges)},
		{Name: "link-cut", Run: one(func(e *Env, ctx context.Context) Result { return e.CaseLink(ctx, "cut") })},
		{Name: "link-stall", Run: one(func(e *Env, ctx context.Context) Result { return e.CaseLink(ctx, "stall") })},
		{Name: "disk-full", Root: true, Run: one((*Env).CaseDiskFull)},
		{Name: "hostile-frames", Run: one((*Env).CaseHostile)},
		{Name: "store", Run: many((*Env).CaseStore)},
	}
	if !quick {
		return all
	}
	var q []Case
	for _, c := range all {
		if c.Quick {
			q = append(q, c)
		}
	}
	return q
}

// RunCases runs the cases (those matching only, if set) and returns every
// row. A case that panics is a FAIL row; cleanups run after each case.
func RunCases(ctx context.Context, e *Env, cases []Case, only string) []Result {
	var re *regexp.Regexp
	if only != "" {
		re = regexp.MustCompile(only)
	}
	var out []Result
	for _, c := range cases {
		if re != nil && !re.MatchString(c.Name) {
			continue
		}
		if ctx.Err() != nil {
			break
		}
		if c.Root && !isRoot() {
			out = append(out, Result{Case: c.Name, Verdict: "SKIP", Observed: "needs root (loop devices, mounts)"})
			continue
		}
		e.logf("case %s", c.Name)
		start := time.Now()
		rows := func() (rows []Result) {
			defer func() {
				if p := recover(); p != nil {
					rows = append(rows, Result{Case: c.Name, Verdict: "FAIL", Observed: fmt.Sprintf("harness panic: %v", p)})
				}
			}()
			return c.Run(ctx, e)
		}()
		e.Cleanup()
		for i := range rows {
			if rows[i].Seconds == 0 {
				rows[i].Seconds = time.Since(start).Seconds() / float64(len(rows))
			}
			e.logf("  %s: %s — %s", rows[i].Verdict, rows[i].Case, rows[i].Observed)
		}
		out = append(out, rows...)
	}
	return out
}

// PrintTable writes the rows as an aligned table.
func PrintTable(w io.Writer, rows []Result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CASE\tEXPECTED\tOBSERVED (full text in the JSON)\tVERDICT\tDATA LOST")
	for _, r := range rows {
		lost := "no"
		if r.DataLost {
			lost = "YES"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Case, clip(r.Expected, 60), clip(r.Observed, 200), r.Verdict, lost)
	}
	tw.Flush()
}

// MarkdownTable returns the rows as a Markdown table.
func MarkdownTable(rows []Result) string {
	var b strings.Builder
	b.WriteString("| case | expected | observed | verdict | data lost |\n|---|---|---|---|---|\n")
	esc := func(s string) string { return strings.ReplaceAll(strings.ReplaceAll(s, "|", "\\|"), "\n", " ") }
	for _, r := range rows {
		lost := "no"
		if r.DataLost {
			lost = "**yes**"
		}
		v := r.Verdict
		if v == "FAIL" {
			v = "**FAIL**"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", esc(r.Case), esc(r.Expected), esc(r.Observed), v, lost)
	}
	return b.String()
}

func envInt(k string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(k)); err == nil {
		return v
	}
	return def
}

func main() {
	kills := flag.Int("kills", envInt("FAULTS_KILLS", 20), "SIGKILLs per side (FAULTS_KILLS)")
	size := flag.Int("size-mib", envInt("FAULTS_SIZE_MIB", 128), "source size of the kill rounds in MiB (FAULTS_SIZE_MIB)")
	seed := flag.Uint64("seed", uint64(envInt("FAULTS_SEED", int(time.Now().UnixNano()%1e9))), "random seed (FAULTS_SEED)")
	stall := flag.Duration("stall-max", 120*time.Second, "longest wait for a stalled link to be detected (FAULTS_STALL_MAX)")
	only := flag.String("only", os.Getenv("FAULTS_ONLY"), "run only the cases whose name matches this regexp (FAULTS_ONLY)")
	quick := flag.Bool("quick", false, "the short subset (one kill per side, one tamper, lost journal, corrupt state)")
	jsonOut := flag.String("json", os.Getenv("FAULTS_JSON"), "write the rows as JSON here (FAULTS_JSON; default: in the work directory)")
	mdOut := flag.String("markdown", "", "also write the table as Markdown here")
	keep := flag.Bool("keep", os.Getenv("FAULTS_KEEP") == "1", "keep the work directory (FAULTS_KEEP=1)")
	verbose := flag.Bool("v", false, "log every kill")
	flag.Parse()
	if v := os.Getenv("FAULTS_STALL_MAX"); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			*stall = d
		}
	}

	root, err := moduleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		os.Exit(1)
	}
	work, err := os.MkdirTemp("", "voldelta-faults-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		os.Exit(1)
	}
	e, err := NewEnv(root, work)
	if err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		os.Exit(1)
	}
	e.Kills, e.SizeMiB, e.StallMax, e.Verbose = *kills, *size, *stall, *verbose
	e.SetSeed(*seed)

	ctx, cancel := context.WithCancel(context.Background())
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		e.logf("interrupted: cleaning up (processes, mounts, loop devices)")
		cancel()
		<-sig
		e.Cleanup()
		os.Exit(130)
	}()

	start := time.Now().UTC()
	e.logf("seed %d, binary %s, work dir %s", *seed, e.Bin, work)
	rows := RunCases(ctx, e, Cases(*quick), *only)
	e.Cleanup()

	fmt.Printf("\nvoldelta fault suite, %s, seed %d, %.0fs\n\n", start.Format("2006-01-02 15:04 MST"), *seed, time.Since(start).Seconds())
	PrintTable(os.Stdout, rows)
	if *jsonOut == "" {
		*jsonOut = filepath.Join(work, "results.json")
	}
	report := map[string]any{"started": start, "seed": *seed, "seconds": time.Since(start).Seconds(),
		"command": strings.Join(append([]string{"go run ./faults"}, os.Args[1:]...), " "), "kills_per_side": *kills, "size_mib": *size, "results": rows}
	if b, err := json.MarshalIndent(report, "", "  "); err == nil {
		os.WriteFile(*jsonOut, append(b, '\n'), 0o644)
		fmt.Printf("\nJSON: %s\n", *jsonOut)
	}
	if *mdOut != "" {
		os.WriteFile(*mdOut, []byte(strings.ReplaceAll(MarkdownTable(rows), work, "$WORK")), 0o644)
	}
	if !*keep && !strings.HasPrefix(*jsonOut, work) {
		os.RemoveAll(work)
	} else if !*keep {
		// keep only the JSON
		ents, _ := os.ReadDir(work)
		for _, en := range ents {
			if en.Name() != filepath.Base(*jsonOut) {
				os.RemoveAll(filepath.Join(work, en.Name()))
			}
		}
	}
	failed := 0
	for _, r := range rows {
		if r.Verdict == "FAIL" {
			failed++
		}
	}
	if failed > 0 {
		fmt.Printf("%d of %d cases FAIL\n", failed, len(rows))
		os.Exit(1)
	}
}

// moduleRoot finds the directory holding this module's go.mod, from the
// working directory up.
func moduleRoot() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil && strings.Contains(string(b), "module github.com/voldelta/voldelta") {
			return d, nil
		}
		p := filepath.Dir(d)
		if p == d {
			return "", fmt.Errorf("not inside the voldelta module")
		}
		d = p
	}
}
