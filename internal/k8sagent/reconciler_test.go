package k8sagent_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapfake "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned/fake"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	kubefake "k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/events"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crfake "sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/voldelta/voldelta/agent"
	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/csi"
	"github.com/voldelta/voldelta/internal/k8sagent"
	"github.com/voldelta/voldelta/internal/k8sutil"
	"github.com/voldelta/voldelta/internal/pki"
	"github.com/voldelta/voldelta/transport"
)

type memImage struct {
	*bytes.Reader
	id string
}

func (m memImage) Size() uint64    { return uint64(m.Len()) }
func (m memImage) Close() error    { return nil }
func (m memImage) ImageID() string { return m.id }

// images opens every ready snapshot as a fixed byte image and records the
// handles it was asked for; it reports one changed extent between any two
// snapshots.
type images struct {
	opened  []string
	changes [][2]string
	data    []byte // the image's bytes; nil: 4 KiB of zeros
}

func (i *images) Changed(_ context.Context, _ *csi.Volume, base, target string) ([]chunk.Extent, error) {
	i.changes = append(i.changes, [2]string{base, target})
	return []chunk.Extent{{Offset: 0, Length: 512}}, nil
}

// SnapshotID names a snapshot as the image opened from it is named.
func (i *images) SnapshotID(_ context.Context, _ *csi.Volume, handle string) (string, error) {
	return "img:" + handle, nil
}

func (i *images) Open(_ context.Context, _ *csi.Volume, s csi.SnapshotResult) (csi.Image, error) {
	i.opened = append(i.opened, s.Handle)
	if i.data != nil {
		return memImage{bytes.NewReader(bytes.Clone(i.data)), "img:" + s.Handle}, nil
	}
	return memImage{bytes.NewReader(make([]byte, 4096)), "img:" + s.Handle}, nil
}

type fixture struct {
	t       *testing.T
	cl      client.Client
	kube    *kubefake.Clientset
	snaps   *snapfake.Clientset
	clock   *clocktesting.FakeClock
	imgs    *images
	rec     *k8sagent.Reconciler
	reg     *prometheus.Registry
	events  *events.FakeRecorder
	syncs   []agent.Options
	syncErr error
	// syncHook, if set, runs instead of the fixture's round.
	syncHook func(context.Context, agent.Options) (*agent.Stats, error)
	gen      uint64
}

const ns = "app"

