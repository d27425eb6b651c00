package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/voldelta/voldelta/agent"
	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/internal/pki"
	"github.com/voldelta/voldelta/receiver"
)

func newHashCmd() *cobra.Command {
	var (
		cf      chunkFlags
		asJSON  bool
		workers int
	)
	c := &cobra.Command{
		Use:   "hash PATH",
		Short: "Print the root hash of a file or block device",
		Long: `hash chunks PATH exactly as 'send' does and prints its root hash. Two
volumes with the same root hash (under the same chunk parameters) hold the
same bytes: compare a source snapshot with its replica without sending it.`,
		Example: `  voldelta hash /dev/vg0/db-replica
  voldelta hash --json disk.img`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			p, err := cf.params(c)
			if err != nil {
				return err
			}
			f, size, err := agent.OpenSource(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			start := time.Now()
			m, st, err := chunk.ScanManifest(c.Context(), f, size, p, chunk.ScanOptions{Workers: workers})
			if err != nil {
				return fmt.Errorf("hash %s: %w", args[0], err)
			}
			if asJSON {
				return writeJSON("-", map[string]any{
					"path": args[0], "root_hash": m.Root.String(), "size": size, "chunks": st.Chunks(),
					"zero_chunks": st.ZeroChunks, "entries": len(m.Entries), "params": p.String(),
					"seconds": time.Since(start).Seconds(),
				})
			}
			fmt.Printf("%s  %s\n", m.Root, args[0])
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print a JSON object with the root hash, size and chunk counts")
	c.Flags().IntVar(&workers, "workers", 0, "segments chunked in parallel (default: all cores)")
	cf.register(c.Flags())
	return c
}

func newStatusCmd() *cobra.Command {
	var (
		stateDir string
		volume   string
		asJSON   bool
		kf       statusKubeFlags
	)
	c := &cobra.Command{
		Use:   "status [--state-dir DIR [--volume NAME] [--json]]",
		Short: "Show replication: VolumeSyncs and VolumeTargets (Kubernetes), or a receiver's state directory",
		Long: `status without --state-dir is the Kubernetes view: the VolumeSyncs and
VolumeTargets of the namespace (-A: of every namespace) in kubectl's table
style. A VolumeSync shows its last round: the generation it committed, LAST
SYNC (when), RPO (the age of the data the replica holds: now minus the start
of the last committed round, when its snapshot was requested), THROUGHPUT
(lastBytesSent over lastSyncDuration, snapshot included) and NEXT (the next
scheduled round). A VolumeTarget shows the generation it holds (STORE GEN:
the store's, for a store target), when it was committed and how far a pull
got.

--context twice, the source cluster then the destination cluster, joins
each VolumeSync of the source with the VolumeTarget of the destination
whose spec.remoteVolume is the VolumeSync's destination volume name
(spec.destination.volumeName, default <namespace>-<sourcePVC>): GEN and
TARGET GEN side by side, LAG (the generations the destination lacks and
the time from its commit to the source's last commit; 0 when it holds the
last one) and RPO of what the destination holds. -n applies to both
clusters; without it each context's namespace is used. -o json or yaml
prints the objects as kubectl does, a List (with two contexts: the
source's VolumeSyncs and the destination's VolumeTargets).

With --state-dir, status reads a receiver's state directory and checks each
target as it is now. A volume is "current" when its target holds the last
committed generation, verified when it was committed, and its fingerprint
still vouches that nothing changed it since: for a file its size, mtime,
ctime and inode; for a block device its size and the kernel's write
counters of the device. "INCOMPLETE" means a round is being applied or one
was interrupted: the target holds no consistent image. "NOT CURRENT" means
the target was, or may have been, changed outside voldelta, a verification
or scrub failed, or the target is gone; PROBLEM says which, and the next
round reads back and repairs what changed. Cut over only to a current
volume (and scrub first if the host rebooted or the storage may have been
written around voldelta).`,
		Example: `  voldelta status                                  # VolumeSyncs and VolumeTargets of the namespace
  voldelta status -A -o yaml
  voldelta status --context dc1 --context dc2 -n shop   # source and destination side by side
  voldelta status --state-dir /var/lib/voldelta       # a standalone receiver`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			if stateDir != "" {
				if kf.used(c) {
					return usagef(c, "--state-dir excludes --kubeconfig, --context, -n, -A and -o (the Kubernetes view)")
				}
				return runStatus(c.OutOrStdout(), stateDir, volume, asJSON)
			}
			if volume != "" || asJSON {
				return usagef(c, "--volume and --json go with --state-dir (the Kubernetes view takes -o json)")
			}
			o, err := kf.options(c)
			if err != nil {
				return err
			}
			return runKubeStatus(c.Context(), o)
		},
	}
	c.Flags().StringVar(&stateDir, "state-dir", "", "a standalone receiver's --state-dir: show its volumes instead of Kubernetes resources")
	c.Flags().StringVar(&volume, "volume", "", "with --state-dir: only this volume")
	c.Flags().BoolVar(&asJSON, "json", false, "with --state-dir: print JSON")
	kf.register(c.Flags())
	return c
}

func newCertsCmd() *cobra.Command {
	var (
		dir, hosts, client string
		days               int
		force              bool
	)
	c := &cobra.Command{
		Use:   "certs --dir DIR --hosts HOST[,HOST...]",
		Short: "Create a private CA and certificates for a receiver and an agent",
		Long: `certs writes ca.pem, receiver.pem/receiver-key.pem (valid for --hosts) and
agent.pem/agent-key.pem into DIR, for the mutual TLS of send and receive.
Keys are written with mode 0600. Any CA works; this is the quick way.`,
		Example: `  voldelta certs --dir ./pki --hosts replica.example,10.0.0.5`,
		Args:    usageArgs(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			if dir == "" || hosts == "" {
				return usagef(c, "--dir and --hosts are required")
			}
			f, err := pki.WriteDir(dir, strings.Split(hosts, ","), client, time.Duration(days)*24*time.Hour, force)
			if err != nil {
				return err
			}
			fmt.Printf("CA:       %s\nreceiver: %s %s\nagent:    %s %s\n", f.CA, f.ServerCert, f.ServerKey, f.ClientCert, f.ClientKey)
			return nil
		},
	}
	c.Flags().StringVar(&dir, "dir", "", "directory to write the PEM files to (required)")
	c.Flags().StringVar(&hosts, "hosts", "", "comma-separated DNS names or IPs the receiver is reached at (required)")
	c.Flags().StringVar(&client, "client-name", "voldelta-agent", "common name of the agent certificate (its identity at the receiver)")
	c.Flags().IntVar(&days, "days", 365, "validity in days")
	c.Flags().BoolVar(&force, "force", false, "overwrite existing files")
	return c
}

// runStatus prints the state of one volume (volume set) or every volume of
// a receiver's state directory on w, as a table or JSON.
func runStatus(w io.Writer, stateDir, volume string, asJSON bool) error {
	var list []*receiver.VolumeStatus
	if volume != "" {
		vs, err := receiver.ReadStatus(stateDir, volume)
		if errors.Is(err, receiver.ErrNoState) {
			return fmt.Errorf("volume %q was never synced to %s", volume, stateDir)
		}
		if err != nil {
			return err
		}
		list = append(list, vs)
	} else {
		var err error
		if list, err = receiver.ListStatus(stateDir); err != nil {
			return err
		}
	}
	if asJSON {
		if volume != "" {
			return writeJSONTo(w, list[0])
		}
		if list == nil {
			list = []*receiver.VolumeStatus{}
		}
		return writeJSONTo(w, list)
	}
	return writeStatusTable(w, list)
}

func writeStatusTable(out io.Writer, list []*receiver.VolumeStatus) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "VOLUME\tSTATE\tGENERATION\tROOT\tSIZE\tCOMMITTED\tTARGET\tPROBLEM")
	for _, vs := range list {
		state := "current"
		switch {
		case vs.Incomplete:
			state = "INCOMPLETE"
		case !vs.Current:
			state = "NOT CURRENT"
		}
		committed := "-"
		if vs.CommittedAt != nil {
			committed = vs.CommittedAt.Local().Format(time.DateTime)
		}
		root := vs.Root
		if len(root) > 16 {
			root = root[:16]
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n", vs.Volume, state, vs.Generation, root, humanBytes(vs.Size), committed, vs.Target, vs.Problem)
	}
	return w.Flush()
}
