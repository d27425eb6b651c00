package migration

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
)

// LabelMigration labels the VolumeSyncs of a Migration with its name.
const LabelMigration = "voldelta.io/migration"

// FinalizerRestore keeps a Migration whose workloads were scaled down (or
// whose volumes were frozen) from going before they are scaled back (and
// thawed): it is set before the replica counts are recorded and removed
// when the migration ends. Deleting a Migration in the middle of its
// cutover restores the workloads and thaws, as an abort does.
const FinalizerRestore = "voldelta.io/restore-workloads"

// Defaults of a Migration's spec.
const (
	DefaultConvergedBelowBytes = 256 << 20
	DefaultMaxRounds           = 20
	DefaultQuiesceTimeout      = 5 * time.Minute
	// HistoryLimit bounds status.history.
	HistoryLimit = 10
	// maxVolumes bounds the volumes of a Migration: the members of one
	// group (v1alpha1.SyncGroup).
	maxVolumes = 64
)

// Condition reasons of a Migration. Those of a failure are also the
// DestinationReady reason of a Failed migration.
const (
	ReasonConverged      = "Converged"      // ReadyForCutover: the last round was under a threshold
	ReasonMaxRounds      = "MaxRounds"      // ReadyForCutover: spec.precopy.maxRounds rounds ran without converging
	ReasonNotConverged   = "NotConverged"   // ReadyForCutover false: rounds go on
	ReasonScaledDown     = "ScaledDown"     // Quiesced: the workloads are at 0 and their pods gone
	ReasonWaitingPods    = "WaitingForPods" // Quiesced false: pods remain
	ReasonRestored       = "Restored"       // Quiesced false: replica counts restored
	ReasonCommitted      = "Committed"      // DestinationReady: every final round committed
	ReasonFinalSync      = "FinalSyncing"   // DestinationReady false: final rounds run
	ReasonMemberDegraded = "MemberDegraded" // DestinationReady false: a final round failed and is being retried
	ReasonAborted        = "Aborted"        // DestinationReady false: spec.abort

	ReasonInvalidSpec     = "InvalidSpec"        // failure: the spec cannot be acted on
	ReasonWorkloadMissing = "WorkloadMissing"    // failure: a workload to quiesce does not exist
	ReasonQuiesceTimeout  = "QuiesceTimeout"     // failure: pods remained after spec.quiesce.timeout
	ReasonWorkloadBack    = "WorkloadCameBack"   // failure: a quiesced workload had pods again during the final rounds
	ReasonVolumeSyncTaken = "VolumeSyncConflict" // failure: a VolumeSync of the name exists and is not the Migration's
)

// Options configure a Reconciler.
type Options struct {
	// Client reads and writes VolumeSyncs, Deployments and StatefulSets
	// and writes Migrations' status (the manager's client). Required.
	Client client.Client
	// Reader, if set, reads Migrations and lists Pods and PVCs instead of
	// Client: the manager's API reader, so that a reconcile never acts on
	// a status older than its own last write and Pods are not cached.
	Reader client.Reader
	// Kube is not used yet (everything goes through Client); accepted so
	// that callers may pass it.
	Kube kubernetes.Interface
	// Clock; default the real clock.
	Clock clock.PassiveClock
	// Recorder, if set, records an Event on the Migration for every phase
	// change.
	Recorder events.EventRecorder
	// Logger; nil logs nothing.
	Logger *slog.Logger
	// RequeueInterval is how often a wait that no watch covers is looked
	// at again (a PVC to appear, pods to go); default 5s.
	RequeueInterval time.Duration
}

// Reconciler drives Migrations.
type Reconciler struct {
	o Options
}

