package k8stest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiext "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/voldelta/voldelta/internal/pki"
	"github.com/voldelta/voldelta/internal/toolcache"
)

// ControlPlane is an etcd and a kube-apiserver on loopback. No controllers
// run unless a test starts the real kube-controller-manager
// (StartControllerManager); tests play the snapshot controller, the
// attacher and Longhorn.
type ControlPlane struct {
	// Config authenticates as a member of system:masters.
	Config *rest.Config
	dir    string
	ca     *pki.CA // signs the serving certificates
}

// Binaries returns the paths of etcd and kube-apiserver, or an error saying
// how to get them.
func Binaries() (etcd, apiserver string, err error) {
	etcd = os.Getenv("VOLDELTA_ETCD")
	if etcd == "" {
		etcd, _ = exec.LookPath("etcd")
	}
	apiserver = toolcache.Bin("VOLDELTA_KUBE_APISERVER", "kube-apiserver")
	var missing []string
	if etcd == "" {
		missing = append(missing, "etcd (apt-get install etcd-server, or set VOLDELTA_ETCD)")
	}
	if fi, err := os.Stat(apiserver); err != nil || fi.IsDir() {
		missing = append(missing, "kube-apiserver at "+apiserver+" (run `make tools` or scripts/ensure-kube-apiserver.sh, or set VOLDELTA_KUBE_APISERVER)")
	}
	if len(missing) > 0 {
		return "", "", fmt.Errorf("the Kubernetes integration tests need %s", strings.Join(missing, " and "))
	}
	return etcd, apiserver, nil
}

// RepoRoot is the repository's root directory.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// IsGroupSnapshotCRD says whether a file of CRDFiles is one of the
// groupsnapshot.storage.k8s.io CRDs.
func IsGroupSnapshotCRD(file string) bool {
	return strings.HasPrefix(filepath.Base(file), "groupsnapshot.storage.k8s.io_")
}

// StartOptions change what Start installs.
type StartOptions struct {
	// NoGroupSnapshotAPI leaves out the groupsnapshot.storage.k8s.io CRDs:
	// a cluster whose snapshot controller has no group snapshots.
	NoGroupSnapshotAPI bool
}

// Start runs etcd and kube-apiserver for the test and installs the CRDs:
// voldelta's (deploy/crds), the VolumeSnapshot and VolumeGroupSnapshot
// CRDs of the external-snapshotter module, and a trimmed Longhorn Volume
// CRD. It fails the test (never skips) if a binary is missing. Both
// processes are stopped when the test ends.
func Start(t testing.TB) *ControlPlane {
	t.Helper()
	return StartWith(t, StartOptions{})
}

// StartWith is Start with options.
func StartWith(t testing.TB, o StartOptions) *ControlPlane {
	t.Helper()
	etcdBin, apiBin, err := Binaries()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "voldelta-k8stest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cp := &ControlPlane{dir: dir}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	clientPort, peerPort := freePort(t), freePort(t)
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", clientPort)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	cp.run(t, "etcd", etcdBin,
		"--name", "default", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "default="+peerURL, "--log-level", "warn")

	ca, err := pki.NewCA("voldelta-k8stest", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cp.ca = ca
	serving, err := ca.Issue("kube-apiserver", []string{"127.0.0.1", "localhost"}, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tokenBytes := make([]byte, 16)
	rand.Read(tokenBytes)
	token := hex.EncodeToString(tokenBytes)
	files := map[string][]byte{
		"ca.crt":      ca.PEM,
		"serving.crt": serving.CertPEM,
		"serving.key": serving.KeyPEM,
		"sa.key":      pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(saKey)}),
		"tokens.csv":  []byte(token + ",voldelta-test-admin,voldelta-test-admin,system:masters\n"),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	port := freePort(t)
	apiDone := cp.run(t, "kube-apiserver", apiBin,
		"--etcd-servers", etcdURL,
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--secure-port", fmt.Sprint(port),
		"--tls-cert-file", filepath.Join(dir, "serving.crt"), "--tls-private-key-file", filepath.Join(dir, "serving.key"),
		"--token-auth-file", filepath.Join(dir, "tokens.csv"),
		"--authorization-mode", "RBAC",
		"--service-account-issuer", "https://127.0.0.1", "--service-account-key-file", filepath.Join(dir, "sa.key"),
		"--service-account-signing-key-file", filepath.Join(dir, "sa.key"),
		"--service-cluster-ip-range", "10.96.0.0/24", "--allow-privileged",
		"--cert-dir", filepath.Join(dir, "certs"), "--disable-admission-plugins", "ServiceAccount",
		"--endpoint-reconciler-type", "none",
		"--v", "1")

	cp.Config = &rest.Config{
		Host:            fmt.Sprintf("https://127.0.0.1:%d", port),
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: ca.PEM},
		QPS:             200,
		Burst:           400,
	}
	cp.waitReady(t, ctx, apiDone)
	cp.installCRDs(t, ctx, o)
	return cp
}

