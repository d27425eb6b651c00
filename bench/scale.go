package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// `bench scale` (make bench-scale): the time of one delta round against
// the volume's size. The same fixed delta (DeltaPlan) is applied to random
// images of each size on an XFS with reflinks, and every row syncs it over
// the same shaped link: voldelta with a full scan, with reflink hints
// (--base), with the harness's own list of changes (--changed), rsync
// --inplace, restic backup + in-place restore. See bench/README.md.

// ScaleConfig is a scale run's configuration.
type ScaleConfig struct {
	*Config
	Sizes        []int  // GiB
	Results      string // where scale.md, scale.json and scale.png go
	ResticMaxGiB int    // restic rows only up to this size
	Verify       string // ranges or full
	// Before is a voldelta binary from before the change-hint work (make
	// bench-scale builds it from the commit scripts/ensure-voldelta-before.sh
	// names): its full-scan round is the bound "no worse without hints".
	Before string
}

// beforeNoise is how much slower than the voldelta from before the
// change-hint work (the voldelta-before row) a full scan may be and still
// count as no worse: the run-to-run spread of a round on this kind of
// shared disk.
const beforeNoise = 0.05

// sendFlags are the `voldelta send` flags rows depend on.
var sendFlags = []string{"--base", "--changed", "--cache-dir"}

func scaleMain(args []string) int {
	log.SetPrefix("bench scale: ")
	cfg, err := parseScaleFlags(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(os.Stderr, "bench scale:", err)
		return 2
	}
	tools := []string{"ip", "tc", "losetup", "mkfs.xfs", "mount", "umount", "blockdev", "cp", "sync", "rsync", "gnuplot", "/usr/bin/time"}
	err = runHarness(cfg.Config, tools, func(ctx context.Context, b *Bench) error {
		return b.runScale(ctx, cfg)
	})
	if err != nil {
		log.Printf("FAILED: %v", err)
		return 1
	}
	return 0
}

func parseScaleFlags(args []string) (*ScaleConfig, error) {
	fs := flag.NewFlagSet("bench scale", flag.ContinueOnError)
	sizes := fs.String("sizes", envOr("SIZES", "1 4 16"), "volume sizes in GiB, space- or comma-separated (default $SIZES or 1 4 16)")
	results := fs.String("results", "bench/results", "directory for scale.md, scale.json and scale.png")
	resticMax, _ := strconv.Atoi(envOr("RESTIC_MAX_GIB", "1"))
	rmax := fs.Int("restic-max-gib", resticMax, "run the restic row only at sizes up to this (GiB; default $RESTIC_MAX_GIB or 1)")
	verify := fs.String("verify", "ranges", "check of every target after its round: ranges (the changed ranges ±64 KiB and 64 random MiB, byte for byte) or full (every byte)")
	before := fs.String("voldelta-before", os.Getenv("VOLDELTA_BEFORE"), "voldelta binary from before the change-hint work: its full-scan round, in a row of its own, is what the full scan must be no worse than (default $VOLDELTA_BEFORE; empty: no such row)")
	finish := commonFlags(fs, "/var/tmp/voldelta-bench-scale")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: bench scale [flags]   (as root; see bench/README.md)\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	cfg := &ScaleConfig{Config: &Config{Scale: Scale{Name: "scale"}}, ResticMaxGiB: *rmax, Verify: *verify, Before: *before}
	if *verify != "ranges" && *verify != "full" {
		return nil, fmt.Errorf("-verify %q: want ranges or full", *verify)
	}
	var err error
	if cfg.Sizes, err = parseSizes(*sizes); err != nil {
		return nil, err
	}
	if cfg.Results, err = filepath.Abs(*results); err != nil {
		return nil, err
	}
	if cfg.Before != "" {
		if cfg.Before, err = filepath.Abs(cfg.Before); err != nil {
			return nil, err
		}
		if _, err := os.Stat(cfg.Before); err != nil {
			return nil, fmt.Errorf("-voldelta-before: %w (scripts/ensure-voldelta-before.sh builds it)", err)
		}
	}
	return cfg, finish(cfg.Config, "scale")
}

func envOr(k, def string) string {
	if v := strings.TrimSpace(os.Getenv(k)); v != "" {
		return v
	}
	return def
}

