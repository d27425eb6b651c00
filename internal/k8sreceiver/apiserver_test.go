package k8sreceiver_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/voldelta/voldelta/agent"
	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/internal/k8sreceiver"
	"github.com/voldelta/voldelta/transport"
)

const apiVolSize = 1 << 20

// TestGroupPromotionAgainstAPIServer runs the receiver's manager against a
// real kube-apiserver with the permissions deploy/receiver grants it: two
// VolumeTargets, a group of two with Promote sent by the real agent; the
// group is promoted only after the second member committed (PVCs
// annotated, VolumeAttachments deleted, status and conditions as the CRD
// keeps them), further rounds are refused, and spec.rearm re-arms a
// target. The CRD's validation of spec.group is checked on the way.
func TestGroupPromotionAgainstAPIServer(t *testing.T) {
	w := newWorld(t)
	ctx, kube, cl := w.ctx, w.kube, w.cl

	// spec.group as the CRD validates it.
	for _, tc := range []struct {
		name string
		mod  func(*v1alpha1.VolumeSyncSpec)
		want string
	}{
		{"store", func(s *v1alpha1.VolumeSyncSpec) {
			s.Destination = v1alpha1.Destination{Store: &v1alpha1.Store{URL: "s3://b/p", CredentialsSecretName: "c"}}
		}, "group needs a receiver destination"},
		{"members", func(s *v1alpha1.VolumeSyncSpec) { s.Group.Members = 65 }, "members"},
		{"zero", func(s *v1alpha1.VolumeSyncSpec) { s.Group.Members = 0 }, "members"},
		{"name", func(s *v1alpha1.VolumeSyncSpec) { s.Group.Name = "a/b" }, "name"},
		{"ok", nil, ""},
	} {
		vs := &v1alpha1.VolumeSync{ObjectMeta: metav1.ObjectMeta{Namespace: "dst", Name: "v-" + tc.name},
			Spec: v1alpha1.VolumeSyncSpec{SourcePVC: "data",
				Destination: v1alpha1.Destination{Address: "r:7300", TLSSecretName: "tls"},
				Group:       &v1alpha1.SyncGroup{Name: "dst-shop-1a2b3c4d", Members: 2, Promote: true}}}
		if tc.mod != nil {
			tc.mod(&vs.Spec)
		}
		err := cl.Create(ctx, vs, client.DryRunAll)
		if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("VolumeSync with group (%s): %v, want %q", tc.name, err, tc.want)
		}
	}

	for _, m := range []string{"a", "b"} {
		w.target(m)
	}
	w.start(nil)
	sources := map[string][]byte{"a": bytes.Repeat([]byte("member a "), apiVolSize/9+1)[:apiVolSize], "b": bytes.Repeat([]byte("b's bytes "), apiVolSize/10+1)[:apiVolSize]}
	group := &transport.Group{Name: "dst-shop-1a2b3c4d", Members: 2, Promote: true}
	round := func(m string, g *transport.Group) (*agent.Stats, error) {
		t.Helper()
		return w.round(m, sources[m], g, nil)
	}
	get, wait := w.get, w.wait

	stA, err := round("a", group)
	must(t, err)
	wait("a records its group round", func() (bool, string) {
		vt := get("a")
		c := meta.FindStatusCondition(vt.Status.Conditions, v1alpha1.ConditionPromoted)
		return vt.Status.Group == group.Name && vt.Status.GroupGeneration == 1 && c != nil && c.Reason == v1alpha1.ReasonNotPromoted, fmt.Sprintf("%+v", vt.Status)
	})
	time.Sleep(200 * time.Millisecond)
	if vt := get("a"); vt.Status.Promoted {
		t.Fatalf("a promoted with one of two members: %+v", vt.Status)
	}

	stB, err := round("b", group)
	must(t, err)
	roots := map[string]string{"a": stA.RootHash, "b": stB.RootHash}
	for _, m := range []string{"a", "b"} {
		wait(m+" promoted", func() (bool, string) {
			vt := get(m)
			ok := vt.Status.Promoted && vt.Status.Phase == v1alpha1.PhasePromoted && vt.Status.PromotedGroup == group.Name &&
				vt.Status.PromotedGeneration == 1 && meta.IsStatusConditionTrue(vt.Status.Conditions, v1alpha1.ConditionPromoted)
			return ok, fmt.Sprintf("%+v", vt.Status)
		})
		pvc, err := kube.CoreV1().PersistentVolumeClaims("dst").Get(ctx, "replica-"+m, metav1.GetOptions{})
		must(t, err)
		if a := pvc.Annotations; a[v1alpha1.AnnotationMigration] != group.Name || a[v1alpha1.AnnotationGeneration] != "1" || a[v1alpha1.AnnotationRootHash] != roots[m] {
			t.Fatalf("PVC of %s: %v", m, a)
		}
	}
	wait("VolumeAttachments released", func() (bool, string) {
		l, err := kube.StorageV1().VolumeAttachments().List(ctx, metav1.ListOptions{})
		return err == nil && len(l.Items) == 0, fmt.Sprintf("%d left, %v", len(l.Items), err)
	})
	if _, err := round("a", nil); !errors.Is(err, &transport.RemoteError{Code: transport.ErrCodePromoted}) {
		t.Fatalf("a round to a promoted target: %v", err)
	}

	// Re-arm a: it is attached again and takes rounds.
	vt := get("a")
	vt.Spec.Rearm = "after-test"
	must(t, cl.Update(ctx, vt))
	wait("a re-armed", func() (bool, string) {
		vt := get("a")
		return !vt.Status.Promoted && vt.Status.LastRearm == "after-test" && vt.Status.DevicePath != "", fmt.Sprintf("%+v", vt.Status)
	})
	if _, err := round("a", nil); err != nil {
		t.Fatalf("a round after the re-arm: %v", err)
	}
	if _, err := round("b", nil); !errors.Is(err, &transport.RemoteError{Code: transport.ErrCodePromoted}) {
		t.Fatalf("b (not re-armed): %v", err)
	}
}

