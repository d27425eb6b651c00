package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// warmWorld is the warm run's volumes and state.
type warmWorld struct {
	*world
	pool     *Volume // XFS with reflinks: src.img, replica.img, snapshots
	replica  *Volume // voldelta's target (raw, in the pool)
	state    string  // the receiver's state directory
	cache    string  // the agent's --cache-dir
	view     string  // where a snapshot is mounted for restic and rsync (one path: restic's parent)
	viewVol  *Volume
	snaps    []string // snapshot images, oldest first
	srcDB    *warmDB
	fillRows int64
}

func (s *warmWorld) snapPath(n int) string {
	return filepath.Join(s.pool.Mount, fmt.Sprintf("snap-%d.img", n))
}

// trees and devices evict drops the caches of.
func (b *Bench) warmEvict(ctx context.Context, s *warmWorld) error {
	var trees, devs []string
	for _, v := range append(s.volumes(), s.pool, s.viewVol) {
		if v == nil {
			continue
		}
		if v.Mount != "" {
			trees = append(trees, v.Mount)
		}
		devs = append(devs, v.Dev)
	}
	return evict(ctx, trees, devs)
}

func (b *Bench) runWarm(ctx context.Context, wc *WarmConfig) (err error) {
	start := time.Now()
	b.step = "warm"
	res := &WarmResults{Started: start.Format(time.RFC3339), Command: wc.Command, Machine: b.res.Machine,
		Versions: b.res.Versions, Link: b.res.Link, Setup: map[string]float64{}}
	res.Commit, _ = sh(ctx, "git", "rev-parse", "HEAD")
	res.Versions["voldelta binary"], _ = sh(ctx, b.cfg.Voldelta, "--version")
	res.Versions["xfsprogs"], _ = sh(ctx, "mkfs.xfs", "-V")
	if out, _ := sh(ctx, "git", "status", "--porcelain", "--untracked-files=no"); out != "" {
		res.TreeDirty = strings.Split(out, "\n")
	}
	rows := int64(wc.DataMiB) * mib / int64(wc.RowBytesDisk)
	volSize := (int64(wc.DataMiB)*mib*5/4 + 512*mib + mib - 1) / mib * mib
	res.Params = WarmParams{DataMiB: wc.DataMiB, FillRows: rows, VolumeBytes: volSize, RowsPerSec: wc.RowsPerSec,
		ConvergeBytes: wc.ConvergeBytes, MaxRounds: wc.MaxRounds, Rate: wc.Rate, Preflush: wc.Preflush}
	defer func() {
		res.Finished = time.Now().Format(time.RFC3339)
		res.TotalSeconds = time.Since(start).Seconds()
		res.Machine.LoadAfter = loadavg()
		if err != nil {
			res.Error = err.Error()
		}
		if werr := writeWarmResults(wc.Results, res, true); werr != nil {
			log.Printf("results: %v", werr)
			if err == nil {
				err = werr
			}
		}
	}()
	// Space: the source and the replica in the pool, restic's two
	// targets, rsync's and MinIO's volumes: sparse, each up to the data.
	if free, ferr := freeBytes(filepath.Dir(wc.Work)); ferr == nil && free < 7*volSize {
		return fmt.Errorf("needs about %.1f GiB free under %s, has %.1f GiB", float64(7*volSize)/(1<<30), filepath.Dir(wc.Work), float64(free)/(1<<30))
	}
	if res.Probe, err = b.topo.probeLink(ctx, 24*mib, 3); err != nil {
		return err
	}
	s, err := b.warmSetup(ctx, wc, volSize)
	if s != nil {
		defer b.warmClose(s)
	}
	if err != nil {
		return err
	}

	// 1. The source: MariaDB filled to the data size, then the steady load.
	t := time.Now()
	s.srcDB = b.newWarmDB("src", SideSrc, s.src.Mount)
	if err := s.srcDB.Install(ctx); err != nil {
		return err
	}
	if err := s.srcDB.Start(ctx); err != nil {
		return err
	}
	if err := s.srcDB.SQL(ctx, personTable+insertRows(int(rows))); err != nil {
		return err
	}
	s.fillRows = rows
	res.FillRows = rows
	res.Setup["fill_seconds"] = time.Since(t).Seconds()
	if res.DataBytes, err = dirBytes(s.srcDB.datadir); err != nil {
		return err
	}
	log.Printf("source: %d rows, datadir %s, in %.0fs", rows, mb(uint64(res.DataBytes)), time.Since(t).Seconds())
	// The migration's preparation: InnoDB told to keep its buffer pool
	// clean (the page cleaner flushes as it goes), so the pre-copy rounds
	// carry the page writes and the shutdown at t0 has little to flush.
	if wc.Preflush {
		if err := s.srcDB.SQL(ctx, "set global innodb_max_dirty_pages_pct = 0;\nset global innodb_max_dirty_pages_pct_lwm = 0;\n"); err != nil {
			return err
		}
	}
	ins, err := b.startInserter(ctx, s.srcDB, wc.RowsPerSec)
	if err != nil {
		return err
	}
	insStopped := false
	defer func() {
		if !insStopped {
			ins.Stop()
		}
	}()

	// 2. Pre-copy: voldelta rounds back to back until one converges.
	for n := 1; n <= wc.MaxRounds; n++ {
		wr, err := b.warmPrecopyRound(ctx, s, ins, n)
		res.Precopy = append(res.Precopy, wr)
		if err != nil {
			return fmt.Errorf("pre-copy round %d: %w", n, err)
		}
		// Converged: the round carried (chunks sent, before compression)
		// less than the threshold of changed content.
		if n >= 2 && statF(wr.Round.Stats, "bytes_sent_raw") < float64(wc.ConvergeBytes) {
			res.Converged = true
			break
		}
	}
	k := len(res.Precopy)
	last := res.Precopy[k-1]
	// The window the final delta covers: as long as the converged round
	// (its snapshot to its commit), after which a back-to-back loop would
	// have taken the final snapshot.
	res.WindowSeconds = last.EndSeconds - last.AtSeconds

	// restic's and rsync's pre-copy, from the same converged snapshot, with
	// the load paused (so that their final delta is the same as voldelta's).
	// MariaDB itself is suspended (SIGSTOP) too: no background flushing
	// of dirty pages lands in the final delta that a back-to-back loop
	// would have carried in its rounds.
	ins.setPaused(true)
	pid, err := s.srcDB.svc.Pid()
	if err != nil {
		return err
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return err
	}
	resume := b.cl.Add("continue mariadbd", func() error { return syscall.Kill(pid, syscall.SIGCONT) })
	t = time.Now()
	err = b.warmOthersPrecopy(ctx, s, res, k)
	res.PauseSeconds = time.Since(t).Seconds()
	if rerr := resume(); err == nil {
		err = rerr
	}
	if err != nil {
		return err
	}
	// The last window of load, as long as the converged round's.
	ins.setPaused(false)
	log.Printf("load resumed for %.1fs (the converged round's window)", res.WindowSeconds)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(time.Duration(res.WindowSeconds * float64(time.Second))):
	}

	// 3. Cutover. The receiver is up and caches are dropped before t0, as
	// they would be (a receiver waits for rounds).
	recv, err := b.startReceiver(ctx, b.logPath("voldelta"), s.replica.Dev, s.state)
	if err != nil {
		return err
	}
	recvStopped := false
	defer func() {
		if !recvStopped {
			recv.Stop()
		}
	}()
	if err := b.warmEvict(ctx, s); err != nil {
		return err
	}
	vd := &WarmFlow{Key: "voldelta", Label: warmLabels["voldelta"]}
	res.Flows = append(res.Flows, vd)
	inserted, err := ins.Stop()
	insStopped = true
	if err != nil {
		return err
	}
	// The application has stopped writing (the inserter's client exited,
	// every batch committed); the source's rows, then t0: MariaDB stopped.
	res.InsertedRows = inserted
	if res.RowsAtStop, res.MaxIDAtStop, err = s.srcDB.Rows(ctx); err != nil {
		return err
	}
	if res.RowsAtStop != s.fillRows+inserted {
		return fmt.Errorf("the source has %d rows, the fill and the inserter wrote %d", res.RowsAtStop, s.fillRows+inserted)
	}
	want := [2]int64{res.RowsAtStop, res.MaxIDAtStop}
	t0 := time.Now()
	if err := s.srcDB.Stop(); err != nil {
		return err
	}
	res.StopSeconds = time.Since(t0).Seconds()
	vd.StopSeconds = res.StopSeconds
	final := k + 1
	t = time.Now()
	if err := b.warmSnapshot(ctx, s, final); err != nil {
		return err
	}
	vd.SnapshotSeconds = time.Since(t).Seconds()
	round := &Round{Name: "voldelta send final"}
	stats := b.statsPath("voldelta-final")
	c := b.sendCmd(b.logPath("voldelta"), stats, s.snapPath(final), "--base", s.snapPath(k), "--cache-dir", s.cache)
	round.Command = strings.Join(c.Args, " ")
	serr := b.measureCmd(ctx, round, c)
	round.Stats = readStats(stats)
	vd.Steps = append(vd.Steps, round)
	if serr != nil {
		vd.Error = serr.Error()
		return fmt.Errorf("final round: %w", serr)
	}
	// Promote: a reflink of the replica as it was committed (for the
	// harness's byte check after t1), its ext4 mounted, MariaDB started.
	t = time.Now()
	check := filepath.Join(s.pool.Mount, "replica-check.img")
	if err := reflink(s.replica.Image, check); err != nil {
		return err
	}
	defer os.Remove(check)
	t1, err := b.warmPromote(ctx, vd, s.replica, "voldelta", want)
	vd.PromoteSeconds = t1.Sub(t).Seconds()
	vd.WallSeconds = t1.Sub(t0).Seconds()
	if err != nil {
		vd.Error = err.Error()
		return err
	}
	log.Printf("voldelta downtime %.2fs: stop %.2fs, snapshot %.2fs, final round %.2fs (%s on the link), promote %.2fs",
		vd.WallSeconds, vd.StopSeconds, vd.SnapshotSeconds, round.Seconds, mb(round.LinkBytes()), vd.PromoteSeconds)
	u, rerr := recv.Stop()
	recvStopped = true
	round.add(u)
	if rerr != nil {
		return rerr
	}
	// The harness's own check, after t1: the replica's bytes as committed
	// have the source's root hash.
	vd.Verified, vd.VerifyNote = b.warmHashCheck(ctx, check, round.Stats)

	// 4. restic and rsync, from the final snapshot, mounted where their
	// pre-copy read the converged one.
	if err := b.mountView(ctx, s, final); err != nil {
		return err
	}
	tree, err := listTree(s.view)
	if err != nil {
		return err
	}
	res.DataBytesAtStop = tree.Bytes()
	if err := b.warmRestic(ctx, s, res, tree); err != nil {
		return err
	}
	if err := b.warmRsync(ctx, s, res, tree); err != nil {
		return err
	}
	// The source again, outside every downtime: its row count after the stop.
	if err := s.srcDB.Start(ctx); err == nil {
		n, m, cerr := s.srcDB.Rows(ctx)
		res.SourceRecheck = fmt.Sprintf("The source, restarted after all the runs: %d rows, max(id) %d (at the stop: %d, %d).", n, m, res.RowsAtStop, res.MaxIDAtStop)
		if cerr != nil {
			res.SourceRecheck = cerr.Error()
		}
		s.srcDB.Stop()
	}
	return nil
}