func newFixture(t *testing.T, node string, vs *v1alpha1.VolumeSync) *fixture {
	t.Helper()
	ca, err := pki.NewCA("test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue("agent", nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pvName := "pv-data"
	block := corev1.PersistentVolumeBlock
	f := &fixture{t: t, imgs: &images{}, events: events.NewFakeRecorder(100), clock: clocktesting.NewFakeClock(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))}
	f.kube = kubefake.NewClientset(
		&corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "data"},
			Spec: corev1.PersistentVolumeClaimSpec{VolumeName: pvName}, Status: corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound}},
		&corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: pvName}, Spec: corev1.PersistentVolumeSpec{
			Capacity:   corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("4Ki")},
			VolumeMode: &block,
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
				Driver: "example.csi.io", VolumeHandle: "vol-1"}}}},
		&storagev1.VolumeAttachment{ObjectMeta: metav1.ObjectMeta{Name: "va-1"}, Spec: storagev1.VolumeAttachmentSpec{
			Attacher: "example.csi.io", NodeName: "node-a", Source: storagev1.VolumeAttachmentSource{PersistentVolumeName: &pvName}},
			Status: storagev1.VolumeAttachmentStatus{Attached: true}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "tls"}, Data: map[string][]byte{
			"ca.crt": ca.PEM, "tls.crt": leaf.CertPEM, "tls.key": leaf.KeyPEM}},
	)
	f.snaps = snapfake.NewSimpleClientset()
	s := runtime.NewScheme()
	if err := k8sagent.Scheme(s); err != nil {
		t.Fatal(err)
	}
	f.cl = crfake.NewClientBuilder().WithScheme(s).WithObjects(vs).WithStatusSubresource(&v1alpha1.VolumeSync{}).Build()
	res, err := csi.NewResolver(csi.ResolverOptions{Kube: f.kube})
	if err != nil {
		t.Fatal(err)
	}
	sn, err := csi.NewSnapshotter(f.snaps, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	f.reg = prometheus.NewRegistry()
	m, err := k8sagent.NewMetrics(f.reg)
	if err != nil {
		t.Fatal(err)
	}
	f.rec, err = k8sagent.New(k8sagent.Options{
		Client: f.cl, Kube: f.kube, Snapshots: f.snaps, Resolver: res, Snapshotter: sn, Images: f.imgs,
		NodeName: node, Clock: f.clock, Metrics: m, Recorder: f.events, ProgressInterval: 5 * time.Millisecond,
		Sync: func(ctx context.Context, opt agent.Options) (*agent.Stats, error) {
			if f.syncHook != nil {
				return f.syncHook(ctx, opt)
			}
			f.syncs = append(f.syncs, opt)
			if f.syncErr != nil {
				return nil, f.syncErr
			}
			f.gen++
			f.clock.Step(3 * time.Second)
			st := &agent.Stats{Generation: f.gen, RootHash: "abc", SourceBytes: opt.Image.Size(), BytesSentRaw: 100 * f.gen, WireBytes: 150,
				ReusedBytes: 7 * (f.gen - 1), Manifest: &chunk.Manifest{Params: opt.Params, Size: opt.Image.Size(), Root: chunk.ID{byte(f.gen)}},
				ScanMode: agent.ScanFull, BytesRead: opt.Image.Size()}
			if opt.Hints != nil { // as agent.Sync reports a hinted round and a failed hint check
				st.ScanMode, st.BytesRead, st.HintSource = agent.ScanIncremental, 512, opt.Hints.Name()
				if f.gen == 3 {
					st.ScanMode, st.HintCheck = agent.ScanFull, "mismatch"
				}
			}
			return st, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func volumeSync() *v1alpha1.VolumeSync {
	return &v1alpha1.VolumeSync{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "data", UID: types.UID("uid-1"), Generation: 1},
		Spec: v1alpha1.VolumeSyncSpec{
			SourcePVC:               "data",
			Destination:             v1alpha1.Destination{Address: "replica.example:7300", TLSSecretName: "tls"},
			Trigger:                 v1alpha1.Trigger{Interval: &metav1.Duration{Duration: 10 * time.Minute}},
			VolumeSnapshotClassName: "snap-class",
			BandwidthLimit:          "100Mbit",
		},
	}
}

func (f *fixture) reconcile() ctrl.Result {
	f.t.Helper()
	res, err := f.rec.Reconcile(context.Background(), ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: "data"}})
	if err != nil {
		f.t.Fatalf("reconcile: %v", err)
	}
	return res
}

func (f *fixture) get() *v1alpha1.VolumeSync {
	f.t.Helper()
	var vs v1alpha1.VolumeSync
	if err := f.cl.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "data"}, &vs); err != nil {
		f.t.Fatal(err)
	}
	return &vs
}

