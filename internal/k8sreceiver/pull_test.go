package k8sreceiver

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/internal/k8sutil"
	"github.com/voldelta/voldelta/internal/miniotest"
	"github.com/voldelta/voldelta/objstore"
	"github.com/voldelta/voldelta/transport"
)

func storeTarget(name, remote, endpoint, url, secret string) *v1alpha1.VolumeTarget {
	vt := target(name, remote)
	vt.Spec.Store = &v1alpha1.StoreSource{PollInterval: &metav1.Duration{Duration: time.Minute},
		Store: v1alpha1.Store{URL: url, Endpoint: endpoint, Insecure: true, CredentialsSecretName: secret}}
	return vt
}

// storeFixture is a fixture with a real MinIO, a bucket, the credentials
// Secret "s3" in the target namespace, a fake clock and the target device
// attached.
func storeFixture(t *testing.T, vt *v1alpha1.VolumeTarget) (*fixture, *objstore.Store, *clocktesting.FakeClock) {
	t.Helper()
	srv, err := miniotest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	ctx := context.Background()
	if err := srv.MakeBucket(ctx, "replicas"); err != nil {
		t.Fatal(err)
	}
	vt.Spec.Store.Endpoint = srv.Endpoint
	f := newFixture(t, vt)
	clk := clocktesting.NewFakeClock(time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC))
	f.tg.o.Clock = clk
	if _, err := f.kube.CoreV1().Secrets("dst").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "dst", Name: "s3"},
		Data: map[string][]byte{k8sutil.KeyAccessKeyID: []byte(miniotest.User), k8sutil.KeySecretAccessKey: []byte(miniotest.Password)}},
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.reconcile(vt.Name) // attaches
	f.attach()
	s, err := objstore.Open(ctx, objstore.Config{Endpoint: srv.Endpoint, Insecure: true, Bucket: "replicas", Prefix: "prod", Creds: miniotest.Creds()})
	if err != nil {
		t.Fatal(err)
	}
	return f, s, clk
}

