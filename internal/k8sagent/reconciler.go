package k8sagent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strings"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/voldelta/voldelta/agent"
	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/csi"
	"github.com/voldelta/voldelta/csi/snapmeta"
	"github.com/voldelta/voldelta/hint"
	"github.com/voldelta/voldelta/internal/k8sutil"
	"github.com/voldelta/voldelta/objstore"
	"github.com/voldelta/voldelta/transport"
)

// roundStart is when the round in st started, or def if it has no start.
func roundStart(st *v1alpha1.VolumeSyncStatus, def time.Time) time.Time {
	if st.LastSyncStartTime != nil {
		return st.LastSyncStartTime.Time
	}
	return def
}

// Labels of the VolumeSnapshots the agent takes.
const (
	LabelVolumeSync = "voldelta.io/volumesync"
	LabelNode       = "voldelta.io/node"
)

// SyncFunc runs one round; agent.Sync in production.
type SyncFunc func(ctx context.Context, opt agent.Options) (*agent.Stats, error)

// Options configure a Reconciler.
type Options struct {
	// Client reads VolumeSyncs and writes their status (the manager's
	// client). Required.
	Client client.Client
	// Reader, if set, reads VolumeSyncs instead of Client: the manager's
	// API reader, so that a reconcile never acts on a status older than
	// its own last write.
	Reader client.Reader
	// Kube reads Secrets (one Get per round, never cached) and what the
	// Resolver needs. Required.
	Kube kubernetes.Interface
	// Snapshots lists and deletes the agent's VolumeSnapshots. Required.
	Snapshots snapclient.Interface
	// Resolver, Snapshotter and Images resolve volumes, take snapshots
	// and open their images. Required.
	Resolver    *csi.Resolver
	Snapshotter *csi.Snapshotter
	Images      csi.ImageSource
	// NodeName is this agent's node (from the NODE_NAME environment
	// variable in the DaemonSet). Required.
	NodeName string
	// Sync runs a round; default agent.Sync, and the rounds of a group
	// (spec.group) to one receiver share a session (agent.SyncOn).
	Sync SyncFunc
	// Params are the chunking parameters; zero: chunk.DefaultParams().
	Params chunk.Params
	// Streams is the number of data streams per round; 0: the transport's
	// default.
	Streams int
	// Clock; default the real clock.
	Clock clock.PassiveClock
	// Recorder, if set, records an Event on the VolumeSync for every
	// committed or failed round.
	Recorder events.EventRecorder
	// Metrics, if set, are updated after every round.
	Metrics *Metrics
	// Logger; nil logs nothing.
	Logger *slog.Logger
	// ProgressInterval is how often status.progress is updated while a
	// round sends; default 10s.
	ProgressInterval time.Duration
	// Cache keeps the manifests of committed rounds on the node (a host
	// path, so that they survive restarts) and each volume's hint policy;
	// nil: none (hinted rounds fetch their base from the receiver).
	Cache *agent.Cache
	// FullScan is the periodic full-scan policy of hinted rounds.
	FullScan agent.FullScanPolicy
	// SnapshotMetadata, if set, asks CSI snapshot metadata services
	// (KEP-3314) for the blocks changed between snapshots of drivers that
	// offer one.
	SnapshotMetadata *snapmeta.Client
	// KubeletDir is the kubelet's directory as this process sees it (in
	// the DaemonSet, under the host root), where the pods' volume mounts
	// are found to freeze them (spec.freeze); default /var/lib/kubelet.
	KubeletDir string
	// RetryAfterUnresolved is how long to wait before looking again at a
	// VolumeSync whose volume cannot be resolved or is not attached;
	// default 30s. Watches on VolumeAttachments and Longhorn Volumes
	// usually wake it earlier.
	RetryAfterUnresolved time.Duration
}

// Reconciler runs the rounds of the VolumeSyncs of its node.
type Reconciler struct {
	o      Options
	frozen *frozenSet   // what this process froze (spec.freeze), by VolumeSync
	pool   *sessionPool // with the default Sync: the groups' shared sessions
}