// ready plays the snapshot controller for snapshot name.
func (f *fixture) ready(name string) {
	f.t.Helper()
	ctx := context.Background()
	vs, err := f.snaps.SnapshotV1().VolumeSnapshots(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	yes, handle, content := true, "handle-"+name, "content-"+name
	if _, err := f.snaps.SnapshotV1().VolumeSnapshotContents().Create(ctx, &snapv1.VolumeSnapshotContent{
		ObjectMeta: metav1.ObjectMeta{Name: content},
		Spec:       snapv1.VolumeSnapshotContentSpec{Driver: "example.csi.io"},
		Status:     &snapv1.VolumeSnapshotContentStatus{SnapshotHandle: &handle, ReadyToUse: &yes},
	}, metav1.CreateOptions{}); err != nil {
		f.t.Fatal(err)
	}
	vs.Status = &snapv1.VolumeSnapshotStatus{BoundVolumeSnapshotContentName: &content, ReadyToUse: &yes}
	if _, err := f.snaps.SnapshotV1().VolumeSnapshots(ns).UpdateStatus(ctx, vs, metav1.UpdateOptions{}); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) snapshots() []string {
	f.t.Helper()
	l, err := f.snaps.SnapshotV1().VolumeSnapshots(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	var out []string
	for _, s := range l.Items {
		out = append(out, s.Name)
	}
	return out
}

func cond(vs *v1alpha1.VolumeSync, typ string) metav1.Condition {
	c := meta.FindStatusCondition(vs.Status.Conditions, typ)
	if c == nil {
		return metav1.Condition{}
	}
	return *c
}

func TestRoundsOnOwnNode(t *testing.T) {
	f := newFixture(t, "node-a", volumeSync())

	// Round 1: the snapshot is taken and awaited.
	res := f.reconcile()
	vs := f.get()
	first := vs.Status.PendingSnapshot
	if first == "" || res.RequeueAfter <= 0 || vs.Status.Phase != v1alpha1.PhaseSyncing || vs.Status.Node != "node-a" {
		t.Fatalf("after the first reconcile: result %+v, status %+v", res, vs.Status)
	}
	if c := cond(vs, v1alpha1.ConditionSyncing); c.Status != metav1.ConditionTrue || c.Reason != v1alpha1.ReasonWaitingSnapshot {
		t.Fatalf("Syncing = %+v", c)
	}
	if got := f.snapshots(); len(got) != 1 || got[0] != first {
		t.Fatalf("snapshots %v", got)
	}
	f.reconcile() // still not ready: nothing changes
	if len(f.syncs) != 0 || len(f.snapshots()) != 1 {
		t.Fatalf("synced before the snapshot was ready")
	}

	f.ready(first)
	res = f.reconcile()
	if len(f.syncs) != 1 {
		t.Fatalf("%d rounds, want 1", len(f.syncs))
	}
	opt := f.syncs[0]
	if opt.Addr != "replica.example:7300" || opt.Volume != "app-data" || opt.Transport.TLS == nil ||
		opt.Transport.TLS.ServerName != "replica.example" || opt.Transport.BandwidthLimit != 100e6/8 || opt.Name != "voldelta-agent@node-a" {
		t.Fatalf("sync options %+v", opt)
	}
	if len(f.imgs.opened) != 1 || f.imgs.opened[0] != "handle-"+first {
		t.Fatalf("images opened: %v", f.imgs.opened)
	}
	vs = f.get()
	st := vs.Status
	if st.Phase != v1alpha1.PhaseIdle || st.LastGeneration != 1 || st.LastRootHash != "abc" || st.LastBytesSent != 100 ||
		st.LastWireBytes != 150 || st.LastSourceBytes != 4096 || st.BaseSnapshot != first || st.PendingSnapshot != "" ||
		st.Rounds != 1 || st.LastSyncTime == nil || st.LastSyncDuration == nil || st.LastSyncDuration.Duration != 3*time.Second ||
		st.LastSnapshotDuration == nil || st.LastSnapshotDuration.Duration != 0 || // ready at once; the 3 s are the send's
		st.NextSyncTime == nil || st.ObservedGeneration != 1 {
		t.Fatalf("status after round 1: %+v", st)
	}
	if c := cond(vs, v1alpha1.ConditionReady); c.Status != metav1.ConditionTrue || c.Reason != v1alpha1.ReasonSynced {
		t.Fatalf("Ready = %+v", c)
	}
	if c := cond(vs, v1alpha1.ConditionDegraded); c.Status != metav1.ConditionFalse {
		t.Fatalf("Degraded = %+v", c)
	}
	if res.RequeueAfter != 10*time.Minute {
		t.Fatalf("requeue after %v, want the interval", res.RequeueAfter)
	}

	// Not due yet: nothing happens, the wait shrinks.
	f.clock.Step(4 * time.Minute)
	if res := f.reconcile(); res.RequeueAfter != 6*time.Minute || len(f.snapshots()) != 1 {
		t.Fatalf("before the interval: %+v, snapshots %v", res, f.snapshots())
	}

	// A manual trigger starts a round at once; the base is kept until it commits.
	vs = f.get()
	vs.Spec.Trigger.Manual = "cutover-1"
	if err := f.cl.Update(context.Background(), vs); err != nil {
		t.Fatal(err)
	}
	f.reconcile()
	vs = f.get()
	second := vs.Status.PendingSnapshot
	if second == "" || second == first || vs.Status.PendingManualTrigger != "cutover-1" {
		t.Fatalf("manual trigger did not start a round: %+v", vs.Status)
	}
	if got := f.snapshots(); len(got) != 2 {
		t.Fatalf("snapshots during round 2: %v, want base and pending", got)
	}
	f.ready(second)
	f.reconcile()
	vs = f.get()
	if vs.Status.LastManualTrigger != "cutover-1" || vs.Status.BaseSnapshot != second || vs.Status.LastGeneration != 2 {
		t.Fatalf("status after round 2: %+v", vs.Status)
	}
	// Round 1's snapshot is deleted by round 3, once a snapshot newer
	// than the base exists (a Longhorn engine punches the snapshots right
	// under the head when a trim meets a Removed snapshot).
	if got := f.snapshots(); len(got) != 2 || got[0] != first || got[1] != second {
		t.Fatalf("snapshots after round 2: %v, want %s and %s", got, first, second)
	}
	// Round 2 was scanned from round 1's manifest and the changed extents
	// between the two snapshots.
	if len(f.syncs) != 2 || f.syncs[0].Hints != nil || f.syncs[0].ImageID != "img:handle-"+first {
		t.Fatalf("round 1: hints %v, image %q", f.syncs[0].Hints, f.syncs[0].ImageID)
	}
	h := f.syncs[1].Hints
	if h == nil || h.BaseImage() != "img:handle-"+first || f.syncs[1].ImageID != "img:handle-"+second {
		t.Fatalf("round 2: hints %v, image %q", h, f.syncs[1].ImageID)
	}
	if exts, err := h.Changed(context.Background(), 4096); err != nil || len(exts) != 1 {
		t.Fatalf("round 2: hints gave %v, %v", exts, err)
	}
	if len(f.imgs.changes) != 1 || f.imgs.changes[0] != [2]string{"handle-" + first, "handle-" + second} {
		t.Fatalf("changes asked: %v", f.imgs.changes)
	}
	if vs.Status.LastReusedBytes != 7 {
		t.Fatalf("lastReusedBytes %d", vs.Status.LastReusedBytes)
	}

	if n := testutil.ToFloat64(metricVec(t, f.reg, "voldelta_agent_rounds_total")); n != 2 {
		t.Errorf("rounds_total = %v", n)
	}
	for i := 1; i <= 2; i++ {
		if ev := <-f.events.Events; !strings.HasPrefix(ev, "Normal Synced generation") {
			t.Errorf("event %d: %q", i, ev)
		}
	}

	// Round 3: its snapshot is taken, the base's delta read, and only then
	// is round 1's snapshot deleted; round 2's stays as the base.
	vs = f.get()
	vs.Spec.Trigger.Manual = "3"
	if err := f.cl.Update(context.Background(), vs); err != nil {
		t.Fatal(err)
	}
	f.reconcile()
	third := f.get().Status.PendingSnapshot
	if got := f.snapshots(); len(got) != 3 {
		t.Fatalf("snapshots when round 3's is taken: %v, want all three", got)
	}
	f.ready(third)
	f.reconcile()
	if got := f.snapshots(); len(got) != 2 || got[0] != second || got[1] != third {
		t.Fatalf("snapshots after round 3: %v, want %s and %s", got, second, third)
	}
	if len(f.imgs.changes) != 2 || f.imgs.changes[1] != [2]string{"handle-" + second, "handle-" + third} {
		t.Fatalf("changes asked: %v", f.imgs.changes)
	}
	// Round 2 was incremental, round 3 a full scan that caught the hints.
	for mode, want := range map[string]float64{agent.ScanFull: 2, agent.ScanIncremental: 1} {
		if n := testutil.ToFloat64(metricWith(t, f.reg, "voldelta_agent_scans_total", "mode", mode)); n != want {
			t.Errorf("scans_total{mode=%s} = %v, want %v", mode, n, want)
		}
	}
	if n := testutil.ToFloat64(metricWith(t, f.reg, "voldelta_agent_hint_mismatches_total", "source", csi.HintSourceLonghorn)); n != 1 {
		t.Errorf("hint_mismatches_total = %v, want 1", n)
	}
}

// metricVec sums a metric family's values.
// metricWith sums the series of name whose label has the value.
func metricWith(t *testing.T, reg *prometheus.Registry, name, label, value string) prometheus.Collector {
	t.Helper()
	return metricSum(t, reg, name, func(m *dto.Metric) bool {
		for _, lp := range m.GetLabel() {
			if lp.GetName() == label && lp.GetValue() == value {
				return true
			}
		}
		return false
	})
}

func metricVec(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	return metricSum(t, reg, name, func(*dto.Metric) bool { return true })
}

// metricSum sums the values of name's series that match, as a gauge.
func metricSum(t *testing.T, reg *prometheus.Registry, name string, match func(*dto.Metric) bool) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if match(m) {
				sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "sum"})
	g.Set(sum)
	return g
}

