package snapmeta

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	apiext "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/voldelta/voldelta/internal/k8stest"
	"github.com/voldelta/voldelta/internal/pki"
	"github.com/voldelta/voldelta/internal/toolcache"
)

// sidecarBinary returns the csi-snapshot-metadata sidecar built by
// scripts/ensure-csi-snapshot-metadata.sh, or fails the test saying how to
// get it.
func sidecarBinary(t *testing.T) string {
	t.Helper()
	bin := toolcache.Bin("VOLDELTA_CSI_SNAPSHOT_METADATA", "csi-snapshot-metadata")
	if fi, err := os.Stat(bin); err != nil || fi.IsDir() {
		t.Fatalf("the CSI snapshot metadata tests need the csi-snapshot-metadata sidecar at %s (run `make tools` or scripts/ensure-csi-snapshot-metadata.sh, or set VOLDELTA_CSI_SNAPSHOT_METADATA)", bin)
	}
	return bin
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// sidecar is a running csi-snapshot-metadata.
type sidecar struct {
	addr   string // of its gRPC service
	health string // URL of its health endpoint
}

// startSidecar runs the sidecar in front of the driver's socket, serving
// TLS with cert and key, talking to the API server as the admin of cfg. The
// sidecar takes the audience from the SnapshotMetadataService at each call
// (v1.1.0 ignores its --audience flag: runtime.Runtime.Audience shadows
// Args.Audience and is never set). It is stopped when the test ends; its
// log is shown if the test failed.
func startSidecar(t *testing.T, bin, dir string, cfg *rest.Config, d *testDriver, cert, key []byte) *sidecar {
	t.Helper()
	port, httpPort := freePort(t), freePort(t)
	kubeconfig := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: admin
  user:
    token: %s
contexts:
- name: test
  context: {cluster: test, user: admin}
current-context: test
`, cfg.Host, base64.StdEncoding.EncodeToString(cfg.TLSClientConfig.CAData), cfg.BearerToken)
	name := fmt.Sprintf("sidecar-%d", port)
	files := map[string][]byte{name + ".kubeconfig": []byte(kubeconfig), name + ".crt": cert, name + ".key": key}
	for f, b := range files {
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	args := []string{
		"-csi-address", d.socket,
		"-kubeconfig", filepath.Join(dir, name+".kubeconfig"),
		"-port", fmt.Sprint(port),
		"-tls-cert", filepath.Join(dir, name+".crt"), "-tls-key", filepath.Join(dir, name+".key"),
		"-http-endpoint", fmt.Sprintf("127.0.0.1:%d", httpPort),
		"-disable-metrics",
		"-timeout", "20s",
		"-v", "5",
	}
	exited := k8stest.RunProcess(t, dir, name, bin, args...)
	s := &sidecar{addr: fmt.Sprintf("127.0.0.1:%d", port), health: fmt.Sprintf("http://127.0.0.1:%d/health", httpPort)}
	// Ready once it has validated the driver (Probe, GetPluginCapabilities).
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	hc := &http.Client{Timeout: 5 * time.Second}
	err := k8stest.Eventually(ctx, func() (bool, string, error) {
		select {
		case <-exited:
			return false, "", fmt.Errorf("the sidecar exited (its log follows)")
		default:
		}
		resp, err := hc.Get(s.health)
		if err != nil {
			return false, err.Error(), nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status, nil
	})
	if err != nil {
		t.Fatalf("sidecar %s not ready: %v", name, err)
	}
	return s
}

// world is an API server with the snapshot CRDs, the
// SnapshotMetadataService CRD and deploy/agent applied, a test CSI driver
// behind a real sidecar, and two snapshots of a volume.
type world struct {
	cp       *k8stest.ControlPlane
	kube     kubernetes.Interface
	dyn      dynamic.Interface
	snaps    snapclient.Interface
	driver   *testDriver
	sidecar  *sidecar
	ca       *pki.CA
	dir      string
	bin      string
	size     uint64
	audience string
}

const (
	driverName = "snapmeta.test.voldelta.io"
	appNS      = "app"
	baseHandle = "snap-base-0001"
	newHandle  = "snap-new-0002"
)

// changedBlocks are the 4 KiB blocks the test writes between the base and
// the new image (block 200 is rewritten with the same bytes: unchanged).
var changedBlocks = []int{0, 10, 11, 12, 100, 1023}

func newWorld(t *testing.T, ctx context.Context) *world {
	t.Helper()
	w := &world{bin: sidecarBinary(t), cp: k8stest.Start(t), size: 1024 * blockSize, audience: "voldelta-test-snapshot-metadata"}
	dir, err := os.MkdirTemp("", "snapmeta-") // short: the socket path is limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	w.dir = dir
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	w.kube, err = kubernetes.NewForConfig(w.cp.Config)
	must(err)
	w.dyn, err = dynamic.NewForConfig(w.cp.Config)
	must(err)
	w.snaps, err = snapclient.NewForConfig(w.cp.Config)
	must(err)

	// The SnapshotMetadataService CRD of the sidecar's version.
	crd, err := k8stest.DecodeCRD(filepath.Join(k8stest.RepoRoot(), "tools", "csi-snapshot-metadata", "third_party", "client", "config", "crd", "cbt.storage.k8s.io_snapshotmetadataservices.yaml"))
	must(err)
	ax, err := apiext.NewForConfig(w.cp.Config)
	must(err)
	_, err = ax.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, crd, metav1.CreateOptions{})
	must(err)
	must(k8stest.Eventually(ctx, func() (bool, string, error) {
		_, err := w.dyn.Resource(SnapshotMetadataServices[0]).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error(), nil
		}
		return true, "", nil
	}))
	// The agent's namespace, ServiceAccount and RBAC.
	for _, d := range []string{"namespace", "agent"} {
		ms, err := k8stest.LoadKustomization(filepath.Join(k8stest.RepoRoot(), "deploy", d), k8stest.ClusterScopedKinds)
		must(err)
		must(w.cp.Apply(ctx, ms, false))
	}
	_, err = w.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: appNS}}, metav1.CreateOptions{})
	must(err)

	// Two images: random, and a copy with changedBlocks rewritten.
	base := make([]byte, w.size)
	rand.Read(base)
	img := append([]byte(nil), base...)
	for _, b := range changedBlocks {
		blk := img[b*blockSize : (b+1)*blockSize]
		if b == 100 {
			blk[17] ^= 0xff // one byte of the block
		} else {
			rand.Read(blk)
		}
	}
	copy(img[200*blockSize:201*blockSize], base[200*blockSize:201*blockSize])
	must(os.WriteFile(filepath.Join(dir, "base.img"), base, 0o600))
	must(os.WriteFile(filepath.Join(dir, "new.img"), img, 0o600))

	w.driver = startTestDriver(t, driverName, dir)
	w.driver.addSnapshot(baseHandle, filepath.Join(dir, "base.img"))
	w.driver.addSnapshot(newHandle, filepath.Join(dir, "new.img"))

	w.ca, err = pki.NewCA("snapmeta-test", time.Hour)
	must(err)
	leaf, err := w.ca.Issue("csi-snapshot-metadata", []string{"127.0.0.1", "localhost"}, time.Hour)
	must(err)
	w.sidecar = startSidecar(t, w.bin, dir, w.cp.Config, w.driver, leaf.CertPEM, leaf.KeyPEM)
	w.setService(t, ctx, w.sidecar.addr, w.audience)

	// The VolumeSnapshotClass, and the snapshots and contents as the
	// snapshot controller makes them.
	_, err = w.snaps.SnapshotV1().VolumeSnapshotClasses().Create(ctx, &snapv1.VolumeSnapshotClass{
		ObjectMeta: metav1.ObjectMeta{Name: "snapmeta-test"}, Driver: driverName, DeletionPolicy: snapv1.VolumeSnapshotContentDelete,
	}, metav1.CreateOptions{})
	must(err)
	w.snapshot(t, ctx, "base", baseHandle)
	w.snapshot(t, ctx, "new", newHandle)
	return w
}

// setService creates or updates the driver's SnapshotMetadataService.
func (w *world) setService(t *testing.T, ctx context.Context, addr, audience string) {
	t.Helper()
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "cbt.storage.k8s.io/v1beta1", "kind": "SnapshotMetadataService",
		"metadata": map[string]any{"name": driverName},
		"spec": map[string]any{"address": addr, "audience": audience,
			"caCert": base64.StdEncoding.EncodeToString(w.ca.PEM)},
	}}
	ri := w.dyn.Resource(SnapshotMetadataServices[0])
	old, err := ri.Get(ctx, driverName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = ri.Create(ctx, u, metav1.CreateOptions{})
	case err == nil:
		u.SetResourceVersion(old.GetResourceVersion())
		_, err = ri.Update(ctx, u, metav1.UpdateOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
}

// snapshot creates a ready VolumeSnapshot of PVC data in appNS bound to a
// content with the snapshot handle handle.
func (w *world) snapshot(t *testing.T, ctx context.Context, name, handle string) {
	t.Helper()
	class, pvc := "snapmeta-test", "data"
	vs, err := w.snaps.SnapshotV1().VolumeSnapshots(appNS).Create(ctx, &snapv1.VolumeSnapshot{
		ObjectMeta: metav1.ObjectMeta{Namespace: appNS, Name: name},
		Spec: snapv1.VolumeSnapshotSpec{Source: snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: &pvc},
			VolumeSnapshotClassName: &class},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	content := "snapcontent-" + string(vs.UID)
	vol := "vol-0001"
	vsc, err := w.snaps.SnapshotV1().VolumeSnapshotContents().Create(ctx, &snapv1.VolumeSnapshotContent{
		ObjectMeta: metav1.ObjectMeta{Name: content},
		Spec: snapv1.VolumeSnapshotContentSpec{
			Driver: driverName, DeletionPolicy: snapv1.VolumeSnapshotContentDelete, VolumeSnapshotClassName: &class,
			Source:            snapv1.VolumeSnapshotContentSource{VolumeHandle: &vol},
			VolumeSnapshotRef: corev1.ObjectReference{Kind: "VolumeSnapshot", APIVersion: "snapshot.storage.k8s.io/v1", Namespace: appNS, Name: name, UID: vs.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	yes, size, now := true, int64(w.size), time.Now().UnixNano()
	vsc.Status = &snapv1.VolumeSnapshotContentStatus{SnapshotHandle: &handle, ReadyToUse: &yes, RestoreSize: &size, CreationTime: &now}
	if _, err := w.snaps.SnapshotV1().VolumeSnapshotContents().UpdateStatus(ctx, vsc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	vs.Status = &snapv1.VolumeSnapshotStatus{BoundVolumeSnapshotContentName: &content, ReadyToUse: &yes}
	if _, err := w.snaps.SnapshotV1().VolumeSnapshots(appNS).UpdateStatus(ctx, vs, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// agentClient is a Client acting as the agent's ServiceAccount,
// with exactly the permissions deploy/agent grants it.
func (w *world) agentClient(t *testing.T, maxResults int32) *Client {
	t.Helper()
	cfg := w.cp.ImpersonatedConfig("voldelta-system", "voldelta-agent")
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(Options{Kube: kube, Dynamic: dyn, MaxResults: maxResults})
	if err != nil {
		t.Fatal(err)
	}
	return c
}
