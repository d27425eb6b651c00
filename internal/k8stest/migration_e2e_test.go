package k8stest_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	groupsnapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumegroupsnapshot/v1"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/csi"
	"github.com/voldelta/voldelta/internal/migration"
)

// TestMigrationEndToEnd migrates applications with the real Migration
// controller, the real agent and receiver, the real kube-apiserver and the
// real kube-controller-manager (which reconciles the Deployments: scaling
// one to 0 deletes its pods). Each application is a Deployment whose pods
// mount two PVCs and a writer that writes both volumes while its pods
// exist, stamping each write's sequence number into both.
//
//   - cutover: pre-copy rounds while the writer writes, ReadyForCutover, a
//     manual cutover, the workload quiesced, the final round, Completed;
//     both destination images equal the final round's source snapshots and
//     carry the writer's last write, and the receiver promotes both PVCs as
//     one group with what the final rounds committed.
//   - cutover with a group snapshot: the same with
//     spec.volumeGroupSnapshotClassName; the test plays the group snapshot
//     controller (groupSnapshots), the final rounds read the members, and
//     both destination images equal those members byte for byte.
//   - failing member, then abort: after the quiesce one volume's final
//     round cannot reach its target; the migration stays in FinalSync, the
//     source quiesced, and neither destination PVC is promoted though the
//     other member committed; an abort restores the replica count and the
//     controller manager recreates the pods.
//   - abort before cutover: the workload is left as it was.
func TestMigrationEndToEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	w := newMigWorld(t, ctx)
	mgr, err := migration.NewManager(w.cp.ImpersonatedConfig("voldelta-system", "voldelta-controller"), migration.RunOptions{MetricsAddr: "0", HealthAddr: "0",
		RequeueInterval: 200 * time.Millisecond, Logger: testLogger(t).With("side", "migration")})
	w.must(err)
	w.goBG(mgr.Start)

	t.Run("cutover", func(t *testing.T) { testMigrationCutover(t, w, false) })
	t.Run("cutover with a group snapshot", func(t *testing.T) { testMigrationCutover(t, w, true) })
	t.Run("failing member, then abort", func(t *testing.T) { testMigrationFailingMember(t, w) })
	t.Run("abort before cutover", func(t *testing.T) { testMigrationAbortBeforeCutover(t, w) })
}

// newMigration creates a Migration of app's volumes that quiesces its
// Deployment, cuts over manually, and converges once a round sends less
// than 4 MiB of chunks (the first round sends the 2 x 4 MiB the volumes
// start with; later ones about what the writer changed in between).
func newMigration(w *migWorld, a *migApp, mods ...func(*v1alpha1.MigrationSpec)) *v1alpha1.Migration {
	w.t.Helper()
	var pvcs []string
	for _, v := range a.vols {
		pvcs = append(pvcs, v.pvc)
	}
	m := &v1alpha1.Migration{
		ObjectMeta: metav1.ObjectMeta{Namespace: srcNS, Name: a.name},
		Spec: v1alpha1.MigrationSpec{
			Volumes:                 v1alpha1.MigrationVolumes{PVCs: pvcs},
			Destination:             v1alpha1.Destination{Address: w.rcvAddr, TLSSecretName: "replica-tls"},
			Quiesce:                 v1alpha1.Quiesce{Workloads: []v1alpha1.WorkloadRef{{Kind: v1alpha1.KindDeployment, Name: a.name}}},
			Precopy:                 v1alpha1.Precopy{ConvergedBelowBytes: ptr(resource.MustParse("4Mi"))},
			Cutover:                 v1alpha1.CutoverPolicy{Mode: v1alpha1.CutoverManual},
			VolumeSnapshotClassName: "longhorn-snap",
		},
	}
	for _, mod := range mods {
		mod(&m.Spec)
	}
	w.must(w.cl.Create(w.ctx, m))
	return m
}

// getMigration reads m's current state.
func (w *migWorld) getMigration(m *v1alpha1.Migration) *v1alpha1.Migration {
	w.t.Helper()
	var got v1alpha1.Migration
	w.must(w.cl.Get(w.ctx, client.ObjectKeyFromObject(m), &got))
	return &got
}

