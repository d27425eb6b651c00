package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/internal/k8stest"
)

const (
	mib = int64(1) << 20
	gib = int64(1) << 30
)

// migrateEnv is a real kube-apiserver with the CRDs, a kubeconfig for the
// CLI and a client standing in for the Migration controller.
type migrateEnv struct {
	t          *testing.T
	ctx        context.Context
	cl         client.Client
	kubeconfig string
}

func newMigrateEnv(t *testing.T) *migrateEnv {
	cp := k8stest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: cp.Config.Host, CertificateAuthorityData: cp.Config.CAData}
	kc.AuthInfos["test"] = &clientcmdapi.AuthInfo{Token: cp.Config.BearerToken}
	kc.Contexts["app"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test", Namespace: "app"}
	kc.Contexts["other"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test", Namespace: "other"}
	kc.CurrentContext = "app"
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		t.Fatal(err)
	}
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{v1alpha1.AddToScheme, corev1.AddToScheme} {
		if err := add(s); err != nil {
			t.Fatal(err)
		}
	}
	cl, err := client.New(cp.Config, client.Options{Scheme: s})
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{"app", "other"} {
		if err := cl.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatal(err)
		}
	}
	return &migrateEnv{t: t, ctx: ctx, cl: cl, kubeconfig: kubeconfig}
}

// cli runs the command line with the test's kubeconfig and returns its
// stdout and stderr.
func (e *migrateEnv) cli(args ...string) (string, string, error) {
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(append(args, "--kubeconfig", e.kubeconfig))
	err := root.ExecuteContext(e.ctx)
	return out.String(), errOut.String(), err
}

// mustCLI is cli that fails the test on an error.
func (e *migrateEnv) mustCLI(args ...string) string {
	e.t.Helper()
	out, errOut, err := e.cli(args...)
	if err != nil {
		e.t.Fatalf("%v: %v (stderr %q)", args, err, errOut)
	}
	return out
}

// background runs the command line in a goroutine; the channel gets its
// result.
func (e *migrateEnv) background(args ...string) <-chan cliResult {
	done := make(chan cliResult, 1)
	go func() {
		out, errOut, err := e.cli(args...)
		done <- cliResult{out, errOut, err}
	}()
	return done
}

type cliResult struct {
	out, errOut string
	err         error
}

func (e *migrateEnv) create(ns, name string) {
	e.t.Helper()
	m := &v1alpha1.Migration{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1alpha1.MigrationSpec{
			Volumes:     v1alpha1.MigrationVolumes{PVCs: []string{"data-0", "data-1"}},
			Destination: v1alpha1.Destination{Address: "replica.example:7300", TLSSecretName: "tls"},
			Quiesce:     v1alpha1.Quiesce{Workloads: []v1alpha1.WorkloadRef{{Kind: v1alpha1.KindDeployment, Name: "db"}}},
		},
	}
	if err := e.cl.Create(e.ctx, m); err != nil {
		e.t.Fatal(err)
	}
}

// setStatus writes a Migration's status through the status subresource,
// as the controller does.
func (e *migrateEnv) setStatus(ns, name string, set func(*v1alpha1.MigrationStatus)) {
	e.t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		m := &v1alpha1.Migration{}
		if err := e.cl.Get(e.ctx, client.ObjectKey{Namespace: ns, Name: name}, m); err != nil {
			return err
		}
		set(&m.Status)
		return e.cl.Status().Update(e.ctx, m)
	})
	if err != nil {
		e.t.Fatal(err)
	}
}

func (e *migrateEnv) get(ns, name string) *v1alpha1.Migration {
	e.t.Helper()
	m := &v1alpha1.Migration{}
	if err := e.cl.Get(e.ctx, client.ObjectKey{Namespace: ns, Name: name}, m); err != nil {
		e.t.Fatal(err)
	}
	return m
}

