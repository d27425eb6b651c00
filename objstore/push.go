package objstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/hint"
	"github.com/voldelta/voldelta/transport"
	"golang.org/x/sync/errgroup"
)

// PushOptions tune a push.
type PushOptions struct {
	Volume string       // validated with transport.ValidateVolumeName
	Params chunk.Params // zero: chunk.DefaultParams()
	// Parallel is the number of concurrent requests; 0 means DefaultParallel.
	Parallel int
	// Compression of chunk objects; "" means fastest.
	Compression transport.CompressionLevel
	// ScanWorkers chunk segments in parallel; 0 means all cores.
	ScanWorkers int
	// OwnVolumeOnly deduplicates only against this volume's latest
	// generation, not against the latest generation of every volume.
	OwnVolumeOnly bool
	// ConfirmAll checks with a HEAD request (in concurrent batches) every
	// chunk the push reuses: that it exists and that its size and
	// metadata, and its ETag where that is the content's MD5, are those
	// it was uploaded with; it re-uploads, from the source, any that is
	// missing or damaged. This repairs a store whose objects were deleted
	// or damaged (pull names such a chunk). Objects stored before voldelta
	// recorded chunk metadata count as damaged: re-uploaded once.
	ConfirmAll bool
	// VerifyChunks downloads, decodes and re-hashes every reused chunk
	// instead of HEADs (ConfirmAll with proof of the content, at the cost of
	// reading the reused chunks from the store), and re-uploads the bad.
	VerifyChunks bool
	// Grace: see DefaultGrace; it must not exceed gc's.
	Grace time.Duration
	// Clock measures the grace; nil means SystemClock.
	Clock Clock
	// Hints, if set, say which extents of the source may differ from an
	// earlier image (see package hint), so that the scan reads only those
	// and takes every other entry from the manifest of the volume's latest
	// generation, which the push reads anyway to deduplicate. They are
	// used only when that generation was chunked with the same Params and
	// Hints.BaseImage() is "" (the caller vouches that the base is the
	// image that generation was pushed from) or equals the Image that
	// generation recorded; otherwise, and when Hints fails with an error
	// wrapping hint.ErrUnavailable, the push reads the whole source and
	// PushStats.FullScanReason says why. Any other hint error (malformed
	// extents included) fails the push.
	//
	// A Source that misses a changed extent cannot be detected by the
	// push: the bytes it missed keep the previous generation's entries, and
	// the generation's root hash is that of the image the source lied
	// about, not of the source (a pull then writes the wrong bytes and
	// verifies them against that root). The hints are as trustworthy as
	// their source; a periodic FullScan bounds how long such a lie lives,
	// and a full scan after a hint source was suspected repairs it.
	Hints hint.Source
	// Image identifies the pushed image (hint.FileIdentity of the source;
	// at most 1 KiB), recorded with the generation as the base image later
	// hints name; "" records none (such a generation is a base only for
	// hints with BaseImage "").
	Image string
	// FullScan reads the whole source whatever Hints say.
	FullScan bool
	// Previous and Changed let the scan reuse the entries of segments that
	// did not change since the image Previous was made from (see
	// chunk.ScanOptions), unchecked: set both from storage with
	// changed-block tracking, or neither. Hints is the checked way; the
	// two are exclusive.
	Previous *chunk.Manifest
	Changed  []chunk.Extent
	// Progress, if set, is called as the scan and the uploads advance,
	// from several goroutines; keep it short.
	Progress func(PushProgress)

	// Test hooks: afterUpload runs once the chunks were uploaded, before
	// the refresh and the confirmation; beforeWrite just before the
	// manifest is written.
	afterUpload, beforeWrite func(ctx context.Context) error
}

// PushProgress is how far a push got.
type PushProgress struct {
	SourceBytes   uint64
	ScannedBytes  uint64
	UploadBytes   uint64 // bytes of the chunks the store lacks, found so far
	UploadedBytes uint64 // of those, uploaded
	ScanDone      bool
}

