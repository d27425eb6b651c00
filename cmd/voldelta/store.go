package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/voldelta/voldelta/agent"
	"github.com/voldelta/voldelta/hint"
	"github.com/voldelta/voldelta/objstore"
	"github.com/voldelta/voldelta/receiver"
	"github.com/voldelta/voldelta/transport"
)

// storeHelp is shared by push, pull and gc.
const storeHelp = `
The store is s3://BUCKET/PREFIX on any S3-compatible server (MinIO, AWS S3,
Ceph RGW, ...). Under the prefix, chunks/ holds one zstd-compressed object per
distinct chunk (shared by every volume and generation that holds it) and
manifests/VOLUME/GENERATION one manifest per generation, written last: a
generation is visible only when complete.

Connection: --endpoint HOST:PORT (default: $AWS_ENDPOINT_URL, which may be a
URL such as https://minio.example:9000, else s3.amazonaws.com). HTTPS is used
unless --insecure asks for plain HTTP. Credentials come from
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), else from
the shared credentials file (AWS_SHARED_CREDENTIALS_FILE or
~/.aws/credentials, profile AWS_PROFILE or "default"). Transient failures are
retried with backoff; bad credentials and a missing bucket fail at once.`

// storeFlags locate a store.
type storeFlags struct {
	url, endpoint, region string
	insecure              bool
	parallel              int
	rate                  float64 // bytes per second written to the store; 0: unlimited
}

func (f *storeFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.url, "store", "", "the store, s3://BUCKET/PREFIX (required)")
	fs.StringVar(&f.endpoint, "endpoint", "", "S3 endpoint HOST:PORT or URL (default: $AWS_ENDPOINT_URL, else s3.amazonaws.com)")
	fs.BoolVar(&f.insecure, "insecure", false, "speak plain HTTP to the endpoint instead of HTTPS (trusted networks and tests only)")
	fs.StringVar(&f.region, "region", "", "bucket region (default: $AWS_REGION, else asked from the store)")
	fs.IntVar(&f.parallel, "parallel", objstore.DefaultParallel, "concurrent requests to the store (1-256)")
}

func (f *storeFlags) open(c *cobra.Command, lf *logFlags) (*objstore.Store, error) {
	if f.url == "" {
		return nil, usagef(c, "--store s3://BUCKET/PREFIX is required")
	}
	bucket, prefix, err := objstore.ParseStoreURL(f.url)
	if err != nil {
		return nil, usagef(c, "--store: %v", err)
	}
	if f.parallel < 1 || f.parallel > 256 {
		return nil, usagef(c, "--parallel %d: want 1-256", f.parallel)
	}
	ep := f.endpoint
	flag := "--endpoint"
	if ep == "" {
		ep, flag = os.Getenv("AWS_ENDPOINT_URL"), "AWS_ENDPOINT_URL"
	}
	if ep != "" {
		if ep, err = objstore.ParseEndpoint(ep, f.insecure); err != nil {
			return nil, usagef(c, "%s: %v", flag, err)
		}
	}
	log, err := lf.logger(c, stderr)
	if err != nil {
		return nil, err
	}
	return objstore.Open(c.Context(), objstore.Config{Endpoint: ep, Insecure: f.insecure, Bucket: bucket, Prefix: prefix,
		Region: f.region, BandwidthLimit: f.rate, Logger: log})
}

// pushFlags are the flags of push.
type pushFlags struct {
	sf                                                  storeFlags
	cf                                                  chunkFlags
	lf                                                  logFlags
	pf                                                  progressFlags
	opt                                                 objstore.PushOptions
	source, compress, bwlimit, statsJSON, base, changed string
	quiet                                               bool
}

// pushOptions are what a push does, from its flags.
type pushOptions struct {
	Source    string
	Push      objstore.PushOptions
	StatsJSON string
	Quiet     bool
	Progress  progressSink
}

