package agent

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/hint"
	"github.com/voldelta/voldelta/transport"
)

// Scan modes, as Stats.ScanMode reports them.
const (
	ScanIncremental = "incremental"
	ScanFull        = "full"
)

// FullScanPolicy bounds the damage a hint source's bug can do: a round that
// has hints reads the volume whole anyway when the last full scan of the
// volume is older than Interval or Every hinted rounds ago, and compares
// the hinted manifest with the full scan's. A mismatch is logged, counted
// (Stats.HintCheck "mismatch") and the hint source is distrusted for that
// volume. Both zero: never (not recommended); DefaultFullScanInterval is
// what the CLI and the Kubernetes agent use.
type FullScanPolicy struct {
	Every    int
	Interval time.Duration
}

// DefaultFullScanInterval is the default FullScanPolicy.Interval.
const DefaultFullScanInterval = 24 * time.Hour

// due says why a full scan is due, or "".
func (p FullScanPolicy) due(pol Policy, now time.Time) string {
	switch {
	case p.Every > 0 && pol.RoundsSinceFullScan+1 >= p.Every:
		return fmt.Sprintf("periodic full scan: %d hinted rounds since the last (every %d)", pol.RoundsSinceFullScan, p.Every)
	case p.Interval > 0 && pol.LastFullScan.IsZero():
		return "periodic full scan: this agent has no record of a full scan of the volume"
	case p.Interval > 0 && now.Sub(pol.LastFullScan) >= p.Interval:
		return fmt.Sprintf("periodic full scan: the last was %s ago (every %s)", now.Sub(pol.LastFullScan).Round(time.Second), p.Interval)
	}
	return ""
}

// scanPlan is how a round scans and sends its manifest.
type scanPlan struct {
	mode   string
	reason string // why the scan is full
	source string // hint source name, if hints were asked for
	// base is the receiver's committed manifest, if the agent has it: the
	// manifest is then sent as a delta against it (when WELCOME offers
	// MANIFEST_COPY) and an incremental scan starts from it.
	base     *chunk.Manifest
	fetched  bool            // base came from the receiver (BASE_GET)
	prev     *chunk.Manifest // what an incremental scan reuses (base, or Options.Previous)
	changed  []chunk.Extent
	check    bool   // a periodic full scan: compare it with the hinted manifest
	policy   Policy // the volume's policy as loaded
	cacheErr error  // a damaged cache entry, reported in the log
}

func (p *scanPlan) full(reason string) *scanPlan {
	p.mode, p.reason, p.prev, p.changed = ScanFull, reason, nil, nil
	return p
}

// plan decides how this round scans. It may fetch the committed manifest
// from the receiver (BASE_GET); any other failure to get hints makes the
// round a full scan with the reason, except a hint source's own error that
// is not ErrUnavailable (bad input: the round fails).
func (r *round) plan(ctx context.Context, ctrl *transport.Stream, w transport.Welcome) (*scanPlan, error) {
	p := &scanPlan{mode: ScanFull}
	opt := r.opt
	if opt.Cache != nil {
		pol, err := opt.Cache.LoadPolicy(opt.Volume)
		if err != nil {
			p.cacheErr = err
		}
		p.policy = pol
		if w.Generation > 0 {
			if p.base, err = opt.Cache.Load(opt.Volume, w.Root); err != nil {
				p.cacheErr, p.base = err, nil
			}
		}
	}
	if p.base != nil && p.base.Params != opt.Params {
		p.base = nil
	}
	if opt.Hints == nil {
		if opt.Previous != nil && opt.Changed != nil {
			// The caller vouches for Previous and Changed.
			p.mode, p.source, p.prev, p.changed = ScanIncremental, "caller", opt.Previous, opt.Changed
			if p.base == nil && opt.Previous.Root == w.Root && opt.Previous.Params == opt.Params {
				p.base = opt.Previous
			}
			return p, nil
		}
		if w.Generation == 0 {
			return p.full("first round: the receiver has no generation"), nil
		}
		return p.full("no change hints given"), nil
	}
	p.source = opt.Hints.Name()
	switch img := opt.Hints.BaseImage(); {
	case w.Generation == 0:
		return p.full("first round: the receiver has no generation"), nil
	case img != "" && w.Image == "":
		return p.full(fmt.Sprintf("the receiver does not record which image generation %d was made from", w.Generation)), nil
	case img != "" && img != w.Image:
		return p.full(fmt.Sprintf("base image %s is not the image generation %d was made from (%s)", img, w.Generation, w.Image)), nil
	}
	if why, ok := p.policy.Distrusted[p.source]; ok {
		return p.full(fmt.Sprintf("hints from %s are distrusted for this volume: %s (voldelta send --trust-hints clears this)", p.source, why)), nil
	}
	if p.base == nil {
		if !w.HasBase {
			return p.full(fmt.Sprintf("neither this agent nor the receiver holds the manifest of generation %d", w.Generation)), nil
		}
		base, err := r.fetchBase(ctx, ctrl, w)
		if err != nil {
			return nil, err
		}
		if base.Params != opt.Params {
			return p.full("the chunk parameters changed since generation " + fmt.Sprint(w.Generation)), nil
		}
		p.base, p.fetched = base, true
		if opt.Cache != nil {
			if err := opt.Cache.Store(opt.Volume, base); err != nil {
				opt.Logger.Warn("keep the fetched base manifest", "err", err)
			}
		}
	}
	changed, err := opt.Hints.Changed(ctx, r.size)
	switch {
	case errors.Is(err, hint.ErrUnavailable):
		return p.full(err.Error()), nil
	case err != nil:
		return nil, fmt.Errorf("change hints (%s): %w", p.source, err)
	}
	if err := hint.Check(changed, r.size); err != nil {
		return nil, fmt.Errorf("change hints (%s): %w", p.source, err)
	}
	p.prev, p.changed = p.base, changed
	if why := opt.FullScan.due(p.policy, time.Now()); why != "" || opt.ForceFullScan {
		if why == "" {
			why = "full scan requested"
		}
		p.mode, p.reason, p.check = ScanFull, why, true
		return p, nil
	}
	p.mode = ScanIncremental
	return p, nil
}

