package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/duration"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
)

func newDescribeCmd() *cobra.Command {
	var (
		kf     kubeFlags
		output string
	)
	c := &cobra.Command{
		Use:   "describe [TYPE/]NAME",
		Short: "Show a VolumeSync or VolumeTarget in detail: spec, last round, progress, conditions, events",
		Long: `describe shows one VolumeSync or VolumeTarget as 'kubectl describe' would,
arranged for replication: the spec in short, the status (phase, node,
rounds, next round), the last committed round's figures (generation, root
hash, snapshot time and RPO, duration, bytes sent and on the wire,
throughput), a running round's progress, the conditions and the object's
recent Events (oldest first).

NAME alone is a VolumeSync, else the VolumeTarget of that name. TYPE/NAME
or TYPE NAME picks one: volumesync (vsync) or volumetarget (vtarget, vt),
also as kubectl prints them (volumesync.voldelta.io/NAME). -o json or yaml
prints the object.`,
		Example: `  voldelta describe mysql-data -n shop
  voldelta describe vt/mysql-data --context dc2
  voldelta describe volumetarget mysql-data -o yaml`,
		Args: usageArgs(cobra.RangeArgs(1, 2)),
		RunE: func(c *cobra.Command, args []string) error {
			kind, name, err := parseObjectRef(args)
			if err != nil {
				return usagef(c, "%v", err)
			}
			o, err := kubeCommandOptions(c, &kf, output)
			if err != nil {
				return err
			}
			return runKubeDescribe(c.Context(), o, kind, name)
		},
	}
	kf.register(c.Flags())
	c.Flags().StringVarP(&output, "output", "o", "table", "output format: table (the description), json or yaml")
	return c
}

// objectKind is what describe was asked for.
type objectKind int

const (
	kindAny objectKind = iota // a VolumeSync, else a VolumeTarget
	kindVolumeSync
	kindVolumeTarget
)

// parseObjectRef reads NAME, TYPE/NAME or TYPE NAME.
func parseObjectRef(args []string) (objectKind, string, error) {
	typ, name := "", args[0]
	if len(args) == 2 {
		typ, name = args[0], args[1]
	} else if t, n, ok := strings.Cut(args[0], "/"); ok {
		typ, name = t, n
	}
	if name == "" {
		return 0, "", fmt.Errorf("%q: the name is empty", strings.Join(args, " "))
	}
	switch strings.ToLower(typ) {
	case "":
		return kindAny, name, nil
	case "volumesync", "volumesyncs", "vsync", "volumesync.voldelta.io", "volumesyncs.voldelta.io":
		return kindVolumeSync, name, nil
	case "volumetarget", "volumetargets", "vtarget", "vt", "volumetarget.voldelta.io", "volumetargets.voldelta.io":
		return kindVolumeTarget, name, nil
	}
	return 0, "", fmt.Errorf("type %q: want volumesync (vsync) or volumetarget (vtarget, vt)", typ)
}

func runKubeDescribe(ctx context.Context, o kubeOptions, kind objectKind, name string) error {
	c := o.Clusters[0]
	key := client.ObjectKey{Namespace: c.Namespace, Name: name}
	if kind != kindVolumeTarget {
		vs := &v1alpha1.VolumeSync{}
		err := c.Client.Get(ctx, key, vs)
		switch {
		case err == nil:
			return describeObject(ctx, o, vs, "VolumeSync", func(w io.Writer, evs []corev1.Event) error {
				return writeVolumeSyncDescription(w, vs, evs, o.Now())
			})
		case !apierrors.IsNotFound(err):
			return fmt.Errorf("get volumesync %s/%s: %w", key.Namespace, key.Name, apiError(err))
		case kind == kindVolumeSync:
			return fmt.Errorf("volumesync %q not found in namespace %s", name, key.Namespace)
		}
	}
	vt := &v1alpha1.VolumeTarget{}
	err := c.Client.Get(ctx, key, vt)
	switch {
	case apierrors.IsNotFound(err) && kind == kindAny:
		return fmt.Errorf("no volumesync or volumetarget %q in namespace %s", name, key.Namespace)
	case apierrors.IsNotFound(err):
		return fmt.Errorf("volumetarget %q not found in namespace %s", name, key.Namespace)
	case err != nil:
		return fmt.Errorf("get volumetarget %s/%s: %w", key.Namespace, key.Name, apiError(err))
	}
	return describeObject(ctx, o, vt, "VolumeTarget", func(w io.Writer, evs []corev1.Event) error {
		return writeVolumeTargetDescription(w, vt, evs, o.Now())
	})
}

