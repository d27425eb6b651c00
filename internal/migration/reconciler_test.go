package migration_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/internal/k8stest"
	"github.com/voldelta/voldelta/internal/migration"
)

// TestMigration runs the controller against a real kube-apiserver and
// etcd (no controllers): the test plays the node agents (it reports each
// VolumeSync's round for its current trigger) and the workload controllers
// (it deletes pods and sets the workloads' status). Every subtest has its
// own namespace, reconciler and fake clock.
func TestMigration(t *testing.T) {
	cp := k8stest.Start(t)
	s := runtime.NewScheme()
	if err := migration.Scheme(s); err != nil {
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
		{"happy-path", testHappyPath},
		{"max-rounds", testMaxRounds},
		{"manual", testManual},
		{"abort", testAbort},
		{"delete-during-cutover", testDeleteDuringCutover},
		{"quiesce-timeout", testQuiesceTimeout},
		{"missing-pvc", testMissingPVC},
		{"missing-workload", testMissingWorkload},
		{"degraded-member", testDegradedMember},
		{"workload-back", testWorkloadBack},
		{"workload-deleted", testWorkloadDeleted},
		{"invalid-name", testInvalidName},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(newEnv(t, cl, tc.name))
		})
	}
}

type env struct {
	t      *testing.T
	ctx    context.Context
	cl     client.Client
	ns     string
	clock  *clocktesting.FakeClock
	rec    *migration.Reconciler
	events *events.FakeRecorder
	gen    int64
}

const interval = 5 * time.Second // the reconciler's RequeueInterval

func newEnv(t *testing.T, cl client.Client, ns string) *env {
	e := &env{t: t, ctx: context.Background(), cl: cl, ns: ns, events: events.NewFakeRecorder(200),
		clock: clocktesting.NewFakeClock(time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC))}
	e.must(cl.Create(e.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}))
	var err error
	e.rec, err = migration.New(migration.Options{Client: cl, Clock: e.clock, Recorder: e.events, RequeueInterval: interval})
	e.must(err)
	return e
}

func (e *env) must(err error) {
	e.t.Helper()
	if err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) pvc(name string, labels map[string]string) {
	e.t.Helper()
	e.must(e.cl.Create(e.ctx, &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: e.ns, Name: name, Labels: labels},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
		},
	}))
}

func podTemplate(app string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": app}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.example/app:1"}}},
	}
}

// workload creates a Deployment or StatefulSet with n replicas and, as its
// controller would, n pods and a status that counts them.
func (e *env) workload(kind v1alpha1.WorkloadKind, name string, n int32) {
	e.t.Helper()
	sel := &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}}
	var obj client.Object
	switch kind {
	case v1alpha1.KindDeployment:
		obj = &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: e.ns, Name: name},
			Spec: appsv1.DeploymentSpec{Replicas: &n, Selector: sel, Template: podTemplate(name)}}
	case v1alpha1.KindStatefulSet:
		obj = &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Namespace: e.ns, Name: name},
			Spec: appsv1.StatefulSetSpec{Replicas: &n, Selector: sel, Template: podTemplate(name), ServiceName: name}}
	}
	e.must(e.cl.Create(e.ctx, obj))
	for i := range n {
		tpl := podTemplate(name)
		e.must(e.cl.Create(e.ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: e.ns, Name: fmt.Sprintf("%s-%d", name, i), Labels: tpl.Labels}, Spec: tpl.Spec}))
	}
	e.workloadStatus(kind, name, n)
}

// workloadStatus sets a workload's status as its controller would once it
// saw the current spec and counted n replicas.
func (e *env) workloadStatus(kind v1alpha1.WorkloadKind, name string, n int32) {
	e.t.Helper()
	key := types.NamespacedName{Namespace: e.ns, Name: name}
	switch kind {
	case v1alpha1.KindDeployment:
		var d appsv1.Deployment
		e.must(e.cl.Get(e.ctx, key, &d))
		d.Status.Replicas, d.Status.ObservedGeneration = n, d.Generation
		e.must(e.cl.Status().Update(e.ctx, &d))
	case v1alpha1.KindStatefulSet:
		var s appsv1.StatefulSet
		e.must(e.cl.Get(e.ctx, key, &s))
		s.Status.Replicas, s.Status.ObservedGeneration = n, s.Generation
		e.must(e.cl.Status().Update(e.ctx, &s))
	}
}

// stop plays the workload's controller after a scale to 0: its pods are
// deleted (unscheduled pods go at once) and its status counts none.
func (e *env) stop(kind v1alpha1.WorkloadKind, name string) {
	e.t.Helper()
	e.must(e.cl.DeleteAllOf(e.ctx, &corev1.Pod{}, client.InNamespace(e.ns), client.MatchingLabels{"app": name}))
	e.workloadStatus(kind, name, 0)
}

