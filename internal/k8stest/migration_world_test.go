package k8stest_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	groupsnapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumegroupsnapshot/v1"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	"github.com/prometheus/client_golang/prometheus"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/csi"
	"github.com/voldelta/voldelta/internal/k8sagent"
	"github.com/voldelta/voldelta/internal/k8sreceiver"
	"github.com/voldelta/voldelta/internal/k8stest"
	"github.com/voldelta/voldelta/internal/pki"
	"github.com/voldelta/voldelta/receiver"
	"github.com/voldelta/voldelta/transport"
)

// Layout of the migrated applications' volumes: the writer stamps every
// write's sequence number into a 4 KiB header at offset 0 of every volume
// of its application, and writes a 4 KiB block at a random place of a
// small hot region; the volumes start with initialBytes of random data.
const (
	hdrMagic     = 0x766f6c64656c7461 // "voldelta"
	hotStart     = 1 << 20
	hotBlocks    = 64 // 256 KiB of 4 KiB blocks
	initialBytes = 4 << 20
)

// migWorld is a real control plane and the real kube-controller-manager,
// with deploy/ applied, the agent of srcNode and a receiver on rcvNode (both
// real, in-process, under their service accounts, over loopback TLS; the
// Migration controller is the test's to start), and
// the test playing the snapshot controller, Longhorn and the attacher for
// any number of applications' volumes.
type migWorld struct {
	*cluster // its t is the (sub)test's: see with
	*migState
}

// migState is what the tests of one world share.
type migState struct {
	ctx              context.Context
	srcHost, rcvHost string
	rcvAddr          string
	params           chunk.Params
	bgErr            chan error

	// mu orders the applications' writes against the snapshots: a
	// snapshot is taken between two writes, never during one.
	mu   sync.Mutex
	vols map[string]*migVolume // by source PVC
}

// with returns the world for subtest t: its failures and cleanups are t's.
func (w *migWorld) with(t *testing.T) *migWorld {
	c := *w.cluster
	c.t = t
	return &migWorld{cluster: &c, migState: w.migState}
}

// migVolume is one source PVC, its Longhorn replica and the model of its
// bytes, and its destination PVC.
type migVolume struct {
	pvc, handle string // source PVC (srcNS) and Longhorn volume
	dstHandle   string // the destination PVC (dstNS, same name)'s volume
	replica     *k8stest.LonghornReplica
	image       []byte            // what the application wrote (guarded by migWorld.mu)
	snaps       map[string][]byte // VolumeSnapshot name -> image when it was taken
}

// remote is the volume's name at the destination: <namespace>-<pvc>.
func (v *migVolume) remote() string { return srcNS + "-" + v.pvc }

func newMigWorld(t *testing.T, ctx context.Context) *migWorld {
	c := newCluster(t)
	for _, ns := range []string{srcNS, dstNS, "longhorn-system"} {
		_, err := c.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		c.must(err)
	}
	root := k8stest.RepoRoot()
	for _, d := range []string{"agent", "receiver", "controller"} {
		ms, err := k8stest.LoadKustomization(filepath.Join(root, "deploy", d), k8stest.ClusterScopedKinds)
		c.must(err)
		c.must(c.cp.Apply(ctx, ms, false))
	}
	c.cp.StartControllerManager(t)

	w := &migWorld{cluster: c, migState: &migState{ctx: ctx, srcHost: t.TempDir(), rcvHost: t.TempDir(), bgErr: make(chan error, 16),
		vols: map[string]*migVolume{}}}
	w.params = chunk.DefaultParams()
	w.params.MinSize, w.params.AvgSize, w.params.MaxSize, w.params.SegmentSize = 16<<10, 64<<10, 256<<10, 4<<20

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
	w.rcvAddr = ln.Addr().String()
	rcvCfg := transport.DefaultConfig()
	rcvCfg.TLS = transport.NewTLS(rcvLeaf.TLS, ca.Pool(), true)
	rmgr, err := k8sreceiver.NewManager(c.cp.ImpersonatedConfig("voldelta-system", "voldelta-receiver"), k8sreceiver.RunOptions{
		Server:   receiver.Config{StateDir: t.TempDir(), Transport: rcvCfg, Name: "receiver-test"},
		Listener: ln, NodeName: rcvNode, HostRoot: w.rcvHost, Attach: true,
		MetricsAddr: "0", HealthAddr: "0", Registry: prometheus.NewRegistry(), Logger: testLogger(t).With("side", "receiver"),
	})
	c.must(err)
	w.goBG(rmgr.Start)
	amgr, err := k8sagent.NewManager(c.cp.ImpersonatedConfig("voldelta-system", "voldelta-agent"), k8sagent.RunOptions{
		NodeName: srcNode, HostRoot: w.srcHost, MetricsAddr: "0", HealthAddr: "0", Params: w.params,
		Registry: prometheus.NewRegistry(), Logger: testLogger(t).With("side", "agent"),
	})
	c.must(err)
	w.goBG(amgr.Start)
	w.goBG(w.snapshots)
	w.goBG(w.groupSnapshots)
	w.goBG(func(ctx context.Context) error { return attacher(ctx, c, w.rcvHost) })
	return w
}

