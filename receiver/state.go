package receiver

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/internal/atomicfile"
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

// Fingerprint is what the receiver remembers of a target after
// committing, to notice changes made outside voldelta before it trusts its
// index again. For a regular file it is the size, modification and change
// times and the inode: ctime cannot be set back from user space, so a write
// whose mtime was restored is still seen. For a block device, which has no
// such times, it is the size and the kernel's write and discard counters of
// the device (/sys/dev/block/MAJ:MIN/stat) together with the boot ID they
// count since: any write through the device, a mount included, moves them.
// Where the counters cannot be read (no sysfs, or after a reboot), the
// fingerprint cannot vouch for the content and the next round reads back
// every range it keeps (see doc.go).
type Fingerprint struct {
	Size    int64  `json:"size"`
	MtimeNs int64  `json:"mtime_ns,omitempty"`
	CtimeNs int64  `json:"ctime_ns,omitempty"`
	Inode   uint64 `json:"inode,omitempty"`
	Device  uint64 `json:"device,omitempty"`
	Block   bool   `json:"block_device,omitempty"`
	// Writes are a block device's I/O counters, nil where unreadable.
	Writes *BlockWrites `json:"writes,omitempty"`
}

// BlockWrites are the counters of /sys/dev/block/MAJ:MIN/stat that change
// when the device's content may have changed, and the boot they count in.
type BlockWrites struct {
	BootID         string `json:"boot_id"`
	WriteIOs       uint64 `json:"write_ios"`
	WriteSectors   uint64 `json:"write_sectors"`
	DiscardIOs     uint64 `json:"discard_ios"`
	DiscardSectors uint64 `json:"discard_sectors"`
}

// verdict is what a fingerprint says of a target's content.
type verdict int

const (
	sameContent    verdict = iota // nothing changed it since the fingerprint was taken
	unknownContent                // it may have changed: the fingerprint cannot tell
	changedContent                // it was changed outside voldelta
)

// compare says whether a target fingerprinted now as cur still holds what
// it held when fp was taken, and if not, why.
func (fp Fingerprint) compare(cur Fingerprint) (verdict, string) {
	switch {
	case fp.Block != cur.Block:
		return changedContent, "the target changed between a file and a block device"
	case fp.Size != cur.Size:
		return changedContent, fmt.Sprintf("its size changed from %d to %d bytes", fp.Size, cur.Size)
	case !fp.Block && (fp.Inode != cur.Inode || fp.Device != cur.Device):
		return changedContent, "it is another file now (inode changed)"
	case !fp.Block && (fp.MtimeNs != cur.MtimeNs || fp.CtimeNs != cur.CtimeNs):
		return changedContent, "it was modified or its times were set (mtime or ctime changed)"
	case fp.Block && fp.Device != cur.Device:
		return changedContent, "it is another device now"
	case fp.Block && (fp.Writes == nil || cur.Writes == nil):
		return unknownContent, "the device's write counters are not readable (/sys/dev/block), so outside writes cannot be ruled out"
	case fp.Block && fp.Writes.BootID != cur.Writes.BootID:
		return unknownContent, "the host rebooted since the commit, so the device's write counters cannot vouch for it"
	case fp.Block && *fp.Writes != *cur.Writes:
		return changedContent, fmt.Sprintf("the device was written outside voldelta (%d write and %d discard requests since the commit)",
			cur.Writes.WriteIOs-fp.Writes.WriteIOs, cur.Writes.DiscardIOs-fp.Writes.DiscardIOs)
	}
	return sameContent, ""
}

// State is a volume's state.json in the state directory. It is replaced
// atomically and carries a checksum over its own content, so a damaged
// file is refused (ErrStateCorrupt) instead of read as something else.
type State struct {
	Volume     string `json:"volume"`
	Target     string `json:"target"`
	Phase      Phase  `json:"phase"`
	Generation uint64 `json:"generation"`     // last committed generation (0: none)
	Root       string `json:"root,omitempty"` // root hash of the last committed generation
	Size       uint64 `json:"size"`           // volume size of the last committed generation
	// Image is the image identity the last committed generation's HELLO
	// named (transport.Hello.Image), "" if none; WELCOME names it.
	Image string `json:"image,omitempty"`
	// Group is the group of the round that committed the last generation
	// (Header.Group), nil if it had none.
	Group       *Group       `json:"group,omitempty"`
	CommittedAt time.Time    `json:"committed_at,omitzero"` // when it was committed
	Params      chunk.Params `json:"params"`                // chunk parameters of the extents file
	Extents     string       `json:"extents"`               // file name of the known extents, in the volume's directory
	Fingerprint Fingerprint  `json:"fingerprint,omitzero"`  // of the target at commit
	// Rescan, if set, says why the index may not be used: the next round
	// re-indexes the target by reading it (set when a verification failed).
	Rescan   string      `json:"rescan,omitempty"`
	Applying *Applying   `json:"applying,omitempty"` // set while PhaseApplying
	History  []Committed `json:"history,omitempty"`  // recent commits, newest last
	Updated  time.Time   `json:"updated"`
	// Checksum is BLAKE3-256 (hex) of the file's JSON with this field empty.
	Checksum string `json:"checksum"`
}

