package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// `bench warm` (make bench-warm): a warm migration of a MariaDB volume.
// MariaDB runs on an ext4 on a loop device whose image lives on an XFS
// with reflinks (the "storage pool"); a snapshot is an fsfreeze of the
// ext4 around a reflink copy of the image. While a background inserter
// writes at a fixed rate, voldelta pre-copies snapshots back to back
// (`--base` the previous snapshot: reflink change hints) until a round's
// bytes on the link fall under a threshold; then the cutover: inserter
// and MariaDB stopped (t0), final snapshot, final round, the replica's
// ext4 mounted and MariaDB started on it at the destination with the
// source's row count (t1). restic (backup + full restore, backup +
// in-place restore) and rsync --inplace are measured on the same
// snapshots, same link. See bench/README.md.

// WarmConfig is a warm run's configuration.
type WarmConfig struct {
	*Config
	DataMiB       int     // database size the fill reaches (approximately)
	RowsPerSec    int     // the inserter's rate during pre-copy
	ConvergeBytes int64   // a pre-copy round that sent fewer bytes of chunks (raw) converges
	MaxRounds     int     // pre-copy rounds at most
	Preflush      bool    // innodb_max_dirty_pages_pct = 0 during pre-copy
	Results       string  // where warm.md, warm.json and warm.png go
	Render        string  // render this directory's warm.json again and exit
	RowBytesDisk  float64 // bytes a row takes in the datadir, for sizing
}

// warmRowDisk is what one of the study's rows takes on disk (the study:
// 37 GB for 1M rows).
const warmRowDisk = 37000

func warmMain(args []string) int {
	log.SetPrefix("bench warm: ")
	cfg, err := parseWarmFlags(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(os.Stderr, "bench warm:", err)
		return 2
	}
	if cfg.Render != "" {
		if err := renderWarmDir(cfg.Render); err != nil {
			fmt.Fprintln(os.Stderr, "bench warm:", err)
			return 1
		}
		return 0
	}
	if os.Geteuid() == 0 {
		cleanStaleWarm(context.Background(), cfg.Work)
	}
	tools := []string{"ip", "tc", "losetup", "mkfs.ext4", "mkfs.xfs", "mount", "umount", "fsfreeze", "blockdev", "cp", "rsync",
		"mariadbd", "mariadb", "mariadb-install-db", "gnuplot", "/usr/bin/time"}
	err = runHarness(cfg.Config, tools, func(ctx context.Context, b *Bench) error {
		return b.runWarm(ctx, cfg)
	})
	if err != nil {
		log.Printf("FAILED: %v", err)
		return 1
	}
	return 0
}

func parseWarmFlags(args []string) (*WarmConfig, error) {
	fs := flag.NewFlagSet("bench warm", flag.ContinueOnError)
	data := fs.Int("data-mib", 2048, "database size the fill reaches, MiB (rows of ~37 KB; the volume is 1.25× + 512 MiB)")
	rate := fs.Int("rows-per-sec", 40, "the inserter's rate during pre-copy, rows/s (~37 KB each on disk)")
	conv := fs.Int64("converge-bytes", 16<<20, "a pre-copy round (from the second) converges when the chunks it sent hold fewer bytes than this, before compression (bytes_sent_raw)")
	maxr := fs.Int("max-rounds", 6, "pre-copy rounds at most")
	preflush := fs.Bool("preflush", true, "set innodb_max_dirty_pages_pct (and _lwm) to 0 when the pre-copy starts, so the shutdown at the cutover has little to flush")
	results := fs.String("results", "bench/results", "directory for warm.md, warm.json and warm.png")
	render := fs.String("render", "", "render DIR/warm.md and warm.png again from DIR/warm.json, then exit (no root)")
	finish := commonFlags(fs, "/var/tmp/voldelta-bench-warm")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: bench warm [flags]   (as root; see bench/README.md)\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if *data < 64 || *rate < 1 || *maxr < 2 || *conv < 1 {
		return nil, errors.New("want -data-mib ≥ 64, -rows-per-sec ≥ 1, -max-rounds ≥ 2, -converge-bytes ≥ 1")
	}
	cfg := &WarmConfig{Config: &Config{Scale: Scale{Name: "warm", RedoLog: "96M"}}, DataMiB: *data, RowsPerSec: *rate,
		ConvergeBytes: *conv, MaxRounds: *maxr, Preflush: *preflush, RowBytesDisk: warmRowDisk}
	var err error
	if cfg.Results, err = filepath.Abs(*results); err != nil {
		return nil, err
	}
	if *render != "" {
		cfg.Render = *render
		return cfg, nil
	}
	return cfg, finish(cfg.Config, "warm")
}

