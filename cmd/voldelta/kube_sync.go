package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/voldelta/voldelta/agent"
	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
)

func newSyncCmd() *cobra.Command {
	var (
		kf       kubeFlags
		output   string
		progress string
		wait     bool
		timeout  time.Duration
	)
	c := &cobra.Command{
		Use:   "sync NAME",
		Short: "Run a manual round of a VolumeSync (spec.trigger.manual); --wait follows it",
		Long: `sync sets spec.trigger.manual of the VolumeSync NAME to a new value (the
time, RFC 3339): the agent runs one round for it, from a snapshot taken
after it was set, and records it as status.lastManualTrigger when the round
committed. sync refuses a paused VolumeSync, one a Migration drives (use
'voldelta migrate') and one with spec.group or spec.trigger.snapshotName set
(a new trigger would send a group round, or read that snapshot again).

--wait follows the VolumeSync (a watch on the API server) with a progress
bar from its status.progress (--progress json: a JSON line each time the
agent reports, every few seconds, as 'send --progress json' writes them, and
a last one with "done": true). It exits 0 when status.lastManualTrigger
equals the trigger and prints the round's generation, bytes sent and
duration. It exits 1 at the first failed attempt seen while waiting
(status.consecutiveFailures grew: the Degraded condition's reason and
message), also one of an earlier round the new one waits behind, and when
the agent reports for this spec that the round cannot start (Degraded
SourceNotFound or InvalidSpec, or paused). The agent goes on retrying a
failed round with backoff; the trigger stays set. If someone sets
spec.trigger.manual again while it waits, it waits for that round (its
snapshot is newer). --timeout gives up waiting (exit 1); the round goes on.

-o json or yaml prints the VolumeSync: the patched object, with --wait the
final one.`,
		Example: `  voldelta sync mysql-data -n shop --wait
  voldelta sync mysql-data --wait --progress json 2> progress.jsonl
  voldelta sync mysql-data --wait --timeout 30m -o yaml`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			switch progress {
			case "auto", "always", "never", "json":
			default:
				return usagef(c, "--progress %q: want auto, always, never or json", progress)
			}
			o, err := kubeCommandOptions(c, &kf, output)
			if err != nil {
				return err
			}
			ctx, cancel := withOptionalTimeout(c.Context(), timeout)
			defer cancel()
			return runKubeSync(ctx, o, args[0], syncWait{Wait: wait, Progress: progress, Live: isTerminal(c.ErrOrStderr())})
		},
	}
	kf.register(c.Flags())
	c.Flags().StringVarP(&output, "output", "o", "table", "output format: table (a summary line), json or yaml")
	c.Flags().BoolVar(&wait, "wait", false, "follow the round until it committed (exit 0) or an attempt failed (exit 1)")
	c.Flags().DurationVar(&timeout, "timeout", 0, "with --wait: give up waiting after this long (0: no limit)")
	c.Flags().StringVar(&progress, "progress", "auto", "with --wait, progress on stderr: auto (a bar when stderr is a terminal, else a line per step), always (a bar), never, or json (a JSON line per report of the agent)")
	return c
}

// syncWait is what sync --wait shows.
type syncWait struct {
	Wait bool
	// Progress is --progress: auto, always, never or json.
	Progress string
	// Live: Err is a terminal (auto shows a bar).
	Live bool
}

// errRoundFailed is the error of sync --wait when an attempt failed.
var errRoundFailed = errors.New("round failed")

// runKubeSync requests a manual round and, with w.Wait, follows it.
func runKubeSync(ctx context.Context, o kubeOptions, name string, w syncWait) error {
	c := o.Clusters[0]
	key := client.ObjectKey{Namespace: c.Namespace, Name: name}
	vs, trigger, err := requestSync(ctx, c.Client, key, o.Now())
	if err != nil {
		return err
	}
	note := o.Out
	if o.structured() {
		note = o.Err
	}
	fmt.Fprintf(note, "volumesync.voldelta.io/%s: manual round requested (spec.trigger.manual %s)\n", name, trigger)
	if !w.Wait {
		if o.structured() {
			return printObject(o.Out, o.Output, forOutputObject(vs, "VolumeSync"))
		}
		return nil
	}
	view := newRoundView(o, w, vs)
	tr := &roundTracker{trigger: trigger, generation: vs.Generation, failures: vs.Status.ConsecutiveFailures, rounds: vs.Status.Rounds, notes: o.Err}
	final, err := watchVolumeSync(ctx, c.Client, key, func(vs *v1alpha1.VolumeSync) (bool, error) {
		view.show(vs)
		return tr.observe(vs)
	})
	view.finish(final, err == nil)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("stopped waiting for the round of volumesync %s/%s (%w); it goes on: kubectl wait --for=jsonpath='{.status.lastManualTrigger}'=%s volumesync/%s -n %s",
				key.Namespace, key.Name, err, tr.trigger, key.Name, key.Namespace)
		}
		return err
	}
	if o.structured() {
		return printObject(o.Out, o.Output, forOutputObject(final, "VolumeSync"))
	}
	fmt.Fprintf(o.Out, "volumesync.voldelta.io/%s: %s\n", name, roundSummary(&final.Status))
	return nil
}

