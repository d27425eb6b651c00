package k8stest_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/prometheus/client_golang/prometheus"
	velerov1 "github.com/vmware-tanzu/velero/pkg/apis/velero/v1"
	velerov2 "github.com/vmware-tanzu/velero/pkg/apis/velero/v2alpha1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/internal/k8sagent"
	"github.com/voldelta/voldelta/internal/k8stest"
	"github.com/voldelta/voldelta/internal/migration"
	"github.com/voldelta/voldelta/internal/miniotest"
	"github.com/voldelta/voldelta/internal/velero"
	"github.com/voldelta/voldelta/objstore"
)

const veleroNS = "velero"

// veleroWorld is the world with Velero's CRDs, a MinIO backup storage
// location, the agent of node-a and the controller with the data mover on,
// each under its service account (deploy/agent, deploy/controller and
// deploy/velero). The test plays Velero's CSI plugin: it creates the
// VolumeSnapshots and the DataUploads as Velero does.
type veleroWorld struct {
	*world
	vcl   client.Client // with Velero's and the snapshot API's types
	minio *miniotest.Server
	n     int
}

func newVeleroWorld(t *testing.T, ctx context.Context) *veleroWorld {
	w := newWorld(t, ctx)
	c := w.cluster
	files, err := k8stest.VeleroCRDFiles()
	c.must(err)
	c.cp.InstallCRDs(t, ctx, files...)
	for _, d := range []string{"controller", "velero"} {
		ms, err := k8stest.LoadKustomization(filepath.Join(k8stest.RepoRoot(), "deploy", d), k8stest.ClusterScopedKinds)
		c.must(err)
		c.must(c.cp.Apply(ctx, ms, false))
	}
	_, err = c.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: veleroNS}}, metav1.CreateOptions{})
	c.must(err)
	s := runtime.NewScheme()
	c.must(v1alpha1.AddToScheme(s))
	c.must(snapv1.AddToScheme(s))
	c.must(velero.AddToScheme(s))
	vw := &veleroWorld{world: w}
	vw.vcl, err = client.New(c.cp.Config, client.Options{Scheme: s})
	c.must(err)

	vw.minio, err = miniotest.Start()
	c.must(err)
	t.Cleanup(vw.minio.Stop)
	c.must(vw.minio.MakeBucket(ctx, "velero"))
	ini := fmt.Sprintf("[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n", miniotest.User, miniotest.Password)
	_, err = c.kube.CoreV1().Secrets(veleroNS).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: veleroNS, Name: "cloud-credentials"},
		Data: map[string][]byte{"cloud": []byte(ini)}}, metav1.CreateOptions{})
	c.must(err)
	// As `velero install --provider aws --bucket velero --prefix cluster-a
	// --backup-location-config region=minio,s3ForcePathStyle=true,s3Url=http://...`.
	c.must(vw.vcl.Create(ctx, &velerov1.BackupStorageLocation{ObjectMeta: metav1.ObjectMeta{Namespace: veleroNS, Name: "default"},
		Spec: velerov1.BackupStorageLocationSpec{Provider: "aws", Default: true,
			StorageType: velerov1.StorageType{ObjectStorage: &velerov1.ObjectStorageLocation{Bucket: "velero", Prefix: "cluster-a"}},
			Config:      map[string]string{"region": "minio", "s3ForcePathStyle": "true", "s3Url": "http://" + vw.minio.Endpoint}}}))

	amgr, err := k8sagent.NewManager(c.cp.ImpersonatedConfig("voldelta-system", "voldelta-agent"), k8sagent.RunOptions{
		NodeName: srcNode, HostRoot: w.srcHost, MetricsAddr: "0", HealthAddr: "0", Params: w.params,
		Registry: prometheus.NewRegistry(), Logger: testLogger(t).With("side", "agent"),
	})
	c.must(err)
	w.goBG(amgr.Start)
	cmgr, err := migration.NewManager(c.cp.ImpersonatedConfig("voldelta-system", "voldelta-controller"), migration.RunOptions{
		MetricsAddr: "0", HealthAddr: "0", VeleroNamespace: veleroNS, Logger: testLogger(t).With("side", "controller")})
	c.must(err)
	w.goBG(cmgr.Start)
	return vw
}