// New checks o and returns a Reconciler.
func New(o Options) (*Reconciler, error) {
	switch {
	case o.Client == nil:
		return nil, errors.New("k8sagent: Options.Client is required")
	case o.Kube == nil:
		return nil, errors.New("k8sagent: Options.Kube is required")
	case o.Snapshots == nil:
		return nil, errors.New("k8sagent: Options.Snapshots is required")
	case o.Resolver == nil || o.Snapshotter == nil || o.Images == nil:
		return nil, errors.New("k8sagent: Options.Resolver, Snapshotter and Images are required")
	case o.NodeName == "":
		return nil, errors.New("k8sagent: Options.NodeName is required (set NODE_NAME)")
	}
	if o.Reader == nil {
		o.Reader = o.Client
	}
	var pool *sessionPool
	if o.Sync == nil {
		o.Sync = agent.Sync
		pool = newSessionPool()
	}
	o.Params = o.Params.OrDefault()
	if err := o.Params.Validate(); err != nil {
		return nil, err
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.ProgressInterval <= 0 {
		o.ProgressInterval = 10 * time.Second
	}
	if o.RetryAfterUnresolved <= 0 {
		o.RetryAfterUnresolved = 30 * time.Second
	}
	if o.KubeletDir == "" {
		o.KubeletDir = "/var/lib/kubelet"
	}
	return &Reconciler{o: o, frozen: newFrozenSet(), pool: pool}, nil
}

// Reconcile implements reconcile.Reconciler.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	log := r.o.Logger.With("volumesync", req.String())
	var vs v1alpha1.VolumeSync
	if err := r.o.Reader.Get(ctx, req.NamespacedName, &vs); err != nil {
		if apierrors.IsNotFound(err) {
			r.o.Metrics.forget(req.Namespace, req.Name)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	if vs.DeletionTimestamp != nil {
		return ctrl.Result{}, nil // its snapshots are garbage-collected through their owner reference
	}
	orig := vs.DeepCopy()

	vol, err := r.o.Resolver.ResolvePVC(ctx, vs.Namespace, vs.Spec.SourcePVC)
	var att csi.Attachment
	if err == nil {
		att, err = r.o.Resolver.AttachedNode(ctx, vol)
	}
	if err != nil {
		// Nobody owns it while it is unresolved: the agent that last did (or
		// any, if none did) reports why.
		if vs.Status.Node != "" && vs.Status.Node != r.o.NodeName {
			return ctrl.Result{}, nil
		}
		if !isUnresolved(err) {
			return ctrl.Result{}, err
		}
		r.degrade(&vs, v1alpha1.ReasonSourceNotFound, err.Error())
		return ctrl.Result{RequeueAfter: r.o.RetryAfterUnresolved}, r.patchStatus(ctx, orig, &vs)
	}
	if att.Node != r.o.NodeName {
		log.Debug("volume attached elsewhere", "node", att.Node)
		r.o.Metrics.forget(req.Namespace, req.Name) // the agent of its node reports it
		return ctrl.Result{}, nil
	}
	vs.Status.Node = r.o.NodeName
	vs.Status.ObservedGeneration = vs.Generation

	dest, err := r.destination(&vs)
	if err != nil {
		r.degrade(&vs, v1alpha1.ReasonInvalidSpec, err.Error())
		return ctrl.Result{}, r.patchStatus(ctx, orig, &vs) // a spec change wakes us
	}
	if vs.Spec.Paused && vs.Status.PendingSnapshot == "" {
		vs.Status.Phase = v1alpha1.PhasePaused
		vs.Status.NextSyncTime = nil
		setCondition(&vs, v1alpha1.ConditionSyncing, metav1.ConditionFalse, v1alpha1.ReasonPaused, "spec.paused is set")
		r.ensureReadyCondition(&vs)
		return ctrl.Result{}, r.patchStatus(ctx, orig, &vs)
	}

	now := r.o.Clock.Now()
	if vs.Status.PendingSnapshot == "" {
		if due, wait := r.due(&vs, now); !due {
			r.idle(&vs, now)
			if err := r.patchStatus(ctx, orig, &vs); err != nil {
				return ctrl.Result{}, err
			}
			return ctrl.Result{RequeueAfter: wait}, nil
		}
		// Start a round: record the snapshot's name before creating it, so
		// a restart finds and reuses it.
		vs.Status.PendingSnapshot = snapshotName(vs.Name, now, vs.Status.Rounds+1, vs.Status.ConsecutiveFailures)
		if given(&vs) {
			vs.Status.PendingSnapshot = vs.Spec.Trigger.SnapshotName
		}
		vs.Status.PendingManualTrigger = vs.Spec.Trigger.Manual
		start := metav1.NewMicroTime(now)
		vs.Status.LastSyncStartTime = &start
	}
	vs.Status.Phase = v1alpha1.PhaseSyncing
	vs.Status.NextSyncTime = nil
	setCondition(&vs, v1alpha1.ConditionSyncing, metav1.ConditionTrue, v1alpha1.ReasonWaitingSnapshot, "waiting for VolumeSnapshot "+vs.Status.PendingSnapshot)
	r.ensureReadyCondition(&vs)
	if err := r.patchStatus(ctx, orig, &vs); err != nil {
		return ctrl.Result{}, err
	}
	orig = vs.DeepCopy()

	owner := metav1.NewControllerRef(&vs, v1alpha1.GroupVersion.WithKind("VolumeSync"))
	// A snapshot given by spec.trigger.snapshotName is read, never created
	// nor deleted here.
	existing := vs.Status.PendingSnapshot == vs.Spec.Trigger.SnapshotName &&
		vs.Status.PendingManualTrigger == vs.Spec.Trigger.Manual && vs.Spec.Trigger.SnapshotName != ""
	snap, err := r.o.Snapshotter.EnsureSnapshot(ctx, csi.SnapshotRequest{
		Namespace: vs.Namespace, Name: vs.Status.PendingSnapshot, PVC: vs.Spec.SourcePVC,
		Class: vs.Spec.VolumeSnapshotClassName, Owner: owner, Existing: existing,
		Labels: map[string]string{LabelVolumeSync: vs.Name, LabelNode: r.o.NodeName},
	})
	if errors.Is(err, csi.ErrSnapshotFailed) {
		log.Warn("snapshot failed; taking another", "snapshot", vs.Status.PendingSnapshot, "existing", existing, "err", err)
		if existing {
			// Not ours to delete; the next attempt reads it again (its
			// creator reports or replaces it).
		} else if _, derr := r.o.Snapshotter.EnsureDeleted(ctx, vs.Namespace, vs.Status.PendingSnapshot); derr != nil {
			log.Warn("delete failed snapshot", "err", derr)
		}
		vs.Status.PendingSnapshot = ""
		return r.failed(ctx, orig, &vs, v1alpha1.ReasonSnapshotFailed, err)
	}
	if err != nil {
		return ctrl.Result{}, err
	}
	if !snap.Ready {
		return ctrl.Result{RequeueAfter: snap.RetryAfter}, nil
	}
	snapshotWait := r.o.Clock.Now().Sub(roundStart(&vs.Status, now))

	// A receiver's TLS Secret, or the store's credentials, before the
	// snapshot is opened.
	var tcfg transport.Config
	var store *objstore.Store
	if dest.store == nil {
		if tcfg, err = r.transport(ctx, &vs, dest); err != nil {
			return r.failed(ctx, orig, &vs, v1alpha1.ReasonSecretInvalid, err)
		}
	} else {
		store, err = k8sutil.OpenStore(ctx, r.o.Kube, vs.Namespace, *dest.store,
			k8sutil.StoreOptions{BandwidthLimit: dest.rate, Logger: log})
		switch {
		case errors.Is(err, k8sutil.ErrCredentials):
			return r.failed(ctx, orig, &vs, v1alpha1.ReasonStoreCredentials, err)
		case err != nil:
			return r.failed(ctx, orig, &vs, v1alpha1.ReasonStoreUnavailable, err)
		}
	}
	img, err := r.o.Images.Open(ctx, vol, snap)
	if err != nil {
		reason := v1alpha1.ReasonSyncFailed
		if errors.Is(err, csi.ErrUnsupported) {
			reason = v1alpha1.ReasonInvalidSpec
		}
		return r.failed(ctx, orig, &vs, reason, fmt.Errorf("open snapshot %s: %w", vs.Status.PendingSnapshot, err))
	}
	defer img.Close()

	setCondition(&vs, v1alpha1.ConditionSyncing, metav1.ConditionTrue, v1alpha1.ReasonSending,
		fmt.Sprintf("sending snapshot %s to %s as %q", vs.Status.PendingSnapshot, dest.where(), dest.volume))
	if err := r.patchStatus(ctx, orig, &vs); err != nil {
		return ctrl.Result{}, err
	}
	orig = vs.DeepCopy()

	log.Info("round starts", "snapshot", vs.Status.PendingSnapshot, "destination", dest.where(), "volume", dest.volume, "bytes", img.Size())
	hints := r.hints(ctx, log, &vs, vol, snap, img)
	// Only now, with the base's delta taken and a newer snapshot above the
	// base, may older snapshots go (see pruneSnapshots).
	if err := r.pruneSnapshots(ctx, &vs); err != nil {
		log.Warn("delete older snapshots", "err", err) // retried after the next round
	}
	imageID := imageIdentity(img, snap)
	prog := r.reportProgress(ctx, &vs)
	var res round
	if store == nil {
		res, err = r.send(ctx, &vs, dest, tcfg, img, imageID, hints, prog, log)
	} else {
		res, err = r.push(ctx, store, dest, img, imageID, hints, prog)
	}
	prog.Stop()
	// Progress may be set on the server: make the next patch remove it.
	orig.Status.Progress = &v1alpha1.RoundProgress{}
	vs.Status.Progress = nil
	if err != nil {
		reason := v1alpha1.ReasonSyncFailed
		var re *transport.RemoteError
		switch {
		case errors.Is(err, agent.ErrRootMismatch):
			reason = v1alpha1.ReasonRootMismatch
		case errors.As(err, &re) && re.Code == transport.ErrCodeTargetFull:
			reason = v1alpha1.ReasonTargetFull
		case errors.As(err, &re) && re.Code == transport.ErrCodeTargetState:
			reason = v1alpha1.ReasonTargetState
		case errors.As(err, &re):
			reason = v1alpha1.ReasonReceiverRefused
		case errors.Is(err, objstore.ErrBadCredentials) || errors.Is(err, objstore.ErrNoBucket):
			reason = v1alpha1.ReasonStoreUnavailable
		}
		log.Warn("round failed", "err", err)
		return r.failed(ctx, orig, &vs, reason, err)
	}

	end := r.o.Clock.Now()
	st := &vs.Status
	started := roundStart(st, end)
	endT := metav1.NewMicroTime(end)
	st.LastSyncTime = &endT
	st.LastSyncDuration = &metav1.Duration{Duration: end.Sub(started).Round(time.Millisecond)}
	st.LastSnapshotDuration = &metav1.Duration{Duration: max(snapshotWait, 0).Round(time.Millisecond)}
	st.LastGeneration = int64(res.generation)
	st.LastRootHash = res.root
	st.LastSourceBytes = int64(res.source)
	st.LastBytesSent = int64(res.sent)
	st.LastWireBytes = res.wire
	st.LastReusedBytes = int64(res.reused)
	st.LastManualTrigger = st.PendingManualTrigger
	st.PendingManualTrigger = ""
	st.BaseSnapshot = st.PendingSnapshot
	st.PendingSnapshot = ""
	st.Rounds++
	st.ConsecutiveFailures = 0
	setCondition(&vs, v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonSynced,
		fmt.Sprintf("generation %d committed: %d bytes sent of %d", res.generation, res.sent, res.source))
	setCondition(&vs, v1alpha1.ConditionDegraded, metav1.ConditionFalse, v1alpha1.ReasonNoProblem, "")
	_, wait := r.due(&vs, end)
	r.idle(&vs, end)
	if err := r.patchStatus(ctx, orig, &vs); err != nil {
		return ctrl.Result{}, err
	}
	r.o.Metrics.success(vs.Namespace, vs.Name, started, end, res.generation, res.sent, res.wire)
	r.o.Metrics.scan(vs.Namespace, vs.Name, res.scanMode, res.read, res.hintSource, res.hintCheck)
	if res.hintCheck == "mismatch" {
		r.event(&vs, corev1.EventTypeWarning, v1alpha1.ReasonSynced, "CheckHints",
			"a full scan found a change the %s hints missed: they are not used again for this volume", res.hintSource)
	}
	r.event(&vs, corev1.EventTypeNormal, v1alpha1.ReasonSynced, "Sync", "generation %d committed on %s: %d of %d bytes sent (%d on the wire) in %s",
		res.generation, dest.where(), res.sent, res.source, res.wire, st.LastSyncDuration.Duration)
	log.Info("round committed", "generation", res.generation, "sent", res.sent, "wire", res.wire, "root", res.root,
		"scan", res.scanMode, "read", res.read, "full_scan_reason", res.fullScanReason)
	return ctrl.Result{RequeueAfter: wait}, nil
}

// round is what a committed round reports, from a receiver or a store.
type round struct {
	generation           uint64
	root                 string
	source, sent, reused uint64
	wire                 int64
	manifest             *chunk.Manifest
	scanMode             string
	fullScanReason       string
	hintSource           string
	hintCheck            string
	read                 uint64
}

// send runs the round against a receiver.
func (r *Reconciler) send(ctx context.Context, vs *v1alpha1.VolumeSync, dest destination, tcfg transport.Config, img csi.Image,
	imageID string, hints hint.Source, prog *progressReporter, log *slog.Logger) (round, error) {
	opt := agent.Options{
		Hints:     hints,
		ImageID:   imageID,
		Cache:     r.o.Cache,
		FullScan:  r.o.FullScan,
		Progress:  prog.Set,
		Source:    vs.Namespace + "/" + vs.Status.PendingSnapshot,
		Image:     img,
		Addr:      dest.addr,
		Volume:    dest.volume,
		Params:    r.o.Params,
		Transport: tcfg,
		Logger:    log,
		Name:      "voldelta-agent@" + r.o.NodeName,
		Group:     roundGroup(vs),
	}
	var stats *agent.Stats
	var err error
	if r.pool != nil && opt.Group != nil {
		// A group's rounds to one receiver share a session (pool.go).
		stats, err = r.pool.run(ctx, sessionKey(vs, dest.addr, opt.Group.Name), opt)
	} else {
		stats, err = r.o.Sync(ctx, opt)
	}
	if err != nil {
		return round{}, err
	}
	return round{generation: stats.Generation, root: stats.RootHash, source: stats.SourceBytes, sent: stats.BytesSentRaw,
		reused: stats.ReusedBytes, wire: stats.WireBytes, manifest: stats.Manifest,
		scanMode: stats.ScanMode, fullScanReason: stats.FullScanReason, read: stats.BytesRead,
		hintSource: stats.HintSource, hintCheck: stats.HintCheck}, nil
}

// roundGroup is the group the pending round is sent in: spec.group, but
// only if the round's snapshot was requested for the current
// spec.trigger.manual. A round whose snapshot predates the trigger (a
// pre-copy round under way when an orchestrator set spec.group and bumped
// the trigger in one update, after quiescing) is sent without a group, so
// it can never count as the group's final round; the round for the new
// trigger follows.
func roundGroup(vs *v1alpha1.VolumeSync) *transport.Group {
	g := vs.Spec.Group
	if g == nil || vs.Status.PendingManualTrigger != vs.Spec.Trigger.Manual {
		return nil
	}
	return &transport.Group{Name: g.Name, Members: uint16(min(max(g.Members, 0), transport.MaxGroupMembers+1)), Promote: g.Promote}
}

// push runs the round against a store: the snapshot becomes the store's
// next generation of the volume.
func (r *Reconciler) push(ctx context.Context, store *objstore.Store, dest destination, img csi.Image,
	imageID string, hints hint.Source, prog *progressReporter) (round, error) {
	stats, err := store.Push(ctx, img, img.Size(), objstore.PushOptions{
		Volume: dest.volume,
		Params: r.o.Params,
		Hints:  hints,
		Image:  imageID,
		Progress: func(p objstore.PushProgress) {
			prog.Set(agent.Progress{SourceBytes: p.SourceBytes, ScannedBytes: p.ScannedBytes, ScanDone: p.ScanDone,
				NeedBytes: p.UploadBytes, SentBytes: p.UploadedBytes})
		},
	})
	if err != nil {
		return round{}, fmt.Errorf("push to %s: %w", store, err)
	}
	return round{generation: stats.Generation, root: stats.RootHash, source: stats.SourceBytes, sent: stats.BytesUploadedRaw,
		reused: stats.ReusedBytes, wire: int64(stats.BytesUploaded), manifest: stats.Manifest,
		scanMode: stats.ScanMode, fullScanReason: stats.FullScanReason, read: stats.BytesRead}, nil
}

// imageIdentity names the image a round reads, for HELLO: a Longhorn
// snapshot's identity, else the CSI snapshot's (driver and handle).
func imageIdentity(img csi.Image, snap csi.SnapshotResult) string {
	if id := csi.ImageID(img); id != "" {
		return id
	}
	if snap.Driver != "" && snap.Handle != "" {
		return snapmeta.SnapshotIdentity(snap)
	}
	return ""
}

// hints returns the change hints of this round relative to the base
// snapshot, asked now (before older snapshots are deleted): from the
// Longhorn replica's snapshot chain when the image is a Longhorn
// snapshot, else from the driver's CSI snapshot metadata service if it
// has one; nil if there is no base or no source. The round uses them only
// if the base is what the destination's generation was made from.
func (r *Reconciler) hints(ctx context.Context, log *slog.Logger, vs *v1alpha1.VolumeSync, vol *csi.Volume, snap csi.SnapshotResult, img csi.Image) hint.Source {
	if vs.Status.BaseSnapshot == "" {
		return nil
	}
	base, err := r.snapshotHandle(ctx, vs.Namespace, vs.Status.BaseSnapshot)
	if err != nil {
		log.Info("base snapshot unknown; the round reads the whole snapshot", "base", vs.Status.BaseSnapshot, "err", err)
		return nil
	}
	var src hint.Source
	switch ct, ok := r.o.Images.(csi.ChangeTracker); {
	case ok && csi.ImageID(img) != "":
		src = csi.ChangeHints(ct, vol, base, snap.Handle)
	case r.o.SnapshotMetadata != nil && snap.Driver != "":
		src = r.o.SnapshotMetadata.Source(snapmeta.Request{Driver: snap.Driver, BaseHandle: base, Namespace: vs.Namespace, Target: vs.Status.PendingSnapshot})
	default:
		return nil
	}
	f := hint.Precompute(ctx, src, img.Size())
	if f.Err != nil {
		log.Info("changed extents unknown; the round reads the whole snapshot", "hints", src.Name(), "base", vs.Status.BaseSnapshot, "err", f.Err)
	} else {
		log.Info("changed extents since the base snapshot", "hints", src.Name(), "base", vs.Status.BaseSnapshot, "extents", len(f.Extents), "bytes", hint.Bytes(f.Extents))
	}
	return f
}

// snapshotHandle returns the storage handle of a VolumeSnapshot.
func (r *Reconciler) snapshotHandle(ctx context.Context, ns, name string) (string, error) {
	vs, err := r.o.Snapshots.SnapshotV1().VolumeSnapshots(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	if vs.Status == nil || vs.Status.BoundVolumeSnapshotContentName == nil {
		return "", fmt.Errorf("VolumeSnapshot %s/%s is bound to no content", ns, name)
	}
	c, err := r.o.Snapshots.SnapshotV1().VolumeSnapshotContents().Get(ctx, *vs.Status.BoundVolumeSnapshotContentName, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	if c.Status == nil || c.Status.SnapshotHandle == nil {
		return "", fmt.Errorf("VolumeSnapshotContent %s has no snapshot handle", c.Name)
	}
	return *c.Status.SnapshotHandle, nil
}

// progressReporter patches status.progress of a running round every
// ProgressInterval with the figures agent.Sync last reported.
type progressReporter = k8sutil.Reporter[agent.Progress]

func (r *Reconciler) reportProgress(ctx context.Context, vs *v1alpha1.VolumeSync) *progressReporter {
	base := vs.DeepCopy()
	start := r.o.Clock.Now()
	return k8sutil.StartReporter(ctx, r.o.ProgressInterval, func(ctx context.Context, pr agent.Progress) {
		mod := base.DeepCopy()
		mod.Status.Progress = roundProgress(pr, start, r.o.Clock.Now())
		if err := r.patchStatus(ctx, base, mod); err != nil {
			r.o.Logger.Debug("progress", "err", err)
		}
	})
}

// roundProgress is status.progress for a round's figures at now, of a
// round that began sending at start.
func roundProgress(pr agent.Progress, start, now time.Time) *v1alpha1.RoundProgress {
	rate := k8sutil.Rate(pr.SentBytes, now.Sub(start))
	st := metav1.NewTime(start)
	return &v1alpha1.RoundProgress{SourceBytes: int64(pr.SourceBytes), ScannedBytes: int64(pr.ScannedBytes),
		NeededBytes: int64(pr.NeedBytes), SentBytes: int64(pr.SentBytes), ScanDone: pr.ScanDone, BytesPerSecond: int64(rate),
		ETA: k8sutil.ETA(pr.SentBytes, pr.NeedBytes, rate, pr.ScanDone), StartTime: &st, UpdateTime: metav1.NewTime(now)}
}

// due reports whether a round should start at now and, if not, how long
// until one is due (0: only a spec change will make one due).
func (r *Reconciler) due(vs *v1alpha1.VolumeSync, now time.Time) (bool, time.Duration) {
	st := &vs.Status
	if st.LastSyncTime == nil {
		return true, 0
	}
	if m := vs.Spec.Trigger.Manual; m != "" && m != st.LastManualTrigger {
		return true, 0
	}
	if iv := vs.Spec.Trigger.Interval; iv != nil && iv.Duration > 0 {
		next := st.LastSyncTime.Add(iv.Duration)
		if !now.Before(next) {
			return true, 0
		}
		return false, next.Sub(now)
	}
	return false, 0
}

// idle sets the status of a VolumeSync waiting for its next round.
func (r *Reconciler) idle(vs *v1alpha1.VolumeSync, now time.Time) {
	st := &vs.Status
	st.NextSyncTime = nil
	if iv := vs.Spec.Trigger.Interval; iv != nil && iv.Duration > 0 && st.LastSyncTime != nil {
		t := metav1.NewTime(st.LastSyncTime.Add(iv.Duration))
		st.NextSyncTime = &t
	}
	switch {
	case st.ConsecutiveFailures > 0:
		st.Phase = v1alpha1.PhaseDegraded
	case st.LastSyncTime == nil:
		st.Phase = v1alpha1.PhasePending
	default:
		st.Phase = v1alpha1.PhaseIdle
	}
	setCondition(vs, v1alpha1.ConditionSyncing, metav1.ConditionFalse, v1alpha1.ReasonIdle, "")
	r.ensureReadyCondition(vs)
}

func (r *Reconciler) ensureReadyCondition(vs *v1alpha1.VolumeSync) {
	if meta.FindStatusCondition(vs.Status.Conditions, v1alpha1.ConditionReady) == nil {
		setCondition(vs, v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonNeverSynced, "no round has committed yet")
	}
	if meta.FindStatusCondition(vs.Status.Conditions, v1alpha1.ConditionDegraded) == nil {
		setCondition(vs, v1alpha1.ConditionDegraded, metav1.ConditionFalse, v1alpha1.ReasonNoProblem, "")
	}
}

// degrade records a problem that is not a failed round.
func (r *Reconciler) degrade(vs *v1alpha1.VolumeSync, reason, msg string) {
	vs.Status.Phase = v1alpha1.PhaseDegraded
	vs.Status.ObservedGeneration = vs.Generation
	setCondition(vs, v1alpha1.ConditionDegraded, metav1.ConditionTrue, reason, msg)
	setCondition(vs, v1alpha1.ConditionReady, metav1.ConditionFalse, reason, msg)
	setCondition(vs, v1alpha1.ConditionSyncing, metav1.ConditionFalse, reason, "")
}

// failed records a failed attempt and schedules a retry with backoff.
func (r *Reconciler) failed(ctx context.Context, orig, vs *v1alpha1.VolumeSync, reason string, err error) (ctrl.Result, error) {
	vs.Status.ConsecutiveFailures++
	r.degrade(vs, reason, err.Error())
	r.o.Metrics.failure(vs.Namespace, vs.Name)
	r.event(vs, corev1.EventTypeWarning, reason, "Sync", "attempt %d failed: %v", vs.Status.ConsecutiveFailures, err)
	if perr := r.patchStatus(ctx, orig, vs); perr != nil {
		return ctrl.Result{}, perr
	}
	return ctrl.Result{RequeueAfter: k8sutil.Backoff(vs.Status.ConsecutiveFailures)}, nil
}

func (r *Reconciler) event(vs *v1alpha1.VolumeSync, typ, reason, action, note string, args ...any) {
	if r.o.Recorder != nil {
		r.o.Recorder.Eventf(vs, nil, typ, reason, action, note, args...)
	}
}

func (r *Reconciler) patchStatus(ctx context.Context, orig, vs *v1alpha1.VolumeSync) error {
	if err := r.o.Client.Status().Patch(ctx, vs, client.MergeFrom(orig)); err != nil {
		return fmt.Errorf("update status: %w", err)
	}
	r.o.Metrics.status(vs)
	return nil
}

func setCondition(vs *v1alpha1.VolumeSync, typ string, status metav1.ConditionStatus, reason, msg string) {
	if len(msg) > 1024 {
		msg = msg[:1024]
	}
	meta.SetStatusCondition(&vs.Status.Conditions, metav1.Condition{
		Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: vs.Generation,
	})
}

func isUnresolved(err error) bool {
	return errors.Is(err, csi.ErrNotFound) || errors.Is(err, csi.ErrNotBound) || errors.Is(err, csi.ErrNotCSI) || errors.Is(err, csi.ErrNotAttached)
}

// given says whether the round about to start reads the VolumeSnapshot
// spec.trigger.snapshotName names instead of taking one: it is the round
// of a new spec.trigger.manual.
func given(vs *v1alpha1.VolumeSync) bool {
	t := vs.Spec.Trigger
	return t.SnapshotName != "" && t.Manual != "" && t.Manual != vs.Status.LastManualTrigger
}

// snapshotName names the snapshot of attempt failures of round n, started
// at t: unique per VolumeSync, at most 253 characters (an object name).
func snapshotName(vs string, t time.Time, n int64, failures int32) string {
	suffix := fmt.Sprintf("-%s-%d-%d", t.UTC().Format("20060102-150405"), n, failures)
	if len(vs) > 253-len(suffix) {
		vs = vs[:253-len(suffix)]
	}
	return vs + suffix
}

type destination struct {
	addr, serverName, volume string
	store                    *v1alpha1.Store // instead of addr
	rate                     float64
}

// where names the destination for messages.
func (d destination) where() string {
	if d.store != nil {
		return d.store.URL
	}
	return d.addr
}

func (r *Reconciler) destination(vs *v1alpha1.VolumeSync) (destination, error) {
	d := vs.Spec.Destination
	out := destination{addr: d.Address, serverName: d.ServerName, volume: d.VolumeName, store: d.Store}
	switch {
	case d.Store != nil && d.Address != "":
		return out, errors.New("spec.destination: set either address (a receiver) or store (an object store), not both")
	case d.Store != nil:
		if _, _, err := objstore.ParseStoreURL(d.Store.URL); err != nil {
			return out, fmt.Errorf("spec.destination.store.url: %v", err)
		}
		if d.Store.CredentialsSecretName == "" {
			return out, errors.New("spec.destination.store.credentialsSecretName is empty")
		}
	default:
		host, _, err := net.SplitHostPort(d.Address)
		if err != nil {
			return out, fmt.Errorf("spec.destination.address %q: want host:port", d.Address)
		}
		if out.serverName == "" {
			out.serverName = host
		}
		if d.TLSSecretName == "" {
			return out, errors.New("spec.destination.tlsSecretName is empty")
		}
	}
	if out.volume == "" {
		out.volume = vs.Namespace + "-" + vs.Spec.SourcePVC
	}
	if err := transport.ValidateVolumeName(out.volume); err != nil {
		return out, fmt.Errorf("spec.destination.volumeName: %v", err)
	}
	if bw := strings.TrimSpace(vs.Spec.BandwidthLimit); bw != "" {
		var err error
		if out.rate, err = transport.ParseRate(bw); err != nil {
			return out, fmt.Errorf("spec.bandwidthLimit: %v", err)
		}
	}
	return out, nil
}

// transport builds the round's transport configuration from the TLS Secret.
func (r *Reconciler) transport(ctx context.Context, vs *v1alpha1.VolumeSync, d destination) (transport.Config, error) {
	cfg := transport.DefaultConfig()
	if r.o.Streams > 0 {
		cfg.Streams = r.o.Streams
	}
	cfg.BandwidthLimit = d.rate
	name := vs.Spec.Destination.TLSSecretName
	sec, err := r.o.Kube.CoreV1().Secrets(vs.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return cfg, fmt.Errorf("TLS Secret %s/%s: %w", vs.Namespace, name, err)
	}
	t, err := TLSFromSecret(sec, false)
	if err != nil {
		return cfg, err
	}
	t.ServerName = d.serverName
	cfg.TLS = t
	r.o.Metrics.certificate(vs.Namespace, vs.Name, t)
	return cfg, cfg.Validate()
}

// TLSFromSecret builds the mutual-TLS configuration of one end from a
// Secret with ca.crt, tls.crt and tls.key (the layout of cert-manager's and
// kubernetes.io/tls Secrets).
func TLSFromSecret(sec *corev1.Secret, server bool) (*tls.Config, error) {
	var missing []string
	for _, k := range []string{"ca.crt", corev1.TLSCertKey, corev1.TLSPrivateKeyKey} {
		if len(sec.Data[k]) == 0 {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return nil, fmt.Errorf("TLS Secret %s/%s lacks %s", sec.Namespace, sec.Name, strings.Join(missing, ", "))
	}
	cert, err := tls.X509KeyPair(sec.Data[corev1.TLSCertKey], sec.Data[corev1.TLSPrivateKeyKey])
	if err != nil {
		return nil, fmt.Errorf("TLS Secret %s/%s: %w", sec.Namespace, sec.Name, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(sec.Data["ca.crt"]) {
		return nil, fmt.Errorf("TLS Secret %s/%s: ca.crt holds no PEM certificate", sec.Namespace, sec.Name)
	}
	return transport.NewTLS(cert, pool, server), nil
}

// pruneSnapshots deletes the oldest of this VolumeSync's snapshots other
// than the base and the pending one: at most one per round, and none while
// an earlier deletion is still under way. It runs after the pending
// snapshot was taken and the base's delta read: a Longhorn engine (v1.9)
// that gets a trim while Removed snapshots lie under the base punches as
// many snapshot files under the volume head as there are Removed ones, so
// one Removed snapshot at a time, with the pending snapshot above the base,
// keeps the base's bytes as they were synced.
func (r *Reconciler) pruneSnapshots(ctx context.Context, vs *v1alpha1.VolumeSync) error {
	list, err := r.o.Snapshots.SnapshotV1().VolumeSnapshots(vs.Namespace).List(ctx, metav1.ListOptions{
		LabelSelector: LabelVolumeSync + "=" + vs.Name,
	})
	if err != nil {
		return err
	}
	var oldest *snapv1.VolumeSnapshot
	for i := range list.Items {
		s := &list.Items[i]
		if s.Name == vs.Status.BaseSnapshot || s.Name == vs.Status.PendingSnapshot || !metav1.IsControlledBy(s, vs) {
			continue
		}
		if s.DeletionTimestamp != nil {
			return nil // one at a time
		}
		if oldest == nil || s.CreationTimestamp.Before(&oldest.CreationTimestamp) {
			oldest = s
		}
	}
	if oldest == nil {
		return nil
	}
	_, err = r.o.Snapshotter.EnsureDeleted(ctx, oldest.Namespace, oldest.Name)
	return err
}