func (e *env) replicas(kind v1alpha1.WorkloadKind, name string) int32 {
	e.t.Helper()
	key := types.NamespacedName{Namespace: e.ns, Name: name}
	switch kind {
	case v1alpha1.KindDeployment:
		var d appsv1.Deployment
		e.must(e.cl.Get(e.ctx, key, &d))
		return *d.Spec.Replicas
	default:
		var s appsv1.StatefulSet
		e.must(e.cl.Get(e.ctx, key, &s))
		return *s.Spec.Replicas
	}
}

func spec(pvcs ...string) v1alpha1.MigrationSpec {
	return v1alpha1.MigrationSpec{
		Volumes:                 v1alpha1.MigrationVolumes{PVCs: pvcs},
		Destination:             v1alpha1.Destination{Address: "replica.example:7300", TLSSecretName: "agent-tls"},
		VolumeSnapshotClassName: "snap",
		BandwidthLimit:          "100Mbit",
	}
}

func (e *env) create(name string, s v1alpha1.MigrationSpec) {
	e.t.Helper()
	e.must(e.cl.Create(e.ctx, &v1alpha1.Migration{ObjectMeta: metav1.ObjectMeta{Namespace: e.ns, Name: name}, Spec: s}))
}

// update changes the Migration's spec as a user would.
func (e *env) update(name string, mod func(*v1alpha1.MigrationSpec)) {
	e.t.Helper()
	m := e.get(name)
	orig := m.DeepCopy()
	mod(&m.Spec)
	e.must(e.cl.Patch(e.ctx, m, client.MergeFrom(orig)))
}

func (e *env) get(name string) *v1alpha1.Migration {
	e.t.Helper()
	var m v1alpha1.Migration
	e.must(e.cl.Get(e.ctx, types.NamespacedName{Namespace: e.ns, Name: name}, &m))
	return &m
}

// reconcile runs one Reconcile and returns the Migration after it.
func (e *env) reconcile(name string) (*v1alpha1.Migration, ctrl.Result) {
	e.t.Helper()
	res, err := e.rec.Reconcile(e.ctx, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: e.ns, Name: name}})
	if err != nil {
		e.t.Fatalf("reconcile: %v", err)
	}
	return e.get(name), res
}

func (e *env) expectPhase(name string, want v1alpha1.MigrationPhase) *v1alpha1.Migration {
	e.t.Helper()
	m, _ := e.reconcile(name)
	if m.Status.Phase != want {
		e.t.Fatalf("phase %s, want %s (message %q)", m.Status.Phase, want, m.Status.Message)
	}
	if m.Status.ObservedGeneration != m.Generation {
		e.t.Errorf("observedGeneration %d, generation %d", m.Status.ObservedGeneration, m.Generation)
	}
	return m
}

func (e *env) volumeSync(name string) *v1alpha1.VolumeSync {
	e.t.Helper()
	var vs v1alpha1.VolumeSync
	e.must(e.cl.Get(e.ctx, types.NamespacedName{Namespace: e.ns, Name: name}, &vs))
	return &vs
}

func (e *env) volumeSyncs(migration string) []v1alpha1.VolumeSync {
	e.t.Helper()
	var l v1alpha1.VolumeSyncList
	e.must(e.cl.List(e.ctx, &l, client.InNamespace(e.ns), client.MatchingLabels{migration_label: migration}))
	return l.Items
}

const migration_label = migration.LabelMigration

// sync plays the agent of one VolumeSync: a round of its current trigger
// commits now, having sent sent bytes and taken took.
func (e *env) sync(name string, sent int64, took time.Duration) {
	e.t.Helper()
	vs := e.volumeSync(name)
	e.gen++
	now := metav1.NewMicroTime(e.clock.Now())
	st := &vs.Status
	st.Phase = v1alpha1.PhaseIdle
	st.LastManualTrigger = vs.Spec.Trigger.Manual
	st.LastBytesSent, st.LastWireBytes, st.LastSourceBytes = sent, sent/2, 1<<30
	st.LastGeneration, st.LastRootHash = e.gen, fmt.Sprintf("root-%d", e.gen)
	st.LastSyncTime, st.LastSyncDuration = &now, &metav1.Duration{Duration: took}
	st.LastSnapshotDuration = &metav1.Duration{Duration: took / 7} // a seventh of the round waited for its snapshot
	st.Rounds++
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: v1alpha1.ConditionReady, Status: metav1.ConditionTrue, Reason: v1alpha1.ReasonSynced, Message: "committed"})
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: v1alpha1.ConditionDegraded, Status: metav1.ConditionFalse, Reason: v1alpha1.ReasonNoProblem})
	e.must(e.cl.Status().Update(e.ctx, vs))
}

