package main

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"
)

const mib = 1 << 20

// writeRandom writes n random bytes (ChaCha8 seeded with seed) to path,
// appending when appendTo is set, and fsyncs.
func writeRandom(path string, n int64, seed uint64, appendTo bool) error {
	flags := os.O_CREATE | os.O_WRONLY | os.O_TRUNC
	if appendTo {
		flags = os.O_CREATE | os.O_WRONLY | os.O_APPEND
	}
	f, err := os.OpenFile(path, flags, 0o644)
	if err != nil {
		return err
	}
	var s [32]byte
	for i := range 8 {
		s[i] = byte(seed >> (8 * i))
	}
	rng := rand.NewChaCha8(s)
	w := bufio.NewWriterSize(f, 4*mib)
	buf := make([]byte, mib)
	for left := n; left > 0; {
		k := min(left, int64(len(buf)))
		rng.Read(buf[:k])
		if _, err := w.Write(buf[:k]); err != nil {
			f.Close()
			return err
		}
		left -= k
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// MariaDB is a mariadbd on the source volume, in the source namespace,
// reached only by its Unix socket.
type MariaDB struct {
	b       *Bench
	datadir string
	run     string
	socket  string
	svc     *Service
}

func (b *Bench) newMariaDB(srcMount string) *MariaDB {
	run := filepath.Join(b.cfg.Work, "mysqld") // socket and pid file, owned by mysql
	return &MariaDB{b: b, datadir: filepath.Join(srcMount, "mysql"), run: run,
		socket: filepath.Join(run, "mysqld.sock")}
}

// Install creates an empty datadir.
func (m *MariaDB) Install(ctx context.Context) error {
	for _, d := range []string{m.datadir, m.run} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		if _, err := sh(ctx, "chown", "mysql:mysql", d); err != nil {
			return err
		}
	}
	_, err := (&Cmd{Name: "mariadb-install-db", Side: SideSrc, Log: m.b.logPath("mariadb"),
		Args: []string{"mariadb-install-db", "--no-defaults", "--datadir=" + m.datadir, "--user=mysql",
			"--auth-root-authentication-method=normal", "--skip-test-db",
			"--innodb-log-file-size=" + m.b.cfg.Scale.RedoLog}}).Run(ctx)
	return err
}

// Start runs mariadbd as its own process and waits until it answers.
func (m *MariaDB) Start(ctx context.Context) error {
	var err error
	m.svc, err = (&Cmd{Name: "mariadbd", Side: SideSrc, Log: m.b.logPath("mariadb"),
		Args: []string{"mariadbd", "--no-defaults", "--datadir=" + m.datadir, "--user=mysql",
			"--socket=" + m.socket, "--pid-file=" + filepath.Join(m.run, "mysqld.pid"),
			"--skip-networking", "--innodb-buffer-pool-size=256M", "--innodb-log-file-size=" + m.b.cfg.Scale.RedoLog,
			"--innodb-flush-log-at-trx-commit=2", "--skip-log-bin"}}).Start(ctx, m.b.cl)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, err := (&Cmd{Name: "mariadb-admin ping", Side: SideSrc,
			Args: []string{"mariadb-admin", "--socket=" + m.socket, "-uroot", "ping"}}).Run(ctx)
		if err == nil {
			return nil
		}
		if ended, werr := m.svc.Exited(); ended {
			return fmt.Errorf("mariadbd ended at start: %v%s", werr, tailOf(m.b.logPath("mariadb")))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("mariadbd did not answer within a minute: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Stop shuts mariadbd down cleanly (SIGTERM: InnoDB flushes and closes).
func (m *MariaDB) Stop() error {
	if m.svc == nil {
		return nil
	}
	_, err := m.svc.Stop()
	m.svc = nil
	return err
}

// SQL runs statements through the mariadb client.
func (m *MariaDB) SQL(ctx context.Context, stmts string) error {
	_, err := (&Cmd{Name: "mariadb", Side: SideSrc, Log: m.b.logPath("mariadb"), In: stmts,
		Args: []string{"mariadb", "--socket=" + m.socket, "-uroot", "--batch"}}).Run(ctx)
	return err
}

// The study's table and row: a 32,000-character long_name (an md5 repeated
// 1000 times), stored off-page by InnoDB, ~37 KB per row on disk.
const personTable = `create database if not exists arctic;
create table arctic.person (
  id int auto_increment primary key,
  long_name text,
  age int,
  birth_day date
);
`

func insertRows(n int) string {
	var sb strings.Builder
	sb.WriteString("use arctic;\n") // seq_1_to_N (the sequence engine) resolves in the current database
	for n > 0 {
		k := min(n, 500)
		fmt.Fprintf(&sb, "insert into arctic.person (long_name, age, birth_day) select repeat(md5(rand()), 1000), floor(rand()*100), date_add(date('1900-01-01'), interval floor(rand()*100) year) from seq_1_to_%d;\n", k)
		n -= k
	}
	return sb.String()
}

// updateRows rewrites long_name (and age) of n distinct random rows among
// ids 1..maxID.
func updateRows(n, maxID int, seed uint64) string {
	rng := rand.New(rand.NewPCG(seed, 7))
	ids := rng.Perm(maxID)[:n]
	var sb strings.Builder
	for len(ids) > 0 {
		k := min(len(ids), 200)
		parts := make([]string, k)
		for i, id := range ids[:k] {
			parts[i] = fmt.Sprint(id + 1)
		}
		fmt.Fprintf(&sb, "update arctic.person set long_name = repeat(md5(rand()), 1000), age = floor(rand()*100) where id in (%s);\n", strings.Join(parts, ","))
		ids = ids[k:]
	}
	return sb.String()
}
