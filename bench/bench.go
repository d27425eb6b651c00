package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// Bench runs the scenarios and collects Results.
type Bench struct {
	cfg  *Config
	cl   *Cleanup
	topo *Topology
	pki  string
	res  *Results
	step string // current scenario, for log names
	// dropAll: evict drops the whole page cache too (bench scale).
	dropAll bool
	sendHas map[string]bool // bench scale: the voldelta send flags it has
}

func (b *Bench) logPath(name string) string {
	return filepath.Join(b.cfg.Out, "logs", b.step+"-"+name+".log")
}

func newBench(ctx context.Context, cfg *Config, cl *Cleanup) (*Bench, error) {
	for _, d := range []string{cfg.Out + "/logs", cfg.Work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	// What a killed earlier run left: its processes (inside its namespaces)
	// first, as they may hold its mounts and devices.
	removeStaleNetns(ctx)
	cleanStaleVolumes(ctx, cfg.Work)
	// Run copies of the binaries that may be rebuilt while we run (make
	// build in the same tree): every round uses the same voldelta, and the
	// helpers the same harness.
	for _, p := range []*string{&cfg.Voldelta, &cfg.Self} {
		cp := filepath.Join(cfg.Work, "bin", filepath.Base(*p))
		if err := copyFile(*p, cp); err != nil {
			return nil, err
		}
		*p = cp
	}
	b := &Bench{cfg: cfg, cl: cl, pki: filepath.Join(cfg.Work, "pki"), step: "setup"}
	b.res = &Results{Started: time.Now().Format(time.RFC3339), Command: cfg.Command, Scale: cfg.Scale,
		Machine: describeMachine(ctx), Versions: b.versions(ctx),
		Link: LinkSetup{Rate: cfg.Rate, OneWayDelayMs: float64(cfg.Delay.Microseconds()) / 1000,
			Shaping: "tc tbf on both veth ends (burst 64kb, latency 20ms); delay: user-space proxy (internal/delayproxy) per service port in the destination namespace"},
		Consistency: "file scenarios: sync + fsfreeze of the source ext4 (and blockdev --flushbufs) around voldelta's device read; mariadb: mariadbd is shut down cleanly before every tool reads, and the ext4 is frozen as well around voldelta's read; restic and rsync read the mounted files with nothing writing. Caches: before every timed step the pages of every file on every volume and each loop device's own cache are dropped; the loop devices' backing images stay in the host's page cache, so every tool reads through loop → memory",
	}
	log.Printf("machine: %s, %d cores, kernel %s, load %s", b.res.Machine.CPUModel, b.res.Machine.NProc, b.res.Machine.Kernel, b.res.Machine.LoadBefore)
	if _, err := sh(ctx, cfg.Voldelta, "certs", "--dir", b.pki, "--hosts", ipDst, "--force"); err != nil {
		return nil, err
	}
	var err error
	if b.topo, err = setupTopology(ctx, cfg, cl); err != nil {
		return nil, err
	}
	return b, nil
}

func (b *Bench) versions(ctx context.Context) map[string]string {
	v := map[string]string{}
	first := func(s string, err error) string {
		if err != nil {
			return "?"
		}
		line, _, _ := strings.Cut(s, "\n")
		return line
	}
	v["voldelta"] = first(sh(ctx, "git", "describe", "--always", "--dirty"))
	v["restic"] = first(sh(ctx, b.cfg.Restic, "version"))
	v["minio"] = "github.com/minio/minio " + pinned("tools/minio/go.mod", "github.com/minio/minio")
	v["restic"] += " (" + pinned("tools/restic/go.mod", "github.com/restic/restic") + ")"
	v["rsync"] = first(sh(ctx, "rsync", "--version"))
	v["mariadb"] = first(sh(ctx, "mariadbd", "--version"))
	v["go"] = runtime.Version()
	return v
}

func copyFile(from, to string) error {
	raw, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return err
	}
	return os.WriteFile(to, raw, 0o755)
}

