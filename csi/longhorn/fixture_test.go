package longhorn

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// blk is the granularity of test writes: Longhorn writes whole 4 KiB
// sectors into a layer, and the filesystem allocates whole blocks.
const blk = 4096

// lhInfo and lhDisk are written exactly as longhorn-engine encodes
// replica.Info and replica.disk (no JSON tags: the keys are the field names).
type lhInfo struct {
	Size            int64
	Head            string
	Dirty           bool
	Rebuilding      bool
	Error           string
	Parent          string
	SectorSize      int64
	BackingFilePath string
	Encrypted       bool
}

type lhDisk struct {
	Name        string
	Parent      string
	Removed     bool
	UserCreated bool
	Created     string
	Labels      map[string]string
}

// fixture builds a replica directory of real sparse files and keeps an
// in-memory model of every layer.
type fixture struct {
	t      testing.TB
	dir    string
	size   uint64 // volume size
	info   lhInfo
	layers map[string]*modelLayer // by file name
	heads  int
	rng    *rand.Rand    // choices
	src    *rand.ChaCha8 // block contents
}

type modelLayer struct {
	file    string
	parent  string // file
	size    uint64
	data    []byte
	written []bool // per blk block
	removed bool
}

func newFixture(t testing.TB, size uint64) *fixture {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pvc-test-0123abcd")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return &fixture{t: t, dir: dir, size: size, layers: map[string]*modelLayer{},
		rng: rand.New(rand.NewPCG(uint64(len(t.Name())), 7)),
		src: rand.NewChaCha8([32]byte{byte(len(t.Name()))})}
}

func (f *fixture) writeJSON(name string, v any) {
	f.t.Helper()
	fh, err := os.Create(filepath.Join(f.dir, name))
	if err != nil {
		f.t.Fatal(err)
	}
	defer fh.Close()
	if err := json.NewEncoder(fh).Encode(v); err != nil {
		f.t.Fatal(err)
	}
}

// layer creates a layer file of the given size (0: the volume size) with
// its .img.meta. parent is a bare snapshot name or "".
func (f *fixture) layer(file, parent string, size uint64) *modelLayer {
	f.t.Helper()
	if size == 0 {
		size = f.size
	}
	pf := ""
	if parent != "" {
		pf = snapshotFile(parent)
	}
	fh, err := os.Create(filepath.Join(f.dir, file))
	if err != nil {
		f.t.Fatal(err)
	}
	if err := fh.Truncate(int64(size)); err != nil {
		f.t.Fatal(err)
	}
	fh.Close()
	l := &modelLayer{file: file, parent: pf, size: size, data: make([]byte, size),
		written: make([]bool, (size+blk-1)/blk)}
	f.layers[file] = l
	f.meta(l, false)
	return l
}

// meta (re)writes a layer's .img.meta. Like Longhorn, a snapshot's meta
// carries the name of the head it was linked from.
func (f *fixture) meta(l *modelLayer, userCreated bool) {
	f.writeJSON(l.file+metaSuffix, lhDisk{
		Name:        fmt.Sprintf("volume-head-%03d.img", f.heads),
		Parent:      l.parent,
		Removed:     l.removed,
		UserCreated: userCreated,
		Created:     time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).Format(time.RFC3339),
		Labels:      map[string]string{"k": "v"},
	})
}

// snap creates snapshot name (parent a bare name or "").
func (f *fixture) snap(name, parent string) *modelLayer {
	return f.layer(snapshotFile(name), parent, 0)
}

// head creates the volume head on parent and writes volume.meta.
func (f *fixture) head(parent string) *modelLayer {
	f.heads++
	file := fmt.Sprintf("volume-head-%03d.img", f.heads)
	l := f.layer(file, parent, 0)
	pf := ""
	if parent != "" {
		pf = snapshotFile(parent)
	}
	f.info = lhInfo{Size: int64(f.size), Head: file, Dirty: true, Parent: pf, SectorSize: 512}
	f.writeJSON(volumeMetaFile, f.info)
	return l
}

// write writes data at off into layer l (whole blocks) and the model.
func (f *fixture) write(l *modelLayer, off uint64, data []byte) {
	f.t.Helper()
	if off%blk != 0 || len(data)%blk != 0 || off+uint64(len(data)) > l.size {
		f.t.Fatalf("bad test write %d+%d into %s", off, len(data), l.file)
	}
	fh, err := os.OpenFile(filepath.Join(f.dir, l.file), os.O_WRONLY, 0)
	if err != nil {
		f.t.Fatal(err)
	}
	defer fh.Close()
	if _, err := fh.WriteAt(data, int64(off)); err != nil {
		f.t.Fatal(err)
	}
	copy(l.data[off:], data)
	for b := off / blk; b < (off+uint64(len(data)))/blk; b++ {
		l.written[b] = true
	}
}

// fill writes n random blocks at block index b.
func (f *fixture) fill(l *modelLayer, b, n int) {
	data := make([]byte, n*blk)
	f.src.Read(data)
	f.write(l, uint64(b)*blk, data)
}

// zero writes n zero blocks at block index b: data, not a hole.
func (f *fixture) zero(l *modelLayer, b, n int) {
	f.write(l, uint64(b)*blk, make([]byte, n*blk))
}

// chain is name's model ancestry, base first.
func (f *fixture) chain(name string) []*modelLayer {
	if !isSnapshotFile(name) {
		name = snapshotFile(name)
	}
	var out []*modelLayer
	for l := f.layers[name]; ; l = f.layers[l.parent] {
		out = append([]*modelLayer{l}, out...)
		if l.parent == "" {
			return out
		}
	}
}

// image is the model's composed image of snapshot name.
func (f *fixture) image(name string) []byte {
	chain := f.chain(name)
	top := chain[len(chain)-1]
	img := make([]byte, top.size)
	for _, l := range chain { // bottom up: upper layers overwrite
		for b, w := range l.written {
			if w {
				lo := uint64(b) * blk
				hi := min(lo+blk, top.size)
				if lo < hi {
					copy(img[lo:hi], l.data[lo:hi])
				}
			}
		}
	}
	return img
}

// blocksExtents turns the written blocks of layers into merged extents
// clipped to limit.
func blocksExtents(limit uint64, layers ...*modelLayer) []Extent {
	var es []Extent
	for _, l := range layers {
		for b, w := range l.written {
			if w {
				es = append(es, Extent{Offset: uint64(b) * blk, Length: blk})
			}
		}
	}
	return clipExtents(mergeExtents(es), limit)
}

// extents is the model's data extents of snapshot name's image.
func (f *fixture) extents(name string) []Extent {
	chain := f.chain(name)
	return blocksExtents(chain[len(chain)-1].size, chain...)
}

// delta is the model's Delta(base, target).
func (f *fixture) delta(base, target string) []Extent {
	chain := f.chain(target)
	top := chain[len(chain)-1]
	var after []*modelLayer
	var baseSize uint64
	for i := len(chain) - 1; i >= 0; i-- {
		if base != "" && chain[i].file == snapshotFile(base) {
			baseSize = chain[i].size
			break
		}
		after = append(after, chain[i])
	}
	es := blocksExtents(top.size, after...)
	if base != "" && top.size > baseSize {
		es = mergeExtents(append(es, Extent{Offset: baseSize, Length: top.size - baseSize}))
	}
	return es
}

func (f *fixture) open() *Replica {
	f.t.Helper()
	r, err := OpenReplica(f.dir)
	if err != nil {
		f.t.Fatalf("OpenReplica: %v", err)
	}
	return r
}