// PushStats describes a push; the JSON names are those of --stats-json.
type PushStats struct {
	Store          string `json:"store"`
	Volume         string `json:"volume"`
	Generation     uint64 `json:"generation"`
	RootHash       string `json:"root_hash"`
	BaseGeneration uint64 `json:"base_generation"` // this volume's latest before the push, 0 if none
	BaseManifests  int    `json:"base_manifests"`  // manifests deduplicated against
	SourceBytes    uint64 `json:"source_bytes"`
	ChunksTotal    uint64 `json:"chunks_total"`    // data entries of the manifest
	ChunksDistinct uint64 `json:"chunks_distinct"` // distinct chunk IDs among them
	ZeroRuns       uint64 `json:"zero_runs"`
	ZeroBytes      uint64 `json:"zero_bytes"`
	ReusedBytes    uint64 `json:"reused_bytes"` // not read: Previous's entries for unchanged segments
	// ScanMode is ScanIncremental when the scan read only what the change
	// hints name, ScanFull otherwise, and FullScanReason says why then.
	ScanMode       string `json:"scan_mode"`
	FullScanReason string `json:"full_scan_reason"`
	HintSource     string `json:"hint_source"`   // Hints.Name()
	ChangedBytes   uint64 `json:"changed_bytes"` // the changed extents' bytes (incremental)
	// BytesRead is what the scan read from the source; the chunks
	// uploaded are read again (bytes_uploaded_raw, usually from the page
	// cache).
	BytesRead        uint64  `json:"bytes_read"`
	ChunksReused     uint64  `json:"chunks_reused"` // distinct chunks the store already held
	ChunksUploaded   uint64  `json:"chunks_uploaded"`
	ChunksConfirmed  uint64  `json:"chunks_confirmed"` // reused chunks checked (HEAD, or GET with VerifyChunks)
	ChunksRepaired   uint64  `json:"chunks_repaired"`  // of those, found missing or damaged and re-uploaded (counted in chunks_uploaded)
	ChunksRefreshed  uint64  `json:"chunks_refreshed"` // touched because the push took long
	BytesUploadedRaw uint64  `json:"bytes_uploaded_raw"`
	BytesUploaded    uint64  `json:"bytes_uploaded"` // chunk objects and the manifest as stored
	ManifestBytes    uint64  `json:"manifest_bytes"`
	Retries          uint64  `json:"retries"`
	ScanSeconds      float64 `json:"scan_seconds"` // the scan, with the uploads it overlaps
	DurationSeconds  float64 `json:"duration_seconds"`

	// Manifest is the generation's manifest (for the next push's Previous).
	Manifest *chunk.Manifest `json:"-"`
}

// base is a manifest a push deduplicates against.
type base struct {
	volume string
	gen    uint64
	ids    map[chunk.ID]struct{}
	// Of the pushed volume's own latest generation only: its manifest and
	// the image it recorded.
	m     *chunk.Manifest
	image string
}