// syncAll runs a round of every VolumeSync of the migration, each sending
// sent bytes, after the clock moved on by took.
func (e *env) syncAll(migration string, sent int64, took time.Duration) {
	e.t.Helper()
	e.clock.Step(took)
	for _, vs := range e.volumeSyncs(migration) {
		e.sync(vs.Name, sent, took)
	}
}

// degrade plays an agent whose round of name failed.
func (e *env) degrade(name, msg string) {
	e.t.Helper()
	vs := e.volumeSync(name)
	vs.Status.Phase = v1alpha1.PhaseDegraded
	vs.Status.ConsecutiveFailures++
	meta.SetStatusCondition(&vs.Status.Conditions, metav1.Condition{Type: v1alpha1.ConditionReady, Status: metav1.ConditionFalse, Reason: v1alpha1.ReasonReceiverRefused, Message: msg})
	meta.SetStatusCondition(&vs.Status.Conditions, metav1.Condition{Type: v1alpha1.ConditionDegraded, Status: metav1.ConditionTrue, Reason: v1alpha1.ReasonReceiverRefused, Message: msg})
	e.must(e.cl.Status().Update(e.ctx, vs))
}

func (e *env) triggers(migration string) []string {
	e.t.Helper()
	var out []string
	for _, vs := range e.volumeSyncs(migration) {
		out = append(out, vs.Spec.Trigger.Manual)
	}
	return out
}

func (e *env) expectTriggers(migration, want string) {
	e.t.Helper()
	for _, got := range e.triggers(migration) {
		if got != want {
			e.t.Fatalf("triggers %v, want %s", e.triggers(migration), want)
		}
	}
}

func condition(m *v1alpha1.Migration, typ string) metav1.Condition {
	if c := meta.FindStatusCondition(m.Status.Conditions, typ); c != nil {
		return *c
	}
	return metav1.Condition{Type: typ, Status: metav1.ConditionUnknown}
}

func (e *env) drainEvents() []string {
	var out []string
	for {
		select {
		case ev := <-e.events.Events:
			out = append(out, ev)
		default:
			return out
		}
	}
}