// parseSizes reads "1 4 16" or "1,4,16" (GiB).
func parseSizes(s string) ([]int, error) {
	var out []int
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' }) {
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("size %q: want a whole number of GiB ≥ 1", f)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, errors.New("no sizes given")
	}
	return out, nil
}

// parseRate reads tc's rate ("100mbit", "1gbit", "500kbit") in bits/s.
func parseRate(s string) (float64, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	mult := map[string]float64{"kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "bit": 1}
	for _, suf := range []string{"kbit", "mbit", "gbit", "bit"} {
		if v, ok := strings.CutSuffix(s, suf); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil || n <= 0 {
				break
			}
			return n * mult[suf], nil
		}
	}
	return 0, fmt.Errorf("rate %q: want e.g. 100mbit", s)
}

// helpFlags are the long flags a --help text lists.
func helpFlags(help string) []string {
	seen := map[string]bool{}
	var out []string
	for _, m := range regexp.MustCompile(`(?m)^\s+(?:-\w, )?(--[a-z][a-z0-9-]*)`).FindAllStringSubmatch(help, -1) {
		if !seen[m[1]] {
			seen[m[1]] = true
			out = append(out, m[1])
		}
	}
	sort.Strings(out)
	return out
}

func (b *Bench) runScale(ctx context.Context, sc *ScaleConfig) error {
	start := time.Now()
	b.step = "scale"
	b.dropAll = true
	res := &ScaleResults{Started: start.Format(time.RFC3339), Command: sc.Command, Machine: b.res.Machine,
		Versions: b.res.Versions, Link: b.res.Link, Verify: sc.Verify, ResticMaxGiB: sc.ResticMaxGiB}
	delete(res.Versions, "mariadb")
	res.Commit, _ = sh(ctx, "git", "rev-parse", "HEAD")
	res.Versions["voldelta binary"], _ = sh(ctx, b.cfg.Voldelta, "--version")
	if sc.Before != "" {
		res.Versions["voldelta before the change-hint work"], _ = sh(ctx, sc.Before, "--version")
	}
	if out, _ := sh(ctx, "git", "status", "--porcelain", "--untracked-files=no"); out != "" {
		res.TreeDirty = strings.Split(out, "\n")
	}
	res.Versions["xfsprogs"], _ = sh(ctx, "mkfs.xfs", "-V")
	var err error
	if res.RateBitsPerSec, err = parseRate(b.cfg.Rate); err != nil {
		return err
	}
	// Which of the flags the rows need this voldelta has.
	help, herr := sh(ctx, b.cfg.Voldelta, "send", "--help")
	if herr != nil {
		return fmt.Errorf("voldelta send --help: %w", herr)
	}
	os.WriteFile(filepath.Join(b.cfg.Out, "logs", "voldelta-send-help.txt"), []byte(help+"\n"), 0o644)
	have := helpFlags(help)
	res.SendFlags = map[string]bool{}
	var missing []string
	for _, f := range sendFlags {
		if res.SendFlags[f] = has(have, f); !res.SendFlags[f] {
			missing = append(missing, f)
		}
	}
	if len(missing) > 0 {
		log.Printf("voldelta send has no %s (its --help lists %s): the rows that need them are skipped", strings.Join(missing, ", "), strings.Join(have, " "))
	}
	res.HelpFlags = have
	b.sendHas = res.SendFlags
	if res.Probe, err = b.topo.probeLink(ctx, 24*mib, 3); err != nil {
		return err
	}
	finish := func(print bool) error {
		res.Finished = time.Now().Format(time.RFC3339)
		res.TotalSeconds = time.Since(start).Seconds()
		res.Machine.LoadAfter = loadavg()
		return writeScaleResults(sc.Results, res, print)
	}
	for _, gib := range sc.Sizes {
		if err := ctx.Err(); err != nil {
			break
		}
		t := time.Now()
		sr := &ScaleSize{GiB: gib, Bytes: int64(gib) << 30, Setup: map[string]float64{}}
		res.Sizes = append(res.Sizes, sr)
		log.Printf("=== %d GiB", gib)
		if err := b.scaleSize(ctx, sc, res, sr); err != nil {
			sr.Error = err.Error()
			log.Printf("%d GiB failed: %v", gib, err)
		}
		sr.Seconds = time.Since(t).Seconds()
		log.Printf("=== %d GiB done in %.0fs", gib, sr.Seconds)
		if err := finish(false); err != nil { // what has run so far survives a later failure
			return err
		}
	}
	if err := finish(true); err != nil {
		return err
	}
	for _, sr := range res.Sizes {
		if sr.Error != "" {
			return fmt.Errorf("%d GiB: %s", sr.GiB, firstLine(sr.Error))
		}
	}
	return ctx.Err()
}

