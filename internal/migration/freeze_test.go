package migration_test

import (
	"strings"
	"testing"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/internal/k8stest"
	"github.com/voldelta/voldelta/internal/migration"
)

// TestMigrationFreeze: spec.quiesce.freeze against a real kube-apiserver;
// the test plays the agents (their status.freeze and the final rounds'
// VolumeSnapshots) and the workload controllers.
func TestMigrationFreeze(t *testing.T) {
	cp := k8stest.Start(t)
	s := runtime.NewScheme()
	if err := migration.Scheme(s); err != nil {
		t.Fatal(err)
	}
	if err := snapv1.AddToScheme(s); err != nil { // the test's own VolumeSnapshots
		t.Fatal(err)
	}
	cl, err := client.New(cp.Config, client.Options{Scheme: s})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		run  func(*env)
	}{
		{"freeze-happy-path", testFreezeHappyPath},
		{"freeze-timeout-before-cut", testFreezeTimeoutBeforeCut},
		{"freeze-failed", testFreezeFailed},
		{"freeze-invalid-pvc", testFreezeInvalidPVC},
		{"freeze-abort", testFreezeAbort},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(newEnv(t, cl, tc.name))
		})
	}
}

// reportFreeze plays the agent of VolumeSync name: status.freeze for its
// spec.freeze's token (or for token, if spec.freeze is gone).
func (e *env) reportFreeze(name string, phase v1alpha1.FreezePhase, reason string) {
	e.t.Helper()
	vs := e.volumeSync(name)
	token := ""
	if vs.Spec.Freeze != nil {
		token = vs.Spec.Freeze.Token
	} else if vs.Status.Freeze != nil {
		token = vs.Status.Freeze.Token
	}
	now := metav1.NewMicroTime(e.clock.Now())
	st := vs.Status.Freeze
	if st == nil || st.Token != token {
		st = &v1alpha1.VolumeFreezeStatus{Token: token, Node: "node-a"}
	}
	st.Phase, st.Reason, st.Message = phase, reason, "reported by the test"
	switch phase {
	case v1alpha1.FreezeFrozen:
		st.FrozenTime = &now
	case v1alpha1.FreezeThawed:
		st.ThawedTime = &now
	}
	vs.Status.Freeze = st
	e.must(e.cl.Status().Update(e.ctx, vs))
}

// takeSnapshot plays the agent starting the round of VolumeSync name's
// current trigger: it records the VolumeSnapshot and creates it, cut
// (status.creationTime) at cutAt if not zero.
func (e *env) takeSnapshot(name, snap string, cutAt time.Time) {
	e.t.Helper()
	vs := e.volumeSync(name)
	vs.Status.PendingSnapshot, vs.Status.PendingManualTrigger = snap, vs.Spec.Trigger.Manual
	e.must(e.cl.Status().Update(e.ctx, vs))
	pvc := vs.Spec.SourcePVC
	s := &snapv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Namespace: e.ns, Name: snap},
		Spec: snapv1.VolumeSnapshotSpec{Source: snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: &pvc}}}
	e.must(e.cl.Create(e.ctx, s))
	if !cutAt.IsZero() {
		e.cutSnapshot(snap, cutAt)
	}
}

// cutSnapshot plays the snapshot controller: the snapshot was cut at at.
func (e *env) cutSnapshot(snap string, at time.Time) {
	e.t.Helper()
	var s snapv1.VolumeSnapshot
	e.must(e.cl.Get(e.ctx, types.NamespacedName{Namespace: e.ns, Name: snap}, &s))
	ct := metav1.NewTime(at)
	s.Status = &snapv1.VolumeSnapshotStatus{CreationTime: &ct}
	e.must(e.cl.Status().Update(e.ctx, &s))
}

func (e *env) freezeOf(name string) *v1alpha1.VolumeFreeze {
	e.t.Helper()
	return e.volumeSync(name).Spec.Freeze
}

