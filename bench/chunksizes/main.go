package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/voldelta/voldelta/agent"
	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/receiver"
	"github.com/voldelta/voldelta/transport"
)

// candidate is a parameter set under test.
type candidate struct {
	Name   string `json:"name"`
	Params chunk.Params
}

func candidates() []candidate {
	d := chunk.DefaultParams()
	d.SegmentSize = 64 << 20
	d.Polynomial = uint64(chunk.DefaultPolynomial)
	return []candidate{
		{"16K/64K/256K", d.WithSizes(16<<10, 64<<10, 256<<10)},
		{"32K/128K/512K", d.WithSizes(32<<10, 128<<10, 512<<10)},
		{"64K/256K/1M", d.WithSizes(64<<10, 256<<10, 1<<20)},
		{"256K/1M/4M", d.WithSizes(256<<10, 1<<20, 4<<20)},
	}
}

// ScanResult is the scan throughput of one parameter set over the base.
type ScanResult struct {
	Params          string  `json:"params"`
	Entries         int     `json:"manifest_entries"`
	DataChunks      uint64  `json:"data_chunks"`
	MeanChunk       float64 `json:"mean_data_chunk_bytes"`
	ManifestBytes   uint64  `json:"manifest_bytes"` // entries × chunk.EntrySize
	MBps1           float64 `json:"scan_mb_per_s_1_worker"`
	MBpsAll         float64 `json:"scan_mb_per_s_all_workers"`
	WorkersAll      int     `json:"workers_all"`
	OthersBusy      float64 `json:"others_busy_cores"` // worst, over the counted runs
	Noisy           bool    `json:"noisy"`             // no quiet run within -quiet-wait
	ScanSeconds1    float64 `json:"scan_seconds_1_worker"`
	ScanSecondsAll  float64 `json:"scan_seconds_all_workers"`
	BaseSyncSeconds float64 `json:"base_sync_seconds"`
	BaseWireBytes   int64   `json:"base_wire_bytes"`
}

// SyncResult is one measured sync of a scenario.
type SyncResult struct {
	Params           string  `json:"params"`
	Scenario         string  `json:"scenario"`
	ChangedBytes     uint64  `json:"changed_bytes"`
	SourceBytes      uint64  `json:"source_bytes"`
	WireBytes        int64   `json:"wire_bytes"`
	WireBytesRecv    int64   `json:"wire_bytes_received"`
	BytesSentRaw     uint64  `json:"bytes_sent_raw"`
	BytesSentPayload uint64  `json:"bytes_sent_payload"`
	ChunksSent       uint64  `json:"chunks_sent"`
	ChunksCopied     uint64  `json:"chunks_copied"`
	ChunksZeroed     uint64  `json:"chunks_zeroed"`
	ManifestBytes    uint64  `json:"manifest_bytes"`
	ManifestEntries  uint64  `json:"manifest_entries"`
	ScanSeconds      float64 `json:"scan_seconds"`
	DurationSeconds  float64 `json:"duration_seconds"`
}