// waitMigration waits until cond holds for m; a Failed migration (unless
// cond accepts it) ends the wait at once.
func (w *migWorld) waitMigration(m *v1alpha1.Migration, what string, cond func(*v1alpha1.Migration) bool) *v1alpha1.Migration {
	w.t.Helper()
	var got v1alpha1.Migration
	w.eventually(what, func() (bool, string, error) {
		if err := w.cl.Get(w.ctx, client.ObjectKeyFromObject(m), &got); err != nil {
			return false, "", err
		}
		if cond(&got) {
			return true, "", nil
		}
		if got.Status.Phase.Terminal() {
			return false, "", fmt.Errorf("migration %s ended %s: %s", m.Name, got.Status.Phase, got.Status.Message)
		}
		return false, fmt.Sprintf("phase %s rounds %d: %s", got.Status.Phase, got.Status.Rounds, got.Status.Message), nil
	})
	return &got
}

// updateMigration applies change to m's spec (retrying on conflicts).
func (w *migWorld) updateMigration(m *v1alpha1.Migration, change func(*v1alpha1.Migration)) {
	w.t.Helper()
	w.eventually("update migration "+m.Name, func() (bool, string, error) {
		got := w.getMigration(m)
		change(got)
		err := w.cl.Update(w.ctx, got)
		if err != nil && !apierrors.IsConflict(err) {
			return false, "", err
		}
		return err == nil, fmt.Sprint(err), nil
	})
}

// volumeSync is the VolumeSync the migration drives for v.
func (w *migWorld) volumeSync(m *v1alpha1.Migration, v *migVolume) *v1alpha1.VolumeSync {
	w.t.Helper()
	for _, mv := range m.Status.Volumes {
		if mv.PVC == v.pvc {
			if mv.RemoteVolume != v.remote() {
				w.t.Fatalf("volume %s goes to %q, want %q", v.pvc, mv.RemoteVolume, v.remote())
			}
			var vs v1alpha1.VolumeSync
			w.must(w.cl.Get(w.ctx, client.ObjectKey{Namespace: m.Namespace, Name: mv.VolumeSync}, &vs))
			return &vs
		}
	}
	w.t.Fatalf("migration %s has no volume %s: %+v", m.Name, v.pvc, m.Status.Volumes)
	return nil
}

func (w *migWorld) replicas(name string) int32 {
	w.t.Helper()
	d, err := w.kube.AppsV1().Deployments(srcNS).Get(w.ctx, name, metav1.GetOptions{})
	w.must(err)
	return *d.Spec.Replicas
}

// precopyReady waits for at least two pre-copy rounds and ReadyForCutover.
func (w *migWorld) precopyReady(m *v1alpha1.Migration) *v1alpha1.Migration {
	w.t.Helper()
	return w.waitMigration(m, "ready for cutover after 2 rounds", func(m *v1alpha1.Migration) bool {
		return m.Status.Rounds >= 2 && m.Status.Phase == v1alpha1.MigrationReadyForCutover &&
			meta.IsStatusConditionTrue(m.Status.Conditions, v1alpha1.ConditionReadyForCutover)
	})
}