// testHappyPath: two volumes (one named, one selected), a Deployment and a
// StatefulSet, Auto cutover once a round sends under 1Mi. A pre-copy round
// that commits during the cutover is not taken for the final one.
func testHappyPath(e *env) {
	t := e.t
	e.pvc("data-a", nil)
	e.pvc("data-b", map[string]string{"tier": "db"})
	e.pvc("other", map[string]string{"tier": "cache"})
	e.workload(v1alpha1.KindDeployment, "web", 3)
	e.workload(v1alpha1.KindStatefulSet, "db", 2)
	s := spec("data-a")
	s.Volumes.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "db"}}
	s.Quiesce.Workloads = []v1alpha1.WorkloadRef{{Kind: v1alpha1.KindDeployment, Name: "web"}, {Kind: v1alpha1.KindStatefulSet, Name: "db"}}
	s.Cutover.Mode = v1alpha1.CutoverAuto
	s.Precopy.ConvergedBelowBytes = resource.NewQuantity(1<<20, resource.BinarySI)
	e.create("app", s)

	m := e.expectPhase("app", v1alpha1.MigrationPrecopying)
	if len(m.Status.Volumes) != 2 || m.Status.Volumes[0] != (v1alpha1.MigrationVolumeStatus{PVC: "data-a", VolumeSync: "app-data-a", RemoteVolume: e.ns + "-data-a"}) ||
		m.Status.Volumes[1].PVC != "data-b" {
		t.Fatalf("volumes %+v", m.Status.Volumes)
	}
	vs := e.volumeSync("app-data-b")
	if !metav1.IsControlledBy(vs, m) || vs.Labels[migration.LabelMigration] != "app" || vs.Spec.SourcePVC != "data-b" ||
		vs.Spec.Destination.VolumeName != e.ns+"-data-b" || vs.Spec.Destination.Address != "replica.example:7300" ||
		vs.Spec.Trigger.Manual != "app-precopy-1" || vs.Spec.Trigger.Interval != nil ||
		vs.Spec.VolumeSnapshotClassName != "snap" || vs.Spec.BandwidthLimit != "100Mbit" || vs.Spec.Group != nil {
		t.Fatalf("VolumeSync %+v %+v", vs.ObjectMeta, vs.Spec)
	}
	if c := condition(m, v1alpha1.ConditionReadyForCutover); c.Status != metav1.ConditionFalse {
		t.Errorf("ReadyForCutover %+v", c)
	}

	// Round 1: one volume done is not a round.
	e.clock.Step(40 * time.Second)
	e.sync("app-data-a", 900<<20, 40*time.Second)
	m = e.expectPhase("app", v1alpha1.MigrationPrecopying)
	if m.Status.Rounds != 0 || !strings.Contains(m.Status.Message, "data-b") {
		t.Fatalf("rounds %d, message %q", m.Status.Rounds, m.Status.Message)
	}
	e.clock.Step(20 * time.Second)
	e.sync("app-data-b", 100<<20, 60*time.Second)
	m = e.expectPhase("app", v1alpha1.MigrationPrecopying)
	if m.Status.Rounds != 1 || m.Status.LastDeltaBytes != 1000<<20 || m.Status.PredictedDowntime.Duration != time.Minute ||
		m.Status.PrecopyTrigger != "app-precopy-2" {
		t.Fatalf("after round 1: %+v", m.Status)
	}
	h := m.Status.History[0]
	if h.Round != 1 || h.Trigger != "app-precopy-1" || h.SentBytes != 1000<<20 || len(h.Volumes) != 2 ||
		h.Volumes[0] != (v1alpha1.RoundVolume{PVC: "data-a", SentBytes: 900 << 20, WireBytes: 450 << 20, Generation: 1, Duration: metav1.Duration{Duration: 40 * time.Second}}) ||
		h.EndTime.Sub(h.StartTime.Time) != time.Minute {
		t.Fatalf("round 1: %+v", h)
	}
	e.expectTriggers("app", "app-precopy-2")

	e.syncAll("app", 20<<20, 8*time.Second)
	m = e.expectPhase("app", v1alpha1.MigrationPrecopying)
	if m.Status.Rounds != 2 || m.Status.PredictedDowntime.Duration != 8*time.Second {
		t.Fatalf("after round 2: %+v", m.Status)
	}

	// Round 3 converges (2 × 256Ki < 1Mi); Auto: the cutover starts at
	// once and records the replica counts before scaling.
	e.syncAll("app", 256<<10, 2*time.Second)
	m = e.expectPhase("app", v1alpha1.MigrationQuiescing)
	if c := condition(m, v1alpha1.ConditionReadyForCutover); c.Status != metav1.ConditionTrue || c.Reason != migration.ReasonConverged {
		t.Errorf("ReadyForCutover %+v", c)
	}
	want := []v1alpha1.WorkloadStatus{{Kind: v1alpha1.KindDeployment, Name: "web", Replicas: 3}, {Kind: v1alpha1.KindStatefulSet, Name: "db", Replicas: 2}}
	if fmt.Sprint(m.Status.Workloads) != fmt.Sprint(want) || m.Status.Rounds != 3 || m.Status.CutoverStartTime == nil {
		t.Fatalf("quiescing: workloads %+v, rounds %d", m.Status.Workloads, m.Status.Rounds)
	}
	if e.replicas(v1alpha1.KindDeployment, "web") != 0 || e.replicas(v1alpha1.KindStatefulSet, "db") != 0 {
		t.Fatal("workloads not scaled to 0")
	}
	if !slices.Contains(m.Finalizers, migration.FinalizerRestore) {
		t.Errorf("quiescing without the finalizer: %v", m.Finalizers)
	}
	if !strings.Contains(m.Status.Message, "web-0") || condition(m, v1alpha1.ConditionQuiesced).Status != metav1.ConditionFalse {
		t.Errorf("quiescing message %q", m.Status.Message)
	}
	// Pods gone but the Deployment's status not updated: still waiting.
	e.clock.Step(3 * time.Second)
	e.must(e.cl.DeleteAllOf(e.ctx, &corev1.Pod{}, client.InNamespace(e.ns), client.MatchingLabels{"app": "web"}))
	e.stop(v1alpha1.KindStatefulSet, "db")
	e.expectPhase("app", v1alpha1.MigrationQuiescing)
	e.clock.Step(1 * time.Second)
	e.workloadStatus(v1alpha1.KindDeployment, "web", 0)
	m = e.expectPhase("app", v1alpha1.MigrationFinalSync)
	if m.Status.FinalTrigger != "app-final" || condition(m, v1alpha1.ConditionQuiesced).Status != metav1.ConditionTrue {
		t.Fatalf("final sync: %+v", m.Status)
	}
	e.expectTriggers("app", "app-final")
	// The final rounds are one group, which the destination promotes.
	if !strings.HasPrefix(m.Status.Group, e.ns+"-app-") || len(m.Status.Group) != len(e.ns+"-app-")+8 {
		t.Errorf("group %q", m.Status.Group)
	}
	for _, vs := range e.volumeSyncs("app") {
		if g := vs.Spec.Group; g == nil || *g != (v1alpha1.SyncGroup{Name: m.Status.Group, Members: 2, Promote: true}) {
			t.Errorf("VolumeSync %s: group %+v", vs.Name, g)
		}
	}

	// A round that had started before the final trigger commits under its
	// own trigger: not the final one.
	vsa := e.volumeSync("app-data-a")
	vsa.Status.LastManualTrigger = "app-precopy-3"
	e.must(e.cl.Status().Update(e.ctx, vsa))
	m = e.expectPhase("app", v1alpha1.MigrationFinalSync)
	if c := condition(m, v1alpha1.ConditionDestinationReady); c.Status != metav1.ConditionFalse {
		t.Errorf("DestinationReady %+v", c)
	}

	e.syncAll("app", 128<<10, 7*time.Second)
	m = e.expectPhase("app", v1alpha1.MigrationCompleted)
	d := m.Status.Downtime
	if d == nil || d.Quiesce.Duration != 4*time.Second || d.FinalSync.Duration != 7*time.Second || d.Total.Duration != 11*time.Second || d.Commit.Duration != 0 ||
		d.Snapshot == nil || d.Snapshot.Duration != time.Second {
		t.Fatalf("downtime %+v", d)
	}
	if c := condition(m, v1alpha1.ConditionDestinationReady); c.Status != metav1.ConditionTrue || c.Reason != migration.ReasonCommitted {
		t.Errorf("DestinationReady %+v", c)
	}
	if len(m.Finalizers) != 0 {
		t.Errorf("completed with finalizers %v", m.Finalizers)
	}
	if !m.Status.CommitTime.Equal(&metav1.MicroTime{Time: e.clock.Now()}) {
		t.Errorf("commit time %v", m.Status.CommitTime)
	}
	for i, v := range m.Status.Volumes {
		vs := e.volumeSync(v.VolumeSync)
		if v.Generation != vs.Status.LastGeneration || v.RootHash != vs.Status.LastRootHash || v.Generation == 0 {
			t.Errorf("volume %d: %+v, VolumeSync %d %s", i, v, vs.Status.LastGeneration, vs.Status.LastRootHash)
		}
		if !vs.Spec.Paused {
			t.Errorf("VolumeSync %s not paused after the commit", vs.Name)
		}
	}
	if e.replicas(v1alpha1.KindDeployment, "web") != 0 || e.replicas(v1alpha1.KindStatefulSet, "db") != 0 {
		t.Error("workloads scaled back after a completed migration")
	}
	evs := strings.Join(e.drainEvents(), "\n")
	for _, p := range []string{"Precopying", "ReadyForCutover", "Quiescing", "FinalSync", "Committing", "Completed"} {
		if !strings.Contains(evs, p) {
			t.Errorf("no event for %s in\n%s", p, evs)
		}
	}
	// Completed is terminal: an abort now changes nothing.
	e.update("app", func(s *v1alpha1.MigrationSpec) { s.Abort = true })
	e.expectPhase("app", v1alpha1.MigrationCompleted)
	if e.replicas(v1alpha1.KindDeployment, "web") != 0 {
		t.Error("an abort after completion scaled back")
	}
}