// pinned is the version of module mod required by the go.mod at path
// (relative to the repository), or "?".
func pinned(path, mod string) string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "?"
	}
	for _, l := range strings.Split(string(raw), "\n") {
		f := strings.Fields(l)
		for i := 0; i+1 < len(f); i++ {
			if f[i] == mod {
				return f[i+1]
			}
		}
	}
	return "?"
}

// world is one scenario's volumes and tool state; mariadb-update reuses
// mariadb-insert's.
type world struct {
	name      string
	size      int64
	src       *Volume // ext4, mounted at mnt/src
	vdDst     *Volume // raw replica of src (voldelta send → receive)
	vdState   string
	pullDst   *Volume // raw replica of src (voldelta push → MinIO → pull)
	pullState string  // pull's --state-dir
	vdBucket  string  // voldelta's bucket in the scenario's MinIO
	resticB   *Volume // ext4: the tree restored before, for in-place restores
	rsyncDst  *Volume // ext4: the rsync daemon's module
	minioVol  *Volume // ext4: MinIO's drive at the destination
	minioDir  string
	bucket    string
	minio     *Service
	db        *MariaDB
	round     int
}

func (b *Bench) mnt(name string) string { return filepath.Join(b.cfg.Work, "mnt", name) }

func (b *Bench) newWorld(ctx context.Context, name string, size int64) (*world, error) {
	size = (size + mib - 1) / mib * mib
	w := &world{name: name, size: size, vdState: filepath.Join(b.cfg.Work, "vd-state-"+name),
		pullState: filepath.Join(b.cfg.Work, "vd-pull-state-"+name),
		bucket:    "restic-" + name, vdBucket: "voldelta-" + name}
	var err error
	if w.src, err = b.ext4Volume(ctx, "src", size); err != nil {
		return nil, err
	}
	if w.vdDst, err = newVolume(ctx, b.cl, b.cfg.Work, "voldelta-dst", size); err != nil {
		return nil, err
	}
	if w.pullDst, err = newVolume(ctx, b.cl, b.cfg.Work, "voldelta-pull-dst", size); err != nil {
		return nil, err
	}
	if w.resticB, err = b.ext4Volume(ctx, "restic-b", size); err != nil {
		return nil, err
	}
	if w.rsyncDst, err = b.ext4Volume(ctx, "rsync-dst", size); err != nil {
		return nil, err
	}
	// MinIO's drive holds restic's repository and voldelta's chunks, each
	// about the data's size, and MinIO refuses writes near a full drive.
	if w.minioVol, err = b.ext4Volume(ctx, "minio", 3*size); err != nil {
		return nil, err
	}
	w.minioDir = filepath.Join(w.minioVol.Mount, "data")
	if err := freshDirs(w.vdState, w.pullState, w.minioDir); err != nil {
		return nil, err
	}
	return w, nil
}

func (b *Bench) ext4Volume(ctx context.Context, name string, size int64) (*Volume, error) {
	v, err := newVolume(ctx, b.cl, b.cfg.Work, name, size)
	if err != nil {
		return nil, err
	}
	if err := v.Mkfs(ctx); err != nil {
		return nil, err
	}
	return v, v.MountAt(ctx, b.mnt(name), false)
}

func (w *world) close() {
	if w.minio != nil {
		if _, err := w.minio.Stop(); err != nil {
			log.Printf("cleanup: %v", err)
		}
	}
	for _, v := range w.volumes() {
		if err := v.Close(); err != nil {
			log.Printf("cleanup: %s: %v", v.Name, err)
		}
	}
	os.RemoveAll(w.vdState)
	os.RemoveAll(w.pullState)
}

// volumes are the scenario's volumes created so far.
func (w *world) volumes() []*Volume {
	var vs []*Volume
	for _, v := range []*Volume{w.src, w.vdDst, w.pullDst, w.resticB, w.rsyncDst, w.minioVol} {
		if v != nil {
			vs = append(vs, v)
		}
	}
	return vs
}

