package k8stest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	authv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/internal/k8sagent"
	"github.com/voldelta/voldelta/internal/k8sreceiver"
	"github.com/voldelta/voldelta/internal/k8stest"
	"github.com/voldelta/voldelta/internal/pki"
	"github.com/voldelta/voldelta/receiver"
	"github.com/voldelta/voldelta/transport"
)

const chartNS = "voldelta-system"

// helmInstall installs charts/voldelta with `helm install` into the test's
// kube-apiserver, as docs/kubernetes.md says: the namespace first
// (deploy/namespace), then the chart with the receiver on and pinned to
// rcvNode, besides the default agent and Migration controller. Nothing
// waits for pods (no kubelet runs); helm returns once the objects exist.
func helmInstall(t *testing.T, ctx context.Context, c *cluster) {
	ns, err := k8stest.LoadKustomization(filepath.Join(k8stest.RepoRoot(), "deploy", "namespace"), k8stest.ClusterScopedKinds)
	c.must(err)
	c.must(c.cp.Apply(ctx, ns, false))
	home := t.TempDir()
	kubeconfig := filepath.Join(home, "kubeconfig")
	c.must(c.cp.WriteKubeconfig(kubeconfig))
	out, err := k8stest.Helm(ctx, home, "install", "voldelta", k8stest.ChartDir(), "--kubeconfig", kubeconfig,
		"--namespace", chartNS, "--timeout", "2m",
		"--set", "receiver.enabled=true", "--set", `receiver.nodeSelector.kubernetes\.io/hostname=`+rcvNode)
	c.must(err)
	// NOTES.txt: what runs, and no warning about an unpinned receiver.
	for _, want := range []string{"agent DaemonSet voldelta-agent", "Migration controller voldelta-controller",
		"receiver voldelta-receiver, listening on port 7300", "mounts the Secret voldelta-receiver-tls"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("helm install's notes lack %q:\n%s", want, out)
		}
	}
	if strings.Contains(string(out), "WARNING") {
		t.Errorf("helm install's notes warn about a pinned receiver:\n%s", out)
	}
	out, err = k8stest.Helm(ctx, home, "status", "voldelta", "--kubeconfig", kubeconfig, "--namespace", chartNS, "--output", "json")
	c.must(err)
	var st struct {
		Info struct{ Status string } `json:"info"`
	}
	c.must(json.Unmarshal(out, &st))
	if st.Info.Status != "deployed" {
		t.Fatalf("helm status: %s", out)
	}
	// The workloads are there, as helm made them: the receiver pinned.
	ds, err := c.kube.AppsV1().DaemonSets(chartNS).Get(ctx, "voldelta-agent", metav1.GetOptions{})
	c.must(err)
	rcv, err := c.kube.AppsV1().Deployments(chartNS).Get(ctx, "voldelta-receiver", metav1.GetOptions{})
	c.must(err)
	_, err = c.kube.AppsV1().Deployments(chartNS).Get(ctx, "voldelta-controller", metav1.GetOptions{})
	c.must(err)
	if ds.Labels["app.kubernetes.io/managed-by"] != "Helm" || rcv.Spec.Template.Spec.NodeSelector["kubernetes.io/hostname"] != rcvNode {
		t.Fatalf("agent labels %v, receiver nodeSelector %v", ds.Labels, rcv.Spec.Template.Spec.NodeSelector)
	}
}

