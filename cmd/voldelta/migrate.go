package main

import (
	"context"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// newMigrateCmd is `voldelta migrate`: it reads Migrations and sets
// spec.cutoverRequested or spec.abort; the controller does the rest.
func newMigrateCmd() *cobra.Command {
	var kf kubeFlags
	var output string
	c := &cobra.Command{
		Use:   "migrate",
		Short: "Watch and drive warm migrations (Migration resources)",
		Long: `migrate watches and drives warm migrations: Migration resources
(voldelta.io/v1alpha1) in the source cluster, run by 'voldelta controller'
(see docs/migration.md). A Migration pre-copies its volumes while the
application runs, round after round, until a round's delta is small: it is
then ReadyForCutover and shows the predicted downtime. The cutover scales the
application's workloads to 0 (Quiescing), runs one final round of every volume
from snapshots taken after they stopped (FinalSync) and commits them at the
destination as one group (Committing, Completed). The downtime is that final
round, not a restore; status shows what it measured, part by part.

These commands only read Migrations and set spec.cutoverRequested or
spec.abort. They take kubectl's client configuration: --kubeconfig (else
$KUBECONFIG, else ~/.kube/config, else in-cluster), --context, and -n (else the
context's namespace). --output json prints the Migration objects as the API
returns them (without managedFields, as kubectl).

Installed under the name kubectl-voldelta, the same binary is a kubectl
plugin, 'kubectl voldelta migrate ...':

  ln -s "$(command -v voldelta)" /usr/local/bin/kubectl-voldelta`,
		Example: `  # a full warm migration, from the CLI's point of view:
  # 1. create the Migration (volumes, destination, workloads to quiesce;
  #    see docs/migration.md) and watch the pre-copy rounds converge
  kubectl apply -f db-move.yaml
  voldelta migrate status db-move --watch     # Ctrl-C stops watching, not the migration

  # 2. phase ReadyForCutover: the predicted downtime is the last round's time.
  #    Cut over and wait; exit 0 when Completed, 1 when Failed or Aborted
  voldelta migrate cutover db-move --wait

  # 3. the measured downtime (quiesce, final sync, commit) and the record
  voldelta migrate status db-move
  voldelta migrate status db-move -o json | jq .status.downtime

  # or give up before the group commits: the workloads are scaled back and
  # the destination stays unpromoted
  voldelta migrate abort db-move --wait

  # every migration of every namespace
  voldelta migrate list -A`,
		Args: usageArgs(cobra.NoArgs),
	}
	kf.register(c.PersistentFlags())
	c.PersistentFlags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	opts := func(c *cobra.Command) (migrateOptions, error) {
		if output != "table" && output != "json" {
			return migrateOptions{}, usagef(c, "--output %q: want table or json", output)
		}
		cl, ns, err := kf.client()
		if err != nil {
			return migrateOptions{}, err
		}
		return migrateOptions{
			Client: cl, Namespace: ns, JSON: output == "json", Live: isTerminal(c.OutOrStdout()),
			Out: c.OutOrStdout(), Err: c.ErrOrStderr(), Now: time.Now, Program: c.Root().CommandPath(),
		}, nil
	}
	c.AddCommand(newMigrateListCmd(opts), newMigrateStatusCmd(opts),
		newMigrateRequestCmd(opts, actionCutover), newMigrateRequestCmd(opts, actionAbort))
	return c
}

type optionsFunc func(*cobra.Command) (migrateOptions, error)

func newMigrateListCmd(opts optionsFunc) *cobra.Command {
	var all bool
	c := &cobra.Command{
		Use:   "list",
		Short: "List the Migrations of the namespace (-A: of all namespaces)",
		Example: `  voldelta migrate list
  voldelta migrate list -A -o json`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			o, err := opts(c)
			if err != nil {
				return err
			}
			return runMigrateList(c.Context(), o, all)
		},
	}
	c.Flags().BoolVarP(&all, "all-namespaces", "A", false, "list the Migrations of every namespace")
	return c
}

