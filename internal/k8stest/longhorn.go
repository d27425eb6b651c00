package k8stest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// LonghornReplica writes a Longhorn v1 replica directory the way
// longhorn-engine lays it out, for tests of code that reads snapshot chains:
// dataPath/replicas/<volume>-<8 hex>/ with volume.meta, one sparse
// volume-snap-<name>.img (+ .img.meta) per snapshot and an empty head.
type LonghornReplica struct {
	Dir    string
	Volume string
	Size   int64
	snaps  []string
	head   int
}

// NewLonghornReplica creates an empty replica of volume (size bytes) under
// dataPath, with an empty head and no snapshot.
func NewLonghornReplica(dataPath, volume string, size int64) (*LonghornReplica, error) {
	r := &LonghornReplica{Dir: filepath.Join(dataPath, "replicas", volume+"-0a1b2c3d"), Volume: volume, Size: size}
	if err := os.MkdirAll(r.Dir, 0o755); err != nil {
		return nil, err
	}
	return r, r.newHead()
}

func (r *LonghornReplica) headFile() string { return fmt.Sprintf("volume-head-%03d.img", r.head) }

func (r *LonghornReplica) parent() string {
	if len(r.snaps) == 0 {
		return ""
	}
	return "volume-snap-" + r.snaps[len(r.snaps)-1] + ".img"
}

func (r *LonghornReplica) newHead() error {
	f, err := os.Create(filepath.Join(r.Dir, r.headFile()))
	if err != nil {
		return err
	}
	if err := f.Truncate(r.Size); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(r.Dir, r.headFile()+".meta"), map[string]any{
		"Name": r.headFile(), "Parent": r.parent(), "Removed": false, "UserCreated": false,
		"Created": time.Now().UTC().Format(time.RFC3339), "Labels": nil}); err != nil {
		return err
	}
	return writeJSON(filepath.Join(r.Dir, "volume.meta"), map[string]any{
		"Size": r.Size, "Head": r.headFile(), "Dirty": true, "Rebuilding": false, "Error": "",
		"Parent": r.parent(), "SectorSize": 512, "BackingFilePath": ""})
}

// WriteHead writes p at off into the live head (4 KiB-aligned writes keep
// the layer's extents exact, as Longhorn's are).
func (r *LonghornReplica) WriteHead(p []byte, off int64) error {
	f, err := os.OpenFile(filepath.Join(r.Dir, r.headFile()), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(p, off); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Snapshot turns the head into snapshot name (volume-snap-<name>.img) and
// starts a new empty head on it, as a Longhorn snapshot does.
func (r *LonghornReplica) Snapshot(name string) error {
	file := "volume-snap-" + name + ".img"
	if err := os.Rename(filepath.Join(r.Dir, r.headFile()), filepath.Join(r.Dir, file)); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(r.Dir, r.headFile()+".meta")); err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(r.Dir, file+".meta"), map[string]any{
		"Name": r.headFile(), "Parent": r.parent(), "Removed": false, "UserCreated": true,
		"Created": time.Now().UTC().Format(time.RFC3339), "Labels": map[string]string{}}); err != nil {
		return err
	}
	r.snaps = append(r.snaps, name)
	r.head++
	return r.newHead()
}

func writeJSON(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}