func TestProgressWhileSending(t *testing.T) {
	f := newFixture(t, "node-a", volumeSync())
	f.reconcile()
	f.ready(f.get().Status.PendingSnapshot)
	var seen *v1alpha1.RoundProgress
	f.syncHook = func(ctx context.Context, opt agent.Options) (*agent.Stats, error) {
		opt.Progress(agent.Progress{SourceBytes: 4096, ScannedBytes: 2048, NeedBytes: 1024, SentBytes: 512})
		// Wait until the reporter published it.
		for seen == nil {
			var vs v1alpha1.VolumeSync
			if err := f.cl.Get(ctx, types.NamespacedName{Namespace: ns, Name: "data"}, &vs); err != nil {
				return nil, err
			}
			seen = vs.Status.Progress
			time.Sleep(time.Millisecond)
		}
		return &agent.Stats{Generation: 1, RootHash: "abc", SourceBytes: 4096}, nil
	}
	f.reconcile()
	if seen.SourceBytes != 4096 || seen.ScannedBytes != 2048 || seen.NeededBytes != 1024 || seen.SentBytes != 512 {
		t.Fatalf("progress %+v", seen)
	}
	if p := f.get().Status.Progress; p != nil {
		t.Fatalf("progress left after the round: %+v", p)
	}
}

