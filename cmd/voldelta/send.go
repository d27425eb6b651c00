package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/voldelta/voldelta/agent"
	"github.com/voldelta/voldelta/transport"
)

// sendFlags are the flags of send.
type sendFlags struct {
	opt                          agent.Options
	tf                           tlsFlags
	cf                           chunkFlags
	lf                           logFlags
	hf                           hintFlags
	pf                           progressFlags
	streams                      int
	bwlimit, statsJSON, compress string
	quiet                        bool
	stallTimeout, prepareTimeout time.Duration
}

// sendOptions are what a send does, from its flags.
type sendOptions struct {
	Sync      agent.Options
	StatsJSON string // --stats-json: a path, "-" for stdout, "" for none
	Quiet     bool
	Progress  progressSink // nil: none
}

func newSendCmd() *cobra.Command {
	var f sendFlags
	c := &cobra.Command{
		Use:   "send --source PATH --to HOST:PORT --volume NAME [flags]",
		Short: "Run one sync round: send what the receiver's copy of a volume lacks",
		Long: `send reads the source (a block device or image file, ideally a snapshot),
cuts it into content-defined chunks, streams the manifest to the receiver and
sends only the chunks the receiver asks for. It exits 0 only after the
receiver verified its target against the source's root hash and committed a
new generation.

The first round copies everything that is not zero; later rounds send only
changed chunks. An interrupted round is resumed by the next one.

Change hints make a round read only what changed instead of the whole
source: --base FILE names the image the receiver's last generation was sent
from, of which --source is a later reflinked copy (cp --reflink=always on XFS
with reflink=1 or btrfs); --changed FILE lists the changed extents (rbd diff
JSON, or OFFSET LENGTH lines). Hints are used only when the receiver's last
generation was made from exactly that base (the receiver records each
image's identity: device, inode, size, change time) and its manifest is at
hand (kept in --cache-dir, or fetched from the receiver); otherwise the round
reads everything and --stats-json says why (scan_mode, full_scan_reason). A
hinted round re-reads a few chunks around each changed extent, and the
manifest goes on the wire as a delta against the receiver's. Every
--full-scan-interval (default 24h) a hinted round reads everything anyway and
checks the hints against it; hints caught missing a change are not used
again for the volume (until --trust-hints).

--stats-json writes one JSON object (to a file, or '-' for stdout) with at
least: volume, source_bytes, chunks_total, chunks_sent, chunks_zero,
bytes_sent_raw (uncompressed bytes of chunks sent), wire_bytes (bytes written
to the TCP connection, TLS and framing included), manifest_bytes,
manifest_entries_sent, manifest_entries_copied, chunks_patched, scan_mode,
full_scan_reason, hint_source, changed_bytes, bytes_read, hint_check, scan_seconds,
duration_seconds, root_hash, generation.`,
		Example: `  voldelta send --source /dev/vg0/db-snap --to replica:7300 --volume db \
      --tls-cert agent.pem --tls-key agent-key.pem --tls-ca ca.pem
  voldelta send --source disk.img --to 127.0.0.1:7300 --volume demo --insecure \
      --bwlimit 100Mbit --stats-json stats.json
  # reflink snapshots of a live image: each round reads what changed since the last
  cp --reflink=always live.img snap-2.img
  voldelta send --source snap-2.img --base snap-1.img --to replica:7300 --volume vm \
      --tls-cert agent.pem --tls-key agent-key.pem --tls-ca ca.pem && rm snap-1.img`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			o, err := f.options(c)
			if err != nil {
				return err
			}
			_, err = runSend(c.Context(), o, stderr)
			return err
		},
	}
	fs := c.Flags()
	fs.StringVar(&f.opt.Source, "source", "", "block device or image file to send (required)")
	fs.StringVar(&f.opt.Addr, "to", "", "receiver address HOST:PORT (required)")
	fs.StringVar(&f.opt.Volume, "volume", "", "volume name on the receiver (required)")
	f.tf.register(fs, "receiver")
	fs.StringVar(&f.tf.serverName, "tls-server-name", "", "name expected in the receiver's certificate (default: the host of --to)")
	fs.IntVar(&f.streams, "streams", transport.DefaultConfig().Streams, "data streams multiplexed on the connection (1-64)")
	fs.DurationVar(&f.stallTimeout, "stall-timeout", transport.DefaultStallTimeout, "end the round when nothing came from the receiver for this long (a dead link); the next round resumes")
	fs.DurationVar(&f.prepareTimeout, "prepare-timeout", transport.DefaultConfig().PrepareTimeout, "how long to wait for the receiver to accept the round (it may first index a target it has no state for)")
	fs.StringVar(&f.bwlimit, "bwlimit", "", "cap the sending rate, e.g. 100Mbit, 12MiB, 500k (per second; default unlimited)")
	fs.StringVar(&f.statsJSON, "stats-json", "", "write the round's statistics as JSON to this file ('-' for stdout)")
	fs.StringVar(&f.compress, "compress", string(transport.CompressionFastest), "zstd level for chunks: off, fastest, default or better")
	fs.IntVar(&f.opt.ScanWorkers, "workers", 0, "segments chunked in parallel (default: all cores)")
	fs.BoolVarP(&f.quiet, "quiet", "q", false, "print no summary line or progress")
	f.pf.register(c)
	f.hf.register(fs)
	f.cf.register(fs)
	f.lf.register(fs, "warn")
	return c
}

