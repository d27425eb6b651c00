package k8stest_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/voldelta/voldelta/agent"
	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/csi"
	"github.com/voldelta/voldelta/internal/k8sagent"
	"github.com/voldelta/voldelta/internal/k8sreceiver"
	"github.com/voldelta/voldelta/internal/k8stest"
	"github.com/voldelta/voldelta/internal/pki"
	"github.com/voldelta/voldelta/receiver"
	"github.com/voldelta/voldelta/transport"
)

const (
	volSize    = 8 << 20
	srcNS      = "src"
	dstNS      = "dst"
	srcNode    = "node-a"
	rcvNode    = "node-r"
	srcHandle  = "pvc-src"
	dstHandle  = "pvc-dst"
	remoteName = "src-data"
)

// cluster holds the clients of a test control plane.
type cluster struct {
	t     *testing.T
	cp    *k8stest.ControlPlane
	kube  kubernetes.Interface
	dyn   dynamic.Interface
	snaps snapclient.Interface
	cl    client.Client
}

func newCluster(t *testing.T) *cluster {
	ctrl.SetLogger(logr.FromSlogHandler(testLogger(t).Handler()))
	cp := k8stest.Start(t)
	c := &cluster{t: t, cp: cp}
	var err error
	if c.kube, err = kubernetes.NewForConfig(cp.Config); err != nil {
		t.Fatal(err)
	}
	if c.dyn, err = dynamic.NewForConfig(cp.Config); err != nil {
		t.Fatal(err)
	}
	if c.snaps, err = snapclient.NewForConfig(cp.Config); err != nil {
		t.Fatal(err)
	}
	s := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if c.cl, err = client.New(cp.Config, client.Options{Scheme: s}); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *cluster) must(err error) {
	c.t.Helper()
	if err != nil {
		c.t.Fatal(err)
	}
}

// boundPVC creates a Longhorn-backed PV and a PVC bound to it.
func (c *cluster) boundPVC(ctx context.Context, ns, name, pv, handle string) {
	c.t.Helper()
	block := corev1.PersistentVolumeBlock
	size := resource.MustParse(fmt.Sprint(volSize))
	_, err := c.kube.CoreV1().PersistentVolumes().Create(ctx, &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: pv},
		Spec: corev1.PersistentVolumeSpec{
			Capacity: corev1.ResourceList{corev1.ResourceStorage: size}, VolumeMode: &block,
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			ClaimRef:    &corev1.ObjectReference{Namespace: ns, Name: name},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
				Driver: csi.LonghornDriver, VolumeHandle: handle}},
		},
	}, metav1.CreateOptions{})
	c.must(err)
	pvc, err := c.kube.CoreV1().PersistentVolumeClaims(ns).Create(ctx, &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, VolumeMode: &block, VolumeName: pv,
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: size}},
		},
	}, metav1.CreateOptions{})
	c.must(err)
	pvc.Status.Phase = corev1.ClaimBound
	_, err = c.kube.CoreV1().PersistentVolumeClaims(ns).UpdateStatus(ctx, pvc, metav1.UpdateOptions{})
	c.must(err)
}

// longhornVolume creates a Longhorn Volume attached to node for the PVC ns/pvc.
func (c *cluster) longhornVolume(ctx context.Context, name, node, ns, pvc, pv string) {
	c.t.Helper()
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "longhorn.io/v1beta2", "kind": "Volume",
		"metadata": map[string]any{"name": name, "namespace": "longhorn-system"},
		"spec":     map[string]any{"size": fmt.Sprint(volSize), "numberOfReplicas": int64(1), "dataLocality": "best-effort"},
	}}
	api := c.dyn.Resource(csi.LonghornVolumes).Namespace("longhorn-system")
	u, err := api.Create(ctx, u, metav1.CreateOptions{})
	c.must(err)
	u.Object["status"] = map[string]any{"currentNodeID": node, "state": "attached",
		"kubernetesStatus": map[string]any{"namespace": ns, "pvcName": pvc, "pvName": pv}}
	_, err = api.UpdateStatus(ctx, u, metav1.UpdateOptions{})
	c.must(err)
}

// snapshotController plays the snapshot controller and Longhorn's CSI
// driver: every new VolumeSnapshot of the source PVC becomes a Longhorn
// snapshot of the replica and a ready content with a snap:// handle.
type snapshotController struct {
	c       *cluster
	replica *k8stest.LonghornReplica
	mu      sync.Mutex // the replica's head is written by the test too
	taken   []string
}