// fetchBase asks the receiver for its committed manifest and checks it.
func (r *round) fetchBase(ctx context.Context, ctrl *transport.Stream, w transport.Welcome) (*chunk.Manifest, error) {
	if err := ctrl.Send(transport.BaseGet{Root: w.Root}); err != nil {
		return nil, err
	}
	m := &chunk.Manifest{Params: r.opt.Params, Size: w.Size}
	b := chunk.NewBuilder(r.opt.Params, w.Size)
	// At most one entry per minimum chunk, plus a short one per segment.
	limit := w.Size/uint64(r.opt.Params.MinSize) + w.Size/r.opt.Params.SegmentSize + 1
	for {
		msg, err := recvCtx(ctx, r.abort, ctrl, r.opt.Transport.IdleTimeout, "base manifest after BASE_GET")
		if err != nil {
			return nil, fmt.Errorf("fetch the manifest of generation %d from receiver %s: %w", w.Generation, r.opt.Addr, err)
		}
		switch msg := msg.(type) {
		case transport.ManifestBatch:
			if b.Count()+uint64(len(msg.Entries)) > limit {
				return nil, fmt.Errorf("%w: base manifest from the receiver has more than %d entries for %d bytes", transport.ErrProtocol, limit, w.Size)
			}
			for _, e := range msg.Entries {
				if err := b.Add(e); err != nil {
					return nil, fmt.Errorf("%w: base manifest from the receiver: %w", transport.ErrProtocol, err)
				}
			}
			m.Entries = append(m.Entries, msg.Entries...)
		case transport.ManifestEnd:
			root, err := b.Finish()
			if err != nil {
				return nil, fmt.Errorf("%w: base manifest from the receiver: %w", transport.ErrProtocol, err)
			}
			if root != w.Root || msg.Root != w.Root || msg.Count != b.Count() {
				return nil, fmt.Errorf("%w: base manifest from the receiver has root %s (%d entries), WELCOME named %s", transport.ErrProtocol, root.Short(), b.Count(), w.Root.Short())
			}
			m.Root = root
			return m, nil
		default:
			return nil, fmt.Errorf("%w: %v in answer to BASE_GET", transport.ErrProtocol, msg.FrameType())
		}
	}
}

// manifestEncoder sends a manifest as MANIFEST_COPY runs of the base's
// entries and MANIFEST batches of the rest.
type manifestEncoder struct {
	base   []chunk.Entry // nil: every entry is sent literally
	j      int           // base cursor
	first  uint64        // pending copy run
	count  uint64
	copied uint64 // entries sent as copies
}

// match reports whether e is an entry of the base (at index j).
func (m *manifestEncoder) match(e chunk.Entry) bool {
	if m.base == nil {
		return false
	}
	for m.j < len(m.base) && m.base[m.j].Offset < e.Offset {
		m.j++
	}
	return m.j < len(m.base) && m.base[m.j] == e
}

// patchExtents returns the extents in which the source may differ from the
// receiver's target, or nil if chunks must be sent whole: only for an
// incremental round whose base is the receiver's committed generation,
// when the receiver accepts patches (its target holds that generation).
func patchExtents(plan *scanPlan, w transport.Welcome, size uint64) []chunk.Extent {
	if !w.AcceptsPatch || plan.mode != ScanIncremental || plan.prev == nil || plan.prev.Root != w.Root || plan.changed == nil {
		return nil
	}
	exts := append([]chunk.Extent{}, plan.changed...)
	if w.Size < size {
		exts = append(exts, chunk.Extent{Offset: w.Size, Length: size - w.Size})
	}
	return hint.Normalize(exts, size)
}

// patchRanges returns the ranges of e that exts touch, relative to e, and
// their total, if sending them (with 8 bytes of framing each) is smaller
// than sending e whole.
func patchRanges(exts []chunk.Extent, e chunk.Entry) ([]transport.PatchRange, uint64, bool) {
	if exts == nil {
		return nil, 0, false
	}
	k := sort.Search(len(exts), func(k int) bool { return exts[k].Offset+exts[k].Length > e.Offset })
	ranges := []transport.PatchRange{}
	var n uint64
	for ; k < len(exts) && exts[k].Offset < e.End(); k++ {
		lo, hi := max(exts[k].Offset, e.Offset), min(exts[k].Offset+exts[k].Length, e.End())
		ranges = append(ranges, transport.PatchRange{Offset: uint32(lo - e.Offset), Length: uint32(hi - lo)})
		n += hi - lo
	}
	if n+8*uint64(len(ranges)) >= e.Length {
		return nil, 0, false
	}
	return ranges, n, true
}
