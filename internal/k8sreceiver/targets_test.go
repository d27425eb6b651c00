package k8sreceiver

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	kubefake "k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crfake "sigs.k8s.io/controller-runtime/pkg/client/fake"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/csi"
	"github.com/voldelta/voldelta/receiver"
	"github.com/voldelta/voldelta/transport"
)

type fixture struct {
	t      *testing.T
	tg     *Targets
	cl     client.Client
	kube   *kubefake.Clientset
	host   string
	events *events.FakeRecorder
}

func newFixture(t *testing.T, vts ...client.Object) *fixture {
	t.Helper()
	block := corev1.PersistentVolumeBlock
	pvName := "pv-dst"
	f := &fixture{t: t, host: t.TempDir(), events: events.NewFakeRecorder(100)}
	f.kube = kubefake.NewClientset(
		&corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "dst", Name: "replica"},
			Spec: corev1.PersistentVolumeClaimSpec{VolumeName: pvName}, Status: corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound}},
		&corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: pvName}, Spec: corev1.PersistentVolumeSpec{VolumeMode: &block,
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: csi.LonghornDriver, VolumeHandle: "vol-dst"}}}},
	)
	s := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	f.cl = crfake.NewClientBuilder().WithScheme(s).WithObjects(vts...).WithStatusSubresource(&v1alpha1.VolumeTarget{}).
		WithIndex(&v1alpha1.VolumeTarget{}, indexRemoteVolume, func(o client.Object) []string {
			return []string{o.(*v1alpha1.VolumeTarget).Spec.RemoteVolume}
		}).Build()
	res, err := csi.NewResolver(csi.ResolverOptions{Kube: f.kube, HostRoot: f.host})
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	f.tg, err = New(Options{Client: f.cl, Kube: f.kube, Resolver: res, NodeName: "node-r", StateDir: t.TempDir(), Attach: true, Metrics: m, Recorder: f.events})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func target(name, remote string, allowed ...string) *v1alpha1.VolumeTarget {
	return &v1alpha1.VolumeTarget{ObjectMeta: metav1.ObjectMeta{Namespace: "dst", Name: name, Generation: 1},
		Spec: v1alpha1.VolumeTargetSpec{RemoteVolume: remote, PVC: "replica", AllowedIdentities: allowed}}
}

func (f *fixture) reconcile(name string) ctrl.Result {
	f.t.Helper()
	res, err := f.tg.Reconcile(context.Background(), ctrl.Request{NamespacedName: types.NamespacedName{Namespace: "dst", Name: name}})
	if err != nil {
		f.t.Fatal(err)
	}
	return res
}

func (f *fixture) get(name string) *v1alpha1.VolumeTarget {
	f.t.Helper()
	var vt v1alpha1.VolumeTarget
	if err := f.cl.Get(context.Background(), types.NamespacedName{Namespace: "dst", Name: name}, &vt); err != nil {
		f.t.Fatal(err)
	}
	return &vt
}

