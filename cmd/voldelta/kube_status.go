package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/duration"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
)

// kubeCluster is one cluster the Kubernetes commands (status, sync,
// describe) read: a client, the namespace to work in, the context's name.
type kubeCluster struct {
	Context   string
	Client    client.WithWatch
	Namespace string
}

// kubeOptions is what status, sync and describe work with.
type kubeOptions struct {
	// Clusters: status takes one, or two (the source's VolumeSyncs and
	// the destination's VolumeTargets side by side); sync and describe one.
	Clusters      []kubeCluster
	AllNamespaces bool
	// Output is "table", "json" or "yaml".
	Output string
	Out    io.Writer
	// Err gets notes that are not the result.
	Err io.Writer
	Now func() time.Time
	// Program is how the binary was invoked, for hints.
	Program string
}

func (o kubeOptions) structured() bool { return o.Output == "json" || o.Output == "yaml" }

// kubeScheme has the types the Kubernetes commands read.
var kubeScheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{v1alpha1.AddToScheme, corev1.AddToScheme} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}()

// loadCluster loads a client configuration the way kubectl does (as
// kubeFlags.client) for the context kubeContext ("" the current one).
func loadCluster(kubeconfig, kubeContext, namespace string) (kubeCluster, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	overrides := &clientcmd.ConfigOverrides{CurrentContext: kubeContext}
	overrides.Context.Namespace = namespace
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides)
	cfg, err := cc.ClientConfig()
	if err != nil {
		return kubeCluster{}, fmt.Errorf("client configuration (--kubeconfig, $KUBECONFIG, ~/.kube/config, in-cluster): %w", err)
	}
	ns, _, err := cc.Namespace()
	if err != nil {
		return kubeCluster{}, fmt.Errorf("namespace of context %q: %w", kubeContext, err)
	}
	name := kubeContext
	if raw, err := cc.RawConfig(); err == nil && name == "" {
		name = raw.CurrentContext
	}
	cl, err := client.NewWithWatch(cfg, client.Options{Scheme: kubeScheme})
	if err != nil {
		return kubeCluster{}, fmt.Errorf("client for context %q: %w", name, err)
	}
	return kubeCluster{Context: name, Client: cl, Namespace: ns}, nil
}

// statusKubeFlags are the flags of status's Kubernetes view: kubectl's,
// with --context repeatable (source, then destination).
type statusKubeFlags struct {
	kubeconfig string
	contexts   []string
	namespace  string
	all        bool
	output     string
}

func (f *statusKubeFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (default $KUBECONFIG, else ~/.kube/config, else in-cluster)")
	fs.StringArrayVar(&f.contexts, "context", nil, "kubeconfig context (default its current context); twice: the source cluster, then the destination cluster, side by side")
	fs.StringVarP(&f.namespace, "namespace", "n", "", "namespace (default the context's, else default)")
	fs.BoolVarP(&f.all, "all-namespaces", "A", false, "every namespace")
	fs.StringVarP(&f.output, "output", "o", "table", "output format: table, json or yaml")
}

// used says whether any of the flags was given.
func (f *statusKubeFlags) used(c *cobra.Command) bool {
	for _, n := range []string{"kubeconfig", "context", "namespace", "all-namespaces", "output"} {
		if c.Flags().Changed(n) {
			return true
		}
	}
	return false
}

func (f *statusKubeFlags) options(c *cobra.Command) (kubeOptions, error) {
	if err := checkOutput(c, f.output); err != nil {
		return kubeOptions{}, err
	}
	if len(f.contexts) > 2 {
		return kubeOptions{}, usagef(c, "--context at most twice: the source cluster, then the destination cluster")
	}
	contexts := f.contexts
	if len(contexts) == 0 {
		contexts = []string{""}
	}
	o := newKubeOptions(c, f.output, f.all)
	for _, name := range contexts {
		cl, err := loadCluster(f.kubeconfig, name, f.namespace)
		if err != nil {
			return kubeOptions{}, err
		}
		o.Clusters = append(o.Clusters, cl)
	}
	return o, nil
}

