//go:build veleroserver

package k8stest_test

// `make test-velero`: the real Velero server (tools/velero, built by
// scripts/ensure-velero.sh with its AWS plugin) against the test control
// plane. A `velero backup create --snapshot-move-data --data-mover
// voldelta` of the source namespace is taken by Velero's own CSI plugin,
// whose DataUpload voldelta's mover completes; a `velero restore create
// --namespace-mappings src:restored` creates the PVC and a DataDownload
// the receiver restores. It is a separate target
// because it needs two more binaries, built from the module proxy in about
// 8 minutes cold; `make test` plays Velero's part instead
// (velero_e2e_test.go).

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	velerov1 "github.com/vmware-tanzu/velero/pkg/apis/velero/v1"
	velerov2 "github.com/vmware-tanzu/velero/pkg/apis/velero/v2alpha1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/voldelta/voldelta/csi"
	"github.com/voldelta/voldelta/internal/k8sreceiver"
	"github.com/voldelta/voldelta/internal/k8stest"
	"github.com/voldelta/voldelta/internal/toolcache"
	"github.com/voldelta/voldelta/internal/velero"
	"github.com/voldelta/voldelta/receiver"
)

// veleroBinaries returns the Velero server and its AWS plugin, or fails
// saying how to build them.
func veleroBinaries(t *testing.T) (server, plugin string) {
	t.Helper()
	server = toolcache.Bin("VOLDELTA_VELERO", "velero")
	plugin = toolcache.Bin("VOLDELTA_VELERO_PLUGIN_FOR_AWS", "velero-plugin-for-aws")
	for _, b := range []string{server, plugin} {
		if _, err := os.Stat(b); err != nil {
			t.Fatalf("the test needs %s: run scripts/ensure-velero.sh (make test-velero does)", b)
		}
	}
	return server, plugin
}

