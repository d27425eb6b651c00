package k8sagent

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"

	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	"github.com/prometheus/client_golang/prometheus"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/voldelta/voldelta/agent"
	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/csi"
	"github.com/voldelta/voldelta/csi/snapmeta"
	"github.com/voldelta/voldelta/internal/k8sutil"
)

// RunOptions configure the agent process (`voldelta agent`).
type RunOptions struct {
	// NodeName is this node. Required.
	NodeName string
	// HostRoot is where the host's / is mounted; default "/".
	HostRoot string
	// KubeletDir is the kubelet's directory on the host; default
	// /var/lib/kubelet.
	KubeletDir string
	// LonghornDataPaths are the paths of Longhorn's disks on the host (read
	// under HostRoot); default /var/lib/longhorn. ["-"] disables the
	// Longhorn reader.
	LonghornDataPaths []string
	// LonghornNamespace holds Longhorn's custom resources; default
	// longhorn-system.
	LonghornNamespace string
	// LiveDevice enables reading live devices of drivers without a
	// snapshot reader (csi.Images.LiveDevice).
	LiveDevice bool
	// MetricsAddr serves /metrics ("0" disables); HealthAddr serves
	// /healthz and /readyz ("0" disables).
	MetricsAddr, HealthAddr string
	// Workers is the number of rounds run at once; default 2.
	Workers int
	// Params are the chunking parameters; zero: the defaults.
	Params chunk.Params
	// Streams is the number of data streams per round; 0: default.
	Streams int
	// CacheDir keeps the manifests of committed rounds and the volumes'
	// hint policy, on a host path so that they survive restarts; "" keeps
	// none (hinted rounds fetch their base from the receiver).
	CacheDir string
	// FullScan is the periodic full-scan policy of hinted rounds.
	FullScan agent.FullScanPolicy
	// NoSnapshotMetadata disables CSI snapshot metadata (KEP-3314) hints.
	NoSnapshotMetadata bool
	// Registry receives the metrics; default controller-runtime's registry
	// (served on MetricsAddr).
	Registry prometheus.Registerer
	// Sync replaces agent.Sync (tests).
	Sync SyncFunc
	// Logger; nil logs nothing.
	Logger *slog.Logger
}

// NewManager builds the agent's controller manager: the VolumeSync
// reconciler with its clients, metrics and health probes. Start it with
// mgr.Start(ctx).
func NewManager(cfg *rest.Config, o RunOptions) (ctrl.Manager, error) {
	if o.NodeName == "" {
		return nil, errors.New("no node name: set NODE_NAME or --node")
	}
	if o.HostRoot == "" {
		o.HostRoot = "/"
	}
	if len(o.LonghornDataPaths) == 0 {
		o.LonghornDataPaths = []string{"/var/lib/longhorn"}
	}
	if o.Workers <= 0 {
		o.Workers = 2
	}
	if o.Registry == nil {
		o.Registry = crmetrics.Registry
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	scheme := runtime.NewScheme()
	if err := Scheme(scheme); err != nil {
		return nil, err
	}
	mgr, err := k8sutil.NewManager(cfg, k8sutil.ManagerOptions{Scheme: scheme, Cache: CacheOptions(o.NodeName),
		MetricsAddr: o.MetricsAddr, HealthAddr: o.HealthAddr, Logger: o.Logger})
	if err != nil {
		return nil, err
	}
	kube, dyn, err := k8sutil.NewClients(cfg)
	if err != nil {
		return nil, err
	}
	snaps, err := snapclient.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	cached := mgr.GetClient() // VolumeAttachments are watched: list them from the cache
	res, err := csi.NewResolver(csi.ResolverOptions{Kube: kube, Dynamic: dyn, HostRoot: o.HostRoot,
		Attachments: func(ctx context.Context) ([]storagev1.VolumeAttachment, error) {
			var l storagev1.VolumeAttachmentList
			if err := cached.List(ctx, &l); err != nil {
				return nil, err
			}
			return l.Items, nil
		},
		KubeletDir: o.KubeletDir, LonghornNamespace: o.LonghornNamespace})
	if err != nil {
		return nil, err
	}
	sn, err := csi.NewSnapshotter(snaps, 0)
	if err != nil {
		return nil, err
	}
	imgs := &csi.Images{LiveDevice: o.LiveDevice}
	if !(len(o.LonghornDataPaths) == 1 && o.LonghornDataPaths[0] == "-") {
		for _, p := range o.LonghornDataPaths {
			imgs.LonghornDataPaths = append(imgs.LonghornDataPaths, filepath.Join(o.HostRoot, p))
		}
	}
	m, err := NewMetrics(o.Registry)
	if err != nil {
		return nil, err
	}
	var cache *agent.Cache
	if o.CacheDir != "" {
		if cache, err = agent.OpenCache(o.CacheDir); err != nil {
			return nil, err
		}
	}
	var meta *snapmeta.Client
	if !o.NoSnapshotMetadata {
		if meta, err = snapmeta.NewClient(snapmeta.Options{Kube: kube, Dynamic: dyn}); err != nil {
			return nil, err
		}
	}
	r, err := New(Options{Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Kube: kube, Snapshots: snaps, Resolver: res, Snapshotter: sn,
		Images: imgs, NodeName: o.NodeName, Recorder: mgr.GetEventRecorder("voldelta-agent"), Sync: o.Sync, Params: o.Params, Streams: o.Streams, Metrics: m, Logger: o.Logger,
		Cache: cache, FullScan: o.FullScan, SnapshotMetadata: meta, KubeletDir: filepath.Join(o.HostRoot, kubeletDir(o.KubeletDir))})
	if err != nil {
		return nil, err
	}
	if err := r.SetupWithManager(mgr, o.Workers); err != nil {
		return nil, err
	}
	return mgr, nil
}

// kubeletDir is the kubelet's directory on the host: dir, or the default.
func kubeletDir(dir string) string {
	if dir == "" {
		return "/var/lib/kubelet"
	}
	return dir
}
