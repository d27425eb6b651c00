package k8sreceiver_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7/pkg/credentials"
	velerov1 "github.com/vmware-tanzu/velero/pkg/apis/velero/v1"
	velerov2 "github.com/vmware-tanzu/velero/pkg/apis/velero/v2alpha1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/internal/k8sreceiver"
	"github.com/voldelta/voldelta/internal/k8stest"
	"github.com/voldelta/voldelta/internal/k8sutil"
	"github.com/voldelta/voldelta/internal/miniotest"
	"github.com/voldelta/voldelta/internal/velero"
	"github.com/voldelta/voldelta/objstore"
)

// veleroWorld is a world with Velero's CRDs and deploy/velero applied,
// namespace velero, and its BackupStorageLocation "default": bucket
// velero, prefix cluster-a, on a real MinIO, with its credentials Secret;
// store is the location's voldelta store.
type veleroWorld struct {
	*world
	vcl   client.Client
	srv   *miniotest.Server
	store *objstore.Store
}

func (w *world) veleroLocation() *veleroWorld {
	t := w.t
	w.provisioning()
	files, err := k8stest.VeleroCRDFiles()
	must(t, err)
	w.cp.InstallCRDs(t, w.ctx, files...)
	ms, err := k8stest.LoadKustomization(filepath.Join(k8stest.RepoRoot(), "deploy", "velero"), k8stest.ClusterScopedKinds)
	must(t, err)
	must(t, w.cp.Apply(w.ctx, ms, false))
	_, err = w.kube.CoreV1().Namespaces().Create(w.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "velero"}}, metav1.CreateOptions{})
	must(t, err)
	s := runtime.NewScheme()
	must(t, velero.AddToScheme(s))
	v := &veleroWorld{world: w}
	v.vcl, err = client.New(w.cp.Config, client.Options{Scheme: s})
	must(t, err)
	v.srv, err = miniotest.Start()
	must(t, err)
	t.Cleanup(v.srv.Stop)
	must(t, v.srv.MakeBucket(w.ctx, "velero"))
	v.store, err = objstore.Open(w.ctx, objstore.Config{Bucket: "velero", Prefix: "cluster-a/plugins/voldelta", Endpoint: v.srv.Endpoint, Insecure: true,
		Region: "minio", Creds: credentials.NewStaticV4(miniotest.User, miniotest.Password, "")})
	must(t, err)
	ini := fmt.Sprintf("[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n", miniotest.User, miniotest.Password)
	_, err = w.kube.CoreV1().Secrets("velero").Create(w.ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "velero", Name: "cloud-credentials"},
		Data: map[string][]byte{"cloud": []byte(ini)}}, metav1.CreateOptions{})
	must(t, err)
	must(t, v.vcl.Create(w.ctx, &velerov1.BackupStorageLocation{ObjectMeta: metav1.ObjectMeta{Namespace: "velero", Name: "default"},
		Spec: velerov1.BackupStorageLocationSpec{Provider: "aws",
			StorageType: velerov1.StorageType{ObjectStorage: &velerov1.ObjectStorageLocation{Bucket: "velero", Prefix: "cluster-a"}},
			Config:      map[string]string{"region": "minio", "s3Url": "http://" + v.srv.Endpoint}}}))
	_, err = w.kube.CoreV1().Secrets("dst").Create(w.ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "dst", Name: "s3"},
		Data: map[string][]byte{k8sutil.KeyAccessKeyID: []byte(miniotest.User), k8sutil.KeySecretAccessKey: []byte(miniotest.Password)}}, metav1.CreateOptions{})
	must(t, err)
	return v
}