func pushBytes(t *testing.T, s *objstore.Store, volume string, data []byte) *objstore.PushStats {
	t.Helper()
	st, err := s.Push(context.Background(), bytes.NewReader(data), uint64(len(data)), objstore.PushOptions{Volume: volume})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func (f *fixture) device() []byte {
	f.t.Helper()
	b, err := os.ReadFile(filepath.Join(f.host, "dev", "longhorn", "vol-dst"))
	if err != nil {
		f.t.Fatal(err)
	}
	return b
}

// A store target pulls each new generation of its remote volume into its
// device, downloading only what changed; between polls it does nothing;
// agents may not write it.
func TestStoreTargetPulls(t *testing.T) {
	f, s, clk := storeFixture(t, storeTarget("replica", "shop-db", "", "s3://replicas/prod", "s3"))

	// Nothing in the store yet: pending, not degraded; looks again after
	// the poll interval.
	clk.Step(time.Hour)
	res := f.reconcile("replica")
	vt := f.get("replica")
	if vt.Status.Phase != v1alpha1.PhasePending || meta.IsStatusConditionTrue(vt.Status.Conditions, v1alpha1.ConditionDegraded) ||
		vt.Status.LastPollTime == nil || res.RequeueAfter != 30*time.Second { // Refresh (30s) < pollInterval (1m)
		t.Fatalf("empty store: %+v, %+v", res, vt.Status)
	}

	rng := rand.New(rand.NewPCG(5, 6))
	v1 := make([]byte, 2<<20)
	for i := range v1 {
		v1[i] = byte(rng.Uint32())
	}
	g1 := pushBytes(t, s, "shop-db", v1)
	// Not due yet: no pull.
	clk.Step(30 * time.Second)
	f.reconcile("replica")
	if vt := f.get("replica"); vt.Status.Generation != 0 || vt.Status.StoreGeneration != 0 {
		t.Fatalf("pulled before the poll interval: %+v", vt.Status)
	}
	clk.Step(30 * time.Second)
	f.reconcile("replica")
	vt = f.get("replica")
	st := vt.Status
	if !bytes.Equal(f.device(), v1) {
		t.Fatal("the device does not hold generation 1")
	}
	if st.Phase != v1alpha1.PhaseIdle || st.StoreGeneration != 1 || st.Generation != 1 || st.RootHash != g1.RootHash ||
		st.LastPullDownloadedBytes < int64(len(v1))/2 || st.LastPullDuration == nil || st.LastWriter != "s3://replicas/prod" ||
		!meta.IsStatusConditionTrue(vt.Status.Conditions, v1alpha1.ConditionReady) {
		t.Fatalf("status after the first pull: %+v", st)
	}

	// Generation 2: 4 KiB changed; only about that is downloaded.
	v2 := bytes.Clone(v1)
	for i := range 4096 {
		v2[1<<20+i] ^= 0x33
	}
	g2 := pushBytes(t, s, "shop-db", v2)
	clk.Step(time.Minute)
	f.reconcile("replica")
	st = f.get("replica").Status
	if !bytes.Equal(f.device(), v2) || st.StoreGeneration != 2 || st.Generation != 2 || st.RootHash != g2.RootHash {
		t.Fatalf("status after the second pull: %+v", st)
	}
	if max := int64(g2.ManifestBytes) + 2*int64(chunk.DefaultParams().MaxSize); st.LastPullDownloadedBytes > max {
		t.Errorf("a 4 KiB change downloaded %d bytes (at most %d expected)", st.LastPullDownloadedBytes, max)
	}
	// Polling again with nothing new changes nothing.
	clk.Step(time.Minute)
	f.reconcile("replica")
	if st2 := f.get("replica").Status; st2.Generation != 2 || *st2.LastPullDuration != *st.LastPullDuration {
		t.Fatalf("an idle poll pulled again: %+v", st2)
	}
	for _, want := range []string{"Normal Committed generation 1 of s3://replicas/prod", "Normal Committed generation 2 of s3://replicas/prod"} {
		if ev := nextEvent(t, f, "Committed"); !strings.HasPrefix(ev, want) {
			t.Errorf("event %q, want %q…", ev, want)
		}
	}

	// Agents are refused.
	if err := f.tg.Authorize("shop-db", transport.Identity{CommonName: "agent-a"}); err == nil || !strings.Contains(err.Error(), "pulled from s3://replicas/prod") {
		t.Fatalf("Authorize on a store target: %v", err)
	}
}

// nextEvent returns the next recorded event whose reason is reason.
func nextEvent(t *testing.T, f *fixture, reason string) string {
	t.Helper()
	for {
		select {
		case ev := <-f.events.Events:
			if strings.Contains(ev, " "+reason+" ") {
				return ev
			}
		default:
			t.Fatalf("no %s event", reason)
			return ""
		}
	}
}

// A failing store (missing credentials, missing bucket) degrades the target
// with the reason, backs off, and recovers once fixed; a target that held
// a generation keeps it.
func TestStoreTargetFailures(t *testing.T) {
	f, s, clk := storeFixture(t, storeTarget("replica", "shop-db", "", "s3://replicas/prod", "absent"))
	pushBytes(t, s, "shop-db", []byte("generation one"))
	clk.Step(time.Hour)
	res := f.reconcile("replica")
	vt := f.get("replica")
	c := meta.FindStatusCondition(vt.Status.Conditions, v1alpha1.ConditionDegraded)
	if c == nil || c.Status != metav1.ConditionTrue || c.Reason != v1alpha1.ReasonStoreCredentials || !strings.Contains(c.Message, "Secret dst/absent") ||
		vt.Status.Phase != v1alpha1.PhaseDegraded || vt.Status.ConsecutiveFailures != 1 || res.RequeueAfter != k8sutil.Backoff(1) {
		t.Fatalf("missing Secret: %+v, %+v", res, vt.Status)
	}
	// Fixed: the next attempt after the backoff pulls.
	vt.Spec.Store.CredentialsSecretName = "s3"
	if err := f.cl.Update(context.Background(), vt); err != nil {
		t.Fatal(err)
	}
	clk.Step(k8sutil.Backoff(1))
	f.reconcile("replica")
	vt = f.get("replica")
	if vt.Status.Generation != 1 || vt.Status.ConsecutiveFailures != 0 || vt.Status.Phase != v1alpha1.PhaseIdle ||
		meta.IsStatusConditionTrue(vt.Status.Conditions, v1alpha1.ConditionDegraded) || !bytes.HasPrefix(f.device(), []byte("generation one")) {
		t.Fatalf("after fixing the Secret: %+v", vt.Status)
	}

	// The bucket goes away: degraded, but the committed generation stays
	// Ready (nothing touched it).
	vt.Spec.Store.URL = "s3://gone/prod"
	if err := f.cl.Update(context.Background(), vt); err != nil {
		t.Fatal(err)
	}
	clk.Step(time.Minute)
	f.reconcile("replica")
	vt = f.get("replica")
	c = meta.FindStatusCondition(vt.Status.Conditions, v1alpha1.ConditionDegraded)
	if c == nil || c.Reason != v1alpha1.ReasonStoreUnavailable || !strings.Contains(c.Message, `bucket "gone" does not exist`) ||
		vt.Status.Phase != v1alpha1.PhaseDegraded || !meta.IsStatusConditionTrue(vt.Status.Conditions, v1alpha1.ConditionReady) {
		t.Fatalf("missing bucket: %+v", vt.Status)
	}
}

// A pull that keeps failing (its chunks are gone from the store) backs off
// further with every attempt.
func TestStoreTargetPullFailuresBackOff(t *testing.T) {
	vt := storeTarget("replica", "shop-db", "", "s3://replicas/prod", "s3")
	f, s, clk := storeFixture(t, vt)
	pushBytes(t, s, "shop-db", bytes.Repeat([]byte("0123456789abcdef"), 1<<14))
	ctx := context.Background()
	cl, err := minio.New(f.get("replica").Spec.Store.Endpoint, &minio.Options{Creds: miniotest.Creds()})
	if err != nil {
		t.Fatal(err)
	}
	for o := range cl.ListObjects(ctx, "replicas", minio.ListObjectsOptions{Prefix: "prod/chunks/", Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		if err := cl.RemoveObject(ctx, "replicas", o.Key, minio.RemoveObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	clk.Step(time.Hour)
	for n := int32(1); n <= 3; n++ {
		res := f.reconcile("replica")
		vt := f.get("replica")
		c := meta.FindStatusCondition(vt.Status.Conditions, v1alpha1.ConditionDegraded)
		if c == nil || c.Reason != v1alpha1.ReasonPullFailed || vt.Status.ConsecutiveFailures != n || res.RequeueAfter != k8sutil.Backoff(n) {
			t.Fatalf("attempt %d: requeue %v, status %+v", n, res.RequeueAfter, vt.Status)
		}
		clk.Step(k8sutil.Backoff(n))
	}
}