func testMigrationCutover(t *testing.T, w0 *migWorld, group bool) {
	w := w0.with(t)
	name, want := "shop", v1alpha1.FinalSnapshotsPerVolume
	var mods []func(*v1alpha1.MigrationSpec)
	if group {
		name, want = "shopg", v1alpha1.FinalSnapshotsGroup
		_, err := w.snaps.GroupsnapshotV1().VolumeGroupSnapshotClasses().Create(w.ctx, &groupsnapv1.VolumeGroupSnapshotClass{
			ObjectMeta: metav1.ObjectMeta{Name: "longhorn-group"}, Driver: csi.LonghornDriver, DeletionPolicy: snapv1.VolumeSnapshotContentDelete,
		}, metav1.CreateOptions{})
		w.must(err)
		mods = append(mods, func(s *v1alpha1.MigrationSpec) { s.VolumeGroupSnapshotClassName = "longhorn-group" })
	}
	a := w.app(name, false)
	m := newMigration(w, a, mods...)

	ready := w.precopyReady(m)
	if h := ready.Status.History; len(h) < 2 || (h[0].Round == 1 && h[0].SentBytes < 2*initialBytes) {
		t.Fatalf("pre-copy history: %+v", ready.Status.History)
	}
	last := ready.Status.History[len(ready.Status.History)-1]
	if last.SentBytes >= 4<<20 || len(last.Volumes) != 2 || ready.Status.LastDeltaBytes != last.SentBytes || ready.Status.PredictedDowntime == nil {
		t.Fatalf("converged round %+v, status last delta %d, predicted downtime %v", last, ready.Status.LastDeltaBytes, ready.Status.PredictedDowntime)
	}
	w.mu.Lock()
	seqAtReady := a.seq
	w.mu.Unlock()
	if seqAtReady == 0 {
		t.Fatal("the writer did not write during the pre-copy")
	}
	if n := w.replicas(a.name); n != 2 {
		t.Fatalf("Deployment scaled to %d before the cutover", n)
	}

	requested := time.Now()
	w.updateMigration(m, func(m *v1alpha1.Migration) { m.Spec.CutoverRequested = true })
	done := w.waitMigration(m, "completed", func(m *v1alpha1.Migration) bool { return m.Status.Phase == v1alpha1.MigrationCompleted })
	observed := time.Since(requested)

	// The controller manager deleted the pods; the writer sees them go
	// (the snapshots below show it wrote nothing after the final ones).
	select {
	case <-a.stopped:
	case <-w.ctx.Done():
		t.Fatal("the writer still writes after the migration completed")
	}
	if pods, err := w.kube.CoreV1().Pods(srcNS).List(w.ctx, metav1.ListOptions{LabelSelector: "app=" + a.name}); err != nil || len(pods.Items) != 0 {
		t.Fatalf("pods after the cutover: %v %v", pods, err)
	}
	if n := w.replicas(a.name); n != 0 {
		t.Fatalf("Deployment at %d replicas after the cutover", n)
	}
	st := done.Status
	if len(st.Workloads) != 1 || st.Workloads[0] != (v1alpha1.WorkloadStatus{Kind: v1alpha1.KindDeployment, Name: a.name, Replicas: 2}) {
		t.Errorf("status.workloads = %+v", st.Workloads)
	}
	if !meta.IsStatusConditionTrue(st.Conditions, v1alpha1.ConditionDestinationReady) || !meta.IsStatusConditionTrue(st.Conditions, v1alpha1.ConditionQuiesced) {
		t.Errorf("conditions after completion: %+v", st.Conditions)
	}
	if st.FinalTrigger == "" || st.CutoverStartTime == nil || st.CommitTime == nil || st.Downtime == nil || st.Rounds < 2 {
		t.Fatalf("status after completion: %+v", st)
	}
	if st.FinalSnapshots != want || (group != (st.GroupSnapshot != nil)) ||
		(group && (st.GroupSnapshot.Name != name+"-final" || st.GroupSnapshot.ClassName != "longhorn-group" || st.GroupSnapshot.ReadyTime == nil)) {
		t.Fatalf("final snapshots %q, group snapshot %+v", st.FinalSnapshots, st.GroupSnapshot)
	}

	// Both destination images are the final round's source snapshots,
	// byte for byte, and those are of one moment: after the writer's last
	// write, which both carry.
	w.mu.Lock()
	finalSeq := a.seq
	w.mu.Unlock()
	if finalSeq <= seqAtReady {
		t.Errorf("the writer wrote nothing between ReadyForCutover (seq %d) and its stop (seq %d)", seqAtReady, finalSeq)
	}
	for _, v := range a.vols {
		vs := w.volumeSync(done, v)
		if vs.Status.LastManualTrigger != st.FinalTrigger || vs.Status.BaseSnapshot == "" {
			t.Fatalf("VolumeSync %s: last trigger %q (final %q), base snapshot %q", vs.Name, vs.Status.LastManualTrigger, st.FinalTrigger, vs.Status.BaseSnapshot)
		}
		// With a group snapshot, the final round read the group's member
		// of the volume, as the controller recorded it.
		for _, mv := range st.Volumes {
			if mv.PVC == v.pvc && (mv.FinalSnapshot != vs.Spec.Trigger.SnapshotName || (group && mv.FinalSnapshot != vs.Status.BaseSnapshot) || (group == (mv.FinalSnapshot == ""))) {
				t.Fatalf("%s: final snapshot %q, VolumeSync reads %q, base snapshot %q", v.pvc, mv.FinalSnapshot, vs.Spec.Trigger.SnapshotName, vs.Status.BaseSnapshot)
			}
		}
		if group {
			g, err := w.snaps.GroupsnapshotV1().VolumeGroupSnapshots(srcNS).Get(w.ctx, st.GroupSnapshot.Name, metav1.GetOptions{})
			w.must(err)
			if vs.Status.BaseSnapshot != memberName(g, v.pvc) {
				t.Fatalf("%s: the final round read %s, not the group's member %s", v.pvc, vs.Status.BaseSnapshot, memberName(g, v.pvc))
			}
		}
		w.mu.Lock()
		src, ok := v.snaps[vs.Status.BaseSnapshot]
		live := bytes.Equal(src, v.image)
		w.mu.Unlock()
		if !ok {
			t.Fatalf("%s: the final round's snapshot %s was not taken by the test's snapshot controller", v.pvc, vs.Status.BaseSnapshot)
		}
		if !live {
			t.Errorf("%s: the final snapshot %s is not the volume as the application left it", v.pvc, vs.Status.BaseSnapshot)
		}
		if d := vs.Status.LastSyncDuration; d != nil {
			t.Logf("%s: final round %v (snapshot included), %d B of chunks sent, %d B on the wire", v.pvc, d.Duration, vs.Status.LastBytesSent, vs.Status.LastWireBytes)
		}
		dst := w.readFile(w.device(v))
		if !bytes.Equal(dst, src) {
			t.Errorf("%s: the destination image differs from the final round's snapshot %s", v.pvc, vs.Status.BaseSnapshot)
		}
		if seq, err := lastSeq(dst); err != nil || seq != finalSeq {
			t.Errorf("%s: destination image carries write %d (%v), the writer's last was %d", v.pvc, seq, err, finalSeq)
		}
		var mv *v1alpha1.MigrationVolumeStatus
		for i := range st.Volumes {
			if st.Volumes[i].PVC == v.pvc {
				mv = &st.Volumes[i]
			}
		}
		if mv == nil || mv.Generation != vs.Status.LastGeneration || mv.RootHash != vs.Status.LastRootHash || mv.RootHash == "" {
			t.Errorf("%s: migration volume status %+v, VolumeSync committed generation %d root %s", v.pvc, mv, vs.Status.LastGeneration, vs.Status.LastRootHash)
		}
		var vt v1alpha1.VolumeTarget
		w.must(w.cl.Get(w.ctx, client.ObjectKey{Namespace: dstNS, Name: v.pvc}, &vt))
		if vt.Status.Generation != vs.Status.LastGeneration || vt.Status.RootHash != vs.Status.LastRootHash {
			t.Errorf("%s: VolumeTarget at generation %d root %s, VolumeSync committed %d %s", v.pvc, vt.Status.Generation, vt.Status.RootHash, vs.Status.LastGeneration, vs.Status.LastRootHash)
		}
		// The receiver promotes the group once every member committed its
		// final round: the destination PVC is annotated with the group and
		// what the final round committed.
		if st.Group == "" {
			t.Fatalf("completed migration without a group: %+v", st)
		}
		w.eventually(v.pvc+" promoted", func() (bool, string, error) {
			var vt v1alpha1.VolumeTarget
			if err := w.cl.Get(w.ctx, client.ObjectKey{Namespace: dstNS, Name: v.pvc}, &vt); err != nil {
				return false, "", err
			}
			pvc, err := w.kube.CoreV1().PersistentVolumeClaims(dstNS).Get(w.ctx, v.pvc, metav1.GetOptions{})
			if err != nil {
				return false, "", err
			}
			an := pvc.Annotations
			return vt.Status.PromotedGroup == st.Group && an[v1alpha1.AnnotationMigration] == st.Group,
				fmt.Sprintf("VolumeTarget promoted group %q, PVC annotations %v", vt.Status.PromotedGroup, an), nil
		})
		pvc, err := w.kube.CoreV1().PersistentVolumeClaims(dstNS).Get(w.ctx, v.pvc, metav1.GetOptions{})
		w.must(err)
		if an := pvc.Annotations; an[v1alpha1.AnnotationRootHash] != vs.Status.LastRootHash || an[v1alpha1.AnnotationGeneration] != fmt.Sprint(vs.Status.LastGeneration) {
			t.Errorf("%s: promoted with %v, the final round committed generation %d root %s", v.pvc, an, vs.Status.LastGeneration, vs.Status.LastRootHash)
		}
	}

	d := st.Downtime
	predicted := "n/a"
	if st.PredictedDowntime != nil {
		predicted = st.PredictedDowntime.Duration.String()
	}
	snap := "n/a"
	if d.Snapshot != nil {
		snap = d.Snapshot.Duration.String()
	}
	t.Logf("migration %s: %d pre-copy rounds (sent %s), predicted downtime %s; downtime total %v = quiesce %v + final sync %v (final snapshots %s, wait %s) + commit %v; writer stopped at write %d",
		m.Name, st.Rounds, historySent(st.History), predicted, d.Total.Duration, d.Quiesce.Duration, d.FinalSync.Duration, st.FinalSnapshots, snap, d.Commit.Duration, finalSeq)
	t.Logf("the test saw Completed %v after it requested the cutover (status times are whole seconds: the breakdown above is at that resolution)", observed.Round(time.Millisecond))
	if d.Total.Duration < d.Quiesce.Duration+d.FinalSync.Duration {
		t.Errorf("downtime total %v is not the sum of its parts %+v", d.Total.Duration, d)
	}
}

