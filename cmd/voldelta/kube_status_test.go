package main

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/internal/k8stest"
)

// kubeEnv is two real control planes, the source cluster (dc1: its
// VolumeSyncs) and the destination cluster (dc2: its VolumeTargets), a
// kubeconfig with a context for each, and clients standing in for the
// agent and the receiver.
type kubeEnv struct {
	t          *testing.T
	ctx        context.Context
	src, dst   client.Client
	srcKube    kubernetes.Interface
	kubeconfig string
}

// t0 is when the test's story starts; now is 15 minutes later.
var (
	t0      = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	fixedAt = t0.Add(15 * time.Minute)
)

func newKubeEnv(t *testing.T) *kubeEnv {
	src, dst := k8stest.Start(t), k8stest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	kc := clientcmdapi.NewConfig()
	for name, cp := range map[string]*k8stest.ControlPlane{"dc1": src, "dc2": dst} {
		kc.Clusters[name] = &clientcmdapi.Cluster{Server: cp.Config.Host, CertificateAuthorityData: cp.Config.CAData}
		kc.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: cp.Config.BearerToken}
		kc.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name, Namespace: "shop"}
	}
	kc.Contexts["dc1-other"] = &clientcmdapi.Context{Cluster: "dc1", AuthInfo: "dc1", Namespace: "other"}
	kc.CurrentContext = "dc1"
	e := &kubeEnv{t: t, ctx: ctx, kubeconfig: filepath.Join(t.TempDir(), "kubeconfig")}
	if err := clientcmd.WriteToFile(*kc, e.kubeconfig); err != nil {
		t.Fatal(err)
	}
	var err error
	if e.src, err = client.New(src.Config, client.Options{Scheme: kubeScheme}); err != nil {
		t.Fatal(err)
	}
	if e.dst, err = client.New(dst.Config, client.Options{Scheme: kubeScheme}); err != nil {
		t.Fatal(err)
	}
	if e.srcKube, err = kubernetes.NewForConfig(src.Config); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		cl client.Client
		ns []string
	}{{e.src, []string{"shop", "other"}}, {e.dst, []string{"shop"}}} {
		for _, ns := range c.ns {
			if err := c.cl.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	return e
}

// lockedBuffer is a bytes.Buffer the test reads while a command writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// cli runs the command line with the test's kubeconfig; errOut may be
// read while it runs.
func (e *kubeEnv) cli(errOut *lockedBuffer, args ...string) (string, error) {
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(errOut)
	root.SetArgs(append(args, "--kubeconfig", e.kubeconfig))
	err := root.ExecuteContext(e.ctx)
	return out.String(), err
}

func (e *kubeEnv) mustCLI(args ...string) string {
	e.t.Helper()
	var errOut lockedBuffer
	out, err := e.cli(&errOut, args...)
	if err != nil {
		e.t.Fatalf("%v: %v (stderr %q)", args, err, errOut.String())
	}
	return out
}

// options are kubeOptions for the contexts, at the fixed time.
func (e *kubeEnv) options(output string, all bool, contexts ...string) kubeOptions {
	e.t.Helper()
	var out, errOut bytes.Buffer
	o := kubeOptions{AllNamespaces: all, Output: output, Out: &out, Err: &errOut, Now: func() time.Time { return fixedAt }, Program: "voldelta"}
	for _, c := range contexts {
		cl, err := loadCluster(e.kubeconfig, c, "")
		if err != nil {
			e.t.Fatal(err)
		}
		o.Clusters = append(o.Clusters, cl)
	}
	return o
}

func output(o kubeOptions) string { return o.Out.(*bytes.Buffer).String() }

func (e *kubeEnv) create(cl client.Client, objs ...client.Object) {
	e.t.Helper()
	for _, o := range objs {
		if err := cl.Create(e.ctx, o); err != nil {
			e.t.Fatal(err)
		}
	}
}

func (e *kubeEnv) setSyncStatus(name string, set func(*v1alpha1.VolumeSyncStatus)) {
	e.t.Helper()
	e.updateStatus(e.src, &v1alpha1.VolumeSync{}, "shop", name, func(o client.Object) { set(&o.(*v1alpha1.VolumeSync).Status) })
}

func (e *kubeEnv) setTargetStatus(name string, set func(*v1alpha1.VolumeTargetStatus)) {
	e.t.Helper()
	e.updateStatus(e.dst, &v1alpha1.VolumeTarget{}, "shop", name, func(o client.Object) { set(&o.(*v1alpha1.VolumeTarget).Status) })
}

func (e *kubeEnv) updateStatus(cl client.Client, obj client.Object, ns, name string, set func(client.Object)) {
	e.t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := cl.Get(e.ctx, client.ObjectKey{Namespace: ns, Name: name}, obj); err != nil {
			return err
		}
		set(obj)
		return cl.Status().Update(e.ctx, obj)
	})
	if err != nil {
		e.t.Fatal(err)
	}
}

