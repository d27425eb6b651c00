package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/internal/atomicfile"
	"github.com/voldelta/voldelta/transport"
)

// Cache keeps the manifests of the rounds an agent completed, so that the
// next round of a volume has its base without reading the volume or asking
// the receiver, and the hint policy of each volume (when the last full scan
// was, which hint sources a full scan caught missing a change).
//
// Layout, one directory per volume:
//
//	<dir>/<volume>/<root>.manifest  a committed manifest (chunk.Manifest
//	                                binary form; its root is checked on load)
//	<dir>/<volume>/policy.json      Policy
//
// Every file is written atomically (temp file, fsync, rename, fsync of the
// directory). A manifest that does not decode, or whose root is not its
// name, is an error, not a cache miss: the round reports it and falls back
// to a full scan.
type Cache struct {
	dir string
}

// cacheKeep is how many manifests of a volume are kept: the last committed
// one and the one before (a round that failed after the receiver committed
// leaves the receiver one generation ahead of what the agent knows).
const cacheKeep = 2

// DefaultCacheDir is /var/lib/voldelta/agent for root, else
// ${XDG_CACHE_HOME:-$HOME/.cache}/voldelta/agent.
func DefaultCacheDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/voldelta/agent"
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "voldelta", "agent")
	}
	return filepath.Join(os.TempDir(), "voldelta-agent")
}

// OpenCache opens (creating) a cache directory.
func OpenCache(dir string) (*Cache, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("agent cache: %w", err)
	}
	return &Cache{dir: dir}, nil
}

// Dir returns the cache's directory.
func (c *Cache) Dir() string { return c.dir }

// ErrCacheCorrupt is wrapped when a cached file is damaged.
var ErrCacheCorrupt = errors.New("agent cache file damaged")

func (c *Cache) volumeDir(volume string) (string, error) {
	if err := transport.ValidateVolumeName(volume); err != nil {
		return "", err
	}
	return filepath.Join(c.dir, volume), nil
}

// Load returns the cached manifest of volume with the given root, or nil
// if the cache has none.
func (c *Cache) Load(volume string, root chunk.ID) (*chunk.Manifest, error) {
	d, err := c.volumeDir(volume)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(d, root.String()+".manifest")
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("agent cache: %w", err)
	}
	var m chunk.Manifest
	if err := m.UnmarshalBinary(b); err != nil {
		return nil, fmt.Errorf("%w: %s: %w (delete it; the next round scans in full)", ErrCacheCorrupt, path, err)
	}
	if m.Root != root {
		return nil, fmt.Errorf("%w: %s holds root %s", ErrCacheCorrupt, path, m.Root)
	}
	return &m, nil
}

// Store saves m as volume's latest manifest and drops older ones beyond
// cacheKeep.
func (c *Cache) Store(volume string, m *chunk.Manifest) error {
	d, err := c.volumeDir(volume)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(d, 0o700); err != nil {
		return fmt.Errorf("agent cache: %w", err)
	}
	b, err := m.MarshalBinary()
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(d, m.Root.String()+".manifest"), b, 0o600); err != nil {
		return fmt.Errorf("agent cache: %w", err)
	}
	c.prune(d, m.Root)
	return nil
}

// prune removes all but the newest cacheKeep manifests (keeping keep).
func (c *Cache) prune(d string, keep chunk.ID) {
	entries, err := os.ReadDir(d)
	if err != nil {
		return
	}
	type file struct {
		name string
		mod  time.Time
	}
	var files []file
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".manifest") || e.Name() == keep.String()+".manifest" {
			continue
		}
		if fi, err := e.Info(); err == nil {
			files = append(files, file{e.Name(), fi.ModTime()})
		}
	}
	sort.Slice(files, func(i, j int) bool { return files[i].mod.After(files[j].mod) })
	for i, f := range files {
		if i >= cacheKeep-1 {
			os.Remove(filepath.Join(d, f.name))
		}
	}
}

// Policy is a volume's hint policy state (policy.json).
type Policy struct {
	// LastFullScan is when a round of the volume last read it whole, and
	// RoundsSinceFullScan how many hinted rounds committed since.
	LastFullScan        time.Time `json:"last_full_scan,omitzero"`
	RoundsSinceFullScan int       `json:"rounds_since_full_scan"`
	// Distrusted names hint sources a full scan caught missing a change
	// of this volume, with when and what: their hints are not used again
	// for it until the entry is removed (voldelta send --trust-hints).
	Distrusted map[string]string `json:"distrusted,omitempty"`
}

// LoadPolicy returns volume's policy; a missing file is the zero Policy.
func (c *Cache) LoadPolicy(volume string) (Policy, error) {
	d, err := c.volumeDir(volume)
	if err != nil {
		return Policy{}, err
	}
	path := filepath.Join(d, "policy.json")
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Policy{}, nil
	}
	if err != nil {
		return Policy{}, fmt.Errorf("agent cache: %w", err)
	}
	var p Policy
	if err := json.Unmarshal(b, &p); err != nil {
		return Policy{}, fmt.Errorf("%w: %s: %w", ErrCacheCorrupt, path, err)
	}
	return p, nil
}

// SavePolicy replaces volume's policy.
func (c *Cache) SavePolicy(volume string, p Policy) error {
	d, err := c.volumeDir(volume)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(d, 0o700); err != nil {
		return fmt.Errorf("agent cache: %w", err)
	}
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(d, "policy.json"), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("agent cache: %w", err)
	}
	return nil
}