// testMaxRounds: a pre-copy that never converges stops after maxRounds
// (history bounded to 10) and, even in Auto mode, waits for a request.
func testMaxRounds(e *env) {
	t := e.t
	e.pvc("data", nil)
	s := spec("data")
	s.Cutover.Mode = v1alpha1.CutoverAuto
	s.Precopy.MaxRounds = 12
	e.create("busy", s)
	e.expectPhase("busy", v1alpha1.MigrationPrecopying)
	var m *v1alpha1.Migration
	for i := 1; i <= 11; i++ {
		e.syncAll("busy", 1<<30, time.Second)
		m = e.expectPhase("busy", v1alpha1.MigrationPrecopying)
		if m.Status.Rounds != int32(i) {
			t.Fatalf("rounds %d, want %d", m.Status.Rounds, i)
		}
	}
	e.syncAll("busy", 1<<30, time.Second)
	m = e.expectPhase("busy", v1alpha1.MigrationReadyForCutover)
	if m.Status.Rounds != 12 || len(m.Status.History) != migration.HistoryLimit || m.Status.History[0].Round != 3 || m.Status.History[9].Round != 12 {
		t.Fatalf("rounds %d, history %d from %d", m.Status.Rounds, len(m.Status.History), m.Status.History[0].Round)
	}
	if c := condition(m, v1alpha1.ConditionReadyForCutover); c.Status != metav1.ConditionTrue || c.Reason != migration.ReasonMaxRounds {
		t.Errorf("ReadyForCutover %+v", c)
	}
	// No more rounds, no cutover.
	e.clock.Step(time.Hour)
	m = e.expectPhase("busy", v1alpha1.MigrationReadyForCutover)
	e.expectTriggers("busy", "busy-precopy-12")
	if !strings.Contains(m.Status.Message, "cutoverRequested") {
		t.Errorf("message %q", m.Status.Message)
	}
	// Requested: no workloads, so quiescing is immediate.
	e.update("busy", func(s *v1alpha1.MigrationSpec) { s.CutoverRequested = true })
	e.expectPhase("busy", v1alpha1.MigrationFinalSync)
	e.expectTriggers("busy", "busy-final")
}

