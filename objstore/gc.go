package objstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/transport"
	"golang.org/x/sync/errgroup"
)

// GCOptions tune a garbage collection.
type GCOptions struct {
	// Keep is how many of the newest generations of each volume to keep;
	// 0 keeps all of them (only unreferenced chunks are removed).
	Keep int
	// Grace protects chunks and removed manifests younger than it (see the
	// package doc); 0 means DefaultGrace. Negative means none: only when
	// no push runs.
	Grace time.Duration
	// DryRun reports what would be removed and removes nothing.
	DryRun bool
	// Parallel is the number of concurrent requests; 0 means DefaultParallel.
	Parallel int
	// Clock maps the store's timestamps (gc's marker, the objects' ages)
	// onto the clock the grace is measured on; nil means SystemClock.
	Clock Clock
}

// GCStats describes a garbage collection; the JSON names are those of
// --stats-json.
type GCStats struct {
	Store            string  `json:"store"`
	DryRun           bool    `json:"dry_run"`
	Volumes          int     `json:"volumes"`
	ManifestsKept    int     `json:"manifests_kept"`
	ManifestsRemoved int     `json:"manifests_removed"`
	ChunksReferenced int     `json:"chunks_referenced"` // distinct chunks kept manifests reference
	ChunksKept       int     `json:"chunks_kept"`       // chunk objects left
	ChunksYoung      int     `json:"chunks_young"`      // unreferenced but within the grace period
	ChunksRemoved    int     `json:"chunks_removed"`
	BytesRemoved     uint64  `json:"bytes_removed"`
	TrashRemoved     int     `json:"trash_removed"`
	Retries          uint64  `json:"retries"`
	DurationSeconds  float64 `json:"duration_seconds"`
}