// run starts a process whose output goes to a log file, shown if the test
// fails, and stops it at cleanup.
func (cp *ControlPlane) run(t testing.TB, name, bin string, args ...string) <-chan struct{} {
	t.Helper()
	return RunProcess(t, cp.dir, name, bin, args...)
}

// RunProcess starts bin with args, its output in dir/name.log (the tail is
// logged if the test fails), and interrupts it at cleanup (killed after
// 20s). The channel is closed when the process exits.
func RunProcess(t testing.TB, dir, name, bin string, args ...string) <-chan struct{} {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			if len(b) > 12000 {
				b = b[len(b)-12000:]
			}
			t.Logf("%s log (tail):\n%s", name, b)
		}
	})
	return done
}

func (cp *ControlPlane) waitReady(t testing.TB, ctx context.Context, exited <-chan struct{}) {
	t.Helper()
	tr, err := rest.TransportFor(cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	waitHealthy(t, ctx, hc, cp.Config.Host+"/readyz", "kube-apiserver", exited, 3*time.Minute)
}

// waitHealthy polls url until it answers 200, failing the test if name
// exits first (exited closes), ctx ends or within passes.
func waitHealthy(t testing.TB, ctx context.Context, hc *http.Client, url, name string, exited <-chan struct{}, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	var last string
	for time.Now().Before(deadline) {
		resp, err := hc.Get(url)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, b)
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-exited:
			t.Fatalf("%s exited before %s answered (its log follows)", name, url)
		case <-time.After(200 * time.Millisecond):
		}
	}
	t.Fatalf("%s: %s not healthy after %s: %s", name, url, within, last)
}

// CRDFiles lists the CRD manifests Start installs: voldelta's, the
// VolumeSnapshot and VolumeGroupSnapshot CRDs of the external-snapshotter
// module, the trimmed Longhorn Volume CRD.
func CRDFiles() ([]string, error) {
	root := RepoRoot()
	ours, err := filepath.Glob(filepath.Join(root, "deploy", "crds", "*_*.yaml")) // not kustomization.yaml
	if err != nil {
		return nil, err
	}
	snapDir, err := SnapshotterModuleDir()
	if err != nil {
		return nil, err
	}
	snaps, err := filepath.Glob(filepath.Join(snapDir, "config", "crd", "snapshot.storage.k8s.io_*.yaml"))
	if err != nil {
		return nil, err
	}
	groups, err := filepath.Glob(filepath.Join(snapDir, "config", "crd", "groupsnapshot.storage.k8s.io_*.yaml"))
	if err != nil {
		return nil, err
	}
	if len(ours) == 0 || len(snaps) != 3 || len(groups) != 3 {
		return nil, fmt.Errorf("CRDs: found %d of ours, %d VolumeSnapshot and %d VolumeGroupSnapshot CRDs in %s, want 3 each", len(ours), len(snaps), len(groups), snapDir)
	}
	files := append(append(ours, snaps...), groups...)
	return append(files, filepath.Join(root, "internal", "k8stest", "testdata", "longhorn.io_volumes.yaml")), nil
}

// SnapshotterModuleDir is the module cache directory of
// github.com/kubernetes-csi/external-snapshotter/client/v8, whose
// config/crd holds the VolumeSnapshot CRDs of the version we build with.
func SnapshotterModuleDir() (string, error) {
	return moduleDir("github.com/kubernetes-csi/external-snapshotter/client/v8")
}

