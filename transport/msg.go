package transport

import (
	"encoding/binary"
	"fmt"
	"unicode/utf8"

	"github.com/voldelta/voldelta/chunk"
)

// ProtocolVersion is the version spoken by this build. Peers must speak the
// same version; a mismatch ends the session with ErrCodeVersion.
//
// Version 2 added the image identity to HELLO, the committed generation's
// size, image and base flag to WELCOME, BASE_GET (the agent fetches the
// committed manifest) and MANIFEST_COPY (the manifest sent as a delta
// against the committed one).
const ProtocolVersion = 2

// Magic starts every HELLO, so that a stray client is told apart from an
// agent of another version.
const Magic = "VDLT"

// Message is a typed frame payload.
type Message interface {
	FrameType() FrameType
	// AppendPayload appends the payload encoding to dst.
	AppendPayload(dst []byte) []byte
}

// Hello opens a sync session (agent → receiver, control stream).
type Hello struct {
	Version uint16
	Volume  string
	Size    uint64
	Params  chunk.Params
	Streams uint16
	Agent   string // software and host, for logs
	// Image identifies the image this round reads (e.g. a snapshot's
	// name, or a file's device, inode and change time); the receiver
	// records it with the generation and names it in the next WELCOME, so
	// that an agent can tell whether a change-tracking source's base image
	// is the one the committed generation was made from. "" if unknown.
	Image string
	// Group, if set, marks this round as a member of a group of volumes
	// committed together (a Migration's cutover); nil for a plain round.
	// It is an optional trailer: a HELLO without it is byte for byte the
	// HELLO of builds that do not know groups.
	Group *Group
}

// Group is the group a round belongs to (HELLO's optional trailer).
type Group struct {
	// Name identifies the group: 1 to 128 characters as a volume name
	// (ValidateVolumeName).
	Name string
	// Members is the number of volumes in the group, 1..MaxGroupMembers.
	Members uint16
	// Promote: this round is the group's final one; the receiver promotes
	// every member once all of them committed a Promote round of the group.
	Promote bool
	// Share says the agent may run further rounds on this round's session
	// (transport/spec.md, "Rounds sharing a session"): it reads WELCOME's
	// rounds trailer and names its control stream in DATA_OPEN when the
	// receiver sent one. A receiver answers a HELLO without it with a
	// WELCOME without the trailer, as before.
	Share bool
}

// MaxGroupMembers bounds Group.Members.
const MaxGroupMembers = 64

// Validate checks g's name and member count.
func (g Group) Validate() error {
	if err := ValidateVolumeName(g.Name); err != nil {
		return fmt.Errorf("group name: %w", err)
	}
	if g.Members < 1 || g.Members > MaxGroupMembers {
		return fmt.Errorf("group %q of %d members: want 1..%d", g.Name, g.Members, MaxGroupMembers)
	}
	return nil
}

const (
	groupPromote = 1
	groupShare   = 2
)

// TargetState says what the receiver knows of its target at WELCOME.
type TargetState uint8

// Target states.
const (
	TargetNew        TargetState = 0 // never committed
	TargetCommitted  TargetState = 1 // holds the generation in Welcome
	TargetIncomplete TargetState = 2 // an apply was interrupted; it will resume
)

func (s TargetState) String() string {
	switch s {
	case TargetNew:
		return "new"
	case TargetCommitted:
		return "committed"
	case TargetIncomplete:
		return "incomplete"
	}
	return fmt.Sprintf("TargetState(%d)", uint8(s))
}