func dirBytes(dir string) (int64, error) {
	var n int64
	err := filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return err
	})
	return n, err
}

func (b *Bench) warmSetup(ctx context.Context, wc *WarmConfig, volSize int64) (*warmWorld, error) {
	state, cache := filepath.Join(b.cfg.Work, "vd-state"), filepath.Join(b.cfg.Work, "vd-cache")
	s := &warmWorld{world: &world{name: "warm", size: volSize, bucket: "restic-warm", vdBucket: "voldelta-warm",
		vdState: state, pullState: cache}, state: state, cache: cache, view: b.mnt("view")}
	var err error
	// The pool holds the source and the replica (each up to volSize) and
	// the snapshots' diverging extents.
	if s.pool, err = b.xfsVolume(ctx, "pool", 2*volSize+2<<30); err != nil {
		return s, err
	}
	if s.src, err = b.poolVolume(ctx, s.pool, "src", volSize, true); err != nil {
		return s, err
	}
	if err := s.src.Mkfs(ctx); err != nil {
		return s, err
	}
	if err := s.src.MountAt(ctx, b.mnt("src"), false); err != nil {
		return s, err
	}
	// The replica's loop device is buffered (no direct I/O), as restic's
	// and rsync's targets are: the receiver's writes reach its page cache
	// and its fsync writes them back, as on a destination disk.
	if s.replica, err = b.poolVolume(ctx, s.pool, "replica", volSize, false); err != nil {
		return s, err
	}
	s.vdDst = s.replica
	if s.resticB, err = b.ext4Volume(ctx, "restic-b", volSize); err != nil {
		return s, err
	}
	if s.rsyncDst, err = b.ext4Volume(ctx, "rsync-dst", volSize); err != nil {
		return s, err
	}
	if s.minioVol, err = b.ext4Volume(ctx, "minio", volSize); err != nil {
		return s, err
	}
	s.minioDir = filepath.Join(s.minioVol.Mount, "data")
	if err := freshDirs(s.state, s.cache, s.minioDir); err != nil {
		return s, err
	}
	return s, nil
}

