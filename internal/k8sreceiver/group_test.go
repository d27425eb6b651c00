package k8sreceiver

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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

	"github.com/voldelta/voldelta/agent"
	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/csi"
	"github.com/voldelta/voldelta/internal/pki"
	"github.com/voldelta/voldelta/receiver"
	"github.com/voldelta/voldelta/transport"
)

// groupWorld is a receiver in Kubernetes mode serving VolumeTargets over
// mutual TLS on loopback (the real receiver.Server and agent.Sync), with
// fake API clients: one VolumeTarget, PVC, PV and device per member.
type groupWorld struct {
	t        *testing.T
	tg       *Targets
	cl       client.Client
	kube     *kubefake.Clientset
	host     string
	events   *events.FakeRecorder
	addr     string
	agentTLS transport.Config
	sources  map[string][]byte // member → its source image
}

const groupSize = 256 << 10

func newGroupWorld(t *testing.T, members ...string) *groupWorld {
	t.Helper()
	w := &groupWorld{t: t, host: t.TempDir(), events: events.NewFakeRecorder(200), sources: map[string][]byte{}}
	block := corev1.PersistentVolumeBlock
	var objs []runtime.Object
	var vts []client.Object
	for _, m := range members {
		pv := "pv-" + m
		objs = append(objs,
			&corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "dst", Name: "replica-" + m},
				Spec: corev1.PersistentVolumeClaimSpec{VolumeName: pv}, Status: corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound}},
			&corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: pv}, Spec: corev1.PersistentVolumeSpec{VolumeMode: &block,
				PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: csi.LonghornDriver, VolumeHandle: "vol-" + m}}}})
		vts = append(vts, &v1alpha1.VolumeTarget{ObjectMeta: metav1.ObjectMeta{Namespace: "dst", Name: m, Generation: 1},
			Spec: v1alpha1.VolumeTargetSpec{RemoteVolume: "src-" + m, PVC: "replica-" + m, AllowedIdentities: []string{"agent-a"}}})
		dev := filepath.Join(w.host, "dev", "longhorn", "vol-"+m)
		if err := os.MkdirAll(filepath.Dir(dev), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dev, make([]byte, groupSize), 0o644); err != nil {
			t.Fatal(err)
		}
		src := make([]byte, groupSize)
		var seed [32]byte
		copy(seed[:], m)
		rand.NewChaCha8(seed).Read(src[:groupSize/2])
		w.sources[m] = src
	}
	w.kube = kubefake.NewClientset(objs...)
	s := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	w.cl = crfake.NewClientBuilder().WithScheme(s).WithObjects(vts...).WithStatusSubresource(&v1alpha1.VolumeTarget{}).
		WithIndex(&v1alpha1.VolumeTarget{}, indexRemoteVolume, func(o client.Object) []string {
			return []string{o.(*v1alpha1.VolumeTarget).Spec.RemoteVolume}
		}).Build()
	res, err := csi.NewResolver(csi.ResolverOptions{Kube: w.kube, HostRoot: w.host})
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	stateDir := t.TempDir()
	w.tg, err = New(Options{Client: w.cl, Kube: w.kube, Resolver: res, NodeName: "node-r", StateDir: stateDir, Attach: true, Metrics: m, Recorder: w.events})
	if err != nil {
		t.Fatal(err)
	}
	// The reconciler attaches every target; the test plays the attacher.
	for _, m := range members {
		w.reconcile(m)
	}
	w.attachAll()
	for _, m := range members {
		w.reconcile(m)
		if st := w.get(m).Status; st.Phase != v1alpha1.PhasePending {
			t.Fatalf("%s attached: %+v", m, st)
		}
	}

	ca, err := pki.NewCA("test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srvCert, err := ca.Issue("receiver", []string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	agentCert, err := ca.Issue("agent-a", nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	scfg := transport.DefaultConfig()
	scfg.TLS = transport.NewTLS(srvCert.TLS, ca.Pool(), true)
	w.agentTLS = transport.DefaultConfig()
	w.agentTLS.TLS = transport.NewTLS(agentCert.TLS, ca.Pool(), false)
	srv, err := receiver.New(receiver.Config{StateDir: stateDir, Transport: scfg, Name: "test-receiver", Groups: true,
		Resolve: w.tg.Resolve, Authorize: w.tg.Authorize, OnCommit: w.tg.OnCommit,
		Logger: slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("receiver: %v", err)
		}
	})
	return w
}

type logWriter struct{ t *testing.T }

