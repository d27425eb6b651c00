package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/voldelta/voldelta/internal/toolcache"
)

// Scale sizes the scenarios: the study's figures divided by Divisor, in the
// study's proportions (70 GB + 1 GB for the files, 37 GB + 27k rows of ~37 KB
// for the database).
type Scale struct {
	Name       string `json:"name"`
	Divisor    int    `json:"divisor"`
	BigFileMiB int    `json:"big_file_mib"`
	AppendMiB  int    `json:"append_mib"`
	SmallFiles int    `json:"small_files"` // of FileMiB each
	NewFiles   int    `json:"new_files"`
	FileMiB    int    `json:"file_mib"`
	DBRows     int    `json:"db_rows"`
	DBNewRows  int    `json:"db_new_rows"`
	DBUpdRows  int    `json:"db_updated_rows"`
	RedoLog    string `json:"innodb_log_file_size"`
}

var scales = map[string]Scale{
	// 1/70 of the study: 1000 MiB + 14 MiB appended (1.4 %); 100 files of
	// 10 MiB + 1 new file (1 %: 1.4 files cannot be); 14286 rows + 386
	// (2.7 %). It fits the 25 minutes a run may take on 2 cores.
	"default": {Name: "default", Divisor: 70, BigFileMiB: 1000, AppendMiB: 14,
		SmallFiles: 100, NewFiles: 1, FileMiB: 10, DBRows: 14286, DBNewRows: 386, DBUpdRows: 386, RedoLog: "96M"},
	// 1/1000 of the study: a smoke test; 7+1 files cannot keep the 1.4 %,
	// and a smaller redo log (MariaDB's default is 96M) keeps the datadir
	// in proportion.
	"quick": {Name: "quick", Divisor: 1000, BigFileMiB: 70, AppendMiB: 1,
		SmallFiles: 7, NewFiles: 1, FileMiB: 10, DBRows: 1000, DBNewRows: 27, DBUpdRows: 27, RedoLog: "16M"},
}

// Config is everything a run needs; filled from flags.
type Config struct {
	Scale     Scale
	Scenarios []string
	Out       string // results directory
	Work      string // volumes, state, logs of this run
	Keep      bool   // keep Work after the run
	Rate      string // tc tbf rate, each direction
	Delay     time.Duration
	Self      string // this binary, re-executed in the namespaces
	Voldelta  string
	Restic    string
	Minio     string
	Command   string // the command line, for the results
}

var allScenarios = []string{"large-file", "small-files", "mariadb-insert", "mariadb-update"}