// Push stores src (size bytes) as the next generation of opt.Volume:
// it uploads the chunks the store lacks and then the manifest.
func (s *Store) Push(ctx context.Context, src io.ReaderAt, size uint64, opt PushOptions) (*PushStats, error) {
	start := time.Now()
	if err := transport.ValidateVolumeName(opt.Volume); err != nil {
		return nil, err
	}
	opt.Params = opt.Params.OrDefault()
	if err := opt.Params.Validate(); err != nil {
		return nil, err
	}
	if opt.Parallel <= 0 {
		opt.Parallel = DefaultParallel
	}
	if opt.Compression == "" {
		opt.Compression = transport.CompressionFastest
	}
	if opt.Grace <= 0 {
		opt.Grace = DefaultGrace
	}
	if opt.Hints != nil && (opt.Previous != nil || opt.Changed != nil) {
		return nil, errors.New("push: Hints and Previous/Changed are exclusive")
	}
	if len(escapeImage(opt.Image)) > maxImageLen {
		return nil, fmt.Errorf("push: image identity of %d bytes (at most %d)", len(opt.Image), maxImageLen)
	}
	comp, err := transport.NewCompressor(opt.Compression)
	if err != nil {
		return nil, err
	}
	clock := clockOrSystem(opt.Clock)
	retries0 := s.Retries()
	st := &PushStats{Store: s.String(), Volume: opt.Volume, SourceBytes: size}
	log := s.log.With("volume", opt.Volume)

	// The bases are read before the scan: the push's clock (see the
	// package doc) starts here.
	t0 := clock.Now()
	wantPrev := opt.Hints != nil && !opt.FullScan // keep the latest manifest only for the hints
	bases, latest, prev, err := s.readBases(ctx, opt.Volume, opt.OwnVolumeOnly, wantPrev, opt.Parallel)
	if err != nil {
		return nil, err
	}
	st.BaseGeneration, st.BaseManifests = latest, len(bases)
	known := unionIDs(bases)
	log.Info("bases read", "manifests", len(bases), "known_chunks", len(known), "latest", latest)
	plan, err := planScan(ctx, &opt, latest, prev, size)
	if err != nil {
		return nil, err
	}
	st.ScanMode, st.FullScanReason = plan.mode, plan.reason
	if opt.Hints != nil {
		st.HintSource = opt.Hints.Name()
	}
	if plan.mode == ScanIncremental {
		st.ChangedBytes = hint.Bytes(plan.changed)
	}
	log.Info("scan planned", "mode", plan.mode, "reason", plan.reason, "hints", st.HintSource, "changed_bytes", st.ChangedBytes)

	progress := func(PushProgress) {}
	if opt.Progress != nil {
		progress = opt.Progress
	}
	// Scan and upload at once: a chunk the store lacks is uploaded as soon
	// as its segment is chunked (at most Parallel at a time; a full
	// pipeline holds the scan back).
	var (
		pmu    sync.Mutex
		prog   = PushProgress{SourceBytes: size}
		first  = make(map[chunk.ID]chunk.Entry) // one entry per distinct chunk, to read it from
		reused []chunk.Entry
	)
	report := func(f func(*PushProgress)) {
		pmu.Lock()
		defer pmu.Unlock()
		f(&prog)
		progress(prog) // under the lock: reports never go back
	}
	up := &uploader{s: s, src: src, comp: comp, parallel: opt.Parallel,
		progress: func(done uint64) { report(func(p *PushProgress) { p.UploadedBytes = max(p.UploadedBytes, done) }) }}
	defer up.close()
	uctx, stopUploads := context.WithCancel(ctx)
	defer stopUploads()
	g, gctx := errgroup.WithContext(uctx)
	g.SetLimit(opt.Parallel)
	m := &chunk.Manifest{Params: opt.Params, Size: size}
	b := chunk.NewBuilder(opt.Params, size)
	scanStart := time.Now()
	scanSrc := &countingReaderAt{r: src}
	sst, err := chunk.Scan(gctx, scanSrc, size, opt.Params, chunk.ScanOptions{Workers: opt.ScanWorkers,
		Previous: plan.previous, Changed: plan.changed,
		Progress: func(n uint64) { report(func(p *PushProgress) { p.ScannedBytes = n }) }},
		func(e chunk.Entry) error {
			m.Entries = append(m.Entries, e)
			if err := b.Add(e); err != nil {
				return err
			}
			if e.Zero {
				st.ZeroRuns++
				st.ZeroBytes += e.Length
				return nil
			}
			st.ChunksTotal++
			if _, dup := first[e.ID]; dup {
				return nil
			}
			first[e.ID] = e
			if _, ok := known[e.ID]; ok {
				reused = append(reused, e)
				return nil
			}
			report(func(p *PushProgress) { p.UploadBytes += e.Length })
			g.Go(func() error { return up.one(gctx, e, false) })
			return gctx.Err()
		})
	scanDur := time.Since(scanStart)
	if err == nil {
		m.Root, err = b.Finish()
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		stopUploads() // the scan failed: its uploads are moot
	}
	switch upErr := g.Wait(); {
	case upErr != nil && (err == nil || errors.Is(err, context.Canceled)):
		return nil, upErr // an upload failed and cancelled the scan
	case err != nil:
		return nil, fmt.Errorf("scan source: %w", err)
	}
	st.ScanSeconds = scanDur.Seconds()
	st.RootHash = m.Root.String()
	st.ReusedBytes = sst.ReusedBytes
	st.BytesRead = scanSrc.n.Load()
	report(func(p *PushProgress) { p.ScannedBytes, p.ScanDone = size, true })
	st.ChunksDistinct = uint64(len(first))
	st.ChunksReused = uint64(len(reused))
	log.Info("chunks uploaded", "chunks", up.chunks.Load(), "reused", len(reused), "bytes", up.objBytes.Load())

	if opt.afterUpload != nil {
		if err := opt.afterUpload(ctx); err != nil {
			return nil, err
		}
	}

	// Too slow for the gc grace period: start the clock again.
	for round := 0; clock.Now().Sub(t0) > opt.Grace/2; round++ {
		if round == 3 {
			return nil, fmt.Errorf("push could not write its manifest within the gc grace period (%s): refreshing its chunks takes too long", opt.Grace)
		}
		log.Warn("push took more than half the gc grace period: refreshing its chunks", "elapsed", clock.Now().Sub(t0).Round(time.Second))
		t0 = clock.Now()
		if bases, latest, _, err = s.readBases(ctx, opt.Volume, opt.OwnVolumeOnly, false, opt.Parallel); err != nil {
			return nil, err
		}
		st.BaseGeneration, st.BaseManifests = latest, len(bases)
		known = unionIDs(bases)
		var touch []chunk.Entry
		reused = reused[:0]
		for _, e := range first {
			if _, ok := known[e.ID]; ok {
				reused = append(reused, e)
			} else {
				touch = append(touch, e)
			}
		}
		st.ChunksReused = uint64(len(reused))
		n, err := up.refresh(ctx, touch)
		if err != nil {
			return nil, err
		}
		st.ChunksRefreshed += n
	}

	n, err := s.confirm(ctx, bases, reused, opt.ConfirmAll || opt.VerifyChunks, opt.VerifyChunks, up)
	if err != nil {
		return nil, err
	}
	st.ChunksConfirmed, st.ChunksRepaired = n, up.repaired.Load()
	st.ChunksUploaded = up.chunks.Load()
	st.BytesUploadedRaw = up.rawBytes.Load()

	body, err := m.MarshalBinary()
	if err != nil {
		return nil, err
	}
	if opt.beforeWrite != nil {
		if err := opt.beforeWrite(ctx); err != nil {
			return nil, err
		}
	}
	var meta map[string]string
	if opt.Image != "" {
		meta = map[string]string{imageMetaKey: escapeImage(opt.Image)}
	}
	gen := latest + 1
	for {
		if clock.Now().Sub(t0) >= opt.Grace {
			return nil, fmt.Errorf("push did not write its manifest within the gc grace period (%s); its chunks may be collected: push again", opt.Grace)
		}
		err := s.put(ctx, "write manifest", s.manifestKey(opt.Volume, gen), body, meta, true)
		if err == nil {
			break
		}
		if !errors.Is(err, errExists) {
			return nil, err
		}
		// Our own write, whose answer was lost and retried? Otherwise a
		// concurrent push of this volume took the number.
		if got, info, err := s.getInfo(ctx, "read back manifest", s.manifestKey(opt.Volume, gen), maxManifestObject); err == nil &&
			bytes.Equal(got, body) && imageOf(info.UserMetadata) == opt.Image {
			break
		}
		log.Warn("generation taken by a concurrent push; taking the next", "generation", gen)
		if gen, err = s.latestGeneration(ctx, opt.Volume); err != nil {
			return nil, err
		}
		gen++
	}
	st.Generation = gen
	st.ManifestBytes = uint64(len(body))
	st.BytesUploaded = up.objBytes.Load() + st.ManifestBytes
	st.Retries = s.Retries() - retries0
	st.DurationSeconds = time.Since(start).Seconds()
	st.Manifest = m
	log.Info("generation stored", "generation", gen, "root", m.Root.Short(), "uploaded", st.ChunksUploaded, "reused", st.ChunksReused)
	return st, nil
}

