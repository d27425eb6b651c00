package main

import (
	"os"

	"github.com/spf13/cobra"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/voldelta/voldelta/agent"
	"github.com/voldelta/voldelta/internal/k8sagent"
)

func newAgentCmd() *cobra.Command {
	var (
		o          k8sagent.RunOptions
		kubeconfig string
		cf         chunkFlags
		lf         logFlags
	)
	c := &cobra.Command{
		Use:   "agent [flags]",
		Short: "Run the node agent: sync the VolumeSyncs whose volume is attached to this node",
		Long: `agent runs on every node (a DaemonSet) and reconciles voldelta.io/v1alpha1
VolumeSyncs. It handles only those whose source PVC's volume is attached to
its own node (NODE_NAME): per round it takes a CSI VolumeSnapshot, waits for
it to be ready, reads that point-in-time image (for Longhorn v1, from the
volume's replica on this node), sends what the receiver lacks (or, for a
VolumeSync whose spec.destination.store names an object store, pushes it as
the store's next generation of the volume, uploading the chunks the store
lacks) and reports the round in the VolumeSync's status. The previous round's
snapshot is kept until the next round commits.

It serves Prometheus metrics on --metrics-addr and health probes on
--health-addr. Inside a cluster it uses the pod's service account; outside,
--kubeconfig or $KUBECONFIG.`,
		Example: `  voldelta agent --node "$NODE_NAME" --host-root /host --metrics-addr :9500`,
		Args:    usageArgs(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			if o.NodeName == "" {
				return usagef(c, "--node is required (or set NODE_NAME)")
			}
			var err error
			if o.Params, err = cf.params(c); err != nil {
				return err
			}
			if o.Logger, err = lf.logger(c, stderr); err != nil {
				return err
			}
			setControllerLogger(o.Logger)
			cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
			if err != nil {
				return err
			}
			mgr, err := k8sagent.NewManager(cfg, o)
			if err != nil {
				return err
			}
			o.Logger.Info("agent starting", "node", o.NodeName, "version", version)
			return mgr.Start(c.Context())
		},
	}
	fs := c.Flags()
	fs.StringVar(&o.NodeName, "node", os.Getenv("NODE_NAME"), "this node's name (default $NODE_NAME)")
	fs.StringVar(&kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig file; default in-cluster configuration")
	fs.StringVar(&o.HostRoot, "host-root", "/", "where the host's root file system is mounted (device paths are looked up under it)")
	fs.StringVar(&o.KubeletDir, "kubelet-dir", "/var/lib/kubelet", "the kubelet's directory on the host")
	fs.StringSliceVar(&o.LonghornDataPaths, "longhorn-data-path", []string{"/var/lib/longhorn"}, "paths of Longhorn's disks on the host, where replicas are looked for (repeatable or comma-separated; '-' disables reading Longhorn replicas)")
	fs.StringVar(&o.LonghornNamespace, "longhorn-namespace", "longhorn-system", "namespace of Longhorn's custom resources")
	fs.BoolVar(&o.LiveDevice, "live-device", false, "for drivers without a snapshot reader, read the live device after the snapshot is ready (consistent only if the application does not write)")
	fs.StringVar(&o.MetricsAddr, "metrics-addr", ":9500", "serve Prometheus /metrics here ('0' disables)")
	fs.StringVar(&o.HealthAddr, "health-addr", ":9501", "serve /healthz and /readyz here ('0' disables)")
	fs.IntVar(&o.Workers, "workers", 2, "rounds run at once")
	fs.IntVar(&o.Streams, "streams", 0, "data streams per round (default: the transport's)")
	fs.StringVar(&o.CacheDir, "cache-dir", "/var/lib/voldelta/agent", "host path where the manifests of committed rounds are kept (the base of the next round's delta; '' keeps none)")
	fs.DurationVar(&o.FullScan.Interval, "full-scan-interval", agent.DefaultFullScanInterval, "a round with change hints reads the whole snapshot anyway when the volume's last full scan is older than this, and checks the hints against it (0: never)")
	fs.IntVar(&o.FullScan.Every, "full-scan-every", 0, "a round with change hints reads the whole snapshot anyway every N rounds (0: only by --full-scan-interval)")
	fs.BoolVar(&o.NoSnapshotMetadata, "no-snapshot-metadata", false, "do not ask CSI snapshot metadata services (KEP-3314) for changed blocks")
	cf.register(fs)
	lf.register(fs, "info")
	return c
}
