package k8stest_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"

	"github.com/voldelta/voldelta/deploy/monitoring"
	"github.com/voldelta/voldelta/internal/k8stest"
)

// exportedNames returns the name of every sample of a /metrics text
// exposition (a histogram's _bucket, _sum and _count, as a query names
// them).
func exportedNames(t *testing.T, body string) map[string]bool {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	out := map[string]bool{}
	for name, mf := range mfs {
		if len(mf.GetMetric()) == 0 {
			continue
		}
		out[name] = true
		switch mf.GetType().String() {
		case "HISTOGRAM":
			out[name+"_bucket"], out[name+"_sum"], out[name+"_count"] = true, true, true
		case "SUMMARY":
			out[name+"_sum"], out[name+"_count"] = true, true
		}
	}
	return out
}

// pullMetric: the receiver's metrics of pulls from a store, which only a
// receiver with store targets exports (TestVolumeSyncThroughStore checks
// them; TestVolumeSyncEndToEnd every other).
func pullMetric(name string) bool { return strings.HasPrefix(name, "voldelta_receiver_pull") }

// assertQueriesExported fails the test unless every metric that
// deploy/monitoring's dashboard and alerts use, of those inScope selects,
// is in the scrape of one of addrs (the agent's and the receiver's
// /metrics after their rounds).
func assertQueriesExported(t *testing.T, inScope func(string) bool, addrs ...string) {
	t.Helper()
	queries, err := monitoring.Queries()
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	for _, a := range addrs {
		for n := range exportedNames(t, scrape(t, a)) {
			exported[n] = true
		}
	}
	missing, err := monitoring.Missing(queries, exported, func(n string) bool { return !inScope(n) })
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range missing {
		t.Errorf("deploy/monitoring uses %s, which %v do not export", m, addrs)
	}
}

// schedule sets vsync's spec.trigger.interval (long enough that no round
// becomes due) and waits until the agent has seen it: its status then
// records the generation observed.
func schedule(w *world, vsync *v1alpha1.VolumeSync, every time.Duration) {
	w.t.Helper()
	w.must(w.cl.Get(w.ctx, client.ObjectKeyFromObject(vsync), vsync))
	vsync.Spec.Trigger.Interval = &metav1.Duration{Duration: every}
	w.must(w.cl.Update(w.ctx, vsync))
	err := k8stest.Eventually(w.ctx, func() (bool, string, error) {
		var got v1alpha1.VolumeSync
		if err := w.cl.Get(w.ctx, client.ObjectKeyFromObject(vsync), &got); err != nil {
			return false, "", err
		}
		return got.Status.ObservedGeneration == got.Generation && got.Status.NextSyncTime != nil,
			fmt.Sprintf("observed generation %d of %d, next sync %v", got.Status.ObservedGeneration, got.Generation, got.Status.NextSyncTime), nil
	})
	if err != nil {
		w.t.Fatalf("the agent did not see the interval: %v", err)
	}
}
