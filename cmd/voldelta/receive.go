package main

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/voldelta/voldelta/receiver"
	"github.com/voldelta/voldelta/transport"
)

func newReceiveCmd() *cobra.Command {
	var stallTimeout, idleTimeout time.Duration
	var (
		listen  string
		targets []string
		cfg     receiver.Config
		tf      tlsFlags
		lf      logFlags
		verify  string
		buffer  string
	)
	c := &cobra.Command{
		Use:   "receive --listen HOST:PORT --target NAME=PATH [--target ...] --state-dir DIR [flags]",
		Short: "Serve replica volumes: apply agents' deltas in place, verify, commit",
		Long: `receive accepts sync rounds from agents and writes each volume's changes in
place into its target (a block device or an image file, created if missing).
It serves until SIGINT or SIGTERM; on shutdown it stops accepting, ends
running rounds after making their progress durable, and exits.

For every volume the state directory keeps the manifest of what the target
holds, so a round never re-reads the whole target. A round is planned as:
skip what is already in place, copy what is elsewhere in the target, fetch
the rest; writes are journaled, and a new generation is committed only after
the target was fsynced and verified against the agent's root hash. Until
then the volume is reported incomplete ('voldelta status'). An interrupted
round is resumed by the next one, which sends only what is still missing.

A volume is reported current ('voldelta status') only when its target holds
the committed generation and its fingerprint still vouches that nothing
changed it: a file's size, mtime, ctime and inode, a block device's size and
the kernel's write counters of that device. A target changed outside
voldelta is re-indexed by reading it; after an interrupted round, a reboot,
or where the counters cannot be read, the next round reads back every range
it keeps and repairs what does not match. With --verify written (default)
a round reads back what it wrote; with --verify full, everything. What no
fingerprint sees (writes around the device, bit rot) is found by
'voldelta scrub'. Block devices are opened exclusively: a mounted replica is
refused. A damaged state file stops the volume with an error saying how to
recover; one target cannot serve two volume names.`,
		Example: `  voldelta receive --listen :7300 --state-dir /var/lib/voldelta \
      --target db=/dev/vg0/db-replica --target web=/srv/web.img \
      --tls-cert receiver.pem --tls-key receiver-key.pem --tls-ca ca.pem`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			if listen == "" {
				return usagef(c, "--listen is required")
			}
			if len(targets) == 0 {
				return usagef(c, "give at least one --target NAME=PATH")
			}
			if cfg.StateDir == "" {
				return usagef(c, "--state-dir is required")
			}
			var err error
			if cfg.Targets, err = parseTargets(c, targets); err != nil {
				return err
			}
			if cfg.Transport, err = tf.config(c, true); err != nil {
				return err
			}
			cfg.Transport.StallTimeout, cfg.Transport.IdleTimeout = stallTimeout, idleTimeout
			if err = cfg.Transport.Validate(); err != nil {
				return usagef(c, "%v", err)
			}
			if cfg.Verify, cfg.ApplyBuffer, err = applyFlags(c, verify, buffer); err != nil {
				return err
			}
			if cfg.Logger, err = lf.logger(c, stderr); err != nil {
				return err
			}
			srv, err := receiver.New(cfg)
			if err != nil {
				return usagef(c, "%v", err)
			}
			return runReceive(c.Context(), srv, listen)
		},
	}
	fs := c.Flags()
	fs.StringVar(&listen, "listen", "", "address to listen on, HOST:PORT (required)")
	fs.StringArrayVar(&targets, "target", nil, "volume NAME=PATH of its block device or image file (repeatable, at least one)")
	fs.StringVar(&cfg.StateDir, "state-dir", "", "directory for each volume's manifest, journal and state (required)")
	tf.register(fs, "agents")
	fs.StringVar(&verify, "verify", string(receiver.VerifyWritten), "before commit, read back: written (the ranges written this round; kept ranges too when nothing vouches for them) or full (every range, every round)")
	fs.StringVar(&buffer, "apply-buffer", "64MiB", "memory for chunks that arrive before they may be written and for breaking copy cycles")
	fs.DurationVar(&stallTimeout, "stall-timeout", transport.DefaultStallTimeout, "end a session when nothing came from the agent for this long (a dead link), releasing its volume")
	fs.DurationVar(&idleTimeout, "idle-timeout", transport.DefaultConfig().IdleTimeout, "end a session whose agent, alive, sends no manifest frame for this long, releasing its volume")
	fs.IntVar(&cfg.MaxSessions, "max-sessions", receiver.DefaultMaxSessions, "sessions served at once; more are answered busy (retryable)")
	fs.IntVar(&cfg.Workers, "workers", 0, "parallelism of target scans and verification (default: all cores)")
	lf.register(fs, "info")
	return c
}

// parseTargets reads --target NAME=PATH flags into a volume map.
func parseTargets(c *cobra.Command, targets []string) (map[string]string, error) {
	m := make(map[string]string, len(targets))
	for _, t := range targets {
		name, path, ok := strings.Cut(t, "=")
		if !ok || path == "" {
			return nil, usagef(c, "--target %q: want NAME=PATH", t)
		}
		if err := transport.ValidateVolumeName(name); err != nil {
			return nil, usagef(c, "--target: %v", err)
		}
		if _, dup := m[name]; dup {
			return nil, usagef(c, "--target %q given twice", name)
		}
		m[name] = path
	}
	return m, nil
}

// runReceive serves srv on listen until ctx ends.
func runReceive(ctx context.Context, srv *receiver.Server, listen string) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", listen, err)
	}
	return srv.Serve(ctx, ln)
}