// countingReaderAt counts the bytes read through it.
type countingReaderAt struct {
	r io.ReaderAt
	n atomic.Uint64
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.n.Add(uint64(n))
	return n, err
}

func unionIDs(bases []base) map[chunk.ID]struct{} {
	n := 0
	for _, b := range bases {
		n = max(n, len(b.ids))
	}
	known := make(map[chunk.ID]struct{}, n)
	for _, b := range bases {
		for id := range b.ids {
			known[id] = struct{}{}
		}
	}
	return known
}

// generations lists the generations of every volume (or of one) in the
// store, ascending.
func (s *Store) generations(ctx context.Context, volume string) (map[string][]uint64, error) {
	prefix := s.manifestsPrefix()
	if volume != "" {
		prefix += volume + "/"
	}
	gens := make(map[string][]uint64)
	err := s.list(ctx, "list manifests", prefix, func(o minio.ObjectInfo) error {
		if v, g, ok := parseManifestKey(s.manifestsPrefix(), o.Key); ok {
			gens[v] = append(gens[v], g)
		}
		return nil
	})
	for _, g := range gens {
		sort.Slice(g, func(i, j int) bool { return g[i] < g[j] })
	}
	return gens, err
}

// Generations returns volume's generations in the store, ascending.
func (s *Store) Generations(ctx context.Context, volume string) ([]uint64, error) {
	if err := transport.ValidateVolumeName(volume); err != nil {
		return nil, err
	}
	gens, err := s.generations(ctx, volume)
	return gens[volume], err
}

