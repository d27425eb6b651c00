package migration

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"time"

	groupsnapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumegroupsnapshot/v1"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/internal/k8sutil"
	"github.com/voldelta/voldelta/internal/velero"
)

// Scheme adds every type the controller reads to s: Migrations and
// VolumeSyncs, Deployments, StatefulSets, Pods, PVCs and PVs,
// VolumeGroupSnapshots, their classes and VolumeSnapshots.
func Scheme(s *runtime.Scheme) error {
	for _, add := range []func(*runtime.Scheme) error{v1alpha1.AddToScheme, appsv1.AddToScheme, corev1.AddToScheme, groupsnapv1.AddToScheme, snapv1.AddToScheme} {
		if err := add(s); err != nil {
			return err
		}
	}
	return nil
}

// SetupWithManager registers the reconciler: Migrations (spec changes),
// the VolumeSyncs they own (their status reports the rounds), and the
// Deployments and StatefulSets of migrations that are quiescing (their
// status reports the replicas going). Pods are not watched (that would
// cache every pod of the cluster): a quiescing migration lists them every
// RequeueInterval.
//
// The VolumeGroupSnapshots it owns are watched only if their API is
// served when the controller starts (a watch of a missing kind would fail
// the manager); a migration waiting for one looks again every
// RequeueInterval anyway.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	b := ctrl.NewControllerManagedBy(mgr).
		Named("migration").
		// Status writes are the reconciler's own: only spec changes wake it.
		For(&v1alpha1.Migration{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Owns(&v1alpha1.VolumeSync{}).
		Watches(&appsv1.Deployment{}, handler.EnqueueRequestsFromMapFunc(r.mapWorkload(v1alpha1.KindDeployment))).
		Watches(&appsv1.StatefulSet{}, handler.EnqueueRequestsFromMapFunc(r.mapWorkload(v1alpha1.KindStatefulSet)))
	served, err := groupSnapshotServed(mgr.GetRESTMapper())
	if err != nil {
		return err
	}
	if served {
		b = b.Owns(&groupsnapv1.VolumeGroupSnapshot{})
	}
	return b.Complete(r)
}

// mapWorkload maps a Deployment or StatefulSet to the migrations of its
// namespace that quiesce it and are not over.
func (r *Reconciler) mapWorkload(kind v1alpha1.WorkloadKind) handler.MapFunc {
	return func(ctx context.Context, o client.Object) []reconcile.Request {
		var list v1alpha1.MigrationList
		if err := r.o.Client.List(ctx, &list, client.InNamespace(o.GetNamespace())); err != nil {
			r.o.Logger.Debug("list migrations", "namespace", o.GetNamespace(), "err", err)
			return nil
		}
		var out []reconcile.Request
		for _, m := range list.Items {
			if m.Status.Phase.Terminal() || !slices.ContainsFunc(m.Spec.Quiesce.Workloads, func(w v1alpha1.WorkloadRef) bool {
				return w.Kind == kind && w.Name == o.GetName()
			}) {
				continue
			}
			out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&m)})
		}
		return out
	}
}

// RunOptions configure the controller process (`voldelta controller`).
type RunOptions struct {
	// MetricsAddr serves /metrics ("0" disables); HealthAddr serves
	// /healthz and /readyz ("0" or "" disables).
	MetricsAddr, HealthAddr string
	// LeaderElection makes only one of several replicas act, through a
	// Lease named LeaderElectionID in LeaderElectionNamespace (default:
	// the pod's namespace, when running in a cluster).
	LeaderElection          bool
	LeaderElectionID        string
	LeaderElectionNamespace string
	// RequeueInterval: see Options.RequeueInterval.
	RequeueInterval time.Duration
	// VeleroNamespace, if set, also runs voldelta's Velero data mover
	// (internal/velero) for the DataUploads of the Velero installed in
	// that namespace; Velero's CRDs must be installed.
	VeleroNamespace string
	// Logger; nil logs nothing.
	Logger *slog.Logger
}

// NewManager builds the controller's manager: the Migration reconciler
// with its clients, metrics, health probes and, if asked, leader election.
// Start it with mgr.Start(ctx).
func NewManager(cfg *rest.Config, o RunOptions) (ctrl.Manager, error) {
	if cfg == nil {
		return nil, errors.New("migration: no REST config")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.LeaderElectionID == "" {
		o.LeaderElectionID = "voldelta-migration-controller"
	}
	scheme := runtime.NewScheme()
	if err := Scheme(scheme); err != nil {
		return nil, err
	}
	if o.VeleroNamespace != "" {
		if err := velero.AddToScheme(scheme); err != nil {
			return nil, err
		}
	}
	mgr, err := k8sutil.NewManager(cfg, k8sutil.ManagerOptions{
		Scheme:                  scheme,
		Cache:                   cache.Options{DefaultTransform: cache.TransformStripManagedFields()},
		MetricsAddr:             o.MetricsAddr,
		HealthAddr:              o.HealthAddr,
		Logger:                  o.Logger,
		LeaderElection:          o.LeaderElection,
		LeaderElectionID:        o.LeaderElectionID,
		LeaderElectionNamespace: o.LeaderElectionNamespace,
	})
	if err != nil {
		return nil, err
	}
	r, err := New(Options{Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Recorder: mgr.GetEventRecorder("voldelta-controller"),
		Logger: o.Logger, RequeueInterval: o.RequeueInterval})
	if err != nil {
		return nil, err
	}
	if err := r.SetupWithManager(mgr); err != nil {
		return nil, err
	}
	if o.VeleroNamespace != "" {
		kube, _, err := k8sutil.NewClients(cfg)
		if err != nil {
			return nil, err
		}
		u, err := velero.NewUploads(velero.UploadOptions{Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Kube: kube, Namespace: o.VeleroNamespace,
			Recorder: mgr.GetEventRecorder("voldelta-velero"), Logger: o.Logger})
		if err != nil {
			return nil, err
		}
		if err := u.SetupWithManager(mgr); err != nil {
			return nil, err
		}
		d, err := velero.NewDeletions(velero.DeletionOptions{Client: mgr.GetClient(), Kube: kube, Namespace: o.VeleroNamespace,
			Recorder: mgr.GetEventRecorder("voldelta-velero"), Logger: o.Logger})
		if err != nil {
			return nil, err
		}
		if err := d.SetupWithManager(mgr); err != nil {
			return nil, err
		}
	}
	return mgr, nil
}