// evict drops the caches above the loop devices of every volume of the
// scenario (see evict), before each timed step.
func (b *Bench) evict(ctx context.Context, w *world) error {
	var trees, devs []string
	for _, v := range w.volumes() {
		if v.Mount != "" {
			trees = append(trees, v.Mount)
		}
		devs = append(devs, v.Dev)
	}
	if err := evict(ctx, trees, devs); err != nil || !b.dropAll {
		return err
	}
	return dropCaches(ctx)
}

func (b *Bench) runAll(ctx context.Context) (*Results, error) {
	start := time.Now()
	defer func() {
		b.res.Finished = time.Now().Format(time.RFC3339)
		b.res.TotalSeconds = time.Since(start).Seconds()
		b.res.Machine.LoadAfter = loadavg()
	}()
	var dbWorld *world
	defer func() {
		if dbWorld != nil {
			if dbWorld.db != nil {
				dbWorld.db.Stop()
			}
			dbWorld.close()
		}
	}()
	for _, name := range b.cfg.Scenarios {
		if err := ctx.Err(); err != nil {
			return b.res, err
		}
		b.step = name
		log.Printf("=== scenario %s (scale %s)", name, b.cfg.Scale.Name)
		sr := &ScenarioResult{Name: name}
		b.res.Scenarios = append(b.res.Scenarios, sr)
		t0 := time.Now()
		var err error
		switch name {
		case "large-file", "small-files":
			err = b.fileScenario(ctx, sr)
		case "mariadb-insert":
			dbWorld, err = b.dbInsertScenario(ctx, sr)
		case "mariadb-update":
			err = b.dbUpdateScenario(ctx, sr, dbWorld)
		}
		sr.Seconds = time.Since(t0).Seconds()
		if err != nil {
			sr.Error = err.Error()
			return b.res, fmt.Errorf("scenario %s: %w", name, err)
		}
		log.Printf("=== scenario %s done in %.0fs", name, sr.Seconds)
	}
	return b.res, nil
}

func (b *Bench) fileScenario(ctx context.Context, sr *ScenarioResult) error {
	sc := b.cfg.Scale
	var data, delta int64
	if sr.Name == "large-file" {
		data, delta = int64(sc.BigFileMiB)*mib, int64(sc.AppendMiB)*mib
		sr.Title = fmt.Sprintf("one large file: %d MiB, then %d MiB appended", sc.BigFileMiB, sc.AppendMiB)
	} else {
		data, delta = int64(sc.SmallFiles*sc.FileMiB)*mib, int64(sc.NewFiles*sc.FileMiB)*mib
		sr.Title = fmt.Sprintf("many files: %d × %d MiB, then %d new files", sc.SmallFiles, sc.FileMiB, sc.NewFiles)
	}
	w, err := b.newWorld(ctx, sr.Name, data+delta+(data+delta)/8+192*mib)
	if err != nil {
		return err
	}
	defer w.close()
	dir := filepath.Join(w.src.Mount, "data")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	t := time.Now()
	if sr.Name == "large-file" {
		err = writeRandom(filepath.Join(dir, "one-big-file"), data, 1, false)
	} else {
		for i := range sc.SmallFiles {
			if err = writeRandom(filepath.Join(dir, fmt.Sprintf("file-%05d", i)), int64(sc.FileMiB)*mib, uint64(100+i), false); err != nil {
				break
			}
		}
	}
	if err != nil {
		return err
	}
	log.Printf("workload: initial data written in %.1fs", time.Since(t).Seconds())
	if err := b.initialRound(ctx, sr, w); err != nil {
		return err
	}
	t = time.Now()
	if sr.Name == "large-file" {
		err = writeRandom(filepath.Join(dir, "one-big-file"), delta, 2, true)
	} else {
		for i := range sc.NewFiles {
			if err = writeRandom(filepath.Join(dir, fmt.Sprintf("new-%05d", i)), int64(sc.FileMiB)*mib, uint64(10000+i), false); err != nil {
				break
			}
		}
	}
	if err != nil {
		return err
	}
	sr.DeltaBytes = delta
	log.Printf("workload: delta written in %.1fs", time.Since(t).Seconds())
	return b.deltaRound(ctx, sr, w)
}