func (l logWriter) Write(b []byte) (int, error) {
	l.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

func (w *groupWorld) reconcile(name string) {
	w.t.Helper()
	if _, err := w.tg.Reconcile(context.Background(), ctrl.Request{NamespacedName: types.NamespacedName{Namespace: "dst", Name: name}}); err != nil {
		w.t.Fatalf("reconcile %s: %v", name, err)
	}
}

func (w *groupWorld) get(name string) *v1alpha1.VolumeTarget {
	w.t.Helper()
	var vt v1alpha1.VolumeTarget
	if err := w.cl.Get(context.Background(), types.NamespacedName{Namespace: "dst", Name: name}, &vt); err != nil {
		w.t.Fatal(err)
	}
	return &vt
}

func (w *groupWorld) pvc(name string) *corev1.PersistentVolumeClaim {
	w.t.Helper()
	p, err := w.kube.CoreV1().PersistentVolumeClaims("dst").Get(context.Background(), "replica-"+name, metav1.GetOptions{})
	if err != nil {
		w.t.Fatal(err)
	}
	return p
}

// attachAll plays the attacher: every VolumeAttachment is attached.
func (w *groupWorld) attachAll() {
	w.t.Helper()
	ctx := context.Background()
	l, err := w.kube.StorageV1().VolumeAttachments().List(ctx, metav1.ListOptions{})
	if err != nil {
		w.t.Fatal(err)
	}
	for _, va := range l.Items {
		va.Status.Attached = true
		if _, err := w.kube.StorageV1().VolumeAttachments().UpdateStatus(ctx, &va, metav1.UpdateOptions{}); err != nil {
			w.t.Fatal(err)
		}
	}
}

func (w *groupWorld) attachments() []storagev1.VolumeAttachment {
	w.t.Helper()
	l, err := w.kube.StorageV1().VolumeAttachments().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		w.t.Fatal(err)
	}
	return l.Items
}

// round sends member's source with the real agent, in group g (nil: none),
// and reconciles the member as its OnCommit asks.
func (w *groupWorld) round(member string, g *transport.Group) (*agent.Stats, error) {
	w.t.Helper()
	src := filepath.Join(w.t.TempDir(), member+".img")
	if err := os.WriteFile(src, w.sources[member], 0o644); err != nil {
		w.t.Fatal(err)
	}
	p := chunk.DefaultParams()
	p.MinSize, p.AvgSize, p.MaxSize, p.SegmentSize = 4<<10, 8<<10, 16<<10, 1<<20
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := agent.Sync(ctx, agent.Options{Source: src, Addr: w.addr, Volume: "src-" + member, Params: p,
		Transport: w.agentTLS, Name: "agent-a", Group: g})
	w.drain()
	w.reconcile(member)
	return st, err
}

// interruptedApply starts a round of member's source on its target and
// breaks it off after the first chunk, as a lost connection would.
func (w *groupWorld) interruptedApply(member string) {
	w.t.Helper()
	ctx := context.Background()
	p := chunk.DefaultParams()
	p.MinSize, p.AvgSize, p.MaxSize, p.SegmentSize = 4<<10, 8<<10, 16<<10, 1<<20
	src := w.sources[member]
	m, _, err := chunk.ScanManifest(ctx, bytes.NewReader(src), uint64(len(src)), p, chunk.ScanOptions{})
	if err != nil {
		w.t.Fatal(err)
	}
	vol := receiver.Volume{Name: "src-" + member, Path: filepath.Join(w.host, "dev", "longhorn", "vol-"+member), StateDir: w.tg.o.StateDir}
	_, _, err = receiver.ApplyManifest(ctx, vol, receiver.Options{}, m, "agent-a", 1, func(_ context.Context, i int, e chunk.Entry) ([]byte, error) {
		if i > 0 {
			return nil, errors.New("link down")
		}
		return src[e.Offset : e.Offset+e.Length], nil
	})
	if err == nil {
		w.t.Fatal("the interrupted apply committed")
	}
}

// drain empties the refresh queue OnCommit fills.
func (w *groupWorld) drain() {
	for {
		select {
		case <-w.tg.events:
		default:
			return
		}
	}
}

// change alters member's source so that its next round writes.
func (w *groupWorld) change(member string, seed byte) {
	src := w.sources[member]
	for i := 0; i < len(src); i += 4096 {
		src[i] ^= seed
	}
}

func promoted(vt *v1alpha1.VolumeTarget) bool {
	return vt.Status.Promoted && meta.IsStatusConditionTrue(vt.Status.Conditions, v1alpha1.ConditionPromoted) && vt.Status.Phase == v1alpha1.PhasePromoted
}

