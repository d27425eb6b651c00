package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"
	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/hint"
	"github.com/voldelta/voldelta/internal/miniotest"
	"github.com/voldelta/voldelta/objstore"
)

// pushStats is the part of push --stats-json this test reads.
type pushStats struct {
	Generation     uint64 `json:"generation"`
	RootHash       string `json:"root_hash"`
	SourceBytes    uint64 `json:"source_bytes"`
	ScanMode       string `json:"scan_mode"`
	FullScanReason string `json:"full_scan_reason"`
	HintSource     string `json:"hint_source"`
	ChangedBytes   uint64 `json:"changed_bytes"`
	BytesRead      uint64 `json:"bytes_read"`
}

// TestPushHintFlags: push --changed reads about what the list names and
// stores what a full scan would; --base with a base that is not the image
// the latest generation was pushed from, --base where the filesystem shares
// no extents, other chunk sizes and --full-scan read everything and say
// why; every push records its source's identity; a pull gives the bytes.
func TestPushHintFlags(t *testing.T) {
	srv, err := miniotest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	cl, err := srv.Client()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := cl.MakeBucket(ctx, "hints", minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AWS_ACCESS_KEY_ID", miniotest.User)
	t.Setenv("AWS_SECRET_ACCESS_KEY", miniotest.Password)
	t.Setenv("AWS_ENDPOINT_URL", "")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	dir := t.TempDir()
	chunking := []string{"--chunk-min", "4KiB", "--chunk-avg", "16KiB", "--chunk-max", "64KiB", "--segment-size", "1MiB"}
	p := chunk.DefaultParams().WithSizes(4<<10, 16<<10, 64<<10)
	p.SegmentSize = 1 << 20

	run := func(args ...string) error {
		root := newRootCmd()
		root.SetOut(new(bytes.Buffer))
		root.SetArgs(args)
		return root.ExecuteContext(ctx)
	}
	n := 0
	pushImg := func(src string, extra ...string) pushStats {
		t.Helper()
		n++
		stats := filepath.Join(dir, fmt.Sprintf("stats%d.json", n))
		args := append([]string{"push", "--source", src, "--store", "s3://hints/vd", "--volume", "vm", "--endpoint", srv.Endpoint,
			"--insecure", "--quiet", "--stats-json", stats}, chunking...)
		if err := run(append(args, extra...)...); err != nil {
			t.Fatalf("push %s %v: %v", src, extra, err)
		}
		b, err := os.ReadFile(stats)
		if err != nil {
			t.Fatal(err)
		}
		var st pushStats
		if err := json.Unmarshal(b, &st); err != nil {
			t.Fatalf("stats %s: %v", b, err)
		}
		return st
	}
	root := func(data []byte, p chunk.Params) string {
		m, _, err := chunk.ScanManifest(ctx, bytes.NewReader(data), uint64(len(data)), p, chunk.ScanOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return m.Root.String()
	}
	img := func(name string, data []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}

	r := rand.New(rand.NewPCG(1, 2))
	v1 := make([]byte, 16<<20)
	for i := range v1 {
		v1[i] = byte(r.Uint32())
	}
	a := img("a.img", v1)
	if st := pushImg(a); st.ScanMode != "full" || st.FullScanReason != "no hints given" || st.BytesRead != uint64(len(v1)) {
		t.Fatalf("first push: %+v", st)
	}

	// --changed: two extents in two of the 16 segments.
	v2 := bytes.Clone(v1)
	exts := []chunk.Extent{{Offset: 3<<20 + 100, Length: 5000}, {Offset: 11 << 20, Length: 4096}}
	for _, e := range exts {
		for i := e.Offset; i < e.Offset+e.Length; i++ {
			v2[i] ^= 0x3c
		}
	}
	b := img("b.img", v2)
	list := img("changed.txt", []byte(fmt.Sprintf("# offset length\n%d %d\n0x%x %d\n", exts[0].Offset, exts[0].Length, exts[1].Offset, exts[1].Length)))
	st := pushImg(b, "--changed", list)
	if st.ScanMode != "incremental" || st.HintSource != "changed-file" || st.ChangedBytes != hint.Bytes(exts) ||
		st.BytesRead == 0 || st.BytesRead > 2<<20 || st.RootHash != root(v2, p) {
		t.Fatalf("push --changed: %+v; a full scan's root is %s", st, root(v2, p))
	}

	// --base b.img is the image generation 2 was pushed from, but a plain
	// copy shares no extents with it: the hints are unavailable.
	v3 := bytes.Clone(v2)
	v3[7<<20] ^= 1
	c := img("c.img", v3)
	st = pushImg(c, "--base", b)
	if st.ScanMode != "full" || st.HintSource != "reflink" || !strings.HasPrefix(st.FullScanReason, "hints unavailable: ") ||
		st.BytesRead != uint64(len(v3)) || st.RootHash != root(v3, p) {
		t.Fatalf("push --base of a plain copy: %+v", st)
	}

	// --base a.img, generation 1's image, is not generation 3's.
	idA, err := hint.FileIdentity(a)
	if err != nil {
		t.Fatal(err)
	}
	idC, err := hint.FileIdentity(c)
	if err != nil {
		t.Fatal(err)
	}
	st = pushImg(c, "--base", a)
	if want := fmt.Sprintf("base image %s is not the image generation 3 was pushed from (%s)", idA, idC); st.ScanMode != "full" || st.FullScanReason != want {
		t.Fatalf("push --base of an older image: %+v; want the reason %q", st, want)
	}

	// Other chunk sizes, and --full-scan, read everything whatever the list says.
	empty := img("empty.txt", []byte("[]"))
	if st = pushImg(c, "--changed", empty, "--full-scan"); st.ScanMode != "full" || st.FullScanReason != "full scan asked for" || st.RootHash != root(v3, p) {
		t.Fatalf("push --full-scan: %+v", st)
	}
	p2 := p.WithSizes(8<<10, 32<<10, 128<<10)
	st = pushImg(c, "--changed", empty, "--chunk-min", "8KiB", "--chunk-avg", "32KiB", "--chunk-max", "128KiB")
	if st.ScanMode != "full" || st.FullScanReason != "chunking parameters differ from generation 5's" || st.RootHash != root(v3, p2) {
		t.Fatalf("push with other chunk sizes: %+v", st)
	}
	if err := run("push", "--source", c, "--store", "s3://hints/vd", "--volume", "vm", "--endpoint", srv.Endpoint, "--insecure",
		"--quiet", "--base", a, "--changed", list); err == nil || !strings.Contains(err.Error(), "give one") {
		t.Fatalf("push --base --changed: %v", err)
	}

	// Every generation records its source's identity.
	s, err := objstore.Open(ctx, objstore.Config{Endpoint: srv.Endpoint, Insecure: true, Bucket: "hints", Prefix: "vd", Creds: miniotest.Creds()})
	if err != nil {
		t.Fatal(err)
	}
	for gen, src := range map[uint64]string{1: a, 3: c, 6: c} {
		want, err := hint.FileIdentity(src)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := s.GenerationImage(ctx, "vm", gen); err != nil || got != want {
			t.Errorf("generation %d records image %q (%v), want %q", gen, got, err, want)
		}
	}

	// Generation 2, pushed with --changed, pulls back as b.img.
	target := filepath.Join(dir, "target.img")
	if err := run("pull", "--store", "s3://hints/vd", "--volume", "vm", "--endpoint", srv.Endpoint, "--insecure", "--quiet",
		"--generation", "2", "--target", target, "--state-dir", filepath.Join(dir, "state")); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(target)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, v2) {
		t.Fatal("generation 2 pulled back differs from b.img")
	}
}