// roundSummary is what the last committed round did.
func roundSummary(st *v1alpha1.VolumeSyncStatus) string {
	took := "-"
	if st.LastSyncDuration != nil {
		took = shortDuration(st.LastSyncDuration.Duration)
	}
	return fmt.Sprintf("generation %d committed: %s sent of %s (%s on the wire) in %s", st.LastGeneration,
		humanBytes(nonNeg(st.LastBytesSent)), humanBytes(nonNeg(st.LastSourceBytes)), humanBytes(nonNeg(st.LastWireBytes)), took)
}

// requestSync sets spec.trigger.manual to a new value (from now) with a
// merge patch carrying the resourceVersion, unless the VolumeSync refuses
// a manual round, and returns the patched object and the value.
func requestSync(ctx context.Context, cl client.Client, key client.ObjectKey, now time.Time) (*v1alpha1.VolumeSync, string, error) {
	for attempt := 0; ; attempt++ {
		vs, err := getVolumeSync(ctx, cl, key)
		if err != nil {
			return nil, "", err
		}
		if err := checkSync(vs); err != nil {
			return nil, "", err
		}
		trigger := newTrigger(vs, now)
		base := vs.DeepCopy()
		vs.Spec.Trigger.Manual = trigger
		err = cl.Patch(ctx, vs, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{}))
		if apierrors.IsConflict(err) && attempt < 10 {
			continue
		}
		if err != nil {
			return nil, "", fmt.Errorf("set spec.trigger.manual of volumesync %s/%s: %w", key.Namespace, key.Name, apiError(err))
		}
		return vs, trigger, nil
	}
}

// checkSync refuses a manual round the VolumeSync should not get.
func checkSync(vs *v1alpha1.VolumeSync) error {
	ref := fmt.Sprintf("volumesync %s/%s", vs.Namespace, vs.Name)
	if o := metav1.GetControllerOf(vs); o != nil && o.Kind == "Migration" {
		return fmt.Errorf("%s is driven by migration %s: its rounds are the migration's (voldelta migrate status %s -n %s)", ref, o.Name, o.Name, vs.Namespace)
	}
	switch {
	case vs.Spec.Paused:
		return fmt.Errorf("%s is paused (spec.paused): no round starts until it is resumed", ref)
	case vs.Spec.Group != nil:
		return fmt.Errorf("%s is a member of group %s (spec.group): a manual round would be sent as a group member", ref, vs.Spec.Group.Name)
	case vs.Spec.Trigger.SnapshotName != "":
		return fmt.Errorf("%s has spec.trigger.snapshotName %s: a new manual round would read that snapshot again; clear it first", ref, vs.Spec.Trigger.SnapshotName)
	}
	return nil
}

// newTrigger is now in RFC 3339, moved on by a nanosecond until it is
// none of the values the VolumeSync knows (a new value starts a round).
func newTrigger(vs *v1alpha1.VolumeSync, now time.Time) string {
	for t := now.UTC(); ; t = t.Add(time.Nanosecond) {
		s := t.Format(time.RFC3339Nano)
		if s != vs.Spec.Trigger.Manual && s != vs.Status.LastManualTrigger && s != vs.Status.PendingManualTrigger {
			return s
		}
	}
}

func getVolumeSync(ctx context.Context, cl client.Client, key client.ObjectKey) (*v1alpha1.VolumeSync, error) {
	vs := &v1alpha1.VolumeSync{}
	if err := cl.Get(ctx, key, vs); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("volumesync %q not found in namespace %s", key.Name, key.Namespace)
		}
		return nil, fmt.Errorf("get volumesync %s/%s: %w", key.Namespace, key.Name, apiError(err))
	}
	return vs, nil
}

// roundTracker decides, from each state of the VolumeSync, whether the
// round of the trigger committed, failed or still runs.
type roundTracker struct {
	trigger    string
	generation int64 // metadata.generation with the trigger set
	failures   int32 // status.consecutiveFailures last seen
	rounds     int64 // status.rounds last seen
	notes      io.Writer
}