// TestGroupPromotion: a group of two with Promote is promoted only when
// both members committed their final round; then both PVCs are
// annotated and released and further rounds are refused (ERROR 15), until
// spec.rearm changes.
func TestGroupPromotion(t *testing.T) {
	w := newGroupWorld(t, "a", "b")
	// Pre-copy rounds, no group.
	for _, m := range []string{"a", "b"} {
		if _, err := w.round(m, nil); err != nil {
			t.Fatalf("pre-copy %s: %v", m, err)
		}
	}
	g := &transport.Group{Name: "dst-shop-1a2b3c4d", Members: 2, Promote: true}

	w.change("a", 1)
	st, err := w.round("a", g)
	if err != nil {
		t.Fatalf("final round of a: %v", err)
	}
	a := w.get("a")
	if promoted(a) || a.Status.Group != g.Name || a.Status.GroupGeneration != 2 || a.Status.GroupMembers != 2 || !a.Status.GroupPromote ||
		a.Status.Generation != 2 || a.Status.RootHash != st.RootHash {
		t.Fatalf("a after its final round: %+v", a.Status)
	}
	if c := meta.FindStatusCondition(a.Status.Conditions, v1alpha1.ConditionPromoted); c == nil || c.Status != metav1.ConditionFalse || !strings.Contains(c.Message, "1 of 2") {
		t.Fatalf("a's Promoted condition with one of two members: %+v", c)
	}
	if _, ok := w.pvc("a").Annotations[v1alpha1.AnnotationMigration]; ok || len(w.attachments()) != 2 {
		t.Fatalf("a promoted early: annotations %v, %d attachments", w.pvc("a").Annotations, len(w.attachments()))
	}

	w.change("b", 2)
	stB, err := w.round("b", g)
	if err != nil {
		t.Fatalf("final round of b: %v", err)
	}
	roots := map[string]string{"a": st.RootHash, "b": stB.RootHash}
	for _, m := range []string{"a", "b"} {
		vt := w.get(m)
		if !promoted(vt) || vt.Status.PromotedGroup != g.Name || vt.Status.PromotedGeneration != 2 || vt.Status.PromotedTime == nil || vt.Status.DevicePath != "" {
			t.Fatalf("%s after the group committed: %+v", m, vt.Status)
		}
		ann := w.pvc(m).Annotations
		if ann[v1alpha1.AnnotationMigration] != g.Name || ann[v1alpha1.AnnotationGeneration] != "2" || ann[v1alpha1.AnnotationRootHash] != roots[m] {
			t.Fatalf("PVC of %s: annotations %v", m, ann)
		}
		// Its state and device are as committed.
		got, err := os.ReadFile(filepath.Join(w.host, "dev", "longhorn", "vol-"+m))
		if err != nil || !bytes.Equal(got, w.sources[m]) {
			t.Fatalf("device of %s differs from its source (%v)", m, err)
		}
	}
	if n := len(w.attachments()); n != 0 {
		t.Fatalf("%d VolumeAttachments left after the promotion", n)
	}
	var promotedEvents int
	for len(w.events.Events) > 0 {
		if ev := <-w.events.Events; strings.HasPrefix(ev, "Normal Promoted") {
			promotedEvents++
		}
	}
	if promotedEvents != 2 {
		t.Fatalf("%d Promoted events, want 2", promotedEvents)
	}

	// Promoted targets refuse rounds, with or without a group, and a
	// reconcile neither attaches them again nor unpromotes them.
	for _, gr := range []*transport.Group{nil, g} {
		_, err := w.round("a", gr)
		var re *transport.RemoteError
		if !errors.As(err, &re) || re.Code != transport.ErrCodePromoted || re.Code.Retryable() || !strings.Contains(re.Message, "spec.rearm") {
			t.Fatalf("a round to a promoted target: %v, want ERROR 15 (promoted)", err)
		}
	}
	w.reconcile("a")
	if !promoted(w.get("a")) || len(w.attachments()) != 0 {
		t.Fatalf("a reconcile undid the promotion: %+v, %d attachments", w.get("a").Status, len(w.attachments()))
	}

	// Re-arm a: it is attached again and takes rounds; b stays promoted.
	a = w.get("a")
	a.Spec.Rearm = "1"
	if err := w.cl.Update(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	w.reconcile("a") // re-armed; attaches again
	w.attachAll()
	w.reconcile("a")
	a = w.get("a")
	if a.Status.Promoted || a.Status.LastRearm != "1" || a.Status.PromotedGeneration != 2 {
		t.Fatalf("a after the re-arm: %+v", a.Status)
	}
	if c := meta.FindStatusCondition(a.Status.Conditions, v1alpha1.ConditionPromoted); c == nil || c.Status != metav1.ConditionFalse || c.Reason != v1alpha1.ReasonRearmed {
		t.Fatalf("Promoted after the re-arm: %+v", c)
	}
	w.change("a", 3)
	if _, err := w.round("a", nil); err != nil {
		t.Fatalf("a round after the re-arm: %v", err)
	}
	if a = w.get("a"); a.Status.Generation != 3 || a.Status.Group != "" || promoted(a) {
		t.Fatalf("a after a round past the re-arm: %+v", a.Status)
	}
	if _, err := w.round("b", nil); !errors.Is(err, &transport.RemoteError{Code: transport.ErrCodePromoted}) {
		t.Fatalf("b, not re-armed: %v", err)
	}
}

// TestGroupMemberFails: a member whose final round fails leaves the whole
// group unpromoted; its successful retry promotes it.
func TestGroupMemberFails(t *testing.T) {
	w := newGroupWorld(t, "a", "b")
	for _, m := range []string{"a", "b"} {
		if _, err := w.round(m, nil); err != nil {
			t.Fatalf("pre-copy %s: %v", m, err)
		}
	}
	g := &transport.Group{Name: "dst-shop-5e6f", Members: 2, Promote: true}
	if _, err := w.round("a", g); err != nil {
		t.Fatal(err)
	}
	// b's final round fails: its target is not attached to this node any
	// more (an operator detached it), so the round is refused.
	for _, va := range w.attachments() {
		if *va.Spec.Source.PersistentVolumeName == "pv-b" {
			va.Status.Attached = false
			if _, err := w.kube.StorageV1().VolumeAttachments().UpdateStatus(context.Background(), &va, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := w.round("b", g); err == nil {
		t.Fatal("b's round to a detached target committed")
	}
	for _, m := range []string{"a", "b"} {
		if vt := w.get(m); vt.Status.Promoted || vt.Status.PromotedGroup != "" {
			t.Fatalf("%s promoted although b failed: %+v", m, vt.Status)
		}
		if ann := w.pvc(m).Annotations; len(ann) != 0 {
			t.Fatalf("PVC of %s annotated although b failed: %v", m, ann)
		}
	}
	if b := w.get("b"); b.Status.Group != "" || b.Status.Generation != 1 {
		t.Fatalf("b records a group it did not commit: %+v", b.Status)
	}
	// Then a round of b breaks off midway: b is incomplete, still no promotion.
	w.attachAll()
	w.change("b", 4)
	w.interruptedApply("b")
	w.reconcile("b")
	w.reconcile("a")
	if b := w.get("b"); !b.Status.Incomplete || b.Status.Promoted || w.get("a").Status.Promoted {
		t.Fatalf("after b's interrupted round: b %+v, a promoted %v", b.Status, w.get("a").Status.Promoted)
	}
	// a's round of the group is still its last commit; b's retry completes it.
	if _, err := w.round("b", g); err != nil {
		t.Fatalf("b's retry: %v", err)
	}
	w.reconcile("a")
	for _, m := range []string{"a", "b"} {
		if !promoted(w.get(m)) {
			t.Fatalf("%s not promoted after b's retry: %+v", m, w.get(m).Status)
		}
	}
}

// TestGroupNotPromotedWithoutPromote: rounds of a group without Promote
// are recorded and promote nothing; neither does a group whose members
// disagree on its size.
func TestGroupNotPromoted(t *testing.T) {
	w := newGroupWorld(t, "a", "b")
	for i, g := range []*transport.Group{{Name: "g1", Members: 2}, {Name: "g1", Members: 2}} {
		m := []string{"a", "b"}[i]
		if _, err := w.round(m, g); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range []string{"a", "b"} {
		if vt := w.get(m); vt.Status.Promoted || vt.Status.Group != "g1" || vt.Status.GroupPromote {
			t.Fatalf("%s after a group round without Promote: %+v", m, vt.Status)
		}
	}
	if _, err := w.round("a", &transport.Group{Name: "g2", Members: 2, Promote: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.round("b", &transport.Group{Name: "g2", Members: 3, Promote: true}); err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"a", "b"} {
		if vt := w.get(m); vt.Status.Promoted {
			t.Fatalf("%s promoted by members disagreeing on the group size: %+v", m, vt.Status)
		}
	}
	found := false
	for len(w.events.Events) > 0 {
		if ev := <-w.events.Events; strings.HasPrefix(ev, "Warning GroupConflict") {
			found = true
		}
	}
	if !found {
		t.Fatal("no GroupConflict event")
	}
}