// testFreezeHappyPath: data-a is frozen, data-b's workload is scaled. The
// freeze is asked for only once the pods are gone and no round of data-a
// runs; the final round starts only once data-a is frozen; the freeze is
// released once its final snapshot is cut, before the round commits.
func testFreezeHappyPath(e *env) {
	t := e.t
	e.pvc("data-a", nil)
	e.pvc("data-b", nil)
	e.workload(v1alpha1.KindDeployment, "web", 2)
	s := spec("data-a", "data-b")
	s.Cutover.Mode = v1alpha1.CutoverAuto
	s.Quiesce.Workloads = []v1alpha1.WorkloadRef{{Kind: v1alpha1.KindDeployment, Name: "web"}}
	s.Quiesce.Freeze = []string{"data-a"}
	s.Quiesce.FreezeTimeout = &metav1.Duration{Duration: 45 * time.Second}
	e.create("fz", s)
	e.expectPhase("fz", v1alpha1.MigrationPrecopying)
	e.syncAll("fz", 1<<20, time.Second)
	m := e.expectPhase("fz", v1alpha1.MigrationQuiescing)
	if !strings.Contains(m.Status.Message, "web-") || m.Status.Freeze != nil || e.freezeOf("fz-data-a") != nil {
		t.Fatalf("freeze asked for while pods run: %+v, %+v", m.Status.Freeze, e.freezeOf("fz-data-a"))
	}
	// A round of data-a still runs (a later pre-copy round): waited for.
	vsa := e.volumeSync("fz-data-a")
	vsa.Status.PendingSnapshot, vsa.Status.PendingManualTrigger = "fz-data-a-precopy", "fz-precopy-1"
	e.must(e.cl.Status().Update(e.ctx, vsa))
	e.clock.Step(2 * time.Second)
	e.stop(v1alpha1.KindDeployment, "web")
	m = e.expectPhase("fz", v1alpha1.MigrationQuiescing)
	if m.Status.Freeze != nil || e.freezeOf("fz-data-a") != nil || !strings.Contains(m.Status.Message, "running round of data-a") {
		t.Fatalf("freeze asked for during a round: %+v, message %q", m.Status.Freeze, m.Status.Message)
	}
	vsa = e.volumeSync("fz-data-a")
	vsa.Status.PendingSnapshot, vsa.Status.PendingManualTrigger = "", ""
	e.must(e.cl.Status().Update(e.ctx, vsa))
	e.clock.Step(time.Second)
	m = e.expectPhase("fz", v1alpha1.MigrationQuiescing)
	f := m.Status.Freeze
	token := e.ns + "-fz-" + strings.ReplaceAll(string(m.UID), "-", "")[:8]
	if f == nil || f.Token != token || !f.RequestTime.Time.Equal(e.clock.Now()) || f.FrozenTime != nil {
		t.Fatalf("status.freeze %+v", f)
	}
	if got := e.freezeOf("fz-data-a"); got == nil || got.Token != token || got.Timeout == nil || got.Timeout.Duration != 45*time.Second {
		t.Fatalf("spec.freeze of data-a %+v", got)
	}
	if e.freezeOf("fz-data-b") != nil {
		t.Fatal("data-b, not listed, asked to freeze")
	}
	if !strings.Contains(m.Status.Message, "data-a to be frozen") {
		t.Errorf("message %q", m.Status.Message)
	}
	e.expectTriggers("fz", "fz-precopy-1") // no final round before the freeze
	e.clock.Step(time.Second)
	e.reportFreeze("fz-data-a", v1alpha1.FreezeFrozen, v1alpha1.FreezeReasonFrozen)
	m = e.expectPhase("fz", v1alpha1.MigrationFinalSync)
	e.expectTriggers("fz", "fz-final")
	if f := m.Status.Freeze; f.FrozenTime == nil || !f.FrozenTime.Time.Equal(e.clock.Now()) || f.ThawedTime != nil ||
		!m.Status.QuiescedTime.Time.Equal(e.clock.Now()) {
		t.Fatalf("status.freeze %+v, quiesced %v", f, m.Status.QuiescedTime)
	}

	// The final snapshot is taken, not cut yet: still frozen.
	e.clock.Step(time.Second)
	e.takeSnapshot("fz-data-a", "fz-data-a-final", time.Time{})
	m = e.expectPhase("fz", v1alpha1.MigrationFinalSync)
	if e.freezeOf("fz-data-a") == nil || m.Status.Freeze.ThawedTime != nil {
		t.Fatal("thawed before the final snapshot was cut")
	}
	// Cut: thawed at once, while the round still sends.
	e.clock.Step(time.Second)
	e.cutSnapshot("fz-data-a-final", e.clock.Now().Add(-2*time.Second))
	m = e.expectPhase("fz", v1alpha1.MigrationFinalSync)
	if e.freezeOf("fz-data-a") != nil {
		t.Fatal("spec.freeze still set after the final snapshot was cut")
	}
	if f := m.Status.Freeze; f.ThawedTime == nil || !f.ThawedTime.Time.Equal(e.clock.Now()) || f.Window == nil || f.Window.Duration != 3*time.Second {
		t.Fatalf("status.freeze %+v", f)
	}
	e.reportFreeze("fz-data-a", v1alpha1.FreezeThawed, v1alpha1.FreezeReasonReleased)
	e.syncAll("fz", 1<<10, time.Second)
	m = e.expectPhase("fz", v1alpha1.MigrationCompleted)
	if c := condition(m, v1alpha1.ConditionDestinationReady); c.Status != metav1.ConditionTrue {
		t.Errorf("DestinationReady %+v", c)
	}
}