// rowBytes is the long_name payload of one row (md5 hex × 1000).
const rowBytes = 32000

func (b *Bench) dbInsertScenario(ctx context.Context, sr *ScenarioResult) (*world, error) {
	sc := b.cfg.Scale
	sr.Title = fmt.Sprintf("MariaDB: %d rows, then %d rows inserted", sc.DBRows, sc.DBNewRows)
	// ~37 KB per row on disk (the study: 37 GB for 1M rows) plus InnoDB's
	// own files (redo log, undo, system tablespace).
	est := int64(sc.DBRows+sc.DBNewRows+sc.DBUpdRows)*37000 + 200*mib
	w, err := b.newWorld(ctx, sr.Name, est+est/8+192*mib)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			if w.db != nil {
				w.db.Stop()
			}
			w.close()
		}
	}()
	w.db = b.newMariaDB(w.src.Mount)
	t := time.Now()
	if err := w.db.Install(ctx); err != nil {
		return nil, err
	}
	if err := w.db.Start(ctx); err != nil {
		return nil, err
	}
	if err := w.db.SQL(ctx, personTable+insertRows(sc.DBRows)); err != nil {
		return nil, err
	}
	if err := w.db.Stop(); err != nil {
		return nil, err
	}
	log.Printf("workload: %d rows in %.1fs", sc.DBRows, time.Since(t).Seconds())
	if err := b.initialRound(ctx, sr, w); err != nil {
		return nil, err
	}
	t = time.Now()
	if err := w.db.Start(ctx); err != nil {
		return nil, err
	}
	if err := w.db.SQL(ctx, insertRows(sc.DBNewRows)); err != nil {
		return nil, err
	}
	if err := w.db.Stop(); err != nil {
		return nil, err
	}
	sr.DeltaBytes = int64(sc.DBNewRows) * rowBytes
	log.Printf("workload: %d rows inserted in %.1fs", sc.DBNewRows, time.Since(t).Seconds())
	if err := b.deltaRound(ctx, sr, w); err != nil {
		return nil, err
	}
	ok = true
	return w, nil
}

func (b *Bench) dbUpdateScenario(ctx context.Context, sr *ScenarioResult, w *world) error {
	if w == nil {
		return errors.New("mariadb-update needs the state of mariadb-insert")
	}
	sc := b.cfg.Scale
	sr.Title = fmt.Sprintf("MariaDB: %d random existing rows rewritten", sc.DBUpdRows)
	sr.Continues = "mariadb-insert"
	t := time.Now()
	if err := w.db.Start(ctx); err != nil {
		return err
	}
	if err := w.db.SQL(ctx, updateRows(sc.DBUpdRows, sc.DBRows+sc.DBNewRows, 3)); err != nil {
		return err
	}
	if err := w.db.Stop(); err != nil {
		return err
	}
	sr.DeltaBytes = int64(sc.DBUpdRows) * rowBytes
	log.Printf("workload: %d rows rewritten in %.1fs", sc.DBUpdRows, time.Since(t).Seconds())
	sr.Probe, _ = b.topo.probeLink(ctx, b.probeBytes(), 3)
	if err := b.describeSource(ctx, sr, w, false); err != nil {
		return err
	}
	return b.deltaRound(ctx, sr, w)
}

func (b *Bench) probeBytes() int64 {
	if b.cfg.Scale.Name == "quick" {
		return 12 * mib
	}
	return 24 * mib
}