func (b *Bench) warmClose(s *warmWorld) {
	if s.srcDB != nil {
		s.srcDB.Stop()
	}
	b.umountView(s)
	s.world.close() // MinIO, the source, the replica, the ext4 volumes
	for _, p := range s.snaps {
		os.Remove(p)
	}
	if s.pool != nil {
		if err := s.pool.Close(); err != nil {
			log.Printf("cleanup: pool: %v", err)
		}
	}
	os.RemoveAll(s.state)
	os.RemoveAll(s.cache)
}

// warmSnapshot takes snapshot n of the source: its ext4 frozen (flushed,
// the device's cache dropped) around a reflink copy of its image.
func (b *Bench) warmSnapshot(ctx context.Context, s *warmWorld, n int) error {
	thaw, err := s.src.Freeze(ctx)
	if err != nil {
		return err
	}
	p := s.snapPath(n)
	err = reflink(s.src.Image, p)
	if terr := thaw(); err == nil {
		err = terr
	}
	if err == nil {
		s.snaps = append(s.snaps, p)
	}
	return err
}

// warmPrecopyRound: snapshot n, then voldelta send of it (with --base the
// previous snapshot from round 2 on) to the receiver, while the load runs.
func (b *Bench) warmPrecopyRound(ctx context.Context, s *warmWorld, ins *inserter, n int) (*WarmRound, error) {
	wr := &WarmRound{N: n, Round: &Round{Name: fmt.Sprintf("voldelta send pre-copy %d", n)}}
	recv, err := b.startReceiver(ctx, b.logPath("voldelta"), s.replica.Dev, s.state)
	if err != nil {
		return wr, err
	}
	defer recv.Stop()
	if err := b.warmEvict(ctx, s); err != nil {
		return wr, err
	}
	t := time.Now()
	if err := b.warmSnapshot(ctx, s, n); err != nil {
		return wr, err
	}
	wr.SnapshotSeconds = time.Since(t).Seconds()
	wr.AtSeconds = t.Sub(ins.start).Seconds()
	wr.RowsInserted = ins.Rows()
	extra := []string{"--cache-dir", s.cache}
	if n > 1 {
		wr.Base = filepath.Base(s.snapPath(n - 1))
		extra = append(extra, "--base", s.snapPath(n-1))
	}
	stats := b.statsPath(fmt.Sprintf("voldelta-precopy-%d", n))
	c := b.sendCmd(b.logPath("voldelta"), stats, s.snapPath(n), extra...)
	wr.Round.Command = strings.Join(c.Args, " ")
	err = b.measureCmd(ctx, wr.Round, c)
	wr.Round.Stats = readStats(stats)
	wr.EndSeconds = time.Since(ins.start).Seconds()
	u, rerr := recv.Stop()
	wr.Round.add(u)
	if err == nil {
		err = rerr
	}
	log.Printf("pre-copy %d: %.2fs, %s changed sent, %s over the link, scan %v (%v s)", n, wr.Round.Seconds, mb(uint64(statF(wr.Round.Stats, "bytes_sent_raw"))),
		mb(wr.Round.LinkBytes()), wr.Round.Stats["scan_mode"], wr.Round.Stats["scan_seconds"])
	// Snapshots older than the base of the next round are not needed.
	if n >= 3 {
		os.Remove(s.snapPath(n - 2))
	}
	return wr, err
}