func micro(d time.Duration) *metav1.MicroTime { t := metav1.NewMicroTime(t0.Add(d)); return &t }
func mtime(d time.Duration) *metav1.Time      { t := metav1.NewTime(t0.Add(d)); return &t }
func dur(d time.Duration) *metav1.Duration    { return &metav1.Duration{Duration: d} }

func receiverDest(volume string) v1alpha1.Destination {
	return v1alpha1.Destination{Address: "replica.example:7300", TLSSecretName: "tls", VolumeName: volume}
}

// seed creates the story: in dc1/shop the VolumeSyncs db (idle, in sync
// with its target), logs (to a store, sending; its target a generation
// behind) and fresh (never synced, no target); in dc1/other one more; in
// dc2/shop the VolumeTargets db, logs and orphan (nobody sends to it).
func (e *kubeEnv) seed() {
	e.create(e.src,
		&v1alpha1.VolumeSync{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "db"}, Spec: v1alpha1.VolumeSyncSpec{
			SourcePVC: "db-data", Destination: receiverDest(""), Trigger: v1alpha1.Trigger{Interval: dur(15 * time.Minute)}}},
		&v1alpha1.VolumeSync{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "logs"}, Spec: v1alpha1.VolumeSyncSpec{
			SourcePVC: "logs-data", Destination: v1alpha1.Destination{VolumeName: "logs-vol",
				Store: &v1alpha1.Store{URL: "s3://replicas/dc1", CredentialsSecretName: "s3"}}}},
		&v1alpha1.VolumeSync{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "fresh"}, Spec: v1alpha1.VolumeSyncSpec{
			SourcePVC: "fresh-data", Destination: receiverDest("")}},
		&v1alpha1.VolumeSync{ObjectMeta: metav1.ObjectMeta{Namespace: "other", Name: "cache"}, Spec: v1alpha1.VolumeSyncSpec{
			SourcePVC: "cache", Destination: receiverDest("")}},
	)
	e.create(e.dst,
		&v1alpha1.VolumeTarget{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "db"}, Spec: v1alpha1.VolumeTargetSpec{
			RemoteVolume: "shop-db-data", PVC: "db-replica", AllowedIdentities: []string{"dc1-agent"}}},
		&v1alpha1.VolumeTarget{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "logs"}, Spec: v1alpha1.VolumeTargetSpec{
			RemoteVolume: "logs-vol", LonghornVolume: "logs-replica",
			Store: &v1alpha1.StoreSource{Store: v1alpha1.Store{URL: "s3://replicas/dc1", CredentialsSecretName: "s3"}}}},
		&v1alpha1.VolumeTarget{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "orphan"}, Spec: v1alpha1.VolumeTargetSpec{
			RemoteVolume: "elsewhere", PVC: "orphan", AllowedIdentities: []string{"dc3-agent"}}},
	)
	// db: the round of t0+8m committed at t0+10m, 1200 MiB in 2m.
	e.setSyncStatus("db", func(st *v1alpha1.VolumeSyncStatus) {
		st.Phase, st.Node, st.Rounds = v1alpha1.PhaseIdle, "node-a", 12
		st.LastSyncStartTime, st.LastSyncTime, st.LastSyncDuration = micro(8*time.Minute), micro(10*time.Minute), dur(2*time.Minute)
		st.LastSnapshotDuration = dur(3 * time.Second)
		st.LastGeneration, st.LastRootHash = 12, "9f86d081884c7d659a2feaa0c55ad015"
		st.LastSourceBytes, st.LastBytesSent, st.LastWireBytes = 10*gib, 1200*mib, 900*mib
		st.NextSyncTime = mtime(25 * time.Minute)
		st.Conditions = []metav1.Condition{{Type: v1alpha1.ConditionReady, Status: metav1.ConditionTrue, Reason: v1alpha1.ReasonSynced,
			Message: "generation 12 committed", LastTransitionTime: *mtime(10 * time.Minute)}}
	})
	// logs: generation 3 committed at t0+1m (30 MiB in 30s), a round sends.
	e.setSyncStatus("logs", func(st *v1alpha1.VolumeSyncStatus) {
		st.Phase, st.Rounds = v1alpha1.PhaseSyncing, 3
		st.LastSyncStartTime, st.LastSyncTime, st.LastSyncDuration = micro(14*time.Minute), micro(time.Minute), dur(30*time.Second)
		st.LastGeneration, st.LastBytesSent = 3, 30*mib
		st.Progress = &v1alpha1.RoundProgress{SourceBytes: gib, ScannedBytes: gib, NeededBytes: 100 * mib, SentBytes: 45 * mib,
			ScanDone: true, BytesPerSecond: 5 * mib, ETA: dur(11 * time.Second), UpdateTime: *mtime(14*time.Minute + 50*time.Second)}
	})
	e.setTargetStatus("db", func(st *v1alpha1.VolumeTargetStatus) {
		st.Phase, st.Generation, st.CommittedTime = v1alpha1.PhaseIdle, 12, mtime(10*time.Minute)
	})
	// logs: the store's generation 2, pulled at t0; pulling 3.
	e.setTargetStatus("logs", func(st *v1alpha1.VolumeTargetStatus) {
		st.Phase, st.Generation, st.StoreGeneration, st.CommittedTime = v1alpha1.PhaseSyncing, 5, 2, mtime(0)
		st.Progress = &v1alpha1.TargetProgress{SourceBytes: gib, NeededBytes: 40 * mib, FetchedBytes: 10 * mib, Planned: true,
			StartTime: *mtime(14 * time.Minute), UpdateTime: *mtime(14*time.Minute + 30*time.Second)}
	})
}

