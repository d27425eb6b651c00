package objstore

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/hint"
)

// imageMetaKey is the user metadata (x-amz-meta-voldelta-image) of a
// manifest object: the identity of the image the generation was pushed
// from (PushOptions.Image), escaped by escapeImage. A manifest without it
// (pushed without an Image, or before voldelta recorded one) has the
// image "".
const imageMetaKey = "Voldelta-Image"

// maxImageLen bounds an escaped image identity: S3 allows 2 KiB of user
// metadata per object.
const maxImageLen = 1024

// Scan modes of PushStats.ScanMode.
const (
	ScanIncremental = "incremental" // only what the change hints name was read
	ScanFull        = "full"        // the whole source was read
)

// escapeImage makes an image identity a header value: bytes outside
// printable ASCII, and '%', become %XX (url.PathUnescape reverses it).
func escapeImage(image string) string {
	var b strings.Builder
	for i := 0; i < len(image); i++ {
		c := image[i]
		if c <= ' ' || c >= 0x7f || c == '%' {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// imageOf returns the image identity recorded in a manifest object's user
// metadata; a value that does not unescape counts as none.
func imageOf(meta map[string]string) string {
	v, ok := meta[imageMetaKey]
	if !ok {
		return ""
	}
	image, err := url.PathUnescape(v)
	if err != nil {
		return ""
	}
	return image
}

// scanPlan is what a push's scan reads: Previous and Changed for the scan,
// and how the stats describe it.
type scanPlan struct {
	previous *chunk.Manifest
	changed  []chunk.Extent
	mode     string // ScanIncremental or ScanFull
	reason   string // why a full scan
}

// planScan decides whether the push's scan may use opt.Hints: only when
// the volume's latest generation prev (nil: none; its manifest nil: gone
// meanwhile) was chunked with the same Params and the hints are relative
// to the image it was pushed from (or vouch for it, BaseImage ""). It
// returns an error only for a hint error other than hint.ErrUnavailable.
func planScan(ctx context.Context, opt *PushOptions, latest uint64, prev *base, size uint64) (scanPlan, error) {
	full := func(format string, a ...any) (scanPlan, error) {
		return scanPlan{mode: ScanFull, reason: fmt.Sprintf(format, a...)}, nil
	}
	switch {
	case opt.FullScan:
		return full("full scan asked for")
	case opt.Hints == nil && opt.Previous != nil && opt.Changed != nil:
		return scanPlan{previous: opt.Previous, changed: opt.Changed, mode: ScanIncremental}, nil
	case opt.Hints == nil:
		return full("no hints given")
	case latest == 0:
		return full("no previous generation")
	case prev == nil || prev.m == nil:
		return full("generation %d was removed while the push read it", latest)
	case prev.m.Params != opt.Params:
		return full("chunking parameters differ from generation %d's", latest)
	}
	if bi := opt.Hints.BaseImage(); bi != "" && bi != prev.image {
		if prev.image == "" {
			return full("base image %s is not the image generation %d was pushed from (it recorded none)", bi, latest)
		}
		return full("base image %s is not the image generation %d was pushed from (%s)", bi, latest, prev.image)
	}
	exts, err := opt.Hints.Changed(ctx, size)
	if err == nil {
		err = hint.Check(exts, size)
	}
	if errors.Is(err, hint.ErrUnavailable) {
		return full("hints unavailable: %s", strings.TrimPrefix(err.Error(), hint.ErrUnavailable.Error()+": "))
	}
	if err != nil {
		return scanPlan{}, fmt.Errorf("change hints (%s): %w", opt.Hints.Name(), err)
	}
	if exts == nil {
		exts = []chunk.Extent{} // nothing changed; nil would read everything
	}
	return scanPlan{previous: prev.m, changed: exts, mode: ScanIncremental}, nil
}