// reachFrozen creates a converged Auto migration of data with
// spec.quiesce.freeze [data] and no workloads, up to FinalSync with data
// frozen.
func reachFrozen(e *env, name string) {
	e.t.Helper()
	e.pvc("data", nil)
	s := spec("data")
	s.Cutover.Mode = v1alpha1.CutoverAuto
	s.Quiesce.Freeze = []string{"data"}
	e.create(name, s)
	e.expectPhase(name, v1alpha1.MigrationPrecopying)
	e.syncAll(name, 1<<20, time.Second)
	e.expectPhase(name, v1alpha1.MigrationQuiescing)
	if f := e.freezeOf(name + "-data"); f == nil || f.Timeout == nil || f.Timeout.Duration != migration.DefaultFreezeTimeout {
		e.t.Fatalf("spec.freeze %+v", f)
	}
	e.reportFreeze(name+"-data", v1alpha1.FreezeFrozen, v1alpha1.FreezeReasonFrozen)
	e.expectPhase(name, v1alpha1.MigrationFinalSync)
	e.expectTriggers(name, name+"-final")
}

// testFreezeTimeoutBeforeCut: an agent that thawed by its timeout before
// the final snapshot was cut fails the migration, which clears the
// freeze.
func testFreezeTimeoutBeforeCut(e *env) {
	reachFrozen(e, "late")
	e.takeSnapshot("late-data", "late-data-final", time.Time{})
	e.clock.Step(migration.DefaultFreezeTimeout)
	e.reportFreeze("late-data", v1alpha1.FreezeThawed, v1alpha1.FreezeReasonTimeout)
	e.cutSnapshot("late-data-final", e.clock.Now().Add(time.Second)) // cut after the thaw
	m := e.expectPhase("late", v1alpha1.MigrationFailed)
	if c := condition(m, v1alpha1.ConditionDestinationReady); c.Reason != migration.ReasonFreezeFailed || !strings.Contains(c.Message, "thawed by its agent (Timeout") {
		e.t.Errorf("DestinationReady %+v", c)
	}
	vs := e.volumeSync("late-data")
	if vs.Spec.Freeze != nil || !vs.Spec.Paused {
		e.t.Errorf("VolumeSync freeze %+v, paused %v", vs.Spec.Freeze, vs.Spec.Paused)
	}
	if f := m.Status.Freeze; f == nil || f.ThawedTime == nil || len(m.Finalizers) != 0 {
		e.t.Errorf("status.freeze %+v, finalizers %v", f, m.Finalizers)
	}
}

// testFreezeFailed: an agent that cannot freeze fails the migration in
// Quiescing, before any final round.
func testFreezeFailed(e *env) {
	e.pvc("data", nil)
	s := spec("data")
	s.Cutover.Mode = v1alpha1.CutoverAuto
	s.Quiesce.Freeze = []string{"data"}
	e.create("nofz", s)
	e.expectPhase("nofz", v1alpha1.MigrationPrecopying)
	e.syncAll("nofz", 1<<20, time.Second)
	e.expectPhase("nofz", v1alpha1.MigrationQuiescing)
	e.reportFreeze("nofz-data", v1alpha1.FreezeFailed, v1alpha1.FreezeReasonCannotFreeze)
	m := e.expectPhase("nofz", v1alpha1.MigrationFailed)
	if c := condition(m, v1alpha1.ConditionDestinationReady); c.Reason != migration.ReasonFreezeFailed || !strings.Contains(c.Message, "CannotFreeze") {
		e.t.Errorf("DestinationReady %+v", c)
	}
	if m.Status.FinalTrigger != "" || e.freezeOf("nofz-data") != nil {
		e.t.Errorf("final trigger %q, spec.freeze %+v", m.Status.FinalTrigger, e.freezeOf("nofz-data"))
	}
}

