package migration_test

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	groupsnapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumegroupsnapshot/v1"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/internal/k8stest"
	"github.com/voldelta/voldelta/internal/migration"
)

// TestMigrationGroupSnapshot runs the controller's choice of the final
// snapshots and the group snapshot's flow against a real kube-apiserver
// that serves groupsnapshot.storage.k8s.io (the CRDs of the
// external-snapshotter module): the test plays the agents, the workload
// controllers and the common snapshot controller (it sets the group
// snapshot's status and creates its member VolumeSnapshots). Each subtest
// has its own CSI driver name, so the cluster-wide classes of one do not
// apply to another.
func TestMigrationGroupSnapshot(t *testing.T) {
	cl := testClient(t, k8stest.Start(t))
	for _, tc := range []struct {
		name string
		run  func(*env)
	}{
		{"group", testGroup},
		{"group-error", testGroupError},
		{"no-class", testNoClass},
		{"mixed-drivers", testMixedDrivers},
		{"named-class-missing", testNamedClassMissing},
		{"foreign-labelled-pvc", testForeignLabelledPVC},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(newEnv(t, cl, "gs-"+tc.name))
		})
	}
}

// TestMigrationNoGroupSnapshotAPI runs against a real kube-apiserver
// started without the groupsnapshot.storage.k8s.io CRDs: discovery finds
// no VolumeGroupSnapshot, so the final snapshots are per volume, a named
// class fails the cutover before anything is scaled, and the controller's
// manager (NewManager, with deploy/controller's permissions) starts and
// drives a migration without a watch on the missing kind.
func TestMigrationNoGroupSnapshotAPI(t *testing.T) {
	cp := k8stest.StartWith(t, k8stest.StartOptions{NoGroupSnapshotAPI: true})
	cl := testClient(t, cp)
	t.Run("per-volume", func(t *testing.T) {
		e := newEnv(t, cl, "nogs-per-volume")
		m := reachFinal(e, "app", "csi.nogs.example", nil)
		if m.Status.FinalSnapshots != v1alpha1.FinalSnapshotsPerVolume || m.Status.GroupSnapshot != nil {
			t.Fatalf("final snapshots %q, group %+v", m.Status.FinalSnapshots, m.Status.GroupSnapshot)
		}
		e.expectTriggers("app", "app-final")
		e.expectEvent("not served")
	})
	t.Run("named-class", func(t *testing.T) {
		e := newEnv(t, cl, "nogs-named")
		expectClassFailure(e, "csi.nogs.example", "crash-consistent", "is not served")
	})
	t.Run("manager", func(t *testing.T) { testManagerWithoutGroupAPI(t, cp, cl) })
}

func testClient(t *testing.T, cp *k8stest.ControlPlane) client.Client {
	t.Helper()
	s := runtime.NewScheme()
	if err := migration.Scheme(s); err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(cp.Config, client.Options{Scheme: s})
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// boundPVC creates a PVC bound to a CSI PersistentVolume of driver, as a
// provisioner would have.
func (e *env) boundPVC(name, driver string) {
	e.t.Helper()
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: e.ns + "-" + name},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
			PersistentVolumeSource:        corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: driver, VolumeHandle: "vol-" + e.ns + "-" + name}},
			ClaimRef:                      &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: e.ns, Name: name},
		},
	}
	e.must(e.cl.Create(e.ctx, pv))
	e.must(e.cl.Create(e.ctx, &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: e.ns, Name: name},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
			VolumeName:  pv.Name,
		},
	}))
}

// groupClass creates a VolumeGroupSnapshotClass of driver, the default of
// its driver if def.
func (e *env) groupClass(name, driver string, def bool) {
	e.t.Helper()
	c := &groupsnapv1.VolumeGroupSnapshotClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Driver: driver, DeletionPolicy: snapv1.VolumeSnapshotContentDelete}
	if def {
		c.Annotations = map[string]string{migration.DefaultGroupSnapshotClassAnnotation: "true"}
	}
	e.must(e.cl.Create(e.ctx, c))
}