// kubeCommandOptions are the options of sync and describe: one cluster.
func kubeCommandOptions(c *cobra.Command, kf *kubeFlags, output string) (kubeOptions, error) {
	if err := checkOutput(c, output); err != nil {
		return kubeOptions{}, err
	}
	cl, err := loadCluster(kf.kubeconfig, kf.context, kf.namespace)
	if err != nil {
		return kubeOptions{}, err
	}
	o := newKubeOptions(c, output, false)
	o.Clusters = []kubeCluster{cl}
	return o, nil
}

func newKubeOptions(c *cobra.Command, output string, all bool) kubeOptions {
	return kubeOptions{AllNamespaces: all, Output: output, Out: c.OutOrStdout(), Err: c.ErrOrStderr(),
		Now: time.Now, Program: c.Root().CommandPath()}
}

func checkOutput(c *cobra.Command, output string) error {
	switch output {
	case "table", "json", "yaml":
		return nil
	}
	return usagef(c, "--output %q: want table, json or yaml", output)
}

// runKubeStatus prints the VolumeSyncs and VolumeTargets of one cluster,
// or the source's VolumeSyncs joined with the destination's VolumeTargets.
func runKubeStatus(ctx context.Context, o kubeOptions) error {
	src, dst := o.Clusters[0], o.Clusters[len(o.Clusters)-1]
	syncs, syncErr := listVolumeSyncs(ctx, o, src)
	targets, targetErr := listVolumeTargets(ctx, o, dst)
	if err := visibility(o, syncErr, targetErr); err != nil {
		return err
	}
	if o.structured() {
		var items []any
		for i := range syncs {
			items = append(items, forOutputObject(&syncs[i], "VolumeSync"))
		}
		for i := range targets {
			items = append(items, forOutputObject(&targets[i], "VolumeTarget"))
		}
		return printObject(o.Out, o.Output, newObjectList(items))
	}
	if len(syncs) == 0 && len(targets) == 0 {
		if o.AllNamespaces {
			fmt.Fprintln(o.Err, "No resources found")
		} else {
			fmt.Fprintf(o.Err, "No resources found in namespace %s.\n", src.Namespace)
		}
		return nil
	}
	now := o.Now()
	if len(o.Clusters) == 2 {
		return writeJoinTable(o.Out, joinTargets(syncs, targets), o.AllNamespaces, now)
	}
	both := len(syncs) > 0 && len(targets) > 0
	if len(syncs) > 0 {
		if err := writeSyncTable(o.Out, syncs, o.AllNamespaces, both, now); err != nil {
			return err
		}
	}
	if both {
		fmt.Fprintln(o.Out)
	}
	if len(targets) > 0 {
		return writeTargetTable(o.Out, targets, o.AllNamespaces, both, now)
	}
	return nil
}

// errInvisible is a kind the user cannot list: its CRD is not installed
// (NoMatch) or RBAC forbids it. status shows what it can see.
var errInvisible = errors.New("not visible")

func listVolumeSyncs(ctx context.Context, o kubeOptions, c kubeCluster) ([]v1alpha1.VolumeSync, error) {
	var list v1alpha1.VolumeSyncList
	err := c.Client.List(ctx, &list, listNamespace(o, c)...)
	if err != nil {
		return nil, listError(o, c, "volumesyncs", err)
	}
	sort.Slice(list.Items, func(i, j int) bool { return objectLess(&list.Items[i], &list.Items[j]) })
	return list.Items, nil
}

func listVolumeTargets(ctx context.Context, o kubeOptions, c kubeCluster) ([]v1alpha1.VolumeTarget, error) {
	var list v1alpha1.VolumeTargetList
	err := c.Client.List(ctx, &list, listNamespace(o, c)...)
	if err != nil {
		return nil, listError(o, c, "volumetargets", err)
	}
	sort.Slice(list.Items, func(i, j int) bool { return objectLess(&list.Items[i], &list.Items[j]) })
	return list.Items, nil
}

