package k8sutil

import (
	"fmt"
	"log/slog"
	"net/http"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
)

// ManagerOptions configure NewManager.
type ManagerOptions struct {
	Scheme      *runtime.Scheme
	Cache       cache.Options
	MetricsAddr string // "0" disables the metrics endpoint
	HealthAddr  string // "" or "0" disables /healthz and /readyz
	Logger      *slog.Logger
	// LeaderElection makes the manager run its controllers only while it
	// holds the Lease LeaderElectionID in LeaderElectionNamespace (default:
	// the in-cluster namespace).
	LeaderElection          bool
	LeaderElectionID        string
	LeaderElectionNamespace string
}

// NewManager returns a controller manager with Prometheus metrics and
// health probes. Controller name validation is off: several managers may
// share a process (tests, commands run in-process).
func NewManager(cfg *rest.Config, o ManagerOptions) (manager.Manager, error) {
	skip := true
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                  o.Scheme,
		Cache:                   o.Cache,
		Metrics:                 metricsserver.Options{BindAddress: o.MetricsAddr},
		HealthProbeBindAddress:  o.HealthAddr,
		LeaderElection:          o.LeaderElection,
		LeaderElectionID:        o.LeaderElectionID,
		LeaderElectionNamespace: o.LeaderElectionNamespace,
		Logger:                  logr.FromSlogHandler(o.Logger.Handler()),
		Controller:              config.Controller{SkipNameValidation: &skip},
	})
	if err != nil {
		return nil, fmt.Errorf("controller manager: %w", err)
	}
	if o.HealthAddr != "0" && o.HealthAddr != "" {
		ok := func(*http.Request) error { return nil }
		if err := mgr.AddHealthzCheck("ping", ok); err != nil {
			return nil, err
		}
		if err := mgr.AddReadyzCheck("ping", ok); err != nil {
			return nil, err
		}
	}
	return mgr, nil
}

// NewClients returns the typed and the dynamic client for cfg.
func NewClients(cfg *rest.Config) (kubernetes.Interface, dynamic.Interface, error) {
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	return kube, dyn, nil
}
