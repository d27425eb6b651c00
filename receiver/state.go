package receiver

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/voldelta/voldelta/chunk"
	"github.com/zeebo/blake3"
)

// Phase says whether a target holds its committed generation.
type Phase string

// Phases of a volume's state.
const (
	// PhaseCommitted: the target holds generation Generation, hashing to Root.
	PhaseCommitted Phase = "committed"
	// PhaseApplying: an apply started and has not committed; the target is
	// partly written and must not be used as a replica until a sync commits.
	PhaseApplying Phase = "applying"
)

// Fingerprint is what the receiver remembers of a target after committing,
// to notice changes made outside voldelta. For a regular file it is the
// size, modification time and inode; a block device has no reliable
// modification time, so only its size is kept and the index is spot-checked
// by reading a sample of chunks (see doc.go).
type Fingerprint struct {
	Size    int64  `json:"size"`
	MtimeNs int64  `json:"mtime_ns,omitempty"`
	Inode   uint64 `json:"inode,omitempty"`
	Device  uint64 `json:"device,omitempty"`
	Block   bool   `json:"block_device,omitempty"`
}

// State is a volume's state.json in the state directory.
type State struct {
	Volume      string       `json:"volume"`
	Target      string       `json:"target"`
	Phase       Phase        `json:"phase"`
	Generation  uint64       `json:"generation"`            // last committed generation (0: none)
	Root        string       `json:"root,omitempty"`        // root hash of the last committed generation
	Size        uint64       `json:"size"`                  // volume size of the last committed generation
	CommittedAt time.Time    `json:"committed_at,omitzero"` // when it was committed
	Params      chunk.Params `json:"params"`                // chunk parameters of the extents file
	Extents     string       `json:"extents"`               // file name of the known extents, in the volume's directory
	Fingerprint Fingerprint  `json:"fingerprint,omitzero"`  // of the target at commit
	Applying    *Applying    `json:"applying,omitempty"`    // set while PhaseApplying
	History     []Committed  `json:"history,omitempty"`     // recent commits, newest last
	Updated     time.Time    `json:"updated"`
}

// Applying describes an apply in progress (or interrupted).
type Applying struct {
	Root      string    `json:"root"`
	Size      uint64    `json:"size"`
	StartedAt time.Time `json:"started_at"`
	Peer      string    `json:"peer,omitempty"`
}

// Committed is one entry of a volume's commit history.
type Committed struct {
	Generation uint64    `json:"generation"`
	Root       string    `json:"root"`
	Size       uint64    `json:"size"`
	At         time.Time `json:"at"`
}

const historyLen = 20

// volumeDir holds one volume's files:
//
//	state.json          State, replaced atomically (temp file, fsync, rename, fsync dir)
//	extents-<hash>.bin  known extents of the target (the committed manifest, or what recovery proved)
//	journal             intent and done records of the apply in progress
//	lock                flock(2)ed while a session uses the volume
type volumeDir struct {
	dir string
}

func (v volumeDir) path(name string) string { return filepath.Join(v.dir, name) }

// ErrNoState is returned by loadState when a volume has never been synced.
var ErrNoState = errors.New("no state")

func (v volumeDir) loadState() (*State, error) {
	b, err := os.ReadFile(v.path("state.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNoState
	}
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("parse %s: %w", v.path("state.json"), err)
	}
	return &st, nil
}

func (v volumeDir) saveState(st *State) error {
	st.Updated = time.Now().UTC()
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(v.path("state.json"), append(b, '\n'))
}

// writeFileAtomic writes data to path through a temporary file that is
// fsynced and renamed over path; the directory is fsynced after.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	return nil
}

// Extents files: magic "VDEXTNT1", params, count u64, count × 49-byte
// entries (sorted, non-overlapping; not necessarily covering the target),
// then BLAKE3-256 of everything before it.
const extentsMagic = "VDEXTNT1"

func encodeExtents(p chunk.Params, exts []chunk.Entry) []byte {
	b := make([]byte, 0, len(extentsMagic)+64+len(exts)*chunk.EntrySize+32)
	b = append(b, extentsMagic...)
	b = chunk.AppendParams(b, p)
	b = binary.BigEndian.AppendUint64(b, uint64(len(exts)))
	for _, e := range exts {
		b = chunk.AppendEntry(b, e)
	}
	sum := blake3.Sum256(b)
	return append(b, sum[:]...)
}