// Welcome accepts a session (receiver → agent).
type Welcome struct {
	Generation uint64 // last committed generation, 0 if none
	Root       chunk.ID
	State      TargetState
	Receiver   string
	// Size is the committed generation's volume size, Image the image
	// identity its HELLO named.
	Size  uint64
	Image string
	// HasBase says the receiver holds the committed generation's manifest
	// with the HELLO's params: it answers BASE_GET and accepts
	// MANIFEST_COPY.
	HasBase bool
	// AcceptsPatch says the receiver takes CHUNK_PATCH: its target holds
	// the committed generation, so a chunk may be sent as the ranges that
	// differ from the bytes the target holds at the chunk's offset.
	AcceptsPatch bool
	// Rounds, if not 0, is WELCOME's optional rounds trailer: how many
	// rounds (this one included) the receiver runs at once on this
	// session, 1..MaxSessionRounds. Sent only in answer to a HELLO whose
	// group has Share; 0 (no trailer) means one, the WELCOME of builds
	// that do not share sessions. With it the agent's DATA_OPEN frames
	// name their control stream.
	Rounds uint16
}

// MaxSessionRounds bounds Welcome.Rounds: no session runs more rounds at
// once than a group has members.
const MaxSessionRounds = MaxGroupMembers

// PatchRange is a byte range within a chunk, relative to its start.
type PatchRange struct {
	Offset, Length uint32
}

// ChunkPatch carries the bytes of a chunk that differ from what the
// receiver's target holds at the chunk's offset (agent → receiver, data
// streams; only after WELCOME had AcceptsPatch): Ranges, sorted and
// disjoint, within the chunk, and their bytes, concatenated (RawLen in
// all), encoded with Codec. No ranges: the target holds the chunk's bytes
// already (cut at other boundaries before). The receiver reads the rest from its target,
// and the result must hash to the chunk's ID. Data aliases the frame
// buffer when decoded.
type ChunkPatch struct {
	Index  uint64
	Codec  Codec
	RawLen uint32
	Ranges []PatchRange
	Data   []byte
}

// Chunk returns the patch's data as a Chunk, for the decompressor.
func (m ChunkPatch) Chunk() Chunk {
	return Chunk{Index: m.Index, Codec: m.Codec, RawLen: m.RawLen, Data: m.Data}
}

// BaseGet asks the receiver for the manifest of its committed generation
// (agent → receiver, control stream, after WELCOME and before any manifest
// frame). The receiver answers on the control stream with MANIFEST frames
// and a MANIFEST_END whose root is Root, or an ERROR.
type BaseGet struct {
	Root chunk.ID
}

// ManifestCopy says that the next Count entries of the manifest are the
// committed manifest's entries First..First+Count-1, unchanged. Only sent
// when WELCOME had HasBase.
type ManifestCopy struct {
	First uint64
	Count uint64
}

// ErrorMsg ends a session with a reason (either direction).
type ErrorMsg struct {
	Code    ErrorCode
	Message string
}

// ManifestBatch carries the next entries of the manifest, in order.
type ManifestBatch struct {
	Entries []chunk.Entry
}

// ManifestNext carries the next manifest entries without their offsets:
// each starts where the one before ends, the first where the manifest so
// far ends (agent → receiver). A decoded ManifestNext's offsets count from
// 0 at its first entry; the receiver adds where the manifest so far ends.
type ManifestNext struct {
	Entries []chunk.Entry
}

// Sizes of a ManifestNext entry: flags u8, then a zero run's length u64,
// or a data chunk's length u32 and ID.
const (
	nextZeroSize = 1 + 8
	nextDataSize = 1 + 4 + 32
)

// ManifestNextSize is the encoded size of a MANIFEST_NEXT payload holding
// entries.
func ManifestNextSize(entries []chunk.Entry) uint64 {
	n := uint64(4)
	for _, e := range entries {
		if e.Zero {
			n += nextZeroSize
		} else {
			n += nextDataSize
		}
	}
	return n
}

// ManifestEnd closes the manifest.
type ManifestEnd struct {
	Count uint64
	Root  chunk.ID
}

// IndexRange is a run of consecutive manifest entry indexes.
type IndexRange struct {
	First uint64
	Count uint32
}

