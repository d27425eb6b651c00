package k8sreceiver_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/voldelta/voldelta/agent"
	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/csi"
	"github.com/voldelta/voldelta/internal/k8sreceiver"
	"github.com/voldelta/voldelta/internal/k8stest"
	"github.com/voldelta/voldelta/internal/pki"
	"github.com/voldelta/voldelta/receiver"
	"github.com/voldelta/voldelta/transport"
)

var ctrlLoggerOnce sync.Once

// setCtrlLogger gives controller-runtime's global logger (used by clients
// outside a manager) a handler once per test binary: warnings to stderr,
// instead of its "log.SetLogger(...) was never called" stack dump.
func setCtrlLogger() {
	ctrlLoggerOnce.Do(func() {
		ctrl.SetLogger(logr.FromSlogHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	})
}

// world is a real kube-apiserver with deploy/receiver applied, namespace
// dst, an attacher playing the CSI attacher and Longhorn on node-r, and
// certificates for the receiver and agent "agent-a".
type world struct {
	t    testing.TB
	ctx  context.Context
	cp   *k8stest.ControlPlane
	kube kubernetes.Interface
	cl   client.Client
	host string // the receiver's host root
	ln   net.Listener
	srv  transport.Config
	ag   transport.Config // the agent's
	prm  chunk.Params
	// size is the size of the volumes target makes; apiVolSize unless a
	// benchmark sets it.
	size int64
}

func newWorld(t testing.TB) *world {
	return newWorldWithin(t, 3*time.Minute)
}

// newWorldWithin is newWorld whose waits and calls end after d.
func newWorldWithin(t testing.TB, d time.Duration) *world {
	setCtrlLogger()
	cp := k8stest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	w := &world{t: t, ctx: ctx, cp: cp, host: t.TempDir(), size: apiVolSize}
	var err error
	w.kube, err = kubernetes.NewForConfig(cp.Config)
	must(t, err)
	s := runtime.NewScheme()
	must(t, v1alpha1.AddToScheme(s))
	w.cl, err = client.New(cp.Config, client.Options{Scheme: s})
	must(t, err)
	for _, ns := range []string{"dst", "voldelta-system"} {
		_, err := w.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		must(t, err)
	}
	ms, err := k8stest.LoadKustomization(filepath.Join(k8stest.RepoRoot(), "deploy", "receiver"), k8stest.ClusterScopedKinds)
	must(t, err)
	must(t, cp.Apply(ctx, ms, false))

	bg, stop := context.WithCancel(ctx)
	attached := make(chan error, 1)
	go func() { attached <- attacher(bg, w.kube, w.host) }()
	t.Cleanup(func() {
		stop()
		if err := <-attached; err != nil {
			t.Errorf("attacher: %v", err)
		}
	})

	ca, err := pki.NewCA("test", time.Hour)
	must(t, err)
	srvCert, err := ca.Issue("receiver", []string{"127.0.0.1"}, time.Hour)
	must(t, err)
	agentCert, err := ca.Issue("agent-a", nil, time.Hour)
	must(t, err)
	w.srv = transport.DefaultConfig()
	w.srv.TLS = transport.NewTLS(srvCert.TLS, ca.Pool(), true)
	w.ag = transport.DefaultConfig()
	w.ag.TLS = transport.NewTLS(agentCert.TLS, ca.Pool(), false)
	w.ln, err = net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	w.prm = chunk.DefaultParams()
	w.prm.MinSize, w.prm.AvgSize, w.prm.MaxSize, w.prm.SegmentSize = 4<<10, 8<<10, 16<<10, 1<<20
	return w
}

// target creates PV pv-m, PVC dst/replica-m bound to it and VolumeTarget
// dst/m receiving src-m from agent-a.
func (w *world) target(m string) {
	t, ctx := w.t, w.ctx
	block := corev1.PersistentVolumeBlock
	size := resource.MustParse(fmt.Sprint(w.size))
	_, err := w.kube.CoreV1().PersistentVolumes().Create(ctx, &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: "pv-" + m},
		Spec: corev1.PersistentVolumeSpec{
			Capacity: corev1.ResourceList{corev1.ResourceStorage: size}, VolumeMode: &block,
			AccessModes:            []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: csi.LonghornDriver, VolumeHandle: "vol-" + m}},
		}}, metav1.CreateOptions{})
	must(t, err)
	pvc, err := w.kube.CoreV1().PersistentVolumeClaims("dst").Create(ctx, &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: "dst", Name: "replica-" + m},
		Spec: corev1.PersistentVolumeClaimSpec{VolumeName: "pv-" + m, VolumeMode: &block,
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: size}}},
	}, metav1.CreateOptions{})
	must(t, err)
	pvc.Status.Phase = corev1.ClaimBound
	_, err = w.kube.CoreV1().PersistentVolumeClaims("dst").UpdateStatus(ctx, pvc, metav1.UpdateOptions{})
	must(t, err)
	must(t, w.cl.Create(ctx, &v1alpha1.VolumeTarget{ObjectMeta: metav1.ObjectMeta{Namespace: "dst", Name: m},
		Spec: v1alpha1.VolumeTargetSpec{RemoteVolume: "src-" + m, PVC: "replica-" + m, AllowedIdentities: []string{"agent-a"}}}))
}