// moduleDir is the module cache directory of module, at the version the
// repository builds with.
func moduleDir(module string) (string, error) {
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", module)
	cmd.Dir = RepoRoot()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go list -m %s: %v: %s", module, err, stderr.String())
	}
	return strings.TrimSpace(string(out)), nil
}

// DecodeCRD reads one CustomResourceDefinition from a YAML file.
func DecodeCRD(path string) (*apiextv1.CustomResourceDefinition, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var crd apiextv1.CustomResourceDefinition
	if err := utilyaml.NewYAMLOrJSONDecoder(f, 4096).Decode(&crd); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if crd.Kind != "CustomResourceDefinition" {
		return nil, fmt.Errorf("%s: kind %q, want CustomResourceDefinition", path, crd.Kind)
	}
	return &crd, nil
}

func (cp *ControlPlane) installCRDs(t testing.TB, ctx context.Context, o StartOptions) {
	t.Helper()
	files, err := CRDFiles()
	if err != nil {
		t.Fatal(err)
	}
	if o.NoGroupSnapshotAPI {
		files = slices.DeleteFunc(files, IsGroupSnapshotCRD)
	}
	cp.InstallCRDs(t, ctx, files...)
}

// VeleroModuleDir is the module cache directory of
// github.com/vmware-tanzu/velero, at the version voldelta builds with.
func VeleroModuleDir() (string, error) { return moduleDir("github.com/vmware-tanzu/velero") }

// VeleroCRDFiles are Velero's BackupStorageLocation, DeleteBackupRequest,
// DataUpload and DataDownload CRDs, from the module cache directory of
// the github.com/vmware-tanzu/velero version we build with.
func VeleroCRDFiles() ([]string, error) {
	mod, err := VeleroModuleDir()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(mod, "config", "crd")
	var files []string
	for _, f := range []string{"v1/bases/velero.io_backupstoragelocations.yaml", "v1/bases/velero.io_deletebackuprequests.yaml",
		"v2alpha1/bases/velero.io_datauploads.yaml", "v2alpha1/bases/velero.io_datadownloads.yaml"} {
		p := filepath.Join(dir, f)
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("Velero CRD: %w", err)
		}
		files = append(files, p)
	}
	return files, nil
}

