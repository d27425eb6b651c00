package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

const sigInt = syscall.SIGINT

const (
	minioUser     = "voldelta-bench"
	minioPassword = "voldelta-bench-secret"
	resticPass    = "voldelta-bench"
)

// s3Env are MinIO's credentials, as restic and voldelta read them.
var s3Env = []string{"AWS_ACCESS_KEY_ID=" + minioUser, "AWS_SECRET_ACCESS_KEY=" + minioPassword}

// minio returns the scenario's MinIO, started on first use on the
// destination's loopback (its delay proxy makes it reachable from the
// source across the link) with restic's repository and voldelta's bucket,
// and a mark for measuring the next step: the server runs for the whole
// scenario, as at a real destination, and each step is charged the CPU
// time and peak RSS it caused.
func (b *Bench) minio(ctx context.Context, w *world) (procMark, error) {
	if w.minio == nil {
		s, err := (&Cmd{Name: "minio", Side: SideDst, Log: b.logPath("minio"),
			Env: []string{"MINIO_ROOT_USER=" + minioUser, "MINIO_ROOT_PASSWORD=" + minioPassword,
				"MINIO_BROWSER=off", "MINIO_UPDATE=off", "MINIO_CI_CD=1"},
			Args: []string{b.cfg.Minio, "server", "--quiet", "--address", localAddr(portMinio),
				"--console-address", localAddr(portMinio + 1), w.minioDir}}).Start(ctx, b.cl)
		if err != nil {
			return procMark{}, err
		}
		w.minio = s
		if err := waitPort(ctx, b.cfg, SideDst, localAddr(portMinio), time.Minute); err != nil {
			return procMark{}, err
		}
		if _, err := b.restic(w, SideSrc, "restic init", "init").Run(ctx); err != nil {
			return procMark{}, err
		}
		if _, err := (&Cmd{Name: "create bucket " + w.vdBucket, Side: SideDst, Log: b.logPath("minio"), Env: s3Env,
			Args: []string{b.cfg.Self, "mkbucket", localAddr(portMinio), w.vdBucket}}).Run(ctx); err != nil {
			return procMark{}, err
		}
	}
	if ended, err := w.minio.Exited(); ended {
		return procMark{}, fmt.Errorf("minio ended: %v%s", err, tailOf(b.logPath("minio")))
	}
	pid, err := w.minio.Pid()
	if err != nil {
		return procMark{}, err
	}
	return markProc(pid)
}

// minioStep prepares a step that uses MinIO: the server started, the
// caches evicted, and a mark taken after the eviction (which is not the
// step's).
func (b *Bench) minioStep(ctx context.Context, w *world) (procMark, error) {
	if _, err := b.minio(ctx, w); err != nil {
		return procMark{}, err
	}
	if err := b.evict(ctx, w); err != nil {
		return procMark{}, err
	}
	return b.minio(ctx, w)
}

// chargeMinio adds MinIO's usage since m to r; err, the step's own error,
// comes first.
func (r *Round) chargeMinio(m procMark, err error) error {
	u, serr := m.Since("minio", SideDst)
	r.add(u)
	if err == nil {
		err = serr
	}
	return err
}

func (b *Bench) restic(w *world, side Side, name string, args ...string) *Cmd {
	host := proxyAddr(portMinio) // from the source: across the link
	cache := filepath.Join(b.cfg.Work, "restic-cache-src")
	if side == SideDst {
		host = localAddr(portMinio) // at the destination: MinIO is local
		cache = filepath.Join(b.cfg.Work, "restic-cache-dst")
	}
	return &Cmd{Name: name, Side: side, Log: b.logPath("restic"),
		Env: append([]string{"RESTIC_PASSWORD=" + resticPass, "RESTIC_REPOSITORY=s3:http://" + host + "/" + w.bucket,
			"RESTIC_CACHE_DIR=" + cache}, s3Env...),
		Args: append([]string{b.cfg.Restic}, args...)}
}

// resticBackup: `restic backup` of the directory path at the source (the
// source's mounted files), to MinIO across the link.
func (b *Bench) resticBackup(ctx context.Context, w *world, phase, path string) (*Round, error) {
	r := &Round{Name: "restic backup " + phase}
	mark, err := b.minioStep(ctx, w)
	if err != nil {
		return nil, err
	}
	err = r.chargeMinio(mark, b.measureCmd(ctx, r, b.restic(w, SideSrc, "restic backup", "backup", "--host", "source", path)))
	log.Printf("restic backup %s: %.1fs, %s over the link", phase, r.Seconds, mb(r.LinkTxBytes+r.LinkRxBytes))
	return r, err
}

