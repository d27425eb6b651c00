package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/voldelta/voldelta/agent"
	"github.com/voldelta/voldelta/hint"
)

// hintFlags are send's change-hint, cache and full-scan flags.
type hintFlags struct {
	base, changed, cacheDir string
	noCache, trustHints     bool
	fullScan                bool
	every                   int
	interval                time.Duration
}

func (h *hintFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&h.base, "base", "", "the image the receiver's last generation was sent from, of which --source is a later reflinked copy on the same filesystem (cp --reflink=always): read only the extents the two do not share")
	fs.StringVar(&h.changed, "changed", "", "a file listing the extents of --source that may differ from the image the receiver's last generation was sent from (rbd diff JSON or OFFSET LENGTH lines; docs/change-hints.md): read only those")
	fs.StringVar(&h.cacheDir, "cache-dir", agent.DefaultCacheDir(), "where the agent keeps the manifests of committed rounds (the base of the next round's delta) and each volume's hint policy")
	fs.BoolVar(&h.noCache, "no-cache", false, "keep no manifests (a hinted round then fetches its base manifest from the receiver)")
	fs.BoolVar(&h.fullScan, "full-scan", false, "read the whole source this round even with --base or --changed, and check the hints against the result")
	fs.DurationVar(&h.interval, "full-scan-interval", agent.DefaultFullScanInterval, "with hints, read the whole volume anyway when its last full scan is older than this, and check the hints against it (0: never)")
	fs.IntVar(&h.every, "full-scan-every", 0, "with hints, read the whole volume anyway every N rounds (0: only by --full-scan-interval)")
	fs.BoolVar(&h.trustHints, "trust-hints", false, "use hints again for a volume whose hints a full scan once caught missing a change")
}

// apply fills opt's hint, image, cache and policy fields from the flags.
func (h *hintFlags) apply(c *cobra.Command, opt *agent.Options) error {
	if h.every < 0 || h.interval < 0 {
		return usagef(c, "--full-scan-every and --full-scan-interval must not be negative")
	}
	var err error
	if opt.Hints, err = hint.FromFlags(opt.Source, h.base, h.changed); err != nil {
		return usagef(c, "%v", err)
	}
	// The receiver records this with the generation; a later round's
	// --base must be this very file, unmodified, for its hints to be used.
	if opt.ImageID, err = hint.FileIdentity(opt.Source); err != nil {
		return fmt.Errorf("identify --source: %w", err)
	}
	opt.FullScan = agent.FullScanPolicy{Every: h.every, Interval: h.interval}
	opt.ForceFullScan = h.fullScan
	if h.noCache {
		return nil
	}
	if opt.Cache, err = agent.OpenCache(h.cacheDir); err != nil {
		return fmt.Errorf("--cache-dir: %w", err)
	}
	if h.trustHints {
		return trustHints(opt.Cache, opt.Volume)
	}
	return nil
}

// trustHints clears the volume's distrusted hint sources.
func trustHints(c *agent.Cache, volume string) error {
	pol, err := c.LoadPolicy(volume)
	if err != nil {
		return err
	}
	pol.Distrusted = nil
	return c.SavePolicy(volume, pol)
}
