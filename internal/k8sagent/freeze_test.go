package k8sagent_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/csi"
	"github.com/voldelta/voldelta/internal/k8sagent"
	"github.com/voldelta/voldelta/internal/k8stest"
)

// The freeze ioctls (linux/fs.h).
const (
	fiFreeze = 0xc0045877
	fiThaw   = 0xc0045878
)

// TestFreeze runs ReconcileFreeze against a real kube-apiserver with real
// ext4 filesystems on loop devices, mounted where the kubelet mounts a
// pod's CSI volume (under a temporary kubelet directory). Every subtest
// has its own namespace, PV, loop device, reconciler and fake clock.
func TestFreeze(t *testing.T) {
	for _, tool := range []string{"losetup", "mkfs.ext4", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing: apt-get install util-linux mount e2fsprogs (%v)", tool, err)
		}
	}
	if os.Geteuid() != 0 {
		t.Fatal("freezing needs root (CAP_SYS_ADMIN) for loop devices, mounts and FIFREEZE: run the tests as root")
	}
	cp := k8stest.Start(t)
	s := runtime.NewScheme()
	if err := k8sagent.Scheme(s); err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(cp.Config, client.Options{Scheme: s})
	if err != nil {
		t.Fatal(err)
	}
	kube, err := kubernetes.NewForConfig(cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	snaps, err := snapclient.NewForConfig(cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		run  func(*fenv)
	}{
		{"freeze-thaw", testFreezeThaw},
		{"timeout", testFreezeTimeout},
		{"restart", testFreezeRestart},
		{"frozen-by-someone-else", testFrozenBySomeoneElse},
		{"no-mount", testFreezeNoMount},
		{"block", testFreezeBlock},
		{"deleted", testFreezeDeleted},
		{"other-node", testFreezeOtherNode},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(newFEnv(t, cl, kube, snaps, tc.name))
		})
	}
}

type fenv struct {
	t       *testing.T
	ctx     context.Context
	cl      client.Client
	kube    kubernetes.Interface
	snaps   snapclient.Interface
	ns, pv  string
	kubelet string // the kubelet directory
	clock   *clocktesting.FakeClock
	rec     *k8sagent.Reconciler
}

func newFEnv(t *testing.T, cl client.Client, kube kubernetes.Interface, snaps snapclient.Interface, ns string) *fenv {
	e := &fenv{t: t, ctx: context.Background(), cl: cl, kube: kube, snaps: snaps, ns: ns, pv: "pv-" + ns,
		kubelet: t.TempDir(), clock: clocktesting.NewFakeClock(time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC))}
	_, err := kube.CoreV1().Namespaces().Create(e.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	e.must(err)
	e.rec = e.reconciler()
	return e
}

// reconciler is a new agent process of node-a.
func (e *fenv) reconciler() *k8sagent.Reconciler {
	res, err := csi.NewResolver(csi.ResolverOptions{Kube: e.kube})
	e.must(err)
	sn, err := csi.NewSnapshotter(e.snaps, time.Second)
	e.must(err)
	r, err := k8sagent.New(k8sagent.Options{Client: e.cl, Kube: e.kube, Snapshots: e.snaps, Resolver: res, Snapshotter: sn,
		Images: &csi.Images{}, NodeName: "node-a", Clock: e.clock, KubeletDir: e.kubelet})
	e.must(err)
	return r
}

func (e *fenv) must(err error) {
	e.t.Helper()
	if err != nil {
		e.t.Fatal(err)
	}
}