func main() {
	log.SetFlags(log.Ltime)
	log.SetPrefix("bench: ")
	if len(os.Args) > 1 {
		if h, ok := helpers[os.Args[1]]; ok {
			if err := h(os.Args[2:]); err != nil {
				fmt.Fprintf(os.Stderr, "bench %s: %v\n", os.Args[1], err)
				os.Exit(1)
			}
			return
		}
	}
	if len(os.Args) > 1 && os.Args[1] == "scale" {
		os.Exit(scaleMain(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "warm" {
		os.Exit(warmMain(os.Args[2:]))
	}
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	if err := run(cfg); err != nil {
		log.Printf("FAILED: %v", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (*Config, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	scale := fs.String("scale", "quick", "scenario sizes: quick (1/1000 of the study) or default (1/70)")
	scen := fs.String("scenarios", strings.Join(allScenarios, ","), "comma-separated scenarios to run; mariadb-update continues from mariadb-insert")
	finish := commonFlags(fs, "/var/tmp/voldelta-bench")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: bench [flags]   (as root; see bench/README.md)\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	sc, ok := scales[*scale]
	if !ok {
		return nil, fmt.Errorf("unknown -scale %q (quick or default)", *scale)
	}
	cfg := &Config{Scale: sc}
	for _, s := range strings.Split(*scen, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		found := false
		for _, a := range allScenarios {
			found = found || a == s
		}
		if !found {
			return nil, fmt.Errorf("unknown scenario %q (have %s)", s, strings.Join(allScenarios, ", "))
		}
		cfg.Scenarios = append(cfg.Scenarios, s)
	}
	if has(cfg.Scenarios, "mariadb-update") && !has(cfg.Scenarios, "mariadb-insert") {
		return nil, errors.New("mariadb-update continues from mariadb-insert: run both")
	}
	return cfg, finish(cfg, sc.Name)
}

// commonFlags registers the flags every mode of the harness has (work and
// results directories, link, binaries) on fs; the returned function fills
// them into cfg after fs.Parse, with outName naming the default results
// directory bench/out/OUTNAME-TIMESTAMP.
func commonFlags(fs *flag.FlagSet, defaultWork string) func(cfg *Config, outName string) error {
	out := fs.String("out", "", "results directory (default bench/out/NAME-TIMESTAMP)")
	work := fs.String("work", defaultWork, "work directory for volumes and state (removed after the run)")
	keep := fs.Bool("keep", false, "keep the work directory")
	rate := fs.String("rate", "100mbit", "link rate per direction (tc tbf)")
	delay := fs.Duration("delay", 10*time.Millisecond, "one-way delay added by the proxies (RTT = 2×delay)")
	vd := fs.String("voldelta", "bin/voldelta", "voldelta binary")
	restic := fs.String("restic", "", "restic binary (default $CACHE/bin/restic)")
	minio := fs.String("minio", "", "minio binary (default $CACHE/bin/minio)")
	return func(cfg *Config, outName string) error {
		cfg.Work, cfg.Keep, cfg.Rate, cfg.Delay = *work, *keep, *rate, *delay
		cfg.Command = strings.Join(os.Args, " ")
		cache := toolcache.Dir()
		if *restic == "" {
			*restic = filepath.Join(cache, "bin", "restic")
		}
		if *minio == "" {
			*minio = filepath.Join(cache, "bin", "minio")
		}
		if *out == "" {
			*out = filepath.Join("bench", "out", outName+"-"+time.Now().Format("20060102-150405"))
		}
		var err error
		for _, p := range []*string{out, vd, restic, minio} {
			if *p, err = filepath.Abs(*p); err != nil {
				return err
			}
		}
		if cfg.Work, err = filepath.Abs(cfg.Work); err != nil {
			return err
		}
		cfg.Out, cfg.Voldelta, cfg.Restic, cfg.Minio = *out, *vd, *restic, *minio
		cfg.Self, err = os.Executable()
		return err
	}
}

func has(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func run(cfg *Config) error {
	tools := []string{"ip", "tc", "losetup", "mkfs.ext4", "mount", "umount", "fsfreeze", "blockdev", "rsync", "mariadbd", "mariadb", "mariadb-install-db", "gnuplot", "/usr/bin/time"}
	return runHarness(cfg, tools, func(ctx context.Context, b *Bench) error {
		res, err := b.runAll(ctx)
		if res != nil {
			if werr := writeResults(cfg, res); werr != nil && err == nil {
				err = werr
			}
		}
		return err
	})
}

// runHarness is the frame of every mode: root, the binaries and tools
// checked, signals, the bench (namespaces, link, certificates) set up,
// body run, and everything undone in reverse order whatever happens.
func runHarness(cfg *Config, tools []string, body func(ctx context.Context, b *Bench) error) error {
	if os.Geteuid() != 0 {
		return errors.New("the benchmark needs root (network namespaces, loop devices, mounts): run it with sudo or as root")
	}
	for _, p := range []string{cfg.Voldelta, cfg.Restic, cfg.Minio} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("%v (bench/run.sh builds and installs what the benchmark needs)", err)
		}
	}
	for _, tool := range tools {
		if _, err := lookPath(tool); err != nil {
			return fmt.Errorf("%s not found (bench/run.sh installs the Debian packages the benchmark needs)", tool)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()

	cl := &Cleanup{}
	// Whatever happens below (error, panic, Ctrl-C), undo in reverse order.
	defer func() {
		stop() // a second Ctrl-C during cleanup would otherwise be lost
		signal.Ignore(os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
		cl.Run()
		if !cfg.Keep {
			os.RemoveAll(cfg.Work)
		}
	}()

	b, err := newBench(ctx, cfg, cl)
	if err != nil {
		return err
	}
	err = body(ctx, b)
	if ctx.Err() != nil && err != nil {
		return fmt.Errorf("interrupted: %w", err)
	}
	return err
}