// Applying describes an apply in progress (or interrupted).
type Applying struct {
	Root      string    `json:"root"`
	Size      uint64    `json:"size"`
	StartedAt time.Time `json:"started_at"`
	Peer      string    `json:"peer,omitempty"`
	Image     string    `json:"image,omitempty"` // the image identity the round's HELLO named
	// Journal is the nonce in the header of this apply's journal: a
	// journal with another nonce belongs to another apply and is not used.
	Journal uint64 `json:"journal"`
}

// Committed is one entry of a volume's commit history.
type Committed struct {
	Generation uint64    `json:"generation"`
	Root       string    `json:"root"`
	Size       uint64    `json:"size"`
	Image      string    `json:"image,omitempty"`
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

// loadState reads and checks state.json. A missing file is ErrNoState
// unless the directory holds an index or journal, which only a lost state
// file leaves behind; a file that does not parse or whose checksum does
// not match is ErrStateCorrupt. Neither is ever read as "never synced".
func (v volumeDir) loadState() (*State, error) {
	path := v.path("state.json")
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		if left := v.leftovers(); len(left) > 0 {
			return nil, failf(ErrStateCorrupt, "%s is missing but the directory holds %s: the volume was synced before and its state was lost. "+
				"To start over at generation 1 (the target is re-indexed by reading it), move the directory %s aside", path, strings.Join(left, ", "), v.dir)
		}
		return nil, ErrNoState
	}
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	st, err := decodeState(b)
	if err != nil {
		return nil, failf(ErrStateCorrupt, "%s: %v. voldelta will not guess the generation from a damaged file: restore it from a backup, "+
			"or move the directory %s aside to start over at generation 1 (the target is re-indexed by reading it)", path, err, v.dir)
	}
	return st, nil
}

// leftovers lists the files a synced volume keeps besides state.json.
func (v volumeDir) leftovers() []string {
	var out []string
	for _, pat := range []string{"extents-*.bin", journalName} {
		m, _ := filepath.Glob(v.path(pat))
		for _, f := range m {
			out = append(out, filepath.Base(f))
		}
	}
	return out
}

func decodeState(b []byte) (*State, error) {
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("does not parse: %w", err)
	}
	want := st.Checksum
	if want == "" {
		return nil, errors.New("has no checksum")
	}
	got, err := stateChecksum(&st)
	if err != nil {
		return nil, err
	}
	if got != want {
		return nil, errors.New("checksum mismatch (the file was changed or damaged)")
	}
	switch st.Phase {
	case PhaseCommitted, PhaseApplying:
	default:
		return nil, fmt.Errorf("unknown phase %q", st.Phase)
	}
	if st.Phase == PhaseApplying && st.Applying == nil {
		return nil, errors.New("phase applying without an apply")
	}
	return &st, nil
}

