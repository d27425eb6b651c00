package main

import (
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/internal/k8stest"
)

// syncRun is a `voldelta sync` running in the background.
type syncRun struct {
	errOut lockedBuffer
	done   chan cliResult
}

func (e *kubeEnv) backgroundSync(args ...string) *syncRun {
	r := &syncRun{done: make(chan cliResult, 1)}
	go func() {
		out, err := e.cli(&r.errOut, args...)
		r.done <- cliResult{out: out, err: err}
	}()
	return r
}

// waitFor waits until cond holds, failing if the command returned.
func (e *kubeEnv) waitFor(r *syncRun, what string, cond func() bool) {
	e.t.Helper()
	err := k8stest.Eventually(e.ctx, func() (bool, string, error) {
		select {
		case res := <-r.done:
			e.t.Fatalf("the command returned while waiting for %s: %v\n%s%s", what, res.err, res.out, r.errOut.String())
		default:
		}
		return cond(), what, nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
}

func (e *kubeEnv) volumeSync(name string) *v1alpha1.VolumeSync {
	e.t.Helper()
	vs := &v1alpha1.VolumeSync{}
	if err := e.src.Get(e.ctx, client.ObjectKey{Namespace: "shop", Name: name}, vs); err != nil {
		e.t.Fatal(err)
	}
	return vs
}

// requested waits until the command set a new spec.trigger.manual and
// returns it.
func (e *kubeEnv) requested(r *syncRun, name, before string) string {
	e.t.Helper()
	var trigger string
	e.waitFor(r, "spec.trigger.manual set", func() bool {
		trigger = e.volumeSync(name).Spec.Trigger.Manual
		return trigger != before
	})
	return trigger
}

func testKubeSync(t *testing.T, e *kubeEnv) {
	// --wait --progress json: the test is the agent; a line per report,
	// then the summary.
	r := e.backgroundSync("sync", "db", "--wait", "--progress", "json")
	trigger := e.requested(r, "db", "")
	if _, err := time.Parse(time.RFC3339Nano, trigger); err != nil {
		t.Errorf("trigger %q: %v", trigger, err)
	}
	start := time.Now().Truncate(time.Second)
	e.setSyncStatus("db", func(st *v1alpha1.VolumeSyncStatus) {
		st.Phase, st.PendingManualTrigger = v1alpha1.PhaseSyncing, trigger
		st.LastSyncStartTime = &metav1.MicroTime{Time: start}
		st.Progress = &v1alpha1.RoundProgress{SourceBytes: 10 * gib, ScannedBytes: 5 * gib, NeededBytes: 20 * mib, SentBytes: 0,
			UpdateTime: metav1.NewTime(start.Add(2 * time.Second))}
	})
	e.waitFor(r, "the scan line", func() bool { return strings.Contains(r.errOut.String(), `"phase":"scan"`) })
	e.setSyncStatus("db", func(st *v1alpha1.VolumeSyncStatus) {
		st.Progress = &v1alpha1.RoundProgress{SourceBytes: 10 * gib, ScannedBytes: 10 * gib, NeededBytes: 100 * mib, SentBytes: 40 * mib,
			ScanDone: true, BytesPerSecond: 8 * mib, ETA: &metav1.Duration{Duration: 7500 * time.Millisecond},
			UpdateTime: metav1.NewTime(start.Add(4 * time.Second))}
	})
	e.waitFor(r, "the send line", func() bool { return strings.Contains(r.errOut.String(), `"phase":"send"`) })
	commit := func(gen int64) func(st *v1alpha1.VolumeSyncStatus) {
		return func(st *v1alpha1.VolumeSyncStatus) {
			st.Phase, st.Progress, st.Rounds, st.ConsecutiveFailures = v1alpha1.PhaseIdle, nil, st.Rounds+1, 0
			st.LastManualTrigger, st.PendingManualTrigger = e.volumeSync("db").Spec.Trigger.Manual, ""
			st.LastSyncTime, st.LastSyncDuration = &metav1.MicroTime{Time: start.Add(10 * time.Second)}, dur(10*time.Second)
			st.LastGeneration, st.LastSourceBytes, st.LastBytesSent, st.LastWireBytes = gen, 10*gib, 100*mib, 60*mib
		}
	}
	e.setSyncStatus("db", commit(13))
	res := <-r.done
	if res.err != nil {
		t.Fatalf("sync --wait: %v\n%s", res.err, r.errOut.String())
	}
	wantContains(t, "sync --wait", res.out, "volumesync.voldelta.io/db: manual round requested (spec.trigger.manual "+trigger+")",
		"volumesync.voldelta.io/db: generation 13 committed: 100.0 MiB sent of 10.0 GiB (60.0 MiB on the wire) in 10s")
	var lines []progressLine
	for _, l := range strings.Split(strings.TrimSpace(r.errOut.String()), "\n") {
		var pl progressLine
		if err := json.Unmarshal([]byte(l), &pl); err != nil {
			t.Fatalf("progress line %q: %v", l, err)
		}
		lines = append(lines, pl)
	}
	if len(lines) != 3 || lines[0].Phase != "scan" || lines[0].Percent != 50 || lines[0].ElapsedSeconds != 2 ||
		lines[1].Phase != "send" || lines[1].Percent != 40 || lines[1].DoneBytes != uint64(40*mib) || lines[1].TotalBytes != uint64(100*mib) ||
		lines[1].BytesPerSecond != float64(8*mib) || lines[1].ETASeconds == nil || *lines[1].ETASeconds != 7.5 ||
		!lines[2].Done || lines[2].Percent != 100 || lines[2].DoneBytes != uint64(100*mib) || lines[2].BytesPerSecond != float64(10*mib) {
		t.Errorf("progress lines:\n%s", r.errOut.String())
	}

	// --progress always: the bar, from the same reports.
	r = e.backgroundSync("sync", "db", "--wait", "--progress", "always")
	trigger = e.requested(r, "db", trigger)
	// The bar redraws at most every 200ms: report until it shows.
	report := func(what string, re *regexp.Regexp, p func(n int64) *v1alpha1.RoundProgress) {
		n := int64(0)
		e.waitFor(r, what, func() bool {
			n++
			e.setSyncStatus("db", func(st *v1alpha1.VolumeSyncStatus) {
				st.Phase, st.PendingManualTrigger, st.Progress = v1alpha1.PhaseSyncing, trigger, p(n)
			})
			return re.MatchString(r.errOut.String())
		})
	}
	report("the scan bar", regexp.MustCompile(`scan \(send 0 B\)\s+50%`), func(n int64) *v1alpha1.RoundProgress {
		return &v1alpha1.RoundProgress{SourceBytes: 100 * mib, ScannedBytes: 50*mib + n, UpdateTime: metav1.Now()}
	})
	report("the send bar", regexp.MustCompile(`send\s+40%`), func(n int64) *v1alpha1.RoundProgress {
		return &v1alpha1.RoundProgress{SourceBytes: 100 * mib, ScannedBytes: 100 * mib, NeededBytes: 100 * mib, SentBytes: 40*mib + n,
			ScanDone: true, UpdateTime: metav1.Now()}
	})
	e.setSyncStatus("db", commit(14))
	if res := <-r.done; res.err != nil || !strings.Contains(res.out, "generation 14 committed") {
		t.Fatalf("sync --wait with a bar: %v\n%s", res.err, res.out)
	}

	// A failed attempt: exit 1 with the Degraded condition's reason and
	// message; the trigger stays set.
	r = e.backgroundSync("sync", "db", "--wait", "--progress", "never", "-o", "json")
	trigger = e.requested(r, "db", trigger)
	e.setSyncStatus("db", func(st *v1alpha1.VolumeSyncStatus) {
		st.Phase, st.PendingManualTrigger, st.ConsecutiveFailures = v1alpha1.PhaseDegraded, trigger, 1
		st.Conditions = []metav1.Condition{{Type: v1alpha1.ConditionDegraded, Status: metav1.ConditionTrue, Reason: v1alpha1.ReasonReceiverRefused,
			Message: "receiver refused: target full", LastTransitionTime: metav1.Now()}}
	})
	res = <-r.done
	if !errors.Is(res.err, errRoundFailed) || !strings.Contains(res.err.Error(), "attempt 1 failed (ReceiverRefused: receiver refused: target full)") {
		t.Errorf("sync --wait of a failing round: %v", res.err)
	}
	if res.out != "" || !strings.Contains(r.errOut.String(), "manual round requested") {
		t.Errorf("sync -o json of a failing round: stdout %q, stderr %q", res.out, r.errOut.String())
	}
	if vs := e.volumeSync("db"); vs.Spec.Trigger.Manual != trigger {
		t.Errorf("the trigger changed after the failure: %q", vs.Spec.Trigger.Manual)
	}
	// The same as an exit status.
	codes := make(chan int, 1)
	go func() {
		codes <- run(e.ctx, []string{"sync", "db", "--wait", "--progress", "never", "--kubeconfig", e.kubeconfig})
	}()
	var seen syncRun
	seen.done = make(chan cliResult)
	next := e.requested(&seen, "db", trigger)
	e.setSyncStatus("db", func(st *v1alpha1.VolumeSyncStatus) { st.PendingManualTrigger, st.ConsecutiveFailures = next, 2 })
	if code := <-codes; code != exitFailure {
		t.Errorf("sync --wait of a failing round: exit %d, want %d", code, exitFailure)
	}

	// Without --wait: set and return; -o yaml the patched object.
	out := e.mustCLI("sync", "db", "-o", "yaml")
	if !strings.Contains(out, "kind: VolumeSync") || strings.Contains(out, "managedFields") || !strings.Contains(out, "manual: ") {
		t.Errorf("sync -o yaml:\n%s", out)
	}
	if vs := e.volumeSync("db"); vs.Spec.Trigger.Manual == next || vs.Spec.Trigger.Interval == nil {
		t.Errorf("sync without --wait: spec.trigger %+v", vs.Spec.Trigger)
	}

	// Refusals: paused, driven by a Migration, missing.
	e.create(e.src, &v1alpha1.VolumeSync{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "held"}, Spec: v1alpha1.VolumeSyncSpec{
		SourcePVC: "held", Destination: receiverDest(""), Paused: true}})
	m := &v1alpha1.Migration{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "move"}, Spec: v1alpha1.MigrationSpec{
		Volumes: v1alpha1.MigrationVolumes{PVCs: []string{"m"}}, Destination: receiverDest("")}}
	e.create(e.src, m)
	yes := true
	e.create(e.src, &v1alpha1.VolumeSync{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "move-m",
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "voldelta.io/v1alpha1", Kind: "Migration", Name: "move", UID: m.UID, Controller: &yes}}},
		Spec: v1alpha1.VolumeSyncSpec{SourcePVC: "m", Destination: receiverDest("")}})
	var errOut lockedBuffer
	for name, want := range map[string]string{
		"held":   "volumesync shop/held is paused (spec.paused)",
		"move-m": "is driven by migration move",
		"gone":   `volumesync "gone" not found in namespace shop`,
	} {
		if _, err := e.cli(&errOut, "sync", name, "--wait"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("sync %s: %v, want %q", name, err, want)
		}
	}
	if vs := e.volumeSync("held"); vs.Spec.Trigger.Manual != "" {
		t.Errorf("a refused sync set the trigger: %q", vs.Spec.Trigger.Manual)
	}
	for _, args := range [][]string{{"sync"}, {"sync", "a", "b"}, {"sync", "db", "--progress", "bar"}, {"sync", "db", "-o", "wide"}} {
		if code := run(e.ctx, append(args, "--kubeconfig", e.kubeconfig)); code != exitUsage {
			t.Errorf("%v: exit %d, want %d", args, code, exitUsage)
		}
	}
}