// waitSpec waits until the CLI set a spec field of the Migration.
func (e *migrateEnv) waitSpec(ns, name string, set func(*v1alpha1.MigrationSpec) bool, done <-chan cliResult) {
	e.t.Helper()
	err := k8stest.Eventually(e.ctx, func() (bool, string, error) {
		select {
		case r := <-done:
			e.t.Fatalf("the command returned early: %v\n%s%s", r.err, r.out, r.errOut)
		default:
		}
		return set(&e.get(ns, name).Spec), "spec not set yet", nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
}

var roundStart = time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)

// precopying is the status of a migration after three pre-copy rounds.
func precopying(st *v1alpha1.MigrationStatus) {
	at := func(d time.Duration) metav1.Time { return metav1.NewTime(roundStart.Add(d)) }
	dur := func(d time.Duration) metav1.Duration { return metav1.Duration{Duration: d} }
	round := func(n int32, start, end time.Duration, sent0, sent1 int64) v1alpha1.PrecopyRound {
		return v1alpha1.PrecopyRound{Round: n, Trigger: "precopy-" + string(rune('0'+n)), StartTime: at(start), EndTime: at(end), SentBytes: sent0 + sent1,
			Volumes: []v1alpha1.RoundVolume{
				{PVC: "data-0", SentBytes: sent0, WireBytes: sent0 / 2, Generation: int64(n), Duration: dur(end - start)},
				{PVC: "data-1", SentBytes: sent1, WireBytes: sent1 / 2, Generation: int64(n), Duration: dur(end - start - time.Second)},
			}}
	}
	st.Phase = v1alpha1.MigrationPrecopying
	st.Message = "round 4 running"
	st.Conditions = []metav1.Condition{{Type: v1alpha1.ConditionReadyForCutover, Status: metav1.ConditionFalse,
		Reason: "NotConverged", Message: "last round sent 12 MiB, threshold 8 MiB", LastTransitionTime: at(0)}}
	st.Volumes = []v1alpha1.MigrationVolumeStatus{
		{PVC: "data-0", VolumeSync: "db-move-data-0", RemoteVolume: "app-data-0"},
		{PVC: "data-1", VolumeSync: "db-move-data-1", RemoteVolume: "app-data-1"},
	}
	st.Rounds = 3
	st.History = []v1alpha1.PrecopyRound{
		round(1, 0, 10*time.Minute, 6*gib, 4*gib),
		round(2, 11*time.Minute, 11*time.Minute+40*time.Second, 200*mib, 100*mib),
		round(3, 12*time.Minute, 12*time.Minute+4*time.Second, 8*mib, 4*mib),
	}
	st.LastDeltaBytes = 12 * mib
	st.PredictedDowntime = &metav1.Duration{Duration: 4200 * time.Millisecond}
}

// completed is the status after the cutover committed.
func completed(st *v1alpha1.MigrationStatus) {
	precopying(st)
	st.Phase = v1alpha1.MigrationCompleted
	st.Message = ""
	st.Workloads = []v1alpha1.WorkloadStatus{{Kind: v1alpha1.KindDeployment, Name: "db", Replicas: 2}}
	cut := metav1.NewMicroTime(roundStart.Add(20 * time.Minute))
	commit := metav1.NewMicroTime(cut.Add(6 * time.Second))
	st.CutoverStartTime, st.CommitTime = &cut, &commit
	snap := metav1.Duration{Duration: time.Second}
	st.Downtime = &v1alpha1.Downtime{Total: metav1.Duration{Duration: 6100 * time.Millisecond},
		Quiesce: metav1.Duration{Duration: 2 * time.Second}, FinalSync: metav1.Duration{Duration: 3900 * time.Millisecond},
		Snapshot: &snap, Commit: metav1.Duration{Duration: 200 * time.Millisecond}}
	for i := range st.Volumes {
		st.Volumes[i].Generation, st.Volumes[i].RootHash = 4, "4f2a9c0e11d3b7a85e6f"
	}
}

func wantContains(t *testing.T, what, out string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("%s lacks %q:\n%s", what, w, out)
		}
	}
}

