package chunk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash"

	"github.com/zeebo/blake3"
)

// Entry is one extent of a volume in a manifest: either a data chunk named by
// its ID, or a run of zero bytes (Zero set, ID zero) that may be longer than
// MaxSize because adjacent all-zero chunks are coalesced.
type Entry struct {
	Offset uint64
	Length uint64
	ID     ID
	Zero   bool
}

// End returns the offset just past the entry.
func (e Entry) End() uint64 { return e.Offset + e.Length }

func (e Entry) String() string {
	if e.Zero {
		return fmt.Sprintf("zero@%d+%d", e.Offset, e.Length)
	}
	return fmt.Sprintf("%s@%d+%d", e.ID.Short(), e.Offset, e.Length)
}

// EntrySize is the encoded size of an Entry.
const EntrySize = 8 + 8 + 1 + 32

const flagZero = 1

// AppendEntry appends the 49-byte encoding of e: offset u64, length u64,
// flags u8 (bit 0: zero run), id [32]byte; integers big-endian.
func AppendEntry(dst []byte, e Entry) []byte {
	dst = binary.BigEndian.AppendUint64(dst, e.Offset)
	dst = binary.BigEndian.AppendUint64(dst, e.Length)
	var flags byte
	if e.Zero {
		flags |= flagZero
	}
	dst = append(dst, flags)
	return append(dst, e.ID[:]...)
}

// ErrCorrupt is wrapped by decoding and validation errors.
var ErrCorrupt = errors.New("corrupt manifest")

// DecodeEntry decodes one entry from the first EntrySize bytes of b.
func DecodeEntry(b []byte) (Entry, error) {
	if len(b) < EntrySize {
		return Entry{}, fmt.Errorf("%w: entry needs %d bytes, have %d", ErrCorrupt, EntrySize, len(b))
	}
	e := Entry{
		Offset: binary.BigEndian.Uint64(b[0:8]),
		Length: binary.BigEndian.Uint64(b[8:16]),
	}
	flags := b[16]
	if flags&^flagZero != 0 {
		return Entry{}, fmt.Errorf("%w: unknown entry flags %#x", ErrCorrupt, flags)
	}
	e.Zero = flags&flagZero != 0
	copy(e.ID[:], b[17:49])
	if e.Zero && !e.ID.IsZero() {
		return Entry{}, fmt.Errorf("%w: zero run with an id", ErrCorrupt)
	}
	return e, nil
}

// AppendParams appends the encoding of p: algorithm (u8 length + bytes),
// polynomial u64, min u32, avg u32, max u32, segment u64.
func AppendParams(dst []byte, p Params) []byte {
	dst = append(dst, byte(len(p.Algorithm)))
	dst = append(dst, p.Algorithm...)
	dst = binary.BigEndian.AppendUint64(dst, p.Polynomial)
	dst = binary.BigEndian.AppendUint32(dst, p.MinSize)
	dst = binary.BigEndian.AppendUint32(dst, p.AvgSize)
	dst = binary.BigEndian.AppendUint32(dst, p.MaxSize)
	return binary.BigEndian.AppendUint64(dst, p.SegmentSize)
}

// DecodeParams decodes Params from b and returns the rest of b. It does not
// validate them.
func DecodeParams(b []byte) (Params, []byte, error) {
	if len(b) < 1 {
		return Params{}, nil, fmt.Errorf("%w: params truncated", ErrCorrupt)
	}
	n := int(b[0])
	if len(b) < 1+n+28 {
		return Params{}, nil, fmt.Errorf("%w: params truncated", ErrCorrupt)
	}
	p := Params{Algorithm: string(b[1 : 1+n])}
	b = b[1+n:]
	p.Polynomial = binary.BigEndian.Uint64(b[0:8])
	p.MinSize = binary.BigEndian.Uint32(b[8:12])
	p.AvgSize = binary.BigEndian.Uint32(b[12:16])
	p.MaxSize = binary.BigEndian.Uint32(b[16:20])
	p.SegmentSize = binary.BigEndian.Uint64(b[20:28])
	return p, b[28:], nil
}

// Builder checks a stream of entries for a well-formed manifest and computes
// its root hash. Both ends use it: the agent over what it scanned, the
// receiver over what it was sent, so a manifest damaged or cut short in
// transit never matches.
//
// A well-formed manifest covers [0, Size) with contiguous entries; a data
// entry is 1..MaxSize bytes long and does not cross a segment boundary; a
// zero run is not followed by another zero run.
type Builder struct {
	params   Params
	size     uint64
	next     uint64
	count    uint64
	lastZero bool
	h        hash.Hash
	buf      []byte
}

// rootDomain separates the root hash from any other BLAKE3 use.
const rootDomain = "voldelta manifest root v1\x00"

// NewBuilder starts a manifest of a volume of size bytes cut with p.
func NewBuilder(p Params, size uint64) *Builder {
	b := &Builder{params: p, size: size, h: blake3.New()}
	b.buf = append(b.buf[:0], rootDomain...)
	b.buf = AppendParams(b.buf, p)
	b.buf = binary.BigEndian.AppendUint64(b.buf, size)
	b.h.Write(b.buf)
	return b
}

