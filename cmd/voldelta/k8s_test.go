package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"

	corev1 "k8s.io/api/core/v1"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/internal/k8stest"
	"github.com/voldelta/voldelta/internal/pki"
)

func TestK8sCommandsUsage(t *testing.T) {
	t.Setenv("NODE_NAME", "")
	for _, args := range [][]string{
		{"agent"},
		{"agent", "--node", "n", "--chunk-avg", "3"},
		{"k8s-receiver", "--node", "n", "--state-dir", "d", "--tls-ca", "ca.pem"}, // TLS without --listen
		{"k8s-receiver", "--node", "n", "--state-dir", "d", "--pull-parallel", "0"},
		{"k8s-receiver", "--listen", ":0", "--state-dir", "d"},
		{"k8s-receiver", "--listen", ":0", "--node", "n", "--state-dir", "d"}, // no TLS
	} {
		if code := run(context.Background(), args); code != exitUsage {
			t.Errorf("%v: exit %d, want %d", args, code, exitUsage)
		}
	}
}

// TestK8sCommandsAgainstAPIServer runs `voldelta agent` and
// `voldelta k8s-receiver` against a real kube-apiserver through a
// kubeconfig file, and sees each report on an object it was given.
func TestK8sCommandsAgainstAPIServer(t *testing.T) {
	cp := k8stest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: cp.Config.Host, CertificateAuthorityData: cp.Config.CAData}
	kc.AuthInfos["test"] = &clientcmdapi.AuthInfo{Token: cp.Config.BearerToken}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test"}
	kc.CurrentContext = "test"
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		t.Fatal(err)
	}
	files, err := pki.WriteDir(filepath.Join(dir, "pki"), []string{"127.0.0.1"}, "agent", time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	kube, err := kubernetes.NewForConfig(cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "app"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	s := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(cp.Config, client.Options{Scheme: s})
	if err != nil {
		t.Fatal(err)
	}

	stderr = os.Stderr
	cmdCtx, stop := context.WithCancel(ctx)
	codes := make(chan int, 2)
	go func() {
		codes <- run(cmdCtx, []string{"agent", "--kubeconfig", kubeconfig, "--node", "node-a",
			"--metrics-addr", "0", "--health-addr", "0", "--log-level", "warn"})
	}()
	go func() {
		codes <- run(cmdCtx, []string{"k8s-receiver", "--kubeconfig", kubeconfig, "--node", "node-r",
			"--listen", "127.0.0.1:0", "--state-dir", filepath.Join(dir, "state"),
			"--tls-cert", files.ServerCert, "--tls-key", files.ServerKey, "--tls-ca", files.CA,
			"--metrics-addr", "0", "--health-addr", "0", "--log-level", "warn"})
	}()

	// Neither object can be served (no PVC): each component says so in status.
	vs := &v1alpha1.VolumeSync{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "data"},
		Spec: v1alpha1.VolumeSyncSpec{SourcePVC: "missing", Destination: v1alpha1.Destination{Address: "127.0.0.1:1", TLSSecretName: "tls"}}}
	vt := &v1alpha1.VolumeTarget{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "data"},
		Spec: v1alpha1.VolumeTargetSpec{RemoteVolume: "app-data", PVC: "missing", AllowedIdentities: []string{"agent"}}}
	for _, o := range []client.Object{vs, vt} {
		if err := cl.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	err = k8stest.Eventually(ctx, func() (bool, string, error) {
		select {
		case code := <-codes:
			t.Fatalf("a command exited early with %d", code)
		default:
		}
		if err := cl.Get(ctx, client.ObjectKeyFromObject(vs), vs); err != nil {
			return false, "", err
		}
		if err := cl.Get(ctx, client.ObjectKeyFromObject(vt), vt); err != nil {
			return false, "", err
		}
		sc := meta.FindStatusCondition(vs.Status.Conditions, v1alpha1.ConditionDegraded)
		tc := meta.FindStatusCondition(vt.Status.Conditions, v1alpha1.ConditionReady)
		ok := sc != nil && sc.Reason == v1alpha1.ReasonSourceNotFound && tc != nil && tc.Reason == v1alpha1.ReasonTargetUnavailable
		return ok, "VolumeSync " + string(vs.Status.Phase) + ", VolumeTarget " + string(vt.Status.Phase), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	stop()
	for i := 0; i < 2; i++ {
		if code := <-codes; code != exitOK {
			t.Errorf("a command exited with %d after SIGTERM's context ended, want 0", code)
		}
	}
}