// Report is everything -json writes.
type Report struct {
	Command    string       `json:"command"`
	GoVersion  string       `json:"go_version"`
	NumCPU     int          `json:"num_cpu"`
	CPUModel   string       `json:"cpu_model"`
	LoadBefore string       `json:"loadavg_before"`
	LoadAfter  string       `json:"loadavg_after"`
	Size       uint64       `json:"size"`
	Data       string       `json:"data"`
	Seed       uint64       `json:"seed"`
	Pages      int          `json:"pages"`
	Quiet      float64      `json:"quiet_cores"`
	Started    time.Time    `json:"started"`
	Seconds    float64      `json:"seconds"`
	Scans      []ScanResult `json:"scans"`
	Syncs      []SyncResult `json:"syncs"`
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("chunksizes: ")
	sizeFlag := flag.String("size", "1GiB", "base volume size (bytes, or with K/M/G/KiB/MiB/GiB)")
	out := flag.String("out", "", "write the Markdown report here (default stdout)")
	jsonOut := flag.String("json", "", "write the raw results as JSON here")
	seed := flag.Uint64("seed", 1, "PRNG seed of the base volume and the changes")
	data := flag.String("data", "random", "base volume content: random (incompressible) or mixed (compressible, with zero regions)")
	pages := flag.Int("pages", 1000, "8 KiB pages rewritten by the pages scenario")
	sparse := flag.Int("sparse-pages", 100, "8 KiB pages rewritten by the pages-sparse scenario (0: skip it)")
	quiet := flag.Float64("quiet", 0.3, "a scan run counts only if other processes kept at most this many cores busy meanwhile")
	quietWait := flag.Duration("quiet-wait", 10*time.Minute, "give up waiting for a quiet machine after this long (the noisy runs are then kept and flagged)")
	scanRuns := flag.Int("scan-runs", 3, "scan throughput is the best of this many runs")
	dir := flag.String("dir", "", "directory for the temporary volumes (default $TMPDIR)")
	only := flag.String("params", "", "comma-separated subset of parameter sets to run, e.g. 64K/256K/1M")
	flag.Parse()

	size, err := parseSize(*sizeFlag)
	if err != nil {
		log.Fatal(err)
	}
	if size < 64<<20 {
		log.Fatalf("-size %d: want at least 64 MiB", size)
	}
	if *data != "random" && *data != "mixed" {
		log.Fatalf("-data %q: want random or mixed", *data)
	}
	if *pages < 1 || uint64(*pages) > size/8192/2 {
		log.Fatalf("-pages %d: want 1..%d", *pages, size/8192/2)
	}
	if *sparse < 0 || uint64(*sparse) > size/8192/2 {
		log.Fatalf("-sparse-pages %d: want 0..%d", *sparse, size/8192/2)
	}
	cands := candidates()
	if *only != "" {
		var sel []candidate
		for _, name := range strings.Split(*only, ",") {
			found := false
			for _, c := range cands {
				if c.Name == strings.TrimSpace(name) {
					sel, found = append(sel, c), true
				}
			}
			if !found {
				log.Fatalf("-params: unknown set %q", name)
			}
		}
		cands = sel
	}
	for _, c := range cands {
		if err := c.Params.Validate(); err != nil {
			log.Fatalf("%s: %v", c.Name, err)
		}
	}

	rep := &Report{
		Command:    "go run ./bench/chunksizes " + strings.Join(os.Args[1:], " "),
		GoVersion:  runtime.Version(),
		NumCPU:     runtime.NumCPU(),
		CPUModel:   cpuModel(),
		LoadBefore: loadAvg(),
		Size:       size,
		Data:       *data,
		Seed:       *seed,
		Pages:      *pages,
		Quiet:      *quiet,
		Started:    time.Now().UTC(),
	}
	work, err := os.MkdirTemp(*dir, "chunksizes-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(work)
	// A fatal error below exits without running defers: clean up first.
	fatal := func(format string, a ...any) {
		os.RemoveAll(work)
		log.Fatalf(format, a...)
	}

	ctx := context.Background()
	base := filepath.Join(work, "base.img")
	log.Printf("writing a %s base volume (%s data, seed %d) to %s", human(size), *data, *seed, base)
	if err := writeFile(base, newGen(*data, *seed), size); err != nil {
		fatal("%v", err)
	}
	scens := scenarios(size, *data, *seed, *pages, *sparse)

	// Scans first, on a quiet machine, before the syncs load it.
	q := quietness{max: *quiet, deadline: time.Now().Add(*quietWait)}
	for _, c := range cands {
		sr, err := measureScan(ctx, base, size, c, *scanRuns, &q)
		if err != nil {
			fatal("scan %s: %v", c.Name, err)
		}
		log.Printf("%s: %d entries, mean chunk %.0f B, scan %.0f MB/s (1 worker), %.0f MB/s (%d workers); others busy %.2f cores",
			c.Name, sr.Entries, sr.MeanChunk, sr.MBps1, sr.MBpsAll, sr.WorkersAll, sr.OthersBusy)
		rep.Scans = append(rep.Scans, sr)
	}
	for i, c := range cands {
		syncs, err := runSyncs(ctx, work, base, size, c, scens, &rep.Scans[i])
		if err != nil {
			fatal("%s: %v", c.Name, err)
		}
		rep.Syncs = append(rep.Syncs, syncs...)
	}
	rep.LoadAfter = loadAvg()
	rep.Seconds = time.Since(rep.Started).Seconds()

	if *jsonOut != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			fatal("%v", err)
		}
		if err := os.WriteFile(*jsonOut, append(b, '\n'), 0o644); err != nil {
			fatal("%v", err)
		}
	}
	md := markdown(rep, scens)
	if *out == "" {
		os.Stdout.WriteString(md)
	} else if err := os.WriteFile(*out, []byte(md), 0o644); err != nil {
		fatal("%v", err)
	}
	log.Printf("done in %.0f s", rep.Seconds)
}