// testManual: converged by predicted downtime; Manual mode waits for
// cutoverAt or cutoverRequested, running rounds at the interval meanwhile.
func testManual(e *env) {
	t := e.t
	e.pvc("data", nil)
	s := spec("data")
	s.Precopy.ConvergedBelowDuration = &metav1.Duration{Duration: 30 * time.Second}
	s.Precopy.Interval = &metav1.Duration{Duration: time.Minute}
	e.create("man", s)
	e.expectPhase("man", v1alpha1.MigrationPrecopying)
	e.syncAll("man", 1<<30, 2*time.Minute)
	m, res := e.reconcile("man")
	if m.Status.Phase != v1alpha1.MigrationPrecopying || m.Status.Rounds != 1 || res.RequeueAfter != time.Minute {
		t.Fatalf("after round 1: phase %s, rounds %d, requeue %s", m.Status.Phase, m.Status.Rounds, res.RequeueAfter)
	}
	e.expectTriggers("man", "man-precopy-1") // the interval first
	e.clock.Step(time.Minute)
	e.expectPhase("man", v1alpha1.MigrationPrecopying)
	e.expectTriggers("man", "man-precopy-2")

	e.syncAll("man", 1<<30, 10*time.Second) // 1 GiB, but quick: converged by time
	m = e.expectPhase("man", v1alpha1.MigrationReadyForCutover)
	if c := condition(m, v1alpha1.ConditionReadyForCutover); c.Status != metav1.ConditionTrue || c.Reason != migration.ReasonConverged {
		t.Errorf("ReadyForCutover %+v", c)
	}
	// Rounds go on at the interval while waiting.
	e.clock.Step(time.Minute)
	e.expectPhase("man", v1alpha1.MigrationReadyForCutover)
	e.expectTriggers("man", "man-precopy-3")
	e.syncAll("man", 1<<20, 5*time.Second)
	m = e.expectPhase("man", v1alpha1.MigrationReadyForCutover)
	if m.Status.Rounds != 3 || m.Status.PredictedDowntime.Duration != 5*time.Second {
		t.Errorf("rounds %d, predicted %v", m.Status.Rounds, m.Status.PredictedDowntime)
	}
	// A cutover time in the future is waited for.
	at := metav1.NewTime(e.clock.Now().Add(10 * time.Minute).Truncate(time.Second))
	e.update("man", func(s *v1alpha1.MigrationSpec) { s.CutoverAt = &at })
	m, res = e.reconcile("man")
	if m.Status.Phase != v1alpha1.MigrationReadyForCutover || res.RequeueAfter <= 0 || res.RequeueAfter > 10*time.Minute {
		t.Fatalf("cutoverAt ahead: phase %s, requeue %s", m.Status.Phase, res.RequeueAfter)
	}
	e.update("man", func(s *v1alpha1.MigrationSpec) { s.CutoverAt = nil; s.CutoverRequested = true })
	e.expectPhase("man", v1alpha1.MigrationFinalSync)
}

// reachQuiescing creates a converged Auto migration of one volume with a
// Deployment (3) and a StatefulSet (2), up to Quiescing.
func reachQuiescing(e *env, name string, mod func(*v1alpha1.MigrationSpec)) {
	e.t.Helper()
	e.pvc("data", nil)
	e.workload(v1alpha1.KindDeployment, "web", 3)
	e.workload(v1alpha1.KindStatefulSet, "db", 2)
	s := spec("data")
	s.Cutover.Mode = v1alpha1.CutoverAuto
	s.Quiesce.Workloads = []v1alpha1.WorkloadRef{{Kind: v1alpha1.KindDeployment, Name: "web"}, {Kind: v1alpha1.KindStatefulSet, Name: "db"}}
	if mod != nil {
		mod(&s)
	}
	e.create(name, s)
	e.expectPhase(name, v1alpha1.MigrationPrecopying)
	e.syncAll(name, 1<<20, time.Second)
	e.expectPhase(name, v1alpha1.MigrationQuiescing)
	if e.replicas(v1alpha1.KindDeployment, "web") != 0 || e.replicas(v1alpha1.KindStatefulSet, "db") != 0 {
		e.t.Fatal("not scaled to 0")
	}
}