// New checks o and returns a Reconciler.
func New(o Options) (*Reconciler, error) {
	if o.Client == nil {
		return nil, errors.New("migration: Options.Client is required")
	}
	if o.Reader == nil {
		o.Reader = o.Client
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.RequeueInterval <= 0 {
		o.RequeueInterval = 5 * time.Second
	}
	return &Reconciler{o: o}, nil
}

// step is what a phase function decides: the next phase (the same one to
// stay), and when to look again if it stays (0: only when a watched
// object changes).
type step struct {
	next  v1alpha1.MigrationPhase
	after time.Duration
}

func stay(p v1alpha1.MigrationPhase, after time.Duration) step { return step{next: p, after: after} }
func goTo(p v1alpha1.MigrationPhase) step                      { return step{next: p} }

// phaseFunc is one phase's function: it may change m's status (persisted
// by the caller) and returns the next phase.
type phaseFunc func(ctx context.Context, m *v1alpha1.Migration, now time.Time) (step, error)

func (r *Reconciler) phases() map[v1alpha1.MigrationPhase]phaseFunc {
	return map[v1alpha1.MigrationPhase]phaseFunc{
		v1alpha1.MigrationPending:         r.pending,
		v1alpha1.MigrationPrecopying:      r.precopying,
		v1alpha1.MigrationReadyForCutover: r.readyForCutover,
		v1alpha1.MigrationQuiescing:       r.quiescing,
		v1alpha1.MigrationFinalSync:       r.finalSync,
		v1alpha1.MigrationCommitting:      r.committing,
	}
}

// maxTransitions bounds the phase changes of one Reconcile (the longest
// chain, Pending to Completed, has 6).
const maxTransitions = 8

// Reconcile implements reconcile.Reconciler.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	log := r.o.Logger.With("migration", req.String())
	var m v1alpha1.Migration
	if err := r.o.Reader.Get(ctx, req.NamespacedName, &m); err != nil {
		if apierrors.IsNotFound(err) {
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, fmt.Errorf("get migration %s: %w", req, err)
	}
	if m.DeletionTimestamp != nil {
		return ctrl.Result{}, r.deleted(ctx, &m) // its VolumeSyncs go with it (owner references)
	}
	if m.Status.Phase == "" {
		m.Status.Phase = v1alpha1.MigrationPending
	}
	phases := r.phases()
	for range maxTransitions {
		orig := m.DeepCopy()
		m.Status.ObservedGeneration = m.Generation
		now := r.o.Clock.Now()
		cur := m.Status.Phase
		var s step
		var err error
		switch {
		case cur.Terminal():
			if err := r.writeStatus(ctx, orig, &m); err != nil {
				return ctrl.Result{}, err
			}
			return ctrl.Result{}, r.setFinalizer(ctx, &m, false)
		case m.Spec.Abort:
			s, err = r.abort(ctx, &m, now)
		default:
			fn, ok := phases[cur]
			if !ok {
				return ctrl.Result{}, fmt.Errorf("migration %s: unknown phase %q", req, cur)
			}
			s, err = fn(ctx, &m, now)
		}
		var fe *failure
		if errors.As(err, &fe) {
			s, err = r.fail(ctx, &m, fe)
		}
		if err != nil {
			// Keep what the phase recorded before it failed (a message, the
			// workloads' counts): a conflict means someone else wrote first.
			if perr := r.writeStatus(ctx, orig, &m); perr != nil {
				log.Debug("status after error", "err", perr)
			}
			return ctrl.Result{}, fmt.Errorf("migration %s, phase %s: %w", req, cur, err)
		}
		if s.next != cur {
			r.transition(&m, s.next)
			log.Info("phase", "from", cur, "to", s.next, "message", m.Status.Message)
		}
		if err := r.writeStatus(ctx, orig, &m); err != nil {
			return ctrl.Result{}, err
		}
		if s.next != cur {
			r.event(&m, cur, s.next)
			continue
		}
		return ctrl.Result{RequeueAfter: s.after}, nil
	}
	return ctrl.Result{RequeueAfter: time.Millisecond}, nil
}

// deleted scales back the workloads of a Migration deleted during its
// cutover, then lets it go.
func (r *Reconciler) deleted(ctx context.Context, m *v1alpha1.Migration) error {
	if !controllerutil.ContainsFinalizer(m, FinalizerRestore) {
		return nil
	}
	if !m.Status.Phase.Terminal() {
		if err := r.releaseFreeze(ctx, m, r.o.Clock.Now()); err != nil {
			return fmt.Errorf("migration %s/%s deleted: thaw the frozen volumes: %w", m.Namespace, m.Name, err)
		}
		restored, err := r.restoreWorkloads(ctx, m)
		if err != nil {
			return fmt.Errorf("migration %s/%s deleted: scale the workloads back: %w", m.Namespace, m.Name, err)
		}
		r.o.Logger.Info("migration deleted during its cutover: workloads scaled back", "migration", m.Namespace+"/"+m.Name, "restored", restored)
	}
	return r.setFinalizer(ctx, m, false)
}

// setFinalizer adds or removes FinalizerRestore. Only m's finalizers and
// resourceVersion change: its status in memory is kept as it is.
func (r *Reconciler) setFinalizer(ctx context.Context, m *v1alpha1.Migration, on bool) error {
	if controllerutil.ContainsFinalizer(m, FinalizerRestore) == on {
		return nil
	}
	orig, mod := m.DeepCopy(), m.DeepCopy()
	if on {
		controllerutil.AddFinalizer(mod, FinalizerRestore)
	} else {
		controllerutil.RemoveFinalizer(mod, FinalizerRestore)
	}
	if err := r.o.Client.Patch(ctx, mod, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
		if !on && apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("finalizer of migration %s/%s: %w", m.Namespace, m.Name, err)
	}
	m.Finalizers, m.ResourceVersion = mod.Finalizers, mod.ResourceVersion
	return nil
}

// failure ends the migration: a phase returns it (wrapped or not) and the
// loop moves to Failed after scaling the workloads back.
type failure struct {
	reason, msg string
}

func (f *failure) Error() string { return f.msg }

func failf(reason, format string, a ...any) error {
	return &failure{reason: reason, msg: fmt.Sprintf(format, a...)}
}

// transition records a phase change in m's status: the phase and the
// conditions that follow from it.
func (r *Reconciler) transition(m *v1alpha1.Migration, to v1alpha1.MigrationPhase) {
	m.Status.Phase = to
	switch to {
	case v1alpha1.MigrationPrecopying:
		setCondition(m, v1alpha1.ConditionReadyForCutover, metav1.ConditionFalse, ReasonNotConverged, "pre-copy rounds run")
	case v1alpha1.MigrationFinalSync:
		setCondition(m, v1alpha1.ConditionDestinationReady, metav1.ConditionFalse, ReasonFinalSync, "final rounds run")
	}
}

func (r *Reconciler) event(m *v1alpha1.Migration, from, to v1alpha1.MigrationPhase) {
	if r.o.Recorder == nil {
		return
	}
	typ := corev1.EventTypeNormal
	if to == v1alpha1.MigrationFailed {
		typ = corev1.EventTypeWarning
	}
	note := fmt.Sprintf("%s → %s", from, to)
	if m.Status.Message != "" {
		note += ": " + m.Status.Message
	}
	if len(note) > 1024 {
		note = note[:1024]
	}
	r.o.Recorder.Eventf(m, nil, typ, string(to), "Phase", "%s", note)
}

// writeStatus writes m's status if it differs from orig's. The write
// carries m's resourceVersion: if m was read before another write (a stale
// cache, a second controller), it fails with a conflict and the next
// reconcile starts from the newer status, so nothing recorded is lost.
func (r *Reconciler) writeStatus(ctx context.Context, orig, m *v1alpha1.Migration) error {
	if orig != nil && equality.Semantic.DeepEqual(orig.Status, m.Status) {
		return nil
	}
	if err := r.o.Client.Status().Update(ctx, m); err != nil {
		return fmt.Errorf("update status of migration %s/%s: %w", m.Namespace, m.Name, err)
	}
	return nil
}

// persist writes m's status now, in the middle of a phase, before an
// action that must not happen unless the status is recorded.
func (r *Reconciler) persist(ctx context.Context, m *v1alpha1.Migration) error {
	return r.writeStatus(ctx, nil, m)
}

func setCondition(m *v1alpha1.Migration, typ string, status metav1.ConditionStatus, reason, msg string) {
	if len(msg) > 1024 {
		msg = msg[:1024]
	}
	meta.SetStatusCondition(&m.Status.Conditions, metav1.Condition{
		Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: m.Generation,
	})
}

func conditionReason(m *v1alpha1.Migration, typ string) string {
	if c := meta.FindStatusCondition(m.Status.Conditions, typ); c != nil && c.Status == metav1.ConditionTrue {
		return c.Reason
	}
	return ""
}

// mtime is t to the microsecond: the Migration's own timestamps, from
// which the downtime is measured.
func mtime(t time.Time) *metav1.MicroTime {
	mt := metav1.NewMicroTime(t)
	return &mt
}

func since(from *metav1.MicroTime, to time.Time) time.Duration {
	if from == nil {
		return 0
	}
	return max(to.Sub(from.Time), 0)
}