func historySent(h []v1alpha1.PrecopyRound) string {
	var b bytes.Buffer
	for i, r := range h {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "#%d %d B in %v", r.Round, r.SentBytes, r.EndTime.Sub(r.StartTime.Time).Round(time.Millisecond))
	}
	return b.String()
}

func testMigrationFailingMember(t *testing.T, w0 *migWorld) {
	w := w0.with(t)
	a := w.app("cart", true) // its pods stay, terminating, until released
	m := newMigration(w, a)
	w.precopyReady(m)
	w.updateMigration(m, func(m *v1alpha1.Migration) { m.Spec.CutoverRequested = true })

	// Quiescing: the Deployment is at 0, its pods are terminating (held).
	w.waitMigration(m, "quiescing", func(m *v1alpha1.Migration) bool { return m.Status.Phase == v1alpha1.MigrationQuiescing })
	w.eventually("pods terminating", func() (bool, string, error) {
		pods, err := w.kube.CoreV1().Pods(srcNS).List(w.ctx, metav1.ListOptions{LabelSelector: "app=" + a.name})
		if err != nil {
			return false, "", err
		}
		terminating := 0
		for _, p := range pods.Items {
			if p.DeletionTimestamp != nil {
				terminating++
			}
		}
		return terminating == 2, fmt.Sprintf("%d pods, %d terminating", len(pods.Items), terminating), nil
	})
	if got := w.getMigration(m); got.Status.Phase != v1alpha1.MigrationQuiescing {
		t.Fatalf("phase %s while the pods are still terminating", got.Status.Phase)
	}
	// The second volume's target device goes away before its final round:
	// the receiver refuses its sessions (the target is unavailable). First
	// the pre-copy round the cutover may have begun in ends: no other
	// starts while quiescing.
	bad := a.vols[1]
	w.eventually("no round of "+bad.pvc+" in flight", func() (bool, string, error) {
		vs := w.volumeSync(w.getMigration(m), bad)
		return vs.Status.PendingSnapshot == "", fmt.Sprintf("pending snapshot %q", vs.Status.PendingSnapshot), nil
	})
	w.must(os.Rename(w.device(bad), w.device(bad)+".gone"))
	w.release(a)
	select {
	case <-a.stopped:
	case <-w.ctx.Done():
		t.Fatal("the writer did not see the released pods go")
	}

	final := w.waitMigration(m, "final sync", func(m *v1alpha1.Migration) bool {
		return m.Status.Phase == v1alpha1.MigrationFinalSync && m.Status.FinalTrigger != ""
	})
	trigger := final.Status.FinalTrigger
	// The good member commits its final round; the bad one fails and is
	// retried.
	w.eventually("good member committed, bad member retried", func() (bool, string, error) {
		good, bad := w.volumeSync(final, a.vols[0]), w.volumeSync(final, bad)
		ok := good.Status.LastManualTrigger == trigger &&
			bad.Status.PendingManualTrigger == trigger && bad.Status.ConsecutiveFailures >= 2
		return ok, fmt.Sprintf("good last trigger %q; bad pending %q, %d failures", good.Status.LastManualTrigger,
			bad.Status.PendingManualTrigger, bad.Status.ConsecutiveFailures), nil
	})
	// The good member committed, the group did not: nothing is promoted.
	w.notPromoted(a)
	got := w.getMigration(m)
	if got.Status.Phase != v1alpha1.MigrationFinalSync || meta.IsStatusConditionTrue(got.Status.Conditions, v1alpha1.ConditionDestinationReady) || got.Status.CommitTime != nil {
		t.Fatalf("with a failing member: phase %s, conditions %+v, commit time %v", got.Status.Phase, got.Status.Conditions, got.Status.CommitTime)
	}
	if n := w.replicas(a.name); n != 0 {
		t.Fatalf("the source is not kept quiesced while a member fails: %d replicas", n)
	}
	waitPods(t, w.ctx, w.kube, srcNS, "app="+a.name, 0)

	// Abort: the replica count comes back and the controller manager
	// recreates the pods; the destination stays unpromoted.
	w.updateMigration(m, func(m *v1alpha1.Migration) { m.Spec.Abort = true })
	aborted := w.waitMigration(m, "aborted", func(m *v1alpha1.Migration) bool { return m.Status.Phase == v1alpha1.MigrationAborted })
	if meta.IsStatusConditionTrue(aborted.Status.Conditions, v1alpha1.ConditionDestinationReady) || aborted.Status.CommitTime != nil {
		t.Errorf("aborted migration promoted the destination: %+v", aborted.Status)
	}
	w.eventually("replicas restored", func() (bool, string, error) {
		n := w.replicas(a.name)
		return n == 2, fmt.Sprintf("%d replicas", n), nil
	})
	waitPods(t, w.ctx, w.kube, srcNS, "app="+a.name, 2)
	w.notPromoted(a)
	w.release(a)
}