func (e *env) expectRestored(m *v1alpha1.Migration) {
	e.t.Helper()
	if w, s := e.replicas(v1alpha1.KindDeployment, "web"), e.replicas(v1alpha1.KindStatefulSet, "db"); w != 3 || s != 2 {
		e.t.Fatalf("replicas web %d, db %d; want 3, 2", w, s)
	}
	for _, vs := range e.volumeSyncs(m.Name) {
		if !vs.Spec.Paused {
			e.t.Errorf("VolumeSync %s not paused", vs.Name)
		}
	}
	if c := condition(m, v1alpha1.ConditionDestinationReady); c.Status != metav1.ConditionFalse {
		e.t.Errorf("DestinationReady %+v", c)
	}
}

func testAbort(e *env) {
	reachQuiescing(e, "ab", nil)
	e.update("ab", func(s *v1alpha1.MigrationSpec) { s.Abort = true })
	m := e.expectPhase("ab", v1alpha1.MigrationAborted)
	e.expectRestored(m)
	if c := condition(m, v1alpha1.ConditionDestinationReady); c.Reason != migration.ReasonAborted {
		e.t.Errorf("DestinationReady %+v", c)
	}
	// Aborted is terminal.
	e.clock.Step(time.Hour)
	e.expectPhase("ab", v1alpha1.MigrationAborted)
}

// testDeleteDuringCutover: a Migration deleted while its workloads are
// at 0 scales them back before it goes.
func testDeleteDuringCutover(e *env) {
	reachQuiescing(e, "del", nil)
	e.must(e.cl.Delete(e.ctx, e.get("del")))
	res, err := e.rec.Reconcile(e.ctx, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: e.ns, Name: "del"}})
	if err != nil || res.RequeueAfter != 0 {
		e.t.Fatalf("reconcile: %v, %+v", err, res)
	}
	if w, s := e.replicas(v1alpha1.KindDeployment, "web"), e.replicas(v1alpha1.KindStatefulSet, "db"); w != 3 || s != 2 {
		e.t.Fatalf("replicas web %d, db %d; want 3, 2", w, s)
	}
	var m v1alpha1.Migration
	if err := e.cl.Get(e.ctx, types.NamespacedName{Namespace: e.ns, Name: "del"}, &m); !apierrors.IsNotFound(err) {
		e.t.Fatalf("migration still there (finalizers %v): %v", m.Finalizers, err)
	}
}

func testQuiesceTimeout(e *env) {
	reachQuiescing(e, "slow", func(s *v1alpha1.MigrationSpec) { s.Quiesce.Timeout = &metav1.Duration{Duration: time.Minute} })
	e.clock.Step(59 * time.Second)
	_, res := e.reconcile("slow")
	if res.RequeueAfter != time.Second {
		e.t.Errorf("requeue after %s, want 1s (the timeout)", res.RequeueAfter)
	}
	e.clock.Step(time.Second)
	m := e.expectPhase("slow", v1alpha1.MigrationFailed)
	e.expectRestored(m)
	if len(m.Finalizers) != 0 {
		e.t.Errorf("failed with finalizers %v", m.Finalizers)
	}
	if !strings.Contains(m.Status.Message, "timed out") || !strings.Contains(m.Status.Message, "web-") {
		e.t.Errorf("message %q", m.Status.Message)
	}
	if c := condition(m, v1alpha1.ConditionDestinationReady); c.Reason != migration.ReasonQuiesceTimeout {
		e.t.Errorf("DestinationReady %+v", c)
	}
}

func testMissingPVC(e *env) {
	e.pvc("data-a", nil)
	e.create("wait", spec("data-a", "data-b"))
	m, res := e.reconcile("wait")
	if m.Status.Phase != v1alpha1.MigrationPending || !strings.Contains(m.Status.Message, "data-b") || res.RequeueAfter != interval {
		e.t.Fatalf("phase %s, message %q, requeue %s", m.Status.Phase, m.Status.Message, res.RequeueAfter)
	}
	if n := len(e.volumeSyncs("wait")); n != 0 {
		e.t.Fatalf("%d VolumeSyncs before every PVC exists", n)
	}
	e.pvc("data-b", nil)
	m = e.expectPhase("wait", v1alpha1.MigrationPrecopying)
	if len(m.Status.Volumes) != 2 || len(e.volumeSyncs("wait")) != 2 {
		e.t.Fatalf("volumes %+v", m.Status.Volumes)
	}
}