func newPushCmd() *cobra.Command {
	var f pushFlags
	c := &cobra.Command{
		Use:   "push --source PATH --store s3://BUCKET/PREFIX --volume NAME [flags]",
		Short: "Store a new generation of a volume in an S3-compatible object store",
		Long: `push reads the source (a block device or image file, ideally a snapshot),
cuts it into content-defined chunks and stores it as the volume's next
generation: it uploads only the chunks the store does not hold yet, then the
manifest. Which chunks the store holds is known from the latest manifest of
this and every other volume (--own-volume-only: this one), not from listing
the bucket, so a push after a small change uploads about what changed.
` + storeHelp + `

Change hints: a push reads the whole source unless told what changed since
the image the volume's latest generation was pushed from. Every push records
the identity of its --source (device, inode, size and change time of a file)
with the generation. --base FILE names that earlier image: the source must be
a reflinked copy (cp --reflink=always) of the same file, on the same
filesystem (XFS with reflink, btrfs), made after FILE was; only the extents
the two do not share are read. --changed FILE names a changed-extent list
instead (see docs/change-hints.md), which the writer vouches is relative to
the image the latest generation was pushed from. The hints are used only
when the latest generation was pushed with the same chunk sizes and, with
--base, from FILE as it is now (a base modified, moved or replaced since
does not match); otherwise, and when the filesystem cannot tell (no shared
extents, another filesystem), the push reads the whole source and
--stats-json says why (scan_mode "full", full_scan_reason). Hints that miss
a change cannot be detected: the generation then holds the old bytes there.
--full-scan ignores the hints and reads everything; run one now and then.

Run gc with the same --grace as push: a push has that long from reading the
store to writing its manifest (one slower than half of it refreshes its
chunks first), and gc never removes a chunk that such a push may rely on.

--stats-json writes one JSON object ('-' for stdout): store, volume,
generation, root_hash, base_generation, source_bytes, chunks_total,
chunks_distinct, chunks_reused, chunks_uploaded, bytes_uploaded_raw,
bytes_uploaded (as stored, manifest included), manifest_bytes, retries,
chunks_confirmed and chunks_repaired (with --confirm-all), scan_mode
("incremental" or "full"), full_scan_reason, hint_source, changed_bytes (the
hints' extents), bytes_read (what the scan read from the source),
reused_bytes (taken from the previous generation unread), scan_seconds,
duration_seconds, and more.`,
		Example: `  export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...
  voldelta push --source /dev/vg0/db-snap --store s3://backups/dc1 --volume db \
      --endpoint minio.dc2.example:9000
  voldelta push --source disk.img --store s3://test/vd --volume demo \
      --endpoint 127.0.0.1:9000 --insecure --stats-json -
  # reflinked snapshots of a live image (XFS, btrfs): the first push reads it
  # all, the next only what changed since the snapshot the last one pushed
  cp --reflink=always vm.img vm-1.img
  voldelta push --source vm-1.img --store s3://backups/dc1 --volume vm
  cp --reflink=always vm.img vm-2.img
  voldelta push --source vm-2.img --base vm-1.img --store s3://backups/dc1 --volume vm && rm vm-1.img`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			o, err := f.options(c)
			if err != nil {
				return err
			}
			s, err := f.sf.open(c, &f.lf)
			if err != nil {
				return err
			}
			_, err = runPush(c.Context(), s, o, stderr)
			return err
		},
	}
	fs := c.Flags()
	fs.StringVar(&f.source, "source", "", "block device or image file to store (required)")
	fs.StringVar(&f.opt.Volume, "volume", "", "volume name in the store (required)")
	fs.StringVar(&f.base, "base", "", "the image the volume's latest generation was pushed from, of which --source is a later reflinked copy on the same filesystem: read only the extents they do not share")
	fs.StringVar(&f.changed, "changed", "", "a file listing the extents of --source that may differ from the image the latest generation was pushed from (docs/change-hints.md): read only those")
	fs.BoolVar(&f.opt.FullScan, "full-scan", false, "read the whole source even with --base or --changed")
	f.sf.register(fs)
	fs.StringVar(&f.compress, "compress", string(transport.CompressionFastest), "zstd level for chunk objects: off, fastest, default or better")
	fs.IntVar(&f.opt.ScanWorkers, "workers", 0, "segments chunked in parallel (default: all cores)")
	fs.BoolVar(&f.opt.OwnVolumeOnly, "own-volume-only", false, "deduplicate only against this volume's latest generation")
	fs.BoolVar(&f.opt.ConfirmAll, "confirm-all", false, "check every chunk reused from earlier generations (HEAD: present, size and checksum metadata) and re-upload any that is missing or damaged, from the source's bytes; the repair a failed pull names")
	fs.BoolVar(&f.opt.VerifyChunks, "verify-chunks", false, "like --confirm-all, but download, decode and re-hash every reused chunk (finds damage a HEAD cannot see, at the cost of reading them all)")
	fs.DurationVar(&f.opt.Grace, "grace", objstore.DefaultGrace, "the gc grace period of this store (use gc's value)")
	fs.StringVar(&f.bwlimit, "bwlimit", "", "cap the upload rate, e.g. 100Mbit, 12MiB (default: unlimited)")
	fs.StringVar(&f.statsJSON, "stats-json", "", "write the push's statistics as JSON to this file ('-' for stdout)")
	fs.BoolVarP(&f.quiet, "quiet", "q", false, "print no summary line or progress")
	f.pf.register(c)
	f.cf.register(fs)
	f.lf.register(fs, "warn")
	return c
}