// restore plays Velero's CSI plugin restoring snapshotID into PVC
// dst/pvc: the PVC with a selector (nothing provisions it), then the
// DataDownload restore-<pvc>.
func (v *veleroWorld) restore(pvc, snapshotID string, cancel bool) *velerov2.DataDownload {
	t := v.t
	t.Helper()
	block, class := corev1.PersistentVolumeBlock, testClass
	label := "dst." + pvc + ".x9z2q"
	_, err := v.kube.CoreV1().PersistentVolumeClaims("dst").Create(v.ctx, &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: "dst", Name: pvc},
		Spec: corev1.PersistentVolumeClaimSpec{VolumeMode: &block, StorageClassName: &class,
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(fmt.Sprint(v.size))}},
			Selector:    &metav1.LabelSelector{MatchLabels: map[string]string{velerov1.DynamicPVRestoreLabel: label}}},
	}, metav1.CreateOptions{})
	must(t, err)
	dd := &velerov2.DataDownload{ObjectMeta: metav1.ObjectMeta{Namespace: "velero", Name: "restore-" + pvc},
		Spec: velerov2.DataDownloadSpec{TargetVolume: velerov2.TargetVolumeSpec{PVC: pvc, Namespace: "dst"},
			BackupStorageLocation: "default", DataMover: velero.MoverName, SnapshotID: snapshotID, SourceNamespace: "src",
			OperationTimeout: metav1.Duration{Duration: 10 * time.Minute}, Cancel: cancel, SnapshotSize: v.size},
		Status: velerov2.DataDownloadStatus{Phase: velerov2.DataDownloadPhaseNew}}
	must(t, v.vcl.Create(v.ctx, dd))
	return dd
}

// waitPhase waits until dd is in phase and returns it.
func (v *veleroWorld) waitPhase(dd *velerov2.DataDownload, phase velerov2.DataDownloadPhase) *velerov2.DataDownload {
	v.t.Helper()
	var got velerov2.DataDownload
	v.wait("DataDownload "+dd.Name+" "+string(phase), func() (bool, string) {
		must(v.t, v.vcl.Get(v.ctx, client.ObjectKeyFromObject(dd), &got))
		return got.Status.Phase == phase, fmt.Sprintf("%+v", got.Status)
	})
	return &got
}

// replica makes VolumeTarget dst/m (PVC replica-m, PV pv-m) a warm
// replica of volume, pulled from the location's store every poll.
func (v *veleroWorld) replica(m, volume string, poll time.Duration) {
	v.t.Helper()
	v.target(m)
	must(v.t, retry.RetryOnConflict(retry.DefaultRetry, func() error { // the receiver adds its finalizer meanwhile
		vt := v.get(m)
		vt.Spec.RemoteVolume, vt.Spec.AllowedIdentities = volume, nil
		vt.Spec.Store = &v1alpha1.StoreSource{Store: v1alpha1.Store{URL: "s3://velero/cluster-a/plugins/voldelta", Endpoint: v.srv.Endpoint, Insecure: true,
			Region: "minio", CredentialsSecretName: "s3"}, PollInterval: &metav1.Duration{Duration: poll}}
		return v.cl.Update(v.ctx, vt)
	}))
}

// pulledBytes is the download a DataDownload's "Pulled" Event reports.
func pulledBytes(t testing.TB, w *world, dd string) int64 {
	t.Helper()
	evs, err := w.kube.EventsV1().Events("velero").List(w.ctx, metav1.ListOptions{})
	must(t, err)
	for _, e := range evs.Items {
		if e.Regarding.Name != dd || e.Reason != "Pulled" {
			continue
		}
		m := regexp.MustCompile(`(\d+) bytes downloaded`).FindStringSubmatch(e.Note)
		if m == nil {
			t.Fatalf("Pulled event of %s: %q", dd, e.Note)
		}
		n, _ := strconv.ParseInt(m[1], 10, 64)
		return n
	}
	t.Fatalf("no Pulled event on %s", dd)
	return 0
}