func decodeExtents(b []byte) (chunk.Params, []chunk.Entry, error) {
	bad := func(why string) error { return fmt.Errorf("%w: extents file: %s", chunk.ErrCorrupt, why) }
	if len(b) < len(extentsMagic)+32 || string(b[:len(extentsMagic)]) != extentsMagic {
		return chunk.Params{}, nil, bad("bad magic")
	}
	body, sum := b[:len(b)-32], b[len(b)-32:]
	if s := blake3.Sum256(body); string(s[:]) != string(sum) {
		return chunk.Params{}, nil, bad("checksum mismatch")
	}
	p, rest, err := chunk.DecodeParams(body[len(extentsMagic):])
	if err != nil {
		return p, nil, err
	}
	if len(rest) < 8 {
		return p, nil, bad("truncated")
	}
	n := binary.BigEndian.Uint64(rest)
	rest = rest[8:]
	if n != uint64(len(rest))/chunk.EntrySize || uint64(len(rest))%chunk.EntrySize != 0 {
		return p, nil, bad("count does not match length")
	}
	exts := make([]chunk.Entry, n)
	var end uint64
	for i := range exts {
		if exts[i], err = chunk.DecodeEntry(rest[i*chunk.EntrySize:]); err != nil {
			return p, nil, err
		}
		if exts[i].Offset < end || exts[i].Length == 0 {
			return p, nil, bad("extents overlap or are out of order")
		}
		end = exts[i].End()
	}
	return p, exts, nil
}

// writeExtents stores exts durably and returns the file name.
func (v volumeDir) writeExtents(p chunk.Params, exts []chunk.Entry) (string, error) {
	b := encodeExtents(p, exts)
	sum := blake3.Sum256(b)
	name := fmt.Sprintf("extents-%x.bin", sum[:8])
	if _, err := os.Stat(v.path(name)); err == nil {
		return name, nil // content-addressed: already stored
	}
	if err := writeFileAtomic(v.path(name), b); err != nil {
		return "", err
	}
	return name, nil
}

func (v volumeDir) readExtents(name string) (chunk.Params, []chunk.Entry, error) {
	if strings.ContainsAny(name, `/\`) || name == "" {
		return chunk.Params{}, nil, fmt.Errorf("bad extents file name %q in state", name)
	}
	b, err := os.ReadFile(v.path(name))
	if err != nil {
		return chunk.Params{}, nil, fmt.Errorf("read extents: %w", err)
	}
	return decodeExtents(b)
}

// removeStaleExtents deletes extents files other than keep.
func (v volumeDir) removeStaleExtents(keep string) {
	names, _ := filepath.Glob(v.path("extents-*.bin"))
	for _, n := range names {
		if filepath.Base(n) != keep {
			os.Remove(n)
		}
	}
}

// Journal records. Each is: kind u8, entry (49 bytes), CRC-32C of both (u32).
// An intent is written and fsynced before the entry's range of the target is
// written; a done record after the target was fsynced with the entry in
// place. A torn last record (crash while appending) is ignored: its write
// had not started.
const (
	recIntent   = 1
	recDone     = 2
	journalRec  = 1 + chunk.EntrySize + 4
	journalName = "journal"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

type journal struct {
	f   *os.File
	buf []byte
}

// createJournal truncates (or creates) the journal and fsyncs it empty.
func (v volumeDir) createJournal() (*journal, error) {
	f, err := os.OpenFile(v.path(journalName), os.O_CREATE|os.O_TRUNC|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("create journal: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, fmt.Errorf("fsync journal: %w", err)
	}
	if err := syncDir(v.dir); err != nil {
		f.Close()
		return nil, err
	}
	return &journal{f: f}, nil
}

func (j *journal) add(kind byte, e chunk.Entry) {
	start := len(j.buf)
	j.buf = append(j.buf, kind)
	j.buf = chunk.AppendEntry(j.buf, e)
	j.buf = binary.BigEndian.AppendUint32(j.buf, crc32.Checksum(j.buf[start:], castagnoli))
}

// flush writes the buffered records and fsyncs them.
func (j *journal) flush() error {
	if len(j.buf) == 0 {
		return nil
	}
	if _, err := j.f.Write(j.buf); err != nil {
		return fmt.Errorf("append journal: %w", err)
	}
	if err := j.f.Sync(); err != nil {
		return fmt.Errorf("fsync journal: %w", err)
	}
	j.buf = j.buf[:0]
	return nil
}

func (j *journal) close() error { return j.f.Close() }

// readJournal returns the intents and done entries recorded, stopping at the
// first record that does not check out.
func (v volumeDir) readJournal() (intents, done []chunk.Entry, err error) {
	f, err := os.Open(v.path(journalName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("open journal: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, nil, fmt.Errorf("read journal: %w", err)
	}
	for len(b) >= journalRec {
		rec := b[:journalRec]
		b = b[journalRec:]
		if crc32.Checksum(rec[:journalRec-4], castagnoli) != binary.BigEndian.Uint32(rec[journalRec-4:]) {
			break
		}
		e, err := chunk.DecodeEntry(rec[1:])
		if err != nil {
			break
		}
		switch rec[0] {
		case recIntent:
			intents = append(intents, e)
		case recDone:
			done = append(done, e)
		default:
			return intents, done, nil
		}
	}
	return intents, done, nil
}
