package chunk

import (
	"errors"
	"fmt"
	"math/bits"

	"github.com/restic/chunker"
)

// Algorithm is the name recorded in every manifest for the way chunks are cut
// and named: Rabin content-defined chunking (restic/chunker) over fixed
// segments, BLAKE3-256 chunk IDs, all-zero chunks coalesced into zero runs.
// A change to any of these rules gets a new name.
const Algorithm = "rabin-seg/blake3/v1"

// DefaultPolynomial is the irreducible polynomial used unless a volume sets
// its own. It is fixed so that every agent and receiver cut the same bytes at
// the same places; changing it makes all existing manifests useless for
// diffing.
const DefaultPolynomial = chunker.Pol(0x3DA3358B4DC173)

// Limits of Params accepted from a peer or a flag.
const (
	MinChunkSize   = 4 << 10  // smallest MinSize
	MaxChunkSize   = 8 << 20  // largest MaxSize; also bounds a chunk frame
	MinSegmentSize = 1 << 20  // smallest SegmentSize
	MaxSegmentSize = 16 << 30 // largest SegmentSize
)

// Default chunk sizes, chosen from the measurements in docs/chunk-sizes.md.
const (
	DefaultMinSize     = 16 << 10
	DefaultAvgSize     = 64 << 10
	DefaultMaxSize     = 256 << 10
	DefaultSegmentSize = 64 << 20
)

// Params are the chunking parameters of a volume. Two manifests are only
// compared when their Params are Equal.
type Params struct {
	Algorithm   string
	Polynomial  uint64
	MinSize     uint32 // no chunk is shorter, except the last of a segment
	AvgSize     uint32 // power of two: the expected chunk size
	MaxSize     uint32 // no chunk is longer
	SegmentSize uint64 // the volume is cut into segments of this size, chunked independently
}

// DefaultParams returns the parameters used when a volume sets none.
func DefaultParams() Params {
	return Params{
		Algorithm:   Algorithm,
		Polynomial:  uint64(DefaultPolynomial),
		MinSize:     DefaultMinSize,
		AvgSize:     DefaultAvgSize,
		MaxSize:     DefaultMaxSize,
		SegmentSize: DefaultSegmentSize,
	}
}

// OrDefault returns p, or DefaultParams() if p is the zero value.
func (p Params) OrDefault() Params {
	if p == (Params{}) {
		return DefaultParams()
	}
	return p
}

// ErrParams is wrapped by every error Validate returns.
var ErrParams = errors.New("invalid chunk parameters")

// Validate checks p; a peer's parameters are validated before use.
func (p Params) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrParams, fmt.Sprintf(format, a...))
	}
	switch {
	case p.Algorithm != Algorithm:
		return bad("algorithm %q is not supported (want %q)", p.Algorithm, Algorithm)
	case !chunker.Pol(p.Polynomial).Irreducible() || chunker.Pol(p.Polynomial).Deg() > 53 || chunker.Pol(p.Polynomial).Deg() < 9:
		return bad("polynomial %#x is not irreducible of degree 9..53", p.Polynomial)
	case p.MinSize < MinChunkSize:
		return bad("min size %d is below %d", p.MinSize, MinChunkSize)
	case p.MaxSize > MaxChunkSize:
		return bad("max size %d is above %d", p.MaxSize, MaxChunkSize)
	case bits.OnesCount32(p.AvgSize) != 1:
		return bad("average size %d is not a power of two", p.AvgSize)
	case !(p.MinSize <= p.AvgSize && p.AvgSize <= p.MaxSize):
		return bad("want min <= avg <= max, got %d, %d, %d", p.MinSize, p.AvgSize, p.MaxSize)
	case p.SegmentSize < MinSegmentSize || p.SegmentSize > MaxSegmentSize:
		return bad("segment size %d is outside %d..%d", p.SegmentSize, MinSegmentSize, MaxSegmentSize)
	case p.SegmentSize < uint64(p.MaxSize):
		return bad("segment size %d is below max chunk size %d", p.SegmentSize, p.MaxSize)
	}
	return nil
}

// WithSizes returns p with the given min, average and max chunk sizes.
func (p Params) WithSizes(min, avg, max uint32) Params {
	p.MinSize, p.AvgSize, p.MaxSize = min, avg, max
	return p
}

// String is a compact human form, e.g. "rabin-seg/blake3/v1 64K/256K/1M seg 64M pol 0x3da3358b4dc173".
func (p Params) String() string {
	return fmt.Sprintf("%s %s/%s/%s seg %s pol %#x", p.Algorithm,
		sizeStr(uint64(p.MinSize)), sizeStr(uint64(p.AvgSize)), sizeStr(uint64(p.MaxSize)), sizeStr(p.SegmentSize), p.Polynomial)
}

func sizeStr(n uint64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%dG", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dM", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dK", n>>10)
	}
	return fmt.Sprintf("%d", n)
}

func (p Params) averageBits() int { return bits.TrailingZeros32(p.AvgSize) }
