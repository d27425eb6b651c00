package snapmeta

import (
	"context"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/hint"
)

// TestChangedThroughTheSidecar runs the real csi-snapshot-metadata sidecar
// (v1.1.0) against a real kube-apiserver, in front of a test CSI driver
// that compares two image files in 4 KiB blocks, and asks it for the delta
// between two VolumeSnapshots as the agent does: with the agent's
// ServiceAccount and RBAC from deploy/agent, a token for the service's
// audience, TLS verified with the CA of the SnapshotMetadataService.
func TestChangedThroughTheSidecar(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	w := newWorld(t, ctx)
	want := []chunk.Extent{{Offset: 0, Length: blockSize}, {Offset: 10 * blockSize, Length: 3 * blockSize},
		{Offset: 100 * blockSize, Length: blockSize}, {Offset: 1023 * blockSize, Length: blockSize}}
	req := Request{Driver: driverName, BaseHandle: baseHandle, Namespace: appNS, Target: "new"}

	changed := func(t *testing.T, c *Client, r Request) ([]chunk.Extent, error) {
		t.Helper()
		src := c.Source(r)
		if src.Name() != "csi-snapshot-metadata" || src.BaseImage() != "csi:"+r.Driver+"/"+r.BaseHandle {
			t.Fatalf("source %q with base %q", src.Name(), src.BaseImage())
		}
		return src.Changed(ctx, w.size)
	}
	wantUnavailable := func(t *testing.T, err error, says ...string) {
		t.Helper()
		if !errors.Is(err, hint.ErrUnavailable) {
			t.Fatalf("err %v, want one wrapping hint.ErrUnavailable", err)
		}
		t.Log(err)
		for _, s := range says {
			if !strings.Contains(err.Error(), s) {
				t.Fatalf("err %q does not say %q", err, s)
			}
		}
	}

	t.Run("fixed-length blocks", func(t *testing.T) {
		got, err := changed(t, w.agentClient(t, 0), req)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("changed %v, want %v", got, want)
		}
		reqs := w.driver.requests()
		last := reqs[len(reqs)-1]
		if last.BaseSnapshotId != baseHandle || last.TargetSnapshotId != newHandle || last.StartingOffset != 0 {
			t.Fatalf("the driver was asked for %s -> %s from %d, want %s -> %s from 0",
				last.BaseSnapshotId, last.TargetSnapshotId, last.StartingOffset, baseHandle, newHandle)
		}
	})

	t.Run("variable-length runs, two per response", func(t *testing.T) {
		w.driver.setMode(variableRuns)
		defer w.driver.setMode(fixedBlocks)
		got, err := changed(t, w.agentClient(t, 2), req)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("changed %v, want %v", got, want)
		}
		reqs := w.driver.requests()
		if m := reqs[len(reqs)-1].MaxResults; m != 2 {
			t.Fatalf("the driver was asked for %d tuples per response, want 2", m)
		}
	})

	t.Run("nothing changed", func(t *testing.T) {
		got, err := changed(t, w.agentClient(t, 0), Request{Driver: driverName, BaseHandle: newHandle, Namespace: appNS, Target: "new"})
		if err != nil || got == nil || len(got) != 0 {
			t.Fatalf("changed %v, %v; want none", got, err)
		}
	})

	t.Run("a malformed answer is invalid", func(t *testing.T) {
		w.driver.setMode(unsortedBlocks)
		defer w.driver.setMode(fixedBlocks)
		got, err := changed(t, w.agentClient(t, 0), req)
		if !errors.Is(err, hint.ErrInvalid) || errors.Is(err, hint.ErrUnavailable) || got != nil {
			t.Fatalf("changed %v, %v; want an error wrapping hint.ErrInvalid", got, err)
		}
	})

	t.Run("no service for the driver", func(t *testing.T) {
		_, err := changed(t, w.agentClient(t, 0), Request{Driver: "other.csi.example.com", BaseHandle: baseHandle, Namespace: appNS, Target: "new"})
		wantUnavailable(t, err, "no SnapshotMetadataService", "other.csi.example.com")
	})

	t.Run("a base the driver does not know", func(t *testing.T) {
		_, err := changed(t, w.agentClient(t, 0), Request{Driver: driverName, BaseHandle: "snap-gone", Namespace: appNS, Target: "new"})
		wantUnavailable(t, err, "NotFound", "snap-gone")
	})

	t.Run("a caller that may not get the snapshots", func(t *testing.T) {
		_, err := w.kube.CoreV1().ServiceAccounts(appNS).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "nobody"}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		c, err := NewClient(Options{Kube: w.kube, Dynamic: w.dyn, ServiceAccountNamespace: appNS, ServiceAccountName: "nobody"})
		if err != nil {
			t.Fatal(err)
		}
		_, err = changed(t, c, req)
		wantUnavailable(t, err, "PermissionDenied")
	})

	t.Run("a token for another audience", func(t *testing.T) {
		// The agent asks for tokens of the service's audience; a token of
		// another (a service that moved to a new audience, a stale or
		// foreign token) is refused by the sidecar's TokenReview.
		c := w.agentClient(t, 0)
		svc, err := c.Service(ctx, driverName)
		if err != nil {
			t.Fatal(err)
		}
		tok, err := c.token(ctx, "another-audience")
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Source(req).delta(ctx, svc, tok, w.size)
		wantUnavailable(t, err, "did not authenticate the token", w.audience, "Unauthenticated")
	})

	t.Run("an unreachable service", func(t *testing.T) {
		w.setService(t, ctx, "127.0.0.1:"+strconv.Itoa(freePort(t)), w.audience)
		defer w.setService(t, ctx, w.sidecar.addr, w.audience)
		_, err := changed(t, w.agentClient(t, 0), req)
		wantUnavailable(t, err, "unavailable")
	})

	t.Run("a cancelled round", func(t *testing.T) {
		cctx, ccancel := context.WithCancel(ctx)
		ccancel()
		_, err := w.agentClient(t, 0).Source(req).Changed(cctx, w.size)
		if !errors.Is(err, context.Canceled) || errors.Is(err, hint.ErrUnavailable) {
			t.Fatalf("err %v, want context.Canceled", err)
		}
	})

	t.Run("the service is back", func(t *testing.T) {
		got, err := changed(t, w.agentClient(t, 0), req)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("changed %v, %v; want %v", got, err, want)
		}
	})
}