// observe is true when the round committed, an error when an attempt
// failed or the round cannot start, false while it runs.
func (t *roundTracker) observe(vs *v1alpha1.VolumeSync) (bool, error) {
	st := &vs.Status
	ref := fmt.Sprintf("volumesync %s/%s", vs.Namespace, vs.Name)
	if m := vs.Spec.Trigger.Manual; m != t.trigger {
		if m == "" {
			return false, fmt.Errorf("%s: spec.trigger.manual was cleared while waiting", ref)
		}
		fmt.Fprintf(t.notes, "%s: spec.trigger.manual was set to %s by someone else; waiting for its round (its snapshot is newer)\n", ref, m)
		t.trigger, t.generation = m, vs.Generation
	}
	if st.LastManualTrigger == t.trigger {
		return true, nil
	}
	failed := st.ConsecutiveFailures > t.failures || (st.Rounds > t.rounds && st.ConsecutiveFailures > 0)
	t.failures, t.rounds = st.ConsecutiveFailures, st.Rounds
	cond := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionDegraded)
	if failed {
		why := "no reason reported"
		if cond != nil && cond.Status == metav1.ConditionTrue {
			why = cond.Reason + ": " + cond.Message
		}
		return false, fmt.Errorf("%s: %w: attempt %d failed (%s); the agent retries it with backoff (voldelta describe %s)",
			ref, errRoundFailed, st.ConsecutiveFailures, why, vs.Name)
	}
	if cond != nil && cond.Status == metav1.ConditionTrue && cond.ObservedGeneration >= t.generation &&
		(cond.Reason == v1alpha1.ReasonSourceNotFound || cond.Reason == v1alpha1.ReasonInvalidSpec) {
		return false, fmt.Errorf("%s: the round cannot start (%s: %s)", ref, cond.Reason, cond.Message)
	}
	if st.Phase == v1alpha1.PhasePaused && st.ObservedGeneration >= t.generation {
		return false, fmt.Errorf("%s was paused while waiting: the round starts when it is resumed", ref)
	}
	return false, nil
}

// watchVolumeSync calls show with the VolumeSync as it is and at every
// change until show returns true or an error (it returns that object),
// ctx ends or the object is deleted. A watch the server closes or
// expires is resumed from a fresh read.
func watchVolumeSync(ctx context.Context, cl client.WithWatch, key client.ObjectKey, show func(*v1alpha1.VolumeSync) (bool, error)) (*v1alpha1.VolumeSync, error) {
	sel := fields.OneTermEqualSelector("metadata.name", key.Name)
	for {
		vs, err := getVolumeSync(ctx, cl, key)
		if err != nil {
			return nil, err
		}
		if done, err := show(vs); done || err != nil {
			return vs, err
		}
		started := time.Now()
		w, err := cl.Watch(ctx, &v1alpha1.VolumeSyncList{}, client.InNamespace(key.Namespace),
			&client.ListOptions{FieldSelector: sel, Raw: &metav1.ListOptions{ResourceVersion: vs.ResourceVersion, AllowWatchBookmarks: true}})
		if err != nil {
			return nil, fmt.Errorf("watch volumesync %s/%s: %w", key.Namespace, key.Name, apiError(err))
		}
		last, err := followVolumeSync(ctx, w, key, show)
		w.Stop()
		if err != nil || last != nil {
			return last, err
		}
		if time.Since(started) < time.Second { // the server closes at once: do not hammer it
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Second):
			}
		}
	}
}

// followVolumeSync shows the events of w until show is done (it returns
// the object) or w closes (nil, nil: read again and resume).
func followVolumeSync(ctx context.Context, w watch.Interface, key client.ObjectKey, show func(*v1alpha1.VolumeSync) (bool, error)) (*v1alpha1.VolumeSync, error) {
	return followWatch(ctx, w, "volumesync", key, show)
}

// roundView shows a running round.
type roundView interface {
	show(*v1alpha1.VolumeSync)
	// finish ends the display; ok when the round committed (vs is then
	// the final object).
	finish(vs *v1alpha1.VolumeSync, ok bool)
}

func newRoundView(o kubeOptions, w syncWait, vs *v1alpha1.VolumeSync) roundView {
	ph := phasesSend
	if vs.Spec.Destination.Store != nil {
		ph = phasesUpload
	}
	switch {
	case w.Progress == "json":
		return &jsonRoundView{w: o.Err, ph: ph}
	case w.Progress == "always" || (w.Progress == "auto" && w.Live):
		return &barRoundView{bar: newSendBarTo(o.Err, ph)}
	case w.Progress == "auto":
		return &stepView{w: o.Err}
	}
	return nopView{}
}

type nopView struct{}

func (nopView) show(*v1alpha1.VolumeSync)         {}
func (nopView) finish(*v1alpha1.VolumeSync, bool) {}

// stepView writes a line whenever the Syncing condition says something
// new (not a terminal: no bar).
type stepView struct {
	w    io.Writer
	last string
}