// options checks push's flags and turns them into pushOptions.
func (f *pushFlags) options(c *cobra.Command) (pushOptions, error) {
	opt := f.opt
	if f.source == "" || opt.Volume == "" {
		return pushOptions{}, usagef(c, "--source and --volume are required")
	}
	if err := transport.ValidateVolumeName(opt.Volume); err != nil {
		return pushOptions{}, usagef(c, "%v", err)
	}
	var err error
	if opt.Params, err = f.cf.params(c); err != nil {
		return pushOptions{}, err
	}
	opt.Compression = transport.CompressionLevel(f.compress)
	if _, err := transport.NewCompressor(opt.Compression); err != nil {
		return pushOptions{}, usagef(c, "--compress: %v", err)
	}
	if opt.Grace <= 0 {
		return pushOptions{}, usagef(c, "--grace %s: want a positive duration", opt.Grace)
	}
	if f.bwlimit != "" {
		if f.sf.rate, err = transport.ParseRate(f.bwlimit); err != nil {
			return pushOptions{}, usagef(c, "--bwlimit: %v", err)
		}
	}
	if opt.Hints, err = hint.FromFlags(f.source, f.base, f.changed); err != nil {
		return pushOptions{}, usagef(c, "%v", err)
	}
	pr, err := f.pf.newProgress(c, f.quiet, phasesUpload)
	if err != nil {
		return pushOptions{}, err
	}
	opt.Parallel = f.sf.parallel
	return pushOptions{Source: f.source, Push: opt, StatsJSON: f.statsJSON, Quiet: f.quiet, Progress: pr}, nil
}

// runPush stores the source as the volume's next generation in s, writes
// the statistics and prints the summary on w.
func runPush(ctx context.Context, s *objstore.Store, o pushOptions, w io.Writer) (*objstore.PushStats, error) {
	opt := o.Push
	// The identity is taken before the source is read: a source written
	// after it no longer matches it as a later push's base.
	var err error
	if opt.Image, err = hint.FileIdentity(o.Source); err != nil {
		return nil, fmt.Errorf("identity of %s: %w", o.Source, err)
	}
	f, size, err := agent.OpenSource(o.Source)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if pr := o.Progress; pr != nil {
		opt.Progress = func(p objstore.PushProgress) {
			pr.update(agent.Progress{SourceBytes: p.SourceBytes, ScannedBytes: p.ScannedBytes, ScanDone: p.ScanDone,
				NeedBytes: p.UploadBytes, SentBytes: p.UploadedBytes})
		}
	}
	st, err := s.Push(ctx, f, size, opt)
	if o.Progress != nil {
		o.Progress.finish()
	}
	if err != nil {
		return nil, fmt.Errorf("push %s: %w", opt.Volume, err)
	}
	if err := writeStatsJSON(o.StatsJSON, st); err != nil {
		return st, err
	}
	if !o.Quiet {
		printPushSummary(w, st, opt.Hints != nil)
	}
	return st, nil
}

