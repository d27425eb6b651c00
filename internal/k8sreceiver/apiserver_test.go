package k8sreceiver_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
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

const apiVolSize = 1 << 20

// TestGroupPromotionAgainstAPIServer runs the receiver's manager against a
// real kube-apiserver with the permissions deploy/receiver grants it: two
// VolumeTargets, a group of two with Promote sent by the real agent; the
// group is promoted only after the second member committed (PVCs
// annotated, VolumeAttachments deleted, status and conditions as the CRD
// keeps them), further rounds are refused, and spec.rearm re-arms a
// target. The CRD's validation of spec.group is checked on the way.
func TestGroupPromotionAgainstAPIServer(t *testing.T) {
	cp := k8stest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	kube, err := kubernetes.NewForConfig(cp.Config)
	must(t, err)
	s := runtime.NewScheme()
	must(t, v1alpha1.AddToScheme(s))
	cl, err := client.New(cp.Config, client.Options{Scheme: s})
	must(t, err)
	for _, ns := range []string{"dst", "voldelta-system"} {
		_, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		must(t, err)
	}
	ms, err := k8stest.LoadKustomization(filepath.Join(k8stest.RepoRoot(), "deploy", "receiver"), k8stest.ClusterScopedKinds)
	must(t, err)
	must(t, cp.Apply(ctx, ms, false))

	// spec.group as the CRD validates it.
	for _, tc := range []struct {
		name string
		mod  func(*v1alpha1.VolumeSyncSpec)
		want string
	}{
		{"store", func(s *v1alpha1.VolumeSyncSpec) {
			s.Destination = v1alpha1.Destination{Store: &v1alpha1.Store{URL: "s3://b/p", CredentialsSecretName: "c"}}
		}, "group needs a receiver destination"},
		{"members", func(s *v1alpha1.VolumeSyncSpec) { s.Group.Members = 65 }, "members"},
		{"zero", func(s *v1alpha1.VolumeSyncSpec) { s.Group.Members = 0 }, "members"},
		{"name", func(s *v1alpha1.VolumeSyncSpec) { s.Group.Name = "a/b" }, "name"},
		{"ok", nil, ""},
	} {
		vs := &v1alpha1.VolumeSync{ObjectMeta: metav1.ObjectMeta{Namespace: "dst", Name: "v-" + tc.name},
			Spec: v1alpha1.VolumeSyncSpec{SourcePVC: "data",
				Destination: v1alpha1.Destination{Address: "r:7300", TLSSecretName: "tls"},
				Group:       &v1alpha1.SyncGroup{Name: "dst-shop-1a2b3c4d", Members: 2, Promote: true}}}
		if tc.mod != nil {
			tc.mod(&vs.Spec)
		}
		err := cl.Create(ctx, vs, client.DryRunAll)
		if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("VolumeSync with group (%s): %v, want %q", tc.name, err, tc.want)
		}
	}

	host := t.TempDir()
	block := corev1.PersistentVolumeBlock
	for _, m := range []string{"a", "b"} {
		_, err := kube.CoreV1().PersistentVolumes().Create(ctx, &corev1.PersistentVolume{
			ObjectMeta: metav1.ObjectMeta{Name: "pv-" + m},
			Spec: corev1.PersistentVolumeSpec{
				Capacity: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(fmt.Sprint(apiVolSize))}, VolumeMode: &block,
				AccessModes:            []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: csi.LonghornDriver, VolumeHandle: "vol-" + m}},
			}}, metav1.CreateOptions{})
		must(t, err)
		pvc, err := kube.CoreV1().PersistentVolumeClaims("dst").Create(ctx, &corev1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{Namespace: "dst", Name: "replica-" + m},
			Spec: corev1.PersistentVolumeClaimSpec{VolumeName: "pv-" + m, VolumeMode: &block,
				AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(fmt.Sprint(apiVolSize))}}},
		}, metav1.CreateOptions{})
		must(t, err)
		pvc.Status.Phase = corev1.ClaimBound
		_, err = kube.CoreV1().PersistentVolumeClaims("dst").UpdateStatus(ctx, pvc, metav1.UpdateOptions{})
		must(t, err)
		must(t, cl.Create(ctx, &v1alpha1.VolumeTarget{ObjectMeta: metav1.ObjectMeta{Namespace: "dst", Name: m},
			Spec: v1alpha1.VolumeTargetSpec{RemoteVolume: "src-" + m, PVC: "replica-" + m, AllowedIdentities: []string{"agent-a"}}}))
	}

	// The attacher: attaches what the receiver asks for, and the device appears.
	bg, stop := context.WithCancel(ctx)
	attached := make(chan error, 1)
	go func() { attached <- attacher(bg, kube, host) }()
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
	scfg := transport.DefaultConfig()
	scfg.TLS = transport.NewTLS(srvCert.TLS, ca.Pool(), true)
	acfg := transport.DefaultConfig()
	acfg.TLS = transport.NewTLS(agentCert.TLS, ca.Pool(), false)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	mgr, err := k8sreceiver.NewManager(cp.ImpersonatedConfig("voldelta-system", "voldelta-receiver"), k8sreceiver.RunOptions{
		Server:   receiver.Config{StateDir: t.TempDir(), Transport: scfg, Name: "receiver-test"},
		Listener: ln, NodeName: "node-r", HostRoot: host, Attach: true, MetricsAddr: "0", HealthAddr: "0", Logger: log,
	})
	must(t, err)
	mctx, mstop := context.WithCancel(ctx)
	mdone := make(chan error, 1)
	go func() { mdone <- mgr.Start(mctx) }()
	t.Cleanup(func() {
		mstop()
		if err := <-mdone; err != nil {
			t.Errorf("manager: %v", err)
		}
	})

	sources := map[string][]byte{"a": bytes.Repeat([]byte("member a "), apiVolSize/9+1)[:apiVolSize], "b": bytes.Repeat([]byte("b's bytes "), apiVolSize/10+1)[:apiVolSize]}
	params := chunk.DefaultParams()
	params.MinSize, params.AvgSize, params.MaxSize, params.SegmentSize = 4<<10, 8<<10, 16<<10, 1<<20
	group := &transport.Group{Name: "dst-shop-1a2b3c4d", Members: 2, Promote: true}
	round := func(m string, g *transport.Group) (*agent.Stats, error) {
		t.Helper()
		src := filepath.Join(t.TempDir(), m+".img")
		must(t, os.WriteFile(src, sources[m], 0o644))
		var st *agent.Stats
		var err error
		// Until the target is attached (a fresh VolumeTarget), the round is refused as retryable.
		for i := 0; i < 100; i++ {
			st, err = agent.Sync(ctx, agent.Options{Source: src, Addr: ln.Addr().String(), Volume: "src-" + m, Params: params, Transport: acfg, Name: "agent-a", Group: g})
			var re *transport.RemoteError
			if err == nil || !errors.As(err, &re) || !re.Code.Retryable() {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		return st, err
	}
	get := func(m string) *v1alpha1.VolumeTarget {
		t.Helper()
		var vt v1alpha1.VolumeTarget
		must(t, cl.Get(ctx, client.ObjectKey{Namespace: "dst", Name: m}, &vt))
		return &vt
	}
	wait := func(what string, cond func() (bool, string)) {
		t.Helper()
		err := k8stest.Eventually(ctx, func() (bool, string, error) { ok, s := cond(); return ok, s, nil })
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}

	stA, err := round("a", group)
	must(t, err)
	wait("a records its group round", func() (bool, string) {
		vt := get("a")
		c := meta.FindStatusCondition(vt.Status.Conditions, v1alpha1.ConditionPromoted)
		return vt.Status.Group == group.Name && vt.Status.GroupGeneration == 1 && c != nil && c.Reason == v1alpha1.ReasonNotPromoted, fmt.Sprintf("%+v", vt.Status)
	})
	time.Sleep(200 * time.Millisecond)
	if vt := get("a"); vt.Status.Promoted {
		t.Fatalf("a promoted with one of two members: %+v", vt.Status)
	}

	stB, err := round("b", group)
	must(t, err)
	roots := map[string]string{"a": stA.RootHash, "b": stB.RootHash}
	for _, m := range []string{"a", "b"} {
		wait(m+" promoted", func() (bool, string) {
			vt := get(m)
			ok := vt.Status.Promoted && vt.Status.Phase == v1alpha1.PhasePromoted && vt.Status.PromotedGroup == group.Name &&
				vt.Status.PromotedGeneration == 1 && meta.IsStatusConditionTrue(vt.Status.Conditions, v1alpha1.ConditionPromoted)
			return ok, fmt.Sprintf("%+v", vt.Status)
		})
		pvc, err := kube.CoreV1().PersistentVolumeClaims("dst").Get(ctx, "replica-"+m, metav1.GetOptions{})
		must(t, err)
		if a := pvc.Annotations; a[v1alpha1.AnnotationMigration] != group.Name || a[v1alpha1.AnnotationGeneration] != "1" || a[v1alpha1.AnnotationRootHash] != roots[m] {
			t.Fatalf("PVC of %s: %v", m, a)
		}
	}
	wait("VolumeAttachments released", func() (bool, string) {
		l, err := kube.StorageV1().VolumeAttachments().List(ctx, metav1.ListOptions{})
		return err == nil && len(l.Items) == 0, fmt.Sprintf("%d left, %v", len(l.Items), err)
	})
	if _, err := round("a", nil); !errors.Is(err, &transport.RemoteError{Code: transport.ErrCodePromoted}) {
		t.Fatalf("a round to a promoted target: %v", err)
	}

	// Re-arm a: it is attached again and takes rounds.
	vt := get("a")
	vt.Spec.Rearm = "after-test"
	must(t, cl.Update(ctx, vt))
	wait("a re-armed", func() (bool, string) {
		vt := get("a")
		return !vt.Status.Promoted && vt.Status.LastRearm == "after-test" && vt.Status.DevicePath != "", fmt.Sprintf("%+v", vt.Status)
	})
	if _, err := round("a", nil); err != nil {
		t.Fatalf("a round after the re-arm: %v", err)
	}
	if _, err := round("b", nil); !errors.Is(err, &transport.RemoteError{Code: transport.ErrCodePromoted}) {
		t.Fatalf("b (not re-armed): %v", err)
	}
}

func attacher(ctx context.Context, kube kubernetes.Interface, host string) error {
	for {
		l, err := kube.StorageV1().VolumeAttachments().List(ctx, metav1.ListOptions{})
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		for i := range l.Items {
			va := &l.Items[i]
			if va.Status.Attached {
				continue
			}
			pv, err := kube.CoreV1().PersistentVolumes().Get(ctx, *va.Spec.Source.PersistentVolumeName, metav1.GetOptions{})
			if err != nil {
				return err
			}
			dev := filepath.Join(host, "dev", "longhorn", pv.Spec.CSI.VolumeHandle)
			if err := os.MkdirAll(filepath.Dir(dev), 0o755); err != nil {
				return err
			}
			f, err := os.OpenFile(dev, os.O_CREATE|os.O_RDWR, 0o644)
			if err != nil {
				return err
			}
			err = f.Truncate(apiVolSize)
			f.Close()
			if err != nil {
				return err
			}
			va.Status.Attached = true
			if _, err := kube.StorageV1().VolumeAttachments().UpdateStatus(ctx, va, metav1.UpdateOptions{}); err != nil && ctx.Err() == nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}