// scaleWorld is one size's volume and files: one XFS with reflinks on a
// loop device with direct I/O, the source's files under src/ (the live
// image, its snapshots: reflinks of it), the destination's under dst/ (the
// replica, first a reflink of snapshot 1; the rsync and restic targets,
// reflinks of the replica when they start). One filesystem, so the
// replica costs no second write of the volume; direct I/O below it, so no
// reader is served the blocks another read through the host's page cache
// (each file has its own page cache in the XFS, dropped before each step).
type scaleWorld struct {
	*world
	srcDir    string
	live      string // the source's live image
	replica   string // voldelta's target
	state     string // the receiver's state directory
	cache     string // the agent's --cache-dir
	changed   string // the --changed file
	resticSrc string // directory restic backs up: vol.img, a reflink of the newest snapshot
	resticDst string // restic's in-place restore target
	rsyncDst  string // rsync daemon's module: vol.img
	gen       int    // newest snapshot
	plan      DeltaPlan
}

func (s *scaleWorld) snap(n int) string {
	return filepath.Join(s.srcDir, fmt.Sprintf("snap-%d.img", n))
}

// freeBytes is the space available to the work directory's filesystem.
func freeBytes(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * st.Bsize, nil
}

func reflink(from, to string) error {
	_, err := sh(context.Background(), "cp", "--reflink=always", from, to)
	return err
}