// reachFinal creates an Auto migration of data-a and data-b (bound to
// volumes of driver) that quiesces a Deployment (3) and a StatefulSet (2),
// and takes it to FinalSync.
func reachFinal(e *env, name, driver string, mod func(*v1alpha1.MigrationSpec)) *v1alpha1.Migration {
	e.t.Helper()
	e.boundPVC("data-a", driver)
	e.boundPVC("data-b", driver)
	e.workload(v1alpha1.KindDeployment, "web", 3)
	e.workload(v1alpha1.KindStatefulSet, "db", 2)
	s := spec("data-a", "data-b")
	s.Cutover.Mode = v1alpha1.CutoverAuto
	s.Quiesce.Workloads = []v1alpha1.WorkloadRef{{Kind: v1alpha1.KindDeployment, Name: "web"}, {Kind: v1alpha1.KindStatefulSet, Name: "db"}}
	if mod != nil {
		mod(&s)
	}
	e.create(name, s)
	e.expectPhase(name, v1alpha1.MigrationPrecopying)
	e.syncAll(name, 1<<20, time.Second)
	e.expectPhase(name, v1alpha1.MigrationQuiescing)
	e.clock.Step(2 * time.Second)
	e.stop(v1alpha1.KindDeployment, "web")
	e.stop(v1alpha1.KindStatefulSet, "db")
	return e.expectPhase(name, v1alpha1.MigrationFinalSync)
}

func (e *env) groupSnapshot(name string) *groupsnapv1.VolumeGroupSnapshot {
	e.t.Helper()
	var g groupsnapv1.VolumeGroupSnapshot
	e.must(e.cl.Get(e.ctx, types.NamespacedName{Namespace: e.ns, Name: name}, &g))
	return &g
}

// setGroupStatus plays the snapshot controller: the group snapshot's
// status.
func (e *env) setGroupStatus(name string, st groupsnapv1.VolumeGroupSnapshotStatus) {
	e.t.Helper()
	g := e.groupSnapshot(name)
	g.Status = &st
	e.must(e.cl.Status().Update(e.ctx, g))
}

// member plays the snapshot controller: the member VolumeSnapshot of pvc
// in the group snapshot, owned by it, as the common controller names it.
func (e *env) member(group, pvc string) string {
	e.t.Helper()
	g := e.groupSnapshot(group)
	name := fmt.Sprintf("snapshot-%s-%s", strings.ReplaceAll(string(g.UID), "-", "")[:12], pvc)
	e.must(e.cl.Create(e.ctx, &snapv1.VolumeSnapshot{
		ObjectMeta: metav1.ObjectMeta{Namespace: e.ns, Name: name, OwnerReferences: []metav1.OwnerReference{{
			APIVersion: groupsnapv1.SchemeGroupVersion.String(), Kind: "VolumeGroupSnapshot", Name: g.Name, UID: g.UID,
		}}},
		Spec: snapv1.VolumeSnapshotSpec{Source: snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: &pvc}},
	}))
	return name
}

// generations are the VolumeSyncs' metadata.generation, by name: each
// write of a spec raises it by one.
func (e *env) generations(migration string) map[string]int64 {
	out := map[string]int64{}
	for _, vs := range e.volumeSyncs(migration) {
		out[vs.Name] = vs.Generation
	}
	return out
}

func (e *env) expectEvent(fragment string) {
	e.t.Helper()
	evs := e.drainEvents()
	for _, ev := range evs {
		if strings.Contains(ev, fragment) {
			return
		}
	}
	e.t.Errorf("no event with %q in\n%s", fragment, strings.Join(evs, "\n"))
}