func objectLess(a, b client.Object) bool {
	if a.GetNamespace() != b.GetNamespace() {
		return a.GetNamespace() < b.GetNamespace()
	}
	return a.GetName() < b.GetName()
}

func listNamespace(o kubeOptions, c kubeCluster) []client.ListOption {
	if o.AllNamespaces {
		return nil
	}
	return []client.ListOption{client.InNamespace(c.Namespace)}
}

// listError is errInvisible (with a note on Err when RBAC forbids it) or
// the error of the list, with the operation.
func listError(o kubeOptions, c kubeCluster, what string, err error) error {
	switch {
	case meta.IsNoMatchError(err):
		return fmt.Errorf("%w: %s: %v", errInvisible, what, err)
	case apierrors.IsForbidden(err):
		fmt.Fprintf(o.Err, "note: context %s: %v\n", c.Context, err)
		return fmt.Errorf("%w: %s: %v", errInvisible, what, err)
	}
	return fmt.Errorf("list %s (context %s): %w", what, c.Context, err)
}

// visibility is nil when at least one kind could be listed and neither
// failed otherwise.
func visibility(o kubeOptions, syncErr, targetErr error) error {
	for _, err := range []error{syncErr, targetErr} {
		if err != nil && !errors.Is(err, errInvisible) {
			return err
		}
	}
	if syncErr == nil || targetErr == nil {
		return nil
	}
	if len(o.Clusters) == 2 {
		return fmt.Errorf("cannot list volumesyncs in context %s nor volumetargets in context %s (are voldelta's CRDs installed? kubectl apply -k deploy/crds): %v; %v",
			o.Clusters[0].Context, o.Clusters[1].Context, syncErr, targetErr)
	}
	return fmt.Errorf("cannot list volumesyncs nor volumetargets in context %s (are voldelta's CRDs installed? kubectl apply -k deploy/crds): %v; %v",
		o.Clusters[0].Context, syncErr, targetErr)
}

// forOutputObject is obj as kubectl prints it: with its apiVersion and
// kind, without managedFields.
func forOutputObject(obj client.Object, kind string) client.Object {
	obj.GetObjectKind().SetGroupVersionKind(v1alpha1.GroupVersion.WithKind(kind))
	obj.SetManagedFields(nil)
	return obj
}

// objectList is kubectl's List of objects of several kinds.
type objectList struct {
	APIVersion string            `json:"apiVersion"`
	Items      []any             `json:"items"`
	Kind       string            `json:"kind"`
	Metadata   map[string]string `json:"metadata"`
}

func newObjectList(items []any) objectList {
	if items == nil {
		items = []any{}
	}
	return objectList{APIVersion: "v1", Kind: "List", Items: items, Metadata: map[string]string{"resourceVersion": ""}}
}