// ---- data ----

// gen fills buffers with the content of a volume, deterministically.
type gen struct {
	mode  string
	r     *rand.ChaCha8
	words [][]byte
}

func newGen(mode string, seed uint64) *gen {
	var s [32]byte
	for i := range 8 {
		s[i] = byte(seed >> (8 * i))
	}
	g := &gen{mode: mode, r: rand.NewChaCha8(s)}
	if mode == "mixed" {
		// A small vocabulary: text-like, compressible about 3× by zstd.
		rng := rand.New(g.r)
		for range 512 {
			w := make([]byte, 3+rng.IntN(8))
			for i := range w {
				w[i] = 'a' + byte(rng.IntN(26))
			}
			g.words = append(g.words, append(w, ' '))
		}
	}
	return g
}

// fill writes len(b) bytes of content into b. In mixed mode every 1 MiB
// region is, with probability 1/8, all zeros (unused space); otherwise each
// 4 KiB block is 1 KiB of random bytes followed by 3 KiB of words.
func (g *gen) fill(b []byte) {
	if g.mode != "mixed" {
		g.r.Read(b)
		return
	}
	rng := rand.New(g.r)
	for len(b) > 0 {
		region := min(len(b), 1<<20)
		r := b[:region]
		if rng.IntN(8) == 0 {
			clear(r)
		} else {
			for len(r) > 0 {
				blk := r[:min(len(r), 4096)]
				n := min(len(blk), 1024)
				g.r.Read(blk[:n])
				p := blk[n:]
				for len(p) > 0 {
					p = p[copy(p, g.words[rng.IntN(len(g.words))]):]
				}
				r = r[len(blk):]
			}
		}
		b = b[region:]
	}
}

func (g *gen) bytes(n int) []byte {
	b := make([]byte, n)
	g.fill(b)
	return b
}

func writeFile(path string, g *gen, size uint64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	buf := make([]byte, 4<<20)
	for off := uint64(0); off < size; {
		n := min(uint64(len(buf)), size-off)
		g.fill(buf[:n])
		if _, err := f.Write(buf[:n]); err != nil {
			f.Close()
			return err
		}
		off += n
	}
	return f.Close()
}

// copyFile makes dst a copy of src (copy_file_range on Linux).
func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// ---- scenarios ----

type scenario struct {
	Name    string
	Desc    string
	Changed uint64
	apply   func(path string) error
}