func newMigrateStatusCmd(opts optionsFunc) *cobra.Command {
	var (
		watch   bool
		timeout time.Duration
	)
	c := &cobra.Command{
		Use:   "status NAME",
		Short: "Show a Migration: phase, rounds, last delta, predicted and measured downtime",
		Long: `status shows a Migration: its phase and message, conditions, volumes, the
pre-copy rounds (the last 10: start, end and the bytes each volume sent), the
last round's delta, the predicted downtime and, after the cutover, the
measured downtime from the start of quiescing to the group commit with its
parts.

--watch follows the Migration as it changes (a watch on the API server): on a
terminal the view is redrawn in place, otherwise one line is printed per
change and the whole view once the migration ended. With -o json every
change prints the object. It returns when the migration completed, failed or
was aborted.`,
		Example: `  voldelta migrate status db-move
  voldelta migrate status db-move --watch
  voldelta migrate status db-move -o json | jq .status.history`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			o, err := opts(c)
			if err != nil {
				return err
			}
			ctx, cancel := withOptionalTimeout(c.Context(), timeout)
			defer cancel()
			return runMigrateStatus(ctx, o, args[0], watch)
		},
	}
	c.Flags().BoolVarP(&watch, "watch", "w", false, "follow the Migration until it ends")
	c.Flags().DurationVar(&timeout, "timeout", 0, "with --watch: give up after this long (0: no limit)")
	return c
}

func newMigrateRequestCmd(opts optionsFunc, act action) *cobra.Command {
	var (
		wait    bool
		timeout time.Duration
	)
	c := &cobra.Command{Args: usageArgs(cobra.ExactArgs(1))}
	switch act {
	case actionCutover:
		c.Use = "cutover NAME"
		c.Short = "Start a Migration's cutover (spec.cutoverRequested)"
		c.Long = `cutover sets spec.cutoverRequested on a Migration. The controller starts the
cutover as soon as the pre-copy is ready (at once if it is ReadyForCutover):
it scales the workloads to 0, runs the final round of every volume and
commits them at the destination as one group. It is refused once the
migration ended (Completed, Failed, Aborted) or an abort was requested.

--wait follows the migration until it ends, with the live view of 'status
--watch', and exits 1 when it failed or was aborted; with -o json it prints
the final object. Without --wait, -o json prints the patched object.`
		c.Example = `  voldelta migrate cutover db-move --wait
  voldelta migrate cutover db-move -n shop --context source-dc`
	case actionAbort:
		c.Use = "abort NAME"
		c.Short = "Abort a Migration (spec.abort): workloads scaled back, destination unpromoted"
		c.Long = `abort sets spec.abort on a Migration. Before the group commits at the
destination, the controller stops the migration, scales the workloads back
to the replica counts they had and leaves the destination unpromoted. It is
refused once the migration completed (the commit happened) or failed;
aborting an aborted migration does nothing.

--wait follows the migration until it ends and exits 1 unless it was
aborted (it may have completed first, if the abort came during the commit).`
		c.Example = `  voldelta migrate abort db-move --wait`
	}
	c.RunE = func(c *cobra.Command, args []string) error {
		o, err := opts(c)
		if err != nil {
			return err
		}
		ctx, cancel := withOptionalTimeout(c.Context(), timeout)
		defer cancel()
		return runMigrateRequest(ctx, o, args[0], act, wait)
	}
	c.Flags().BoolVar(&wait, "wait", false, "follow the migration until it completed, failed or was aborted")
	c.Flags().DurationVar(&timeout, "timeout", 0, "with --wait: give up after this long (0: no limit)")
	return c
}

// kubeFlags are kubectl's client flags.
type kubeFlags struct {
	kubeconfig, context, namespace string
}

func (f *kubeFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (default $KUBECONFIG, else ~/.kube/config, else in-cluster)")
	fs.StringVar(&f.context, "context", "", "kubeconfig context (default its current context)")
	fs.StringVarP(&f.namespace, "namespace", "n", "", "namespace (default the context's, else default)")
}

// client loads the configuration the way kubectl does and returns a
// client for voldelta.io/v1alpha1 and the namespace to work in.
func (f *kubeFlags) client() (client.WithWatch, string, error) {
	c, err := loadCluster(f.kubeconfig, f.context, f.namespace)
	if err != nil {
		return nil, "", err
	}
	return c.Client, c.Namespace, nil
}

// isTerminal says whether w is a terminal (the live view redraws in place).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// withOptionalTimeout is ctx, limited to d unless d is 0.
func withOptionalTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}