func printPushSummary(w io.Writer, st *objstore.PushStats, hinted bool) {
	if st.ScanMode == objstore.ScanIncremental {
		fmt.Fprintf(w, "voldelta: read %s of %s (%s changed, per the %s hints)\n",
			humanBytes(st.BytesRead), humanBytes(st.SourceBytes), humanBytes(st.ChangedBytes), st.HintSource)
	} else if hinted {
		fmt.Fprintf(w, "voldelta: full scan: %s\n", st.FullScanReason)
	}
	fmt.Fprintf(w, "voldelta: %s generation %d stored (root %s): %d of %d chunks uploaded (%d already in the store), %s of %s raw, %s stored, in %.1fs\n",
		st.Volume, st.Generation, st.RootHash[:16], st.ChunksUploaded, st.ChunksDistinct, st.ChunksReused,
		humanBytes(st.BytesUploadedRaw), humanBytes(st.SourceBytes), humanBytes(st.BytesUploaded), st.DurationSeconds)
}

// pullFlags are the flags of pull.
type pullFlags struct {
	sf                        storeFlags
	lf                        logFlags
	pf                        progressFlags
	opt                       objstore.PullOptions
	verify, buffer, statsJSON string
	quiet                     bool
}

// pullOptions are what a pull does, from its flags.
type pullOptions struct {
	Pull      objstore.PullOptions
	StatsJSON string
	Quiet     bool
	Progress  progressSink
}

func newPullCmd() *cobra.Command {
	var f pullFlags
	c := &cobra.Command{
		Use:   "pull --store s3://BUCKET/PREFIX --volume NAME --target PATH --state-dir DIR [flags]",
		Short: "Apply a generation from an object store to a target, in place",
		Long: `pull writes a generation of a volume (the latest, or --generation) into the
target (a block device or an image file, created if missing) exactly as
'receive' applies a sync round: what is already in place is skipped, what is
elsewhere in the target is copied locally, and only the rest is downloaded.
Writes are journaled; the new state is committed only after the target was
fsynced and verified against the generation's root hash. An interrupted pull
is resumed by the next one, which downloads only what is still missing.

The state directory keeps, per volume, the manifest of what the target holds
(so the next pull does not re-read it), the receiver's generation counter and
store.json, naming the store generation last pulled. 'voldelta status
--state-dir DIR' shows whether the target is current.
` + storeHelp + `

--stats-json writes one JSON object ('-' for stdout): store, volume,
generation (the store's), local_generation (committed in --state-dir),
resumed, root_hash, source_bytes, entries (data chunks and zero runs),
chunks_total (data chunks), chunks_skipped (entries in place),
chunks_copied, chunks_fetched, bytes_fetched_raw, bytes_downloaded (as
stored, manifest included), manifest_bytes, retries, duration_seconds.`,
		Example: `  voldelta pull --store s3://backups/dc1 --volume db --endpoint minio.dc2.example:9000 \
      --target /dev/vg0/db-replica --state-dir /var/lib/voldelta
  voldelta pull --store s3://test/vd --volume demo --generation 3 \
      --endpoint 127.0.0.1:9000 --insecure --target replica.img --state-dir state --stats-json -`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			o, err := f.options(c)
			if err != nil {
				return err
			}
			s, err := f.sf.open(c, &f.lf)
			if err != nil {
				return err
			}
			_, err = runPull(c.Context(), s, o, stderr)
			return err
		},
	}
	fs := c.Flags()
	fs.StringVar(&f.opt.Volume, "volume", "", "volume name in the store and in --state-dir (required)")
	fs.StringVar(&f.opt.Target, "target", "", "block device or image file to write (required; a file is created if missing)")
	fs.StringVar(&f.opt.StateDir, "state-dir", "", "directory keeping the target's state (required)")
	fs.Uint64Var(&f.opt.Generation, "generation", 0, "store generation to apply (default: the latest)")
	f.sf.register(fs)
	fs.StringVar(&f.verify, "verify", string(receiver.VerifyWritten), "check before commit: written (read back what was written; kept ranges too when nothing vouches for them) or full (read back every range)")
	fs.StringVar(&f.buffer, "apply-buffer", "64MiB", "memory for chunks that arrive before they may be written")
	fs.StringVar(&f.statsJSON, "stats-json", "", "write the pull's statistics as JSON to this file ('-' for stdout)")
	fs.BoolVarP(&f.quiet, "quiet", "q", false, "print no summary line or progress")
	f.pf.register(c)
	f.lf.register(fs, "warn")
	return c
}

