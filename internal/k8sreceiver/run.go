package k8sreceiver

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/source"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/csi"
	"github.com/voldelta/voldelta/internal/k8sutil"
	"github.com/voldelta/voldelta/internal/velero"
	"github.com/voldelta/voldelta/receiver"
)

// RunOptions configure the receiver in Kubernetes mode.
type RunOptions struct {
	// Server configures the receiver; Targets must be empty: Resolve,
	// Authorize, OnCommit and OnApply are set here.
	Server receiver.Config
	// Listener accepts agents' connections; nil runs no server: the
	// receiver then only pulls store targets (VolumeTargets with
	// spec.store).
	Listener net.Listener
	// NodeName is the receiver's node. Required.
	NodeName string
	// Namespace restricts the VolumeTargets served; "" serves all.
	Namespace string
	// HostRoot, LonghornNamespace: as in csi.ResolverOptions.
	HostRoot, LonghornNamespace string
	// Attach: see Options.Attach.
	Attach bool
	// PullParallel and Concurrency: see Options.
	PullParallel, Concurrency int
	// MetricsAddr serves /metrics ("0" disables); HealthAddr serves
	// /healthz and /readyz ("0" disables).
	MetricsAddr, HealthAddr string
	// Populate runs the volume populator: PVCs whose dataSourceRef names
	// a VolumeTarget get a volume holding its last committed generation.
	Populate bool
	// VeleroNamespace, if set, restores the DataDownloads of the voldelta
	// mover for the Velero of that namespace (Velero's CRDs must be
	// installed).
	VeleroNamespace string
	// ProgressInterval is how often a running apply's status.progress is
	// written; default DefaultProgressInterval.
	ProgressInterval time.Duration
	// Registry receives the metrics; default controller-runtime's registry.
	Registry prometheus.Registerer
	// Logger; nil logs nothing.
	Logger *slog.Logger
}

// NewManager builds a controller manager that reconciles VolumeTargets
// (pulling store targets) and runs the receiver server on o.Listener, if
// set, while it runs.
func NewManager(cfg *rest.Config, o RunOptions) (ctrl.Manager, error) {
	if len(o.Server.Targets) > 0 {
		return nil, errors.New("k8sreceiver: static targets and VolumeTargets exclude each other")
	}
	if o.Registry == nil {
		o.Registry = crmetrics.Registry
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{v1alpha1.AddToScheme, storagev1.AddToScheme, corev1.AddToScheme} {
		if err := add(scheme); err != nil {
			return nil, err
		}
	}
	if o.VeleroNamespace != "" {
		if err := velero.AddToScheme(scheme); err != nil {
			return nil, err
		}
	}
	copts := cache.Options{DefaultTransform: cache.TransformStripManagedFields()}
	if o.Namespace != "" {
		copts.DefaultNamespaces = map[string]cache.Config{o.Namespace: {}}
	}
	mgr, err := k8sutil.NewManager(cfg, k8sutil.ManagerOptions{Scheme: scheme, Cache: copts,
		MetricsAddr: o.MetricsAddr, HealthAddr: o.HealthAddr, Logger: o.Logger})
	if err != nil {
		return nil, err
	}
	kube, dyn, err := k8sutil.NewClients(cfg)
	if err != nil {
		return nil, err
	}
	res, err := csi.NewResolver(csi.ResolverOptions{Kube: kube, Dynamic: dyn, HostRoot: o.HostRoot, LonghornNamespace: o.LonghornNamespace})
	if err != nil {
		return nil, err
	}
	m, err := NewMetrics(o.Registry)
	if err != nil {
		return nil, err
	}
	m.certificate(o.Server.Transport.TLS)
	t, err := New(Options{Client: mgr.GetClient(), Kube: kube, Resolver: res, NodeName: o.NodeName,
		StateDir: o.Server.StateDir, Attach: o.Attach, Metrics: m, Recorder: mgr.GetEventRecorder("voldelta-receiver"), Logger: o.Logger,
		Apply:        receiver.Options{Verify: o.Server.Verify, ApplyBuffer: o.Server.ApplyBuffer, Workers: o.Server.Workers, Logger: o.Logger},
		PullParallel: o.PullParallel, Concurrency: o.Concurrency, ProgressInterval: o.ProgressInterval})
	if err != nil {
		return nil, err
	}
	if err := t.SetupWithManager(mgr); err != nil {
		return nil, err
	}
	if o.Populate {
		p, err := NewPopulator(PopulatorOptions{Client: mgr.GetClient(), Kube: kube, Resolver: res, NodeName: o.NodeName,
			StateDir: o.Server.StateDir, Workers: o.Server.Workers, Recorder: mgr.GetEventRecorder("voldelta-populator"), Logger: o.Logger})
		if err != nil {
			return nil, err
		}
		if err := p.SetupWithManager(mgr); err != nil {
			return nil, err
		}
	}
	if o.VeleroNamespace != "" {
		r, err := NewRestores(RestoreOptions{Client: mgr.GetClient(), Kube: kube, Resolver: res, NodeName: o.NodeName, StateDir: o.Server.StateDir,
			Namespace: o.VeleroNamespace, Targets: t, Parallel: o.PullParallel, Apply: receiver.Options{Verify: o.Server.Verify, ApplyBuffer: o.Server.ApplyBuffer, Workers: o.Server.Workers, Logger: o.Logger},
			Recorder: mgr.GetEventRecorder("voldelta-velero"), Logger: o.Logger})
		if err != nil {
			return nil, err
		}
		if err := r.SetupWithManager(mgr); err != nil {
			return nil, err
		}
	}
	if o.Listener == nil {
		return mgr, nil
	}
	scfg := o.Server
	scfg.Resolve, scfg.Authorize, scfg.OnCommit, scfg.OnApply = t.Resolve, t.Authorize, t.OnCommit, t.OnApply
	scfg.Groups = true // Reconcile promotes groups; Resolve refuses promoted targets
	if scfg.Logger == nil {
		scfg.Logger = o.Logger
	}
	srv, err := receiver.New(scfg)
	if err != nil {
		return nil, err
	}
	// Serve once the cache is synced (Resolve reads it), until the manager stops.
	err = mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		if !mgr.GetCache().WaitForCacheSync(ctx) {
			return ctx.Err()
		}
		return srv.Serve(ctx, o.Listener)
	}))
	if err != nil {
		return nil, err
	}
	return mgr, nil
}

// SetupWithManager registers the VolumeTarget reconciler and the index
// Resolve and Authorize look targets up by.
func (t *Targets) SetupWithManager(mgr ctrl.Manager) error {
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &v1alpha1.VolumeTarget{}, indexRemoteVolume,
		func(o client.Object) []string { return []string{o.(*v1alpha1.VolumeTarget).Spec.RemoteVolume} }); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("volumetarget").
		For(&v1alpha1.VolumeTarget{}).
		WithOptions(controller.Options{MaxConcurrentReconciles: t.o.Concurrency}).
		WatchesRawSource(source.Channel(t.events, &handler.EnqueueRequestForObject{})).
		Complete(t)
}