// start runs the receiver's manager, as deploy/receiver's ServiceAccount,
// on node-r until the test ends; mod adjusts its options.
func (w *world) start(mod func(*k8sreceiver.RunOptions)) {
	t := w.t
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	o := k8sreceiver.RunOptions{
		Server:   receiver.Config{StateDir: t.TempDir(), Transport: w.srv, Name: "receiver-test"},
		Listener: w.ln, NodeName: "node-r", HostRoot: w.host, Attach: true, MetricsAddr: "0", HealthAddr: "0", Logger: log,
	}
	if mod != nil {
		mod(&o)
	}
	mgr, err := k8sreceiver.NewManager(w.cp.ImpersonatedConfig("voldelta-system", "voldelta-receiver"), o)
	must(t, err)
	mctx, mstop := context.WithCancel(w.ctx)
	mdone := make(chan error, 1)
	go func() { mdone <- mgr.Start(mctx) }()
	t.Cleanup(func() {
		mstop()
		if err := <-mdone; err != nil {
			t.Errorf("manager: %v", err)
		}
	})
}

// round sends data as src-m from agent-a with the agent's transport
// adjusted by mod; until the target is attached (a fresh VolumeTarget)
// the round is refused as retryable and tried again.
func (w *world) round(m string, data []byte, g *transport.Group, mod func(*transport.Config)) (*agent.Stats, error) {
	w.t.Helper()
	src := filepath.Join(w.t.TempDir(), m+".img")
	must(w.t, os.WriteFile(src, data, 0o644))
	tc := w.ag
	if mod != nil {
		mod(&tc)
	}
	var st *agent.Stats
	var err error
	for i := 0; i < 100; i++ {
		st, err = agent.Sync(w.ctx, agent.Options{Source: src, Addr: w.ln.Addr().String(), Volume: "src-" + m, Params: w.prm, Transport: tc, Name: "agent-a", Group: g})
		var re *transport.RemoteError
		if err == nil || !errors.As(err, &re) || !re.Code.Retryable() {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	return st, err
}

// get reads VolumeTarget dst/m.
func (w *world) get(m string) *v1alpha1.VolumeTarget {
	w.t.Helper()
	var vt v1alpha1.VolumeTarget
	must(w.t, w.cl.Get(w.ctx, client.ObjectKey{Namespace: "dst", Name: m}, &vt))
	return &vt
}

// wait fails the test unless cond holds before the world's deadline.
func (w *world) wait(what string, cond func() (bool, string)) {
	w.t.Helper()
	err := k8stest.Eventually(w.ctx, func() (bool, string, error) { ok, s := cond(); return ok, s, nil })
	if err != nil {
		w.t.Fatalf("%s: %v", what, err)
	}
}