// goBG runs f until the test ends; its error fails the next wait.
func (w *migWorld) goBG(f func(context.Context) error) {
	bg, stop := context.WithCancel(w.ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := f(bg); err != nil {
			select {
			case w.bgErr <- err:
			default: // the first ones fail the test already
			}
		}
	}()
	w.t.Cleanup(func() { stop(); wg.Wait() })
}

// eventually is k8stest.Eventually that also fails on a background error.
func (w *migWorld) eventually(what string, cond func() (bool, string, error)) {
	w.t.Helper()
	err := k8stest.Eventually(w.ctx, func() (bool, string, error) {
		select {
		case err := <-w.bgErr:
			return false, "", fmt.Errorf("background: %w", err)
		default:
		}
		return cond()
	})
	if err != nil {
		w.t.Fatalf("%s: %v", what, err)
	}
}

// volume creates a source PVC backed by a Longhorn volume attached to
// srcNode whose replica holds initialBytes of random data, the destination
// PVC of the same name (attached nowhere: the receiver attaches it) and its
// VolumeTarget, which lets agent-a write it.
func (w *migWorld) volume(pvc string, rng *rand.Rand) *migVolume {
	w.t.Helper()
	v := &migVolume{pvc: pvc, handle: "pvc-" + pvc, dstHandle: "pvc-dst-" + pvc, image: make([]byte, volSize), snaps: map[string][]byte{}}
	var err error
	v.replica, err = k8stest.NewLonghornReplica(filepath.Join(w.srcHost, "var", "lib", "longhorn"), v.handle, volSize)
	w.must(err)
	for i := range v.image[:initialBytes] {
		v.image[i] = byte(rng.Uint32())
	}
	w.must(v.replica.WriteHead(v.image[:initialBytes], 0))
	w.boundPVC(w.ctx, srcNS, pvc, "pv-"+pvc, v.handle)
	w.longhornVolume(w.ctx, v.handle, srcNode, srcNS, pvc, "pv-"+pvc)
	w.boundPVC(w.ctx, dstNS, pvc, "pv-dst-"+pvc, v.dstHandle)
	w.must(w.cl.Create(w.ctx, &v1alpha1.VolumeTarget{
		ObjectMeta: metav1.ObjectMeta{Namespace: dstNS, Name: pvc},
		Spec:       v1alpha1.VolumeTargetSpec{RemoteVolume: v.remote(), PVC: pvc, AllowedIdentities: []string{"agent-a"}},
	}))
	w.mu.Lock()
	w.vols[pvc] = v
	w.mu.Unlock()
	return v
}

// device is the path of v's destination device on the receiver's node.
func (w *migWorld) device(v *migVolume) string {
	return filepath.Join(w.rcvHost, "dev", "longhorn", v.dstHandle)
}