// resticRestore restores the latest snapshot's tree under path (the
// directory backed up) into dir at the destination (MinIO local there),
// then syncfs's the target, and verifies it with check.
func (b *Bench) resticRestore(ctx context.Context, w *world, name, path, dir string, check func() (bool, string), extra ...string) (*Round, error) {
	r := &Round{Name: name}
	mark, err := b.minioStep(ctx, w)
	if err != nil {
		return nil, err
	}
	args := append([]string{"restore", "latest:" + path, "--target", dir}, extra...)
	err = b.measure(ctx, r, func() error {
		u, err := b.restic(w, SideDst, name, args...).Run(ctx)
		r.add(u)
		if err != nil {
			return err
		}
		t := time.Now()
		_, err = sh(ctx, "sync", "-f", dir)
		r.SyncSeconds = time.Since(t).Seconds()
		return err
	})
	if err = r.chargeMinio(mark, err); err != nil {
		return r, err
	}
	log.Printf("%s: %.1fs", name, r.Seconds)
	r.verify(check)
	return r, nil
}

func (b *Bench) resticInitial(ctx context.Context, w *world, tree Tree) (backup, restore *Round, err error) {
	if backup, err = b.resticBackup(ctx, w, "initial", w.src.Mount); err != nil {
		return backup, nil, err
	}
	restore, err = b.resticRestore(ctx, w, "restic restore initial", w.src.Mount, w.resticB.Mount, b.treeCheck(tree, w.resticB.Mount))
	return backup, restore, err
}

// resticDelta: the delta backup, then (a) the study's flow, a full
// restore into an empty volume, and (b) restic's best in-place mode into
// the tree restored before.
func (b *Bench) resticDelta(ctx context.Context, w *world, tree Tree, tr *ToolResult) error {
	var err error
	if tr.Delta, err = b.resticBackup(ctx, w, "delta", w.src.Mount); err != nil {
		return err
	}
	empty, err := b.ext4Volume(ctx, "restic-c", w.size)
	if err != nil {
		return err
	}
	tr.FullRestore, err = b.resticRestore(ctx, w, "restic restore full", w.src.Mount, empty.Mount, b.treeCheck(tree, empty.Mount))
	if cerr := empty.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	tr.InPlaceRestore, err = b.resticRestore(ctx, w, "restic restore in-place", w.src.Mount, w.resticB.Mount,
		b.treeCheck(tree, w.resticB.Mount), "--overwrite", "if-changed", "--delete")
	return err
}

const rsyncdConf = `use chroot = no
[vol]
  path = %s
  read only = no
  uid = root
  gid = root
`

// startRsyncd starts an rsync daemon in the destination namespace whose
// module "vol" is dir, and waits until it listens.
func (b *Bench) startRsyncd(ctx context.Context, dir string) (*Service, error) {
	conf := filepath.Join(b.cfg.Work, "rsyncd.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(rsyncdConf, dir)), 0o644); err != nil {
		return nil, err
	}
	d, err := (&Cmd{Name: "rsync --daemon", Side: SideDst, Log: b.logPath("rsync"),
		Args: []string{"rsync", "--daemon", "--no-detach", "--config=" + conf, "--address=127.0.0.1",
			fmt.Sprintf("--port=%d", portRsync), "--log-file=" + b.logPath("rsyncd")}}).Start(ctx, b.cl)
	if err != nil {
		return nil, err
	}
	if err := waitPort(ctx, b.cfg, SideDst, localAddr(portRsync), 30*time.Second); err != nil {
		d.Stop()
		return nil, err
	}
	return d, nil
}

// rsyncRound: `rsync --inplace --no-whole-file` of the source's files to
// an rsync daemon at the destination, across the link, then a syncfs of
// the target.
func (b *Bench) rsyncRound(ctx context.Context, w *world, tree Tree, phase string) (*Round, error) {
	r := &Round{Name: "rsync " + phase}
	d, err := b.startRsyncd(ctx, w.rsyncDst.Mount)
	if err != nil {
		return nil, err
	}
	if err := b.evict(ctx, w); err != nil {
		d.Stop()
		return nil, err
	}
	err = b.measure(ctx, r, func() error { return b.rsyncTree(ctx, r, w.src.Mount, w.rsyncDst.Mount) })
	u, serr := d.Stop()
	r.add(u)
	if err == nil {
		err = serr
	}
	if err != nil {
		return r, err
	}
	log.Printf("rsync %s: %.1fs, %s over the link", phase, r.Seconds, mb(r.LinkTxBytes+r.LinkRxBytes))
	r.verify(func() (bool, string) { return b.verifyTree(tree, w.rsyncDst.Mount) })
	return r, nil
}

// rsyncTree is rsync --inplace of the tree at src to the destination's
// rsync daemon (module vol), then a sync of dstMount, the daemon's
// filesystem: the rsync rows' timed step, its usage added to r.
func (b *Bench) rsyncTree(ctx context.Context, r *Round, src, dstMount string) error {
	u, err := (&Cmd{Name: "rsync", Side: SideSrc, Log: b.logPath("rsync"),
		Args: []string{"rsync", "-a", "--inplace", "--no-whole-file", "--delete", "--stats",
			src + "/", fmt.Sprintf("rsync://%s/vol/", proxyAddr(portRsync))}}).Run(ctx)
	r.add(u)
	if err != nil {
		return err
	}
	t := time.Now()
	_, err = sh(ctx, "sync", "-f", dstMount)
	r.SyncSeconds = time.Since(t).Seconds()
	return err
}