func (b *Bench) scaleSize(ctx context.Context, sc *ScaleConfig, res *ScaleResults, sr *ScaleSize) error {
	size := sr.Bytes
	b.step = fmt.Sprintf("%dgib", sr.GiB)
	restic := sr.GiB <= sc.ResticMaxGiB
	// Written for real: the live image; restic's repository (MinIO)
	// about once more. Snapshots and targets are reflinks; each
	// generation adds its 96 MiB delta to the image and each target.
	need := size + 3<<30
	if restic {
		need += size + size/8
	}
	if free, err := freeBytes(b.cfg.Work); err != nil {
		return err
	} else if free < need {
		sr.Skipped = fmt.Sprintf("needs %.1f GiB free under %s, has %.1f GiB", float64(need)/(1<<30), b.cfg.Work, float64(free)/(1<<30))
		log.Printf("%d GiB skipped: %s", sr.GiB, sr.Skipped)
		return nil
	}
	plan, err := planDelta(size, uint64(sr.GiB))
	if err != nil {
		return err
	}
	res.Delta = describeDelta(plan, res.RateBitsPerSec)
	name := fmt.Sprintf("scale-%dgib", sr.GiB)
	s := &scaleWorld{world: &world{name: name, bucket: "restic-" + name, vdBucket: "voldelta-" + name}, plan: plan}
	defer s.world.close()
	volSize := size + 4<<30
	if restic {
		volSize += size + size/4
	}
	if s.src, err = b.xfsVolume(ctx, "scale", volSize); err != nil {
		return err
	}
	s.srcDir = filepath.Join(s.src.Mount, "src")
	dst := filepath.Join(s.src.Mount, "dst")
	s.live = filepath.Join(s.srcDir, "live.img")
	s.replica = filepath.Join(dst, "replica.img")
	s.state = filepath.Join(b.cfg.Work, "scale-state")
	s.cache = filepath.Join(b.cfg.Work, "scale-agent-cache")
	s.changed = filepath.Join(b.cfg.Work, "scale-changed.txt")
	s.resticSrc = filepath.Join(s.srcDir, "restic")
	s.resticDst = filepath.Join(dst, "restic")
	s.rsyncDst = filepath.Join(dst, "rsync")
	s.minioDir = filepath.Join(dst, "minio")
	s.vdState = s.state // removed by world.close
	if err := freshDirs(s.state, s.cache, s.resticSrc, s.resticDst, s.rsyncDst, s.minioDir); err != nil {
		return err
	}
	defer os.RemoveAll(s.cache)
	if err := os.WriteFile(s.changed, []byte(changedList(plan.Ranges())), 0o644); err != nil {
		return err
	}

	// The previous generation everywhere: the live image, snapshot 1, and
	// the replica a first full sync would have written (a reflink of the
	// snapshot, not sent: 16 GiB would take 23 min over the link); then
	// voldelta's first round over the link, which finds the replica in
	// place (the receiver indexes it by reading it) and commits
	// generation 1.
	t := time.Now()
	if err := writeImages([]string{s.live}, size, fmt.Sprintf("image %d GiB", sr.GiB)); err != nil {
		return err
	}
	sr.Setup["write_images_seconds"] = time.Since(t).Seconds()
	log.Printf("image written (%d GiB) in %.1fs", sr.GiB, time.Since(t).Seconds())
	s.gen = 1
	if err := reflink(s.live, s.snap(1)); err != nil {
		return err
	}
	if err := reflink(s.snap(1), s.replica); err != nil {
		return err
	}
	if sc.Before != "" {
		if err := b.scaleBeforeRow(ctx, sc, s, sr); err != nil {
			return err
		}
	}
	cur := &scaleBin{path: b.cfg.Voldelta, state: s.state, cache: b.sendHas["--cache-dir"]}
	if sr.Seed, err = b.scaleSend(ctx, s, cur, "seed", s.snap(s.gen), nil, false); err != nil {
		return err
	}
	sr.Setup["seed_round_seconds"] = sr.Seed.Seconds

	for _, row := range []struct {
		key, flag string
		args      func() []string
	}{
		{"voldelta-full", "", func() []string { return nil }},
		{"voldelta-hints", "--base", func() []string { return []string{"--base", s.snap(s.gen - 1)} }},
		{"voldelta-changed", "--changed", func() []string { return []string{"--changed", s.changed} }},
	} {
		if err := ctx.Err(); err != nil {
			return err
		}
		r := newScaleRow(row.key)
		sr.Rows = append(sr.Rows, r)
		if row.flag != "" && !res.SendFlags[row.flag] {
			r.Skipped = fmt.Sprintf("voldelta send has no %s flag (see its --help above)", row.flag)
			continue
		}
		if err := b.nextGeneration(s, sr); err != nil {
			return err
		}
		round, err := b.scaleSend(ctx, s, cur, row.key, s.snap(s.gen), row.args(), true)
		r.Steps = append(r.Steps, round)
		if err != nil {
			r.Error = err.Error()
			return fmt.Errorf("%s: %w", row.key, err)
		}
		b.checkTarget(sc, s, r, s.replica)
	}

	// rsync and restic start from the replica's generation too.
	for _, d := range []string{s.rsyncDst, s.resticDst} {
		if err := reflink(s.replica, filepath.Join(d, "vol.img")); err != nil {
			return err
		}
	}
	if restic {
		if err := b.scaleResticSeed(ctx, s, sr); err != nil {
			return err
		}
	}
	if err := b.nextGeneration(s, sr); err != nil {
		return err
	}
	r := newScaleRow("rsync")
	sr.Rows = append(sr.Rows, r)
	if err := b.scaleRsync(ctx, s, r); err != nil {
		r.Error = err.Error()
		return err
	}
	b.checkTarget(sc, s, r, filepath.Join(s.rsyncDst, "vol.img"))
	r = newScaleRow("restic")
	sr.Rows = append(sr.Rows, r)
	if !restic {
		r.Skipped = fmt.Sprintf("not run above %d GiB (RESTIC_MAX_GIB): it does not fit the run's 20 minutes — its seed backup writes the whole volume into MinIO, and its ~1 MiB chunks make the 2,000 scattered pages dirty ~2,000 chunks, gigabytes to upload", sc.ResticMaxGiB)
		return nil
	}
	if err := b.scaleRestic(ctx, s, r); err != nil {
		r.Error = err.Error()
		return err
	}
	b.checkTarget(sc, s, r, filepath.Join(s.resticDst, "vol.img"))
	return nil
}

func (b *Bench) xfsVolume(ctx context.Context, name string, size int64) (*Volume, error) {
	v, err := newVolume(ctx, b.cl, b.cfg.Work, name, size, "--direct-io=on")
	if err != nil {
		return nil, err
	}
	if err := v.MkfsXFS(ctx); err != nil {
		v.Close()
		return nil, err
	}
	if err := v.MountAt(ctx, b.mnt(name), false); err != nil {
		v.Close()
		return nil, err
	}
	return v, nil
}