// notPromoted checks that no destination PVC of a is promoted.
func (w *migWorld) notPromoted(a *migApp) {
	w.t.Helper()
	for _, v := range a.vols {
		var vt v1alpha1.VolumeTarget
		w.must(w.cl.Get(w.ctx, client.ObjectKey{Namespace: dstNS, Name: v.pvc}, &vt))
		pvc, err := w.kube.CoreV1().PersistentVolumeClaims(dstNS).Get(w.ctx, v.pvc, metav1.GetOptions{})
		w.must(err)
		if g, ok := pvc.Annotations[v1alpha1.AnnotationMigration]; ok || vt.Status.PromotedGroup != "" || vt.Status.Phase == v1alpha1.PhasePromoted {
			w.t.Errorf("%s promoted without its whole group: annotation %q, VolumeTarget %s promoted group %q", v.pvc, g, vt.Status.Phase, vt.Status.PromotedGroup)
		}
	}
}

func testMigrationAbortBeforeCutover(t *testing.T, w0 *migWorld) {
	w := w0.with(t)
	a := w.app("blog", false)
	m := newMigration(w, a)
	w.precopyReady(m)
	w.updateMigration(m, func(m *v1alpha1.Migration) { m.Spec.Abort = true })
	aborted := w.waitMigration(m, "aborted", func(m *v1alpha1.Migration) bool { return m.Status.Phase == v1alpha1.MigrationAborted })
	if aborted.Status.CutoverStartTime != nil || meta.IsStatusConditionTrue(aborted.Status.Conditions, v1alpha1.ConditionDestinationReady) {
		t.Errorf("aborted before the cutover: %+v", aborted.Status)
	}
	if n := w.replicas(a.name); n != 2 {
		t.Errorf("abort before the cutover left the Deployment at %d replicas", n)
	}
	waitPods(t, w.ctx, w.kube, srcNS, "app="+a.name, 2)
	select {
	case <-a.stopped:
		t.Error("the writer saw the pods go")
	default:
	}
}