// TestHelmChartEndToEnd: with charts/voldelta installed by helm, the agent
// and the receiver run with tokens of the ServiceAccounts the chart created
// (so with exactly the RBAC it grants): two rounds of a Longhorn volume
// commit, the second sending only about its change. The agent may make
// tokens for itself (snapshot metadata) and for no other ServiceAccount.
// helm upgrade changes the objects in place; helm uninstall removes the
// ServiceAccounts and keeps the CRDs.
func TestHelmChartEndToEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	w := newWorldInstalled(t, ctx, func(c *cluster) { helmInstall(t, ctx, c) })
	c := w.cluster

	agentCfg, err := c.cp.ServiceAccountConfig(ctx, chartNS, "voldelta-agent")
	c.must(err)
	rcvCfg, err := c.cp.ServiceAccountConfig(ctx, chartNS, "voldelta-receiver")
	c.must(err)
	asAgent, err := kubernetes.NewForConfig(agentCfg)
	c.must(err)
	req := &authv1.TokenRequest{Spec: authv1.TokenRequestSpec{Audiences: []string{"snapshot-metadata"}}}
	_, err = asAgent.CoreV1().ServiceAccounts(chartNS).CreateToken(ctx, "voldelta-agent", req, metav1.CreateOptions{})
	c.must(err)
	if _, err := asAgent.CoreV1().ServiceAccounts(chartNS).CreateToken(ctx, "voldelta-receiver", req, metav1.CreateOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("the agent made a token of the receiver's ServiceAccount: %v", err)
	}

	ca, err := pki.NewCA("voldelta-test", time.Hour)
	c.must(err)
	rcvLeaf, err := ca.Issue("receiver", []string{"127.0.0.1", "localhost"}, time.Hour)
	c.must(err)
	agentLeaf, err := ca.Issue("agent-a", nil, time.Hour)
	c.must(err)
	_, err = c.kube.CoreV1().Secrets(srcNS).Create(ctx, tlsSecret(srcNS, "replica-tls", ca, agentLeaf), metav1.CreateOptions{})
	c.must(err)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	c.must(err)
	tc := transport.DefaultConfig()
	tc.TLS = transport.NewTLS(rcvLeaf.TLS, ca.Pool(), true)
	rmgr, err := k8sreceiver.NewManager(rcvCfg, k8sreceiver.RunOptions{
		Server:   receiver.Config{StateDir: t.TempDir(), Transport: tc, Name: "receiver-helm"},
		Listener: ln, NodeName: rcvNode, HostRoot: w.rcvHost, Attach: true,
		MetricsAddr: "0", HealthAddr: "0", Logger: testLogger(t).With("side", "receiver"),
	})
	c.must(err)
	w.goBG(rmgr.Start)
	amgr, err := k8sagent.NewManager(agentCfg, k8sagent.RunOptions{NodeName: srcNode, HostRoot: w.srcHost, MetricsAddr: "0", HealthAddr: "0",
		Params: w.params, Registry: prometheus.NewRegistry(), Logger: testLogger(t).With("side", "agent")})
	c.must(err)
	w.goBG(amgr.Start)

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

	st := w.waitSynced(vsync, "1").Status
	if st.LastGeneration != 1 || st.Node != srcNode || st.LastBytesSent < 6<<20 || !bytes.Equal(w.targetBytes(), w.want) {
		t.Fatalf("round 1: status %+v, target equal %v", st, bytes.Equal(w.targetBytes(), w.want))
	}
	sent1 := st.LastBytesSent
	change := w.change(3<<20, 64<<10)
	w.trigger(vsync, "2")
	st = w.waitSynced(vsync, "2").Status
	if st.LastGeneration != 2 || st.LastBytesSent <= 0 || st.LastBytesSent > int64(len(change))+2*int64(w.params.MaxSize) || !bytes.Equal(w.targetBytes(), w.want) {
		t.Fatalf("round 2 (a %d-byte change): status %+v, target equal %v", len(change), st, bytes.Equal(w.targetBytes(), w.want))
	}
	t.Logf("round 1 sent %d bytes, round 2 %d for a %d-byte change", sent1, st.LastBytesSent, len(change))

	home := t.TempDir()
	kubeconfig := filepath.Join(home, "kubeconfig")
	c.must(c.cp.WriteKubeconfig(kubeconfig))
	// helm upgrade changes the objects in place: receiver.attach=false
	// drops the VolumeAttachment verbs and passes --attach=false.
	_, err = k8stest.Helm(ctx, home, "upgrade", "voldelta", k8stest.ChartDir(), "--kubeconfig", kubeconfig, "--namespace", chartNS,
		"--reuse-values", "--set", "receiver.attach=false", "--timeout", "2m")
	c.must(err)
	role, err := c.kube.RbacV1().ClusterRoles().Get(ctx, "voldelta-receiver", metav1.GetOptions{})
	c.must(err)
	for _, r := range role.Rules {
		if slices.Contains(r.Resources, "volumeattachments") && slices.Contains(r.Verbs, "create") {
			t.Errorf("after helm upgrade with receiver.attach=false the receiver may still %v volumeattachments", r.Verbs)
		}
	}
	rcv, err := c.kube.AppsV1().Deployments(chartNS).Get(ctx, "voldelta-receiver", metav1.GetOptions{})
	c.must(err)
	if args := rcv.Spec.Template.Spec.Containers[0].Args; !slices.Contains(args, "--attach=false") {
		t.Errorf("receiver args after helm upgrade: %v", args)
	}

	_, err = k8stest.Helm(ctx, home, "uninstall", "voldelta", "--kubeconfig", kubeconfig, "--namespace", chartNS, "--timeout", "2m")
	c.must(err)
	for _, sa := range []string{"voldelta-agent", "voldelta-receiver", "voldelta-controller"} {
		if _, err := c.kube.CoreV1().ServiceAccounts(chartNS).Get(ctx, sa, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("ServiceAccount %s after helm uninstall: %v", sa, err)
		}
	}
	if err := c.cl.Get(ctx, client.ObjectKeyFromObject(vsync), &v1alpha1.VolumeSync{}); err != nil {
		t.Errorf("the VolumeSync after helm uninstall (CRDs are kept): %v", err)
	}
}
