package migration_test

import (
	"testing"
	"time"

	groupsnapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumegroupsnapshot/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/internal/k8stest"
)

// TestMigrationFreezeWithGroupSnapshot: a frozen volume whose final
// snapshot is a member of a VolumeGroupSnapshot is thawed as soon as the
// group is cut (its creationTime), before the group is ready and before
// any VolumeSync gets the final round; an agent that thawed by its timeout
// before the group was cut fails the migration.
func TestMigrationFreezeWithGroupSnapshot(t *testing.T) {
	cp := k8stest.Start(t)
	cl := testClient(t, cp)
	freezeA := func(s *v1alpha1.MigrationSpec) {
		s.Quiesce.Workloads = nil
		s.Quiesce.Freeze = []string{"data-a"}
	}
	reach := func(e *env, name, driver string) {
		e.t.Helper()
		e.boundPVC("data-a", driver)
		e.boundPVC("data-b", driver)
		s := spec("data-a", "data-b")
		s.Cutover.Mode = v1alpha1.CutoverAuto
		freezeA(&s)
		e.create(name, s)
		e.expectPhase(name, v1alpha1.MigrationPrecopying)
		e.syncAll(name, 1<<20, time.Second)
		e.expectPhase(name, v1alpha1.MigrationQuiescing)
		if e.freezeOf(name+"-data-a") == nil || e.freezeOf(name+"-data-b") != nil {
			e.t.Fatalf("spec.freeze: data-a %+v, data-b %+v", e.freezeOf(name+"-data-a"), e.freezeOf(name+"-data-b"))
		}
		e.reportFreeze(name+"-data-a", v1alpha1.FreezeFrozen, v1alpha1.FreezeReasonFrozen)
		m := e.expectPhase(name, v1alpha1.MigrationFinalSync)
		if m.Status.FinalSnapshots != v1alpha1.FinalSnapshotsGroup || m.Status.GroupSnapshot == nil {
			e.t.Fatalf("final snapshots %q, group %+v", m.Status.FinalSnapshots, m.Status.GroupSnapshot)
		}
	}

	t.Run("thawed-at-the-group-cut", func(t *testing.T) {
		e := newEnv(t, cl, "fzg-cut")
		e.groupClass("fzg-cut-default", "csi.fzg-cut.example", true)
		reach(e, "app", "csi.fzg-cut.example")
		m := e.expectPhase("app", v1alpha1.MigrationFinalSync)
		if e.freezeOf("app-data-a") == nil || m.Status.Freeze.ThawedTime != nil {
			t.Fatalf("thawed before the group was cut: %+v", m.Status.Freeze)
		}
		e.clock.Step(time.Second)
		cutAt := metav1.NewTime(e.clock.Now())
		e.setGroupStatus("app-final", groupsnapv1.VolumeGroupSnapshotStatus{CreationTime: &cutAt, ReadyToUse: ptrTo(false)})
		e.clock.Step(2 * time.Second)
		m = e.expectPhase("app", v1alpha1.MigrationFinalSync)
		if e.freezeOf("app-data-a") != nil || m.Status.Freeze == nil || m.Status.Freeze.ThawedTime == nil {
			t.Fatalf("not thawed after the group's cut: spec %+v, status %+v", e.freezeOf("app-data-a"), m.Status.Freeze)
		}
		for _, vs := range e.volumeSyncs("app") {
			if vs.Spec.Trigger.Manual == m.Status.FinalTrigger || vs.Spec.Trigger.SnapshotName != "" {
				t.Fatalf("VolumeSync %s got the final round before the group was ready: %+v", vs.Name, vs.Spec.Trigger)
			}
		}
	})

	t.Run("agent-timeout-before-the-group-cut", func(t *testing.T) {
		e := newEnv(t, cl, "fzg-timeout")
		e.groupClass("fzg-timeout-default", "csi.fzg-timeout.example", true) // one default per driver
		reach(e, "app", "csi.fzg-timeout.example")
		e.clock.Step(time.Minute)
		e.reportFreeze("app-data-a", v1alpha1.FreezeThawed, v1alpha1.FreezeReasonTimeout)
		m := e.expectPhase("app", v1alpha1.MigrationFailed)
		if e.freezeOf("app-data-a") != nil {
			t.Fatalf("failed, but spec.freeze kept: %+v (message %q)", e.freezeOf("app-data-a"), m.Status.Message)
		}
	})
}