// volume creates the PVC "data" bound to a CSI PV of the mode, attached
// to node, and its VolumeSync "data".
func (e *fenv) volume(mode corev1.PersistentVolumeMode, node string) {
	e.t.Helper()
	pvc, err := e.kube.CoreV1().PersistentVolumeClaims(e.ns).Create(e.ctx, &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: e.ns, Name: "data"},
		Spec: corev1.PersistentVolumeClaimSpec{VolumeName: e.pv, VolumeMode: &mode,
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("64Mi")}}},
	}, metav1.CreateOptions{})
	e.must(err)
	pvc.Status.Phase = corev1.ClaimBound
	_, err = e.kube.CoreV1().PersistentVolumeClaims(e.ns).UpdateStatus(e.ctx, pvc, metav1.UpdateOptions{})
	e.must(err)
	_, err = e.kube.CoreV1().PersistentVolumes().Create(e.ctx, &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: e.pv},
		Spec: corev1.PersistentVolumeSpec{VolumeMode: &mode, AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Capacity: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("64Mi")},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
				Driver: "example.csi.io", VolumeHandle: "vol-" + e.ns}}},
	}, metav1.CreateOptions{})
	e.must(err)
	va, err := e.kube.StorageV1().VolumeAttachments().Create(e.ctx, &storagev1.VolumeAttachment{
		ObjectMeta: metav1.ObjectMeta{Name: "va-" + e.ns},
		Spec: storagev1.VolumeAttachmentSpec{Attacher: "example.csi.io", NodeName: node,
			Source: storagev1.VolumeAttachmentSource{PersistentVolumeName: &e.pv}},
	}, metav1.CreateOptions{})
	e.must(err)
	va.Status.Attached = true
	_, err = e.kube.StorageV1().VolumeAttachments().UpdateStatus(e.ctx, va, metav1.UpdateOptions{})
	e.must(err)
	e.must(e.cl.Create(e.ctx, &v1alpha1.VolumeSync{
		ObjectMeta: metav1.ObjectMeta{Namespace: e.ns, Name: "data"},
		Spec: v1alpha1.VolumeSyncSpec{SourcePVC: "data",
			Destination: v1alpha1.Destination{Address: "replica.example:7300", TLSSecretName: "tls"}},
	}))
}

// filesystem makes an ext4 on a new loop device and mounts it for the
// pods (the first directly, the others bind-mounted, as the kubelet
// publishes one filesystem to several pods); it returns the mount points.
// Cleanup thaws, unmounts and detaches.
func (e *fenv) filesystem(pods ...string) []string {
	e.t.Helper()
	img := filepath.Join(e.t.TempDir(), "fs.img")
	e.must(os.WriteFile(img, nil, 0o600))
	e.must(os.Truncate(img, 32<<20))
	out, err := exec.Command("losetup", "-f", "--show", img).CombinedOutput()
	if err != nil {
		e.t.Fatalf("losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	e.t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			e.t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", dev).CombinedOutput(); err != nil {
		e.t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	var points []string
	for i, pod := range pods {
		p := filepath.Join(e.kubelet, "pods", pod, "volumes", "kubernetes.io~csi", e.pv, "mount")
		e.must(os.MkdirAll(p, 0o755))
		args := []string{dev, p}
		if i > 0 {
			args = []string{"--bind", points[0], p}
		}
		if out, err := exec.Command("mount", args...).CombinedOutput(); err != nil {
			e.t.Fatalf("mount %v: %v: %s", args, err, out)
		}
		e.t.Cleanup(func() {
			if out, err := exec.Command("umount", p).CombinedOutput(); err != nil {
				e.t.Errorf("umount %s: %v: %s", p, err, out)
			}
		})
		points = append(points, p)
	}
	e.t.Cleanup(func() { ioctl(points[0], fiThaw) }) // first: nothing stays frozen
	return points
}

// ioctl runs a freeze ioctl on the filesystem at dir.
func ioctl(dir string, req uint) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.IoctlSetInt(fd, req, 0)
}

// expectFrozen: a second FIFREEZE says EBUSY.
func (e *fenv) expectFrozen(dir string) {
	e.t.Helper()
	switch err := ioctl(dir, fiFreeze); {
	case errors.Is(err, unix.EBUSY):
	case err == nil:
		ioctl(dir, fiThaw)
		e.t.Fatalf("%s is not frozen", dir)
	default:
		e.t.Fatalf("FIFREEZE %s: %v", dir, err)
	}
}

// expectThawed: FITHAW says EINVAL (not frozen).
func (e *fenv) expectThawed(dir string) {
	e.t.Helper()
	switch err := ioctl(dir, fiThaw); {
	case errors.Is(err, unix.EINVAL):
	case err == nil:
		e.t.Fatalf("%s was still frozen", dir)
	default:
		e.t.Fatalf("FITHAW %s: %v", dir, err)
	}
	e.must(os.WriteFile(filepath.Join(dir, "after-thaw"), []byte("written"), 0o600))
}

func (e *fenv) get() *v1alpha1.VolumeSync {
	e.t.Helper()
	var vs v1alpha1.VolumeSync
	e.must(e.cl.Get(e.ctx, types.NamespacedName{Namespace: e.ns, Name: "data"}, &vs))
	return &vs
}

// setFreeze sets (or, with token "", removes) spec.freeze as the
// controller does.
func (e *fenv) setFreeze(token string, timeout time.Duration) {
	e.t.Helper()
	vs := e.get()
	orig := vs.DeepCopy()
	vs.Spec.Freeze = nil
	if token != "" {
		vs.Spec.Freeze = &v1alpha1.VolumeFreeze{Token: token}
		if timeout > 0 {
			vs.Spec.Freeze.Timeout = &metav1.Duration{Duration: timeout}
		}
	}
	e.must(e.cl.Patch(e.ctx, vs, client.MergeFrom(orig)))
}

func (e *fenv) reconcileWith(r *k8sagent.Reconciler) (*v1alpha1.VolumeFreezeStatus, ctrl.Result) {
	e.t.Helper()
	res, err := r.ReconcileFreeze(e.ctx, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: e.ns, Name: "data"}})
	if err != nil {
		e.t.Fatalf("ReconcileFreeze: %v", err)
	}
	return e.get().Status.Freeze, res
}

