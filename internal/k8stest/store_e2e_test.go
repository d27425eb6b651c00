package k8stest_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/internal/k8sagent"
	"github.com/voldelta/voldelta/internal/k8sreceiver"
	"github.com/voldelta/voldelta/internal/k8stest"
	"github.com/voldelta/voldelta/internal/k8sutil"
	"github.com/voldelta/voldelta/internal/miniotest"
	"github.com/voldelta/voldelta/receiver"
)

// TestVolumeSyncThroughStore replicates a Longhorn PVC through a real MinIO
// instead of a direct connection, with the permissions deploy/ grants: the
// agent pushes each round of a VolumeSync whose destination is the store,
// and a receiver that opens no port pulls each new generation into the
// VolumeTarget's volume in place. After a small change, the second round
// uploads and the pull downloads only about the change.
func TestVolumeSyncThroughStore(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	w := newWorld(t, ctx)
	c := w.cluster

	srv, err := miniotest.Start()
	c.must(err)
	t.Cleanup(srv.Stop)
	c.must(srv.MakeBucket(ctx, "replicas"))
	for _, ns := range []string{srcNS, dstNS} {
		_, err := c.kube.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "s3"},
			Data: map[string][]byte{k8sutil.KeyAccessKeyID: []byte(miniotest.User), k8sutil.KeySecretAccessKey: []byte(miniotest.Password)}},
			metav1.CreateOptions{})
		c.must(err)
	}
	store := v1alpha1.Store{URL: "s3://replicas/dc1", Endpoint: srv.Endpoint, Insecure: true, CredentialsSecretName: "s3"}

	// A pull-only receiver (no listener) and the agent of node-a, each
	// under its service account; the receiver serves controller-runtime's
	// registry as in production.
	rcvMetrics := freeAddr(t)
	rmgr, err := k8sreceiver.NewManager(c.cp.ImpersonatedConfig("voldelta-system", "voldelta-receiver"), k8sreceiver.RunOptions{
		Server:   receiver.Config{StateDir: t.TempDir()},
		NodeName: rcvNode, HostRoot: w.rcvHost, Attach: true, MetricsAddr: rcvMetrics, HealthAddr: "0",
		Logger: testLogger(t).With("side", "receiver"),
	})
	c.must(err)
	w.goBG(rmgr.Start)
	amgr, err := k8sagent.NewManager(c.cp.ImpersonatedConfig("voldelta-system", "voldelta-agent"), k8sagent.RunOptions{
		NodeName: srcNode, HostRoot: w.srcHost, MetricsAddr: "0", HealthAddr: "0", Params: w.params,
		Registry: prometheus.NewRegistry(), Logger: testLogger(t).With("side", "agent"),
	})
	c.must(err)
	w.goBG(amgr.Start)

	vt := &v1alpha1.VolumeTarget{
		ObjectMeta: metav1.ObjectMeta{Namespace: dstNS, Name: "replica"},
		Spec: v1alpha1.VolumeTargetSpec{RemoteVolume: remoteName, PVC: "replica",
			Store: &v1alpha1.StoreSource{Store: store, PollInterval: &metav1.Duration{Duration: time.Second}}},
	}
	c.must(c.cl.Create(ctx, vt))
	vsync := &v1alpha1.VolumeSync{
		ObjectMeta: metav1.ObjectMeta{Namespace: srcNS, Name: "data"},
		Spec: v1alpha1.VolumeSyncSpec{
			SourcePVC:               "data",
			Destination:             v1alpha1.Destination{Store: &store, VolumeName: remoteName},
			Trigger:                 v1alpha1.Trigger{Manual: "1"},
			VolumeSnapshotClassName: "longhorn-snap",
		},
	}
	c.must(c.cl.Create(ctx, vsync))

	// waitPulled waits until the target holds the store's generation gen.
	waitPulled := func(gen int64) v1alpha1.VolumeTargetStatus {
		t.Helper()
		var got v1alpha1.VolumeTarget
		err := k8stest.Eventually(ctx, func() (bool, string, error) {
			if err := w.bgFailed(); err != nil {
				return false, "", err
			}
			if err := c.cl.Get(ctx, client.ObjectKeyFromObject(vt), &got); err != nil {
				return false, "", err
			}
			st := got.Status
			return st.StoreGeneration == gen && st.Phase == v1alpha1.PhaseIdle && meta.IsStatusConditionTrue(st.Conditions, v1alpha1.ConditionReady),
				fmt.Sprintf("status %+v", st), nil
		})
		if err != nil {
			t.Fatalf("VolumeTarget did not pull store generation %d: %v", gen, err)
		}
		return got.Status
	}

	// Round 1: everything, pushed and pulled.
	st := w.waitSynced(vsync, "1").Status
	if st.LastGeneration != 1 || st.LastBytesSent < 6<<20 || st.LastWireBytes <= 0 || st.Rounds != 1 {
		t.Fatalf("VolumeSync status after round 1: %+v", st)
	}
	ts := waitPulled(1)
	if !bytes.Equal(w.targetBytes(), w.want) {
		t.Fatal("round 1: the target does not hold the snapshot's bytes")
	}
	if ts.RootHash != st.LastRootHash || ts.Generation != 1 || ts.LastWriter != store.URL || ts.LastPullDownloadedBytes <= 0 || ts.DevicePath == "" {
		t.Fatalf("VolumeTarget status after round 1: %+v", ts)
	}

	// Round 2: 64 KiB change.
	change := w.change(5<<20, 64<<10)
	w.trigger(vsync, "2")
	st2 := w.waitSynced(vsync, "2").Status
	limit := int64(len(change)) + 2*int64(w.params.MaxSize)
	if st2.LastGeneration != 2 || st2.LastBytesSent <= 0 || st2.LastBytesSent > limit {
		t.Fatalf("round 2 pushed generation %d with %d bytes for a %d-byte change", st2.LastGeneration, st2.LastBytesSent, len(change))
	}
	// Longhorn's chain names the changed 64 KiB: all but a few chunks
	// around it are reused, the untouched segment (0-4 MiB) and most of
	// the changed one.
	if st2.LastReusedBytes <= 5<<20 || st2.LastReusedBytes > 8<<20-64<<10 {
		t.Errorf("round 2 reused %d bytes, want all but about the 64 KiB change of 8 MiB", st2.LastReusedBytes)
	}
	ts2 := waitPulled(2)
	if !bytes.Equal(w.targetBytes(), w.want) {
		t.Fatal("round 2: the target does not hold the snapshot's bytes")
	}
	// The pull downloads the new chunks and the manifest (< 64 KiB here).
	if ts2.RootHash != st2.LastRootHash || ts2.Generation != 2 || ts2.LastPullDownloadedBytes > limit+64<<10 {
		t.Fatalf("VolumeTarget status after round 2: %+v (download limit %d)", ts2, limit+64<<10)
	}
	assertQueriesExported(t, pullMetric, rcvMetrics)
	// The receiver counted what both pulls downloaded as it arrived (the
	// registry is the process's: earlier tests' pulls add to it).
	if n, want := counterSum(t, crmetrics.Registry, "voldelta_receiver_pull_downloaded_bytes_total"), ts.LastPullDownloadedBytes+ts2.LastPullDownloadedBytes; n < float64(want) {
		t.Errorf("pull_downloaded_bytes_total = %v, want at least the %d bytes the two pulls downloaded", n, want)
	}
	t.Logf("round 2: %d bytes changed, %d uploaded (%d as stored), %d downloaded by the pull", len(change), st2.LastBytesSent, st2.LastWireBytes, ts2.LastPullDownloadedBytes)

	// Both sides record Events under the deployed RBAC.
	for _, want := range []struct{ ns, name, reason string }{
		{srcNS, "data", v1alpha1.ReasonSynced},
		{dstNS, "replica", v1alpha1.ReasonTargetCommitted},
	} {
		err := k8stest.Eventually(ctx, func() (bool, string, error) {
			l, err := c.kube.EventsV1().Events(want.ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				return false, "", err
			}
			for _, e := range l.Items {
				if e.Regarding.Name == want.name && e.Reason == want.reason {
					return true, "", nil
				}
			}
			return false, fmt.Sprintf("%d events", len(l.Items)), nil
		})
		if err != nil {
			t.Errorf("no %s event on %s/%s: %v", want.reason, want.ns, want.name, err)
		}
	}
}