// attach plays the attacher: the VolumeAttachment the receiver made is
// attached and the device appears.
func (f *fixture) attach() {
	f.t.Helper()
	ctx := context.Background()
	l, err := f.kube.StorageV1().VolumeAttachments().List(ctx, metav1.ListOptions{})
	if err != nil || len(l.Items) != 1 {
		f.t.Fatalf("VolumeAttachments %v, %v", l, err)
	}
	va := l.Items[0]
	if va.Spec.NodeName != "node-r" || va.Spec.Attacher != csi.LonghornDriver || *va.Spec.Source.PersistentVolumeName != "pv-dst" {
		f.t.Fatalf("VolumeAttachment %+v", va.Spec)
	}
	va.Status.Attached = true
	if _, err := f.kube.StorageV1().VolumeAttachments().UpdateStatus(ctx, &va, metav1.UpdateOptions{}); err != nil {
		f.t.Fatal(err)
	}
	dev := filepath.Join(f.host, "dev", "longhorn", "vol-dst")
	if err := os.MkdirAll(filepath.Dir(dev), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(dev, make([]byte, 4096), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

func TestResolveAttachAndStatus(t *testing.T) {
	f := newFixture(t, target("replica", "src-data", "agent-a"))
	ctx := context.Background()

	if _, err := f.tg.Resolve(ctx, "nope"); !errors.Is(err, receiver.ErrUnknownVolume) {
		t.Fatalf("unknown volume: %v", err)
	}
	if _, err := f.tg.Resolve(ctx, "src-data"); !errors.Is(err, ErrNotAttached) {
		t.Fatalf("before attach: %v", err)
	}

	// The reconciler attaches the volume to its node, with a finalizer.
	res := f.reconcile("replica")
	vt := f.get("replica")
	if res.RequeueAfter <= 0 || vt.Status.Phase != v1alpha1.PhaseDegraded || len(vt.Finalizers) != 1 {
		t.Fatalf("before attach: %+v %+v", res, vt)
	}
	if c := meta.FindStatusCondition(vt.Status.Conditions, v1alpha1.ConditionReady); c == nil || c.Reason != v1alpha1.ReasonTargetUnavailable {
		t.Fatalf("Ready = %+v", c)
	}
	f.attach()
	path, err := f.tg.Resolve(ctx, "src-data")
	if err != nil || path != filepath.Join(f.host, "dev", "longhorn", "vol-dst") {
		t.Fatalf("Resolve = %q, %v", path, err)
	}
	f.reconcile("replica")
	vt = f.get("replica")
	if vt.Status.Phase != v1alpha1.PhasePending || vt.Status.DevicePath != path {
		t.Fatalf("attached, never synced: %+v", vt.Status)
	}

	// Deleting the VolumeTarget detaches the volume and drops the finalizer.
	if err := f.cl.Delete(ctx, vt); err != nil {
		t.Fatal(err)
	}
	f.reconcile("replica")
	l, _ := f.kube.StorageV1().VolumeAttachments().List(ctx, metav1.ListOptions{})
	if len(l.Items) != 0 {
		t.Fatalf("VolumeAttachments left: %d", len(l.Items))
	}
}

func TestAuthorize(t *testing.T) {
	f := newFixture(t, target("replica", "src-data", "agent-a", "spiffe://dc1/agent"))
	for _, tc := range []struct {
		id transport.Identity
		ok bool
	}{
		{transport.Identity{CommonName: "agent-a"}, true},
		{transport.Identity{CommonName: "x", URIs: []string{"spiffe://dc1/agent"}}, true},
		{transport.Identity{CommonName: "agent-b", DNSNames: []string{"agent-b.example"}}, false},
		{transport.Identity{}, false},
	} {
		err := f.tg.Authorize("src-data", tc.id)
		if (err == nil) != tc.ok {
			t.Errorf("%+v: err = %v", tc.id, err)
		}
	}
	if err := f.tg.Authorize("unknown", transport.Identity{CommonName: "agent-a"}); err == nil {
		t.Error("an unknown volume was authorized")
	}
	for i := 0; i < 2; i++ {
		if ev := <-f.events.Events; !strings.HasPrefix(ev, "Warning Forbidden client [") {
			t.Errorf("event %q", ev)
		}
	}
}

func TestAmbiguousRemoteVolume(t *testing.T) {
	f := newFixture(t, target("a", "same", "x"), target("b", "same", "x"))
	if _, err := f.tg.Resolve(context.Background(), "same"); err == nil || !strings.Contains(err.Error(), "refusing to guess") {
		t.Fatalf("err = %v", err)
	}
}

func TestAttachedElsewhere(t *testing.T) {
	f := newFixture(t, target("replica", "src-data", "agent-a"))
	pv := "pv-dst"
	if _, err := f.kube.StorageV1().VolumeAttachments().Create(context.Background(), &storagev1.VolumeAttachment{
		ObjectMeta: metav1.ObjectMeta{Name: "workload"},
		Spec:       storagev1.VolumeAttachmentSpec{Attacher: csi.LonghornDriver, NodeName: "node-x", Source: storagev1.VolumeAttachmentSource{PersistentVolumeName: &pv}},
		Status:     storagev1.VolumeAttachmentStatus{Attached: true},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.reconcile("replica")
	c := meta.FindStatusCondition(f.get("replica").Status.Conditions, v1alpha1.ConditionReady)
	if c == nil || !strings.Contains(c.Message, "in use on node node-x") {
		t.Fatalf("Ready = %+v", c)
	}
	l, _ := f.kube.StorageV1().VolumeAttachments().List(context.Background(), metav1.ListOptions{})
	if len(l.Items) != 1 {
		t.Fatalf("the receiver attached a volume in use elsewhere")
	}
}

// apply runs a local apply of src onto the target (as a network round
// would), failing every fetch when failFetch is set.
func (f *fixture) apply(src []byte, failFetch bool) (receiver.Result, error) {
	f.t.Helper()
	ctx := context.Background()
	p := chunk.DefaultParams()
	p.MinSize, p.AvgSize, p.MaxSize, p.SegmentSize = 4<<10, 8<<10, 16<<10, 1<<20
	m, _, err := chunk.ScanManifest(ctx, bytes.NewReader(src), uint64(len(src)), p, chunk.ScanOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	vol := receiver.Volume{Name: "src-data", Path: filepath.Join(f.host, "dev", "longhorn", "vol-dst"), StateDir: f.tg.o.StateDir}
	r, _, err := receiver.ApplyManifest(ctx, vol, receiver.Options{}, m, "agent-a", 1, func(_ context.Context, i int, e chunk.Entry) ([]byte, error) {
		if failFetch && i > 0 {
			return nil, errors.New("link down")
		}
		return src[e.Offset : e.Offset+e.Length], nil
	})
	return r, err
}

func TestStatusFollowsCommitsAndIncompleteApplies(t *testing.T) {
	f := newFixture(t, target("replica", "src-data", "agent-a"))
	f.reconcile("replica")
	f.attach()

	src := make([]byte, 256<<10)
	for i := range src {
		src[i] = byte(i * 7 / 3)
	}
	r, err := f.apply(src, false)
	if err != nil {
		t.Fatal(err)
	}
	f.tg.OnCommit("src-data", transport.Identity{CommonName: "agent-a"}, r)
	select {
	case ev := <-f.tg.events:
		if ev.Object.GetName() != "replica" {
			t.Fatalf("refresh of %s", ev.Object.GetName())
		}
	default:
		t.Fatal("OnCommit queued no status refresh")
	}
	f.reconcile("replica")
	vt := f.get("replica")
	st := vt.Status
	if st.Phase != v1alpha1.PhaseIdle || st.Generation != 1 || st.RootHash != r.Root.String() || st.Incomplete ||
		st.Size != int64(len(src)) || st.CommittedTime == nil || st.LastWriter != "agent-a" {
		t.Fatalf("after a commit: %+v", st)
	}
	if !meta.IsStatusConditionTrue(vt.Status.Conditions, v1alpha1.ConditionReady) {
		t.Fatalf("Ready: %+v", vt.Status.Conditions)
	}

	// A round that fails midway leaves the target incomplete.
	changed := bytes.Clone(src)
	for i := range changed {
		changed[i] ^= 0xff
	}
	if _, err := f.apply(changed, true); err == nil {
		t.Fatal("the failing apply committed")
	}
	f.reconcile("replica")
	vt = f.get("replica")
	if !vt.Status.Incomplete || vt.Status.Phase != v1alpha1.PhaseSyncing || vt.Status.Generation != 1 {
		t.Fatalf("after a failed apply: %+v", vt.Status)
	}
	if c := meta.FindStatusCondition(vt.Status.Conditions, v1alpha1.ConditionReady); c == nil || c.Status != metav1.ConditionFalse || c.Reason != v1alpha1.ReasonTargetIncomplete {
		t.Fatalf("Ready after a failed apply: %+v", c)
	}
}