func scenarios(size uint64, mode string, seed uint64, pages, sparse int) []scenario {
	appendN := (size*14/1000 + 4095) &^ 4095 // 1.4 %, whole 4 KiB blocks
	insOff := int64(size/2 + 10007)          // off every segment and page boundary
	zeroOff := int64(size/4 + 12345)
	const insN, zeroN = 1 << 20, 16 << 20
	sc := []scenario{
		{
			Name: "append", Changed: appendN,
			Desc: fmt.Sprintf("%s (1.4 %%) appended", human(appendN)),
			apply: func(path string) error {
				f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
				if err != nil {
					return err
				}
				defer f.Close()
				_, err = f.Write(newGen(mode, seed+1).bytes(int(appendN)))
				return err
			},
		},
		pageScenario("pages", size, seed+2, pages),
		{
			Name: "insert", Changed: insN,
			Desc: fmt.Sprintf("1 MiB inserted at offset %d, shifting the %s after it", insOff, human(size-uint64(insOff))),
			apply: func(path string) error {
				f, err := os.OpenFile(path, os.O_RDWR, 0)
				if err != nil {
					return err
				}
				defer f.Close()
				tail := make([]byte, int64(size)-insOff)
				if _, err := f.ReadAt(tail, insOff); err != nil {
					return err
				}
				if _, err := f.WriteAt(newGen(mode, seed+3).bytes(insN), insOff); err != nil {
					return err
				}
				_, err = f.WriteAt(tail, insOff+insN)
				return err
			},
		},
		{
			Name: "zero", Changed: zeroN,
			Desc: fmt.Sprintf("16 MiB at offset %d overwritten with zeros", zeroOff),
			apply: func(path string) error {
				f, err := os.OpenFile(path, os.O_WRONLY, 0)
				if err != nil {
					return err
				}
				defer f.Close()
				_, err = f.WriteAt(make([]byte, zeroN), zeroOff)
				return err
			},
		},
	}
	if sparse > 0 {
		sc = append(sc, pageScenario("pages-sparse", size, seed+4, sparse))
	}
	return sc
}

// pageScenario rewrites n distinct random 8 KiB-aligned pages with new
// random bytes, like a database writing back dirty pages.
func pageScenario(name string, size, seed uint64, n int) scenario {
	return scenario{
		Name: name, Changed: uint64(n) * 8192,
		Desc: fmt.Sprintf("%d distinct random 8 KiB pages rewritten (one per %s on average)", n, human(size/uint64(n))),
		apply: func(path string) error {
			rng := rand.New(rand.NewPCG(seed, 2))
			npages := size / 8192
			picked := map[uint64]bool{}
			for len(picked) < n {
				picked[rng.Uint64N(npages)] = true
			}
			idx := make([]uint64, 0, n)
			for p := range picked {
				idx = append(idx, p)
			}
			sort.Slice(idx, func(i, j int) bool { return idx[i] < idx[j] })
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			g := newGen("random", seed)
			page := make([]byte, 8192)
			for _, p := range idx {
				g.fill(page)
				if _, err := f.WriteAt(page, int64(p*8192)); err != nil {
					return err
				}
			}
			return nil
		},
	}
}

// ---- measurements ----