// stateChecksum is the checksum st must carry: BLAKE3-256 of its JSON
// with Checksum empty. It leaves st.Checksum as it was.
func stateChecksum(st *State) (string, error) {
	c := *st
	c.Checksum = ""
	b, err := json.Marshal(&c)
	if err != nil {
		return "", err
	}
	sum := blake3.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

func (v volumeDir) saveState(st *State) error {
	st.Updated = time.Now().UTC()
	sum, err := stateChecksum(st)
	if err != nil {
		return err
	}
	st.Checksum = sum
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return classifySpace(atomicfile.Write(v.path("state.json"), append(b, '\n'), 0o644), "the state directory "+v.dir)
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
	if err := atomicfile.Write(v.path(name), b, 0o644); err != nil {
		return "", classifySpace(err, "the state directory "+v.dir)
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

// The journal starts with a 16-byte header, magic "VDJRNL02" and the
// apply's nonce (u64), then records. Each record is: kind u8, entry (49
// bytes), CRC-32C of both (u32). An intent is written and fsynced before
// the entry's range of the target is written; a done record after the
// target was fsynced with the entry in place. Only the tail may be torn (a
// crash while appending): a partial last record, or a last record that does
// not check out, is ignored, as its write had not started. A record that
// does not check out followed by more records means the journal was
// damaged: it is not used (errJournalDamaged), and the target is
// re-indexed by reading it.
const (
	recIntent     = 1
	recDone       = 2
	journalRec    = 1 + chunk.EntrySize + 4
	journalName   = "journal"
	journalMagic  = "VDJRNL02"
	journalHeader = len(journalMagic) + 8
)

// Why a journal cannot be used; prepare then re-indexes the target.
var (
	errJournalLost    = errors.New("journal missing")
	errJournalDamaged = errors.New("journal damaged")
	errJournalOther   = errors.New("journal belongs to another apply")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

type journal struct {
	f     *os.File
	nonce uint64
	buf   []byte
}

// createJournalWith replaces the journal with an empty one under nonce,
// durably (temporary file, fsync, rename, directory fsync).
func (v volumeDir) createJournalWith(nonce uint64) (*journal, error) {
	hdr := binary.BigEndian.AppendUint64([]byte(journalMagic), nonce)
	if err := atomicfile.Write(v.path(journalName), hdr, 0o644); err != nil {
		return nil, classifySpace(fmt.Errorf("create journal: %w", err), "the state directory "+v.dir)
	}
	f, err := os.OpenFile(v.path(journalName), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return nil, fmt.Errorf("open journal: %w", err)
	}
	return &journal{f: f, nonce: nonce}, nil
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
		return classifySpace(fmt.Errorf("append journal: %w", err), "the state directory")
	}
	if err := j.f.Sync(); err != nil {
		return classifySpace(fmt.Errorf("fsync journal: %w", err), "the state directory")
	}
	j.buf = j.buf[:0]
	return nil
}

func (j *journal) close() error { return j.f.Close() }

// readJournalFor returns the records of the journal of the apply with
// this nonce; errJournalLost, errJournalOther or errJournalDamaged if it
// cannot be used.
func (v volumeDir) readJournalFor(nonce uint64) (intents, done []chunk.Entry, err error) {
	got, intents, done, err := v.readJournalNonce()
	if err == nil && got != nonce {
		return nil, nil, fmt.Errorf("%w (nonce %x, the state names %x)", errJournalOther, got, nonce)
	}
	return intents, done, err
}

func (v volumeDir) readJournalNonce() (nonce uint64, intents, done []chunk.Entry, err error) {
	b, err := os.ReadFile(v.path(journalName))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil, nil, errJournalLost
	}
	if err != nil {
		return 0, nil, nil, fmt.Errorf("read journal: %w", err)
	}
	if len(b) < journalHeader || string(b[:len(journalMagic)]) != journalMagic {
		return 0, nil, nil, fmt.Errorf("%w: bad header", errJournalDamaged)
	}
	nonce = binary.BigEndian.Uint64(b[len(journalMagic):])
	intents, done, err = decodeJournalRecords(b[journalHeader:])
	return nonce, intents, done, err
}

// decodeJournalRecords decodes records, ignoring a torn tail only.
func decodeJournalRecords(b []byte) (intents, done []chunk.Entry, err error) {
	for n := 0; len(b) >= journalRec; n++ {
		rec := b[:journalRec]
		b = b[journalRec:]
		e, ok := decodeJournalRecord(rec)
		if !ok {
			if len(b) >= journalRec {
				return nil, nil, fmt.Errorf("%w: record %d does not check out and %d bytes follow it", errJournalDamaged, n, len(b))
			}
			return intents, done, nil // the torn last record
		}
		if rec[0] == recIntent {
			intents = append(intents, e)
		} else {
			done = append(done, e)
		}
	}
	return intents, done, nil
}

func decodeJournalRecord(rec []byte) (chunk.Entry, bool) {
	if crc32.Checksum(rec[:journalRec-4], castagnoli) != binary.BigEndian.Uint32(rec[journalRec-4:]) {
		return chunk.Entry{}, false
	}
	if rec[0] != recIntent && rec[0] != recDone {
		return chunk.Entry{}, false
	}
	e, err := chunk.DecodeEntry(rec[1:])
	return e, err == nil && e.Length > 0
}