// describeObject prints obj (-o json, yaml) or its description with its
// Events.
func describeObject(ctx context.Context, o kubeOptions, obj client.Object, kind string, write func(io.Writer, []corev1.Event) error) error {
	if o.structured() {
		return printObject(o.Out, o.Output, forOutputObject(obj, kind))
	}
	evs, err := objectEvents(ctx, o.Clusters[0].Client, obj, kind)
	if err != nil {
		fmt.Fprintf(o.Err, "note: events of %s %s: %v\n", strings.ToLower(kind), obj.GetName(), err)
	}
	return write(o.Out, evs)
}

// objectEvents are the Events (core/v1; the agent's and receiver's
// events.k8s.io/v1 Events are the same objects) whose involvedObject is
// obj, oldest first, as kubectl describe selects them.
func objectEvents(ctx context.Context, cl client.Client, obj client.Object, kind string) ([]corev1.Event, error) {
	sel := fields.Set{
		"involvedObject.kind": kind, "involvedObject.name": obj.GetName(),
		"involvedObject.namespace": obj.GetNamespace(), "involvedObject.uid": string(obj.GetUID()),
	}.AsSelector()
	var list corev1.EventList
	if err := cl.List(ctx, &list, client.InNamespace(obj.GetNamespace()), client.MatchingFieldsSelector{Selector: sel}); err != nil {
		return nil, err
	}
	sort.SliceStable(list.Items, func(i, j int) bool { return eventTime(&list.Items[i]).Before(eventTime(&list.Items[j])) })
	return list.Items, nil
}

// eventTime is when an Event last happened, whichever API wrote it.
func eventTime(e *corev1.Event) time.Time {
	switch {
	case !e.LastTimestamp.IsZero():
		return e.LastTimestamp.Time
	case e.Series != nil && !e.Series.LastObservedTime.IsZero():
		return e.Series.LastObservedTime.Time
	case !e.EventTime.IsZero():
		return e.EventTime.Time
	case !e.FirstTimestamp.IsZero():
		return e.FirstTimestamp.Time
	}
	return e.CreationTimestamp.Time
}

// eventFirst is when an Event first happened.
func eventFirst(e *corev1.Event) time.Time {
	switch {
	case !e.FirstTimestamp.IsZero():
		return e.FirstTimestamp.Time
	case !e.EventTime.IsZero():
		return e.EventTime.Time
	}
	return eventTime(e)
}

// fieldWriter writes "Name:  value" lines, indented.
type fieldWriter struct {
	tw     *tabwriter.Writer
	indent string
}

func newFieldWriter(w io.Writer) *fieldWriter {
	return &fieldWriter{tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)}
}

func (f *fieldWriter) field(name, format string, a ...any) {
	fmt.Fprintf(f.tw, f.indent+name+":\t"+format+"\n", a...)
}

// section starts a block of fields under title.
func (f *fieldWriter) section(title string) {
	fmt.Fprintf(f.tw, "%s:\n", title)
	f.indent = "  "
}

func (f *fieldWriter) end() { f.indent = "" }

func (f *fieldWriter) flush() error { return f.tw.Flush() }

func writeMeta(f *fieldWriter, obj metav1.Object, kind string, now time.Time) {
	f.field("Name", "%s", obj.GetName())
	f.field("Namespace", "%s", obj.GetNamespace())
	f.field("Kind", "%s (%s)", kind, v1alpha1.GroupVersion)
	f.field("Labels", "%s", mapString(obj.GetLabels()))
	f.field("Created", "%s ago (%s)", age(obj.GetCreationTimestamp(), now), clock(obj.GetCreationTimestamp().Time, now))
	if o := metav1.GetControllerOf(obj); o != nil {
		f.field("Controlled By", "%s/%s", o.Kind, o.Name)
	}
}

func mapString(m map[string]string) string {
	if len(m) == 0 {
		return "<none>"
	}
	var kv []string
	for k, v := range m {
		kv = append(kv, k+"="+v)
	}
	sort.Strings(kv)
	return strings.Join(kv, ",")
}