// describeSource records the source's sizes.
func (b *Bench) describeSource(ctx context.Context, sr *ScenarioResult, w *world, initial bool) error {
	sr.SourceVolumeBytes = w.size
	tree, err := listTree(w.src.Mount)
	if err != nil {
		return err
	}
	if initial {
		sr.DataBytes = tree.Bytes()
	} else {
		sr.DataBytesAfter = tree.Bytes()
		if sr.DataBytes == 0 {
			sr.DataBytes = tree.Bytes()
		}
	}
	return nil
}

// initialRound: the link probe and every tool's first full copy.
func (b *Bench) initialRound(ctx context.Context, sr *ScenarioResult, w *world) error {
	if err := b.describeSource(ctx, sr, w, true); err != nil {
		return err
	}
	var err error
	if sr.Probe, err = b.topo.probeLink(ctx, b.probeBytes(), 3); err != nil {
		return err
	}
	tree, err := listTree(w.src.Mount)
	if err != nil {
		return err
	}
	sr.newTools()
	if sr.Voldelta.Initial, err = b.voldeltaRound(ctx, w, tree, "initial"); err != nil {
		return err
	}
	if sr.Restic.Initial, sr.Restic.InitialRestore, err = b.resticInitial(ctx, w, tree); err != nil {
		return err
	}
	if sr.Rsync.Initial, err = b.rsyncRound(ctx, w, tree, "initial"); err != nil {
		return err
	}
	t := sr.VoldeltaMinio
	t.Initial, t.InitialPull, err = b.voldeltaStoreRound(ctx, w, tree, "initial")
	return err
}

// deltaRound: every tool's sync of the delta, restic's two restores.
func (b *Bench) deltaRound(ctx context.Context, sr *ScenarioResult, w *world) error {
	if err := b.describeSource(ctx, sr, w, false); err != nil {
		return err
	}
	tree, err := listTree(w.src.Mount)
	if err != nil {
		return err
	}
	if sr.Voldelta == nil { // mariadb-update: a further round on the same state
		sr.newTools()
	}
	if sr.Voldelta.Delta, err = b.voldeltaRound(ctx, w, tree, "delta"); err != nil {
		return err
	}
	if err := b.resticDelta(ctx, w, tree, sr.Restic); err != nil {
		return err
	}
	if sr.Rsync.Delta, err = b.rsyncRound(ctx, w, tree, "delta"); err != nil {
		return err
	}
	t := sr.VoldeltaMinio
	t.Delta, t.DeltaPull, err = b.voldeltaStoreRound(ctx, w, tree, "delta")
	return err
}

// measure runs fn between two readings of the link counters and fills the
// round's time and bytes.
func (b *Bench) measure(ctx context.Context, r *Round, fn func() error) error {
	before, err := readLink(ctx)
	if err != nil {
		return err
	}
	t := time.Now()
	err = fn()
	r.Seconds = time.Since(t).Seconds()
	after, lerr := readLink(ctx)
	if err == nil {
		err = lerr
	}
	d := after.Sub(before)
	r.LinkTxBytes, r.LinkRxBytes = d.Tx, d.Rx
	return err
}

func (r *Round) add(u Usage) { r.Procs = append(r.Procs, u) }

// measureCmd runs c as the round's timed step (see measure).
func (b *Bench) measureCmd(ctx context.Context, r *Round, c *Cmd) error {
	return b.measure(ctx, r, func() error {
		u, err := c.Run(ctx)
		r.add(u)
		return err
	})
}

// readFrozen runs c, a block-level read of the source device (voldelta
// send or push), as the round's timed step with the source's ext4 frozen
// around it (see Volume.Freeze).
func (b *Bench) readFrozen(ctx context.Context, w *world, r *Round, c *Cmd) error {
	thaw, err := w.src.Freeze(ctx)
	if err != nil {
		return err
	}
	err = b.measureCmd(ctx, r, c)
	if terr := thaw(); err == nil {
		err = terr
	}
	return err
}

// statsPath is where a voldelta command of the current scenario writes
// its --stats-json.
func (b *Bench) statsPath(name string) string {
	return filepath.Join(b.cfg.Out, "logs", b.step+"-"+name+".json")
}