// nextGeneration applies the delta (new bytes, same ranges) to the live
// image and takes the next snapshot (a reflink); restic's source follows.
func (b *Bench) nextGeneration(s *scaleWorld, sr *ScaleSize) error {
	t := time.Now()
	s.gen++
	if err := applyDelta(s.live, s.plan.Ranges(), fmt.Sprintf("delta %d GiB gen %d", sr.GiB, s.gen)); err != nil {
		return err
	}
	if err := reflink(s.live, s.snap(s.gen)); err != nil {
		return err
	}
	vol := filepath.Join(s.resticSrc, "vol.img")
	os.Remove(vol)
	if err := reflink(s.snap(s.gen), vol); err != nil {
		return err
	}
	sr.Setup[fmt.Sprintf("delta_gen%d_seconds", s.gen)] = time.Since(t).Seconds()
	return nil
}

// scaleBin is the voldelta a round runs (both ends) and the receiver's
// state directory it keeps; cache: pass --cache-dir.
type scaleBin struct {
	path  string
	state string
	cache bool
}

// scaleBeforeRow is the voldelta-before row: the binary from before the
// change-hint work indexes the replica (its own seed round, its own
// state) and sends the next generation with a full scan, the way every
// round ran then. The current binary's seed round then starts from the
// generation this row left.
func (b *Bench) scaleBeforeRow(ctx context.Context, sc *ScaleConfig, s *scaleWorld, sr *ScaleSize) error {
	old := &scaleBin{path: sc.Before, state: s.state + "-before"}
	os.RemoveAll(old.state)
	if err := os.MkdirAll(old.state, 0o755); err != nil {
		return err
	}
	defer os.RemoveAll(old.state)
	seed, err := b.scaleSend(ctx, s, old, "before-seed", s.snap(s.gen), nil, false)
	if err != nil {
		return fmt.Errorf("voldelta-before seed: %w", err)
	}
	sr.Setup["before_seed_round_seconds"] = seed.Seconds
	r := newScaleRow("voldelta-before")
	sr.Rows = append(sr.Rows, r)
	if err := b.nextGeneration(s, sr); err != nil {
		return err
	}
	round, err := b.scaleSend(ctx, s, old, r.Key, s.snap(s.gen), nil, true)
	r.Steps = append(r.Steps, round)
	if err != nil {
		r.Error = err.Error()
		return fmt.Errorf("%s: %w", r.Key, err)
	}
	b.checkTarget(sc, s, r, s.replica)
	return nil
}

// scaleSend is one voldelta round (bin) of source to the replica over the
// link (receiver started for it), timed; drop: after a page-cache drop.
func (b *Bench) scaleSend(ctx context.Context, s *scaleWorld, bin *scaleBin, label, source string, extra []string, drop bool) (*Round, error) {
	r := &Round{Name: "voldelta send " + label}
	if bin.cache {
		extra = append(extra, "--cache-dir", s.cache)
	}
	logf := b.logPath("voldelta")
	recv, err := b.startReceiverBin(ctx, bin.path, logf, s.replica, bin.state)
	if err != nil {
		return r, err
	}
	if drop {
		if err := dropCaches(ctx); err != nil {
			recv.Stop()
			return r, err
		}
	}
	stats := b.statsPath("voldelta-" + label)
	c := b.sendCmdBin(bin.path, logf, stats, source, extra...)
	r.Command = strings.Join(c.Args, " ")
	err = b.measureCmd(ctx, r, c)
	u, serr := recv.Stop()
	r.add(u)
	if err == nil {
		err = serr
	}
	r.Stats = readStats(stats)
	log.Printf("voldelta %s: %.2fs, %s over the link, scan %v s, mode %v", label, r.Seconds, mb(r.LinkBytes()), r.Stats["scan_seconds"], r.Stats["scan_mode"])
	return r, err
}

// dropCaches writes back and drops the whole page cache (echo 3 >
// /proc/sys/vm/drop_caches): every row reads its volumes from the disk.
func dropCaches(ctx context.Context) error {
	if _, err := sh(ctx, "sync"); err != nil {
		return err
	}
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0)
}