// InstallCRDs creates the CRDs of files and waits until they are
// established.
func (cp *ControlPlane) InstallCRDs(t testing.TB, ctx context.Context, files ...string) {
	t.Helper()
	cs, err := apiext.NewForConfig(cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		crd, err := DecodeCRD(f)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cs.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, crd, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("install %s: %v", filepath.Base(f), err)
		}
		names = append(names, crd.Name)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for _, n := range names {
		for {
			crd, err := cs.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, n, metav1.GetOptions{})
			if err == nil && established(crd) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("CRD %s not established: %v", n, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

func established(crd *apiextv1.CustomResourceDefinition) bool {
	for _, c := range crd.Status.Conditions {
		if c.Type == apiextv1.Established && c.Status == apiextv1.ConditionTrue {
			return true
		}
	}
	return false
}

// ErrTimeout is returned by Eventually when the condition did not hold in time.
var ErrTimeout = errors.New("condition not met in time")

// Eventually polls cond every 50ms until it returns true or an error, or
// until ctx ends (then ErrTimeout wrapping cond's last note).
func Eventually(ctx context.Context, cond func() (bool, string, error)) error {
	var note string
	for {
		ok, n, err := cond()
		if err != nil || ok {
			return err
		}
		note = n
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %s", ErrTimeout, note)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Apply creates the objects of ms (server-side dry run if dryRun), with
// strict field validation: the API server rejects unknown or duplicate
// fields.
func (cp *ControlPlane) Apply(ctx context.Context, ms []Manifest, dryRun bool) error {
	dc, err := discovery.NewDiscoveryClientForConfig(cp.Config)
	if err != nil {
		return err
	}
	groups, err := restmapper.GetAPIGroupResources(dc)
	if err != nil {
		return err
	}
	mapper := restmapper.NewDiscoveryRESTMapper(groups)
	dyn, err := dynamic.NewForConfig(cp.Config)
	if err != nil {
		return err
	}
	opts := metav1.CreateOptions{FieldValidation: "Strict"}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	for _, m := range ms {
		gvk := m.Object.GroupVersionKind()
		mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return fmt.Errorf("%s: %w", m.File, err)
		}
		var ri dynamic.ResourceInterface = dyn.Resource(mapping.Resource)
		if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
			ri = dyn.Resource(mapping.Resource).Namespace(m.Object.GetNamespace())
		}
		if _, err := ri.Create(ctx, m.Object, opts); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("%s: %s %s: %w", m.File, gvk.Kind, m.Object.GetName(), err)
		}
	}
	return nil
}

// ImpersonatedConfig returns a copy of the admin config acting as the
// service account namespace/name, so that a test runs a component with
// exactly the permissions its RBAC manifests grant.
func (cp *ControlPlane) ImpersonatedConfig(namespace, name string) *rest.Config {
	c := rest.CopyConfig(cp.Config)
	c.Impersonate = rest.ImpersonationConfig{
		UserName: "system:serviceaccount:" + namespace + ":" + name,
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"},
	}
	return c
}

// ControllerManagerBinary returns the path of kube-controller-manager, or an
// error saying how to get it.
func ControllerManagerBinary() (string, error) {
	bin := toolcache.Bin("VOLDELTA_KUBE_CONTROLLER_MANAGER", "kube-controller-manager")
	if fi, err := os.Stat(bin); err != nil || fi.IsDir() {
		return "", fmt.Errorf("the test needs kube-controller-manager at %s: run `make tools` or scripts/ensure-kube-controller-manager.sh, or set VOLDELTA_KUBE_CONTROLLER_MANAGER", bin)
	}
	return bin, nil
}

// DefaultControllers are the kube-controller-manager controllers
// StartControllerManager runs when the test names none: Deployments,
// ReplicaSets, StatefulSets and the garbage collector (which deletes the
// ReplicaSets and Pods whose owners are gone).
var DefaultControllers = []string{"deployment", "replicaset", "statefulset", "garbagecollector"}

// StartControllerManager runs the real kube-controller-manager against the
// control plane, with only the named controllers (DefaultControllers if
// none), as system:masters, without leader election, serving /healthz on a
// free loopback port with a certificate of the control plane's CA. It
// returns once /healthz answers ok, and fails the test (never skips) if the
// binary is missing. No kubelet or scheduler runs: Pods the controllers
// create stay Pending, and an unscheduled Pod is deleted at once. The
// process is stopped when the test ends.
func (cp *ControlPlane) StartControllerManager(t testing.TB, controllers ...string) {
	t.Helper()
	bin, err := ControllerManagerBinary()
	if err != nil {
		t.Fatal(err)
	}
	if len(controllers) == 0 {
		controllers = DefaultControllers
	}
	dir, err := os.MkdirTemp(cp.dir, "kcm-")
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: cp.Config.Host, CertificateAuthorityData: cp.Config.CAData}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: cp.Config.BearerToken}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "admin"}
	kc.CurrentContext = "test"
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		t.Fatal(err)
	}
	serving, err := cp.ca.Issue("kube-controller-manager", []string{"127.0.0.1", "localhost"}, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"serving.crt": serving.CertPEM, "serving.key": serving.KeyPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	port := freePort(t)
	done := cp.run(t, "kube-controller-manager", bin,
		"--kubeconfig", kubeconfig,
		// Delegated authentication and authorization of its own
		// endpoints go to the test apiserver too; /healthz is always
		// allowed (the default --authorization-always-allow-paths).
		"--authentication-kubeconfig", kubeconfig, "--authorization-kubeconfig", kubeconfig,
		"--authentication-skip-lookup",
		"--bind-address", "127.0.0.1", "--secure-port", fmt.Sprint(port),
		"--tls-cert-file", filepath.Join(dir, "serving.crt"), "--tls-private-key-file", filepath.Join(dir, "serving.key"),
		"--leader-elect=false",
		"--controllers", strings.Join(controllers, ","),
		"--use-service-account-credentials=false",
		"--v", "1")

	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: cp.ca.Pool()}}}
	defer hc.CloseIdleConnections()
	waitHealthy(t, context.Background(), hc, fmt.Sprintf("https://127.0.0.1:%d/healthz", port), "kube-controller-manager", done, 2*time.Minute)
}
