package agent

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/voldelta/voldelta/chunk"
)

func manifestOf(t *testing.T, seed byte, size int) *chunk.Manifest {
	t.Helper()
	b := bytes.Repeat([]byte{seed, seed + 1, seed * 3}, size/3+1)[:size]
	m, _, err := chunk.ScanManifest(context.Background(), bytes.NewReader(b), uint64(size), chunk.DefaultParams(), chunk.ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestCacheKeepsTheLastManifests: manifests load back by root, the oldest
// beyond two are dropped, and a damaged file is an error, not a miss.
func TestCacheKeepsTheLastManifests(t *testing.T) {
	c, err := OpenCache(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var ms []*chunk.Manifest
	for i := range 3 {
		m := manifestOf(t, byte(i+1), 1<<20+i)
		if err := c.Store("vol", m); err != nil {
			t.Fatal(err)
		}
		ms = append(ms, m)
		// Distinct modification times order the files, newest last.
		at := time.Now().Add(time.Duration(i-10) * time.Minute)
		for _, old := range ms {
			os.Chtimes(filepath.Join(c.Dir(), "vol", old.Root.String()+".manifest"), at, at)
			at = at.Add(time.Second)
		}
	}
	if got, err := c.Load("vol", ms[0].Root); err != nil || got != nil {
		t.Fatalf("the oldest of three: %v, %v; want it dropped", got, err)
	}
	for _, m := range ms[1:] {
		got, err := c.Load("vol", m.Root)
		if err != nil || got == nil || got.Root != m.Root || len(got.Entries) != len(m.Entries) {
			t.Fatalf("load %s: %v, %v", m.Root.Short(), got, err)
		}
	}
	if got, err := c.Load("other", ms[2].Root); err != nil || got != nil {
		t.Fatalf("another volume: %v, %v", got, err)
	}
	path := filepath.Join(c.Dir(), "vol", ms[2].Root.String()+".manifest")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-40] ^= 1
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Load("vol", ms[2].Root); !errors.Is(err, ErrCacheCorrupt) {
		t.Fatalf("damaged manifest: %v, want ErrCacheCorrupt", err)
	}
	// A file holding another root than its name says.
	other := filepath.Join(c.Dir(), "vol", ms[0].Root.String()+".manifest")
	good, _ := ms[1].MarshalBinary()
	if err := os.WriteFile(other, good, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Load("vol", ms[0].Root); !errors.Is(err, ErrCacheCorrupt) {
		t.Fatalf("misnamed manifest: %v, want ErrCacheCorrupt", err)
	}
	if _, err := c.Load("../x", ms[0].Root); err == nil {
		t.Fatal("a volume name with a path in it was accepted")
	}
}

func TestCachePolicy(t *testing.T) {
	c, err := OpenCache(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if p, err := c.LoadPolicy("vol"); err != nil || !p.LastFullScan.IsZero() || p.Distrusted != nil {
		t.Fatalf("no policy yet: %+v, %v", p, err)
	}
	want := Policy{LastFullScan: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), RoundsSinceFullScan: 3, Distrusted: map[string]string{"reflink": "missed"}}
	if err := c.SavePolicy("vol", want); err != nil {
		t.Fatal(err)
	}
	got, err := c.LoadPolicy("vol")
	if err != nil || !got.LastFullScan.Equal(want.LastFullScan) || got.RoundsSinceFullScan != 3 || got.Distrusted["reflink"] != "missed" {
		t.Fatalf("policy %+v, %v", got, err)
	}
	if err := os.WriteFile(filepath.Join(c.Dir(), "vol", "policy.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.LoadPolicy("vol"); !errors.Is(err, ErrCacheCorrupt) {
		t.Fatalf("damaged policy: %v", err)
	}
}

func TestFullScanPolicyDue(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	recent := Policy{LastFullScan: now.Add(-time.Hour), RoundsSinceFullScan: 4}
	for _, c := range []struct {
		p    FullScanPolicy
		pol  Policy
		want string
	}{
		{FullScanPolicy{}, Policy{}, ""},
		{FullScanPolicy{Interval: 24 * time.Hour}, recent, ""},
		{FullScanPolicy{Interval: 24 * time.Hour}, Policy{}, "no record"},
		{FullScanPolicy{Interval: time.Hour}, recent, "the last was 1h0m0s ago"},
		{FullScanPolicy{Every: 5}, recent, "4 hinted rounds since the last (every 5)"},
		{FullScanPolicy{Every: 6}, recent, ""},
	} {
		got := c.p.due(c.pol, now)
		if c.want == "" && got != "" || c.want != "" && !strings.Contains(got, c.want) {
			t.Errorf("%+v with %+v: %q, want %q", c.p, c.pol, got, c.want)
		}
	}
}
