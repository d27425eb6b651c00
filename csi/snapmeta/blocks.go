package snapmeta

import (
	"fmt"

	"github.com/kubernetes-csi/external-snapshot-metadata/pkg/api"

	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/hint"
)

// blocks accumulates the changed block metadata of one GetMetadataDelta
// stream into merged extents, checking it as the CSI spec (and the
// Kubernetes SnapshotMetadata API, which passes it through) defines it:
// every response of a stream has the same block metadata type, FIXED_LENGTH
// or VARIABLE_LENGTH, and the same volume capacity; the tuples of the
// stream are in ascending, non-overlapping byte ranges within the
// capacity; FIXED_LENGTH tuples all have the same size. Anything else is
// malformed (hint.ErrInvalid) and none of it is used.
type blocks struct {
	typ       api.BlockMetadataType
	capacity  int64
	fixedSize int64
	end       int64 // end of the last tuple
	tuples    int
	responses int
	exts      []chunk.Extent
}

// add takes one response of the stream.
func (b *blocks) add(typ api.BlockMetadataType, capacity int64, md []*api.BlockMetadata) error {
	b.responses++
	switch typ {
	case api.BlockMetadataType_FIXED_LENGTH, api.BlockMetadataType_VARIABLE_LENGTH:
	default:
		return fmt.Errorf("%w: response %d: block metadata type %v (want FIXED_LENGTH or VARIABLE_LENGTH)", hint.ErrInvalid, b.responses, typ)
	}
	if capacity <= 0 {
		return fmt.Errorf("%w: response %d: volume capacity %d bytes", hint.ErrInvalid, b.responses, capacity)
	}
	if b.responses == 1 {
		b.typ, b.capacity = typ, capacity
	} else if typ != b.typ || capacity != b.capacity {
		return fmt.Errorf("%w: response %d: %v of a %d-byte volume after %v of a %d-byte volume in the same stream",
			hint.ErrInvalid, b.responses, typ, capacity, b.typ, b.capacity)
	}
	for _, m := range md {
		b.tuples++
		if m == nil {
			return fmt.Errorf("%w: tuple %d is empty", hint.ErrInvalid, b.tuples)
		}
		off, size := m.ByteOffset, m.SizeBytes
		switch {
		case off < 0 || size <= 0:
			return fmt.Errorf("%w: tuple %d: offset %d, size %d", hint.ErrInvalid, b.tuples, off, size)
		case off > capacity || size > capacity-off:
			return fmt.Errorf("%w: tuple %d (%d+%d) runs past the volume capacity %d", hint.ErrInvalid, b.tuples, off, size, capacity)
		case off < b.end:
			return fmt.Errorf("%w: tuple %d at offset %d overlaps or precedes the one before (ending at %d); the CSI driver must list ascending, disjoint ranges",
				hint.ErrInvalid, b.tuples, off, b.end)
		}
		if typ == api.BlockMetadataType_FIXED_LENGTH {
			if b.fixedSize == 0 {
				b.fixedSize = size
			} else if size != b.fixedSize {
				return fmt.Errorf("%w: tuple %d: FIXED_LENGTH block of %d bytes after blocks of %d", hint.ErrInvalid, b.tuples, size, b.fixedSize)
			}
		}
		if n := len(b.exts); n > 0 && off == b.end {
			b.exts[n-1].Length += uint64(size) // adjacent blocks: one extent
		} else {
			b.exts = append(b.exts, chunk.Extent{Offset: uint64(off), Length: uint64(size)})
		}
		b.end = off + size
	}
	return nil
}

// extents returns the changed extents of an image of size bytes: the
// blocks, clipped to size, and, if the image is larger than the volume
// capacity the driver reported, everything past the capacity (the driver
// said nothing about it).
func (b *blocks) extents(size uint64) ([]chunk.Extent, error) {
	exts := b.exts
	if b.responses > 0 && size > uint64(b.capacity) {
		exts = append(exts, chunk.Extent{Offset: uint64(b.capacity), Length: size - uint64(b.capacity)})
	}
	out := hint.Normalize(exts, size)
	if err := hint.Check(out, size); err != nil {
		return nil, err
	}
	return out, nil
}
