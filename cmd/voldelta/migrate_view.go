package main

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/duration"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
)

// writeMigrationList prints the table of list (kubectl's printer columns
// of Migration, sizes and durations made readable).
func writeMigrationList(w io.Writer, list []v1alpha1.Migration, namespaces bool, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if namespaces {
		fmt.Fprint(tw, "NAMESPACE\t")
	}
	fmt.Fprintln(tw, "NAME\tPHASE\tROUNDS\tLAST DELTA\tPREDICTED DOWNTIME\tDOWNTIME\tAGE")
	for i := range list {
		m := &list[i]
		if namespaces {
			fmt.Fprintf(tw, "%s\t", m.Namespace)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", m.Name, phaseOrPending(m.Status.Phase), m.Status.Rounds,
			deltaString(&m.Status), predicted(&m.Status), downtimeTotal(&m.Status), age(m.CreationTimestamp, now))
	}
	return tw.Flush()
}

// writeMigrationStatus prints the whole view of m. program is how the
// binary was invoked, for the hint on how to cut over.
func writeMigrationStatus(w io.Writer, m *v1alpha1.Migration, now time.Time, program string) error {
	st := &m.Status
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	field := func(name, format string, a ...any) { fmt.Fprintf(tw, name+":\t"+format+"\n", a...) }
	field("Migration", "%s/%s", m.Namespace, m.Name)
	phase := string(phaseOrPending(st.Phase))
	if st.ObservedGeneration != 0 && st.ObservedGeneration < m.Generation {
		phase += " (the controller has not seen the last change of spec yet)"
	}
	field("Phase", "%s", phase)
	if st.Message != "" {
		field("Message", "%s", st.Message)
	}
	field("Cutover", "%s", cutoverString(m, program))
	if m.Spec.Abort {
		field("Abort", "requested")
	}
	field("Age", "%s", age(m.CreationTimestamp, now))
	field("Rounds", "%d", st.Rounds)
	field("Last delta", "%s", deltaString(st))
	field("Predicted downtime", "%s", predicted(st))
	if st.CutoverStartTime != nil {
		field("Cutover started", "%s", clock(st.CutoverStartTime.Time, now))
	}
	if st.CommitTime != nil {
		field("Group committed", "%s", clock(st.CommitTime.Time, now))
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	section := func(title, header string, rows [][]string) error {
		if len(rows) == 0 {
			return nil
		}
		fmt.Fprintf(w, "\n%s:\n", title)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  "+header)
		for _, r := range rows {
			fmt.Fprintln(tw, "  "+strings.Join(r, "\t"))
		}
		return tw.Flush()
	}
	var rows [][]string
	for _, c := range st.Conditions {
		rows = append(rows, []string{c.Type, string(c.Status), c.Reason, age(c.LastTransitionTime, now), c.Message})
	}
	if err := section("Conditions", "TYPE\tSTATUS\tREASON\tAGE\tMESSAGE", rows); err != nil {
		return err
	}
	rows = nil
	for _, v := range st.Volumes {
		gen, root := "-", "-"
		if v.Generation != 0 {
			gen = fmt.Sprint(v.Generation)
		}
		if v.RootHash != "" {
			root = v.RootHash
			if len(root) > 16 {
				root = root[:16]
			}
		}
		rows = append(rows, []string{v.PVC, v.VolumeSync, v.RemoteVolume, gen, root})
	}
	if len(rows) == 0 {
		for _, p := range m.Spec.Volumes.PVCs { // not resolved yet: what spec names
			rows = append(rows, []string{p, "-", "-", "-", "-"})
		}
	}
	if err := section("Volumes", "PVC\tVOLUMESYNC\tREMOTE VOLUME\tFINAL GENERATION\tROOT", rows); err != nil {
		return err
	}
	rows = nil
	for _, wl := range st.Workloads {
		rows = append(rows, []string{string(wl.Kind), wl.Name, fmt.Sprint(wl.Replicas)})
	}
	if err := section("Workloads (replicas before the cutover)", "KIND\tNAME\tREPLICAS", rows); err != nil {
		return err
	}
	rows = nil
	for _, r := range st.History {
		round := []string{fmt.Sprint(r.Round), clock(r.StartTime.Time, now), clock(r.EndTime.Time, now),
			shortDuration(r.EndTime.Sub(r.StartTime.Time)), humanBytes(nonNeg(r.SentBytes))}
		if len(r.Volumes) == 0 {
			rows = append(rows, append(round, "-", "", "", "", ""))
		}
		for i, v := range r.Volumes {
			if i > 0 {
				round = []string{"", "", "", "", ""}
			}
			rows = append(rows, append(round, v.PVC, humanBytes(nonNeg(v.SentBytes)), humanBytes(nonNeg(v.WireBytes)),
				fmt.Sprint(v.Generation), shortDuration(v.Duration.Duration)))
		}
	}
	title := "Pre-copy rounds"
	if n := int32(len(st.History)); n > 0 && n < st.Rounds {
		title = fmt.Sprintf("Pre-copy rounds (the last %d of %d)", n, st.Rounds)
	}
	if err := section(title, "ROUND\tSTART\tEND\tTOOK\tSENT\tVOLUME\tVOLUME SENT\tWIRE\tGENERATION\tVOLUME TOOK", rows); err != nil {
		return err
	}
	if d := st.Downtime; d != nil {
		fmt.Fprintf(w, "\nDowntime: %s, from the start of quiescing to the group commit\n", shortDuration(d.Total.Duration))
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "  quiesce\t%s\twait for the workloads' pods to be gone\n", shortDuration(d.Quiesce.Duration))
		fmt.Fprintf(tw, "  final sync\t%s\tfinal snapshots, deltas, verify and commit of every volume\n", shortDuration(d.FinalSync.Duration))
		if d.Snapshot != nil {
			fmt.Fprintf(tw, "    snapshot\t%s\tthe longest wait for a final snapshot\n", shortDuration(d.Snapshot.Duration))
		}
		fmt.Fprintf(tw, "  commit\t%s\trecording the group\n", shortDuration(d.Commit.Duration))
		return tw.Flush()
	}
	return nil
}