func (s *snapshotController) run(ctx context.Context) error {
	for {
		list, err := s.c.snaps.SnapshotV1().VolumeSnapshots(srcNS).List(ctx, metav1.ListOptions{})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		for i := range list.Items {
			vs := &list.Items[i]
			if vs.Status != nil || vs.DeletionTimestamp != nil {
				continue
			}
			if err := s.take(ctx, vs); err != nil {
				return err
			}
		}
		// Deleting a VolumeSnapshot: the controller would delete its
		// content and the Longhorn snapshot; the content is enough here.
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (s *snapshotController) take(ctx context.Context, vs *snapv1.VolumeSnapshot) error {
	s.mu.Lock()
	err := s.replica.Snapshot(vs.Name)
	s.taken = append(s.taken, vs.Name)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	handle := "snap://" + srcHandle + "/" + vs.Name
	content := "snapcontent-" + string(vs.UID)
	yes := true
	size := int64(volSize)
	vsc, err := s.c.snaps.SnapshotV1().VolumeSnapshotContents().Create(ctx, &snapv1.VolumeSnapshotContent{
		ObjectMeta: metav1.ObjectMeta{Name: content},
		Spec: snapv1.VolumeSnapshotContentSpec{
			Driver: csi.LonghornDriver, DeletionPolicy: snapv1.VolumeSnapshotContentDelete,
			Source:            snapv1.VolumeSnapshotContentSource{VolumeHandle: ptr(srcHandle)},
			VolumeSnapshotRef: corev1.ObjectReference{Kind: "VolumeSnapshot", Namespace: vs.Namespace, Name: vs.Name, UID: vs.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create content: %w", err)
	}
	now := time.Now().UnixNano()
	vsc.Status = &snapv1.VolumeSnapshotContentStatus{SnapshotHandle: &handle, ReadyToUse: &yes, RestoreSize: &size, CreationTime: &now}
	if _, err := s.c.snaps.SnapshotV1().VolumeSnapshotContents().UpdateStatus(ctx, vsc, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("content status: %w", err)
	}
	vs.Status = &snapv1.VolumeSnapshotStatus{BoundVolumeSnapshotContentName: &content, ReadyToUse: &yes}
	if _, err := s.c.snaps.SnapshotV1().VolumeSnapshots(vs.Namespace).UpdateStatus(ctx, vs, metav1.UpdateOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("snapshot status: %w", err) // deleted meanwhile: as the real controller, let it go
	}
	return nil
}

func ptr[T any](v T) *T { return &v }

// attacher plays the CSI external-attacher and Longhorn on the receiver's
// node: a VolumeAttachment to it is marked attached and the volume's device
// appears under the receiver's host root.
func attacher(ctx context.Context, c *cluster, hostRoot string) error {
	for {
		list, err := c.kube.StorageV1().VolumeAttachments().List(ctx, metav1.ListOptions{})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		for i := range list.Items {
			va := &list.Items[i]
			if va.Status.Attached || va.Spec.NodeName != rcvNode {
				continue
			}
			pv, err := c.kube.CoreV1().PersistentVolumes().Get(ctx, *va.Spec.Source.PersistentVolumeName, metav1.GetOptions{})
			if err != nil {
				return err
			}
			dev := filepath.Join(hostRoot, "dev", "longhorn", pv.Spec.CSI.VolumeHandle)
			if err := os.MkdirAll(filepath.Dir(dev), 0o755); err != nil {
				return err
			}
			f, err := os.OpenFile(dev, os.O_CREATE|os.O_RDWR, 0o644)
			if err != nil {
				return err
			}
			err = f.Truncate(volSize)
			f.Close()
			if err != nil {
				return err
			}
			va.Status.Attached = true
			if _, err := c.kube.StorageV1().VolumeAttachments().UpdateStatus(ctx, va, metav1.UpdateOptions{}); err != nil {
				return fmt.Errorf("attach: %w", err)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.DiscardHandler)
}

func tlsSecret(ns, name string, ca *pki.CA, leaf *pki.Leaf) *corev1.Secret {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{"ca.crt": ca.PEM, "tls.crt": leaf.CertPEM, "tls.key": leaf.KeyPEM}}
}

func counterSum(t *testing.T, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

// TestVolumeSyncEndToEnd runs the agent's and the receiver's managers
// against a real kube-apiserver, with the permissions deploy/ grants them: a VolumeSync of a Longhorn PVC (a fake
// replica directory on the agent's "node") reaches Ready, the VolumeTarget's
// device holds the snapshot's bytes, and a second round after a small change
// sends only about the change.
func TestVolumeSyncEndToEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	w := newWorld(t, ctx)
	c, want, params := w.cluster, w.want, w.params

	// TLS: one CA; the receiver's serving cert, agent-a's client cert.
	ca, err := pki.NewCA("voldelta-test", time.Hour)
	c.must(err)
	rcvLeaf, err := ca.Issue("receiver", []string{"127.0.0.1", "localhost"}, time.Hour)
	c.must(err)
	agentLeaf, err := ca.Issue("agent-a", nil, time.Hour)
	c.must(err)
	strangerLeaf, err := ca.Issue("agent-b", nil, time.Hour)
	c.must(err)
	_, err = c.kube.CoreV1().Secrets(srcNS).Create(ctx, tlsSecret(srcNS, "replica-tls", ca, agentLeaf), metav1.CreateOptions{})
	c.must(err)

	// Receiver (Kubernetes mode).
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	c.must(err)
	rcvTLS := transport.NewTLS(rcvLeaf.TLS, ca.Pool(), true)
	rcvCfg := transport.DefaultConfig()
	rcvCfg.TLS = rcvTLS
	// The agent of node-a and the receiver serve controller-runtime's
	// registry over HTTP, as in production.
	rcvReg := crmetrics.Registry
	rcvMetrics, agentMetrics := freeAddr(t), freeAddr(t)
	rmgr, err := k8sreceiver.NewManager(c.cp.ImpersonatedConfig("voldelta-system", "voldelta-receiver"), k8sreceiver.RunOptions{
		Server:   receiver.Config{StateDir: t.TempDir(), Transport: rcvCfg, Name: "receiver-test"},
		Listener: ln, NodeName: rcvNode, HostRoot: w.rcvHost, Attach: true,
		MetricsAddr: rcvMetrics, HealthAddr: "0", Logger: testLogger(t).With("side", "receiver"),
	})
	c.must(err)
	w.goBG(rmgr.Start)

	// Agent of node-a, and an agent of another node that must stay out.
	agentReg := crmetrics.Registry
	agentRounds0 := counterSum(t, agentReg, "voldelta_agent_rounds_total")
	rcvCommits0 := counterSum(t, rcvReg, "voldelta_receiver_commits_total")
	rcvRefused0 := counterSum(t, rcvReg, "voldelta_receiver_refused_total")
	var otherRounds sync.Map
	for _, node := range []string{srcNode, "node-b"} {
		o := k8sagent.RunOptions{NodeName: node, HostRoot: w.srcHost, MetricsAddr: "0", HealthAddr: "0",
			Params: params, Registry: prometheus.NewRegistry(), Logger: testLogger(t).With("side", "agent", "node", node)}
		if node == srcNode {
			o.Registry, o.MetricsAddr = nil, agentMetrics
		} else {
			o.Sync = func(ctx context.Context, opt agent.Options) (*agent.Stats, error) {
				otherRounds.Store(opt.Source, true)
				return nil, errors.New("the agent of another node ran a round")
			}
		}
		amgr, err := k8sagent.NewManager(c.cp.ImpersonatedConfig("voldelta-system", "voldelta-agent"), o)
		c.must(err)
		w.goBG(amgr.Start)
	}

	c.must(c.cl.Create(ctx, &v1alpha1.VolumeTarget{
		ObjectMeta: metav1.ObjectMeta{Namespace: dstNS, Name: "replica"},
		Spec:       v1alpha1.VolumeTargetSpec{RemoteVolume: remoteName, PVC: "replica", AllowedIdentities: []string{"agent-a"}},
	}))
	vsync := &v1alpha1.VolumeSync{
		ObjectMeta: metav1.ObjectMeta{Namespace: srcNS, Name: "data"},
		Spec: v1alpha1.VolumeSyncSpec{
			SourcePVC:               "data",
			Destination:             v1alpha1.Destination{Address: ln.Addr().String(), TLSSecretName: "replica-tls", VolumeName: remoteName},
			Trigger:                 v1alpha1.Trigger{Manual: "1"},
			VolumeSnapshotClassName: "longhorn-snap",
		},
	}
	c.must(c.cl.Create(ctx, vsync))

	// Round 1: everything.
	got := w.waitSynced(vsync, "1")
	st := got.Status
	if st.Phase != v1alpha1.PhaseIdle || st.Node != srcNode || st.LastGeneration != 1 || st.LastRootHash == "" ||
		st.LastSourceBytes != volSize || st.LastBytesSent < 6<<20 || st.LastWireBytes <= 0 ||
		st.LastSyncTime == nil || st.LastSyncStartTime == nil || st.LastSyncDuration == nil ||
		st.BaseSnapshot == "" || st.PendingSnapshot != "" || st.Rounds != 1 || st.ObservedGeneration != got.Generation || st.Progress != nil {
		t.Fatalf("status after round 1: %+v", st)
	}
	if c := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionDegraded); c == nil || c.Status != metav1.ConditionFalse {
		t.Fatalf("Degraded after round 1: %+v", c)
	}
	if !bytes.Equal(w.targetBytes(), want) {
		t.Fatal("round 1: the target does not hold the snapshot's bytes")
	}
	first := st.BaseSnapshot

	var vt v1alpha1.VolumeTarget
	err = k8stest.Eventually(ctx, func() (bool, string, error) {
		if err := c.cl.Get(ctx, client.ObjectKey{Namespace: dstNS, Name: "replica"}, &vt); err != nil {
			return false, "", err
		}
		return vt.Status.Generation == 1 && vt.Status.Phase == v1alpha1.PhaseIdle, fmt.Sprintf("%+v", vt.Status), nil
	})
	c.must(err)
	if vt.Status.RootHash != st.LastRootHash || vt.Status.Incomplete || vt.Status.CommittedTime == nil ||
		vt.Status.LastWriter != "agent-a" || vt.Status.DevicePath == "" || !meta.IsStatusConditionTrue(vt.Status.Conditions, v1alpha1.ConditionReady) {
		t.Fatalf("VolumeTarget status: %+v", vt.Status)
	}

	// Round 2: 64 KiB change; bump the manual trigger.
	change := w.change(3<<20, 64<<10)
	w.trigger(vsync, "2")
	got = w.waitSynced(vsync, "2")
	st2 := got.Status
	// Longhorn's chain names the changed 64 KiB: the scan re-reads a few
	// chunks around it and reuses the rest of the previous manifest, the
	// untouched segment (4-8 MiB) and most of the changed one.
	if st2.LastReusedBytes <= 5<<20 || st2.LastReusedBytes > 8<<20-64<<10 {
		t.Errorf("round 2 reused %d bytes of the previous manifest, want all but about the 64 KiB change of 8 MiB", st2.LastReusedBytes)
	}
	if st2.LastGeneration != 2 || st2.Rounds != 2 || st2.LastRootHash == st.LastRootHash || st2.BaseSnapshot == first {
		t.Fatalf("status after round 2: %+v", st2)
	}
	// Only about the change is sent: at most two max-size chunks around it.
	if st2.LastBytesSent <= 0 || st2.LastBytesSent > int64(len(change))+2*int64(params.MaxSize) {
		t.Fatalf("round 2 sent %d bytes for a %d-byte change", st2.LastBytesSent, len(change))
	}
	if !bytes.Equal(w.targetBytes(), want) {
		t.Fatal("round 2: the target does not hold the snapshot's bytes")
	}
	// The first round's snapshot is kept until the third round has taken
	// its own and read the base's delta (a Longhorn engine's trim punches
	// the snapshots right under the head while a Removed one is below).
	l, err := c.snaps.SnapshotV1().VolumeSnapshots(srcNS).List(ctx, metav1.ListOptions{})
	c.must(err)
	if len(l.Items) != 2 {
		t.Fatalf("snapshots after round 2: %d, want the base and the one before", len(l.Items))
	}

	// controller-runtime's registry is global: compare with what it held
	// before this test (go test -count=N runs it again in one process).
	if n := counterSum(t, agentReg, "voldelta_agent_rounds_total") - agentRounds0; n != 2 {
		t.Errorf("agent rounds_total grew by %v, want 2", n)
	}
	if n := counterSum(t, rcvReg, "voldelta_receiver_commits_total") - rcvCommits0; n != 2 {
		t.Errorf("receiver commits_total grew by %v, want 2", n)
	}
	for addr, want := range map[string]struct {
		series string
		value  float64
	}{
		agentMetrics: {`voldelta_agent_rounds_total{namespace="src",result="success",volumesync="data"}`, agentRounds0 + 2},
		rcvMetrics:   {`voldelta_receiver_commits_total{volume="src-data"}`, rcvCommits0 + 2},
	} {
		body := scrape(t, addr)
		if line := want.series + " " + fmt.Sprint(want.value); !strings.Contains(body, line+"\n") {
			t.Errorf("http://%s/metrics lacks %s", addr, line)
		}
	}
	otherRounds.Range(func(k, _ any) bool { t.Errorf("the agent of node-b ran a round of %v", k); return true })

	// A client whose certificate is not allowed is refused before any write.
	before := w.targetBytes()
	ctls := transport.DefaultConfig()
	ctls.TLS = transport.NewTLS(strangerLeaf.TLS, ca.Pool(), false)
	ctls.TLS.ServerName = "127.0.0.1"
	img := bytes.NewReader(make([]byte, volSize))
	_, err = agent.Sync(ctx, agent.Options{Image: sizedReader{img}, Addr: ln.Addr().String(), Volume: remoteName, Params: params, Transport: ctls})
	var re *transport.RemoteError
	if !errors.As(err, &re) || re.Code != transport.ErrCodeForbidden {
		t.Fatalf("agent-b: err = %v, want the receiver's FORBIDDEN", err)
	}
	if !bytes.Equal(w.targetBytes(), before) {
		t.Fatal("a refused client changed the target")
	}
	if n := counterSum(t, rcvReg, "voldelta_receiver_refused_total") - rcvRefused0; n < 1 {
		t.Errorf("receiver refused_total = %v", n)
	}
	schedule(w, vsync, 24*time.Hour) // a scheduled VolumeSync's series too
	assertQueriesExported(t, func(n string) bool { return !pullMetric(n) }, agentMetrics, rcvMetrics)

	// Both sides record Events (with the RBAC deploy/ grants them).
	for _, want := range []struct{ ns, name, reason string }{
		{srcNS, "data", v1alpha1.ReasonSynced},
		{dstNS, "replica", v1alpha1.ReasonTargetCommitted},
		{dstNS, "replica", "Forbidden"},
	} {
		evCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := k8stest.Eventually(evCtx, func() (bool, string, error) {
			l, err := c.kube.EventsV1().Events(want.ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				return false, "", err
			}
			var seen []string
			for _, e := range l.Items {
				if e.Regarding.Name == want.name && e.Reason == want.reason {
					return true, "", nil
				}
				seen = append(seen, e.Regarding.Name+"/"+e.Reason)
			}
			return false, fmt.Sprintf("events %v", seen), nil
		})
		cancel()
		if err != nil {
			t.Errorf("no %s event on %s/%s: %v", want.reason, want.ns, want.name, err)
		}
	}

	// kubectl voldelta status over both sides (two contexts play the source
	// and the destination cluster): the VolumeSync joined with its target.
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	c.must(c.cp.WriteKubeconfigContexts(kubeconfig, map[string]string{"source": srcNS, "destination": dstNS}))
	plugin := buildPlugin(t)
	out := kubectlVoldelta(t, ctx, plugin, kubeconfig, "status", "--context", "source", "--context", "destination")
	t.Logf("kubectl voldelta status --context source --context destination:\n%s", out)
	wantRow(t, out, "data", "Idle", "2", remoteName, dstNS+"/replica", "0")
	out = kubectlVoldelta(t, ctx, plugin, kubeconfig, "status", "--context", "destination")
	t.Logf("kubectl voldelta status --context destination:\n%s", out)
	wantRow(t, out, "replica", remoteName, "pvc:replica", "Idle", "2")

	// Deleting the VolumeTarget detaches the volume the receiver attached.
	c.must(c.cl.Delete(ctx, &vt))
	err = k8stest.Eventually(ctx, func() (bool, string, error) {
		vas, err := c.kube.StorageV1().VolumeAttachments().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, "", err
		}
		gone := c.cl.Get(ctx, client.ObjectKeyFromObject(&vt), &v1alpha1.VolumeTarget{}) != nil
		return gone && len(vas.Items) == 0, fmt.Sprintf("VolumeTarget gone %v, %d VolumeAttachments", gone, len(vas.Items)), nil
	})
	c.must(err)
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func scrape(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %d %v", addr, resp.StatusCode, err)
	}
	return string(b)
}

type sizedReader struct{ *bytes.Reader }

func (s sizedReader) Size() uint64 { return uint64(s.Reader.Size()) }