func TestOtherNodeIgnores(t *testing.T) {
	f := newFixture(t, "node-b", volumeSync())
	if res := f.reconcile(); res != (ctrl.Result{}) {
		t.Fatalf("result %+v", res)
	}
	if vs := f.get(); vs.Status.Node != "" || vs.Status.Phase != "" || len(f.snapshots()) != 0 {
		t.Fatalf("an agent on another node acted: %+v, snapshots %v", vs.Status, f.snapshots())
	}
}

func TestFailedRoundKeepsSnapshotAndBacksOff(t *testing.T) {
	f := newFixture(t, "node-a", volumeSync())
	f.reconcile()
	pending := f.get().Status.PendingSnapshot
	f.ready(pending)
	f.syncErr = &transport.RemoteError{Code: transport.ErrCodeForbidden, Message: "not allowed"}
	res := f.reconcile()
	vs := f.get()
	if c := cond(vs, v1alpha1.ConditionDegraded); c.Status != metav1.ConditionTrue || c.Reason != v1alpha1.ReasonReceiverRefused {
		t.Fatalf("Degraded = %+v", c)
	}
	if vs.Status.PendingSnapshot != pending || vs.Status.ConsecutiveFailures != 1 || vs.Status.Phase != v1alpha1.PhaseDegraded {
		t.Fatalf("status %+v", vs.Status)
	}
	if res.RequeueAfter != k8sutil.Backoff(1) {
		t.Fatalf("requeue %v", res.RequeueAfter)
	}
	if ev := <-f.events.Events; !strings.HasPrefix(ev, "Warning ReceiverRefused attempt 1 failed") {
		t.Errorf("event %q", ev)
	}
	f.syncErr = agent.ErrRootMismatch
	res = f.reconcile()
	if c := cond(f.get(), v1alpha1.ConditionDegraded); c.Reason != v1alpha1.ReasonRootMismatch || res.RequeueAfter != k8sutil.Backoff(2) {
		t.Fatalf("Degraded = %+v, requeue %v", c, res.RequeueAfter)
	}
	// A full target and a receiver state an operator must repair have reasons of their own.
	for k, c := range []struct {
		code   transport.ErrorCode
		reason string
	}{{transport.ErrCodeTargetFull, v1alpha1.ReasonTargetFull}, {transport.ErrCodeTargetState, v1alpha1.ReasonTargetState}} {
		f.syncErr = fmt.Errorf("sync: %w", &transport.RemoteError{Code: c.code, Message: "no space left"})
		res = f.reconcile()
		if got := cond(f.get(), v1alpha1.ConditionDegraded); got.Reason != c.reason || res.RequeueAfter != k8sutil.Backoff(int32(3+k)) {
			t.Fatalf("code %v: Degraded = %+v, requeue %v", c.code, got, res.RequeueAfter)
		}
	}
	// The retry reads the same snapshot and then succeeds.
	f.syncErr = nil
	f.reconcile()
	vs = f.get()
	if vs.Status.BaseSnapshot != pending || vs.Status.ConsecutiveFailures != 0 || cond(vs, v1alpha1.ConditionDegraded).Status != metav1.ConditionFalse {
		t.Fatalf("after the retry: %+v", vs.Status)
	}
	for _, h := range f.imgs.opened {
		if h != "handle-"+pending {
			t.Fatalf("opened %v", f.imgs.opened)
		}
	}
}