// testGroup: the default class of the volumes' driver; the group snapshot
// selects exactly the labelled members; no VolumeSync gets the final
// trigger before the group is ready with every member, then each gets the
// trigger, its member and the group in one write.
func testGroup(e *env) {
	t := e.t
	const driver = "csi.group.example"
	e.groupClass("gs-other-default", "csi.other.example", true)
	e.groupClass("gs-group-plain", driver, false)
	e.groupClass("gs-group-default", driver, true)
	e.pvc("other", nil) // not a volume of the migration: not labelled
	m := reachFinal(e, "app", driver, nil)
	g := m.Status.GroupSnapshot
	if m.Status.FinalSnapshots != v1alpha1.FinalSnapshotsGroup || g == nil || g.Name != "app-final" || g.ClassName != "gs-group-default" ||
		g.CreateTime == nil || g.ReadyTime != nil {
		t.Fatalf("final snapshots %q, group %+v", m.Status.FinalSnapshots, g)
	}
	e.expectEvent("the default VolumeGroupSnapshotClass of driver " + driver)
	vgs := e.groupSnapshot("app-final")
	if !metav1.IsControlledBy(vgs, m) || vgs.Spec.VolumeGroupSnapshotClassName == nil || *vgs.Spec.VolumeGroupSnapshotClassName != "gs-group-default" ||
		vgs.Spec.Source.VolumeGroupSnapshotContentName != nil ||
		fmt.Sprint(vgs.Spec.Source.Selector) != fmt.Sprint(&metav1.LabelSelector{MatchLabels: map[string]string{migration.LabelMigration: "app"}}) {
		t.Fatalf("VolumeGroupSnapshot %+v %+v", vgs.ObjectMeta.OwnerReferences, vgs.Spec)
	}
	// The selector takes exactly the volumes' PVCs.
	var labelled corev1.PersistentVolumeClaimList
	e.must(e.cl.List(e.ctx, &labelled, client.InNamespace(e.ns), client.MatchingLabels{migration.LabelMigration: "app"}))
	if len(labelled.Items) != 2 || labelled.Items[0].Name != "data-a" || labelled.Items[1].Name != "data-b" {
		t.Fatalf("labelled PVCs %v", labelled.Items)
	}
	gens := e.generations("app")
	noFinal := func(when string) {
		t.Helper()
		for _, vs := range e.volumeSyncs("app") {
			if vs.Spec.Trigger.Manual == "app-final" || vs.Spec.Trigger.SnapshotName != "" || vs.Spec.Group != nil || vs.Generation != gens[vs.Name] {
				t.Fatalf("%s: VolumeSync %s (generation %d, was %d): %+v, group %+v", when, vs.Name, vs.Generation, gens[vs.Name], vs.Spec.Trigger, vs.Spec.Group)
			}
		}
	}
	noFinal("group snapshot created")
	if cut, err := e.rec.GroupSnapshotCut(e.ctx, m); err != nil || cut {
		t.Fatalf("cut %v before the snapshot controller saw the group: %v", cut, err)
	}
	m = e.expectPhase("app", v1alpha1.MigrationFinalSync)
	if !strings.Contains(m.Status.Message, "readyToUse") {
		t.Errorf("message %q", m.Status.Message)
	}

	// The snapshot controller cuts the group: not ready yet.
	e.clock.Step(time.Second)
	cutAt := metav1.NewTime(e.clock.Now())
	e.setGroupStatus("app-final", groupsnapv1.VolumeGroupSnapshotStatus{CreationTime: &cutAt, ReadyToUse: ptrTo(false)})
	if cut, err := e.rec.GroupSnapshotCut(e.ctx, m); err != nil || !cut {
		t.Fatalf("not cut after the group's creationTime: %v", err)
	}
	e.expectPhase("app", v1alpha1.MigrationFinalSync)
	noFinal("cut, not ready")

	// Ready, but the members are not there yet.
	e.clock.Step(2 * time.Second)
	e.setGroupStatus("app-final", groupsnapv1.VolumeGroupSnapshotStatus{CreationTime: &cutAt, ReadyToUse: ptrTo(true)})
	m = e.expectPhase("app", v1alpha1.MigrationFinalSync)
	if !strings.Contains(m.Status.Message, "member VolumeSnapshots of data-a, data-b") {
		t.Errorf("message %q", m.Status.Message)
	}
	noFinal("ready without members")
	a := e.member("app-final", "data-a")
	m = e.expectPhase("app", v1alpha1.MigrationFinalSync)
	if !strings.Contains(m.Status.Message, "of data-b") {
		t.Errorf("message %q", m.Status.Message)
	}
	noFinal("one member")
	b := e.member("app-final", "data-b")

	// Every member: each VolumeSync gets everything in one write.
	m = e.expectPhase("app", v1alpha1.MigrationFinalSync)
	want := map[string]string{"app-data-a": a, "app-data-b": b}
	for _, vs := range e.volumeSyncs("app") {
		if vs.Generation != gens[vs.Name]+1 || vs.Spec.Trigger.Manual != "app-final" || vs.Spec.Trigger.SnapshotName != want[vs.Name] ||
			vs.Spec.Group == nil || *vs.Spec.Group != (v1alpha1.SyncGroup{Name: m.Status.Group, Members: 2, Promote: true}) {
			t.Fatalf("VolumeSync %s: generation %d (was %d), trigger %+v, group %+v", vs.Name, vs.Generation, gens[vs.Name], vs.Spec.Trigger, vs.Spec.Group)
		}
	}
	if m.Status.Volumes[0].FinalSnapshot != a || m.Status.Volumes[1].FinalSnapshot != b || m.Status.GroupSnapshot.ReadyTime == nil {
		t.Fatalf("volumes %+v, group %+v", m.Status.Volumes, m.Status.GroupSnapshot)
	}
	gens = e.generations("app")
	e.expectPhase("app", v1alpha1.MigrationFinalSync)
	for n, g := range e.generations("app") {
		if g != gens[n] {
			t.Errorf("VolumeSync %s written again (generation %d, was %d)", n, g, gens[n])
		}
	}

	e.syncAll("app", 1<<20, 4*time.Second)
	m = e.expectPhase("app", v1alpha1.MigrationCompleted)
	d := m.Status.Downtime
	// The snapshot part is the group's wait: created, then ready 3 s later.
	if d == nil || d.Snapshot == nil || d.Snapshot.Duration != 3*time.Second || d.FinalSync.Duration != 7*time.Second || d.Quiesce.Duration != 2*time.Second {
		t.Fatalf("downtime %+v", d)
	}
	// Left, owned by the Migration: it goes with it.
	if vgs := e.groupSnapshot("app-final"); !metav1.IsControlledBy(vgs, m) || vgs.DeletionTimestamp != nil {
		t.Errorf("group snapshot after completion: %+v", vgs.ObjectMeta)
	}
}

