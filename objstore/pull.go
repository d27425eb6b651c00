package objstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/internal/atomicfile"
	"github.com/voldelta/voldelta/receiver"
	"github.com/voldelta/voldelta/transport"
)

// PullOptions tune a pull.
type PullOptions struct {
	Volume     string // the volume in the store, and in StateDir
	Generation uint64 // 0: the latest
	Target     string // file (created if missing) or block device
	StateDir   string // the receiver's state lives in StateDir/Volume
	// Parallel is the number of concurrent downloads; 0 means DefaultParallel.
	Parallel int
	// Receiver tunes the apply (verify mode, buffer, workers, logger).
	Receiver receiver.Options
	// Downloaded, if set, is called with the size of each object as it
	// is downloaded (the manifest, then the chunks), from the concurrent
	// downloads: their sum is PullStats.BytesDownloaded.
	Downloaded func(n uint64)

	// fetched, if set, runs before each chunk is fetched (tests).
	fetched func(i int, e chunk.Entry) error
}

// PullStats describes a pull; the JSON names are those of --stats-json.
type PullStats struct {
	Store              string  `json:"store"`
	Volume             string  `json:"volume"`
	Generation         uint64  `json:"generation"`       // the store's generation applied
	LocalGeneration    uint64  `json:"local_generation"` // the receiver's generation committed
	PreviousGeneration uint64  `json:"previous_local_generation"`
	Resumed            bool    `json:"resumed"` // an interrupted pull was resumed
	RootHash           string  `json:"root_hash"`
	SourceBytes        uint64  `json:"source_bytes"`
	Entries            uint64  `json:"entries"`        // manifest entries: data chunks and zero runs
	ChunksTotal        uint64  `json:"chunks_total"`   // data chunks
	ChunksSkipped      uint64  `json:"chunks_skipped"` // entries already in place
	ChunksCopied       uint64  `json:"chunks_copied"`
	ChunksFetched      uint64  `json:"chunks_fetched"`
	ZeroRuns           uint64  `json:"chunks_zeroed"`     // zero runs written
	BytesFetchedRaw    uint64  `json:"bytes_fetched_raw"` // chunk bytes after decompression
	BytesCopied        uint64  `json:"bytes_copied"`      // copied within the target instead of downloaded
	BytesDownloaded    uint64  `json:"bytes_downloaded"`  // objects as stored: chunks and the manifest
	ManifestBytes      uint64  `json:"manifest_bytes"`
	Retries            uint64  `json:"retries"`
	DurationSeconds    float64 `json:"duration_seconds"`
}

// PulledState is what StateDir/Volume/store.json records about the last
// completed pull.
type PulledState struct {
	Store      string    `json:"store"`
	Volume     string    `json:"volume"`
	Generation uint64    `json:"generation"`
	Root       string    `json:"root"`
	LocalGen   uint64    `json:"local_generation"`
	At         time.Time `json:"at"`
}

// PulledStateFile is the name of the file Pull writes in StateDir/Volume.
const PulledStateFile = "store.json"