func TestPausedAndInvalid(t *testing.T) {
	vs := volumeSync()
	vs.Spec.Paused = true
	f := newFixture(t, "node-a", vs)
	f.reconcile()
	got := f.get()
	if got.Status.Phase != v1alpha1.PhasePaused || len(f.snapshots()) != 0 || cond(got, v1alpha1.ConditionSyncing).Reason != v1alpha1.ReasonPaused {
		t.Fatalf("paused: %+v", got.Status)
	}

	vs = volumeSync()
	vs.Spec.BandwidthLimit = "fast"
	f = newFixture(t, "node-a", vs)
	f.reconcile()
	if c := cond(f.get(), v1alpha1.ConditionDegraded); c.Reason != v1alpha1.ReasonInvalidSpec || !strings.Contains(c.Message, "bandwidthLimit") {
		t.Fatalf("invalid spec: %+v", c)
	}

	vs = volumeSync()
	vs.Spec.Destination.TLSSecretName = "missing"
	f = newFixture(t, "node-a", vs)
	f.reconcile()
	f.ready(f.get().Status.PendingSnapshot)
	f.reconcile()
	if c := cond(f.get(), v1alpha1.ConditionDegraded); c.Reason != v1alpha1.ReasonSecretInvalid {
		t.Fatalf("missing secret: %+v", c)
	}
	if len(f.syncs) != 0 {
		t.Fatal("synced without TLS")
	}
}

