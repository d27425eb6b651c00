package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/receiver"
)

// TestScrubCommand: scrub passes on a replica that matches and fails (exit
// 1, not current afterwards) on one damaged behind the receiver's back.
func TestScrubCommand(t *testing.T) {
	dir := t.TempDir()
	vol := receiver.Volume{Name: "db", Path: filepath.Join(dir, "db.img"), StateDir: filepath.Join(dir, "state")}
	src := make([]byte, 4<<20)
	rand.Read(src)
	p := chunk.DefaultParams().WithSizes(16<<10, 64<<10, 256<<10)
	m, _, err := chunk.ScanManifest(context.Background(), bytes.NewReader(src), uint64(len(src)), p, chunk.ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := receiver.ApplyManifest(context.Background(), vol, receiver.Options{}, m, "test", 2,
		func(_ context.Context, _ int, e chunk.Entry) ([]byte, error) { return src[e.Offset:e.End()], nil }); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, error) {
		root := newRootCmd()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetArgs(args)
		err := root.ExecuteContext(context.Background())
		return out.String(), err
	}
	if _, err := run("scrub", "--state-dir", vol.StateDir, "db"); err != nil {
		t.Fatalf("scrub of a matching replica: %v", err)
	}
	f, err := os.OpenFile(vol.Path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("bit rot"), 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = run("scrub", "--state-dir", vol.StateDir, "db")
	if err == nil || !strings.Contains(err.Error(), "do not match") {
		t.Fatalf("scrub of a damaged replica: %v", err)
	}
	vs, err := receiver.ReadStatus(vol.StateDir, "db")
	if err != nil || vs.Current {
		t.Fatalf("status after a failed scrub: %+v, %v", vs, err)
	}
	if _, err := run("scrub", "db"); err == nil {
		t.Fatal("scrub without --state-dir accepted")
	}
}