func (e *fenv) reconcile() (*v1alpha1.VolumeFreezeStatus, ctrl.Result) {
	e.t.Helper()
	return e.reconcileWith(e.rec)
}

func (e *fenv) expectStatus(st *v1alpha1.VolumeFreezeStatus, token string, phase v1alpha1.FreezePhase, reason, msg string) {
	e.t.Helper()
	if st == nil || st.Token != token || st.Phase != phase || st.Reason != reason || st.Node != "node-a" || !strings.Contains(st.Message, msg) {
		e.t.Fatalf("status.freeze %+v, want token %s, %s (%s) on node-a mentioning %q", st, token, phase, reason, msg)
	}
}

// testFreezeThaw: spec.freeze freezes the filesystem once for the two
// pods that mount it; removing it thaws it.
func testFreezeThaw(e *fenv) {
	e.volume(corev1.PersistentVolumeFilesystem, "node-a")
	points := e.filesystem("pod-1", "pod-2")
	e.must(os.WriteFile(filepath.Join(points[0], "before"), []byte("x"), 0o600))
	if st, _ := e.reconcile(); st != nil {
		e.t.Fatalf("status.freeze %+v without spec.freeze", st)
	}
	e.setFreeze("cut-1", 0)
	st, res := e.reconcile()
	e.expectStatus(st, "cut-1", v1alpha1.FreezeFrozen, v1alpha1.FreezeReasonFrozen, "froze "+points[0]+" (ext4")
	if strings.Contains(st.Message, points[1]) || st.FrozenTime == nil || !st.FrozenTime.Time.Equal(e.clock.Now()) || st.ThawedTime != nil {
		e.t.Errorf("status.freeze %+v: one filesystem, frozen now", st)
	}
	if res.RequeueAfter != k8sagent.DefaultFreezeTimeout {
		e.t.Errorf("requeue after %s, want the default timeout", res.RequeueAfter)
	}
	e.expectFrozen(points[0])
	e.expectFrozen(points[1]) // the same filesystem
	// Looked at again: still frozen, not frozen twice.
	e.clock.Step(10 * time.Second)
	st, res = e.reconcile()
	e.expectStatus(st, "cut-1", v1alpha1.FreezeFrozen, v1alpha1.FreezeReasonFrozen, "froze")
	if res.RequeueAfter != k8sagent.DefaultFreezeTimeout-10*time.Second {
		e.t.Errorf("requeue after %s", res.RequeueAfter)
	}
	e.setFreeze("", 0)
	st, _ = e.reconcile()
	e.expectStatus(st, "cut-1", v1alpha1.FreezeThawed, v1alpha1.FreezeReasonReleased, "spec.freeze removed")
	if st.ThawedTime == nil || !st.ThawedTime.Time.Equal(e.clock.Now()) {
		e.t.Errorf("thawed time %v", st.ThawedTime)
	}
	e.expectThawed(points[0])
}