// backup plays Velero's CSI plugin for one backup of PVC src/data: a
// VolumeSnapshot, then a DataUpload for the mover (mod adjusts it).
func (vw *veleroWorld) backup(mod func(*velerov2.DataUpload)) *velerov2.DataUpload {
	vw.t.Helper()
	vw.n++
	snap := &snapv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Namespace: srcNS, Name: fmt.Sprintf("velero-data-%d", vw.n)},
		Spec: snapv1.VolumeSnapshotSpec{Source: snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: ptr("data")},
			VolumeSnapshotClassName: ptr("longhorn-snap")}}
	vw.must(vw.vcl.Create(vw.ctx, snap))
	du := &velerov2.DataUpload{
		ObjectMeta: metav1.ObjectMeta{Namespace: veleroNS, Name: fmt.Sprintf("backup-%d-x7k2p", vw.n),
			Labels: map[string]string{"velero.io/backup-name": fmt.Sprintf("backup-%d", vw.n)}},
		Spec: velerov2.DataUploadSpec{SnapshotType: velerov2.SnapshotTypeCSI,
			CSISnapshot: &velerov2.CSISnapshotSpec{VolumeSnapshot: snap.Name, StorageClass: "longhorn", SnapshotClass: "longhorn-snap", Driver: "driver.longhorn.io"},
			SourcePVC:   "data", SourceNamespace: srcNS, DataMover: velero.MoverName, BackupStorageLocation: "default",
			OperationTimeout: metav1.Duration{Duration: 10 * time.Minute}},
		Status: velerov2.DataUploadStatus{Phase: velerov2.DataUploadPhaseNew},
	}
	if mod != nil {
		mod(du)
	}
	vw.must(vw.vcl.Create(vw.ctx, du))
	return du
}

// waitPhase waits until the DataUpload reaches phase.
func (vw *veleroWorld) waitPhase(du *velerov2.DataUpload, phase velerov2.DataUploadPhase) *velerov2.DataUpload {
	vw.t.Helper()
	var got velerov2.DataUpload
	err := k8stest.Eventually(vw.ctx, func() (bool, string, error) {
		if err := vw.bgFailed(); err != nil {
			return false, "", err
		}
		if err := vw.vcl.Get(vw.ctx, client.ObjectKeyFromObject(du), &got); err != nil {
			return false, "", err
		}
		switch p := got.Status.Phase; {
		case p == phase:
			return true, "", nil
		case p == velerov2.DataUploadPhaseCompleted || p == velerov2.DataUploadPhaseFailed || p == velerov2.DataUploadPhaseCanceled:
			return false, "", fmt.Errorf("ended %s: %s", p, got.Status.Message)
		}
		return false, fmt.Sprintf("status %+v", got.Status), nil
	})
	if err != nil {
		vw.t.Fatalf("DataUpload %s did not reach %s: %v (last status %+v)", du.Name, phase, err, got.Status)
	}
	return &got
}

// store opens the backup storage location's store.
func (vw *veleroWorld) store() *objstore.Store {
	vw.t.Helper()
	st, err := objstore.Open(vw.ctx, objstore.Config{Bucket: "velero", Prefix: "cluster-a/plugins/voldelta", Endpoint: vw.minio.Endpoint, Insecure: true,
		Region: "minio", Creds: credentials.NewStaticV4(miniotest.User, miniotest.Password, "")})
	vw.must(err)
	return st
}

// generations lists the store's generations of volume.
func (vw *veleroWorld) generations(volume string) []uint64 {
	vw.t.Helper()
	gens, err := vw.store().Generations(vw.ctx, volume)
	vw.must(err)
	return gens
}

// storeImage pulls generation gen of the store volume into a file and
// returns its bytes.
func (vw *veleroWorld) storeImage(volume string, gen uint64) []byte {
	vw.t.Helper()
	dir := vw.t.TempDir()
	_, err := vw.store().Pull(vw.ctx, objstore.PullOptions{Volume: volume, Generation: gen, Target: filepath.Join(dir, "image"), StateDir: filepath.Join(dir, "state")})
	vw.must(err)
	b, err := os.ReadFile(filepath.Join(dir, "image"))
	vw.must(err)
	return b
}