// cleanStaleWarm undoes what a killed warm run left that the common
// cleanup cannot: loop devices backed by images inside the pool (under
// work/mnt), and their mounts, before the pool itself is unmounted.
func cleanStaleWarm(ctx context.Context, work string) {
	out, err := sh(ctx, "losetup", "-l", "-n", "-O", "NAME,BACK-FILE")
	if err != nil {
		return
	}
	mounts, _ := os.ReadFile("/proc/self/mounts")
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || !strings.HasPrefix(f[1], filepath.Join(work, "mnt")+"/") {
			continue
		}
		for _, m := range strings.Split(string(mounts), "\n") {
			if mf := strings.Fields(m); len(mf) > 1 && mf[0] == f[0] {
				log.Printf("unmounting %s (%s) left by an earlier run", mf[1], f[0])
				sh(ctx, "fsfreeze", "-u", mf[1])
				sh(ctx, "umount", mf[1])
			}
		}
		log.Printf("detaching %s (%s) left by an earlier run", f[0], f[1])
		if _, err := sh(ctx, "losetup", "-d", f[0]); err != nil {
			log.Printf("cleanup: %v", err)
		}
	}
}

// attachImage attaches the image file img (which exists) to a free loop
// device with losetup args; detaching removes the image if remove.
func (b *Bench) attachImage(ctx context.Context, name, img string, remove bool, args ...string) (*Volume, error) {
	dev, err := sh(ctx, append(append([]string{"losetup", "-f", "--show"}, args...), img)...)
	if err != nil {
		return nil, err
	}
	fi, _ := os.Stat(img)
	v := &Volume{Name: name, Image: img, Dev: dev, cl: b.cl}
	if fi != nil {
		v.Size = fi.Size()
	}
	v.detach = b.cl.Add("detach "+dev, func() error {
		_, err := sh(context.Background(), "losetup", "-d", dev)
		if remove {
			os.Remove(img)
		}
		return err
	})
	return v, nil
}

// poolVolume is a sparse image of size bytes in the pool, attached with
// direct I/O if direct (writes go to the image, not the loop device's page
// cache).
func (b *Bench) poolVolume(ctx context.Context, pool *Volume, name string, size int64, direct bool) (*Volume, error) {
	img := filepath.Join(pool.Mount, name+".img")
	os.Remove(img)
	f, err := os.Create(img)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, err
	}
	f.Close()
	if direct {
		return b.attachImage(ctx, name, img, true, "--direct-io=on")
	}
	return b.attachImage(ctx, name, img, true)
}

// warmDB is a mariadbd on side with its own socket and pid directory.
type warmDB struct {
	b       *Bench
	name    string
	side    Side
	datadir string
	run     string
	socket  string
	svc     *Service
}

func (b *Bench) newWarmDB(name string, side Side, mount string) *warmDB {
	run := filepath.Join(b.cfg.Work, "mysqld-"+name)
	return &warmDB{b: b, name: name, side: side, datadir: filepath.Join(mount, "mysql"), run: run, socket: filepath.Join(run, "mysqld.sock")}
}

func (m *warmDB) log() string { return m.b.logPath("mariadb-" + m.name) }

func (m *warmDB) Install(ctx context.Context) error {
	_, err := (&Cmd{Name: "mariadb-install-db", Side: m.side, Log: m.log(),
		Args: []string{"mariadb-install-db", "--no-defaults", "--datadir=" + m.datadir, "--user=mysql",
			"--auth-root-authentication-method=normal", "--skip-test-db", "--innodb-log-file-size=" + m.b.cfg.Scale.RedoLog}}).Run(ctx)
	return err
}