// printObject prints v as JSON or YAML.
func printObject(w io.Writer, format string, v any) error {
	if format != "yaml" {
		return printJSON(w, v)
	}
	b, err := yaml.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

func writeSyncTable(w io.Writer, list []v1alpha1.VolumeSync, namespaces, kinds bool, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if namespaces {
		fmt.Fprint(tw, "NAMESPACE\t")
	}
	fmt.Fprintln(tw, "NAME\tSOURCE\tDESTINATION\tREMOTE VOLUME\tPHASE\tGEN\tLAST SYNC\tRPO\tTHROUGHPUT\tNEXT")
	for i := range list {
		vs := &list[i]
		if namespaces {
			fmt.Fprintf(tw, "%s\t", vs.Namespace)
		}
		name := vs.Name
		if kinds {
			name = "volumesync.voldelta.io/" + name
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name, vs.Spec.SourcePVC, destinationString(&vs.Spec.Destination),
			remoteVolume(vs), syncPhase(vs), genString(vs.Status.LastGeneration), microAge(vs.Status.LastSyncTime, now),
			rpo(&vs.Status, now), throughput(&vs.Status), nextRound(vs, now))
	}
	return tw.Flush()
}

func writeTargetTable(w io.Writer, list []v1alpha1.VolumeTarget, namespaces, kinds bool, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if namespaces {
		fmt.Fprint(tw, "NAMESPACE\t")
	}
	fmt.Fprintln(tw, "NAME\tREMOTE VOLUME\tVOLUME\tPHASE\tGEN\tSTORE GEN\tCOMMITTED\tPROGRESS")
	for i := range list {
		vt := &list[i]
		if namespaces {
			fmt.Fprintf(tw, "%s\t", vt.Namespace)
		}
		name := vt.Name
		if kinds {
			name = "volumetarget.voldelta.io/" + name
		}
		storeGen := "-"
		if vt.Spec.Store != nil {
			storeGen = genString(vt.Status.StoreGeneration)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name, vt.Spec.RemoteVolume, targetVolume(vt), targetPhase(vt),
			genString(vt.Status.Generation), storeGen, timeAge(vt.Status.CommittedTime, now), targetProgressString(vt.Status.Progress))
	}
	return tw.Flush()
}

// joined is a row of the side-by-side view: a VolumeSync of the source
// and the VolumeTarget of the destination it sends to; either may be nil.
type joined struct {
	vs *v1alpha1.VolumeSync
	vt *v1alpha1.VolumeTarget
}

// joinTargets pairs each VolumeSync with the VolumeTarget whose
// spec.remoteVolume is its destination volume name (the one in its own
// namespace if several are), then lists the targets left over.
func joinTargets(syncs []v1alpha1.VolumeSync, targets []v1alpha1.VolumeTarget) []joined {
	byVolume := map[string][]*v1alpha1.VolumeTarget{}
	for i := range targets {
		vt := &targets[i]
		byVolume[vt.Spec.RemoteVolume] = append(byVolume[vt.Spec.RemoteVolume], vt)
	}
	used := map[*v1alpha1.VolumeTarget]bool{}
	var rows []joined
	for i := range syncs {
		vs := &syncs[i]
		var match *v1alpha1.VolumeTarget
		for _, vt := range byVolume[remoteVolume(vs)] {
			if used[vt] {
				continue
			}
			if match == nil || (vt.Namespace == vs.Namespace && match.Namespace != vs.Namespace) {
				match = vt
			}
		}
		if match != nil {
			used[match] = true
		}
		rows = append(rows, joined{vs: vs, vt: match})
	}
	for i := range targets {
		if !used[&targets[i]] {
			rows = append(rows, joined{vt: &targets[i]})
		}
	}
	return rows
}

func writeJoinTable(w io.Writer, rows []joined, namespaces bool, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if namespaces {
		fmt.Fprint(tw, "NAMESPACE\t")
	}
	fmt.Fprintln(tw, "VOLUMESYNC\tPHASE\tGEN\tREMOTE VOLUME\tVOLUMETARGET\tTARGET PHASE\tTARGET GEN\tLAG\tRPO\tTHROUGHPUT")
	for _, r := range rows {
		ns, name, phase, gen, volume, tput := "", "<none>", "-", "-", "-", "-"
		if r.vs != nil {
			ns, name, phase, gen, volume, tput = r.vs.Namespace, r.vs.Name, syncPhase(r.vs), genString(r.vs.Status.LastGeneration), remoteVolume(r.vs), throughput(&r.vs.Status)
		}
		target, tphase, tgen := "<none>", "-", "-"
		if r.vt != nil {
			target, tphase, tgen = r.vt.Name, targetPhase(r.vt), genString(targetGeneration(r.vt))
			if r.vs == nil {
				ns, volume = r.vt.Namespace, r.vt.Spec.RemoteVolume
			} else if r.vt.Namespace != r.vs.Namespace {
				target = r.vt.Namespace + "/" + r.vt.Name
			}
		}
		if namespaces {
			fmt.Fprintf(tw, "%s\t", ns)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name, phase, gen, volume, target, tphase, tgen,
			lag(r.vs, r.vt), replicaRPO(r.vs, r.vt, now), tput)
	}
	return tw.Flush()
}

// remoteVolume is the volume name a VolumeSync sends as (the agent's
// default: <namespace>-<sourcePVC>).
func remoteVolume(vs *v1alpha1.VolumeSync) string {
	if n := vs.Spec.Destination.VolumeName; n != "" {
		return n
	}
	return vs.Namespace + "-" + vs.Spec.SourcePVC
}

func destinationString(d *v1alpha1.Destination) string {
	if d.Store != nil {
		return d.Store.URL
	}
	return d.Address
}

func targetVolume(vt *v1alpha1.VolumeTarget) string {
	if vt.Spec.LonghornVolume != "" {
		return "longhorn:" + vt.Spec.LonghornVolume
	}
	return "pvc:" + vt.Spec.PVC
}

// targetGeneration is the generation a VolumeTarget holds, in the
// numbering of the VolumeSync's status.lastGeneration: the store's for a
// store target, the receiver's otherwise.
func targetGeneration(vt *v1alpha1.VolumeTarget) int64 {
	if vt.Spec.Store != nil {
		return vt.Status.StoreGeneration
	}
	return vt.Status.Generation
}

func genString(g int64) string {
	if g == 0 {
		return "-"
	}
	return fmt.Sprint(g)
}

func phaseString(p v1alpha1.Phase) string {
	if p == "" {
		return string(v1alpha1.PhasePending)
	}
	return string(p)
}

// syncPhase is the phase, with how far a running round got or how many
// attempts failed.
func syncPhase(vs *v1alpha1.VolumeSync) string {
	st := &vs.Status
	s := phaseString(st.Phase)
	switch {
	case st.Phase == v1alpha1.PhaseSyncing && st.Progress != nil:
		s += " (" + roundProgressString(st.Progress, vs.Spec.Destination.Store != nil) + ")"
	case st.ConsecutiveFailures == 1:
		s += " (1 failure)"
	case st.ConsecutiveFailures > 1:
		s += fmt.Sprintf(" (%d failures)", st.ConsecutiveFailures)
	}
	return s
}

func targetPhase(vt *v1alpha1.VolumeTarget) string {
	s := phaseString(vt.Status.Phase)
	if vt.Status.Incomplete && vt.Status.Phase != v1alpha1.PhaseSyncing {
		s += " (incomplete)"
	}
	return s
}

// roundProgressString is "scan 40%" until the snapshot is scanned, then
// "send 45%, ETA 2m" ("upload" to a store).
func roundProgressString(p *v1alpha1.RoundProgress, store bool) string {
	if !p.ScanDone {
		return "scan " + percent(p.ScannedBytes, p.SourceBytes)
	}
	verb := "send"
	if store {
		verb = "upload"
	}
	s := verb + " " + percent(p.SentBytes, p.NeededBytes)
	if p.ETA != nil {
		s += ", ETA " + duration.HumanDuration(p.ETA.Duration)
	}
	return s
}

func targetProgressString(p *v1alpha1.TargetProgress) string {
	if p == nil {
		return "-"
	}
	if !p.Planned {
		return "plan, fetch " + humanBytes(nonNeg(p.FetchedBytes))
	}
	s := "fetch " + percent(p.FetchedBytes, p.NeededBytes)
	if p.ETA != nil {
		s += ", ETA " + duration.HumanDuration(p.ETA.Duration)
	}
	return s
}

func percent(done, total int64) string {
	if total <= 0 {
		return "0%"
	}
	return fmt.Sprintf("%d%%", min(100, done*100/total))
}

// committedSnapshot is when the snapshot of the last committed round was
// taken: the round's start (lastSyncTime minus lastSyncDuration, since
// lastSyncStartTime already names a running round's start). The agent
// requests the snapshot as the round starts, so the data is at most this
// old (its metric voldelta_agent_replica_lag_seconds starts here too).
func committedSnapshot(st *v1alpha1.VolumeSyncStatus) (time.Time, bool) {
	if st.LastSyncTime == nil {
		return time.Time{}, false
	}
	t := st.LastSyncTime.Time
	if st.LastSyncDuration != nil {
		t = t.Add(-st.LastSyncDuration.Duration)
	}
	return t, true
}

// rpo is the recovery point of the replica the last round committed:
// now minus the time of its snapshot.
func rpo(st *v1alpha1.VolumeSyncStatus, now time.Time) string {
	t, ok := committedSnapshot(st)
	if !ok {
		return "-"
	}
	return duration.HumanDuration(now.Sub(t))
}

// replicaRPO is the RPO of what the destination holds: the source's when
// the target holds the last committed generation; when it is behind, the
// data is older than its commit (">" its age), unknown if nothing is
// committed.
func replicaRPO(vs *v1alpha1.VolumeSync, vt *v1alpha1.VolumeTarget, now time.Time) string {
	switch {
	case vs == nil && vt == nil:
		return "-"
	case vs != nil && (vt == nil || targetGeneration(vt) >= vs.Status.LastGeneration):
		return rpo(&vs.Status, now)
	case vt.Status.CommittedTime == nil:
		return "-"
	}
	return ">" + duration.HumanDuration(now.Sub(vt.Status.CommittedTime.Time))
}

// lag is how far the destination is behind the source: "0" when it holds
// the source's last committed generation, else the generations it lacks
// and the time from its commit to the source's last commit.
func lag(vs *v1alpha1.VolumeSync, vt *v1alpha1.VolumeTarget) string {
	if vs == nil || vt == nil || vs.Status.LastSyncTime == nil {
		return "-"
	}
	behind := vs.Status.LastGeneration - targetGeneration(vt)
	switch {
	case behind == 0:
		return "0"
	case behind < 0: // a round commits: the receiver reports before the agent
		return fmt.Sprintf("ahead %d", -behind)
	}
	s := fmt.Sprintf("%d gen", behind)
	if vt.Status.CommittedTime == nil {
		return s + ", none committed"
	}
	if d := vs.Status.LastSyncTime.Sub(vt.Status.CommittedTime.Time); d > 0 {
		s += ", " + duration.HumanDuration(d)
	}
	return s
}

// throughput is the last round's changed data over its whole duration
// (lastBytesSent / lastSyncDuration, snapshot included).
func throughput(st *v1alpha1.VolumeSyncStatus) string {
	if st.LastSyncTime == nil || st.LastSyncDuration == nil || st.LastSyncDuration.Duration <= 0 {
		return "-"
	}
	return rateString(float64(nonNeg(st.LastBytesSent)) / st.LastSyncDuration.Seconds())
}

func rateString(bytesPerSecond float64) string {
	return humanBytes(uint64(bytesPerSecond)) + "/s"
}

// nextRound is when the next scheduled round is due: "in 11m", "due",
// "manual" (no interval) or "paused".
func nextRound(vs *v1alpha1.VolumeSync, now time.Time) string {
	st := &vs.Status
	switch {
	case vs.Spec.Paused:
		return "paused"
	case st.Phase == v1alpha1.PhaseSyncing:
		return "running"
	case st.NextSyncTime != nil && st.NextSyncTime.After(now):
		return "in " + duration.HumanDuration(st.NextSyncTime.Sub(now))
	case st.NextSyncTime != nil:
		return "due"
	case vs.Spec.Trigger.Interval == nil || vs.Spec.Trigger.Interval.Duration <= 0:
		return "manual"
	}
	return "-"
}

// microAge and timeAge are kubectl's AGE of a time, "-" if unset.
func microAge(t *metav1.MicroTime, now time.Time) string {
	if t == nil {
		return "-"
	}
	return age(metav1.Time{Time: t.Time}, now)
}

func timeAge(t *metav1.Time, now time.Time) string {
	if t == nil {
		return "-"
	}
	return age(*t, now)
}

// joinNames is names, comma-separated, "<none>" if empty.
func joinNames(names []string) string {
	if len(names) == 0 {
		return "<none>"
	}
	return strings.Join(names, ",")
}