// row is the fields of the line of out whose first field is name.
func row(t *testing.T, out, name string) []string {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == name {
			return f
		}
	}
	t.Fatalf("no row %s in\n%s", name, out)
	return nil
}

// cells are the columns of the row of name, split at runs of two or
// more spaces (tabwriter's padding), keyed by the header's.
func cells(t *testing.T, out, name string) map[string]string {
	t.Helper()
	lines := strings.Split(out, "\n")
	var header string
	for _, l := range lines {
		if strings.HasPrefix(l, "NAME") || strings.HasPrefix(l, "NAMESPACE") || strings.HasPrefix(l, "VOLUMESYNC") {
			header = l
		}
		if f := strings.Fields(l); len(f) > 0 && f[0] == name && header != "" {
			m := map[string]string{}
			cols := columnStarts(header)
			for i, c := range cols {
				end := len(l)
				if i+1 < len(cols) && cols[i+1].start < len(l) {
					end = cols[i+1].start
				}
				if c.start < len(l) {
					m[c.name] = strings.TrimSpace(l[c.start:end])
				}
			}
			return m
		}
	}
	t.Fatalf("no row %s in\n%s", name, out)
	return nil
}

type column struct {
	name  string
	start int
}

func columnStarts(header string) []column {
	var cols []column
	for i := 0; i < len(header); {
		for i < len(header) && header[i] == ' ' {
			i++
		}
		start := i
		for i < len(header) && !(header[i] == ' ' && (i+1 >= len(header) || header[i+1] == ' ')) {
			i++
		}
		if start < i {
			cols = append(cols, column{header[start:i], start})
		}
	}
	return cols
}

func wantCells(t *testing.T, what string, got map[string]string, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s = %q, want %q (row %v)", what, k, got[k], v, got)
		}
	}
}