// GC removes the generations beyond the newest opt.Keep of each volume and
// the chunks no remaining generation references, following the rule in the
// package doc, which keeps it safe against concurrent pushes.
func (s *Store) GC(ctx context.Context, opt GCOptions) (*GCStats, error) {
	start := time.Now()
	if opt.Keep < 0 {
		return nil, fmt.Errorf("keep %d: want >= 0", opt.Keep)
	}
	switch {
	case opt.Grace == 0:
		opt.Grace = DefaultGrace
	case opt.Grace < 0:
		opt.Grace = 0
	}
	if opt.Parallel <= 0 {
		opt.Parallel = DefaultParallel
	}
	clock := clockOrSystem(opt.Clock)
	retries0 := s.Retries()
	st := &GCStats{Store: s.String(), DryRun: opt.DryRun}

	// T0 on the server's clock, which also stamps the objects compared
	// with it.
	host, _ := os.Hostname()
	marker := s.prefix + "gc/started"
	if err := s.put(ctx, "write gc marker", marker, fmt.Appendf(nil, "gc by %s pid %d at %s\n", host, os.Getpid(), time.Now().UTC().Format(time.RFC3339)), nil, false); err != nil {
		return nil, err
	}
	// A listing has millisecond precision, a HEAD only seconds.
	var t0 time.Time
	err := s.list(ctx, "read gc marker", marker, func(o minio.ObjectInfo) error {
		if o.Key == marker {
			t0 = clock.FromStore(o.LastModified)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if t0.IsZero() {
		return nil, fmt.Errorf("gc marker %s not listed after it was written", marker)
	}
	cutoff := t0.Add(-opt.Grace)
	// Without a grace, manifests removed by this run reference nothing.
	trashCutoff := cutoff
	if opt.Grace == 0 {
		trashCutoff = time.Unix(1<<40, 0)
	}
	s.log.Info("gc started", "server_time", t0, "cutoff", cutoff, "keep", opt.Keep)

	// 1. Move the generations beyond Keep to the trash.
	gens, err := s.generations(ctx, "")
	if err != nil {
		return nil, err
	}
	st.Volumes = len(gens)
	type vg struct {
		vol string
		gen uint64
	}
	var drop []vg
	for vol, g := range gens {
		if opt.Keep > 0 && len(g) > opt.Keep {
			for _, gen := range g[:len(g)-opt.Keep] {
				drop = append(drop, vg{vol, gen})
			}
		}
	}
	if !opt.DryRun {
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(opt.Parallel)
		for _, d := range drop {
			g.Go(func() error {
				key := s.manifestKey(d.vol, d.gen)
				trash := s.trashPrefix() + key[len(s.prefix):]
				if err := s.copy(gctx, "move manifest to trash", trash, key, nil); err != nil {
					if errors.Is(err, ErrNotFound) {
						return nil // a concurrent gc moved it
					}
					return err
				}
				return s.remove(gctx, "remove manifest", key)
			})
		}
		if err := g.Wait(); err != nil {
			return nil, err
		}
	}
	st.ManifestsRemoved = len(drop)

	// 2. What is referenced: every manifest left (listed again: pushes
	// may have added some), and the trash younger than the grace.
	type ref struct {
		key, what string
	}
	var refs []ref
	if opt.DryRun {
		dropped := make(map[vg]bool)
		for _, d := range drop {
			dropped[d] = true
		}
		for vol, g := range gens {
			for _, gen := range g {
				if !dropped[vg{vol, gen}] {
					refs = append(refs, ref{s.manifestKey(vol, gen), fmt.Sprintf("generation %d of %s", gen, vol)})
				}
			}
		}
	} else {
		err = s.list(ctx, "list manifests", s.manifestsPrefix(), func(o minio.ObjectInfo) error {
			if vol, gen, ok := parseManifestKey(s.manifestsPrefix(), o.Key); ok {
				refs = append(refs, ref{o.Key, fmt.Sprintf("generation %d of %s", gen, vol)})
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	st.ManifestsKept = len(refs)
	var oldTrash []string
	err = s.list(ctx, "list trash", s.trashPrefix(), func(o minio.ObjectInfo) error {
		if clock.FromStore(o.LastModified).Before(trashCutoff) {
			oldTrash = append(oldTrash, o.Key)
		} else {
			refs = append(refs, ref{o.Key, "removed manifest " + o.Key})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	referenced := make(map[chunk.ID]struct{})
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(opt.Parallel)
	for _, r := range refs {
		g.Go(func() error {
			body, err := s.get(gctx, "read "+r.what, r.key, maxManifestObject)
			if errors.Is(err, ErrNotFound) && !opt.DryRun {
				// Another gc moved or emptied it after the listing: the
				// references are incomplete, so delete nothing.
				return fmt.Errorf("%s vanished while gc read it: another gc is running; gc removed no chunk, run it again", r.what)
			}
			if err != nil {
				return err
			}
			m, err := decodeManifest(r.what, body)
			if err != nil {
				// Deleting chunks on a partial view of the references
				// could break other generations: stop.
				return fmt.Errorf("%w; gc removed nothing further", err)
			}
			mu.Lock()
			defer mu.Unlock()
			for _, e := range m.Entries {
				if !e.Zero {
					referenced[e.ID] = struct{}{}
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	st.ChunksReferenced = len(referenced)

	// 3. Remove unreferenced chunk objects older than the grace.
	var doomed []string
	err = s.list(ctx, "list chunks", s.chunksPrefix(), func(o minio.ObjectInfo) error {
		id, ok := s.parseChunkKey(o.Key)
		if !ok {
			s.log.Warn("gc: not a chunk object; left alone", "key", o.Key)
			return nil
		}
		if _, ok := referenced[id]; ok {
			st.ChunksKept++
			return nil
		}
		if !clock.FromStore(o.LastModified).Before(cutoff) {
			st.ChunksYoung++
			st.ChunksKept++
			return nil
		}
		doomed = append(doomed, o.Key)
		st.BytesRemoved += uint64(o.Size)
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Strings(doomed)
	st.ChunksRemoved = len(doomed)
	if !opt.DryRun {
		if err := s.removeMany(ctx, "remove chunks", doomed); err != nil {
			return nil, err
		}
		// 4. The trash past the grace references nothing any more.
		if err := s.removeMany(ctx, "empty trash", oldTrash); err != nil {
			return nil, err
		}
	}
	st.TrashRemoved = len(oldTrash)
	st.Retries = s.Retries() - retries0
	st.DurationSeconds = time.Since(start).Seconds()
	s.log.Info("gc done", "manifests_removed", st.ManifestsRemoved, "chunks_removed", st.ChunksRemoved, "bytes_removed", st.BytesRemoved)
	return st, nil
}

// Forget removes generation gen of volume from the store, as gc removes
// the generations beyond its Keep: the manifest moves to the trash, so
// pulls no longer see it, and the chunks no other manifest references are
// reclaimed by a later GC once its grace period has passed (a push that
// used the generation as its base meanwhile is safe, as with gc). The
// error wraps ErrNotFound if the store has no such generation.
func (s *Store) Forget(ctx context.Context, volume string, gen uint64) error {
	if err := transport.ValidateVolumeName(volume); err != nil {
		return err
	}
	key := s.manifestKey(volume, gen)
	trash := s.trashPrefix() + key[len(s.prefix):]
	if err := s.copy(ctx, "move manifest to trash", trash, key, nil); err != nil {
		return fmt.Errorf("forget generation %d of %q: %w", gen, volume, err)
	}
	if err := s.remove(ctx, "remove manifest", key); err != nil {
		return fmt.Errorf("forget generation %d of %q: %w", gen, volume, err)
	}
	s.log.Info("generation forgotten", "volume", volume, "generation", gen)
	return nil
}