// TestRoundTracker: what sync --wait makes of each state of a VolumeSync.
func TestRoundTracker(t *testing.T) {
	vs := func(manual, last string, failures int32, rounds int64) *v1alpha1.VolumeSync {
		v := &v1alpha1.VolumeSync{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "db", Generation: 4}}
		v.Spec.Trigger.Manual = manual
		v.Status = v1alpha1.VolumeSyncStatus{LastManualTrigger: last, ConsecutiveFailures: failures, Rounds: rounds, ObservedGeneration: 4}
		return v
	}
	var notes strings.Builder
	tr := &roundTracker{trigger: "T", generation: 4, failures: 2, rounds: 7, notes: &notes}
	if done, err := tr.observe(vs("T", "old", 2, 7)); done || err != nil {
		t.Errorf("a round still to run: %v %v", done, err)
	}
	// An earlier round committed, then the round of T failed once: a
	// failure although the count did not grow past the first baseline.
	if done, err := tr.observe(vs("T", "old", 1, 8)); done || !errors.Is(err, errRoundFailed) {
		t.Errorf("a failure after a commit: %v %v", done, err)
	}
	// Someone set another trigger: its round counts.
	tr = &roundTracker{trigger: "T", generation: 4, notes: &notes}
	if done, err := tr.observe(vs("U", "T0", 0, 1)); done || err != nil || tr.trigger != "U" || !strings.Contains(notes.String(), "set to U by someone else") {
		t.Errorf("a newer trigger: %v %v %q", done, err, notes.String())
	}
	if done, err := tr.observe(vs("U", "U", 0, 2)); !done || err != nil {
		t.Errorf("the newer trigger's round: %v %v", done, err)
	}
	// The round cannot start for this spec: exit 1; a stale condition of
	// an earlier spec does not count.
	stale := vs("T", "", 0, 0)
	stale.Status.Conditions = []metav1.Condition{{Type: v1alpha1.ConditionDegraded, Status: metav1.ConditionTrue, Reason: v1alpha1.ReasonSourceNotFound, ObservedGeneration: 3}}
	tr = &roundTracker{trigger: "T", generation: 4, notes: &notes}
	if done, err := tr.observe(stale); done || err != nil {
		t.Errorf("a stale SourceNotFound: %v %v", done, err)
	}
	stale.Status.Conditions[0].ObservedGeneration = 4
	if _, err := tr.observe(stale); err == nil || !strings.Contains(err.Error(), "cannot start (SourceNotFound") {
		t.Errorf("SourceNotFound for this spec: %v", err)
	}
	if _, err := tr.observe(vs("", "", 0, 0)); err == nil || !strings.Contains(err.Error(), "cleared") {
		t.Errorf("a cleared trigger: %v", err)
	}
}