// mountView mounts (a reflink of) snapshot n read-only at s.view, for the
// tools that read files; the snapshot's own image is left untouched
// (it is a base voldelta's receiver knows by identity).
func (b *Bench) mountView(ctx context.Context, s *warmWorld, n int) error {
	b.umountView(s)
	img := filepath.Join(s.pool.Mount, fmt.Sprintf("view-%d.img", n))
	if err := reflink(s.snapPath(n), img); err != nil {
		return err
	}
	v, err := b.attachImage(ctx, "view", img, true, "--read-only", "--direct-io=on")
	if err != nil {
		os.Remove(img)
		return err
	}
	s.viewVol = v
	return v.MountAt(ctx, s.view, true)
}

func (b *Bench) umountView(s *warmWorld) {
	if s.viewVol != nil {
		if err := s.viewVol.Close(); err != nil {
			log.Printf("cleanup: view: %v", err)
		}
		s.viewVol = nil
	}
}

// warmOthersPrecopy: restic backup of the converged snapshot + restore
// into the in-place target, and rsync of it, while the load is paused.
func (b *Bench) warmOthersPrecopy(ctx context.Context, s *warmWorld, res *WarmResults, k int) error {
	if err := b.mountView(ctx, s, k); err != nil {
		return err
	}
	defer b.umountView(s)
	noCheck := func() (bool, string) { return true, "pre-copy: not checked" }
	bk, err := b.warmResticBackup(ctx, s, "pre-copy")
	res.OthersPrecopy = append(res.OthersPrecopy, bk)
	if err != nil {
		return err
	}
	rs, err := b.resticRestore(ctx, s.world, "restic restore pre-copy", s.view, s.resticB.Mount, noCheck)
	res.OthersPrecopy = append(res.OthersPrecopy, rs)
	if err != nil {
		return err
	}
	rr, err := b.warmRsyncRound(ctx, s, "pre-copy")
	res.OthersPrecopy = append(res.OthersPrecopy, rr)
	return err
}

