package main

import (
	"context"
	"fmt"
	"net"
	"os"

	"github.com/spf13/cobra"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/voldelta/voldelta/internal/k8sreceiver"
	"github.com/voldelta/voldelta/objstore"
	"github.com/voldelta/voldelta/receiver"
)

func newK8sReceiverCmd() *cobra.Command {
	var (
		o          k8sreceiver.RunOptions
		kubeconfig string
		listen     string
		tf         tlsFlags
		lf         logFlags
		verify     string
		buffer     string
	)
	c := &cobra.Command{
		Use:   "k8s-receiver [--listen HOST:PORT --tls-cert ...] --state-dir DIR [flags]",
		Short: "Run the receiver in Kubernetes mode: serve the volumes named by VolumeTargets, pull those fed by a store",
		Long: `k8s-receiver is 'voldelta receive' with its targets taken from
voldelta.io/v1alpha1 VolumeTargets instead of --target flags. An agent's
round for remote volume V is applied to the local volume of the VolumeTarget
whose spec.remoteVolume is V (a PVC's volume, or a Longhorn volume), if the
agent's client certificate carries one of the VolumeTarget's
spec.allowedIdentities (common name, DNS or URI SAN); others are refused.

A VolumeTarget with spec.store instead of spec.allowedIdentities is fed by
an object store: every spec.store.pollInterval (default 30s) the receiver
looks for a newer generation of spec.remoteVolume there (a VolumeSync with
spec.destination.store pushes them) and pulls it into the target in place,
downloading only the chunks the target lacks; interrupted pulls resume.
Agents may not write such a target. The store's credentials come from the
Secret spec.store.credentialsSecretName in the VolumeTarget's namespace
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optional AWS_SESSION_TOKEN and
ca.crt). Without --listen (and TLS flags) the receiver only pulls.

With --attach (default), a target volume attached nowhere is attached to
this node through a VolumeAttachment of its PV, removed again when the
VolumeTarget is deleted. After every commit, and every 30 seconds, the
VolumeTarget's status reports the committed generation, root hash and
whether the target is incomplete.

With --populate (default), the receiver is also a volume populator: a PVC
whose spec.dataSourceRef is {apiGroup: voldelta.io, kind: VolumeTarget,
name: T} gets a new volume of its StorageClass holding T's last committed
generation, copied on this node and verified, while T keeps receiving
rounds (docs/kubernetes.md, "Cloning a replica into a new PVC").

With --velero-namespace it restores Velero backups made with the voldelta
data mover: each DataDownload's generation is pulled from the backup
storage location, verified, and handed to the PVC Velero restored. It goes
into a new volume on this node, or, when a store-fed VolumeTarget of that
namespace replicates the same volume, onto that warm replica in place (the
replica is consumed) (docs/velero.md).`,
		Example: `  voldelta k8s-receiver --listen :7300 --state-dir /var/lib/voldelta \
      --tls-cert /tls/tls.crt --tls-key /tls/tls.key --tls-ca /tls/ca.crt --host-root /host

  # Only pull VolumeTargets fed by an object store: no port is opened.
  voldelta k8s-receiver --state-dir /var/lib/voldelta --host-root /host`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			if o.PullParallel < 1 || o.PullParallel > 256 || o.Concurrency < 1 || o.Concurrency > 64 {
				return usagef(c, "--pull-parallel %d, --concurrency %d: want 1-256 and 1-64", o.PullParallel, o.Concurrency)
			}
			if o.Server.StateDir == "" {
				return usagef(c, "--state-dir is required")
			}
			if o.NodeName == "" {
				return usagef(c, "--node is required (or set NODE_NAME)")
			}
			var err error
			if listen != "" {
				if o.Server.Transport, err = tf.config(c, true); err != nil {
					return err
				}
			} else if tf.cert != "" || tf.key != "" || tf.ca != "" || tf.insecure {
				return usagef(c, "--tls-* and --insecure configure the server: give --listen too (or drop them to only pull store targets)")
			}
			if o.Server.Verify, o.Server.ApplyBuffer, err = applyFlags(c, verify, buffer); err != nil {
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
			return runK8sReceiver(c.Context(), cfg, o, listen)
		},
	}
	fs := c.Flags()
	fs.StringVar(&listen, "listen", "", "address to listen on for agents, HOST:PORT (default: none, only pull store targets)")
	fs.StringVar(&o.Server.StateDir, "state-dir", "", "directory for each volume's manifest, journal and state (required)")
	fs.StringVar(&o.NodeName, "node", os.Getenv("NODE_NAME"), "this node's name (default $NODE_NAME)")
	fs.StringVar(&o.Namespace, "namespace", "", "serve only the VolumeTargets of this namespace (default: all)")
	fs.StringVar(&kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig file; default in-cluster configuration")
	fs.StringVar(&o.HostRoot, "host-root", "/", "where the host's root file system is mounted (device paths are looked up under it)")
	fs.StringVar(&o.LonghornNamespace, "longhorn-namespace", "longhorn-system", "namespace of Longhorn's custom resources")
	fs.BoolVar(&o.Attach, "attach", true, "attach target volumes attached nowhere to this node (VolumeAttachment)")
	fs.BoolVar(&o.Populate, "populate", true, "populate PVCs whose dataSourceRef names a VolumeTarget with its last committed generation")
	fs.StringVar(&o.VeleroNamespace, "velero-namespace", "", "restore the DataDownloads of Velero restores of voldelta backups, for the Velero in this namespace (default: off)")
	fs.StringVar(&o.MetricsAddr, "metrics-addr", ":9500", "serve Prometheus /metrics here ('0' disables)")
	fs.StringVar(&o.HealthAddr, "health-addr", ":9501", "serve /healthz and /readyz here ('0' disables)")
	tf.register(fs, "agents")
	fs.StringVar(&verify, "verify", string(receiver.VerifyWritten), "before commit, read back: written (the ranges written this round; kept ranges too when nothing vouches for them) or full (every range, every round)")
	fs.StringVar(&buffer, "apply-buffer", "64MiB", "memory for chunks that arrive before they may be written and for breaking copy cycles")
	fs.IntVar(&o.Server.Workers, "workers", 0, "parallelism of target scans and verification (default: all cores)")
	fs.IntVar(&o.PullParallel, "pull-parallel", objstore.DefaultParallel, "concurrent downloads of one pull from a store")
	fs.IntVar(&o.Concurrency, "concurrency", 4, "VolumeTargets reconciled (and pulled) at once")
	lf.register(fs, "info")
	return c
}

// runK8sReceiver listens (when listen is set) and runs the Kubernetes
// receiver until ctx ends.
func runK8sReceiver(ctx context.Context, cfg *rest.Config, o k8sreceiver.RunOptions, listen string) error {
	if listen != "" {
		var err error
		if o.Listener, err = net.Listen("tcp", listen); err != nil {
			return fmt.Errorf("listen on %s: %w", listen, err)
		}
	}
	mgr, err := k8sreceiver.NewManager(cfg, o)
	if err != nil {
		if o.Listener != nil {
			o.Listener.Close()
		}
		return err
	}
	return mgr.Start(ctx)
}

// applyFlags checks --verify and --apply-buffer of the commands that apply
// rounds (receive, k8s-receiver, pull).
func applyFlags(c *cobra.Command, verify, buffer string) (receiver.VerifyMode, int64, error) {
	if verify != string(receiver.VerifyWritten) && verify != string(receiver.VerifyFull) {
		return "", 0, usagef(c, "--verify %q: want written or full", verify)
	}
	n, err := parseSize(buffer)
	if err != nil {
		return "", 0, usagef(c, "--apply-buffer: %v", err)
	}
	if n == 0 || n > 1<<40 {
		return "", 0, usagef(c, "--apply-buffer %s: want 1 byte to 1 TiB", buffer)
	}
	return receiver.VerifyMode(verify), int64(n), nil
}
