package hint

import (
	"context"

	"github.com/voldelta/voldelta/chunk"
)

// Fixed is a Source whose answer was computed earlier: a caller that must
// ask its storage before it changes anything (the Kubernetes agent asks a
// Longhorn replica for the delta before it deletes older snapshots) keeps
// the answer, extents or error, in a Fixed and hands that to the round.
type Fixed struct {
	Source  string // Name
	Base    string // BaseImage
	Extents []chunk.Extent
	Err     error
}

// Precompute asks s now and returns its answer as a Fixed.
func Precompute(ctx context.Context, s Source, newSize uint64) *Fixed {
	exts, err := s.Changed(ctx, newSize)
	return &Fixed{Source: s.Name(), Base: s.BaseImage(), Extents: exts, Err: err}
}

// Name implements Source.
func (f *Fixed) Name() string { return f.Source }

// BaseImage implements Source.
func (f *Fixed) BaseImage() string { return f.Base }

// Changed implements Source: the answer computed earlier, whatever newSize.
func (f *Fixed) Changed(context.Context, uint64) ([]chunk.Extent, error) {
	return f.Extents, f.Err
}
