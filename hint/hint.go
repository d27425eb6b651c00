// Package hint defines change hints: sources that say which extents of a
// new volume image may differ from a base image, so that a round re-reads
// only those (chunk.ScanOptions.Changed) instead of the whole volume.
//
// A hint is trusted only as far as it is vouched for. Every Source names
// the base image it is relative to (BaseImage); the agent uses its extents
// only when that base is the image the receiver's committed generation was
// made from (the Image that generation's HELLO named, returned in WELCOME)
// and the agent holds that generation's manifest. Otherwise the round is a
// full scan, and the stats say why. A Source that cannot tell (a
// filesystem without shared-extent reporting, a snapshot chain that was
// rewritten) returns an error wrapping ErrUnavailable, and the round falls
// back to a full scan; any other error fails the round.
package hint

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/voldelta/voldelta/chunk"
)

// Source reports the extents in which a new image may differ from a base
// image.
type Source interface {
	// Name is the kind of source, for stats and logs: "reflink",
	// "longhorn", "changed-file", "csi-snapshot-metadata".
	Name() string
	// BaseImage identifies the base image the extents are relative to, in
	// the form the round that read that image put in its HELLO (see
	// FileIdentity). "" means the caller vouches for the base itself (a
	// changed-extent list an orchestrator wrote for "the last image
	// sent"): the extents are then used against whatever the receiver
	// committed.
	BaseImage() string
	// Changed returns every extent of the new image, of size newSize, that
	// may differ from the base image: sorted, not overlapping, within
	// [0, newSize). Bytes past the base image's end need not be listed (the
	// scan reads what a size change touches). An error wrapping
	// ErrUnavailable means the source cannot tell this time.
	Changed(ctx context.Context, newSize uint64) ([]chunk.Extent, error)
}

// ErrUnavailable is wrapped by a Source that cannot produce hints for this
// pair of images: the round falls back to a full scan, naming the reason.
var ErrUnavailable = errors.New("change hints unavailable")

// Unavailable returns an error wrapping ErrUnavailable with a reason.
func Unavailable(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrUnavailable, fmt.Sprintf(format, a...))
}

// ErrInvalid is wrapped when a source's extents are malformed (unsorted,
// overlapping, out of range): a bug or bad input, never silently used.
var ErrInvalid = errors.New("invalid changed extents")

// Check validates extents as Changed must return them for an image of
// size bytes.
func Check(exts []chunk.Extent, size uint64) error {
	var end uint64
	for i, e := range exts {
		switch {
		case e.Length == 0:
			return fmt.Errorf("%w: extent %d at offset %d is empty", ErrInvalid, i, e.Offset)
		case e.Offset+e.Length < e.Offset || e.Offset+e.Length > size:
			return fmt.Errorf("%w: extent %d (%d+%d) runs past the image size %d", ErrInvalid, i, e.Offset, e.Length, size)
		case i > 0 && e.Offset < end:
			return fmt.Errorf("%w: extent %d at offset %d overlaps or precedes the one before (ending at %d); extents must be sorted and disjoint", ErrInvalid, i, e.Offset, end)
		}
		end = e.Offset + e.Length
	}
	return nil
}

// Normalize sorts exts, drops empty ones, clips them to size and merges
// overlapping or adjacent ones.
func Normalize(exts []chunk.Extent, size uint64) []chunk.Extent {
	out := make([]chunk.Extent, 0, len(exts))
	for _, e := range exts {
		if e.Length == 0 || e.Offset >= size {
			continue
		}
		e.Length = min(e.Length, size-e.Offset)
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Offset < out[j].Offset })
	merged := out[:0]
	for _, e := range out {
		if n := len(merged); n > 0 && e.Offset <= merged[n-1].Offset+merged[n-1].Length {
			last := &merged[n-1]
			last.Length = max(last.Offset+last.Length, e.Offset+e.Length) - last.Offset
			continue
		}
		merged = append(merged, e)
	}
	return merged
}

// Bytes sums the extents' lengths.
func Bytes(exts []chunk.Extent) uint64 {
	var n uint64
	for _, e := range exts {
		n += e.Length
	}
	return n
}