func measureScan(ctx context.Context, path string, size uint64, c candidate, runs int, q *quietness) (ScanResult, error) {
	f, err := os.Open(path)
	if err != nil {
		return ScanResult{}, err
	}
	defer f.Close()
	if _, err := io.Copy(io.Discard, io.NewSectionReader(f, 0, int64(size))); err != nil { // into the page cache
		return ScanResult{}, err
	}
	all := runtime.GOMAXPROCS(0)
	r := ScanResult{Params: c.Name, WorkersAll: all}
	best := func(workers int) (float64, error) {
		b := 0.0
		for counted := 0; counted < runs; {
			q.waitQuiet()
			runtime.GC()
			before := sampleCPU()
			start := time.Now()
			m, st, err := chunk.ScanManifest(ctx, f, size, c.Params, chunk.ScanOptions{Workers: workers})
			if err != nil {
				return 0, err
			}
			sec := time.Since(start).Seconds()
			others := sampleCPU().othersSince(before)
			if others > q.max && time.Now().Before(q.deadline) {
				log.Printf("%s: scan run with %d workers discarded: other processes kept %.2f cores busy", c.Name, workers, others)
				continue
			}
			if others > q.max {
				r.Noisy = true
			}
			counted++
			r.OthersBusy = max(r.OthersBusy, others)
			if b == 0 || sec < b {
				b = sec
			}
			r.Entries = len(m.Entries)
			r.DataChunks = st.DataChunks
			r.MeanChunk = float64(st.DataBytes) / float64(max(st.DataChunks, 1))
			r.ManifestBytes = uint64(len(m.Entries)) * chunk.EntrySize
		}
		return b, nil
	}
	if r.ScanSeconds1, err = best(1); err != nil {
		return r, err
	}
	if r.ScanSecondsAll, err = best(all); err != nil {
		return r, err
	}
	r.MBps1 = float64(size) / 1e6 / r.ScanSeconds1
	r.MBpsAll = float64(size) / 1e6 / r.ScanSecondsAll
	return r, nil
}

// cpuSample is the CPU time of the machine and of this process at an instant.
type cpuSample struct {
	at          time.Time
	busy, total float64 // machine, seconds summed over all cores
	own         float64 // this process, seconds
}

func sampleCPU() cpuSample {
	s := cpuSample{at: time.Now()}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
		for i, v := range f[1:] {
			n, _ := strconv.ParseFloat(v, 64)
			if i >= 8 { // guest time is already counted in user
				break
			}
			s.total += n / 100 // USER_HZ
			if i != 3 && i != 4 {
				s.busy += n / 100
			}
		}
	}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		s.own = float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
	}
	return s
}

// othersSince returns how many cores other processes kept busy, on average,
// since b.
func (s cpuSample) othersSince(b cpuSample) float64 {
	wall := s.at.Sub(b.at).Seconds()
	if wall <= 0 {
		return 0
	}
	return max(0, (s.busy-b.busy)-(s.own-b.own)) / wall
}

// quietness waits for other processes to leave the CPUs alone.
type quietness struct {
	max      float64
	deadline time.Time
}

func (q *quietness) waitQuiet() {
	for {
		b := sampleCPU()
		time.Sleep(2 * time.Second)
		others := sampleCPU().othersSince(b)
		if others <= q.max || time.Now().After(q.deadline) {
			return
		}
		log.Printf("waiting for a quiet machine: other processes keep %.2f cores busy (load average %s)", others, loadAvg())
		time.Sleep(8 * time.Second)
	}
}

// recv is a receiver serving on loopback.
type recv struct {
	addr   string
	cancel context.CancelFunc
	done   chan error
}