// options checks pull's flags and turns them into pullOptions.
func (f *pullFlags) options(c *cobra.Command) (pullOptions, error) {
	opt := f.opt
	if opt.Volume == "" || opt.Target == "" || opt.StateDir == "" {
		return pullOptions{}, usagef(c, "--volume, --target and --state-dir are required")
	}
	if err := transport.ValidateVolumeName(opt.Volume); err != nil {
		return pullOptions{}, usagef(c, "%v", err)
	}
	verify, buffer, err := applyFlags(c, f.verify, f.buffer)
	if err != nil {
		return pullOptions{}, err
	}
	log, err := f.lf.logger(c, stderr)
	if err != nil {
		return pullOptions{}, err
	}
	pr, err := f.pf.newProgress(c, f.quiet, phasesPull)
	if err != nil {
		return pullOptions{}, err
	}
	opt.Receiver = receiver.Options{Verify: verify, ApplyBuffer: buffer, Logger: log}
	opt.Parallel = f.sf.parallel
	return pullOptions{Pull: opt, StatsJSON: f.statsJSON, Quiet: f.quiet, Progress: pr}, nil
}

// runPull applies a generation from s to the target, writes the
// statistics and prints the summary on w.
func runPull(ctx context.Context, s *objstore.Store, o pullOptions, w io.Writer) (*objstore.PullStats, error) {
	opt := o.Pull
	if pr := o.Progress; pr != nil {
		opt.Receiver.Progress = func(p receiver.ApplyProgress) { pr.update(pullProgress(p)) }
	}
	st, err := s.Pull(ctx, opt)
	if o.Progress != nil {
		o.Progress.finish()
	}
	if err != nil {
		var ce *objstore.ChunkError
		if st != nil && st.BytesDownloaded > 0 && !o.Quiet && !errors.As(err, &ce) {
			fmt.Fprintf(w, "voldelta: pull interrupted after downloading %s; the next pull resumes it\n", humanBytes(st.BytesDownloaded))
		}
		return st, fmt.Errorf("pull %s: %w", opt.Volume, err)
	}
	if err := writeStatsJSON(o.StatsJSON, st); err != nil {
		return st, err
	}
	if !o.Quiet {
		resumed := ""
		if st.Resumed {
			resumed = ", resuming an interrupted pull"
		}
		fmt.Fprintf(w, "voldelta: %s generation %d applied to %s (root %s, local generation %d%s): %d chunks downloaded (%s), %d copied locally, %d of %d entries already in place, in %.1fs\n",
			st.Volume, st.Generation, opt.Target, st.RootHash[:16], st.LocalGeneration, resumed, st.ChunksFetched, humanBytes(st.BytesDownloaded),
			st.ChunksCopied, st.ChunksSkipped, st.Entries, st.DurationSeconds)
	}
	return st, nil
}