// testFreezeTimeout: the agent thaws a filesystem frozen for longer than
// spec.freeze.timeout, whatever the spec says, and does not freeze it
// again for that token.
func testFreezeTimeout(e *fenv) {
	e.volume(corev1.PersistentVolumeFilesystem, "node-a")
	points := e.filesystem("pod-1")
	e.setFreeze("cut-1", 30*time.Second)
	st, res := e.reconcile()
	e.expectStatus(st, "cut-1", v1alpha1.FreezeFrozen, v1alpha1.FreezeReasonFrozen, "froze")
	if res.RequeueAfter != 30*time.Second {
		e.t.Errorf("requeue after %s, want 30s", res.RequeueAfter)
	}
	e.clock.Step(29 * time.Second)
	if _, res = e.reconcile(); res.RequeueAfter != time.Second {
		e.t.Errorf("requeue after %s, want 1s", res.RequeueAfter)
	}
	e.expectFrozen(points[0])
	e.clock.Step(time.Second)
	st, _ = e.reconcile()
	e.expectStatus(st, "cut-1", v1alpha1.FreezeThawed, v1alpha1.FreezeReasonTimeout, "30s")
	e.expectThawed(points[0])
	st, _ = e.reconcile()
	e.expectStatus(st, "cut-1", v1alpha1.FreezeThawed, v1alpha1.FreezeReasonTimeout, "30s")
	e.expectThawed(points[0])
	// A new token is a new request.
	e.setFreeze("cut-2", 0)
	st, _ = e.reconcile()
	e.expectStatus(st, "cut-2", v1alpha1.FreezeFrozen, v1alpha1.FreezeReasonFrozen, "froze")
	e.expectFrozen(points[0])
	e.setFreeze("cut-3", 0) // a changed token thaws, then freezes for the new one
	st, _ = e.reconcile()
	e.expectStatus(st, "cut-3", v1alpha1.FreezeFrozen, v1alpha1.FreezeReasonFrozen, "froze")
	e.expectFrozen(points[0])
	e.setFreeze("", 0)
	e.reconcile()
	e.expectThawed(points[0])
}

// testFreezeRestart: an agent restarted while the filesystem is frozen
// finds it still frozen (its status says it froze it) and thaws it once
// the spec no longer asks; one that finds it thawed by someone else
// reports that.
func testFreezeRestart(e *fenv) {
	e.volume(corev1.PersistentVolumeFilesystem, "node-a")
	points := e.filesystem("pod-1")
	e.setFreeze("cut-1", 0)
	e.reconcile()
	e.expectFrozen(points[0])
	restarted := e.reconciler()
	st, res := e.reconcileWith(restarted)
	e.expectStatus(st, "cut-1", v1alpha1.FreezeFrozen, v1alpha1.FreezeReasonFrozen, "froze")
	if res.RequeueAfter != k8sagent.DefaultFreezeTimeout {
		e.t.Errorf("requeue after %s", res.RequeueAfter)
	}
	e.expectFrozen(points[0])
	e.setFreeze("", 0)
	st, _ = e.reconcileWith(e.reconciler())
	e.expectStatus(st, "cut-1", v1alpha1.FreezeThawed, v1alpha1.FreezeReasonReleased, "removed")
	e.expectThawed(points[0])

	// Frozen, thawed behind the agent's back, then the agent restarts.
	e.setFreeze("cut-2", 0)
	e.reconcile()
	e.must(ioctl(points[0], fiThaw))
	st, _ = e.reconcileWith(e.reconciler())
	e.expectStatus(st, "cut-2", v1alpha1.FreezeFailed, v1alpha1.FreezeReasonThawedOutside, "thawed by someone else")
	e.expectThawed(points[0])
}