func startReceiver(stateDir, target string) (*recv, error) {
	tc := transport.DefaultConfig()
	tc.Insecure = true
	srv, err := receiver.New(receiver.Config{
		Targets:   map[string]string{"vol": target},
		StateDir:  stateDir,
		Transport: tc,
		Logger:    slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &recv{addr: ln.Addr().String(), cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- srv.Serve(ctx, ln) }()
	return r, nil
}

func (r *recv) stop() error {
	r.cancel()
	return <-r.done
}

func syncOnce(ctx context.Context, addr, source string, p chunk.Params) (*agent.Stats, error) {
	tc := transport.DefaultConfig()
	tc.Insecure = true
	return agent.Sync(ctx, agent.Options{Source: source, Addr: addr, Volume: "vol", Params: p, Transport: tc})
}

func runSyncs(ctx context.Context, work, base string, size uint64, c candidate, scens []scenario, sr *ScanResult) (res []SyncResult, err error) {
	dir, err := os.MkdirTemp(work, "set-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	src, target := filepath.Join(dir, "source.img"), filepath.Join(dir, "target.img")
	if err := copyFile(src, base); err != nil {
		return nil, err
	}
	rc, err := startReceiver(filepath.Join(dir, "state"), target)
	if err != nil {
		return nil, err
	}
	defer func() {
		if e := rc.stop(); e != nil && err == nil {
			err = fmt.Errorf("receiver: %w", e)
		}
	}()

	st, err := syncOnce(ctx, rc.addr, src, c.Params)
	if err != nil {
		return nil, fmt.Errorf("base sync: %w", err)
	}
	sr.BaseSyncSeconds, sr.BaseWireBytes = st.DurationSeconds, st.WireBytes
	if err := sameFiles(target, src); err != nil {
		return nil, fmt.Errorf("after the base sync: %w", err)
	}
	for _, sc := range scens {
		if err := sc.apply(src); err != nil {
			return nil, fmt.Errorf("%s: apply: %w", sc.Name, err)
		}
		st, err := syncOnce(ctx, rc.addr, src, c.Params)
		if err != nil {
			return nil, fmt.Errorf("%s: sync: %w", sc.Name, err)
		}
		if err := sameFiles(target, src); err != nil {
			return nil, fmt.Errorf("%s: after the sync: %w", sc.Name, err)
		}
		r := SyncResult{
			Params: c.Name, Scenario: sc.Name, ChangedBytes: sc.Changed, SourceBytes: st.SourceBytes,
			WireBytes: st.WireBytes, WireBytesRecv: st.WireBytesReceived,
			BytesSentRaw: st.BytesSentRaw, BytesSentPayload: st.BytesSentPayload,
			ChunksSent: st.ChunksSent, ChunksCopied: st.ChunksCopied, ChunksZeroed: st.ChunksZeroed,
			ManifestBytes: st.ManifestBytes, ManifestEntries: st.ManifestEntries,
			ScanSeconds: st.ScanSeconds, DurationSeconds: st.DurationSeconds,
		}
		log.Printf("%s %-6s: wire %s, %d chunks sent (%s raw), manifest %s (%d entries), %.1f s",
			c.Name, sc.Name, human(uint64(r.WireBytes)), r.ChunksSent, human(r.BytesSentRaw),
			human(r.ManifestBytes), r.ManifestEntries, r.DurationSeconds)
		res = append(res, r)

		// Back to the base, source and target, for the next scenario.
		if err := copyFile(src, base); err != nil {
			return nil, err
		}
		if _, err := syncOnce(ctx, rc.addr, src, c.Params); err != nil {
			return nil, fmt.Errorf("%s: restoring sync: %w", sc.Name, err)
		}
		if err := sameFiles(target, src); err != nil {
			return nil, fmt.Errorf("%s: after the restoring sync: %w", sc.Name, err)
		}
	}
	return res, nil
}

// sameFiles returns an error unless the files at a and b hold the same bytes.
func sameFiles(a, b string) error {
	fa, err := os.Open(a)
	if err != nil {
		return err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return err
	}
	defer fb.Close()
	ia, err := fa.Stat()
	if err != nil {
		return err
	}
	ib, err := fb.Stat()
	if err != nil {
		return err
	}
	if ia.Size() != ib.Size() {
		return fmt.Errorf("TARGET DIFFERS: %s has %d bytes, %s has %d", a, ia.Size(), b, ib.Size())
	}
	ba, bb := make([]byte, 4<<20), make([]byte, 4<<20)
	for off := int64(0); off < ia.Size(); {
		n := min(int64(len(ba)), ia.Size()-off)
		if _, err := fa.ReadAt(ba[:n], off); err != nil {
			return err
		}
		if _, err := fb.ReadAt(bb[:n], off); err != nil {
			return err
		}
		if !bytes.Equal(ba[:n], bb[:n]) {
			for i := range n {
				if ba[i] != bb[i] {
					return fmt.Errorf("TARGET DIFFERS: %s and %s differ at byte %d", a, b, off+i)
				}
			}
		}
		off += n
	}
	return nil
}

// ---- report ----

func markdown(rep *Report, scens []scenario) string {
	var b strings.Builder
	scan := map[string]ScanResult{}
	for _, s := range rep.Scans {
		scan[s.Params] = s
	}
	fmt.Fprintf(&b, "Volume: %s of %s data (seed %d); segments 64 MiB, default polynomial; receiver in-process on loopback, plain TCP, default zstd (fastest).\n\n",
		human(rep.Size), rep.Data, rep.Seed)
	fmt.Fprintf(&b, "Scenarios:\n\n")
	for _, s := range scens {
		fmt.Fprintf(&b, "- **%s**: %s\n", s.Name, s.Desc)
	}
	fmt.Fprintf(&b, "\n| params (min/avg/max) | scenario | changed bytes | wire bytes | wire/changed | chunks sent | chunk bytes sent (raw) | manifest bytes (entries) | scan MB/s (1 worker) | scan MB/s (%d workers) |\n",
		rep.NumCPU)
	b.WriteString("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, r := range rep.Syncs {
		s := scan[r.Params]
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %.2f | %d | %s | %s (%d) | %.0f | %.0f |\n",
			r.Params, r.Scenario, num(r.ChangedBytes), num(uint64(r.WireBytes)),
			float64(r.WireBytes)/float64(r.ChangedBytes), r.ChunksSent, num(r.BytesSentRaw),
			num(r.ManifestBytes), r.ManifestEntries, s.MBps1, s.MBpsAll)
	}
	b.WriteString("\nManifest per parameter set, measured on the base volume and extrapolated linearly " +
		"(seconds to send it at 100 Mbit/s, i.e. 12.5 MB/s; it is sent every round):\n\n")
	fmt.Fprintf(&b, "| params | entries | mean data chunk | manifest bytes | per GB | 70 GB volume | 100 GB volume | scan MB/s (1 worker) | scan MB/s (%d workers) | others' CPU during scans |\n", rep.NumCPU)
	b.WriteString("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, s := range rep.Scans {
		perGB := float64(s.ManifestBytes) / (float64(rep.Size) / 1e9)
		ext := func(gb float64) string {
			bytes := perGB * gb
			return fmt.Sprintf("%.1f MB, %.1f s", bytes/1e6, bytes*8/100e6)
		}
		noisy := ""
		if s.Noisy {
			noisy = " (noisy)"
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %.0f kB | %s | %s | %.0f | %.0f | ≤ %.2f cores%s |\n",
			s.Params, s.Entries, human(uint64(s.MeanChunk)), num(s.ManifestBytes), perGB/1e3, ext(70), ext(100),
			s.MBps1, s.MBpsAll, s.OthersBusy, noisy)
	}
	fmt.Fprintf(&b, "\nScan MB/s (10^6 bytes/s): chunk.ScanManifest over the base file from the page cache, best of the runs "+
		"during which other processes kept at most %.2f cores busy.\n", rep.Quiet)
	fmt.Fprintf(&b, "\nMachine: %d CPUs (%s), %s; load average before %s, after %s; %.0f s in all.\n",
		rep.NumCPU, rep.CPUModel, rep.GoVersion, rep.LoadBefore, rep.LoadAfter, rep.Seconds)
	fmt.Fprintf(&b, "\nCommand: `%s`\n", rep.Command)
	return b.String()
}

// num formats n with thousands separators.
func num(n uint64) string {
	s := strconv.FormatUint(n, 10)
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	return string(out)
}

func human(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func parseSize(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	mult := uint64(1)
	for _, u := range []struct {
		suf string
		m   uint64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}} {
		if strings.HasSuffix(t, u.suf) {
			t, mult = strings.TrimSuffix(t, u.suf), u.m
			break
		}
	}
	n, err := strconv.ParseUint(strings.TrimSpace(t), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: %w", s, errors.Unwrap(err))
	}
	return n * mult, nil
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