// Start starts mariadbd (the bench's settings, as workload.go's) and
// waits until it answers.
func (m *warmDB) Start(ctx context.Context) error {
	for _, d := range []string{m.datadir, m.run} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		if _, err := sh(ctx, "chown", "mysql:mysql", d); err != nil {
			return err
		}
	}
	var err error
	m.svc, err = (&Cmd{Name: "mariadbd " + m.name, Side: m.side, Log: m.log(),
		Args: []string{"mariadbd", "--no-defaults", "--datadir=" + m.datadir, "--user=mysql",
			"--socket=" + m.socket, "--pid-file=" + filepath.Join(m.run, "mysqld.pid"),
			"--skip-networking", "--innodb-buffer-pool-size=256M", "--innodb-log-file-size=" + m.b.cfg.Scale.RedoLog,
			"--innodb-flush-log-at-trx-commit=2", "--skip-log-bin"}}).Start(ctx, m.b.cl)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		_, err := (&Cmd{Name: "mariadb-admin ping", Side: m.side,
			Args: []string{"mariadb-admin", "--socket=" + m.socket, "-uroot", "--connect-timeout=1", "ping"}}).Run(ctx)
		if err == nil {
			return nil
		}
		if ended, werr := m.svc.Exited(); ended {
			return fmt.Errorf("mariadbd %s ended at start: %v%s", m.name, werr, tailOf(m.log()))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("mariadbd %s did not answer within 2 minutes: %v", m.name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (m *warmDB) Stop() error {
	if m.svc == nil {
		return nil
	}
	_, err := m.svc.Stop()
	m.svc = nil
	return err
}

func (m *warmDB) SQL(ctx context.Context, stmts string) error {
	_, err := (&Cmd{Name: "mariadb", Side: m.side, Log: m.log(), In: stmts,
		Args: []string{"mariadb", "--socket=" + m.socket, "-uroot", "--batch"}}).Run(ctx)
	return err
}

// Rows is count(*) and max(id) of arctic.person.
func (m *warmDB) Rows(ctx context.Context) (count, maxID int64, err error) {
	var out bytesBuffer
	if _, err = (&Cmd{Name: "mariadb count", Side: m.side, Log: m.log(), Out: &out.Buffer,
		In:   "select count(*), coalesce(max(id), 0) from arctic.person;\n",
		Args: []string{"mariadb", "--socket=" + m.socket, "-uroot", "--batch", "--skip-column-names"}}).Run(ctx); err != nil {
		return 0, 0, err
	}
	if _, err = fmt.Sscanf(strings.TrimSpace(out.String()), "%d %d", &count, &maxID); err != nil {
		return 0, 0, fmt.Errorf("count: %q: %w", out.String(), err)
	}
	return count, maxID, nil
}

// inserter is the application's steady load: one mariadb client fed a
// batch of rows every tick, RowsPerSec on average, while not paused.
type inserter struct {
	stdin  io.WriteCloser
	wait   func() error
	undo   func() error
	mu     sync.Mutex
	paused bool
	rows   int64 // rows in the batches written to the client
	stop   chan struct{}
	done   chan struct{}
	start  time.Time
}

const insertTick = 250 * time.Millisecond

func (b *Bench) startInserter(ctx context.Context, db *warmDB, rowsPerSec int) (*inserter, error) {
	c := &Cmd{Name: "inserter", Side: db.side, Log: b.logPath("inserter"),
		Args: []string{"mariadb", "--socket=" + db.socket, "-uroot", "--batch", "arctic"}}
	cmd, logf, usageFile, err := c.build(context.WithoutCancel(ctx))
	if err != nil {
		return nil, err
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	in := &inserter{stdin: stdin, stop: make(chan struct{}), done: make(chan struct{}), start: time.Now()}
	var once sync.Once
	var werr error
	in.wait = func() error {
		once.Do(func() {
			werr = cmd.Wait()
			if logf != nil {
				logf.Close()
			}
			os.Remove(usageFile)
		})
		return werr
	}
	in.undo = b.cl.Add("stop inserter", func() error {
		in.halt()
		if pid, err := childOf(cmd.Process.Pid); err == nil {
			syscall.Kill(pid, syscall.SIGTERM)
		}
		return in.wait()
	})
	// rowsPerSec over ticks of 250 ms: the remainder is carried, so the
	// mean rate is exact.
	go func() {
		defer close(in.done)
		t := time.NewTicker(insertTick)
		defer t.Stop()
		var owed float64
		for {
			select {
			case <-in.stop:
				return
			case <-t.C:
			}
			in.mu.Lock()
			if in.paused {
				in.mu.Unlock()
				continue
			}
			owed += float64(rowsPerSec) * insertTick.Seconds()
			k := int(owed)
			owed -= float64(k)
			if k > 0 {
				if _, err := io.WriteString(stdin, insertBatch(k)); err != nil {
					in.mu.Unlock()
					return
				}
				in.rows += int64(k)
			}
			in.mu.Unlock()
		}
	}()
	return in, nil
}

func insertBatch(k int) string {
	return fmt.Sprintf("insert into person (long_name, age, birth_day) select repeat(md5(rand()), 1000), floor(rand()*100), date_add(date('1900-01-01'), interval floor(rand()*100) year) from seq_1_to_%d;\n", k)
}

func (in *inserter) halt() {
	select {
	case <-in.stop:
	default:
		close(in.stop)
	}
	<-in.done
}

func (in *inserter) setPaused(p bool) {
	in.mu.Lock()
	in.paused = p
	in.mu.Unlock()
}

func (in *inserter) Rows() int64 {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.rows
}

// Stop ends the load: no more batches, the client runs what it was given
// and exits; a clean exit means every batch was inserted (the client stops
// at the first error). It returns the rows inserted.
func (in *inserter) Stop() (int64, error) {
	in.halt()
	in.stdin.Close()
	err := in.wait()
	in.undo()
	if err != nil {
		return in.rows, fmt.Errorf("inserter: %w", err)
	}
	return in.rows, nil
}