func cutoverString(m *v1alpha1.Migration, program string) string {
	mode := m.Spec.Cutover.Mode
	if mode == "" {
		mode = v1alpha1.CutoverManual
	}
	switch {
	case m.Spec.CutoverRequested:
		return string(mode) + ", requested"
	case mode == v1alpha1.CutoverAuto:
		return string(mode) + ", as soon as the pre-copy converged"
	case m.Spec.CutoverAt != nil:
		return fmt.Sprintf("%s, at %s", mode, m.Spec.CutoverAt.Local().Format(time.DateTime))
	case m.Status.Phase.Terminal():
		return string(mode) + ", not requested"
	}
	return fmt.Sprintf("%s, not requested (%s migrate cutover %s)", mode, program, m.Name)
}

// summary is one line saying where m is, for the plain live view.
func summary(m *v1alpha1.Migration) string {
	st := &m.Status
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", m.Name, phaseOrPending(st.Phase))
	if st.Downtime != nil {
		fmt.Fprintf(&b, ", downtime %s", shortDuration(st.Downtime.Total.Duration))
	} else {
		fmt.Fprintf(&b, ", %d rounds, last delta %s, predicted downtime %s", st.Rounds, deltaString(st), predicted(st))
	}
	if st.Message != "" {
		fmt.Fprintf(&b, ": %s", st.Message)
	}
	return b.String()
}

// migrationView shows a Migration as it changes: the whole view redrawn
// in place on a terminal, one line per change otherwise, or JSON.
type migrationView struct {
	o migrateOptions
	// final: print JSON only for the last object (cutover/abort --wait).
	final bool
	last  *v1alpha1.Migration
	line  string
}

func newMigrationView(o migrateOptions, final bool) *migrationView {
	return &migrationView{o: o, final: final}
}

// clearScreen moves the cursor home and erases the screen.
const clearScreen = "\x1b[H\x1b[2J"

func (v *migrationView) show(m *v1alpha1.Migration) error {
	same := v.last != nil && v.last.ResourceVersion == m.ResourceVersion
	v.last = m
	switch {
	case same:
		return nil
	case v.o.JSON:
		if v.final {
			return nil
		}
		return printJSON(v.o.Out, forOutput(m.DeepCopy()))
	case v.o.Live:
		var b bytes.Buffer
		b.WriteString(clearScreen)
		if err := writeMigrationStatus(&b, m, v.o.Now(), v.o.Program); err != nil {
			return err
		}
		_, err := v.o.Out.Write(b.Bytes())
		return err
	}
	line := summary(m)
	if line == v.line {
		return nil
	}
	v.line = line
	_, err := fmt.Fprintf(v.o.Out, "%s %s\n", v.o.Now().Format(time.TimeOnly), line)
	return err
}

// finish prints what comes after the last change: the final object
// (JSON, cutover/abort --wait) or the whole view (plain lines).
func (v *migrationView) finish() error {
	switch {
	case v.last == nil, v.o.Live, v.o.JSON && !v.final:
		return nil
	case v.o.JSON:
		return printJSON(v.o.Out, forOutput(v.last))
	}
	fmt.Fprintln(v.o.Out)
	return writeMigrationStatus(v.o.Out, v.last, v.o.Now(), v.o.Program)
}

func phaseOrPending(p v1alpha1.MigrationPhase) v1alpha1.MigrationPhase {
	if p == "" {
		return v1alpha1.MigrationPending
	}
	return p
}

func deltaString(st *v1alpha1.MigrationStatus) string {
	if st.Rounds == 0 && st.LastDeltaBytes == 0 {
		return "-"
	}
	return humanBytes(nonNeg(st.LastDeltaBytes))
}

func predicted(st *v1alpha1.MigrationStatus) string {
	if st.PredictedDowntime == nil {
		return "-"
	}
	return shortDuration(st.PredictedDowntime.Duration)
}

func downtimeTotal(st *v1alpha1.MigrationStatus) string {
	if st.Downtime == nil {
		return "-"
	}
	return shortDuration(st.Downtime.Total.Duration)
}

func nonNeg(n int64) uint64 {
	if n < 0 {
		return 0
	}
	return uint64(n)
}

// shortDuration rounds d to what a reader compares: tenths of a second
// under a minute, seconds under an hour, minutes above.
func shortDuration(d time.Duration) string {
	switch {
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	case d < time.Hour:
		return d.Round(time.Second).String()
	}
	return d.Round(time.Minute).String()
}

// age is kubectl's AGE column.
func age(t metav1.Time, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return duration.HumanDuration(now.Sub(t.Time))
}

// clock is a local time of day, with the date when it is not today's.
func clock(t time.Time, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	lt, ln := t.Local(), now.Local()
	if y, m, d := lt.Date(); ln.Year() == y && ln.Month() == m && ln.Day() == d {
		return lt.Format(time.TimeOnly)
	}
	return lt.Format(time.DateTime)
}