func TestSourceNotFound(t *testing.T) {
	vs := volumeSync()
	vs.Spec.SourcePVC = "nope"
	f := newFixture(t, "node-a", vs)
	res := f.reconcile()
	got := f.get()
	if c := cond(got, v1alpha1.ConditionDegraded); c.Reason != v1alpha1.ReasonSourceNotFound || res.RequeueAfter <= 0 {
		t.Fatalf("Degraded = %+v, result %+v", c, res)
	}
}

func TestTLSFromSecret(t *testing.T) {
	_, err := k8sagent.TLSFromSecret(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "s"}, Data: map[string][]byte{"tls.crt": []byte("x")}}, false)
	if err == nil || !strings.Contains(err.Error(), "ca.crt, tls.key") {
		t.Fatalf("err = %v", err)
	}
}

// TestGroupRound: spec.group reaches the round's HELLO, and a promoted
// target's refusal is reported as ReceiverRefused naming the promotion.
func TestGroupRound(t *testing.T) {
	vs := volumeSync()
	vs.Spec.Group = &v1alpha1.SyncGroup{Name: "app-shop-1a2b3c4d", Members: 2, Promote: true}
	f := newFixture(t, "node-a", vs)
	f.reconcile()
	f.ready(f.get().Status.PendingSnapshot)
	f.syncErr = fmt.Errorf("receiver r refused volume %q: %w", "app-data",
		&transport.RemoteError{Code: transport.ErrCodePromoted, Message: "VolumeTarget dst/data was promoted with group app-shop-1a2b3c4d"})
	f.reconcile()
	if len(f.syncs) != 1 {
		t.Fatalf("%d rounds, want 1", len(f.syncs))
	}
	if g := f.syncs[0].Group; g == nil || *g != (transport.Group{Name: "app-shop-1a2b3c4d", Members: 2, Promote: true}) {
		t.Fatalf("HELLO group %+v", g)
	}
	c := cond(f.get(), v1alpha1.ConditionDegraded)
	if c.Status != metav1.ConditionTrue || c.Reason != v1alpha1.ReasonReceiverRefused || !strings.Contains(c.Message, "promoted") {
		t.Fatalf("Degraded = %+v", c)
	}
}

// TestGroupNotOnEarlierSnapshot: a round whose snapshot was taken before
// spec.group and a new trigger were set is sent without the group; the
// round of the new trigger carries it.
func TestGroupNotOnEarlierSnapshot(t *testing.T) {
	vs := volumeSync()
	vs.Spec.Trigger.Manual = "precopy-3"
	f := newFixture(t, "node-a", vs)
	f.reconcile()
	pending := f.get().Status.PendingSnapshot
	// The orchestrator quiesces, then sets the group and the final trigger in one update.
	cur := f.get()
	cur.Spec.Group = &v1alpha1.SyncGroup{Name: "g-1", Members: 2, Promote: true}
	cur.Spec.Trigger.Manual = "final"
	if err := f.cl.Update(context.Background(), cur); err != nil {
		t.Fatal(err)
	}
	f.ready(pending)
	f.reconcile()
	if len(f.syncs) != 1 || f.syncs[0].Group != nil {
		t.Fatalf("the pre-copy snapshot's round was sent in group %+v", f.syncs[len(f.syncs)-1].Group)
	}
	// The round for "final" follows, with the group.
	f.reconcile()
	f.ready(f.get().Status.PendingSnapshot)
	f.reconcile()
	if len(f.syncs) != 2 || f.syncs[1].Group == nil || f.syncs[1].Group.Name != "g-1" {
		t.Fatalf("rounds %d, the final one's group %+v", len(f.syncs), f.syncs[len(f.syncs)-1].Group)
	}
	if st := f.get().Status; st.LastManualTrigger != "final" {
		t.Fatalf("lastManualTrigger %q", st.LastManualTrigger)
	}
}