// pullProgress shows an apply as a transfer: the plan (the manifest
// classified against the target: what is in place, copied, fetched), then
// the fetches.
func pullProgress(p receiver.ApplyProgress) agent.Progress {
	scanned := uint64(0)
	if p.Planned {
		scanned = p.SourceBytes
	}
	return agent.Progress{SourceBytes: p.SourceBytes, ScannedBytes: scanned, ScanDone: p.Planned,
		NeedBytes: p.NeedBytes, SentBytes: p.FetchedBytes}
}

func newGCCmd() *cobra.Command {
	var (
		sf        storeFlags
		lf        logFlags
		opt       objstore.GCOptions
		statsJSON string
		quiet     bool
	)
	c := &cobra.Command{
		Use:   "gc --store s3://BUCKET/PREFIX [--keep N] [flags]",
		Short: "Remove old generations and unreferenced chunks from an object store",
		Long: `gc removes, for every volume, the generations beyond the newest --keep
(default: keep all), and the chunk objects no remaining generation
references (for example those of an interrupted push).

It is safe to run while pushes run, with the rule: a chunk is removed only
if no generation references it, no generation removed less than --grace ago
references it, and the chunk object is older than --grace; a push writes its
manifest within --grace of reading the store. So the chunks of generations
removed now are deleted by a gc that runs --grace later. --grace 0 removes
them at once, and is safe only when no push runs. Give push the same --grace.
` + storeHelp + `

--stats-json writes one JSON object ('-' for stdout): manifests_kept,
manifests_removed, chunks_referenced, chunks_kept, chunks_young,
chunks_removed, bytes_removed, trash_removed, duration_seconds, and more.`,
		Example: `  voldelta gc --store s3://backups/dc1 --endpoint minio.dc2.example:9000 --keep 7
  voldelta gc --store s3://test/vd --endpoint 127.0.0.1:9000 --insecure --keep 1 --grace 0 --dry-run`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			if opt.Keep < 0 {
				return usagef(c, "--keep %d: want 0 (all) or more", opt.Keep)
			}
			switch {
			case opt.Grace < 0:
				return usagef(c, "--grace %s: want 0 or more", opt.Grace)
			case opt.Grace == 0:
				opt.Grace = -1 // none
			}
			s, err := sf.open(c, &lf)
			if err != nil {
				return err
			}
			opt.Parallel = sf.parallel
			st, err := s.GC(c.Context(), opt)
			if err != nil {
				return fmt.Errorf("gc: %w", err)
			}
			if err := writeStatsJSON(statsJSON, st); err != nil {
				return err
			}
			if !quiet {
				what := "removed"
				if opt.DryRun {
					what = "would remove"
				}
				fmt.Fprintf(stderr, "voldelta: gc %s %d generations and %d chunks (%s); kept %d generations and %d chunks (%d unreferenced but younger than the grace), in %.1fs\n",
					what, st.ManifestsRemoved, st.ChunksRemoved, humanBytes(st.BytesRemoved), st.ManifestsKept, st.ChunksKept, st.ChunksYoung, st.DurationSeconds)
			}
			return nil
		},
	}
	fs := c.Flags()
	sf.register(fs)
	fs.IntVar(&opt.Keep, "keep", 0, "generations to keep per volume, newest first (0: all)")
	fs.DurationVar(&opt.Grace, "grace", objstore.DefaultGrace, "protect chunks and removed generations younger than this (0: none, only when no push runs)")
	fs.BoolVar(&opt.DryRun, "dry-run", false, "report what would be removed, remove nothing")
	fs.StringVar(&statsJSON, "stats-json", "", "write the statistics as JSON to this file ('-' for stdout)")
	fs.BoolVarP(&quiet, "quiet", "q", false, "print no summary line")
	lf.register(fs, "warn")
	return c
}