// TestVeleroDataUpload: voldelta as the data mover of Velero backups, the
// real kube-apiserver with Velero's CRDs, MinIO as the backup storage
// location, the agent and the controller under their service accounts.
// Two backups of a changing volume: the first uploads it all, the second
// about the change, each DataUpload goes New → Accepted → Prepared →
// (InProgress) → Completed with the fields Velero reads, and the store
// holds both generations byte for byte; the first backup's snapshot is
// deleted once the second completed. A canceled backup is Canceled with
// nothing pushed, one naming a missing location Failed, and DataUploads of
// another mover are left alone. Deleting the first backup removes its
// generation from the store and its DataUpload.
func TestVeleroDataUpload(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	vw := newVeleroWorld(t, ctx)
	vol := velero.StoreVolume(srcNS, "data")

	du1 := vw.waitPhase(vw.backup(nil), velerov2.DataUploadPhaseCompleted)
	st := du1.Status
	if st.SnapshotID != vol+"@1" || st.Progress.TotalBytes != volSize || st.Progress.BytesDone != volSize ||
		st.IncrementalBytes < 6<<20 || st.Node != srcNode || st.StartTimestamp == nil || st.CompletionTimestamp == nil ||
		st.AcceptedTimestamp == nil || st.Path != "s3://velero/cluster-a/plugins/voldelta/"+vol {
		t.Fatalf("backup 1 status: %+v", st)
	}
	if r := *st.DataMoverResult; r[velero.ResultGeneration] != "1" || r[velero.ResultVolume] != vol || r[velero.ResultRootHash] == "" {
		t.Fatalf("backup 1 dataMoverResult: %v", r)
	}
	if !bytes.Equal(vw.storeImage(vol, 1), vw.want) {
		t.Fatal("backup 1: the store's generation differs from the snapshot")
	}
	t.Logf("backup 1: %s, %d of %d bytes uploaded", st.SnapshotID, st.IncrementalBytes, st.Progress.TotalBytes)

	change := vw.change(5<<20, 64<<10)
	du2 := vw.waitPhase(vw.backup(nil), velerov2.DataUploadPhaseCompleted)
	st2 := du2.Status
	limit := int64(len(change)) + 2*int64(vw.params.MaxSize)
	if st2.SnapshotID != vol+"@2" || st2.IncrementalBytes <= 0 || st2.IncrementalBytes > limit {
		t.Fatalf("backup 2 status %+v: want generation 2 and at most %d bytes uploaded for a %d-byte change", st2, limit, len(change))
	}
	if !bytes.Equal(vw.storeImage(vol, 2), vw.want) {
		t.Fatal("backup 2: the store's generation differs from the snapshot")
	}
	t.Logf("backup 2: %s, %d bytes changed, %d uploaded", st2.SnapshotID, len(change), st2.IncrementalBytes)
	err := k8stest.Eventually(ctx, func() (bool, string, error) {
		var s snapv1.VolumeSnapshot
		err := vw.vcl.Get(ctx, client.ObjectKey{Namespace: srcNS, Name: "velero-data-1"}, &s)
		return apierrors.IsNotFound(err), fmt.Sprintf("snapshot 1: %v", err), client.IgnoreNotFound(err)
	})
	vw.must(err)
	var keep snapv1.VolumeSnapshot
	vw.must(vw.vcl.Get(ctx, client.ObjectKey{Namespace: srcNS, Name: "velero-data-2"}, &keep)) // the next backup's base

	// Deleting backup 1 (as `velero backup delete backup-1` does, with the
	// data movers' finalizer): its generation leaves the store, its
	// DataUpload goes, generation 2 stays restorable.
	dbr := &velerov1.DeleteBackupRequest{ObjectMeta: metav1.ObjectMeta{Namespace: veleroNS, Name: "backup-1-del",
		Finalizers: []string{velero.FinalizerDeleteBackup}}, Spec: velerov1.DeleteBackupRequestSpec{BackupName: "backup-1"}}
	vw.must(vw.vcl.Create(ctx, dbr))
	err = k8stest.Eventually(ctx, func() (bool, string, error) {
		if err := vw.vcl.Get(ctx, client.ObjectKeyFromObject(dbr), dbr); err != nil {
			return false, "", err
		}
		return len(dbr.Finalizers) == 0, fmt.Sprintf("finalizers %v", dbr.Finalizers), nil
	})
	vw.must(err)
	if gens := vw.generations(vol); len(gens) != 1 || gens[0] != 2 {
		t.Fatalf("store generations after deleting backup 1: %v, want [2]", gens)
	}
	if err := vw.vcl.Get(ctx, client.ObjectKeyFromObject(du1), &velerov2.DataUpload{}); !apierrors.IsNotFound(err) {
		t.Fatalf("backup 1's DataUpload after its deletion: %v", err)
	}
	if !bytes.Equal(vw.storeImage(vol, 2), vw.want) {
		t.Fatal("generation 2 after deleting backup 1 differs from its snapshot")
	}

	// Canceled before its round started: nothing is pushed.
	du3 := vw.waitPhase(vw.backup(func(du *velerov2.DataUpload) { du.Spec.Cancel = true }), velerov2.DataUploadPhaseCanceled)
	if du3.Status.SnapshotID != "" {
		t.Fatalf("canceled backup: %+v", du3.Status)
	}
	var vs v1alpha1.VolumeSync
	vw.must(vw.vcl.Get(ctx, client.ObjectKey{Namespace: srcNS, Name: velero.VolumeSyncName("data")}, &vs))
	if vs.Status.LastGeneration != 2 || vs.Status.LastManualTrigger != string(du2.UID) {
		t.Fatalf("after the canceled backup the VolumeSync says %+v", vs.Status)
	}

	// A missing location fails the DataUpload with a message saying so.
	du4 := vw.waitPhase(vw.backup(func(du *velerov2.DataUpload) { du.Spec.BackupStorageLocation = "elsewhere" }), velerov2.DataUploadPhaseFailed)
	if !strings.Contains(du4.Status.Message, "elsewhere") {
		t.Fatalf("failed backup's message: %q", du4.Status.Message)
	}

	// Another mover's DataUpload is not touched: created before one of
	// ours, it is still New when ours is done.
	other := vw.backup(func(du *velerov2.DataUpload) { du.Spec.DataMover = "velero" })
	vw.waitPhase(vw.backup(func(du *velerov2.DataUpload) { du.Spec.BackupStorageLocation = "elsewhere" }), velerov2.DataUploadPhaseFailed)
	var got velerov2.DataUpload
	vw.must(vw.vcl.Get(ctx, client.ObjectKeyFromObject(other), &got))
	if got.Status.Phase != velerov2.DataUploadPhaseNew {
		t.Fatalf("another mover's DataUpload was changed: %+v", got.Status)
	}
}