// options checks the flags and turns them into sendOptions.
func (f *sendFlags) options(c *cobra.Command) (sendOptions, error) {
	opt := f.opt
	for flag, v := range map[string]string{"--source": opt.Source, "--to": opt.Addr, "--volume": opt.Volume} {
		if v == "" {
			return sendOptions{}, usagef(c, "%s is required", flag)
		}
	}
	if err := transport.ValidateVolumeName(opt.Volume); err != nil {
		return sendOptions{}, usagef(c, "%v", err)
	}
	cfg, err := f.tf.config(c, false)
	if err != nil {
		return sendOptions{}, err
	}
	cfg.Streams = f.streams
	cfg.StallTimeout, cfg.PrepareTimeout = f.stallTimeout, f.prepareTimeout
	if f.bwlimit != "" {
		if cfg.BandwidthLimit, err = transport.ParseRate(f.bwlimit); err != nil {
			return sendOptions{}, usagef(c, "--bwlimit: %v", err)
		}
	}
	if err := cfg.Validate(); err != nil {
		return sendOptions{}, usagef(c, "%v", err)
	}
	opt.Transport = cfg
	if opt.Params, err = f.cf.params(c); err != nil {
		return sendOptions{}, err
	}
	opt.Compression = transport.CompressionLevel(f.compress)
	if _, err := transport.NewCompressor(opt.Compression); err != nil {
		return sendOptions{}, usagef(c, "--compress: %v", err)
	}
	if err := f.hf.apply(c, &opt); err != nil {
		return sendOptions{}, err
	}
	if opt.Logger, err = f.lf.logger(c, stderr); err != nil {
		return sendOptions{}, err
	}
	pr, err := f.pf.newProgress(c, f.quiet, phasesSend)
	if err != nil {
		return sendOptions{}, err
	}
	return sendOptions{Sync: opt, StatsJSON: f.statsJSON, Quiet: f.quiet, Progress: pr}, nil
}

// runSend runs one round, writes its statistics and prints its summary
// on w.
func runSend(ctx context.Context, o sendOptions, w io.Writer) (*agent.Stats, error) {
	if o.Progress != nil {
		o.Sync.Progress = o.Progress.update
	}
	stats, err := agent.Sync(ctx, o.Sync)
	if o.Progress != nil {
		o.Progress.finish()
	}
	if err != nil {
		return nil, err
	}
	if err := writeStatsJSON(o.StatsJSON, stats); err != nil {
		return stats, err
	}
	if !o.Quiet {
		printSendSummary(w, stats)
	}
	return stats, nil
}

func printSendSummary(w io.Writer, stats *agent.Stats) {
	fmt.Fprintf(w, "voldelta: %s generation %d committed (root %s): %d of %d chunks sent, %s of %s raw, %s on the wire, %d copied locally, in %.1fs\n",
		stats.Volume, stats.Generation, stats.RootHash[:16], stats.ChunksSent, stats.ChunksTotal,
		humanBytes(stats.BytesSentRaw), humanBytes(stats.SourceBytes), humanBytes(uint64(stats.WireBytes)),
		stats.ChunksCopied, stats.DurationSeconds)
	fmt.Fprintf(w, "voldelta: %s scan read %s of %s%s; manifest %s on the wire (%d entries sent, %d copied from the receiver's); %d chunks sent as their changed bytes\n",
		stats.ScanMode, humanBytes(stats.BytesRead), humanBytes(stats.SourceBytes), scanWhy(stats),
		humanBytes(stats.ManifestBytes), stats.ManifestEntriesSent, stats.ManifestEntriesCopied, stats.ChunksPatched)
}

// writeStatsJSON writes a command's statistics to --stats-json's path, if
// one was given.
func writeStatsJSON(path string, v any) error {
	if path == "" {
		return nil
	}
	if err := writeJSON(path, v); err != nil {
		return fmt.Errorf("write --stats-json: %w", err)
	}
	return nil
}

func writeJSON(path string, v any) error {
	if path == "-" {
		return writeJSONTo(os.Stdout, v)
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// writeJSONTo writes v to w as indented JSON and a newline.
func writeJSONTo(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// scanWhy says what a round's scan was based on, for the summary line.
func scanWhy(st *agent.Stats) string {
	if st.ScanMode == agent.ScanIncremental {
		return fmt.Sprintf(" (%s changed per the %s hints)", humanBytes(st.ChangedBytes), st.HintSource)
	}
	if st.FullScanReason != "" {
		return " (" + st.FullScanReason + ")"
	}
	return ""
}