// TestKubePlugin runs status, sync and describe against two real
// kube-apiservers (source and destination clusters), the test playing
// the agent and the receiver.
func TestKubePlugin(t *testing.T) {
	e := newKubeEnv(t)
	e.seed()
	t.Run("status", func(t *testing.T) { testKubeStatus(t, e) })
	t.Run("status two contexts", func(t *testing.T) { testKubeStatusJoined(t, e) })
	t.Run("describe", func(t *testing.T) { testKubeDescribe(t, e) })
	t.Run("sync", func(t *testing.T) { testKubeSync(t, e) })
}

func testKubeStatus(t *testing.T, e *kubeEnv) {
	// The source cluster alone: its VolumeSyncs (it has no VolumeTargets).
	o := e.options("table", false, "dc1")
	if err := runKubeStatus(e.ctx, o); err != nil {
		t.Fatal(err)
	}
	out := output(o)
	wantCells(t, "db", cells(t, out, "db"), map[string]string{
		"SOURCE": "db-data", "DESTINATION": "replica.example:7300", "REMOTE VOLUME": "shop-db-data", "PHASE": "Idle",
		"GEN": "12", "LAST SYNC": "5m", "RPO": "7m", "THROUGHPUT": "10.0 MiB/s", "NEXT": "in 10m"})
	wantCells(t, "logs", cells(t, out, "logs"), map[string]string{
		"DESTINATION": "s3://replicas/dc1", "REMOTE VOLUME": "logs-vol", "PHASE": "Syncing (upload 45%, ETA 11s)",
		"GEN": "3", "LAST SYNC": "14m", "RPO": "14m", "THROUGHPUT": "1.0 MiB/s", "NEXT": "running"})
	wantCells(t, "fresh", cells(t, out, "fresh"), map[string]string{
		"REMOTE VOLUME": "shop-fresh-data", "PHASE": "Pending", "GEN": "-", "LAST SYNC": "-", "RPO": "-", "THROUGHPUT": "-", "NEXT": "manual"})
	if strings.Contains(out, "cache") || strings.Contains(out, "NAMESPACE") || strings.Contains(out, "volumesync.voldelta.io/") {
		t.Errorf("status of dc1/shop:\n%s", out)
	}

	// The destination alone: its VolumeTargets.
	o = e.options("table", false, "dc2")
	if err := runKubeStatus(e.ctx, o); err != nil {
		t.Fatal(err)
	}
	out = output(o)
	wantCells(t, "target db", cells(t, out, "db"), map[string]string{
		"REMOTE VOLUME": "shop-db-data", "VOLUME": "pvc:db-replica", "PHASE": "Idle", "GEN": "12", "STORE GEN": "-", "COMMITTED": "5m", "PROGRESS": "-"})
	wantCells(t, "target logs", cells(t, out, "logs"), map[string]string{
		"VOLUME": "longhorn:logs-replica", "PHASE": "Syncing", "GEN": "5", "STORE GEN": "2", "COMMITTED": "15m", "PROGRESS": "fetch 25%"})
	wantCells(t, "target orphan", cells(t, out, "orphan"), map[string]string{"PHASE": "Pending", "GEN": "-"})

	// Through the command line: -A, another context, both kinds in one
	// cluster (kubectl's kind/name), an empty namespace, usage.
	out = e.mustCLI("status", "-A")
	wantContains(t, "status -A", out, "NAMESPACE", "other", "cache", "shop", "db")
	if r := row(t, out, "other"); r[1] != "cache" {
		t.Errorf("status -A: %v", r)
	}
	if out := e.mustCLI("status", "--context", "dc1-other"); !strings.Contains(out, "cache") || strings.Contains(out, "db-data") {
		t.Errorf("status --context dc1-other:\n%s", out)
	}
	e.create(e.src, &v1alpha1.VolumeTarget{ObjectMeta: metav1.ObjectMeta{Namespace: "other", Name: "back"}, Spec: v1alpha1.VolumeTargetSpec{
		RemoteVolume: "dc2-back", PVC: "back", AllowedIdentities: []string{"dc2-agent"}}})
	out = e.mustCLI("status", "-n", "other")
	wantContains(t, "status with both kinds", out, "volumesync.voldelta.io/cache", "volumetarget.voldelta.io/back", "\n\nNAME")
	var errOut lockedBuffer
	if out, err := e.cli(&errOut, "status", "-n", "empty"); err != nil || out != "" || !strings.Contains(errOut.String(), "No resources found in namespace empty.") {
		t.Errorf("empty namespace: %v, %q, %q", err, out, errOut.String())
	}
	for _, args := range [][]string{
		{"status", "--context", "dc1", "--context", "dc2", "--context", "dc1"},
		{"status", "--state-dir", "/tmp/x", "-A"},
		{"status", "--json"},
		{"status", "-o", "wide"},
	} {
		if code := run(e.ctx, append(args, "--kubeconfig", e.kubeconfig)); code != exitUsage {
			t.Errorf("%v: exit %d, want %d", args, code, exitUsage)
		}
	}

	// -o json and yaml: a List of the objects, without managedFields.
	for _, format := range []string{"json", "yaml"} {
		raw := e.mustCLI("status", "--context", "dc2", "-o", format)
		if format == "yaml" {
			b, err := yaml.YAMLToJSON([]byte(raw))
			if err != nil {
				t.Fatalf("status -o yaml: %v\n%s", err, raw)
			}
			raw = string(b)
		}
		var list struct {
			APIVersion, Kind string
			Items            []v1alpha1.VolumeTarget
		}
		if err := json.Unmarshal([]byte(raw), &list); err != nil {
			t.Fatalf("status -o %s: %v\n%s", format, err, raw)
		}
		if list.Kind != "List" || list.APIVersion != "v1" || len(list.Items) != 3 || list.Items[0].Kind != "VolumeTarget" ||
			list.Items[0].APIVersion != "voldelta.io/v1alpha1" || list.Items[0].ManagedFields != nil || list.Items[1].Status.StoreGeneration != 2 {
			t.Errorf("status -o %s: %+v", format, list)
		}
	}
}