func (v *stepView) show(vs *v1alpha1.VolumeSync) {
	c := meta.FindStatusCondition(vs.Status.Conditions, v1alpha1.ConditionSyncing)
	if c == nil || c.Status != metav1.ConditionTrue || c.Message == "" || c.Message == v.last {
		return
	}
	v.last = c.Message
	fmt.Fprintf(v.w, "volumesync.voldelta.io/%s: %s\n", vs.Name, c.Message)
}

func (v *stepView) finish(*v1alpha1.VolumeSync, bool) {}

// barRoundView is the bar of send, fed from status.progress.
type barRoundView struct{ bar *sendBar }

func (v *barRoundView) show(vs *v1alpha1.VolumeSync) {
	if p := vs.Status.Progress; p != nil {
		v.bar.update(agentProgress(p))
	}
}

func (v *barRoundView) finish(*v1alpha1.VolumeSync, bool) { v.bar.finish() }

// agentProgress is status.progress as the agent's own report.
func agentProgress(p *v1alpha1.RoundProgress) agent.Progress {
	return agent.Progress{SourceBytes: nonNeg(p.SourceBytes), ScannedBytes: nonNeg(p.ScannedBytes),
		NeedBytes: nonNeg(p.NeededBytes), SentBytes: nonNeg(p.SentBytes), ScanDone: p.ScanDone}
}

// newSendBarTo is newSendBar writing to w.
func newSendBarTo(w io.Writer, ph phases) *sendBar {
	return &sendBar{bar: newBarTo(w, -1, ph.starting), ph: ph}
}

// jsonRoundView writes a progressLine (send --progress json's format)
// for every new report of the agent, with the agent's rate and ETA, and
// a last one when the round committed.
type jsonRoundView struct {
	w    io.Writer
	ph   phases
	last metav1.Time
}

func (v *jsonRoundView) show(vs *v1alpha1.VolumeSync) {
	p := vs.Status.Progress
	if p == nil || p.UpdateTime.Equal(&v.last) {
		return
	}
	v.last = p.UpdateTime
	var start time.Time
	if vs.Status.LastSyncStartTime != nil {
		start = vs.Status.LastSyncStartTime.Time
	}
	v.write(roundLine(p, v.ph, start))
}

func (v *jsonRoundView) finish(vs *v1alpha1.VolumeSync, ok bool) {
	if ok && vs != nil {
		v.write(finalLine(&vs.Status, v.ph))
	}
}

func (v *jsonRoundView) write(l progressLine) {
	if b, err := json.Marshal(l); err == nil {
		_, _ = v.w.Write(append(b, '\n'))
	}
}

// roundLine is the progressLine of a report of the agent; start is the
// round's start (elapsed counts from it).
func roundLine(p *v1alpha1.RoundProgress, ph phases, start time.Time) progressLine {
	l := progressLine{Time: p.UpdateTime.UTC(), Phase: ph.first, SourceBytes: nonNeg(p.SourceBytes), ScannedBytes: nonNeg(p.ScannedBytes),
		TotalBytes: nonNeg(p.NeededBytes), DoneBytes: nonNeg(p.SentBytes), BytesPerSecond: float64(p.BytesPerSecond)}
	if !start.IsZero() {
		l.ElapsedSeconds = math.Max(0, p.UpdateTime.Sub(start).Seconds())
	}
	done, total := p.ScannedBytes, p.SourceBytes
	if p.ScanDone {
		l.Phase, done, total = ph.second, p.SentBytes, p.NeededBytes
	}
	if total > 0 {
		l.Percent = math.Round(1000*float64(done)/float64(total)) / 10
	} else if p.ScanDone {
		l.Percent = 100
	}
	switch {
	case p.ETA != nil:
		l.ETASeconds = ptr(math.Round(10*p.ETA.Seconds()) / 10)
	case p.ScanDone && done >= total:
		l.ETASeconds = ptr(0.0)
	}
	return l
}

// finalLine is the last line: the committed round's figures.
func finalLine(st *v1alpha1.VolumeSyncStatus, ph phases) progressLine {
	l := progressLine{Phase: ph.second, SourceBytes: nonNeg(st.LastSourceBytes), ScannedBytes: nonNeg(st.LastSourceBytes),
		TotalBytes: nonNeg(st.LastBytesSent), DoneBytes: nonNeg(st.LastBytesSent), Percent: 100, ETASeconds: ptr(0.0), Done: true}
	if st.LastSyncTime != nil {
		l.Time = st.LastSyncTime.UTC()
	}
	if d := st.LastSyncDuration; d != nil && d.Duration > 0 {
		l.ElapsedSeconds = d.Seconds()
		l.BytesPerSecond = math.Round(float64(l.DoneBytes) / d.Seconds())
	}
	return l
}