// TestMigrateAgainstAPIServer drives `voldelta migrate` against a real
// kube-apiserver, this test writing the Migrations' status as the
// controller would.
func TestMigrateAgainstAPIServer(t *testing.T) {
	e := newMigrateEnv(t)
	e.create("app", "db-move")
	e.create("other", "other-move")

	// list: the kubeconfig context's namespace, another one, all.
	out := e.mustCLI("migrate", "list")
	wantContains(t, "list", out, "NAME", "PHASE", "LAST DELTA", "PREDICTED DOWNTIME", "db-move", "Pending")
	if strings.Contains(out, "other-move") || strings.Contains(out, "NAMESPACE") {
		t.Errorf("list of namespace app:\n%s", out)
	}
	if out := e.mustCLI("migrate", "list", "--context", "other"); !strings.Contains(out, "other-move") || strings.Contains(out, "db-move") {
		t.Errorf("list --context other:\n%s", out)
	}
	if out := e.mustCLI("migrate", "list", "-n", "other"); !strings.Contains(out, "other-move") {
		t.Errorf("list -n other:\n%s", out)
	}
	wantContains(t, "list -A", e.mustCLI("migrate", "list", "-A"), "NAMESPACE", "app", "db-move", "other", "other-move")
	if out, errOut, err := e.cli("migrate", "list", "-n", "nothing-here"); err != nil || out != "" || !strings.Contains(errOut, "No migrations found in namespace nothing-here") {
		t.Errorf("empty list: %v, stdout %q, stderr %q", err, out, errOut)
	}
	var list v1alpha1.MigrationList
	if err := json.Unmarshal([]byte(e.mustCLI("migrate", "list", "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	if list.Kind != "MigrationList" || list.APIVersion != "voldelta.io/v1alpha1" || len(list.Items) != 1 || list.Items[0].Name != "db-move" || list.Items[0].Kind != "Migration" {
		t.Errorf("list -o json: %+v", list)
	}

	// status, table and JSON, during the pre-copy.
	e.setStatus("app", "db-move", precopying)
	out = e.mustCLI("migrate", "status", "db-move")
	local := func(d time.Duration) string { return roundStart.Add(d).Local().Format(time.DateTime) }
	wantContains(t, "status", out,
		"Migration:", "app/db-move", "Precopying", "round 4 running", "Manual, not requested (voldelta migrate cutover db-move)",
		"Last delta:", "12.0 MiB", "Predicted downtime:", "4.2s",
		"ReadyForCutover", "NotConverged", "last round sent 12 MiB, threshold 8 MiB",
		"db-move-data-0", "app-data-1",
		"Pre-copy rounds:", "ROUND", "START", "END", "VOLUME SENT",
		local(0), local(10*time.Minute), "10m0s", "10.0 GiB", "6.0 GiB", "4.0 GiB", "3.0 GiB",
		local(11*time.Minute), "40s", "300.0 MiB", "200.0 MiB",
		local(12*time.Minute), local(12*time.Minute+4*time.Second), "8.0 MiB", "4.0 MiB", "3s")
	if strings.Contains(out, "Downtime:") {
		t.Errorf("status before the cutover shows a downtime:\n%s", out)
	}
	var m v1alpha1.Migration
	if err := json.Unmarshal([]byte(e.mustCLI("migrate", "status", "db-move", "-o", "json")), &m); err != nil {
		t.Fatal(err)
	}
	if m.Kind != "Migration" || m.APIVersion != "voldelta.io/v1alpha1" || m.ManagedFields != nil || len(m.Status.History) != 3 ||
		m.Status.History[2].Volumes[1].SentBytes != 4*mib || !m.Status.History[0].StartTime.Equal(&metav1.Time{Time: roundStart}) ||
		m.Status.PredictedDowntime.Duration != 4200*time.Millisecond || m.Spec.Volumes.PVCs[1] != "data-1" {
		t.Errorf("status -o json: %+v", m)
	}
	if _, _, err := e.cli("migrate", "status", "nope"); err == nil || !strings.Contains(err.Error(), `migration "nope" not found in namespace app`) {
		t.Errorf("status of a missing migration: %v", err)
	}

	// cutover during the pre-copy: requested, and again: already.
	out = e.mustCLI("migrate", "cutover", "db-move")
	wantContains(t, "cutover", out, "cutover requested", "pre-copying, 3 rounds done, last delta 12.0 MiB")
	if !e.get("app", "db-move").Spec.CutoverRequested {
		t.Fatal("cutover did not set spec.cutoverRequested")
	}
	wantContains(t, "second cutover", e.mustCLI("migrate", "cutover", "db-move"), "already requested")

	// abort: requested; a cutover is then refused.
	wantContains(t, "abort", e.mustCLI("migrate", "abort", "db-move"), "abort requested (was Precopying)")
	if !e.get("app", "db-move").Spec.Abort {
		t.Fatal("abort did not set spec.abort")
	}
	if _, _, err := e.cli("migrate", "cutover", "db-move"); err == nil || !strings.Contains(err.Error(), "being aborted") {
		t.Errorf("cutover of an aborting migration: %v", err)
	}
	// abort --wait -o json returns the final object once it is Aborted.
	done := e.background("migrate", "abort", "db-move", "--wait", "-o", "json")
	e.setStatus("app", "db-move", func(st *v1alpha1.MigrationStatus) {
		st.Phase, st.Message = v1alpha1.MigrationAborted, "aborted: workloads scaled back"
	})
	r := <-done
	if r.err != nil {
		t.Fatalf("abort --wait: %v\n%s", r.err, r.errOut)
	}
	m = v1alpha1.Migration{}
	if err := json.Unmarshal([]byte(r.out), &m); err != nil || m.Status.Phase != v1alpha1.MigrationAborted || !m.Spec.Abort {
		t.Errorf("abort --wait -o json: %v, %q", err, r.out)
	}
	// "abort already requested", or "already aborted" if the command read it after the update
	wantContains(t, "abort --wait stderr", r.errOut, "migration.voldelta.io/db-move: ", "already")

	// cutover --wait: requested, then followed until Completed.
	e.create("app", "web-move")
	e.setStatus("app", "web-move", func(st *v1alpha1.MigrationStatus) {
		precopying(st)
		st.Phase = v1alpha1.MigrationReadyForCutover
	})
	done = e.background("migrate", "cutover", "web-move", "--wait")
	e.waitSpec("app", "web-move", func(s *v1alpha1.MigrationSpec) bool { return s.CutoverRequested }, done)
	for _, p := range []v1alpha1.MigrationPhase{v1alpha1.MigrationQuiescing, v1alpha1.MigrationFinalSync, v1alpha1.MigrationCommitting} {
		e.setStatus("app", "web-move", func(st *v1alpha1.MigrationStatus) { st.Phase = p })
	}
	e.setStatus("app", "web-move", completed)
	r = <-done
	if r.err != nil {
		t.Fatalf("cutover --wait: %v\n%s%s", r.err, r.out, r.errOut)
	}
	wantContains(t, "cutover --wait", r.out, "cutover requested; ready, it starts now (predicted downtime 4.2s)",
		"web-move Completed, downtime 6.1s", // the plain line of the change
		"Phase:", "Completed", "Cutover:", "Manual, requested", "Group committed:",
		"Downtime: 6.1s", "quiesce", "2s", "final sync", "3.9s", "snapshot", "1s", "commit", "200ms",
		"Deployment", "db", "4f2a9c0e11d3b7a8")
	out = e.mustCLI("migrate", "status", "web-move")
	wantContains(t, "status after the cutover", out, "Completed", "Downtime: 6.1s", "final sync")
	wantContains(t, "list after the cutover", e.mustCLI("migrate", "list"), "web-move", "Completed", "6.1s")

	// A completed migration refuses a cutover and an abort, exit 1.
	if code := run(e.ctx, []string{"migrate", "cutover", "web-move", "--kubeconfig", e.kubeconfig}); code != exitFailure {
		t.Errorf("cutover of a Completed migration: exit %d, want %d", code, exitFailure)
	}
	if _, _, err := e.cli("migrate", "cutover", "web-move"); err == nil || !strings.Contains(err.Error(), "is Completed: its cutover already happened (downtime 6.1s)") {
		t.Errorf("cutover of a Completed migration: %v", err)
	}
	if _, _, err := e.cli("migrate", "abort", "web-move"); err == nil || !strings.Contains(err.Error(), "is Completed") {
		t.Errorf("abort of a Completed migration: %v", err)
	}
	if after := e.get("app", "web-move"); after.Spec.Abort {
		t.Error("a refused abort set spec.abort")
	}

	// cutover --wait of a migration that fails: exit 1 with its message.
	e.create("app", "fail-move")
	codes := make(chan int, 1)
	go func() {
		codes <- run(e.ctx, []string{"migrate", "cutover", "fail-move", "--wait", "--kubeconfig", e.kubeconfig})
	}()
	err := k8stest.Eventually(e.ctx, func() (bool, string, error) {
		return e.get("app", "fail-move").Spec.CutoverRequested, "cutover not requested yet", nil
	})
	if err != nil {
		t.Fatal(err)
	}
	e.setStatus("app", "fail-move", func(st *v1alpha1.MigrationStatus) {
		st.Phase, st.Message = v1alpha1.MigrationFailed, "final round of data-1: receiver unreachable"
	})
	if code := <-codes; code != exitFailure {
		t.Errorf("cutover --wait of a migration that failed: exit %d, want %d", code, exitFailure)
	}
	_, _, err = e.cli("migrate", "cutover", "fail-move", "--wait")
	if err == nil || !strings.Contains(err.Error(), "is Failed") || !strings.Contains(err.Error(), "receiver unreachable") {
		t.Errorf("cutover of a Failed migration: %v", err)
	}

	// status --watch -o json: every change as an object, until it ends.
	done = e.background("migrate", "status", "other-move", "-n", "other", "--watch", "-o", "json")
	e.setStatus("other", "other-move", precopying)
	e.setStatus("other", "other-move", completed)
	r = <-done
	if r.err != nil {
		t.Fatalf("status --watch: %v\n%s", r.err, r.errOut)
	}
	var last v1alpha1.Migration
	n := 0
	for dec := json.NewDecoder(strings.NewReader(r.out)); ; n++ {
		var m v1alpha1.Migration
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("status --watch -o json: %v\n%s", err, r.out)
		}
		last = m
	}
	if n == 0 || last.Status.Phase != v1alpha1.MigrationCompleted || last.Status.Downtime == nil || last.Status.Downtime.Total.Duration != 6100*time.Millisecond {
		t.Errorf("status --watch -o json: %d objects, the last %+v", n, last.Status)
	}
	// On a migration that already ended, --watch shows it and returns.
	wantContains(t, "status --watch of an ended migration", e.mustCLI("migrate", "status", "web-move", "--watch"), "web-move Completed, downtime 6.1s", "Downtime: 6.1s")
}

func TestMigrateUsage(t *testing.T) {
	for _, args := range [][]string{
		{"migrate", "status"},
		{"migrate", "status", "a", "b"},
		{"migrate", "cutover"},
		{"migrate", "abort", "--wait"},
		{"migrate", "list", "extra"},
		{"migrate", "list", "-o", "yaml"},
		{"migrate", "status", "x", "--bogus"},
	} {
		if code := run(context.Background(), args); code != exitUsage {
			t.Errorf("%v: exit %d, want %d", args, code, exitUsage)
		}
	}
}

// TestMigrateKubectlPluginName: installed as kubectl-voldelta, help,
// examples and errors name the command `kubectl voldelta`.
func TestMigrateKubectlPluginName(t *testing.T) {
	plain := newRootCmd()
	invokedAs(plain, "/usr/local/bin/voldelta")
	if got := plain.CommandPath(); got != "voldelta" {
		t.Errorf("as voldelta: %q", got)
	}

	exec := func(args ...string) (string, error) {
		root := newRootCmd()
		invokedAs(root, "/usr/local/bin/kubectl-voldelta")
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs(args)
		err := root.ExecuteContext(context.Background())
		return out.String(), err
	}
	out, err := exec("migrate", "cutover", "--help")
	if err != nil {
		t.Fatal(err)
	}
	wantContains(t, "kubectl voldelta migrate cutover --help", out,
		"kubectl voldelta migrate cutover NAME [flags]", "  kubectl voldelta migrate cutover db-move --wait")
	if strings.Contains(out, "\n  voldelta ") {
		t.Errorf("help names the command voldelta:\n%s", out)
	}
	out, err = exec("migrate", "--help")
	if err != nil {
		t.Fatal(err)
	}
	wantContains(t, "kubectl voldelta migrate --help", out, "kubectl voldelta migrate [command]",
		"kubectl voldelta migrate status db-move --watch", "ln -s \"$(command -v voldelta)\" /usr/local/bin/kubectl-voldelta")

	_, err = exec("migrate", "status")
	var ue *usageError
	if !errors.As(err, &ue) || ue.cmd != "kubectl voldelta migrate status" {
		t.Errorf("usage error of a plugin subcommand: %#v", err)
	}
	if _, err := exec("migrat"); err == nil || !strings.Contains(err.Error(), `"kubectl voldelta"`) {
		t.Errorf("unknown command: %v", err)
	}
}

// TestMigrateView: on a terminal each change redraws the whole view in
// place; otherwise one line per change (none for a repeat) and the whole
// view at the end.
func TestMigrateView(t *testing.T) {
	m := &v1alpha1.Migration{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "db-move", ResourceVersion: "1"}}
	precopying(&m.Status)
	next := m.DeepCopy()
	next.ResourceVersion = "2"
	next.Status.Rounds, next.Status.LastDeltaBytes = 4, 3*mib
	same := next.DeepCopy()
	same.ResourceVersion = "3"
	now := func() time.Time { return roundStart.Add(time.Hour) }

	var live bytes.Buffer
	v := newMigrationView(migrateOptions{Out: &live, Live: true, Now: now, Program: "voldelta"}, false)
	for _, o := range []*v1alpha1.Migration{m, m, next} {
		if err := v.show(o); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.finish(); err != nil {
		t.Fatal(err)
	}
	if frames := strings.Count(live.String(), clearScreen); frames != 2 || !strings.HasPrefix(live.String(), clearScreen) {
		t.Errorf("live view: %d frames, want 2:\n%q", frames, live.String())
	}
	wantContains(t, "live view", live.String(), "Rounds:", "4", "3.0 MiB")

	var plain bytes.Buffer
	v = newMigrationView(migrateOptions{Out: &plain, Now: now, Program: "voldelta"}, false)
	for _, o := range []*v1alpha1.Migration{m, next, same} {
		if err := v.show(o); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.finish(); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(plain.String(), "\n")
	if len(lines) < 3 || !strings.HasSuffix(lines[0], "db-move Precopying, 3 rounds, last delta 12.0 MiB, predicted downtime 4.2s: round 4 running") ||
		!strings.HasSuffix(lines[1], "db-move Precopying, 4 rounds, last delta 3.0 MiB, predicted downtime 4.2s: round 4 running") || lines[2] != "" {
		t.Errorf("plain view:\n%s", plain.String())
	}
	if strings.Contains(plain.String(), clearScreen) {
		t.Error("plain view has terminal escapes")
	}
	wantContains(t, "plain view's end", plain.String(), "Migration:", "Pre-copy rounds (the last 3 of 4):")

	// cutover/abort --wait -o json: the final object only.
	var js bytes.Buffer
	v = newMigrationView(migrateOptions{Out: &js, JSON: true, Now: now}, true)
	for _, o := range []*v1alpha1.Migration{m, next} {
		if err := v.show(o); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.finish(); err != nil {
		t.Fatal(err)
	}
	var got v1alpha1.Migration
	if err := json.Unmarshal(js.Bytes(), &got); err != nil || got.ResourceVersion != "2" || got.Kind != "Migration" {
		t.Errorf("json view: %v\n%s", err, js.String())
	}
}

func TestShortDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0s", 4213 * time.Millisecond: "4.2s", 200 * time.Millisecond: "200ms", 40 * time.Second: "40s",
		90*time.Second + 400*time.Millisecond: "1m30s", 2*time.Hour + 89*time.Second: "2h1m0s",
	} {
		if got := shortDuration(d); got != want {
			t.Errorf("shortDuration(%v) = %q, want %q", d, got, want)
		}
	}
}