// Add appends the next entry.
func (b *Builder) Add(e Entry) error {
	if e.Offset != b.next {
		return fmt.Errorf("%w: entry %d starts at %d, want %d", ErrCorrupt, b.count, e.Offset, b.next)
	}
	if e.Length == 0 || e.End() > b.size || e.End() < e.Offset {
		return fmt.Errorf("%w: entry %d (%v) is empty or runs past the volume size %d", ErrCorrupt, b.count, e, b.size)
	}
	if e.Zero {
		if b.lastZero {
			return fmt.Errorf("%w: entry %d: adjacent zero runs are not coalesced", ErrCorrupt, b.count)
		}
	} else {
		if e.Length > uint64(b.params.MaxSize) {
			return fmt.Errorf("%w: entry %d is %d bytes, above the max chunk size %d", ErrCorrupt, b.count, e.Length, b.params.MaxSize)
		}
		if seg := b.params.SegmentSize; e.Offset/seg != (e.End()-1)/seg {
			return fmt.Errorf("%w: entry %d (%v) crosses a segment boundary", ErrCorrupt, b.count, e)
		}
	}
	b.lastZero = e.Zero
	b.next = e.End()
	b.count++
	b.buf = AppendEntry(b.buf[:0], e)
	b.h.Write(b.buf)
	return nil
}

// Count returns the number of entries added.
func (b *Builder) Count() uint64 { return b.count }

// Finish checks that the entries cover the whole volume and returns the root.
func (b *Builder) Finish() (ID, error) {
	if b.next != b.size {
		return ID{}, fmt.Errorf("%w: entries cover %d of %d bytes", ErrCorrupt, b.next, b.size)
	}
	var root ID
	b.h.Sum(root[:0])
	return root, nil
}

// Manifest lists a volume's chunks in offset order.
type Manifest struct {
	Params  Params
	Size    uint64
	Entries []Entry
	Root    ID
}

// Build computes m.Root over m.Entries, checking that they are well formed.
func (m *Manifest) Build() error {
	b := NewBuilder(m.Params, m.Size)
	for _, e := range m.Entries {
		if err := b.Add(e); err != nil {
			return err
		}
	}
	root, err := b.Finish()
	if err != nil {
		return err
	}
	m.Root = root
	return nil
}

// DataBytes returns the bytes in data (non-zero) entries.
func (m *Manifest) DataBytes() uint64 {
	var n uint64
	for _, e := range m.Entries {
		if !e.Zero {
			n += e.Length
		}
	}
	return n
}

// manifestMagic starts the binary encoding of a Manifest.
const manifestMagic = "VDMANIF1"

// MarshalBinary encodes m: magic "VDMANIF1", params, size u64, count u64,
// count entries, root [32]byte.
func (m *Manifest) MarshalBinary() ([]byte, error) {
	b := make([]byte, 0, len(manifestMagic)+64+16+len(m.Entries)*EntrySize+32)
	b = append(b, manifestMagic...)
	b = AppendParams(b, m.Params)
	b = binary.BigEndian.AppendUint64(b, m.Size)
	b = binary.BigEndian.AppendUint64(b, uint64(len(m.Entries)))
	for _, e := range m.Entries {
		b = AppendEntry(b, e)
	}
	return append(b, m.Root[:]...), nil
}

// UnmarshalBinary decodes what MarshalBinary wrote, validates the params and
// the entries, and checks the stored root against the recomputed one.
func (m *Manifest) UnmarshalBinary(b []byte) error {
	if len(b) < len(manifestMagic) || string(b[:len(manifestMagic)]) != manifestMagic {
		return fmt.Errorf("%w: bad magic", ErrCorrupt)
	}
	p, rest, err := DecodeParams(b[len(manifestMagic):])
	if err != nil {
		return err
	}
	if err := p.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	if len(rest) < 16 {
		return fmt.Errorf("%w: header truncated", ErrCorrupt)
	}
	size := binary.BigEndian.Uint64(rest[0:8])
	count := binary.BigEndian.Uint64(rest[8:16])
	rest = rest[16:]
	// Check the count against the bytes present before allocating.
	if count > uint64(len(rest))/EntrySize || uint64(len(rest)) != count*EntrySize+32 {
		return fmt.Errorf("%w: %d entries do not fit %d bytes", ErrCorrupt, count, len(rest))
	}
	out := Manifest{Params: p, Size: size, Entries: make([]Entry, count)}
	for i := range out.Entries {
		if out.Entries[i], err = DecodeEntry(rest[i*EntrySize:]); err != nil {
			return err
		}
	}
	var stored ID
	copy(stored[:], rest[count*EntrySize:])
	if err := out.Build(); err != nil {
		return err
	}
	if out.Root != stored {
		return fmt.Errorf("%w: root %s does not match the entries (%s)", ErrCorrupt, stored.Short(), out.Root.Short())
	}
	*m = out
	return nil
}