// TestVeleroServerBackupRestore: a real Velero backup, then a restore into
// another namespace, through voldelta's mover.
func TestVeleroServerBackupRestore(t *testing.T) {
	server, plugin := veleroBinaries(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	vw := newVeleroWorld(t, ctx)
	mod, err := k8stest.VeleroModuleDir()
	vw.must(err)
	var files []string
	for _, g := range []string{"v1/bases/*.yaml", "v2alpha1/bases/*.yaml"} {
		m, err := filepath.Glob(filepath.Join(mod, "config", "crd", g))
		vw.must(err)
		files = append(files, m...)
	}
	vw.cp.InstallCRDs(t, ctx, files...)

	// What `velero install` and the CSI setup add: the location's
	// credential key, a VolumeSnapshotClass Velero picks for the driver.
	var bsl velerov1.BackupStorageLocation
	vw.must(vw.vcl.Get(ctx, client.ObjectKey{Namespace: veleroNS, Name: "default"}, &bsl))
	bsl.Spec.Credential = &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "cloud-credentials"}, Key: "cloud"}
	vw.must(vw.vcl.Update(ctx, &bsl))
	vw.must(vw.vcl.Create(ctx, &snapv1.VolumeSnapshotClass{ObjectMeta: metav1.ObjectMeta{Name: "velero-longhorn",
		Labels: map[string]string{"velero.io/csi-volumesnapshot-class": "true"}},
		Driver: csi.LonghornDriver, DeletionPolicy: snapv1.VolumeSnapshotContentDelete, Parameters: map[string]string{"type": "snap"}}))

	// Velero's CSI plugin snapshots PVCs of a StorageClass: give the
	// source PVC one (a bound PVC without a class may be given one).
	_, err = vw.kube.StorageV1().StorageClasses().Create(ctx, &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "longhorn"}, Provisioner: csi.LonghornDriver}, metav1.CreateOptions{})
	vw.must(err)
	_, err = vw.kube.CoreV1().PersistentVolumeClaims(srcNS).Patch(ctx, "data", types.MergePatchType, []byte(`{"spec":{"storageClassName":"longhorn"}}`), metav1.PatchOptions{})
	vw.must(err)

	// Velero's restore reads its own Deployment (as `velero install` makes
	// it); no pod of it needs to run here.
	one := int32(0)
	_, err = vw.kube.AppsV1().Deployments(veleroNS).Create(ctx, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: veleroNS, Name: "velero"},
		Spec: appsv1.DeploymentSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"deploy": "velero"}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"deploy": "velero"}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "velero", Image: "velero/velero:v1.18.3", Args: []string{"server"}}}}}}},
		metav1.CreateOptions{})
	vw.must(err)

	dir := t.TempDir()
	kc := filepath.Join(dir, "kubeconfig")
	vw.must(vw.cp.WriteKubeconfig(kc))
	plugins := filepath.Join(dir, "plugins")
	vw.must(os.MkdirAll(plugins, 0o755))
	vw.must(os.Symlink(plugin, filepath.Join(plugins, "velero-plugin-for-aws")))
	logf, err := os.Create(filepath.Join(dir, "velero.log"))
	vw.must(err)
	cmd := exec.CommandContext(ctx, server, "server", "--kubeconfig", kc, "--namespace", veleroNS, "--plugin-dir", plugins,
		"--features=EnableCSI", "--metrics-address", "127.0.0.1:0", "--store-validation-frequency", "5s")
	cmd.Env = append(os.Environ(), "VELERO_NAMESPACE="+veleroNS)
	cmd.Stdout, cmd.Stderr = logf, logf
	vw.must(cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("velero server log (tail):\n%s", tail(b, 6000))
		}
	})

	// The location must validate (the AWS plugin lists the bucket).
	err = k8stest.Eventually(ctx, func() (bool, string, error) {
		select {
		case err := <-exited:
			exited <- err
			return false, "", fmt.Errorf("velero server exited: %v", err)
		default:
		}
		if err := vw.vcl.Get(ctx, client.ObjectKeyFromObject(&bsl), &bsl); err != nil {
			return false, "", err
		}
		return bsl.Status.Phase == velerov1.BackupStorageLocationPhaseAvailable, fmt.Sprintf("location %s: %s", bsl.Status.Phase, bsl.Status.Message), nil
	})
	vw.must(err)

	// velero backup create shop-1 --include-namespaces src --snapshot-move-data --data-mover voldelta
	yes := true
	backup := &velerov1.Backup{ObjectMeta: metav1.ObjectMeta{Namespace: veleroNS, Name: "shop-1"},
		Spec: velerov1.BackupSpec{IncludedNamespaces: []string{srcNS}, SnapshotMoveData: &yes, DataMover: velero.MoverName,
			SnapshotVolumes: &yes, StorageLocation: "default", CSISnapshotTimeout: metav1.Duration{Duration: 2 * time.Minute},
			ItemOperationTimeout: metav1.Duration{Duration: 4 * time.Minute}, TTL: metav1.Duration{Duration: time.Hour}}}
	vw.must(vw.vcl.Create(ctx, backup))
	err = k8stest.Eventually(ctx, func() (bool, string, error) {
		if err := vw.bgFailed(); err != nil {
			return false, "", err
		}
		select {
		case err := <-exited:
			exited <- err
			return false, "", fmt.Errorf("velero server exited: %v", err)
		default:
		}
		if err := vw.vcl.Get(ctx, client.ObjectKeyFromObject(backup), backup); err != nil {
			return false, "", err
		}
		switch backup.Status.Phase {
		case velerov1.BackupPhaseFailed, velerov1.BackupPhasePartiallyFailed, velerov1.BackupPhaseFailedValidation:
			return false, "", fmt.Errorf("backup %s: %v", backup.Status.Phase, backup.Status.ValidationErrors)
		}
		return backup.Status.Phase == velerov1.BackupPhaseCompleted, fmt.Sprintf("backup %+v", backup.Status), nil
	})
	vw.must(err)

	var dus velerov2.DataUploadList
	vw.must(vw.vcl.List(ctx, &dus, client.InNamespace(veleroNS), client.MatchingLabels{velero.LabelBackupName: "shop-1"}))
	if len(dus.Items) != 1 {
		t.Fatalf("%d DataUploads of backup shop-1, want 1", len(dus.Items))
	}
	du := dus.Items[0]
	vol := velero.StoreVolume(srcNS, "data")
	if du.Spec.DataMover != velero.MoverName || du.Status.Phase != velerov2.DataUploadPhaseCompleted || du.Status.SnapshotID != vol+"@1" {
		t.Fatalf("Velero's DataUpload: spec %+v, status %+v", du.Spec, du.Status)
	}
	if !bytes.Equal(vw.storeImage(vol, 1), vw.want) {
		t.Fatal("the store's generation differs from the source volume")
	}
	t.Logf("velero backup shop-1 Completed: DataUpload %s by %s, %s, %d of %d bytes uploaded; %d items backed up",
		du.Name, du.Spec.DataMover, du.Status.SnapshotID, du.Status.IncrementalBytes, du.Status.Progress.TotalBytes, backup.Status.Progress.ItemsBackedUp)

	// velero restore create --from-backup shop-1 --namespace-mappings src:restored,
	// into this cluster: the receiver (node-r) restores Velero's DataDownload
	// into a volume the PV controller binds to the PVC Velero restored.
	vw.cp.StartControllerManager(t, "persistentvolume-binder", "pvc-protection", "pv-protection")
	vw.goBG(func(ctx context.Context) error {
		return k8stest.RunProvisioner(ctx, vw.kube, k8stest.ProvisionerOptions{Class: "longhorn", Driver: csi.LonghornDriver})
	})
	rmgr, err := k8sreceiver.NewManager(vw.cp.ImpersonatedConfig("voldelta-system", "voldelta-receiver"), k8sreceiver.RunOptions{
		Server: receiver.Config{StateDir: t.TempDir()}, NodeName: rcvNode, HostRoot: vw.rcvHost, Attach: true,
		MetricsAddr: "0", HealthAddr: "0", VeleroNamespace: veleroNS, Logger: testLogger(t).With("side", "receiver")})
	vw.must(err)
	vw.goBG(rmgr.Start)
	restore := &velerov1.Restore{ObjectMeta: metav1.ObjectMeta{Namespace: veleroNS, Name: "shop-1-restore"},
		Spec: velerov1.RestoreSpec{BackupName: "shop-1", NamespaceMapping: map[string]string{srcNS: "restored"},
			ItemOperationTimeout: metav1.Duration{Duration: 4 * time.Minute}}}
	vw.must(vw.vcl.Create(ctx, restore))
	err = k8stest.Eventually(ctx, func() (bool, string, error) {
		if err := vw.bgFailed(); err != nil {
			return false, "", err
		}
		if err := vw.vcl.Get(ctx, client.ObjectKeyFromObject(restore), restore); err != nil {
			return false, "", err
		}
		switch restore.Status.Phase {
		case velerov1.RestorePhaseFailed, velerov1.RestorePhasePartiallyFailed, velerov1.RestorePhaseFailedValidation:
			return false, "", fmt.Errorf("restore %s: %v %s", restore.Status.Phase, restore.Status.ValidationErrors, restore.Status.FailureReason)
		}
		return restore.Status.Phase == velerov1.RestorePhaseCompleted, fmt.Sprintf("restore %+v", restore.Status), nil
	})
	vw.must(err)
	pvc, err := vw.kube.CoreV1().PersistentVolumeClaims("restored").Get(ctx, "data", metav1.GetOptions{})
	vw.must(err)
	pv, err := vw.kube.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
	vw.must(err)
	got, err := os.ReadFile(filepath.Join(vw.rcvHost, "dev", "longhorn", pv.Spec.CSI.VolumeHandle))
	vw.must(err)
	if pvc.Status.Phase != corev1.ClaimBound || !bytes.Equal(got, vw.want) || pv.Annotations[k8sreceiver.AnnotationRestoredFrom] != vol+"@1" {
		t.Fatalf("restored PVC %s, PV %s annotations %v, bytes equal to the source: %v", pvc.Status.Phase, pv.Name, pv.Annotations, bytes.Equal(got, vw.want))
	}
	t.Logf("velero restore shop-1-restore Completed: PVC restored/data bound to %s, %d bytes equal to the source volume", pv.Name, len(got))
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