// Need asks the agent for the chunks at these manifest indexes.
type Need struct {
	Ranges []IndexRange
}

// NeedEnd says no more NEED follows; Total counts every index asked for.
type NeedEnd struct {
	Total uint64
}

// DataOpen is the first frame on every data stream.
type DataOpen struct {
	Stream uint16
	// Control, if not 0, is DATA_OPEN's optional trailer: the yamux stream
	// ID (Stream.ID) of the control stream of the round this data stream
	// belongs to. 0 (no trailer, the DATA_OPEN of builds that do not share
	// sessions) means the session's only round. Sent only after a WELCOME
	// with the rounds trailer.
	Control uint32
}

// Codec says how a chunk's bytes are encoded on the wire.
type Codec uint8

// Codecs.
const (
	CodecRaw  Codec = 0
	CodecZstd Codec = 1
)

// Chunk carries one chunk's bytes (agent → receiver, data streams). Data
// aliases the frame buffer when decoded: it is valid until the next frame.
type Chunk struct {
	Index  uint64
	Codec  Codec
	RawLen uint32
	Data   []byte
}

// Result reports a committed generation (receiver → agent).
type Result struct {
	Generation uint64
	Root       chunk.ID
	Skipped    uint64 // entries already in place
	Copied     uint64 // chunks copied from elsewhere in the target
	Fetched    uint64 // chunks received from the agent
	Zeroed     uint64 // zero runs written
	CopyBytes  uint64
	FetchBytes uint64
}

func (Hello) FrameType() FrameType         { return FrameHello }
func (Welcome) FrameType() FrameType       { return FrameWelcome }
func (ErrorMsg) FrameType() FrameType      { return FrameError }
func (ManifestBatch) FrameType() FrameType { return FrameManifest }
func (ManifestEnd) FrameType() FrameType   { return FrameManifestEnd }
func (Need) FrameType() FrameType          { return FrameNeed }
func (NeedEnd) FrameType() FrameType       { return FrameNeedEnd }
func (DataOpen) FrameType() FrameType      { return FrameDataOpen }
func (Chunk) FrameType() FrameType         { return FrameChunk }
func (Result) FrameType() FrameType        { return FrameResult }
func (BaseGet) FrameType() FrameType       { return FrameBaseGet }
func (ManifestCopy) FrameType() FrameType  { return FrameManifestCopy }
func (ChunkPatch) FrameType() FrameType    { return FrameChunkPatch }
func (ManifestNext) FrameType() FrameType  { return FrameManifestNext }

// maxErrorMessage bounds the message of an ERROR frame, in bytes.
const maxErrorMessage = 4096

// truncate shortens s to at most n bytes without splitting a UTF-8 sequence.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// appendStr8 appends s with a one-byte length, truncated to 255 bytes: a
// longer string would otherwise corrupt the rest of the payload.
func appendStr8(b []byte, s string) []byte {
	s = truncate(s, 255)
	return append(append(b, byte(len(s))), s...)
}

func (m Hello) AppendPayload(b []byte) []byte {
	b = append(b, Magic...)
	b = binary.BigEndian.AppendUint16(b, m.Version)
	b = appendStr8(b, m.Volume)
	b = binary.BigEndian.AppendUint64(b, m.Size)
	b = chunk.AppendParams(b, m.Params)
	b = binary.BigEndian.AppendUint16(b, m.Streams)
	b = appendStr8(b, m.Agent)
	b = appendStr8(b, m.Image)
	if m.Group == nil {
		return b
	}
	b = appendStr8(b, m.Group.Name)
	b = binary.BigEndian.AppendUint16(b, m.Group.Members)
	var flags byte
	if m.Group.Promote {
		flags |= groupPromote
	}
	if m.Group.Share {
		flags |= groupShare
	}
	return append(b, flags)
}