// checkTarget compares a row's target with the newest snapshot.
func (b *Bench) checkTarget(sc *ScaleConfig, s *scaleWorld, r *ScaleRow, target string) {
	t := time.Now()
	var ext []Extent
	how := "every byte"
	if sc.Verify == "ranges" {
		ext = checkExtents(s.plan.Ranges(), s.plan.Size, 64, uint64(s.gen))
		how = "the changed ranges ±64 KiB and 64 random 1 MiB windows"
	}
	diff, err := compareFiles(target, s.snap(s.gen), ext)
	switch {
	case err != nil:
		r.VerifyNote = err.Error()
	case diff != "":
		r.VerifyNote = "target differs from the source: " + diff
	default:
		r.Verified = true
		r.VerifyNote = "target = source snapshot on " + how
	}
	r.VerifySeconds = time.Since(t).Seconds()
	if !r.Verified {
		log.Printf("%s: NOT VERIFIED: %s", r.Key, r.VerifyNote)
	}
}

// scaleResticSeed gives restic the previous generation: a first backup of
// the source at the destination, to its local MinIO (16 GiB would take
// 23 min over the link), and the source's restic cache as that backup
// left it (as if the source had run it).
func (b *Bench) scaleResticSeed(ctx context.Context, s *scaleWorld, sr *ScaleSize) error {
	t := time.Now()
	if _, err := b.minio(ctx, s.world); err != nil {
		return err
	}
	if _, err := b.restic(s.world, SideDst, "restic backup (seed)", "backup", "--host", "source", s.resticSrc).Run(ctx); err != nil {
		return err
	}
	srcCache, dstCache := filepath.Join(b.cfg.Work, "restic-cache-src"), filepath.Join(b.cfg.Work, "restic-cache-dst")
	os.RemoveAll(srcCache)
	if _, err := sh(ctx, "cp", "-a", dstCache, srcCache); err != nil {
		return err
	}
	sr.Setup["restic_seed_seconds"] = time.Since(t).Seconds()
	log.Printf("restic seeded in %.1fs", time.Since(t).Seconds())
	return nil
}

// scaleRsync: rsync --inplace of the newest snapshot to the rsync
// daemon's copy of the previous generation, across the link, then syncfs.
func (b *Bench) scaleRsync(ctx context.Context, s *scaleWorld, r *ScaleRow) error {
	d, err := b.startRsyncd(ctx, s.rsyncDst)
	if err != nil {
		return err
	}
	round := &Round{Name: "rsync"}
	r.Steps = append(r.Steps, round)
	if err := dropCaches(ctx); err != nil {
		d.Stop()
		return err
	}
	c := &Cmd{Name: "rsync", Side: SideSrc, Log: b.logPath("rsync"),
		Args: []string{"rsync", "--inplace", "--no-whole-file", "--ignore-times", "--times", "--stats",
			s.snap(s.gen), fmt.Sprintf("rsync://%s/vol/vol.img", proxyAddr(portRsync))}}
	round.Command = strings.Join(c.Args, " ")
	err = b.measure(ctx, round, func() error {
		u, err := c.Run(ctx)
		round.add(u)
		if err != nil {
			return err
		}
		t := time.Now()
		_, err = sh(ctx, "sync", "-f", s.rsyncDst)
		round.SyncSeconds = time.Since(t).Seconds()
		return err
	})
	u, serr := d.Stop()
	round.add(u)
	if err == nil {
		err = serr
	}
	log.Printf("rsync: %.2fs, %s over the link", round.Seconds, mb(round.LinkBytes()))
	return err
}

// scaleRestic: restic backup of the newest snapshot across the link
// (incremental: the repository holds the previous generation), then the
// in-place restore at the destination, each after a page-cache drop.
func (b *Bench) scaleRestic(ctx context.Context, s *scaleWorld, r *ScaleRow) error {
	backup, err := b.resticBackup(ctx, s.world, "delta", s.resticSrc)
	if backup != nil {
		r.Steps = append(r.Steps, backup)
	}
	if err != nil {
		return err
	}
	restore, err := b.resticRestore(ctx, s.world, "restic restore in-place", s.resticSrc, s.resticDst,
		func() (bool, string) { return true, "" }, "--overwrite", "if-changed")
	if restore != nil {
		r.Steps = append(r.Steps, restore)
	}
	return err
}