func writeVolumeSyncDescription(w io.Writer, vs *v1alpha1.VolumeSync, evs []corev1.Event, now time.Time) error {
	f := newFieldWriter(w)
	writeMeta(f, vs, "VolumeSync", now)
	sp, st := &vs.Spec, &vs.Status
	f.field("Source PVC", "%s", sp.SourcePVC)
	f.field("Destination", "%s", destinationDescription(&sp.Destination))
	f.field("Remote Volume", "%s", remoteVolume(vs))
	f.field("Trigger", "%s", triggerString(&sp.Trigger, st))
	if sp.VolumeSnapshotClassName != "" {
		f.field("Snapshot Class", "%s", sp.VolumeSnapshotClassName)
	}
	if sp.BandwidthLimit != "" {
		f.field("Bandwidth Limit", "%s", sp.BandwidthLimit)
	}
	if sp.Paused {
		f.field("Paused", "true (no new rounds)")
	}
	if g := sp.Group; g != nil {
		f.field("Group", "%s (%d members, promote %t)", g.Name, g.Members, g.Promote)
	}
	phase := phaseString(st.Phase)
	if st.ObservedGeneration != 0 && st.ObservedGeneration < vs.Generation {
		phase += " (the agent has not seen the last change of spec yet)"
	}
	f.field("Phase", "%s", phase)
	f.field("Node", "%s", orNone(st.Node))
	f.field("Rounds", "%d committed, %d consecutive failures", st.Rounds, st.ConsecutiveFailures)
	f.field("Next Round", "%s", nextRound(vs, now))
	if st.PendingSnapshot != "" {
		f.field("Pending Snapshot", "%s (trigger %s)", st.PendingSnapshot, orNone(st.PendingManualTrigger))
	}
	if st.BaseSnapshot != "" {
		f.field("Base Snapshot", "%s", st.BaseSnapshot)
	}
	if snap, ok := committedSnapshot(st); ok {
		f.section("Last Round")
		f.field("Generation", "%d", st.LastGeneration)
		f.field("Root Hash", "%s", orNone(st.LastRootHash))
		f.field("Snapshot", "%s (RPO %s)", clock(snap, now), rpo(st, now))
		f.field("Committed", "%s (%s ago)", clock(st.LastSyncTime.Time, now), duration.HumanDuration(now.Sub(st.LastSyncTime.Time)))
		f.field("Duration", "%s", roundDuration(st))
		f.field("Source", "%s", humanBytes(nonNeg(st.LastSourceBytes)))
		f.field("Sent", "%s (%s on the wire)", humanBytes(nonNeg(st.LastBytesSent)), humanBytes(nonNeg(st.LastWireBytes)))
		if st.LastReusedBytes > 0 {
			f.field("Not Read", "%s (unchanged per the storage)", humanBytes(nonNeg(st.LastReusedBytes)))
		}
		f.field("Throughput", "%s", throughput(st))
		f.end()
	}
	if p := st.Progress; p != nil {
		f.section("Progress")
		f.field("Step", "%s", roundProgressString(p, sp.Destination.Store != nil))
		f.field("Scanned", "%s of %s", humanBytes(nonNeg(p.ScannedBytes)), humanBytes(nonNeg(p.SourceBytes)))
		f.field("Sent", "%s of %s needed", humanBytes(nonNeg(p.SentBytes)), humanBytes(nonNeg(p.NeededBytes)))
		f.field("Rate", "%s", progressRate(p.BytesPerSecond))
		f.field("Updated", "%s ago", age(p.UpdateTime, now))
		f.end()
	}
	if err := f.flush(); err != nil {
		return err
	}
	return writeConditionsAndEvents(w, st.Conditions, evs, now)
}

func writeVolumeTargetDescription(w io.Writer, vt *v1alpha1.VolumeTarget, evs []corev1.Event, now time.Time) error {
	f := newFieldWriter(w)
	writeMeta(f, vt, "VolumeTarget", now)
	sp, st := &vt.Spec, &vt.Status
	f.field("Remote Volume", "%s", sp.RemoteVolume)
	f.field("Volume", "%s", targetVolume(vt))
	if sp.Store != nil {
		f.field("Pulls From", "%s", sp.Store.URL)
	} else {
		f.field("Allowed Identities", "%s", joinNames(sp.AllowedIdentities))
	}
	if sp.Rearm != "" {
		f.field("Rearm", "%s (last re-arm %s)", sp.Rearm, orNone(st.LastRearm))
	}
	f.field("Phase", "%s", targetPhase(vt))
	f.field("Device Path", "%s", orNone(st.DevicePath))
	f.field("Generation", "%s", genString(st.Generation))
	f.field("Root Hash", "%s", orNone(st.RootHash))
	f.field("Size", "%s", humanBytes(nonNeg(st.Size)))
	f.field("Committed", "%s", timeClock(st.CommittedTime, now))
	f.field("Incomplete", "%t", st.Incomplete)
	f.field("Last Writer", "%s", orNone(st.LastWriter))
	if sp.Store != nil {
		f.field("Store Generation", "%s", genString(st.StoreGeneration))
		f.field("Last Poll", "%s", timeClock(st.LastPollTime, now))
		if d := st.LastPullDuration; d != nil {
			f.field("Last Pull", "%s, %s downloaded", shortDuration(d.Duration), humanBytes(nonNeg(st.LastPullDownloadedBytes)))
		}
		f.field("Consecutive Failures", "%d", st.ConsecutiveFailures)
	}
	if st.Group != "" {
		f.field("Group", "%s (generation %d, %d members, promote %t)", st.Group, st.GroupGeneration, st.GroupMembers, st.GroupPromote)
	}
	if st.Promoted || st.PromotedGroup != "" {
		f.field("Promoted", "%t (group %s, generation %d, %s)", st.Promoted, st.PromotedGroup, st.PromotedGeneration, timeClock(st.PromotedTime, now))
	}
	if p := st.Progress; p != nil {
		f.section("Progress")
		f.field("Step", "%s", targetProgressString(p))
		f.field("Fetched", "%s of %s needed (%s copied within the target)", humanBytes(nonNeg(p.FetchedBytes)), humanBytes(nonNeg(p.NeededBytes)), humanBytes(nonNeg(p.CopiedBytes)))
		f.field("Rate", "%s", progressRate(p.BytesPerSecond))
		f.field("Updated", "%s ago", age(p.UpdateTime, now))
		f.end()
	}
	if err := f.flush(); err != nil {
		return err
	}
	return writeConditionsAndEvents(w, st.Conditions, evs, now)
}

func writeConditionsAndEvents(w io.Writer, conds []metav1.Condition, evs []corev1.Event, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if len(conds) == 0 {
		fmt.Fprintln(tw, "Conditions:\t<none>")
	} else {
		fmt.Fprintln(tw, "Conditions:")
		fmt.Fprintln(tw, "  Type\tStatus\tReason\tAge\tMessage")
		fmt.Fprintln(tw, "  ----\t------\t------\t---\t-------")
		for _, c := range conds {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", c.Type, c.Status, c.Reason, age(c.LastTransitionTime, now), c.Message)
		}
	}
	if len(evs) == 0 {
		fmt.Fprintln(tw, "Events:\t<none>")
		return tw.Flush()
	}
	fmt.Fprintln(tw, "Events:")
	fmt.Fprintln(tw, "  Type\tReason\tAge\tFrom\tMessage")
	fmt.Fprintln(tw, "  ----\t------\t---\t----\t-------")
	for i := range evs {
		e := &evs[i]
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", e.Type, e.Reason, eventAge(e, now), eventSource(e), strings.TrimSpace(e.Message))
	}
	return tw.Flush()
}

// eventAge is kubectl describe's Age of an Event: "3m", or "3m (x5 over
// 10m)" for a repeated one.
func eventAge(e *corev1.Event, now time.Time) string {
	last := duration.HumanDuration(now.Sub(eventTime(e)))
	count := e.Count
	if e.Series != nil {
		count = e.Series.Count
	}
	if count > 1 {
		return fmt.Sprintf("%s (x%d over %s)", last, count, duration.HumanDuration(now.Sub(eventFirst(e))))
	}
	return last
}

func eventSource(e *corev1.Event) string {
	switch {
	case e.Source.Component != "":
		return e.Source.Component
	case e.ReportingController != "":
		return e.ReportingController
	}
	return "-"
}

func destinationDescription(d *v1alpha1.Destination) string {
	if d.Store != nil {
		s := "store " + d.Store.URL
		if d.Store.Endpoint != "" {
			s += " at " + d.Store.Endpoint
		}
		return s + " (credentials secret " + d.Store.CredentialsSecretName + ")"
	}
	s := "receiver " + d.Address + " (TLS secret " + d.TLSSecretName
	if d.ServerName != "" {
		s += ", server name " + d.ServerName
	}
	return s + ")"
}

func triggerString(t *v1alpha1.Trigger, st *v1alpha1.VolumeSyncStatus) string {
	var parts []string
	if t.Interval != nil && t.Interval.Duration > 0 {
		parts = append(parts, "every "+t.Interval.Duration.String())
	}
	if t.Manual != "" {
		s := "manual " + t.Manual
		if st.LastManualTrigger == t.Manual {
			s += " (ran)"
		} else {
			s += " (pending; last ran " + orNone(st.LastManualTrigger) + ")"
		}
		parts = append(parts, s)
	}
	if t.SnapshotName != "" {
		parts = append(parts, "snapshot "+t.SnapshotName)
	}
	if len(parts) == 0 {
		return "manual only (none requested)"
	}
	return strings.Join(parts, "; ")
}

func roundDuration(st *v1alpha1.VolumeSyncStatus) string {
	if st.LastSyncDuration == nil {
		return "-"
	}
	s := shortDuration(st.LastSyncDuration.Duration)
	if d := st.LastSnapshotDuration; d != nil {
		s += " (snapshot " + shortDuration(d.Duration) + ")"
	}
	return s
}

// progressRate is a reported rate, "-" before there is one.
func progressRate(bytesPerSecond int64) string {
	if bytesPerSecond <= 0 {
		return "-"
	}
	return rateString(float64(bytesPerSecond))
}

func timeClock(t *metav1.Time, now time.Time) string {
	if t == nil {
		return "-"
	}
	return clock(t.Time, now) + " (" + age(*t, now) + " ago)"
}

func orNone(s string) string {
	if s == "" {
		return "<none>"
	}
	return s
}