func (b *Bench) warmResticBackup(ctx context.Context, s *warmWorld, phase string) (*Round, error) {
	r := &Round{Name: "restic backup " + phase}
	mark, err := b.minioStep(ctx, s.world)
	if err != nil {
		return r, err
	}
	if err := b.warmEvict(ctx, s); err != nil {
		return r, err
	}
	c := b.restic(s.world, SideSrc, "restic backup", "backup", "--host", "source", s.view)
	r.Command = strings.Join(c.Args, " ")
	err = r.chargeMinio(mark, b.measureCmd(ctx, r, c))
	log.Printf("restic backup %s: %.1fs, %s over the link", phase, r.Seconds, mb(r.LinkBytes()))
	return r, err
}

// warmRsyncRound: rsync --inplace of the mounted snapshot to the rsync
// daemon at the destination, then a syncfs of its target.
func (b *Bench) warmRsyncRound(ctx context.Context, s *warmWorld, phase string) (*Round, error) {
	r := &Round{Name: "rsync " + phase}
	d, err := b.startRsyncd(ctx, s.rsyncDst.Mount)
	if err != nil {
		return r, err
	}
	if err := b.warmEvict(ctx, s); err != nil {
		d.Stop()
		return r, err
	}
	err = b.measure(ctx, r, func() error { return b.rsyncTree(ctx, r, s.view, s.rsyncDst.Mount) })
	u, serr := d.Stop()
	r.add(u)
	if err == nil {
		err = serr
	}
	log.Printf("rsync %s: %.1fs, %s over the link", phase, r.Seconds, mb(r.LinkBytes()))
	return r, err
}

// warmPromote: v's ext4 mounted read-write at the destination, MariaDB
// started on it there, its row count and max(id) read; the flow is
// promoted when they are the source's at the stop. MariaDB is stopped and
// v unmounted afterwards (outside the timing, which ends with the count).
func (b *Bench) warmPromote(ctx context.Context, f *WarmFlow, v *Volume, name string, want [2]int64) (time.Time, error) {
	mnt := b.mnt("promoted-" + name)
	if err := v.MountAt(ctx, mnt, false); err != nil {
		return time.Now(), fmt.Errorf("promote %s: mount: %w", name, err)
	}
	defer v.Umount()
	return b.warmPromoteDir(ctx, f, mnt, name, want)
}

// warmPromoteDir starts MariaDB at the destination on the datadir under
// dir and reads its row count; it returns when the count arrived (t1),
// and stops that MariaDB after.
func (b *Bench) warmPromoteDir(ctx context.Context, f *WarmFlow, dir, name string, want [2]int64) (time.Time, error) {
	db := b.newWarmDB("dst-"+name, SideDst, dir)
	defer db.Stop()
	err := db.Start(ctx)
	if err == nil {
		f.Rows, f.MaxID, err = db.Rows(ctx)
	}
	t1 := time.Now()
	if err != nil {
		return t1, fmt.Errorf("promote %s: %w", name, err)
	}
	f.RowsOK = f.Rows == want[0] && f.MaxID == want[1]
	f.PromoteNote = fmt.Sprintf("MariaDB started at the destination: %d rows, max(id) %d; the source had %d rows, max(id) %d at the stop", f.Rows, f.MaxID, want[0], want[1])
	if !f.RowsOK {
		return t1, fmt.Errorf("promote %s: %s", name, f.PromoteNote)
	}
	return t1, nil
}

