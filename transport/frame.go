package transport

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// FrameType identifies a frame's payload. The values are part of the wire
// format (spec.md) and never change meaning.
type FrameType uint8

// Frame types; see spec.md for each payload.
const (
	FrameHello       FrameType = 1
	FrameWelcome     FrameType = 2
	FrameError       FrameType = 3
	FrameManifest    FrameType = 4
	FrameManifestEnd FrameType = 5
	FrameNeed        FrameType = 6
	FrameNeedEnd     FrameType = 7
	FrameDataOpen    FrameType = 8
	FrameChunk       FrameType = 9
	FrameResult      FrameType = 10
	// Protocol version 2:
	FrameBaseGet      FrameType = 11
	FrameManifestCopy FrameType = 12
	FrameChunkPatch   FrameType = 13
	FrameManifestNext FrameType = 14
)

func (t FrameType) String() string {
	switch t {
	case FrameHello:
		return "HELLO"
	case FrameWelcome:
		return "WELCOME"
	case FrameError:
		return "ERROR"
	case FrameManifest:
		return "MANIFEST"
	case FrameManifestEnd:
		return "MANIFEST_END"
	case FrameNeed:
		return "NEED"
	case FrameNeedEnd:
		return "NEED_END"
	case FrameDataOpen:
		return "DATA_OPEN"
	case FrameChunk:
		return "CHUNK"
	case FrameResult:
		return "RESULT"
	case FrameBaseGet:
		return "BASE_GET"
	case FrameManifestCopy:
		return "MANIFEST_COPY"
	case FrameChunkPatch:
		return "CHUNK_PATCH"
	case FrameManifestNext:
		return "MANIFEST_NEXT"
	}
	return fmt.Sprintf("FrameType(%d)", uint8(t))
}

// HeaderSize is the size of a frame header: type u8, flags u8, length u32.
const HeaderSize = 6

// Frame size limits.
const (
	// DefaultMaxFrameSize bounds a frame's payload unless configured.
	DefaultMaxFrameSize = 9 << 20
	// MaxFrameSizeLimit is the largest MaxFrameSize a Config accepts.
	MaxFrameSizeLimit = 64 << 20
)

// ErrFrameTooLarge is returned when a peer announces a frame longer than
// the limit; nothing has been allocated for it.
var ErrFrameTooLarge = errors.New("frame too large")

// ErrProtocol is wrapped by every error about malformed input from the peer.
var ErrProtocol = errors.New("protocol error")

// AppendFrameHeader appends the header of a frame of type t with n payload bytes.
func AppendFrameHeader(dst []byte, t FrameType, n int) []byte {
	dst = append(dst, byte(t), 0)
	return binary.BigEndian.AppendUint32(dst, uint32(n))
}

// FrameReader reads frames, reusing one buffer. The payload returned by
// Next is valid until the following call.
type FrameReader struct {
	r   io.Reader
	max uint32
	hdr [HeaderSize]byte
	buf []byte
	// budget, if set, bounds payloads above smallFrame: held bytes are
	// reserved from it from the header until the next Next (or release).
	budget *budget
	held   int64
}

// smallFrame is the largest payload a FrameReader keeps in its own buffer
// without asking its budget.
const smallFrame = 64 << 10

// release gives back a large payload buffer and its reservation.
func (fr *FrameReader) release() {
	if fr.held > 0 {
		fr.budget.release(fr.held)
		fr.held = 0
		fr.buf = nil
	}
}

// NewFrameReader reads frames of at most max payload bytes from r.
func NewFrameReader(r io.Reader, max uint32) *FrameReader {
	return &FrameReader{r: r, max: max}
}

// Next reads one frame. It returns io.EOF only when the stream ends cleanly
// between frames; a stream cut inside a frame is io.ErrUnexpectedEOF.
func (fr *FrameReader) Next() (FrameType, []byte, error) {
	fr.release()
	if _, err := io.ReadFull(fr.r, fr.hdr[:]); err != nil {
		return 0, nil, err
	}
	t, flags := FrameType(fr.hdr[0]), fr.hdr[1]
	n := binary.BigEndian.Uint32(fr.hdr[2:])
	if flags != 0 {
		return 0, nil, fmt.Errorf("%w: frame %v has unknown flags %#x", ErrProtocol, t, flags)
	}
	if n > fr.max { // checked before allocating
		return 0, nil, fmt.Errorf("%w: %v frame of %d bytes, limit %d", ErrFrameTooLarge, t, n, fr.max)
	}
	fr.release()
	if fr.budget != nil && n > smallFrame {
		// Reserve before allocating: streams holding partial frames are
		// bounded together, not each by the frame limit.
		if err := fr.budget.acquire(int64(n)); err != nil {
			return 0, nil, err
		}
		fr.held = int64(n)
		fr.buf = make([]byte, n)
	} else if cap(fr.buf) < int(n) {
		fr.buf = make([]byte, n)
	}
	fr.buf = fr.buf[:n]
	if _, err := io.ReadFull(fr.r, fr.buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, fmt.Errorf("read %v frame body: %w", t, err)
	}
	return t, fr.buf, nil
}
