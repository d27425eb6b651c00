package main

import (
	"context"
	"os"

	"github.com/spf13/cobra"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/voldelta/voldelta/internal/migration"
)

// controllerOptions are the flags of `voldelta controller`.
type controllerOptions struct {
	run        migration.RunOptions
	kubeconfig string
}

func newControllerCmd() *cobra.Command {
	var (
		o  controllerOptions
		lf logFlags
	)
	c := &cobra.Command{
		Use:   "controller [flags]",
		Short: "Run the Migration controller in the source cluster",
		Long: `controller reconciles voldelta.io/v1alpha1 Migrations: warm migrations of
an application's volumes (see docs/migration.md). For each Migration it
creates one VolumeSync per PVC (<migration>-<pvc>, owned by the Migration)
and drives their rounds through spec.trigger.manual, which the node agents
('voldelta agent') run:

  Pending → Precopying → ReadyForCutover → Quiescing → FinalSync →
  Committing → Completed (or Failed, Aborted)

Pre-copy rounds run while the application does, until one sends fewer bytes
than spec.precopy.convergedBelowBytes (or its predicted downtime is under
spec.precopy.convergedBelowDuration). At the cutover the controller records
the replica counts of spec.quiesce.workloads in the Migration's status,
scales them to 0, waits until their pods are gone, runs the final round of
every volume from snapshots taken after that, and reports the measured
downtime. spec.abort (or a failure) scales the workloads back.

It needs the agents running on the same cluster. It serves Prometheus
metrics on --metrics-addr and health probes on --health-addr. Inside a
cluster it uses the pod's service account; outside, --kubeconfig or
$KUBECONFIG. Run one replica, or several with --leader-elect.

With --velero-namespace it is also a Velero data mover named "voldelta":
backups made with 'velero backup create --snapshot-move-data --data-mover
voldelta' have their CSI snapshots pushed by the agents into the backup
storage location's bucket, incrementally; 'velero backup delete' removes
their generations from it again (docs/velero.md).`,
		Example: `  voldelta controller --metrics-addr :9500 --health-addr :9501 --leader-elect

  # outside the cluster, against the current kubeconfig
  voldelta controller --kubeconfig ~/.kube/config --metrics-addr 0 --health-addr 0`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			if o.run.RequeueInterval < 0 {
				return usagef(c, "--requeue-interval %s: want a positive duration", o.run.RequeueInterval)
			}
			var err error
			if o.run.Logger, err = lf.logger(c, stderr); err != nil {
				return err
			}
			return runController(c.Context(), o)
		},
	}
	fs := c.Flags()
	fs.StringVar(&o.kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig file; default in-cluster configuration")
	fs.StringVar(&o.run.MetricsAddr, "metrics-addr", ":9500", "serve Prometheus /metrics here ('0' disables)")
	fs.StringVar(&o.run.HealthAddr, "health-addr", ":9501", "serve /healthz and /readyz here ('0' disables)")
	fs.BoolVar(&o.run.LeaderElection, "leader-elect", false, "elect a leader through a Lease, so that only one of several replicas acts")
	fs.StringVar(&o.run.LeaderElectionNamespace, "leader-elect-namespace", "", "namespace of the leader election Lease (default: the pod's own)")
	fs.StringVar(&o.run.LeaderElectionID, "leader-elect-id", "voldelta-migration-controller", "name of the leader election Lease")
	fs.StringVar(&o.run.VeleroNamespace, "velero-namespace", "", "also move the data of Velero backups with --data-mover voldelta, for the Velero in this namespace (default: off)")
	fs.DurationVar(&o.run.RequeueInterval, "requeue-interval", 0, "how often a wait no watch covers is looked at again: PVCs to appear, pods to go (default 5s)")
	lf.register(fs, "info")
	return c
}

// runController runs the controller until ctx ends.
func runController(ctx context.Context, o controllerOptions) error {
	setControllerLogger(o.run.Logger)
	cfg, err := clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	if err != nil {
		return err
	}
	mgr, err := migration.NewManager(cfg, o.run)
	if err != nil {
		return err
	}
	o.run.Logger.Info("migration controller starting", "version", version, "leader_election", o.run.LeaderElection)
	return mgr.Start(ctx)
}