// A round of a manual trigger with spec.trigger.snapshotName reads that
// VolumeSnapshot (a member of a group snapshot): it creates none, waits
// until the given one exists and is ready, records it as the base and
// never deletes it, not even when it fails.
func TestGivenSnapshotRound(t *testing.T) {
	vs := volumeSync()
	vs.Spec.Trigger = v1alpha1.Trigger{Manual: "m-final", SnapshotName: "group-member-data"}
	f := newFixture(t, "node-a", vs)
	ctx := context.Background()

	f.reconcile() // the given snapshot does not exist yet: waited for, not created
	if got := f.snapshots(); len(got) != 0 {
		t.Fatalf("snapshots %v, want none created", got)
	}
	if st := f.get().Status; st.PendingSnapshot != "group-member-data" || st.PendingManualTrigger != "m-final" {
		t.Fatalf("status %+v", st)
	}
	pvc := "data"
	if _, err := f.snaps.SnapshotV1().VolumeSnapshots(ns).Create(ctx, &snapv1.VolumeSnapshot{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "group-member-data", Labels: map[string]string{"other": "owner"}},
		Spec:       snapv1.VolumeSnapshotSpec{Source: snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: &pvc}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.reconcile()
	if len(f.syncs) != 0 {
		t.Fatal("synced before the given snapshot was ready")
	}
	f.ready("group-member-data")
	f.reconcile()
	if len(f.syncs) != 1 || len(f.imgs.opened) != 1 || f.imgs.opened[0] != "handle-group-member-data" {
		t.Fatalf("rounds %d, images opened %v", len(f.syncs), f.imgs.opened)
	}
	st := f.get().Status
	if st.BaseSnapshot != "group-member-data" || st.PendingSnapshot != "" || st.LastManualTrigger != "m-final" {
		t.Fatalf("status after the round: %+v", st)
	}
	if got := f.snapshots(); len(got) != 1 || got[0] != "group-member-data" {
		t.Fatalf("snapshots %v", got)
	}

	// The next round (a new trigger without snapshotName) takes its own
	// snapshot; the given one, the base, is not pruned: not the agent's.
	got := f.get()
	got.Spec.Trigger = v1alpha1.Trigger{Manual: "m-next"}
	if err := f.cl.Update(ctx, got); err != nil {
		t.Fatal(err)
	}
	f.reconcile()
	own := f.get().Status.PendingSnapshot
	if own == "" || own == "group-member-data" {
		t.Fatalf("pending %q", own)
	}
	f.ready(own)
	f.reconcile()
	f.reconcile()
	if names := f.snapshots(); len(names) != 2 {
		t.Fatalf("snapshots %v, want the given one kept", names)
	}

	// A given snapshot that fails is reported and read again, not deleted.
	got = f.get()
	got.Spec.Trigger = v1alpha1.Trigger{Manual: "m-again", SnapshotName: "broken"}
	if err := f.cl.Update(ctx, got); err != nil {
		t.Fatal(err)
	}
	msg := "cut failed"
	if _, err := f.snaps.SnapshotV1().VolumeSnapshots(ns).Create(ctx, &snapv1.VolumeSnapshot{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "broken"},
		Spec:       snapv1.VolumeSnapshotSpec{Source: snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: &pvc}},
		Status:     &snapv1.VolumeSnapshotStatus{Error: &snapv1.VolumeSnapshotError{Message: &msg}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.reconcile()
	if c := cond(f.get(), v1alpha1.ConditionDegraded); c.Status != metav1.ConditionTrue || c.Reason != v1alpha1.ReasonSnapshotFailed {
		t.Fatalf("Degraded = %+v", c)
	}
	if _, err := f.snaps.SnapshotV1().VolumeSnapshots(ns).Get(ctx, "broken", metav1.GetOptions{}); err != nil {
		t.Fatalf("the given snapshot was deleted: %v", err)
	}
}
