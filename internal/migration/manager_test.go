package migration_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/internal/k8stest"
	"github.com/voldelta/voldelta/internal/migration"
)

// TestManager runs the controller as `voldelta controller` does (NewManager:
// watches, leader election) with exactly the permissions deploy/controller
// grants its service account, against a real kube-apiserver, and takes a
// migration of one volume and a Deployment to Completed. The test plays the
// agent and the Deployment's controller as the watches report changes.
func TestManager(t *testing.T) {
	cp := k8stest.Start(t)
	ms, err := k8stest.LoadKustomization(filepath.Join(k8stest.RepoRoot(), "deploy", "controller"), k8stest.ClusterScopedKinds)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := cp.Apply(ctx, ms, false); err != nil {
		t.Fatal(err)
	}
	s := runtime.NewScheme()
	if err := migration.Scheme(s); err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(cp.Config, client.Options{Scheme: s})
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("controller log:\n%s", logs)
		}
	})
	mgr, err := migration.NewManager(cp.ImpersonatedConfig("voldelta-system", "voldelta-controller"), migration.RunOptions{
		MetricsAddr: "0", HealthAddr: "0", LeaderElection: true, LeaderElectionNamespace: "voldelta-system",
		RequeueInterval: 100 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	mctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- mgr.Start(mctx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	}()

	e := newEnv(t, cl, "managed")
	e.ctx = ctx
	e.pvc("data", nil)
	e.workload(v1alpha1.KindDeployment, "web", 2)
	sp := spec("data")
	sp.Cutover.Mode = v1alpha1.CutoverAuto
	sp.Quiesce.Workloads = []v1alpha1.WorkloadRef{{Kind: v1alpha1.KindDeployment, Name: "web"}}
	e.create("app", sp)

	var last *v1alpha1.Migration
	err = k8stest.Eventually(ctx, func() (bool, string, error) {
		last = e.get("app")
		if last.Status.Phase.Terminal() {
			return true, "", nil
		}
		// The agent: a round for every new trigger.
		for _, vs := range e.volumeSyncs("app") {
			if vs.Spec.Trigger.Manual != vs.Status.LastManualTrigger && !vs.Spec.Paused {
				e.sync(vs.Name, 1<<20, time.Second)
			}
		}
		// The Deployment's controller: scaled to 0, its pods go.
		var d appsv1.Deployment
		e.must(cl.Get(ctx, types.NamespacedName{Namespace: e.ns, Name: "web"}, &d))
		if *d.Spec.Replicas == 0 && d.Status.ObservedGeneration != d.Generation {
			e.stop(v1alpha1.KindDeployment, "web")
		}
		return false, fmt.Sprintf("phase %s: %s", last.Status.Phase, last.Status.Message), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if last.Status.Phase != v1alpha1.MigrationCompleted || last.Status.Downtime == nil || len(last.Status.Workloads) != 1 ||
		last.Status.Workloads[0].Replicas != 2 {
		t.Fatalf("ended %s (%s): %+v", last.Status.Phase, last.Status.Message, last.Status)
	}
	// The Events API is in the role too: the phase changes were recorded.
	err = k8stest.Eventually(ctx, func() (bool, string, error) {
		var evs corev1.EventList
		if err := cl.List(ctx, &evs, client.InNamespace(e.ns)); err != nil {
			return false, "", err
		}
		for _, ev := range evs.Items {
			if ev.InvolvedObject.Name == "app" && ev.Reason == string(v1alpha1.MigrationCompleted) {
				return true, "", nil
			}
		}
		return false, fmt.Sprintf("%d events, none for the completion", len(evs.Items)), nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// syncBuffer collects the manager's log, shown if the test fails.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}