// A Velero restore of a voldelta backup, as Velero's CSI plugin makes it:
// the PVC restored with a selector (so nothing provisions it) and a
// DataDownload naming the backup's generation. The receiver provisions a
// volume, pulls the generation from the backup storage location (real
// MinIO) into it on its node, and hands it to the PVC: the real PV
// controller binds them, the PVC's bytes are the generation's, the PV
// carries the selector's label and the root hash. Onto a warm replica (a
// store-fed VolumeTarget of the same volume) a restore downloads only what
// differs and binds the replica's volume. A canceled DataDownload
// is Canceled; one naming a generation that does not exist Failed.
func TestVeleroRestoreAgainstAPIServer(t *testing.T) {
	w := newWorld(t)
	v := w.veleroLocation()
	gen1 := make([]byte, apiVolSize)
	rand.NewChaCha8([32]byte{9}).Read(gen1)
	gen2 := bytes.Clone(gen1)
	copy(gen2[4096:], "the second backup")
	var roots []string
	for _, img := range [][]byte{gen1, gen2} {
		st, err := v.store.Push(w.ctx, bytes.NewReader(img), uint64(len(img)), objstore.PushOptions{Volume: "src-data", Params: w.prm})
		must(t, err)
		roots = append(roots, st.RootHash)
	}
	w.start(func(o *k8sreceiver.RunOptions) { o.VeleroNamespace = "velero" })

	dd := v.waitPhase(v.restore("db", "src-data@1", false), velerov2.DataDownloadPhaseCompleted)
	if dd.Status.Progress.BytesDone != apiVolSize || dd.Status.Node != "node-r" || dd.Status.CompletionTimestamp == nil {
		t.Fatalf("completed restore: %+v", dd.Status)
	}
	data, pv := w.device("db")
	if !bytes.Equal(data[:apiVolSize], gen1) {
		t.Fatal("the restored volume's bytes differ from generation 1")
	}
	if pv.Annotations[k8sreceiver.AnnotationRestoredFrom] != "src-data@1" || pv.Annotations[v1alpha1.AnnotationRootHash] != roots[0] ||
		pv.Labels[velerov1.DynamicPVRestoreLabel] != "dst.db.x9z2q" {
		t.Fatalf("restored PV: annotations %v, labels %v", pv.Annotations, pv.Labels)
	}
	t.Logf("restored src-data@1 into dst/db: PV %s, root %s, %d bytes equal to the backup's", pv.Name, roots[0], apiVolSize)
	primes, err := w.kube.CoreV1().PersistentVolumeClaims("velero").List(w.ctx, metav1.ListOptions{})
	must(t, err)
	if len(primes.Items) != 0 {
		t.Fatalf("restore PVCs left in velero: %d", len(primes.Items))
	}

	// The second generation, into another PVC.
	v.waitPhase(v.restore("db2", "src-data@2", false), velerov2.DataDownloadPhaseCompleted)
	if data, _ := w.device("db2"); !bytes.Equal(data[:apiVolSize], gen2) {
		t.Fatal("the second restore's bytes differ from generation 2")
	}

	// Onto a warm replica: a VolumeTarget of dst pulls src-data from the
	// same store and holds generation 2; a restore of generation 1 goes
	// onto it, downloads about the one chunk that differs, and hands its
	// volume to the restored PVC (the replica is consumed).
	v.replica("w", "src-data", time.Second)
	w.wait("the warm replica holds generation 2", func() (bool, string) {
		st := w.get("w").Status
		return st.StoreGeneration == 2 && st.Phase == v1alpha1.PhaseIdle, fmt.Sprintf("%+v", st)
	})
	warm := v.waitPhase(v.restore("db-warm", "src-data@1", false), velerov2.DataDownloadPhaseCompleted)
	data, pv = w.device("db-warm")
	if pv.Name != "pv-w" || !bytes.Equal(data[:apiVolSize], gen1) {
		t.Fatalf("warm restore: bound to %s, bytes equal to generation 1: %v", pv.Name, bytes.Equal(data[:apiVolSize], gen1))
	}
	downloaded := pulledBytes(t, w, warm.Name)
	cold := pulledBytes(t, w, "restore-db")
	if downloaded <= 0 || downloaded > 64<<10 || cold < apiVolSize {
		t.Fatalf("warm restore downloaded %d bytes, the cold one %d: want at most 64 KiB and the whole volume", downloaded, cold)
	}
	t.Logf("restore of src-data@1: cold %d bytes downloaded, onto the warm replica %d", cold, downloaded)
	if err := w.cl.Get(w.ctx, client.ObjectKey{Namespace: "dst", Name: "w"}, &v1alpha1.VolumeTarget{}); !apierrors.IsNotFound(err) {
		t.Fatalf("the consumed replica's VolumeTarget: %v", err)
	}
	if pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimRetain {
		t.Fatalf("the warm PV's reclaim policy %s, want its own (Retain) back", pv.Spec.PersistentVolumeReclaimPolicy)
	}

	v.waitPhase(v.restore("canceled", "src-data@2", true), velerov2.DataDownloadPhaseCanceled)
	failed := v.waitPhase(v.restore("nothing", "src-data@7", false), velerov2.DataDownloadPhaseFailed)
	if !strings.Contains(failed.Status.Message, "src-data@7") {
		t.Fatalf("failed restore's message: %q", failed.Status.Message)
	}
	w.wait("the failed restore's PVC removed", func() (bool, string) {
		_, err := w.kube.CoreV1().PersistentVolumeClaims("velero").Get(w.ctx, "voldelta-restore-"+string(failed.UID), metav1.GetOptions{})
		return apierrors.IsNotFound(err), fmt.Sprint(err)
	})
}