func attacher(ctx context.Context, kube kubernetes.Interface, host string) error {
	for {
		l, err := kube.StorageV1().VolumeAttachments().List(ctx, metav1.ListOptions{})
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		for i := range l.Items {
			va := &l.Items[i]
			if va.Status.Attached {
				continue
			}
			pv, err := kube.CoreV1().PersistentVolumes().Get(ctx, *va.Spec.Source.PersistentVolumeName, metav1.GetOptions{})
			if err != nil {
				return err
			}
			dev := filepath.Join(host, "dev", "longhorn", pv.Spec.CSI.VolumeHandle)
			if err := os.MkdirAll(filepath.Dir(dev), 0o755); err != nil {
				return err
			}
			f, err := os.OpenFile(dev, os.O_CREATE|os.O_RDWR, 0o644)
			if err != nil {
				return err
			}
			err = f.Truncate(deviceSize(pv))
			f.Close()
			if err != nil {
				return err
			}
			va.Status.Attached = true
			if _, err := kube.StorageV1().VolumeAttachments().UpdateStatus(ctx, va, metav1.UpdateOptions{}); err != nil && ctx.Err() == nil {
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

// deviceSize is the size of the device attacher makes for pv: its
// capacity (apiVolSize if it has none).
func deviceSize(pv *corev1.PersistentVolume) int64 {
	if q, ok := pv.Spec.Capacity[corev1.ResourceStorage]; ok && q.Value() > 0 {
		return q.Value()
	}
	return apiVolSize
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// While an agent's round applies to a VolumeTarget, status.progress says
// how far it got (the round is slowed by the agent's bandwidth limit so
// that reports land while it runs); once it committed, progress is gone.
func TestAgentRoundProgressAgainstAPIServer(t *testing.T) {
	w := newWorld(t)
	w.target("a")
	w.start(func(o *k8sreceiver.RunOptions) { o.ProgressInterval = 20 * time.Millisecond })
	data := make([]byte, apiVolSize)
	rand.NewChaCha8([32]byte{3}).Read(data) // incompressible: the limit paces the chunks

	type result struct {
		st  *agent.Stats
		err error
	}
	done := make(chan result, 1)
	go func() {
		st, err := w.round("a", data, nil, func(c *transport.Config) { c.BandwidthLimit = 256 << 10 })
		done <- result{st, err}
	}()
	var seen *v1alpha1.TargetProgress
	w.wait("status.progress while the round runs", func() (bool, string) {
		p := w.get("a").Status.Progress
		if p != nil && p.FetchedBytes > 0 {
			seen = p
		}
		return seen != nil, fmt.Sprintf("%+v", p)
	})
	r := <-done
	must(t, r.err)
	if seen.SourceBytes != apiVolSize || seen.NeededBytes < seen.FetchedBytes || seen.FetchedBytes > apiVolSize || seen.StartTime.IsZero() {
		t.Fatalf("status.progress mid-round: %+v", seen)
	}
	t.Logf("mid-round: fetched %d of %d needed bytes (source %d), %d B/s, eta %v", seen.FetchedBytes, seen.NeededBytes, seen.SourceBytes, seen.BytesPerSecond, seen.ETA)
	w.wait("committed, progress cleared", func() (bool, string) {
		vt := w.get("a")
		return vt.Status.Generation == 1 && vt.Status.RootHash == r.st.RootHash && vt.Status.Progress == nil, fmt.Sprintf("%+v", vt.Status)
	})
}