// snapshots plays the snapshot controller and Longhorn's CSI driver for
// every volume of the world: a new VolumeSnapshot of a source PVC becomes a
// Longhorn snapshot of its replica, taken between two application writes,
// and a ready content; the image at that moment is kept for the test's
// checks.
func (w *migWorld) snapshots(ctx context.Context) error {
	for {
		list, err := w.snaps.SnapshotV1().VolumeSnapshots(srcNS).List(ctx, metav1.ListOptions{})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		for i := range list.Items {
			vs := &list.Items[i]
			if vs.Status != nil || vs.DeletionTimestamp != nil || vs.Spec.Source.PersistentVolumeClaimName == nil || inGroup(vs) {
				continue
			}
			if err := w.take(ctx, vs); err != nil {
				if ctx.Err() != nil {
					return nil
				}
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

func (w *migWorld) take(ctx context.Context, vs *snapv1.VolumeSnapshot) error {
	pvc := *vs.Spec.Source.PersistentVolumeClaimName
	w.mu.Lock()
	v := w.vols[pvc]
	if v == nil {
		w.mu.Unlock()
		return fmt.Errorf("VolumeSnapshot %s of unknown PVC %s", vs.Name, pvc)
	}
	if _, done := v.snaps[vs.Name]; done {
		// Taken; the status update below failed on a conflict before.
		w.mu.Unlock()
	} else {
		err := v.replica.Snapshot(vs.Name)
		v.snaps[vs.Name] = slices.Clone(v.image)
		w.mu.Unlock()
		if err != nil {
			return err
		}
	}
	return w.bind(ctx, v, vs)
}

// bind creates the ready content of vs, a snapshot of v's replica taken
// under vs's name, and reports vs ready.
func (w *migWorld) bind(ctx context.Context, v *migVolume, vs *snapv1.VolumeSnapshot) error {
	handle := "snap://" + v.handle + "/" + vs.Name
	content := "snapcontent-" + string(vs.UID)
	yes := true
	size := int64(volSize)
	vsc, err := w.snaps.SnapshotV1().VolumeSnapshotContents().Create(ctx, &snapv1.VolumeSnapshotContent{
		ObjectMeta: metav1.ObjectMeta{Name: content},
		Spec: snapv1.VolumeSnapshotContentSpec{
			Driver: csi.LonghornDriver, DeletionPolicy: snapv1.VolumeSnapshotContentDelete,
			Source:            snapv1.VolumeSnapshotContentSource{VolumeHandle: ptr(v.handle)},
			VolumeSnapshotRef: corev1.ObjectReference{Kind: "VolumeSnapshot", Namespace: vs.Namespace, Name: vs.Name, UID: vs.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create content: %w", err)
	}
	now := time.Now().UnixNano()
	vsc.Status = &snapv1.VolumeSnapshotContentStatus{SnapshotHandle: &handle, ReadyToUse: &yes, RestoreSize: &size, CreationTime: &now}
	if _, err := w.snaps.SnapshotV1().VolumeSnapshotContents().UpdateStatus(ctx, vsc, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("content status: %w", err)
	}
	vs.Status = &snapv1.VolumeSnapshotStatus{BoundVolumeSnapshotContentName: &content, ReadyToUse: &yes}
	if _, err := w.snaps.SnapshotV1().VolumeSnapshots(vs.Namespace).UpdateStatus(ctx, vs, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("snapshot status: %w", err)
	}
	return nil
}

// inGroup says whether vs is a member of a VolumeGroupSnapshot (taken by
// groupSnapshots).
func inGroup(vs *snapv1.VolumeSnapshot) bool {
	return slices.ContainsFunc(vs.OwnerReferences, func(o metav1.OwnerReference) bool { return o.Kind == "VolumeGroupSnapshot" })
}

// groupSnapshots plays the common snapshot controller and the CSI driver
// for VolumeGroupSnapshots of srcNS: at one moment between two
// application writes, a Longhorn snapshot of every selected PVC's replica
// (the images kept for the test's checks) and the group's creationTime;
// then, as the common controller does, a member VolumeSnapshot of each
// (owned by the group, spec.source its PVC) with a ready content, and the
// group readyToUse.
func (w *migWorld) groupSnapshots(ctx context.Context) error {
	for {
		list, err := w.snaps.GroupsnapshotV1().VolumeGroupSnapshots(srcNS).List(ctx, metav1.ListOptions{})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		for i := range list.Items {
			g := &list.Items[i]
			if (g.Status != nil && g.Status.ReadyToUse != nil && *g.Status.ReadyToUse) || g.DeletionTimestamp != nil {
				continue
			}
			if err := w.takeGroup(ctx, g); err != nil {
				if ctx.Err() != nil {
					return nil
				}
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

// memberName is the member VolumeSnapshot of pvc in group g.
func memberName(g *groupsnapv1.VolumeGroupSnapshot, pvc string) string {
	return "snapshot-" + string(g.UID)[:8] + "-" + pvc
}

func (w *migWorld) takeGroup(ctx context.Context, g *groupsnapv1.VolumeGroupSnapshot) error {
	sel, err := metav1.LabelSelectorAsSelector(g.Spec.Source.Selector)
	if err != nil {
		return fmt.Errorf("group %s: selector: %w", g.Name, err)
	}
	pvcs, err := w.kube.CoreV1().PersistentVolumeClaims(srcNS).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return err
	}
	var vols []*migVolume
	w.mu.Lock()
	for _, p := range pvcs.Items {
		v := w.vols[p.Name]
		if v == nil {
			w.mu.Unlock()
			return fmt.Errorf("group %s selects unknown PVC %s", g.Name, p.Name)
		}
		vols = append(vols, v)
		name := memberName(g, p.Name)
		if _, done := v.snaps[name]; done {
			continue
		}
		if err := v.replica.Snapshot(name); err != nil {
			w.mu.Unlock()
			return err
		}
		v.snaps[name] = slices.Clone(v.image)
	}
	w.mu.Unlock()
	if len(vols) == 0 {
		return fmt.Errorf("group %s selects no PVC", g.Name)
	}
	now := metav1.Now()
	if g.Status == nil || g.Status.CreationTime == nil {
		g.Status = &groupsnapv1.VolumeGroupSnapshotStatus{CreationTime: &now, ReadyToUse: ptr(false)}
		if g, err = w.snaps.GroupsnapshotV1().VolumeGroupSnapshots(srcNS).UpdateStatus(ctx, g, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("group %s: creation time: %w", g.Name, err)
		}
	}
	for _, v := range vols {
		name := memberName(g, v.pvc)
		vs, err := w.snaps.SnapshotV1().VolumeSnapshots(srcNS).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			vs, err = w.snaps.SnapshotV1().VolumeSnapshots(srcNS).Create(ctx, &snapv1.VolumeSnapshot{
				ObjectMeta: metav1.ObjectMeta{Namespace: srcNS, Name: name, OwnerReferences: []metav1.OwnerReference{{
					APIVersion: groupsnapv1.SchemeGroupVersion.String(), Kind: "VolumeGroupSnapshot", Name: g.Name, UID: g.UID}}},
				Spec: snapv1.VolumeSnapshotSpec{Source: snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: ptr(v.pvc)}},
			}, metav1.CreateOptions{})
		}
		if err != nil {
			return fmt.Errorf("group %s: member %s: %w", g.Name, name, err)
		}
		if vs.Status == nil {
			if err := w.bind(ctx, v, vs); err != nil {
				return fmt.Errorf("group %s: member %s: %w", g.Name, name, err)
			}
		}
	}
	g.Status.ReadyToUse = ptr(true)
	if _, err := w.snaps.GroupsnapshotV1().VolumeGroupSnapshots(srcNS).UpdateStatus(ctx, g, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("group %s: ready: %w", g.Name, err)
	}
	return nil
}

// migApp is an application: a Deployment of 2 replicas whose pod template
// mounts its two PVCs, and a writer that models it: while any of its pods
// exists it writes, each write stamping the next sequence number into every
// volume; once its pods are gone (after they existed) it stops for good.
type migApp struct {
	name    string
	vols    []*migVolume
	seq     uint64        // the last write's sequence number (guarded by migWorld.mu)
	stopped chan struct{} // closed when the writer saw the pods gone
}

// app creates the application name with volumes name-a and name-b; hold
// puts a finalizer on its pods, so that they stay (terminating) after a
// scale-down until the test releases them.
func (w *migWorld) app(name string, hold bool) *migApp {
	w.t.Helper()
	rng := rand.New(rand.NewPCG(uint64(len(name)), 7))
	a := &migApp{name: name, stopped: make(chan struct{})}
	for _, s := range []string{"a", "b"} {
		a.vols = append(a.vols, w.volume(name+"-"+s, rng))
	}
	tmpl := podTemplate(name)
	if hold {
		tmpl.Finalizers = []string{holdFinalizer}
	}
	for _, v := range a.vols {
		tmpl.Spec.Volumes = append(tmpl.Spec.Volumes, corev1.Volume{Name: v.pvc, VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: v.pvc}}})
		tmpl.Spec.Containers[0].VolumeDevices = append(tmpl.Spec.Containers[0].VolumeDevices,
			corev1.VolumeDevice{Name: v.pvc, DevicePath: "/dev/" + v.pvc})
	}
	_, err := w.kube.AppsV1().Deployments(srcNS).Create(w.ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: srcNS, Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr(int32(2)),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Template: tmpl,
		},
	}, metav1.CreateOptions{})
	w.must(err)
	waitPods(w.t, w.ctx, w.kube, srcNS, "app="+name, 2)
	w.goBG(func(ctx context.Context) error { return w.write(ctx, a, rand.New(rand.NewPCG(uint64(len(name)), 8))) })
	return a
}

const holdFinalizer = "voldelta.test/hold"

// write is the application's writer.
func (w *migWorld) write(ctx context.Context, a *migApp, rng *rand.Rand) error {
	sawPods := false
	block := make([]byte, 4096)
	for {
		w.mu.Lock()
		pods, err := w.kube.CoreV1().Pods(srcNS).List(ctx, metav1.ListOptions{LabelSelector: "app=" + a.name})
		if err != nil {
			w.mu.Unlock()
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if len(pods.Items) == 0 {
			w.mu.Unlock()
			if sawPods {
				close(a.stopped)
				return nil
			}
		} else {
			sawPods = true
			a.seq++
			off := int64(hotStart + rng.IntN(hotBlocks)*4096)
			for _, v := range a.vols {
				for _, at := range []int64{0, off} {
					for i := range block {
						block[i] = byte(rng.Uint32())
					}
					binary.LittleEndian.PutUint64(block[0:], a.seq)
					binary.LittleEndian.PutUint64(block[8:], hdrMagic)
					if err := v.replica.WriteHead(block, at); err != nil {
						w.mu.Unlock()
						return err
					}
					copy(v.image[at:], block)
				}
			}
			w.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// lastSeq is the sequence number in the header of an image, or an error if
// there is none.
func lastSeq(img []byte) (uint64, error) {
	if len(img) < 16 || binary.LittleEndian.Uint64(img[8:]) != hdrMagic {
		return 0, fmt.Errorf("no writer header")
	}
	return binary.LittleEndian.Uint64(img), nil
}

// release removes the hold finalizer from the application's pods.
func (w *migWorld) release(a *migApp) {
	w.t.Helper()
	pods, err := w.kube.CoreV1().Pods(srcNS).List(w.ctx, metav1.ListOptions{LabelSelector: "app=" + a.name})
	w.must(err)
	for _, p := range pods.Items {
		if slices.Contains(p.Finalizers, holdFinalizer) {
			_, err := w.kube.CoreV1().Pods(srcNS).Patch(w.ctx, p.Name, types.MergePatchType,
				[]byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
			w.must(err)
		}
	}
}

// readFile reads a file or fails the test.
func (w *migWorld) readFile(path string) []byte {
	w.t.Helper()
	b, err := os.ReadFile(path)
	w.must(err)
	return b
}
