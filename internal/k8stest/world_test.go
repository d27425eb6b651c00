package k8stest_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/internal/k8stest"
)

// world is a real control plane with deploy/ applied (the agent's and the
// receiver's objects and RBAC; the examples by a server-side dry run), a
// Longhorn source volume attached to node-a whose replica holds 6 MiB of
// random data, a destination PVC attached nowhere, and the test's snapshot
// controller and attacher running until the test ends.
type world struct {
	*cluster
	ctx              context.Context
	srcHost, rcvHost string
	replica          *k8stest.LonghornReplica
	snapper          *snapshotController
	want             []byte // the source volume's bytes
	rng              *rand.Rand
	params           chunk.Params // small chunks and 4 MiB segments
	bgErr            chan error
}

func newWorld(t *testing.T, ctx context.Context) *world {
	return newWorldInstalled(t, ctx, func(c *cluster) {
		for _, d := range []string{"agent", "receiver"} {
			ms, err := k8stest.LoadKustomization(filepath.Join(k8stest.RepoRoot(), "deploy", d), k8stest.ClusterScopedKinds)
			c.must(err)
			c.must(c.cp.Apply(ctx, ms, false))
		}
	})
}

// newWorldInstalled is newWorld with voldelta's objects created by install
// (the kustomize bases, or the Helm chart: chart_test.go).
func newWorldInstalled(t *testing.T, ctx context.Context, install func(*cluster)) *world {
	c := newCluster(t)
	for _, ns := range []string{srcNS, dstNS, "longhorn-system", "shop"} {
		_, err := c.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		c.must(err)
	}
	install(c)
	root := k8stest.RepoRoot()
	examples, err := k8stest.LoadKustomization(filepath.Join(root, "deploy", "examples"), k8stest.ClusterScopedKinds)
	c.must(err)
	c.must(c.cp.Apply(ctx, examples, true))

	w := &world{cluster: c, ctx: ctx, srcHost: t.TempDir(), rcvHost: t.TempDir(), want: make([]byte, volSize),
		rng: rand.New(rand.NewPCG(1, 2)), bgErr: make(chan error, 8)}
	w.params = chunk.DefaultParams()
	w.params.MinSize, w.params.AvgSize, w.params.MaxSize, w.params.SegmentSize = 16<<10, 64<<10, 256<<10, 4<<20

	// Source: a Longhorn volume attached to node-a, with a replica there.
	w.replica, err = k8stest.NewLonghornReplica(filepath.Join(w.srcHost, "var", "lib", "longhorn"), srcHandle, volSize)
	c.must(err)
	for i := range w.want[:6<<20] {
		w.want[i] = byte(w.rng.Uint32())
	}
	c.must(w.replica.WriteHead(w.want[:6<<20], 0))
	c.boundPVC(ctx, srcNS, "data", "pv-src", srcHandle)
	c.longhornVolume(ctx, srcHandle, srcNode, srcNS, "data", "pv-src")
	// Destination: a PVC attached nowhere yet; the receiver attaches it.
	c.boundPVC(ctx, dstNS, "replica", "pv-dst", dstHandle)

	w.snapper = &snapshotController{c: c, replica: w.replica}
	w.goBG(w.snapper.run)
	w.goBG(func(ctx context.Context) error { return attacher(ctx, c, w.rcvHost) })
	return w
}

// goBG runs f until the test ends; its error fails the next wait.
func (w *world) goBG(f func(context.Context) error) {
	bg, stop := context.WithCancel(w.ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := f(bg); err != nil {
			w.bgErr <- err
		}
	}()
	w.t.Cleanup(func() { stop(); wg.Wait() })
}

// bgFailed returns the first error of a background controller, if any.
func (w *world) bgFailed() error {
	select {
	case err := <-w.bgErr:
		return err
	default:
		return nil
	}
}

// waitSynced waits until vsync committed the round of manual trigger.
func (w *world) waitSynced(vsync *v1alpha1.VolumeSync, trigger string) *v1alpha1.VolumeSync {
	w.t.Helper()
	var got v1alpha1.VolumeSync
	err := k8stest.Eventually(w.ctx, func() (bool, string, error) {
		if err := w.bgFailed(); err != nil {
			return false, "", err
		}
		if err := w.cl.Get(w.ctx, client.ObjectKeyFromObject(vsync), &got); err != nil {
			return false, "", err
		}
		ready := meta.IsStatusConditionTrue(got.Status.Conditions, v1alpha1.ConditionReady)
		return ready && got.Status.LastManualTrigger == trigger, fmt.Sprintf("status %+v", got.Status), nil
	})
	if err != nil {
		w.t.Fatalf("VolumeSync did not sync trigger %s: %v", trigger, err)
	}
	return &got
}

// trigger sets vsync's manual trigger.
func (w *world) trigger(vsync *v1alpha1.VolumeSync, value string) {
	w.t.Helper()
	w.must(w.cl.Get(w.ctx, client.ObjectKeyFromObject(vsync), vsync))
	vsync.Spec.Trigger.Manual = value
	w.must(w.cl.Update(w.ctx, vsync))
}

// change writes n random bytes at off into the source replica's head (and
// w.want) and returns them.
func (w *world) change(off, n int) []byte {
	w.t.Helper()
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(w.rng.Uint32())
	}
	w.snapper.mu.Lock()
	err := w.replica.WriteHead(b, int64(off))
	w.snapper.mu.Unlock()
	w.must(err)
	copy(w.want[off:], b)
	return b
}

// targetBytes reads the destination volume's device on the receiver's node.
func (w *world) targetBytes() []byte {
	w.t.Helper()
	b, err := os.ReadFile(filepath.Join(w.rcvHost, "dev", "longhorn", dstHandle))
	w.must(err)
	return b
}