// testFreezeInvalidPVC: a PVC in spec.quiesce.freeze that is not one of
// the volumes fails the migration in Pending.
func testFreezeInvalidPVC(e *env) {
	e.pvc("data", nil)
	e.pvc("other", nil)
	s := spec("data")
	s.Quiesce.Freeze = []string{"data", "other"}
	e.create("inv", s)
	m := e.expectPhase("inv", v1alpha1.MigrationFailed)
	if c := condition(m, v1alpha1.ConditionDestinationReady); c.Reason != migration.ReasonInvalidSpec || !strings.Contains(c.Message, "spec.quiesce.freeze: other not among") {
		e.t.Errorf("DestinationReady %+v", c)
	}
	if n := len(e.volumeSyncs("inv")); n != 0 {
		e.t.Errorf("%d VolumeSyncs", n)
	}
	// The CRD bounds the freeze timeout (and the API server says so).
	for _, d := range []time.Duration{0, time.Hour} {
		s := spec("data")
		s.Quiesce.Freeze = []string{"data"}
		s.Quiesce.FreezeTimeout = &metav1.Duration{Duration: d}
		err := e.cl.Create(e.ctx, &v1alpha1.Migration{ObjectMeta: metav1.ObjectMeta{Namespace: e.ns, Name: "bad"}, Spec: s})
		if err == nil || !strings.Contains(err.Error(), "freezeTimeout: more than 0s, at most 30m") {
			e.t.Errorf("freezeTimeout %s: %v", d, err)
		}
	}
}

// testFreezeAbort: an abort while frozen clears the freeze; so does
// deleting a frozen Migration (its finalizer waits for it).
func testFreezeAbort(e *env) {
	reachFrozen(e, "ab")
	e.update("ab", func(s *v1alpha1.MigrationSpec) { s.Abort = true })
	m := e.expectPhase("ab", v1alpha1.MigrationAborted)
	if e.freezeOf("ab-data") != nil || m.Status.Freeze.ThawedTime == nil {
		e.t.Fatalf("aborted with spec.freeze %+v, status %+v", e.freezeOf("ab-data"), m.Status.Freeze)
	}

	e.pvc("more", nil)
	s := spec("more")
	s.Cutover.Mode = v1alpha1.CutoverAuto
	s.Quiesce.Freeze = []string{"more"}
	e.create("del", s)
	e.expectPhase("del", v1alpha1.MigrationPrecopying)
	e.syncAll("del", 1<<20, time.Second)
	m = e.expectPhase("del", v1alpha1.MigrationQuiescing)
	if e.freezeOf("del-more") == nil || len(m.Finalizers) == 0 {
		e.t.Fatalf("spec.freeze %+v, finalizers %v", e.freezeOf("del-more"), m.Finalizers)
	}
	e.must(e.cl.Delete(e.ctx, m))
	e.reconcileGone("del")
	var vs v1alpha1.VolumeSync
	if err := e.cl.Get(e.ctx, types.NamespacedName{Namespace: e.ns, Name: "del-more"}, &vs); err == nil && vs.Spec.Freeze != nil {
		e.t.Fatalf("deleted Migration left spec.freeze %+v", vs.Spec.Freeze)
	}
}

// reconcileGone reconciles a deleted Migration until it is gone.
func (e *env) reconcileGone(name string) {
	e.t.Helper()
	if _, err := e.rec.Reconcile(e.ctx, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: e.ns, Name: name}}); err != nil {
		e.t.Fatal(err)
	}
	var m v1alpha1.Migration
	if err := e.cl.Get(e.ctx, types.NamespacedName{Namespace: e.ns, Name: name}, &m); err == nil {
		e.t.Fatalf("migration %s still there, finalizers %v", name, m.Finalizers)
	}
}
