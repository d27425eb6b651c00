package k8sagent_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/internal/k8sutil"
	"github.com/voldelta/voldelta/internal/miniotest"
	"github.com/voldelta/voldelta/objstore"
)

// startMinio starts a real MinIO server for one test, with a bucket.
func startMinio(t *testing.T, bucket string) *miniotest.Server {
	t.Helper()
	srv, err := miniotest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	if err := srv.MakeBucket(context.Background(), bucket); err != nil {
		t.Fatal(err)
	}
	return srv
}

func storeSync(endpoint, url, secret string) *v1alpha1.VolumeSync {
	vs := volumeSync()
	vs.Spec.Destination = v1alpha1.Destination{VolumeName: "db-replica",
		Store: &v1alpha1.Store{URL: url, Endpoint: endpoint, Insecure: true, CredentialsSecretName: secret}}
	return vs
}

func (f *fixture) credentials(name, user, password string) {
	f.t.Helper()
	_, err := f.kube.CoreV1().Secrets(ns).Create(context.Background(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Data:       map[string][]byte{k8sutil.KeyAccessKeyID: []byte(user), k8sutil.KeySecretAccessKey: []byte(password)}},
		metav1.CreateOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
}

// round runs one round to its end: snapshot, ready, send.
func (f *fixture) round() *v1alpha1.VolumeSync {
	f.t.Helper()
	f.reconcile()
	f.ready(f.get().Status.PendingSnapshot)
	f.reconcile()
	return f.get()
}

// A VolumeSync naming a store pushes every round to it as the volume's
// next generation (never calling a receiver); a second round is scanned
// from the first's manifest and uploads only the change; both generations
// restore the snapshots' bytes.
func TestRoundsToStore(t *testing.T) {
	srv := startMinio(t, "replicas")
	f := newFixture(t, "node-a", storeSync(srv.Endpoint, "s3://replicas/prod", "s3-creds"))
	f.credentials("s3-creds", miniotest.User, miniotest.Password)
	rng := rand.New(rand.NewPCG(3, 4))
	v1 := make([]byte, 1<<20)
	for i := range v1 {
		v1[i] = byte(rng.Uint32())
	}
	f.imgs.data = v1

	vs := f.round()
	st := vs.Status
	if len(f.syncs) != 0 {
		t.Fatalf("a store round called a receiver: %+v", f.syncs)
	}
	want1, _, err := chunk.ScanManifest(context.Background(), bytes.NewReader(v1), uint64(len(v1)), chunk.DefaultParams(), chunk.ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Phase != v1alpha1.PhaseIdle || st.LastGeneration != 1 || st.LastRootHash != want1.Root.String() ||
		st.LastSourceBytes != int64(len(v1)) || st.LastBytesSent != int64(len(v1)) || st.LastWireBytes < int64(len(v1)) || st.Rounds != 1 {
		t.Fatalf("status after round 1: %+v", st)
	}
	if c := cond(vs, v1alpha1.ConditionReady); c.Status != metav1.ConditionTrue || !strings.Contains(c.Message, "generation 1 committed") {
		t.Fatalf("Ready = %+v", c)
	}
	if ev := <-f.events.Events; !strings.Contains(ev, "committed on s3://replicas/prod") {
		t.Errorf("event %q", ev)
	}

	// Round 2: 512 bytes change (within the extent the image source
	// reports changed); a manual trigger starts it.
	v2 := bytes.Clone(v1)
	for i := range 512 {
		v2[i] ^= 0xff
	}
	f.imgs.data = v2
	vs.Spec.Trigger.Manual = "2"
	if err := f.cl.Update(context.Background(), vs); err != nil {
		t.Fatal(err)
	}
	st2 := f.round().Status
	if st2.LastGeneration != 2 || st2.LastManualTrigger != "2" || st2.LastRootHash == st.LastRootHash {
		t.Fatalf("status after round 2: %+v", st2)
	}
	if st2.LastBytesSent <= 0 || st2.LastBytesSent > int64(2*chunk.DefaultParams().MaxSize) {
		t.Fatalf("round 2 uploaded %d bytes for a 512-byte change", st2.LastBytesSent)
	}
	if len(f.imgs.changes) != 1 {
		t.Fatalf("round 2 did not ask for the changed extents: %v", f.imgs.changes)
	}

	s, err := objstore.Open(context.Background(), objstore.Config{Endpoint: srv.Endpoint, Insecure: true,
		Bucket: "replicas", Prefix: "prod", Creds: miniotest.Creds()})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for gen, want := range map[uint64][]byte{1: v1, 2: v2} {
		target := filepath.Join(dir, "gen.img")
		os.Remove(target)
		if _, err := s.Pull(context.Background(), objstore.PullOptions{Volume: "db-replica", Generation: gen, Target: target,
			StateDir: filepath.Join(dir, "state", string(rune('0'+gen)))}); err != nil {
			t.Fatalf("pull generation %d: %v", gen, err)
		}
		if got, err := os.ReadFile(target); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("generation %d does not restore the snapshot's bytes (%v)", gen, err)
		}
	}
}

// Missing or wrong credentials and a missing bucket fail the round with a
// reason that says which; the snapshot is kept for the retry.
func TestStoreRoundFailures(t *testing.T) {
	srv := startMinio(t, "replicas")
	for _, tc := range []struct {
		name, url, secret, user, password string
		reason, msg                       string
	}{
		{"no secret", "s3://replicas/x", "absent", "", "", v1alpha1.ReasonStoreCredentials, "Secret app/absent"},
		{"secret lacks a key", "s3://replicas/x", "half", miniotest.User, "", v1alpha1.ReasonStoreCredentials, "lacks AWS_SECRET_ACCESS_KEY"},
		{"wrong password", "s3://replicas/x", "wrong", miniotest.User, "not-it", v1alpha1.ReasonStoreUnavailable, "bad credentials"},
		{"no bucket", "s3://missing/x", "good", miniotest.User, miniotest.Password, v1alpha1.ReasonStoreUnavailable, `bucket "missing" does not exist`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, "node-a", storeSync(srv.Endpoint, tc.url, tc.secret))
			if tc.user != "" {
				f.credentials(tc.secret, tc.user, tc.password)
			}
			f.imgs.data = []byte("some bytes")
			vs := f.round()
			c := cond(vs, v1alpha1.ConditionDegraded)
			if c.Status != metav1.ConditionTrue || c.Reason != tc.reason || !strings.Contains(c.Message, tc.msg) {
				t.Fatalf("Degraded = %+v, want reason %s mentioning %q", c, tc.reason, tc.msg)
			}
			if vs.Status.PendingSnapshot == "" || vs.Status.ConsecutiveFailures != 1 || vs.Status.Rounds != 0 || len(f.imgs.opened) != 0 {
				t.Fatalf("status %+v, images opened %v", vs.Status, f.imgs.opened)
			}
		})
	}
}