func testKubeStatusJoined(t *testing.T, e *kubeEnv) {
	o := e.options("table", false, "dc1", "dc2")
	if err := runKubeStatus(e.ctx, o); err != nil {
		t.Fatal(err)
	}
	out := output(o)
	wantCells(t, "db joined", cells(t, out, "db"), map[string]string{
		"PHASE": "Idle", "GEN": "12", "REMOTE VOLUME": "shop-db-data", "VOLUMETARGET": "db", "TARGET PHASE": "Idle",
		"TARGET GEN": "12", "LAG": "0", "RPO": "7m", "THROUGHPUT": "10.0 MiB/s"})
	// logs: the store holds 3, the target pulled 2 at t0, a minute before 3 committed.
	wantCells(t, "logs joined", cells(t, out, "logs"), map[string]string{
		"GEN": "3", "VOLUMETARGET": "logs", "TARGET GEN": "2", "LAG": "1 gen, 60s", "RPO": ">15m"})
	wantCells(t, "fresh joined", cells(t, out, "fresh"), map[string]string{"VOLUMETARGET": "<none>", "LAG": "-", "RPO": "-"})
	orphan := row(t, out, "<none>")
	if !strings.Contains(strings.Join(orphan, " "), "elsewhere orphan") {
		t.Errorf("the target nobody sends to: %v\n%s", orphan, out)
	}

	// The command line: --context twice, -n for both, -o yaml.
	out = e.mustCLI("status", "--context", "dc1", "--context", "dc2", "-n", "shop")
	wantContains(t, "status --context dc1 --context dc2", out, "VOLUMESYNC", "TARGET GEN", "LAG", "1 gen, ")
	var list struct{ Items []map[string]any }
	raw := e.mustCLI("status", "--context", "dc1", "--context", "dc2", "-o", "yaml")
	b, err := yaml.YAMLToJSON([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &list); err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, it := range list.Items {
		kinds[it["kind"].(string)]++
	}
	if kinds["VolumeSync"] != 3 || kinds["VolumeTarget"] != 3 {
		t.Errorf("status with two contexts -o yaml: kinds %v", kinds)
	}
}