func ptrTo[T any](v T) *T { return &v }

// testGroupError: the group snapshot reports an error: the migration
// fails, the workloads are scaled back, no VolumeSync got the final
// trigger.
func testGroupError(e *env) {
	const driver = "csi.error.example"
	e.groupClass("gs-error-named", driver, false)
	m := reachFinal(e, "bad", driver, func(s *v1alpha1.MigrationSpec) { s.VolumeGroupSnapshotClassName = "gs-error-named" })
	if m.Status.FinalSnapshots != v1alpha1.FinalSnapshotsGroup || m.Status.GroupSnapshot.ClassName != "gs-error-named" {
		e.t.Fatalf("final snapshots %q, group %+v", m.Status.FinalSnapshots, m.Status.GroupSnapshot)
	}
	e.expectEvent("spec.volumeGroupSnapshotClassName")
	msg := "CreateVolumeGroupSnapshot: driver refused"
	e.setGroupStatus("bad-final", groupsnapv1.VolumeGroupSnapshotStatus{Error: &snapv1.VolumeSnapshotError{Message: &msg}})
	m = e.expectPhase("bad", v1alpha1.MigrationFailed)
	e.expectRestored(m)
	if c := condition(m, v1alpha1.ConditionDestinationReady); c.Reason != migration.ReasonGroupSnapshotFailed || !strings.Contains(c.Message, "driver refused") {
		e.t.Errorf("DestinationReady %+v", c)
	}
	for _, vs := range e.volumeSyncs("bad") {
		if vs.Spec.Trigger.Manual == "bad-final" || vs.Spec.Trigger.SnapshotName != "" {
			e.t.Errorf("VolumeSync %s got %+v", vs.Name, vs.Spec.Trigger)
		}
	}
}

