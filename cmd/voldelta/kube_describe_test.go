package main

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
)

// agentEvent is an events.k8s.io/v1 Event about obj, as the agent's
// recorder writes them.
func agentEvent(obj client.Object, kind, name, typ, reason, note string, at time.Duration, series int32) *eventsv1.Event {
	ev := &eventsv1.Event{
		ObjectMeta: metav1.ObjectMeta{Namespace: obj.GetNamespace(), Name: name},
		EventTime:  *micro(at), ReportingController: "voldelta-agent", ReportingInstance: "voldelta-agent-node-a",
		Action: "Sync", Reason: reason, Type: typ, Note: note,
		Regarding: corev1.ObjectReference{APIVersion: "voldelta.io/v1alpha1", Kind: kind, Namespace: obj.GetNamespace(), Name: obj.GetName(), UID: obj.GetUID()},
	}
	if series > 0 {
		ev.Series = &eventsv1.EventSeries{Count: series, LastObservedTime: *micro(at + 2*time.Minute)}
	}
	return ev
}

func testKubeDescribe(t *testing.T, e *kubeEnv) {
	ctx := e.ctx
	vs := &v1alpha1.VolumeSync{}
	if err := e.src.Get(ctx, client.ObjectKey{Namespace: "shop", Name: "db"}, vs); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "db", UID: "not-the-volumesync"}}
	for _, ev := range []*eventsv1.Event{
		agentEvent(vs, "VolumeSync", "db.2", corev1.EventTypeNormal, v1alpha1.ReasonSynced, "generation 12 committed on replica.example:7300: 1258291200 of 10737418240 bytes sent", 10*time.Minute, 0),
		agentEvent(vs, "VolumeSync", "db.1", corev1.EventTypeWarning, v1alpha1.ReasonSyncFailed, "attempt 3 failed: connection refused", time.Minute, 3),
		agentEvent(pod, "Pod", "db.pod", corev1.EventTypeNormal, "Scheduled", "an event of another object named db", time.Minute, 0),
	} {
		if _, err := e.srcKube.EventsV1().Events("shop").Create(ctx, ev, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	o := e.options("table", false, "dc1")
	if err := runKubeDescribe(ctx, o, kindAny, "db"); err != nil {
		t.Fatal(err)
	}
	out := output(o)
	local := func(d time.Duration) string { return clock(t0.Add(d), fixedAt) }
	wantContains(t, "describe db", out,
		"Name:", "db", "Namespace:", "shop", "Kind:", "VolumeSync (voldelta.io/v1alpha1)",
		"Source PVC:", "db-data", "receiver replica.example:7300 (TLS secret tls)", "Remote Volume:", "shop-db-data",
		"Trigger:", "every 15m0s", "Phase:", "Idle", "Node:", "node-a", "12 committed, 0 consecutive failures", "Next Round:", "in 10m",
		"Last Round:", "Generation:", "Root Hash:", "9f86d081884c7d659a2feaa0c55ad015",
		"Snapshot:", local(8*time.Minute)+" (RPO 7m)", "Committed:", local(10*time.Minute)+" (5m ago)",
		"Duration:", "2m0s (snapshot 3s)", "Sent:", "1.2 GiB (900.0 MiB on the wire)", "Throughput:", "10.0 MiB/s",
		"Conditions:", "Ready", "True", "Synced", "generation 12 committed",
		"Events:", "Type", "Reason", "Age", "From", "Message",
		"Warning", "SyncFailed", "12m (x3 over 14m)", "voldelta-agent", "attempt 3 failed: connection refused",
		"Normal", "Synced", "5m", "generation 12 committed on replica.example:7300")
	if i, j := strings.Index(out, "SyncFailed"), strings.Index(out, "generation 12 committed on"); i < 0 || j < i {
		t.Errorf("events not oldest first:\n%s", out)
	}
	if strings.Contains(out, "another object") {
		t.Errorf("describe shows the event of a Pod named db:\n%s", out)
	}

	// A VolumeTarget of the destination, and the ways to name it.
	o = e.options("table", false, "dc2")
	if err := runKubeDescribe(ctx, o, kindVolumeTarget, "logs"); err != nil {
		t.Fatal(err)
	}
	wantContains(t, "describe vt/logs", output(o), "Kind:", "VolumeTarget", "Remote Volume:", "logs-vol", "longhorn:logs-replica",
		"Pulls From:", "s3://replicas/dc1", "Store Generation:", "2", "Progress:", "fetch 25%", "10.0 MiB of 40.0 MiB needed",
		"Conditions:  <none>", "Events:      <none>")
	for _, args := range [][]string{{"vt/logs"}, {"volumetarget", "logs"}, {"volumetarget.voldelta.io/logs"}, {"logs"}} {
		out := e.mustCLI(append([]string{"describe", "--context", "dc2"}, args...)...)
		wantContains(t, "describe "+strings.Join(args, " "), out, "Kind:", "VolumeTarget", "logs-vol")
	}
	if out := e.mustCLI("describe", "vsync/db"); !strings.Contains(out, "VolumeSync") {
		t.Errorf("describe vsync/db:\n%s", out)
	}
	var errOut lockedBuffer
	if _, err := e.cli(&errOut, "describe", "vsync/logs", "--context", "dc2"); err == nil || !strings.Contains(err.Error(), `volumesync "logs" not found in namespace shop`) {
		t.Errorf("describe of a missing VolumeSync: %v", err)
	}
	if _, err := e.cli(&errOut, "describe", "nothing"); err == nil || !strings.Contains(err.Error(), `no volumesync or volumetarget "nothing" in namespace shop`) {
		t.Errorf("describe of nothing: %v", err)
	}
	for _, args := range [][]string{{"describe"}, {"describe", "pod/db"}, {"describe", "a", "b", "c"}, {"describe", "vt/"}} {
		if code := run(context.Background(), append(args, "--kubeconfig", e.kubeconfig)); code != exitUsage {
			t.Errorf("%v: exit %d, want %d", args, code, exitUsage)
		}
	}

	// -o yaml: the object, parseable, as kubectl prints it.
	raw := e.mustCLI("describe", "db", "-o", "yaml")
	var got v1alpha1.VolumeSync
	if err := yaml.Unmarshal([]byte(raw), &got); err != nil {
		t.Fatalf("describe -o yaml: %v\n%s", err, raw)
	}
	if got.Kind != "VolumeSync" || got.APIVersion != "voldelta.io/v1alpha1" || got.ManagedFields != nil ||
		got.Status.LastGeneration != 12 || got.Spec.SourcePVC != "db-data" || !strings.HasPrefix(raw, "apiVersion: voldelta.io/v1alpha1\n") {
		t.Errorf("describe -o yaml:\n%s", raw)
	}
}