func TestNewTrigger(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	vs := &v1alpha1.VolumeSync{}
	vs.Spec.Trigger.Manual = now.Format(time.RFC3339Nano)
	vs.Status.LastManualTrigger = now.Add(time.Nanosecond).Format(time.RFC3339Nano)
	if got, want := newTrigger(vs, now), "2026-12-01T10:00:00.000000002Z"; got != want {
		t.Errorf("newTrigger = %q, want %q", got, want)
	}
}

// TestKubeCommandsPluginName: as kubectl-voldelta, the help of status,
// sync and describe names them `kubectl voldelta`.
func TestKubeCommandsPluginName(t *testing.T) {
	for cmd, want := range map[string][]string{
		"status":   {"kubectl voldelta status [--state-dir DIR", "  kubectl voldelta status --context dc1 --context dc2 -n shop", "--context stringArray"},
		"sync":     {"kubectl voldelta sync NAME [flags]", "  kubectl voldelta sync mysql-data -n shop --wait", "--progress string"},
		"describe": {"kubectl voldelta describe [TYPE/]NAME [flags]", "  kubectl voldelta describe vt/mysql-data --context dc2"},
	} {
		root := newRootCmd()
		invokedAs(root, "/usr/local/bin/kubectl-voldelta")
		var out strings.Builder
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs([]string{cmd, "--help"})
		if err := root.Execute(); err != nil {
			t.Fatal(err)
		}
		wantContains(t, cmd+" --help", out.String(), want...)
	}
}