// testMissingWorkload: a workload that does not exist fails the cutover
// before any other is scaled.
func testMissingWorkload(e *env) {
	e.pvc("data", nil)
	e.workload(v1alpha1.KindDeployment, "web", 3)
	s := spec("data")
	s.Cutover.Mode = v1alpha1.CutoverAuto
	s.Quiesce.Workloads = []v1alpha1.WorkloadRef{{Kind: v1alpha1.KindDeployment, Name: "web"}, {Kind: v1alpha1.KindStatefulSet, Name: "ghost"}}
	e.create("gh", s)
	e.expectPhase("gh", v1alpha1.MigrationPrecopying)
	e.syncAll("gh", 1, time.Second)
	m := e.expectPhase("gh", v1alpha1.MigrationFailed)
	if !strings.Contains(m.Status.Message, "StatefulSet "+e.ns+"/ghost not found") || len(m.Status.Workloads) != 0 {
		e.t.Errorf("message %q, workloads %+v", m.Status.Message, m.Status.Workloads)
	}
	if e.replicas(v1alpha1.KindDeployment, "web") != 3 {
		e.t.Error("web was scaled")
	}
}

// testDegradedMember: a volume whose final round fails keeps the
// migration in FinalSync, unpromoted, with the source quiesced, until the
// agent's retry commits.
func testDegradedMember(e *env) {
	reachQuiescing(e, "deg", nil)
	e.stop(v1alpha1.KindDeployment, "web")
	e.stop(v1alpha1.KindStatefulSet, "db")
	e.expectPhase("deg", v1alpha1.MigrationFinalSync)
	e.clock.Step(time.Second)
	e.degrade("deg-data", "receiver refused: target busy")
	m := e.expectPhase("deg", v1alpha1.MigrationFinalSync)
	if c := condition(m, v1alpha1.ConditionDestinationReady); c.Status != metav1.ConditionFalse || c.Reason != migration.ReasonMemberDegraded {
		e.t.Errorf("DestinationReady %+v", c)
	}
	if !strings.Contains(m.Status.Message, "target busy") {
		e.t.Errorf("message %q", m.Status.Message)
	}
	if e.replicas(v1alpha1.KindDeployment, "web") != 0 {
		e.t.Error("the source was scaled back while a member retries")
	}
	e.clock.Step(time.Hour) // no timeout on the final rounds
	e.expectPhase("deg", v1alpha1.MigrationFinalSync)
	e.syncAll("deg", 1<<20, time.Second)
	m = e.expectPhase("deg", v1alpha1.MigrationCompleted)
	if c := condition(m, v1alpha1.ConditionDestinationReady); c.Status != metav1.ConditionTrue {
		e.t.Errorf("DestinationReady %+v", c)
	}
}

// testInvalidName: a VolumeSync name over 253 characters fails the
// migration in Pending.
func testInvalidName(e *env) {
	long := strings.Repeat("p", 250)
	e.pvc(long, nil)
	e.create("inv", spec(long))
	m := e.expectPhase("inv", v1alpha1.MigrationFailed)
	if c := condition(m, v1alpha1.ConditionDestinationReady); c.Reason != migration.ReasonInvalidSpec || !strings.Contains(m.Status.Message, "VolumeSync name") {
		e.t.Errorf("DestinationReady %+v, message %q", c, m.Status.Message)
	}
}

// testWorkloadBack: a pod of a quiesced workload during the final rounds
// (someone scaled it up) fails the migration: the final snapshots may not
// hold its last writes.
func testWorkloadBack(e *env) {
	reachQuiescing(e, "back", nil)
	e.stop(v1alpha1.KindDeployment, "web")
	e.stop(v1alpha1.KindStatefulSet, "db")
	e.expectPhase("back", v1alpha1.MigrationFinalSync)
	tpl := podTemplate("db")
	e.must(e.cl.Create(e.ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: e.ns, Name: "db-0", Labels: tpl.Labels}, Spec: tpl.Spec}))
	e.syncAll("back", 1<<20, time.Second)
	m := e.expectPhase("back", v1alpha1.MigrationFailed)
	e.expectRestored(m)
	if c := condition(m, v1alpha1.ConditionDestinationReady); c.Reason != migration.ReasonWorkloadBack || !strings.Contains(c.Message, "db-0") {
		e.t.Errorf("DestinationReady %+v", c)
	}
	if m.Status.CommitTime != nil {
		e.t.Errorf("commit time %v", m.Status.CommitTime)
	}
}

// testWorkloadDeleted: a quiesced workload deleted during the cutover
// fails the migration; the others are scaled back.
func testWorkloadDeleted(e *env) {
	reachQuiescing(e, "gone", nil)
	e.must(e.cl.Delete(e.ctx, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: e.ns, Name: "web"}}))
	m := e.expectPhase("gone", v1alpha1.MigrationFailed)
	if c := condition(m, v1alpha1.ConditionDestinationReady); c.Reason != migration.ReasonWorkloadMissing || !strings.Contains(c.Message, "disappeared") {
		e.t.Errorf("DestinationReady %+v", c)
	}
	if n := e.replicas(v1alpha1.KindStatefulSet, "db"); n != 2 {
		e.t.Errorf("db at %d replicas, want 2", n)
	}
}