// readStats is a --stats-json file's object (nil when missing).
func readStats(path string) map[string]any {
	var m map[string]any
	if raw, err := os.ReadFile(path); err == nil {
		json.Unmarshal(raw, &m)
	}
	return m
}

func (b *Bench) voldeltaRound(ctx context.Context, w *world, tree Tree, phase string) (*Round, error) {
	w.round++
	r := &Round{Name: "voldelta " + phase}
	logf := b.logPath("voldelta")
	recv, err := b.startReceiver(ctx, logf, w.vdDst.Dev, w.vdState)
	if err != nil {
		return nil, err
	}
	if err := b.evict(ctx, w); err != nil {
		recv.Stop()
		return nil, err
	}
	stats := b.statsPath(fmt.Sprintf("voldelta-%s-%d", phase, w.round))
	err = b.readFrozen(ctx, w, r, b.sendCmd(logf, stats, w.src.Dev))
	u, serr := recv.Stop()
	r.add(u)
	if err == nil {
		err = serr
	}
	if err != nil {
		return r, err
	}
	r.Stats = readStats(stats)
	log.Printf("voldelta %s: %.1fs, %s over the link", phase, r.Seconds, mb(r.LinkTxBytes+r.LinkRxBytes))
	r.verify(func() (bool, string) { return b.verifyReplica(ctx, w.vdDst, tree, r.Stats) })
	return r, nil
}

// startReceiver starts `voldelta receive` in the destination namespace
// for volume "vol" on target, with its state in stateDir, and waits until
// it listens.
func (b *Bench) startReceiver(ctx context.Context, logf, target, stateDir string) (*Service, error) {
	return b.startReceiverBin(ctx, b.cfg.Voldelta, logf, target, stateDir)
}

// startReceiverBin is startReceiver with another voldelta binary.
func (b *Bench) startReceiverBin(ctx context.Context, bin, logf, target, stateDir string) (*Service, error) {
	recv, err := (&Cmd{Name: "voldelta receive", Side: SideDst, Log: logf, StopSignal: sigInt,
		Args: []string{bin, "receive", "--listen", localAddr(portVoldelta),
			"--target", "vol=" + target, "--state-dir", stateDir, "--log-level", "warn",
			"--tls-cert", b.pki + "/receiver.pem", "--tls-key", b.pki + "/receiver-key.pem", "--tls-ca", b.pki + "/ca.pem"}}).Start(ctx, b.cl)
	if err != nil {
		return nil, err
	}
	if err := waitPort(ctx, b.cfg, SideDst, localAddr(portVoldelta), 30*time.Second); err != nil {
		recv.Stop()
		return nil, err
	}
	return recv, nil
}

// sendCmd is `voldelta send` of source in the source namespace, across
// the link to the receiver, volume "vol", its statistics to stats, with
// extra flags.
func (b *Bench) sendCmd(logf, stats, source string, extra ...string) *Cmd {
	return b.sendCmdBin(b.cfg.Voldelta, logf, stats, source, extra...)
}

// sendCmdBin is sendCmd with another voldelta binary.
func (b *Bench) sendCmdBin(bin, logf, stats, source string, extra ...string) *Cmd {
	return &Cmd{Name: "voldelta send", Side: SideSrc, Log: logf,
		Args: append([]string{bin, "send", "--source", source, "--to", proxyAddr(portVoldelta), "--volume", "vol",
			"--tls-cert", b.pki + "/agent.pem", "--tls-key", b.pki + "/agent-key.pem", "--tls-ca", b.pki + "/ca.pem",
			"--progress", "never", "--stats-json", stats}, extra...)}
}

// storePrefix is voldelta's prefix in its bucket.
const storePrefix = "bench"