func (m Welcome) AppendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, m.Generation)
	b = append(b, m.Root[:]...)
	b = append(b, byte(m.State))
	b = appendStr8(b, m.Receiver)
	b = binary.BigEndian.AppendUint64(b, m.Size)
	b = appendStr8(b, m.Image)
	var flags byte
	if m.HasBase {
		flags |= welcomeHasBase
	}
	if m.AcceptsPatch {
		flags |= welcomeAcceptsPatch
	}
	b = append(b, flags)
	if m.Rounds == 0 {
		return b
	}
	return binary.BigEndian.AppendUint16(b, m.Rounds)
}

const (
	welcomeHasBase      = 1
	welcomeAcceptsPatch = 2
)

func (m ManifestNext) AppendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(m.Entries)))
	for _, e := range m.Entries {
		if e.Zero {
			b = append(b, 1)
			b = binary.BigEndian.AppendUint64(b, e.Length)
			continue
		}
		b = append(b, 0)
		b = binary.BigEndian.AppendUint32(b, uint32(e.Length))
		b = append(b, e.ID[:]...)
	}
	return b
}

func (m ChunkPatch) AppendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, m.Index)
	b = append(b, byte(m.Codec))
	b = binary.BigEndian.AppendUint32(b, m.RawLen)
	b = binary.BigEndian.AppendUint32(b, uint32(len(m.Ranges)))
	for _, r := range m.Ranges {
		b = binary.BigEndian.AppendUint32(b, r.Offset)
		b = binary.BigEndian.AppendUint32(b, r.Length)
	}
	return append(b, m.Data...)
}

func (m BaseGet) AppendPayload(b []byte) []byte { return append(b, m.Root[:]...) }

func (m ManifestCopy) AppendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, m.First)
	return binary.BigEndian.AppendUint64(b, m.Count)
}

func (m ErrorMsg) AppendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(m.Code))
	msg := truncate(m.Message, maxErrorMessage)
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	return append(b, msg...)
}

func (m ManifestBatch) AppendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(m.Entries)))
	for _, e := range m.Entries {
		b = chunk.AppendEntry(b, e)
	}
	return b
}

func (m ManifestEnd) AppendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, m.Count)
	return append(b, m.Root[:]...)
}

func (m Need) AppendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(m.Ranges)))
	for _, r := range m.Ranges {
		b = binary.BigEndian.AppendUint64(b, r.First)
		b = binary.BigEndian.AppendUint32(b, r.Count)
	}
	return b
}

func (m NeedEnd) AppendPayload(b []byte) []byte {
	return binary.BigEndian.AppendUint64(b, m.Total)
}

func (m DataOpen) AppendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, m.Stream)
	if m.Control == 0 {
		return b
	}
	return binary.BigEndian.AppendUint32(b, m.Control)
}

// ChunkHeaderSize is the size of a CHUNK payload before the data.
const ChunkHeaderSize = 8 + 1 + 4

func (m Chunk) AppendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, m.Index)
	b = append(b, byte(m.Codec))
	b = binary.BigEndian.AppendUint32(b, m.RawLen)
	return append(b, m.Data...)
}

func (m Result) AppendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, m.Generation)
	b = append(b, m.Root[:]...)
	for _, v := range []uint64{m.Skipped, m.Copied, m.Fetched, m.Zeroed, m.CopyBytes, m.FetchBytes} {
		b = binary.BigEndian.AppendUint64(b, v)
	}
	return b
}

// decoder reads fields from a payload, remembering the first shortfall.
type decoder struct {
	b   []byte
	t   FrameType
	err error
}

func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || len(d.b) < n {
		d.err = fmt.Errorf("%w: %v payload truncated", ErrProtocol, d.t)
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) u8() uint8 {
	if v := d.take(1); v != nil {
		return v[0]
	}
	return 0
}