// latestGeneration returns volume's newest generation, 0 if none.
func (s *Store) latestGeneration(ctx context.Context, volume string) (uint64, error) {
	gens, err := s.generations(ctx, volume)
	if err != nil {
		return 0, err
	}
	if g := gens[volume]; len(g) > 0 {
		return g[len(g)-1], nil
	}
	return 0, nil
}

// maxManifestObject bounds a manifest object (~20 M entries).
const maxManifestObject = 1 << 30

// ReadManifest reads and validates generation gen of volume.
func (s *Store) ReadManifest(ctx context.Context, volume string, gen uint64) (*chunk.Manifest, int, error) {
	m, n, _, err := s.readManifest(ctx, volume, gen)
	return m, n, err
}

// GenerationImage returns the image identity generation gen of volume was
// pushed from (PushOptions.Image), "" if it recorded none.
func (s *Store) GenerationImage(ctx context.Context, volume string, gen uint64) (string, error) {
	info, err := s.stat(ctx, fmt.Sprintf("stat generation %d of %s", gen, volume), s.manifestKey(volume, gen))
	if errors.Is(err, ErrNotFound) {
		return "", failf(ErrNotFound, "generation %d of volume %q is not in %s (never pushed, or removed by gc)", gen, volume, s)
	}
	if err != nil {
		return "", err
	}
	return imageOf(info.UserMetadata), nil
}

// readManifest is ReadManifest that also returns the image the generation
// recorded.
func (s *Store) readManifest(ctx context.Context, volume string, gen uint64) (*chunk.Manifest, int, string, error) {
	body, info, err := s.getInfo(ctx, fmt.Sprintf("read generation %d of %s", gen, volume), s.manifestKey(volume, gen), maxManifestObject)
	if errors.Is(err, ErrNotFound) {
		return nil, 0, "", failf(ErrNotFound, "generation %d of volume %q is not in %s (never pushed, or removed by gc)", gen, volume, s)
	}
	if err != nil {
		return nil, 0, "", err
	}
	m, err := decodeManifest(fmt.Sprintf("generation %d of %s", gen, volume), body)
	if err != nil {
		return nil, 0, "", err
	}
	return m, len(body), imageOf(info.UserMetadata), nil
}

// decodeManifest decodes a manifest object read from the store, which is
// not trusted: anything but a valid manifest is ErrCorrupt, named by what.
func decodeManifest(what string, body []byte) (*chunk.Manifest, error) {
	var m chunk.Manifest
	if err := m.UnmarshalBinary(body); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrCorrupt, what, err)
	}
	for i, e := range m.Entries {
		if !e.Zero && (e.Length == 0 || e.Length > chunk.MaxChunkSize) {
			return nil, fmt.Errorf("%w: %s: entry %d: chunk of %d bytes", ErrCorrupt, what, i, e.Length)
		}
	}
	return &m, nil
}