// Pull applies a generation of a volume to a target in place, fetching
// only the chunks the target lacks, and commits it. An interrupted pull
// is resumed by the next one (of any generation). On failure the stats
// say what was downloaded so far.
func (s *Store) Pull(ctx context.Context, opt PullOptions) (*PullStats, error) {
	start := time.Now()
	if err := transport.ValidateVolumeName(opt.Volume); err != nil {
		return nil, err
	}
	if opt.Target == "" || opt.StateDir == "" {
		return nil, fmt.Errorf("pull needs a target and a state directory")
	}
	if opt.Parallel <= 0 {
		opt.Parallel = DefaultParallel
	}
	retries0 := s.Retries()
	st := &PullStats{Store: s.String(), Volume: opt.Volume}
	gen := opt.Generation
	if gen == 0 {
		var err error
		if gen, err = s.latestGeneration(ctx, opt.Volume); err != nil {
			return st, err
		}
		if gen == 0 {
			return st, failf(ErrNotFound, "volume %q has no generation in %s", opt.Volume, s)
		}
	}
	m, n, err := s.ReadManifest(ctx, opt.Volume, gen)
	if err != nil {
		return st, err
	}
	st.Generation, st.RootHash, st.SourceBytes = gen, m.Root.String(), m.Size
	st.ManifestBytes = uint64(n)
	var downloaded, fetchedRaw atomic.Uint64
	count := func(n uint64) {
		downloaded.Add(n)
		if opt.Downloaded != nil {
			opt.Downloaded(n)
		}
	}
	count(uint64(n))
	dec, err := newDecoder()
	if err != nil {
		return st, err
	}
	defer dec.close()
	fetch := func(ctx context.Context, i int, e chunk.Entry) ([]byte, error) {
		if opt.fetched != nil {
			if err := opt.fetched(i, e); err != nil {
				return nil, err
			}
		}
		data, objLen, err := s.getChunk(ctx, dec, e)
		var bad *ChunkError
		if errors.As(err, &bad) {
			bad.Volume, bad.Generation = opt.Volume, gen
		}
		count(uint64(objLen))
		if err == nil {
			fetchedRaw.Add(e.Length)
		}
		return data, err
	}
	vol := receiver.Volume{Name: opt.Volume, Path: opt.Target, StateDir: opt.StateDir}
	r, prev, err := receiver.ApplyManifest(ctx, vol, opt.Receiver, m, "s3://"+s.bucket+"/"+s.prefix, opt.Parallel, fetch)
	st.BytesDownloaded, st.BytesFetchedRaw = downloaded.Load(), fetchedRaw.Load()
	st.Retries = s.Retries() - retries0
	st.PreviousGeneration, st.Resumed = prev.Generation, prev.Incomplete
	st.DurationSeconds = time.Since(start).Seconds()
	if err != nil {
		return st, err
	}
	st.LocalGeneration = r.Generation
	st.Entries = uint64(len(m.Entries))
	st.ChunksSkipped, st.ChunksCopied, st.ChunksFetched, st.ZeroRuns = r.Skipped, r.Copied, r.Fetched, r.Zeroed
	st.BytesCopied = r.CopyBytes
	for _, e := range m.Entries {
		if !e.Zero {
			st.ChunksTotal++
		}
	}
	rec := PulledState{Store: s.String(), Volume: opt.Volume, Generation: gen, Root: st.RootHash, LocalGen: r.Generation, At: time.Now().UTC()}
	b, err := json.MarshalIndent(rec, "", "  ")
	if err == nil {
		err = atomicfile.Write(filepath.Join(opt.StateDir, opt.Volume, PulledStateFile), append(b, '\n'), 0o644)
	}
	if err != nil {
		return st, fmt.Errorf("generation committed, but recording it: %w", err)
	}
	return st, nil
}

// ChunkError: a chunk object a generation references is missing or
// damaged (it does not decode to the manifest's length, or its bytes do not
// hash to its name). errors.Is(err, ErrNotFound) or ErrCorrupt tells which.
// Pull reports it with the key and how to repair the store.
type ChunkError struct {
	Key    string   // the object's key in the bucket
	ID     chunk.ID // the chunk's ID
	Reason string
	// Volume and Generation name the generation that references it, when
	// known (pull).
	Volume     string
	Generation uint64

	kind  error // ErrNotFound or ErrCorrupt
	store string
}

func (e *ChunkError) Error() string {
	what := "is damaged"
	if e.kind == ErrNotFound {
		what = "is missing"
	}
	gen := ""
	if e.Volume != "" {
		gen = fmt.Sprintf(" (referenced by generation %d of %s)", e.Generation, e.Volume)
	}
	vol := e.Volume
	if vol == "" {
		vol = "VOLUME"
	}
	return fmt.Sprintf("chunk object %s in %s%s %s: %s; repair the store by pushing the volume again with `voldelta push --confirm-all --volume %s --source SOURCE --store ...` from a source holding that data (it checks every chunk it reuses and re-uploads the missing or damaged ones), then pull again",
		e.Key, e.store, gen, what, e.Reason, vol)
}

// Is makes errors.Is(err, ErrCorrupt) (or ErrNotFound) hold.
func (e *ChunkError) Is(target error) bool { return target == e.kind }

// getChunk downloads, decodes and checks the chunk of entry e; it returns
// the bytes and the object's size. A missing or damaged object is a
// *ChunkError.
func (s *Store) getChunk(ctx context.Context, dec *decoder, e chunk.Entry) ([]byte, int, error) {
	key := s.chunkKey(e.ID)
	bad := func(kind error, reason string) *ChunkError {
		return &ChunkError{Key: key, ID: e.ID, Reason: reason, kind: kind, store: s.String()}
	}
	obj, err := s.get(ctx, "fetch chunk "+e.ID.Short(), key, maxChunkObject)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil, 0, bad(ErrNotFound, "it is not in the store")
	case errors.Is(err, ErrCorrupt):
		return nil, 0, bad(ErrCorrupt, err.Error())
	case err != nil:
		return nil, 0, err
	}
	data, err := dec.decode(obj, e.Length)
	if err != nil {
		return nil, len(obj), bad(ErrCorrupt, err.Error())
	}
	if chunk.Sum(data) != e.ID {
		return nil, len(obj), bad(ErrCorrupt, "its bytes do not hash to its name")
	}
	return data, len(obj), nil
}

// ReadPulledState reads what the last completed pull into stateDir/volume
// recorded.
func ReadPulledState(stateDir, volume string) (*PulledState, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, volume, PulledStateFile))
	if err != nil {
		return nil, err
	}
	var p PulledState
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("%s: %w", PulledStateFile, err)
	}
	return &p, nil
}
