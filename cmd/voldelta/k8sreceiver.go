package main

import (
	"fmt"
	"net"
	"os"

	"github.com/spf13/cobra"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/voldelta/voldelta/internal/k8sreceiver"
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
		Use:   "k8s-receiver --listen HOST:PORT --state-dir DIR --tls-cert ... [flags]",
		Short: "Run the receiver in Kubernetes mode: serve the volumes named by VolumeTargets",
		Long: `k8s-receiver is 'voldelta receive' with its targets taken from
voldelta.io/v1alpha1 VolumeTargets instead of --target flags. An agent's
round for remote volume V is applied to the local volume of the VolumeTarget
whose spec.remoteVolume is V (a PVC's volume, or a Longhorn volume), if the
agent's client certificate carries one of the VolumeTarget's
spec.allowedIdentities (common name, DNS or URI SAN); others are refused.

With --attach (default), a target volume attached nowhere is attached to
this node through a VolumeAttachment of its PV, removed again when the
VolumeTarget is deleted. After every commit, and every 30 seconds, the
VolumeTarget's status reports the committed generation, root hash and
whether the target is incomplete.`,
		Example: `  voldelta k8s-receiver --listen :7300 --state-dir /var/lib/voldelta \
      --tls-cert /tls/tls.crt --tls-key /tls/tls.key --tls-ca /tls/ca.crt --host-root /host`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			if listen == "" {
				return usagef(c, "--listen is required")
			}
			if o.Server.StateDir == "" {
				return usagef(c, "--state-dir is required")
			}
			if o.NodeName == "" {
				return usagef(c, "--node is required (or set NODE_NAME)")
			}
			var err error
			if o.Server.Transport, err = tf.config(c, true); err != nil {
				return err
			}
			if verify != string(receiver.VerifyWritten) && verify != string(receiver.VerifyFull) {
				return usagef(c, "--verify %q: want written or full", verify)
			}
			o.Server.Verify = receiver.VerifyMode(verify)
			n, err := parseSize(buffer)
			if err != nil {
				return usagef(c, "--apply-buffer: %v", err)
			}
			o.Server.ApplyBuffer = int64(n)
			if o.Logger, err = lf.logger(c, stderr); err != nil {
				return err
			}
			setControllerLogger(o.Logger)
			cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
			if err != nil {
				return err
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("listen on %s: %w", listen, err)
			}
			o.Listener = ln
			mgr, err := k8sreceiver.NewManager(cfg, o)
			if err != nil {
				ln.Close()
				return err
			}
			return mgr.Start(c.Context())
		},
	}
	fs := c.Flags()
	fs.StringVar(&listen, "listen", "", "address to listen on for agents, HOST:PORT (required)")
	fs.StringVar(&o.Server.StateDir, "state-dir", "", "directory for each volume's manifest, journal and state (required)")
	fs.StringVar(&o.NodeName, "node", os.Getenv("NODE_NAME"), "this node's name (default $NODE_NAME)")
	fs.StringVar(&o.Namespace, "namespace", "", "serve only the VolumeTargets of this namespace (default: all)")
	fs.StringVar(&kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig file; default in-cluster configuration")
	fs.StringVar(&o.HostRoot, "host-root", "/", "where the host's root file system is mounted (device paths are looked up under it)")
	fs.StringVar(&o.LonghornNamespace, "longhorn-namespace", "longhorn-system", "namespace of Longhorn's custom resources")
	fs.BoolVar(&o.Attach, "attach", true, "attach target volumes attached nowhere to this node (VolumeAttachment)")
	fs.StringVar(&o.MetricsAddr, "metrics-addr", ":9500", "serve Prometheus /metrics here ('0' disables)")
	fs.StringVar(&o.HealthAddr, "health-addr", ":9501", "serve /healthz and /readyz here ('0' disables)")
	tf.register(fs, "agents")
	fs.StringVar(&verify, "verify", string(receiver.VerifyWritten), "before commit, read back: written (every range written this round) or full (re-hash the whole target)")
	fs.StringVar(&buffer, "apply-buffer", "64MiB", "memory for chunks that arrive before they may be written and for breaking copy cycles")
	fs.IntVar(&o.Server.Workers, "workers", 0, "parallelism of target scans and verification (default: all cores)")
	lf.register(fs, "info")
	return c
}