func (d *decoder) u16() uint16 {
	if v := d.take(2); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if v := d.take(4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if v := d.take(8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func (d *decoder) id() (id chunk.ID) {
	copy(id[:], d.take(len(id)))
	return id
}

func (d *decoder) str8() string { return string(d.take(int(d.u8()))) }

// done fails if bytes are left over.
func (d *decoder) done() error {
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%w: %d stray bytes after %v payload", ErrProtocol, len(d.b), d.t)
	}
	return d.err
}

// Decode parses the payload of a frame of type t. Counts in the payload are
// checked against the bytes present before anything is allocated. A decoded
// Chunk's Data aliases payload.
func Decode(t FrameType, payload []byte) (Message, error) {
	d := &decoder{b: payload, t: t}
	switch t {
	case FrameHello:
		if m := d.take(len(Magic)); d.err == nil && string(m) != Magic {
			return nil, fmt.Errorf("%w: HELLO without the %q magic: the peer is not a voldelta agent", ErrProtocol, Magic)
		}
		var m Hello
		m.Version = d.u16()
		if d.err == nil && m.Version != ProtocolVersion {
			// Report the version even if the rest is in a format we do not know.
			return m, nil
		}
		m.Volume = d.str8()
		m.Size = d.u64()
		if d.err == nil {
			p, rest, err := chunk.DecodeParams(d.b)
			if err != nil {
				return nil, fmt.Errorf("%w: HELLO: %w", ErrProtocol, err)
			}
			m.Params, d.b = p, rest
		}
		m.Streams = d.u16()
		m.Agent = d.str8()
		m.Image = d.str8()
		if d.err == nil && len(d.b) > 0 {
			// The optional group trailer.
			var g Group
			g.Name = d.str8()
			g.Members = d.u16()
			flags := d.u8()
			if d.err == nil {
				if flags&^(groupPromote|groupShare) != 0 {
					return nil, fmt.Errorf("%w: HELLO group with unknown flags %#x", ErrProtocol, flags)
				}
				if err := g.Validate(); err != nil {
					return nil, fmt.Errorf("%w: HELLO: %w", ErrProtocol, err)
				}
			}
			g.Promote = flags&groupPromote != 0
			g.Share = flags&groupShare != 0
			m.Group = &g
		}
		return m, d.done()
	case FrameWelcome:
		var m Welcome
		m.Generation = d.u64()
		m.Root = d.id()
		m.State = TargetState(d.u8())
		m.Receiver = d.str8()
		m.Size = d.u64()
		m.Image = d.str8()
		flags := d.u8()
		if d.err == nil && m.State > TargetIncomplete {
			return nil, fmt.Errorf("%w: WELCOME with unknown target state %d", ErrProtocol, m.State)
		}
		if d.err == nil && flags&^(welcomeHasBase|welcomeAcceptsPatch) != 0 {
			return nil, fmt.Errorf("%w: WELCOME with unknown flags %#x", ErrProtocol, flags)
		}
		m.HasBase = flags&welcomeHasBase != 0
		m.AcceptsPatch = flags&welcomeAcceptsPatch != 0
		if d.err == nil && len(d.b) > 0 {
			// The optional rounds trailer.
			m.Rounds = d.u16()
			if d.err == nil && (m.Rounds < 1 || m.Rounds > MaxSessionRounds) {
				return nil, fmt.Errorf("%w: WELCOME allows %d rounds per session, want 1..%d", ErrProtocol, m.Rounds, MaxSessionRounds)
			}
		}
		return m, d.done()
	case FrameError:
		var m ErrorMsg
		m.Code = ErrorCode(d.u16())
		n := int(d.u16())
		if d.err == nil && n > maxErrorMessage {
			return nil, fmt.Errorf("%w: ERROR message of %d bytes, limit %d", ErrProtocol, n, maxErrorMessage)
		}
		m.Message = string(d.take(n))
		return m, d.done()
	case FrameManifest:
		n := d.u32()
		if d.err == nil && uint64(n)*chunk.EntrySize != uint64(len(d.b)) {
			return nil, fmt.Errorf("%w: MANIFEST says %d entries in %d bytes", ErrProtocol, n, len(d.b))
		}
		if d.err != nil {
			return nil, d.err
		}
		m := ManifestBatch{Entries: make([]chunk.Entry, n)}
		for i := range m.Entries {
			e, err := chunk.DecodeEntry(d.take(chunk.EntrySize))
			if err != nil {
				return nil, fmt.Errorf("%w: MANIFEST entry %d: %w", ErrProtocol, i, err)
			}
			m.Entries[i] = e
		}
		return m, d.done()
	case FrameManifestEnd:
		var m ManifestEnd
		m.Count = d.u64()
		m.Root = d.id()
		return m, d.done()
	case FrameNeed:
		n := d.u32()
		if d.err == nil && uint64(n)*12 != uint64(len(d.b)) {
			return nil, fmt.Errorf("%w: NEED says %d ranges in %d bytes", ErrProtocol, n, len(d.b))
		}
		if d.err != nil {
			return nil, d.err
		}
		m := Need{Ranges: make([]IndexRange, n)}
		for i := range m.Ranges {
			m.Ranges[i] = IndexRange{First: d.u64(), Count: d.u32()}
			if r := m.Ranges[i]; r.Count == 0 || r.First+uint64(r.Count) < r.First {
				return nil, fmt.Errorf("%w: NEED range %d (%d+%d) is empty or overflows", ErrProtocol, i, r.First, r.Count)
			}
		}
		return m, d.done()
	case FrameNeedEnd:
		m := NeedEnd{Total: d.u64()}
		return m, d.done()
	case FrameDataOpen:
		m := DataOpen{Stream: d.u16()}
		if d.err == nil && len(d.b) > 0 {
			// The optional control-stream trailer.
			m.Control = d.u32()
			if d.err == nil && m.Control == 0 {
				return nil, fmt.Errorf("%w: DATA_OPEN names control stream 0", ErrProtocol)
			}
		}
		return m, d.done()
	case FrameChunk:
		var m Chunk
		m.Index = d.u64()
		m.Codec = Codec(d.u8())
		m.RawLen = d.u32()
		if d.err != nil {
			return nil, d.err
		}
		if m.Codec > CodecZstd {
			return nil, fmt.Errorf("%w: CHUNK %d with unknown codec %d", ErrProtocol, m.Index, m.Codec)
		}
		if m.RawLen > chunk.MaxChunkSize {
			return nil, fmt.Errorf("%w: CHUNK %d of %d bytes, above the largest chunk %d", ErrProtocol, m.Index, m.RawLen, chunk.MaxChunkSize)
		}
		m.Data = d.b
		d.b = nil
		if m.Codec == CodecRaw && uint32(len(m.Data)) != m.RawLen {
			return nil, fmt.Errorf("%w: raw CHUNK %d has %d bytes, says %d", ErrProtocol, m.Index, len(m.Data), m.RawLen)
		}
		return m, nil
	case FrameBaseGet:
		m := BaseGet{Root: d.id()}
		return m, d.done()
	case FrameManifestCopy:
		m := ManifestCopy{First: d.u64(), Count: d.u64()}
		if d.err == nil && (m.Count == 0 || m.First+m.Count < m.First) {
			return nil, fmt.Errorf("%w: MANIFEST_COPY %d+%d is empty or overflows", ErrProtocol, m.First, m.Count)
		}
		return m, d.done()
	case FrameChunkPatch:
		return decodeChunkPatch(d)
	case FrameManifestNext:
		return decodeManifestNext(d)
	case FrameResult:
		var m Result
		m.Generation = d.u64()
		m.Root = d.id()
		for _, p := range []*uint64{&m.Skipped, &m.Copied, &m.Fetched, &m.Zeroed, &m.CopyBytes, &m.FetchBytes} {
			*p = d.u64()
		}
		return m, d.done()
	}
	return nil, fmt.Errorf("%w: unknown frame type %d", ErrProtocol, uint8(t))
}

// decodeChunkPatch decodes a CHUNK_PATCH: the ranges sorted, disjoint,
// within the largest chunk, their lengths summing to RawLen.
func decodeChunkPatch(d *decoder) (Message, error) {
	var m ChunkPatch
	m.Index = d.u64()
	m.Codec = Codec(d.u8())
	m.RawLen = d.u32()
	n := d.u32()
	if d.err != nil {
		return nil, d.err
	}
	if m.Codec > CodecZstd {
		return nil, fmt.Errorf("%w: CHUNK_PATCH %d with unknown codec %d", ErrProtocol, m.Index, m.Codec)
	}
	if uint64(n)*8 > uint64(len(d.b)) {
		return nil, fmt.Errorf("%w: CHUNK_PATCH %d says %d ranges in %d bytes", ErrProtocol, m.Index, n, len(d.b))
	}
	m.Ranges = make([]PatchRange, n)
	var end, sum uint64
	for i := range m.Ranges {
		r := PatchRange{Offset: d.u32(), Length: d.u32()}
		if r.Length == 0 || uint64(r.Offset) < end || uint64(r.Offset)+uint64(r.Length) > chunk.MaxChunkSize {
			return nil, fmt.Errorf("%w: CHUNK_PATCH %d range %d (%d+%d) is empty, out of order or past the largest chunk", ErrProtocol, m.Index, i, r.Offset, r.Length)
		}
		end = uint64(r.Offset) + uint64(r.Length)
		sum += uint64(r.Length)
		m.Ranges[i] = r
	}
	if sum != uint64(m.RawLen) {
		return nil, fmt.Errorf("%w: CHUNK_PATCH %d ranges hold %d bytes, says %d", ErrProtocol, m.Index, sum, m.RawLen)
	}
	m.Data = d.b
	d.b = nil
	if m.Codec == CodecRaw && uint32(len(m.Data)) != m.RawLen {
		return nil, fmt.Errorf("%w: raw CHUNK_PATCH %d has %d bytes, says %d", ErrProtocol, m.Index, len(m.Data), m.RawLen)
	}
	return m, nil
}

// decodeManifestNext decodes a MANIFEST_NEXT, offsets counted from 0.
func decodeManifestNext(d *decoder) (Message, error) {
	n := d.u32()
	if d.err != nil {
		return nil, d.err
	}
	if uint64(n)*nextZeroSize > uint64(len(d.b)) {
		return nil, fmt.Errorf("%w: MANIFEST_NEXT says %d entries in %d bytes", ErrProtocol, n, len(d.b))
	}
	m := ManifestNext{Entries: make([]chunk.Entry, n)}
	var off uint64
	for i := range m.Entries {
		e := chunk.Entry{Offset: off}
		switch flags := d.u8(); flags {
		case 1:
			e.Zero, e.Length = true, d.u64()
		case 0:
			e.Length = uint64(d.u32())
			e.ID = d.id()
			if d.err == nil && (e.Length == 0 || e.Length > chunk.MaxChunkSize) {
				return nil, fmt.Errorf("%w: MANIFEST_NEXT entry %d is a %d-byte chunk", ErrProtocol, i, e.Length)
			}
		default:
			if d.err == nil {
				return nil, fmt.Errorf("%w: MANIFEST_NEXT entry %d has unknown flags %#x", ErrProtocol, i, flags)
			}
		}
		if d.err != nil {
			return nil, d.err
		}
		if e.Length == 0 || off+e.Length < off {
			return nil, fmt.Errorf("%w: MANIFEST_NEXT entry %d is empty or runs past 2^64", ErrProtocol, i)
		}
		off += e.Length
		m.Entries[i] = e
	}
	return m, d.done()
}