// readBases reads the latest manifest of volume and, unless ownOnly, of
// every other volume; it returns them, volume's latest generation and its
// base (with its image, and with keepOwn its manifest; nil if none or
// removed meanwhile).
func (s *Store) readBases(ctx context.Context, volume string, ownOnly, keepOwn bool, parallel int) ([]base, uint64, *base, error) {
	v := ""
	if ownOnly {
		v = volume
	}
	gens, err := s.generations(ctx, v)
	if err != nil {
		return nil, 0, nil, err
	}
	var latest uint64
	var bases []base
	for vol, g := range gens {
		bases = append(bases, base{volume: vol, gen: g[len(g)-1]})
		if vol == volume {
			latest = g[len(g)-1]
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(parallel)
	for i := range bases {
		b := &bases[i]
		g.Go(func() error {
			m, _, image, err := s.readManifest(gctx, b.volume, b.gen)
			if errors.Is(err, ErrNotFound) {
				return nil // removed by gc meanwhile: not a base
			}
			if err != nil {
				return err
			}
			if b.volume == volume {
				b.image = image
				if keepOwn {
					b.m = m
				}
			}
			b.ids = make(map[chunk.ID]struct{}, len(m.Entries))
			for _, e := range m.Entries {
				if !e.Zero {
					b.ids[e.ID] = struct{}{}
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, 0, nil, err
	}
	out := bases[:0]
	var own *base
	for _, b := range bases {
		if b.ids != nil {
			out = append(out, b)
			if b.volume == volume {
				own = &base{volume: b.volume, gen: b.gen, m: b.m, image: b.image}
			}
			out[len(out)-1].m = nil // only own is kept
		}
	}
	return out, latest, own, nil
}

// confirm checks that the bases still exist; the reused chunks that only
// vanished bases referenced (all reused chunks with all) are checked (see
// checkChunk; verify downloads them) and re-uploaded if missing or damaged.
// It returns the chunks checked.
func (s *Store) confirm(ctx context.Context, bases []base, reused []chunk.Entry, all, verify bool, up *uploader) (uint64, error) {
	gone := make([]bool, len(bases))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(up.parallel)
	for i, b := range bases {
		g.Go(func() error {
			_, err := s.stat(gctx, "confirm base manifest", s.manifestKey(b.volume, b.gen))
			if errors.Is(err, ErrNotFound) {
				gone[i] = true
				return nil
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	check := reused
	if !all {
		var alive []base
		for i, b := range bases {
			if gone[i] {
				s.log.Warn("a base manifest disappeared during the push; confirming its chunks", "volume", b.volume, "generation", b.gen)
			} else {
				alive = append(alive, b)
			}
		}
		if len(alive) == len(bases) {
			return 0, nil
		}
		still := unionIDs(alive)
		check = nil
		for _, e := range reused {
			if _, ok := still[e.ID]; !ok {
				check = append(check, e)
			}
		}
	}
	var dec *decoder
	if verify {
		var err error
		if dec, err = newDecoder(); err != nil {
			return 0, err
		}
		defer dec.close()
	}
	const batch = 1000
	for k := 0; k < len(check); k += batch {
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(up.parallel)
		for _, e := range check[k:min(k+batch, len(check))] {
			g.Go(func() error {
				why, err := s.checkChunk(gctx, dec, e)
				if err != nil || why == "" {
					return err
				}
				s.log.Warn("chunk object missing or damaged; re-uploading it from the source", "key", s.chunkKey(e.ID), "why", why)
				return up.repair(gctx, e)
			})
		}
		if err := g.Wait(); err != nil {
			return 0, err
		}
	}
	return uint64(len(check)), nil
}

// checkChunk returns why the chunk object of e is missing or damaged, or
// "" when it is fine: with a decoder by downloading, decoding and hashing
// it, otherwise from a HEAD request (checkChunkInfo).
func (s *Store) checkChunk(ctx context.Context, dec *decoder, e chunk.Entry) (string, error) {
	if dec != nil {
		_, _, err := s.getChunk(ctx, dec, e)
		var bad *ChunkError
		if errors.As(err, &bad) {
			return bad.Reason, nil
		}
		return "", err
	}
	info, err := s.stat(ctx, "confirm chunk "+e.ID.Short(), s.chunkKey(e.ID))
	if errors.Is(err, ErrNotFound) {
		return "it is missing", nil
	}
	if err != nil {
		return "", err
	}
	return checkChunkInfo(info, e), nil
}

// uploader reads chunks from the source and stores them.
type uploader struct {
	s        *Store
	src      io.ReaderAt
	comp     *transport.Compressor
	parallel int
	progress func(uploaded uint64) // raw bytes uploaded so far
	chunks   atomic.Uint64
	rawBytes atomic.Uint64
	objBytes atomic.Uint64
	repaired atomic.Uint64

	decOnce sync.Once
	dec     *decoder // for repairs
	decErr  error
}

func (u *uploader) upload(ctx context.Context, entries []chunk.Entry) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(u.parallel)
	for _, e := range entries {
		g.Go(func() error { return u.one(ctx, e, false) })
	}
	return g.Wait()
}

// repair re-uploads the chunk of e over a missing or damaged object.
func (u *uploader) repair(ctx context.Context, e chunk.Entry) error {
	if err := u.one(ctx, e, true); err != nil {
		return fmt.Errorf("repair chunk object %s: %w", u.s.chunkKey(e.ID), err)
	}
	u.repaired.Add(1)
	return nil
}

// one reads the chunk of e from the source, checks that it still hashes
// to e.ID and uploads it (with its chunkMeta). With check, which a repair
// sets since it overwrites an object other generations reference, the
// encoded object is also decoded and hashed before it is written.
func (u *uploader) one(ctx context.Context, e chunk.Entry, check bool) error {
	buf := chunk.GetBuffer(int(e.Length))
	defer chunk.PutBuffer(buf)
	raw := (*buf)[:e.Length]
	if _, err := u.src.ReadAt(raw, int64(e.Offset)); err != nil {
		return fmt.Errorf("read source at %d: %w", e.Offset, err)
	}
	if chunk.Sum(raw) != e.ID {
		return fmt.Errorf("%w: chunk at offset %d no longer hashes to %s (push from a snapshot)", ErrSourceChanged, e.Offset, e.ID.Short())
	}
	scratch := chunk.GetBuffer(int(e.Length))
	defer chunk.PutBuffer(scratch)
	obj := encodeChunk(u.comp, raw, (*scratch)[:0])
	if check {
		u.decOnce.Do(func() { u.dec, u.decErr = newDecoder() })
		if u.decErr != nil {
			return u.decErr
		}
		if out, err := u.dec.decode(obj, e.Length); err != nil || chunk.Sum(out) != e.ID {
			return fmt.Errorf("chunk %s encodes to an object that does not decode to it (%v): not written", e.ID.Short(), err)
		}
	}
	meta := metaOf(obj, e.Length).userMetadata()
	if err := u.s.put(ctx, "upload chunk "+e.ID.Short(), u.s.chunkKey(e.ID), obj, meta, false); err != nil {
		return err
	}
	u.chunks.Add(1)
	done := u.rawBytes.Add(e.Length)
	u.objBytes.Add(uint64(len(obj)))
	if u.progress != nil {
		u.progress(done)
	}
	return nil
}

// close releases the repair decoder.
func (u *uploader) close() {
	if u.dec != nil {
		u.dec.close()
	}
}

// refresh renews the modification time of the chunk objects of entries
// (server-side copies onto themselves, keeping their chunkMeta), uploading
// any that is gone or damaged.
func (u *uploader) refresh(ctx context.Context, entries []chunk.Entry) (uint64, error) {
	var n atomic.Uint64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(u.parallel)
	for _, e := range entries {
		g.Go(func() error {
			key := u.s.chunkKey(e.ID)
			info, err := u.s.stat(gctx, "refresh chunk "+e.ID.Short(), key)
			if errors.Is(err, ErrNotFound) {
				return u.one(gctx, e, false)
			}
			if err != nil {
				return err
			}
			if why := checkChunkInfo(info, e); why != "" {
				u.s.log.Warn("chunk object damaged; re-uploading it from the source", "key", key, "why", why)
				return u.repair(gctx, e)
			}
			err = u.s.copy(gctx, "refresh chunk "+e.ID.Short(), key, key, map[string]string{chunkMetaKey: info.UserMetadata[chunkMetaKey]})
			if errors.Is(err, ErrNotFound) {
				return u.one(gctx, e, false)
			}
			if err == nil {
				n.Add(1)
			}
			return err
		})
	}
	err := g.Wait()
	return n.Load(), err
}