// voldeltaStoreRound is the study's topology with voldelta: `voldelta push`
// of the frozen source device to MinIO at the destination (across the
// link), then at the destination `voldelta pull` of that generation from
// the local MinIO into the row's own replica, in place. The pull is what a
// cutover waits for at the target after the last push.
func (b *Bench) voldeltaStoreRound(ctx context.Context, w *world, tree Tree, phase string) (push, pull *Round, err error) {
	push, err = b.storeStep(ctx, w, "push", phase, SideSrc, true, "--source", w.src.Dev, "--endpoint", proxyAddr(portMinio))
	if err != nil {
		return push, nil, err
	}
	pull, err = b.storeStep(ctx, w, "pull", phase, SideDst, false, "--target", w.pullDst.Dev, "--state-dir", w.pullState,
		"--endpoint", localAddr(portMinio))
	if err != nil {
		return push, pull, err
	}
	pull.verify(func() (bool, string) { return b.verifyReplica(ctx, w.pullDst, tree, push.Stats) })
	return push, pull, nil
}

// storeStep runs `voldelta CMD` (push or pull) on the scenario's store,
// volume "vol", with args, on side, as a timed step of its own (with the
// source frozen around it if freeze), MinIO charged, and keeps its
// --stats-json.
func (b *Bench) storeStep(ctx context.Context, w *world, cmd, phase string, side Side, freeze bool, args ...string) (*Round, error) {
	r := &Round{Name: "voldelta " + cmd + " " + phase}
	mark, err := b.minioStep(ctx, w)
	if err != nil {
		return nil, err
	}
	stats := b.statsPath("voldelta-" + cmd + "-" + phase)
	c := &Cmd{Name: "voldelta " + cmd, Side: side, Log: b.logPath("voldelta-minio"), Env: s3Env,
		Args: append(append([]string{b.cfg.Voldelta, cmd, "--store", "s3://" + w.vdBucket + "/" + storePrefix, "--volume", "vol"},
			args...), "--insecure", "--stats-json", stats)}
	if freeze {
		err = b.readFrozen(ctx, w, r, c)
	} else {
		err = b.measureCmd(ctx, r, c)
	}
	if err = r.chargeMinio(mark, err); err != nil {
		return r, err
	}
	r.Stats = readStats(stats)
	log.Printf("%s: %.1fs, %s over the link", r.Name, r.Seconds, mb(r.LinkBytes()))
	return r, nil
}

// verify runs check as r's verification, timed.
func (r *Round) verify(check func() (bool, string)) {
	t := time.Now()
	r.Verified, r.VerifyNote = check()
	r.VerifySeconds = time.Since(t).Seconds()
}

// verifyReplica checks that the replica v holds what the source held when
// a voldelta round read it: its root hash is the source's (stats: that
// round's --stats-json), and its ext4 holds the source's files.
func (b *Bench) verifyReplica(ctx context.Context, v *Volume, tree Tree, stats map[string]any) (bool, string) {
	out, err := sh(ctx, b.cfg.Voldelta, "hash", "--json", v.Dev)
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
	if err := v.MountAt(ctx, b.mnt(v.Name+"-check"), true); err != nil {
		return false, "replica root hash matches, but the replica does not mount: " + err.Error()
	}
	defer v.Umount()
	got, err := listTree(v.Mount)
	if err != nil {
		return false, err.Error()
	}
	if d := tree.Diff(got); d != "" {
		return false, "replica files: " + d
	}
	return true, "voldelta hash of the replica device = the source's root hash; replica ext4 mounted read-only: same files (SHA-256)"
}

// treeCheck is a check (for Round.verify) that dir holds tree.
func (b *Bench) treeCheck(tree Tree, dir string) func() (bool, string) {
	return func() (bool, string) { return b.verifyTree(tree, dir) }
}

func (b *Bench) verifyTree(tree Tree, dir string) (bool, string) {
	got, err := listTree(dir)
	if err != nil {
		return false, err.Error()
	}
	if d := tree.Diff(got); d != "" {
		return false, d
	}
	return true, "same files (SHA-256 of every file, same directories)"
}

func mb(n uint64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }
