package k8sreceiver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/csi"
	"github.com/voldelta/voldelta/objstore"
	"github.com/voldelta/voldelta/receiver"
	"github.com/voldelta/voldelta/transport"
)

// indexRemoteVolume indexes VolumeTargets by spec.remoteVolume.
const indexRemoteVolume = "spec.remoteVolume"

// finalizer removes the VolumeAttachment the receiver created.
const finalizer = "voldelta.io/detach"

// The receiver's VolumeAttachments are labelled and annotated with their
// VolumeTarget.
const (
	managedBy         = "app.kubernetes.io/managed-by"
	managedByReceiver = "voldelta-receiver"
	annotationTarget  = "voldelta.io/volumetarget"
)

// ErrNotAttached: the target volume is not attached to the receiver's node
// (yet); the agent's round fails and is retried.
var ErrNotAttached = errors.New("target volume is not attached to this receiver's node")

// Options configure Targets.
type Options struct {
	// Client reads VolumeTargets (cached) and writes their status. Required.
	Client client.Client
	// Kube creates and deletes VolumeAttachments. Required.
	Kube kubernetes.Interface
	// Resolver resolves target volumes. Required.
	Resolver *csi.Resolver
	// NodeName is the receiver's node. Required.
	NodeName string
	// StateDir is the receiver's state directory (receiver.Config.StateDir).
	StateDir string
	// Attach: create a VolumeAttachment of a target's PV to this node when
	// it is attached nowhere (its CSI attacher then attaches it, and e.g.
	// Longhorn publishes /dev/longhorn/<volume>). Without it, targets must
	// be attached here by other means.
	Attach bool
	// Refresh is how often a VolumeTarget's status is re-read from the
	// state directory besides after commits; default 30s.
	Refresh time.Duration
	// Recorder, if set, records Events on VolumeTargets: commits and
	// refused writers.
	Recorder events.EventRecorder
	// Metrics, if set, are updated on commits and refusals.
	Metrics *Metrics
	// Clock; default the real clock.
	Clock clock.PassiveClock
	// Logger; nil logs nothing.
	Logger *slog.Logger

	// Apply configures pulls into store targets (verification, memory).
	Apply receiver.Options
	// PullParallel is the number of concurrent downloads of one pull;
	// default objstore.DefaultParallel.
	PullParallel int
	// Concurrency is the number of VolumeTargets reconciled at once (a
	// pull runs inside its target's reconcile); default 4.
	Concurrency int
	// ProgressInterval is how often a running pull's status.progress is
	// written; default DefaultProgressInterval.
	ProgressInterval time.Duration
}

// Targets serves VolumeTargets to a receiver.Server and reconciles them.
type Targets struct {
	o        Options
	events   chan event.GenericEvent
	mu       sync.Mutex
	writers  map[string]string    // remote volume → identity of the last committer
	promoted map[string]promotion // namespace/name → its promotion, until re-armed
	groupMu  sync.Mutex           // one group evaluation at a time
}

// New checks o and returns Targets.
func New(o Options) (*Targets, error) {
	switch {
	case o.Client == nil || o.Kube == nil || o.Resolver == nil:
		return nil, errors.New("k8sreceiver: Options.Client, Kube and Resolver are required")
	case o.NodeName == "":
		return nil, errors.New("k8sreceiver: Options.NodeName is required (set NODE_NAME)")
	case o.StateDir == "":
		return nil, errors.New("k8sreceiver: Options.StateDir is required")
	}
	if o.Refresh <= 0 {
		o.Refresh = 30 * time.Second
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Apply.Logger == nil {
		o.Apply.Logger = o.Logger
	}
	if o.PullParallel <= 0 {
		o.PullParallel = objstore.DefaultParallel
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 4
	}
	if o.ProgressInterval <= 0 {
		o.ProgressInterval = DefaultProgressInterval
	}
	return &Targets{o: o, events: make(chan event.GenericEvent, 64), writers: make(map[string]string),
		promoted: make(map[string]promotion)}, nil
}

// lookup finds the VolumeTarget of a remote volume.
func (t *Targets) lookup(ctx context.Context, volume string) (*v1alpha1.VolumeTarget, error) {
	var list v1alpha1.VolumeTargetList
	if err := t.o.Client.List(ctx, &list, client.MatchingFields{indexRemoteVolume: volume}); err != nil {
		return nil, fmt.Errorf("list VolumeTargets: %w", err)
	}
	live := list.Items[:0]
	for _, vt := range list.Items {
		if vt.DeletionTimestamp == nil {
			live = append(live, vt)
		}
	}
	switch len(live) {
	case 0:
		return nil, fmt.Errorf("no VolumeTarget has spec.remoteVolume %q: %w", volume, receiver.ErrUnknownVolume)
	case 1:
		return &live[0], nil
	}
	names := make([]string, 0, len(live))
	for _, vt := range live {
		names = append(names, vt.Namespace+"/"+vt.Name)
	}
	slices.Sort(names)
	return nil, fmt.Errorf("VolumeTargets %v all claim remote volume %q: refusing to guess", names, volume)
}

// volume resolves a VolumeTarget's local volume.
func (t *Targets) volume(ctx context.Context, vt *v1alpha1.VolumeTarget) (*csi.Volume, error) {
	switch {
	case vt.Spec.PVC != "" && vt.Spec.LonghornVolume == "":
		return t.o.Resolver.ResolvePVC(ctx, vt.Namespace, vt.Spec.PVC)
	case vt.Spec.LonghornVolume != "" && vt.Spec.PVC == "":
		return t.o.Resolver.LonghornVolume(ctx, vt.Spec.LonghornVolume)
	}
	return nil, fmt.Errorf("VolumeTarget %s/%s: set exactly one of spec.pvc and spec.longhornVolume", vt.Namespace, vt.Name)
}

// Resolve implements receiver.Config.Resolve: the device of the
// VolumeTarget of volume, if it is attached to this node.
func (t *Targets) Resolve(ctx context.Context, volume string) (string, error) {
	vt, err := t.lookup(ctx, volume)
	if err != nil {
		t.o.Metrics.refuse(volume, "unknown")
		return "", err
	}
	if p, ok := t.released(vt); ok {
		t.o.Metrics.refuse(volume, "promoted")
		return "", promotedErr(vt, p)
	}
	path, err := t.device(ctx, vt)
	if err != nil {
		t.o.Metrics.refuse(volume, "unavailable")
		return "", err
	}
	return path, nil
}

func (t *Targets) device(ctx context.Context, vt *v1alpha1.VolumeTarget) (string, error) {
	vol, err := t.volume(ctx, vt)
	if err != nil {
		return "", err
	}
	att, err := t.o.Resolver.AttachedNode(ctx, vol)
	if err != nil {
		return "", fmt.Errorf("VolumeTarget %s/%s: %w: %v", vt.Namespace, vt.Name, ErrNotAttached, err)
	}
	if att.Node != t.o.NodeName {
		return "", fmt.Errorf("VolumeTarget %s/%s: %w (attached to %s)", vt.Namespace, vt.Name, ErrNotAttached, att.Node)
	}
	if vol.DevicePath == "" {
		return "", fmt.Errorf("VolumeTarget %s/%s: no device for driver %s on this node", vt.Namespace, vt.Name, vol.Driver)
	}
	if _, err := os.Stat(vol.DevicePath); err != nil {
		return "", fmt.Errorf("VolumeTarget %s/%s: device: %w", vt.Namespace, vt.Name, err)
	}
	return vol.DevicePath, nil
}

// Authorize implements receiver.Config.Authorize: one of the peer's
// certificate names must be in the VolumeTarget's allowedIdentities.
func (t *Targets) Authorize(volume string, peer transport.Identity) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	vt, err := t.lookup(ctx, volume)
	if err != nil {
		return err
	}
	if vt.Spec.Store != nil {
		t.o.Metrics.refuse(volume, "forbidden")
		return fmt.Errorf("volume %q is pulled from %s (VolumeTarget %s/%s has spec.store): agents may not write it", volume, vt.Spec.Store.URL, vt.Namespace, vt.Name)
	}
	for _, n := range peer.Names() {
		if slices.Contains(vt.Spec.AllowedIdentities, n) {
			return nil
		}
	}
	t.o.Metrics.refuse(volume, "forbidden")
	t.event(vt, corev1.EventTypeWarning, "Forbidden", "Authorize", "client %v may not write this target", peer.Names())
	t.o.Logger.Warn("writer refused", "volume", volume, "identity", peer.Names(), "volumetarget", vt.Namespace+"/"+vt.Name)
	return fmt.Errorf("client %v may not write volume %q (VolumeTarget %s/%s allows %v)", peer.Names(), volume, vt.Namespace, vt.Name, vt.Spec.AllowedIdentities)
}

// OnCommit implements receiver.Config.OnCommit.
func (t *Targets) OnCommit(volume string, peer transport.Identity, r receiver.Result) {
	t.o.Metrics.commit(volume, r, float64(t.o.Clock.Now().UnixNano())/1e9)
	names := peer.Names()
	who := ""
	if len(names) > 0 {
		who = names[0]
	}
	t.mu.Lock()
	t.writers[volume] = who
	t.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if vt, err := t.lookup(ctx, volume); err == nil {
		t.event(vt, corev1.EventTypeNormal, v1alpha1.ReasonTargetCommitted, "Commit",
			"generation %d committed by %s: %d chunks fetched (%d bytes), %d copied locally, %d in place",
			r.Generation, who, r.Fetched, r.FetchBytes, r.Copied, r.Skipped)
		select {
		case t.events <- event.GenericEvent{Object: vt}:
		default: // a refresh is queued already or follows on the timer
		}
	}
}

// Reconcile implements reconcile.Reconciler for VolumeTargets.
func (t *Targets) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var vt v1alpha1.VolumeTarget
	if err := t.o.Client.Get(ctx, req.NamespacedName, &vt); err != nil {
		if apierrors.IsNotFound(err) {
			t.mu.Lock()
			delete(t.promoted, req.NamespacedName.String())
			t.mu.Unlock()
			t.o.Metrics.forget(req.Namespace, req.Name)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if vt.DeletionTimestamp != nil {
		return ctrl.Result{}, t.finalize(ctx, &vt)
	}
	if t.o.Attach && !controllerutil.ContainsFinalizer(&vt, finalizer) {
		controllerutil.AddFinalizer(&vt, finalizer)
		if err := t.o.Client.Update(ctx, &vt); err != nil {
			return ctrl.Result{}, err
		}
	}
	orig := vt.DeepCopy()
	st := &vt.Status
	st.ObservedGeneration = vt.Generation
	retry := t.o.Refresh

	t.rearm(&vt)
	if p, ok := t.released(&vt); ok {
		// Promoted: released, so neither attached nor resolved; its
		// state is reported as it was committed.
		if !orig.Status.Promoted {
			if err := t.release(ctx, &vt, p); err != nil {
				return ctrl.Result{}, err
			}
		}
		if vs, err := receiver.ReadStatus(t.o.StateDir, vt.Spec.RemoteVolume); err == nil {
			t.fromState(&vt, vs)
		}
		t.setPromoted(&vt, p)
		return ctrl.Result{RequeueAfter: retry}, t.patch(ctx, orig, &vt)
	}

	path, err := t.device(ctx, &vt)
	if errors.Is(err, ErrNotAttached) && t.o.Attach {
		if aerr := t.ensureAttached(ctx, &vt); aerr != nil {
			err = fmt.Errorf("%v; attaching: %w", err, aerr)
		}
		retry = 5 * time.Second
	}
	if err != nil {
		st.Phase = v1alpha1.PhaseDegraded
		st.DevicePath = ""
		t.setReady(&vt, metav1.ConditionFalse, v1alpha1.ReasonTargetUnavailable, err.Error())
		if retry > 5*time.Second {
			retry = 5 * time.Second
		}
		return ctrl.Result{RequeueAfter: retry}, t.patch(ctx, orig, &vt)
	}
	st.DevicePath = path
	if vt.Spec.Store != nil && vt.Annotations[AnnotationRestoring] == "" { // a Velero restore takes it over (restore.go)
		var wait time.Duration
		if orig, wait, err = t.syncFromStore(ctx, orig, &vt, path); err != nil {
			return ctrl.Result{}, err
		}
		retry = min(retry, wait)
	}

	vs, err := receiver.ReadStatus(t.o.StateDir, vt.Spec.RemoteVolume)
	switch {
	case errors.Is(err, receiver.ErrNoState):
		st.Phase = v1alpha1.PhasePending
		t.setReady(&vt, metav1.ConditionFalse, v1alpha1.ReasonNeverSynced, "no round has committed yet")
	case err != nil:
		return ctrl.Result{}, err
	default:
		t.fromState(&vt, vs)
		t.mu.Lock()
		if w := t.writers[vt.Spec.RemoteVolume]; w != "" {
			st.LastWriter = w
		}
		t.mu.Unlock()
		switch {
		case vs.Incomplete:
			st.Phase = v1alpha1.PhaseSyncing
			t.setReady(&vt, metav1.ConditionFalse, v1alpha1.ReasonTargetIncomplete,
				"a round started writing and has not committed: the target holds no consistent image until the next round succeeds")
		case !vs.Current && vs.Generation > 0 && vs.Problem != "":
			st.Phase = v1alpha1.PhaseDegraded
			t.setReady(&vt, metav1.ConditionFalse, v1alpha1.ReasonTargetModified,
				fmt.Sprintf("generation %d is not current: %s", vs.Generation, vs.Problem))
		case vs.Current:
			st.Phase = v1alpha1.PhaseIdle
			t.setReady(&vt, metav1.ConditionTrue, v1alpha1.ReasonTargetCommitted, fmt.Sprintf("generation %d verified and committed", vs.Generation))
		default:
			st.Phase = v1alpha1.PhasePending
			t.setReady(&vt, metav1.ConditionFalse, v1alpha1.ReasonNeverSynced, "no round has committed yet")
		}
		t.o.Metrics.state(vt.Spec.RemoteVolume, st.Generation, st.Incomplete)
		if vs.Group != nil && vs.Group.Promote {
			if name, _, ok := memberOf(&vt, vs); ok {
				if err := t.promoteGroup(ctx, &vt, name); err != nil {
					return ctrl.Result{}, errors.Join(err, t.patch(ctx, orig, &vt))
				}
				if p, ok := t.released(&vt); ok {
					t.setPromoted(&vt, p) // also when a concurrent reconcile of another member promoted it
				}
			}
		}
	}
	if st.ConsecutiveFailures > 0 {
		st.Phase = v1alpha1.PhaseDegraded
	}
	return ctrl.Result{RequeueAfter: retry}, t.patch(ctx, orig, &vt)
}

// fromState reports the receiver's state of the volume in vt's status:
// the committed generation and the group of the round that committed it.
func (t *Targets) fromState(vt *v1alpha1.VolumeTarget, vs *receiver.VolumeStatus) {
	st := &vt.Status
	st.Generation = int64(vs.Generation)
	st.RootHash = vs.Root
	st.Size = int64(vs.Size)
	st.Incomplete = vs.Incomplete
	if vs.CommittedAt != nil {
		ct := metav1.NewTime(*vs.CommittedAt)
		st.CommittedTime = &ct
	}
	st.Group, st.GroupGeneration, st.GroupMembers, st.GroupPromote = "", 0, 0, false
	if g := vs.Group; g != nil && vs.Generation > 0 {
		st.Group, st.GroupGeneration, st.GroupMembers, st.GroupPromote = g.Name, int64(vs.Generation), int32(g.Members), g.Promote
	}
}

// event records an Event on vt, if there is a recorder.
func (t *Targets) event(vt *v1alpha1.VolumeTarget, typ, reason, action, note string, args ...any) {
	if t.o.Recorder != nil {
		t.o.Recorder.Eventf(vt, nil, typ, reason, action, note, args...)
	}
}

func (t *Targets) setReady(vt *v1alpha1.VolumeTarget, s metav1.ConditionStatus, reason, msg string) {
	t.setCondition(vt, v1alpha1.ConditionReady, s, reason, msg)
}

func (t *Targets) setCondition(vt *v1alpha1.VolumeTarget, typ string, s metav1.ConditionStatus, reason, msg string) {
	if len(msg) > 1024 {
		msg = msg[:1024]
	}
	meta.SetStatusCondition(&vt.Status.Conditions, metav1.Condition{Type: typ, Status: s,
		Reason: reason, Message: msg, ObservedGeneration: vt.Generation})
}

func (t *Targets) patch(ctx context.Context, orig, vt *v1alpha1.VolumeTarget) error {
	if err := t.o.Client.Status().Patch(ctx, vt, client.MergeFrom(orig)); err != nil {
		return fmt.Errorf("update status: %w", err)
	}
	t.o.Metrics.target(vt)
	return nil
}

// attachmentName names the VolumeAttachment of pv to node made by the
// receiver.
func attachmentName(pv, node string) string {
	h := sha256.Sum256([]byte(pv + "\x00" + node))
	return "voldelta-" + hex.EncodeToString(h[:16])
}

// ensureAttached creates a VolumeAttachment of the target's PV to this node
// if it is attached nowhere.
func (t *Targets) ensureAttached(ctx context.Context, vt *v1alpha1.VolumeTarget) error {
	vol, err := t.volume(ctx, vt)
	if err != nil {
		return err
	}
	if vol.PV == "" {
		return fmt.Errorf("Longhorn volume %s has no PV to attach through CSI: attach it to node %s in Longhorn", vol.Handle, t.o.NodeName)
	}
	if att, err := t.o.Resolver.AttachedNode(ctx, vol); err == nil && att.Node != t.o.NodeName {
		return fmt.Errorf("volume is in use on node %s: detach it there first", att.Node)
	}
	pv := vol.PV
	va := &storagev1.VolumeAttachment{
		ObjectMeta: metav1.ObjectMeta{Name: attachmentName(pv, t.o.NodeName),
			Labels:      map[string]string{managedBy: managedByReceiver},
			Annotations: map[string]string{annotationTarget: vt.Namespace + "/" + vt.Name}},
		Spec: storagev1.VolumeAttachmentSpec{Attacher: vol.Driver, NodeName: t.o.NodeName,
			Source: storagev1.VolumeAttachmentSource{PersistentVolumeName: &pv}},
	}
	_, err = t.o.Kube.StorageV1().VolumeAttachments().Create(ctx, va, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// finalize deletes the receiver's VolumeAttachment of a deleted target and
// removes the finalizer.
func (t *Targets) finalize(ctx context.Context, vt *v1alpha1.VolumeTarget) error {
	if !controllerutil.ContainsFinalizer(vt, finalizer) {
		return nil
	}
	// Find them by annotation: the PVC may be gone already.
	vas, err := t.o.Kube.StorageV1().VolumeAttachments().List(ctx, metav1.ListOptions{LabelSelector: managedBy + "=" + managedByReceiver})
	if err != nil {
		return err
	}
	for _, va := range vas.Items {
		if va.Annotations[annotationTarget] != vt.Namespace+"/"+vt.Name || va.Spec.NodeName != t.o.NodeName {
			continue
		}
		err := t.o.Kube.StorageV1().VolumeAttachments().Delete(ctx, va.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return err
		}
	}
	controllerutil.RemoveFinalizer(vt, finalizer)
	return t.o.Client.Update(ctx, vt)
}