// testNoClass: a default class exists, but not for the volumes' driver:
// one VolumeSnapshot per volume, as before group snapshots; the final
// trigger is set at once and no group snapshot is taken.
func testNoClass(e *env) {
	e.groupClass("gs-noclass-elsewhere", "csi.elsewhere.example", true)
	m := reachFinal(e, "per", "csi.noclass.example", nil)
	if m.Status.FinalSnapshots != v1alpha1.FinalSnapshotsPerVolume || m.Status.GroupSnapshot != nil {
		e.t.Fatalf("final snapshots %q, group %+v", m.Status.FinalSnapshots, m.Status.GroupSnapshot)
	}
	e.expectEvent("no default VolumeGroupSnapshotClass of driver csi.noclass.example")
	e.expectTriggers("per", "per-final")
	var g groupsnapv1.VolumeGroupSnapshot
	if err := e.cl.Get(e.ctx, types.NamespacedName{Namespace: e.ns, Name: "per-final"}, &g); !apierrors.IsNotFound(err) {
		e.t.Fatalf("a group snapshot was taken: %v", err)
	}
	for _, vs := range e.volumeSyncs("per") {
		if vs.Spec.Trigger.SnapshotName != "" {
			e.t.Errorf("VolumeSync %s reads %s", vs.Name, vs.Spec.Trigger.SnapshotName)
		}
	}
	e.syncAll("per", 1<<20, time.Second)
	m = e.expectPhase("per", v1alpha1.MigrationCompleted)
	if d := m.Status.Downtime; d == nil || d.Snapshot == nil || d.Snapshot.Duration != time.Second/7 {
		e.t.Errorf("downtime %+v (the agents' snapshot wait)", d)
	}
}

// testMixedDrivers: the volumes are of two drivers, each with a default
// class: a group snapshot is of one driver, so per volume.
func testMixedDrivers(e *env) {
	e.groupClass("gs-mixed-x", "csi.x.example", true)
	e.groupClass("gs-mixed-y", "csi.y.example", true)
	e.boundPVC("data-y", "csi.y.example")
	m := reachFinal(e, "mix", "csi.x.example", func(s *v1alpha1.MigrationSpec) { s.Volumes.PVCs = append(s.Volumes.PVCs, "data-y") })
	if m.Status.FinalSnapshots != v1alpha1.FinalSnapshotsPerVolume {
		e.t.Fatalf("final snapshots %q", m.Status.FinalSnapshots)
	}
	e.expectEvent("drivers csi.x.example, csi.y.example")
	e.expectTriggers("mix", "mix-final")
}

// testNamedClassMissing: a named class that does not exist fails the
// cutover before any workload is scaled.
func testNamedClassMissing(e *env) {
	expectClassFailure(e, "csi.missing.example", "gs-missing-nope", "not found")
}

// testForeignLabelledPVC: a PVC that is not a volume of the migration
// carries its label, so the group snapshot would take it too: the
// migration fails before creating it, and the workloads are scaled back.
func testForeignLabelledPVC(e *env) {
	const driver = "csi.foreign.example"
	e.groupClass("gs-foreign-default", driver, true)
	e.pvc("stray", map[string]string{migration.LabelMigration: "fl"})
	reachFinalFailed(e, "fl", driver)
}

func reachFinalFailed(e *env, name, driver string) {
	e.t.Helper()
	e.boundPVC("data-a", driver)
	e.boundPVC("data-b", driver)
	e.workload(v1alpha1.KindDeployment, "web", 3)
	e.workload(v1alpha1.KindStatefulSet, "db", 2)
	s := spec("data-a", "data-b")
	s.Cutover.Mode = v1alpha1.CutoverAuto
	s.Quiesce.Workloads = []v1alpha1.WorkloadRef{{Kind: v1alpha1.KindDeployment, Name: "web"}, {Kind: v1alpha1.KindStatefulSet, Name: "db"}}
	e.create(name, s)
	e.expectPhase(name, v1alpha1.MigrationPrecopying)
	e.syncAll(name, 1<<20, time.Second)
	e.expectPhase(name, v1alpha1.MigrationQuiescing)
	e.stop(v1alpha1.KindDeployment, "web")
	e.stop(v1alpha1.KindStatefulSet, "db")
	m := e.expectPhase(name, v1alpha1.MigrationFailed)
	e.expectRestored(m)
	if c := condition(m, v1alpha1.ConditionDestinationReady); c.Reason != migration.ReasonGroupSnapshotFailed || !strings.Contains(c.Message, "PVC stray") {
		e.t.Errorf("DestinationReady %+v", c)
	}
	var g groupsnapv1.VolumeGroupSnapshot
	if err := e.cl.Get(e.ctx, types.NamespacedName{Namespace: e.ns, Name: name + "-final"}, &g); !apierrors.IsNotFound(err) {
		e.t.Errorf("a group snapshot was taken: %v", err)
	}
}