// testFrozenBySomeoneElse: a filesystem frozen already (fsfreeze -f) is
// not taken over: Failed, and it is left as it was.
func testFrozenBySomeoneElse(e *fenv) {
	e.volume(corev1.PersistentVolumeFilesystem, "node-a")
	points := e.filesystem("pod-1")
	e.must(ioctl(points[0], fiFreeze))
	e.setFreeze("cut-1", 0)
	st, _ := e.reconcile()
	e.expectStatus(st, "cut-1", v1alpha1.FreezeFailed, v1alpha1.FreezeReasonAlreadyFrozen, "frozen by someone else")
	e.expectFrozen(points[0])
	e.setFreeze("", 0)
	e.reconcile()
	e.expectFrozen(points[0]) // not ours to thaw
	e.must(ioctl(points[0], fiThaw))
}

// testFreezeNoMount: a volume no pod of the node mounts cannot be
// frozen.
func testFreezeNoMount(e *fenv) {
	e.volume(corev1.PersistentVolumeFilesystem, "node-a")
	e.setFreeze("cut-1", 0)
	st, res := e.reconcile()
	e.expectStatus(st, "cut-1", v1alpha1.FreezeFailed, v1alpha1.FreezeReasonCannotFreeze, "cannot freeze: no pod on node node-a mounts PV "+e.pv)
	if st.FrozenTime != nil || res.RequeueAfter != 0 {
		e.t.Errorf("status %+v, requeue %s", st, res.RequeueAfter)
	}
	st, _ = e.reconcile() // this token is done with
	e.expectStatus(st, "cut-1", v1alpha1.FreezeFailed, v1alpha1.FreezeReasonCannotFreeze, "no pod")
}

// testFreezeBlock: a block-mode volume has no filesystem to freeze.
func testFreezeBlock(e *fenv) {
	e.volume(corev1.PersistentVolumeBlock, "node-a")
	e.setFreeze("cut-1", 0)
	st, _ := e.reconcile()
	e.expectStatus(st, "cut-1", v1alpha1.FreezeFailed, v1alpha1.FreezeReasonCannotFreeze, "cannot freeze: PV "+e.pv+" is a block volume")
}

// testFreezeDeleted: a VolumeSync deleted while its filesystem is frozen
// gets it thawed.
func testFreezeDeleted(e *fenv) {
	e.volume(corev1.PersistentVolumeFilesystem, "node-a")
	points := e.filesystem("pod-1")
	e.setFreeze("cut-1", 0)
	e.reconcile()
	e.expectFrozen(points[0])
	e.must(e.cl.Delete(e.ctx, e.get()))
	if _, err := e.rec.ReconcileFreeze(e.ctx, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: e.ns, Name: "data"}}); err != nil {
		e.t.Fatal(err)
	}
	e.expectThawed(points[0])
}

// testFreezeOtherNode: the agent of another node leaves it alone.
func testFreezeOtherNode(e *fenv) {
	e.volume(corev1.PersistentVolumeFilesystem, "node-b")
	points := e.filesystem("pod-1")
	e.setFreeze("cut-1", 0)
	if st, _ := e.reconcile(); st != nil {
		e.t.Fatalf("status.freeze %+v from the agent of another node", st)
	}
	e.expectThawed(points[0])
}