// warmHashCheck: voldelta hash of img equals the round's root hash.
func (b *Bench) warmHashCheck(ctx context.Context, img string, stats map[string]any) (bool, string) {
	out, err := sh(ctx, b.cfg.Voldelta, "hash", "--json", img)
	if err != nil {
		return false, err.Error()
	}
	var h struct {
		Root string `json:"root_hash"`
	}
	json.Unmarshal([]byte(out), &h)
	want, _ := stats["root_hash"].(string)
	if h.Root == "" || h.Root != want {
		return false, fmt.Sprintf("replica root %q, source root %q", h.Root, want)
	}
	return true, "receiver verified and committed; after t1, voldelta hash of the replica as committed (a reflink taken before promotion) = the source snapshot's root hash"
}

// warmRestic: restic backup of the final snapshot, then (a) a full
// restore into an empty ext4 and (b) an in-place restore into the tree
// its pre-copy restored; each target checked against the snapshot's files
// (not timed) and promoted.
func (b *Bench) warmRestic(ctx context.Context, s *warmWorld, res *WarmResults, tree Tree) error {
	want := [2]int64{res.RowsAtStop, res.MaxIDAtStop}
	bk, err := b.warmResticBackup(ctx, s, "final")
	full := &WarmFlow{Key: "restic-full", Label: warmLabels["restic-full"], StopSeconds: res.StopSeconds, Steps: []*Round{bk}}
	inpl := &WarmFlow{Key: "restic-inplace", Label: warmLabels["restic-inplace"], StopSeconds: res.StopSeconds, Steps: []*Round{bk}}
	res.Flows = append(res.Flows, full, inpl)
	if err != nil {
		full.Error, inpl.Error = err.Error(), err.Error()
		return err
	}
	empty, err := b.ext4Volume(ctx, "restic-c", s.size)
	if err != nil {
		return err
	}
	defer empty.Close()
	r, err := b.resticRestore(ctx, s.world, "restic restore full", s.view, empty.Mount, b.treeCheck(tree, empty.Mount))
	full.Steps = append(full.Steps, r)
	if err != nil {
		full.Error = err.Error()
		return err
	}
	full.Verified, full.VerifyNote = r.Verified, r.VerifyNote
	t := time.Now()
	t1, err := b.warmPromoteDir(ctx, full, empty.Mount, "restic-full", want)
	full.PromoteSeconds = t1.Sub(t).Seconds()
	if err != nil {
		full.Error = err.Error()
		return err
	}
	r, err = b.resticRestore(ctx, s.world, "restic restore in-place", s.view, s.resticB.Mount,
		b.treeCheck(tree, s.resticB.Mount), "--overwrite", "if-changed", "--delete")
	inpl.Steps = append(inpl.Steps, r)
	if err != nil {
		inpl.Error = err.Error()
		return err
	}
	inpl.Verified, inpl.VerifyNote = r.Verified, r.VerifyNote
	t = time.Now()
	t1, err = b.warmPromoteDir(ctx, inpl, s.resticB.Mount, "restic-inplace", want)
	inpl.PromoteSeconds = t1.Sub(t).Seconds()
	if err != nil {
		inpl.Error = err.Error()
	}
	return err
}

// warmRsync: rsync --inplace of the final snapshot onto its pre-copy,
// checked (not timed) and promoted.
func (b *Bench) warmRsync(ctx context.Context, s *warmWorld, res *WarmResults, tree Tree) error {
	want := [2]int64{res.RowsAtStop, res.MaxIDAtStop}
	f := &WarmFlow{Key: "rsync", Label: warmLabels["rsync"], StopSeconds: res.StopSeconds}
	res.Flows = append(res.Flows, f)
	r, err := b.warmRsyncRound(ctx, s, "final")
	f.Steps = append(f.Steps, r)
	if err != nil {
		f.Error = err.Error()
		return err
	}
	r.verify(func() (bool, string) { return b.verifyTree(tree, s.rsyncDst.Mount) })
	f.Verified, f.VerifyNote = r.Verified, r.VerifyNote
	t := time.Now()
	t1, err := b.warmPromoteDir(ctx, f, s.rsyncDst.Mount, "rsync", want)
	f.PromoteSeconds = t1.Sub(t).Seconds()
	if err != nil {
		f.Error = err.Error()
	}
	return err
}