func expectClassFailure(e *env, driver, class, fragment string) {
	e.t.Helper()
	e.boundPVC("data", driver)
	e.workload(v1alpha1.KindDeployment, "web", 3)
	s := spec("data")
	s.Cutover.Mode = v1alpha1.CutoverAuto
	s.Quiesce.Workloads = []v1alpha1.WorkloadRef{{Kind: v1alpha1.KindDeployment, Name: "web"}}
	s.VolumeGroupSnapshotClassName = class
	e.create("named", s)
	e.expectPhase("named", v1alpha1.MigrationPrecopying)
	e.syncAll("named", 1<<20, time.Second)
	m := e.expectPhase("named", v1alpha1.MigrationFailed)
	if c := condition(m, v1alpha1.ConditionDestinationReady); c.Reason != migration.ReasonGroupSnapshotClass || !strings.Contains(c.Message, fragment) {
		e.t.Errorf("DestinationReady %+v", c)
	}
	if n := e.replicas(v1alpha1.KindDeployment, "web"); n != 3 || len(m.Status.Workloads) != 0 {
		e.t.Errorf("web at %d replicas, workloads %+v: scaled before the class was checked", n, m.Status.Workloads)
	}
}

// testManagerWithoutGroupAPI runs NewManager with the controller's RBAC
// on an apiserver without the group snapshot API, to Completed.
func testManagerWithoutGroupAPI(t *testing.T, cp *k8stest.ControlPlane, cl client.Client) {
	ms, err := k8stest.LoadKustomization(filepath.Join(k8stest.RepoRoot(), "deploy", "controller"), k8stest.ClusterScopedKinds)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := cp.Apply(ctx, ms, false); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("controller log:\n%s", logs)
		}
	})
	mgr, err := migration.NewManager(cp.ImpersonatedConfig("voldelta-system", "voldelta-controller"), migration.RunOptions{
		MetricsAddr: "0", HealthAddr: "0", RequeueInterval: 100 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	mctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- mgr.Start(mctx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	}()
	e := newEnv(t, cl, "nogs-managed")
	e.ctx = ctx
	e.boundPVC("data", "csi.nogs.example")
	e.workload(v1alpha1.KindDeployment, "web", 2)
	sp := spec("data")
	sp.Cutover.Mode = v1alpha1.CutoverAuto
	sp.Quiesce.Workloads = []v1alpha1.WorkloadRef{{Kind: v1alpha1.KindDeployment, Name: "web"}}
	e.create("app", sp)
	var last *v1alpha1.Migration
	err = k8stest.Eventually(ctx, func() (bool, string, error) {
		last = e.get("app")
		if last.Status.Phase.Terminal() {
			return true, "", nil
		}
		for _, vs := range e.volumeSyncs("app") {
			if vs.Spec.Trigger.Manual != vs.Status.LastManualTrigger && !vs.Spec.Paused {
				e.sync(vs.Name, 1<<20, time.Second)
			}
		}
		var d appsv1.Deployment
		e.must(cl.Get(ctx, types.NamespacedName{Namespace: e.ns, Name: "web"}, &d))
		if *d.Spec.Replicas == 0 && d.Status.ObservedGeneration != d.Generation {
			e.stop(v1alpha1.KindDeployment, "web")
		}
		return false, fmt.Sprintf("phase %s: %s", last.Status.Phase, last.Status.Message), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if last.Status.Phase != v1alpha1.MigrationCompleted || last.Status.FinalSnapshots != v1alpha1.FinalSnapshotsPerVolume {
		t.Fatalf("ended %s (%s), final snapshots %q", last.Status.Phase, last.Status.Message, last.Status.FinalSnapshots)
	}
}
