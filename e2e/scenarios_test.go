package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/voldelta/voldelta/agent"
	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/receiver"
	"github.com/voldelta/voldelta/transport"
)

const MiB = 1 << 20

// TestScenarios is the engine's acceptance: starting from a 256 MiB random
// source, after each change one sync makes the target byte-identical, and
// the bytes sent stay proportional to the change.
func TestScenarios(t *testing.T) {
	for _, verify := range []receiver.VerifyMode{receiver.VerifyWritten, receiver.VerifyFull} {
		t.Run(string(verify), func(t *testing.T) { runScenarios(t, verify) })
	}
}

func runScenarios(t *testing.T, verify receiver.VerifyMode) {
	p := newPair(t, pairOpts{verify: verify})
	src := filepath.Join(p.dir, "source.img")
	tgt := p.targets["vol"]
	data := randBytes(1, 256*MiB)

	steps := []struct {
		name   string
		change func([]byte) []byte
		// maxSent bounds the raw bytes sent for the change.
		maxSent uint64
		check   func(t *testing.T, st *agent.Stats)
	}{
		{"initial", func(b []byte) []byte { return b }, 256 * MiB, func(t *testing.T, st *agent.Stats) {
			if st.ChunksSent != st.ChunksData || st.TargetState != "new" || st.Generation != 1 {
				t.Errorf("initial sync: sent %d of %d data chunks, target %s, generation %d", st.ChunksSent, st.ChunksData, st.TargetState, st.Generation)
			}
		}},
		{"append 3 MiB", func(b []byte) []byte { return append(b, randBytes(2, 3*MiB)...) }, 3*MiB + 2*MiB, nil},
		{"scattered 4 KiB overwrites", func(b []byte) []byte {
			for k := 0; k < 40; k++ {
				off := (k*6151 + 17) * 4096 % (len(b) - 4096)
				copy(b[off:], randBytes(uint64(100+k), 4096))
			}
			return b
		}, 40 * 2 * MiB, func(t *testing.T, st *agent.Stats) {
			if st.ChunksSent == 0 || st.ChunksSent > 80 {
				t.Errorf("40 scattered overwrites sent %d chunks", st.ChunksSent)
			}
		}},
		{"1 MiB inserted in the middle", func(b []byte) []byte {
			mid := len(b)/2 + 12345
			out := append([]byte{}, b[:mid]...)
			out = append(out, randBytes(3, MiB)...)
			return append(out, b[mid:]...)
		}, MiB + 8*MiB, func(t *testing.T, st *agent.Stats) {
			if st.ChunksCopied == 0 {
				t.Error("shifted data was not copied locally")
			}
		}},
		{"range deleted", func(b []byte) []byte {
			at := len(b) / 3
			return append(b[:at:at], b[at+5*MiB:]...)
		}, 8 * MiB, nil},
		{"regions moved and swapped", func(b []byte) []byte {
			a, c := 20*MiB, 150*MiB
			tmp := append([]byte{}, b[a:a+16*MiB]...)
			copy(b[a:], b[c:c+16*MiB])
			copy(b[c:], tmp)
			copy(b[90*MiB:], append([]byte{}, b[200*MiB:208*MiB]...)) // move over existing data
			return b
		}, 12 * MiB, func(t *testing.T, st *agent.Stats) {
			if st.BytesCopied < 30*MiB {
				t.Errorf("moved and swapped 40 MiB but copied only %d bytes locally", st.BytesCopied)
			}
		}},
		{"range zeroed", func(b []byte) []byte { clear(b[60*MiB : 70*MiB]); return b }, 2 * MiB, func(t *testing.T, st *agent.Stats) {
			if st.ChunksZeroed == 0 {
				t.Error("no zero run written")
			}
		}},
		{"grow", func(b []byte) []byte {
			b = append(b, make([]byte, 20*MiB)...)
			return append(b, randBytes(4, 12*MiB)...)
		}, 12*MiB + 2*MiB, nil},
		{"shrink", func(b []byte) []byte { return b[:len(b)-40*MiB] }, 2 * MiB, nil},
		{"unchanged", func(b []byte) []byte { return b }, 0, func(t *testing.T, st *agent.Stats) {
			if st.ChunksSent != 0 || st.ChunksSkipped != st.ManifestEntries {
				t.Errorf("unchanged source: sent %d chunks, skipped %d of %d entries", st.ChunksSent, st.ChunksSkipped, st.ManifestEntries)
			}
		}},
	}
	var gen uint64
	for _, s := range steps {
		data = s.change(data)
		writeFile(t, src, data)
		st := p.sync(src, "vol")
		assertSame(t, tgt, data)
		gen++
		if st.Generation != gen {
			t.Fatalf("%s: generation %d, want %d", s.name, st.Generation, gen)
		}
		if want := rootOf(t, data); st.RootHash != want.String() {
			t.Fatalf("%s: root %s, want %s", s.name, st.RootHash, want)
		}
		if st.BytesSentRaw > s.maxSent {
			t.Errorf("%s: sent %d bytes, want at most %d", s.name, st.BytesSentRaw, s.maxSent)
		}
		if s.check != nil {
			s.check(t, st)
		}
		vs, err := receiver.ReadStatus(p.stateDir, "vol")
		if err != nil || !vs.Current || vs.Incomplete || vs.Generation != gen || vs.Root != st.RootHash {
			t.Fatalf("%s: status %+v, %v", s.name, vs, err)
		}
		t.Logf("%-28s sent %4d/%4d chunks, %9d raw bytes, %9d wire bytes, copied %3d (%d bytes), zeroed %d, skipped %d",
			s.name, st.ChunksSent, st.ChunksTotal, st.BytesSentRaw, st.WireBytes, st.ChunksCopied, st.BytesCopied, st.ChunksZeroed, st.ChunksSkipped)
	}
}

// TestAppendWireBytes: a 3 MiB append to a 256 MiB volume costs at most
// 1.05 × 3 MiB on the wire plus the manifest.
func TestAppendWireBytes(t *testing.T) {
	p := newPair(t, pairOpts{})
	src := filepath.Join(p.dir, "source.img")
	data := randBytes(7, 256*MiB)
	writeFile(t, src, data)
	p.sync(src, "vol")
	data = append(data, randBytes(8, 3*MiB)...)
	writeFile(t, src, data)
	st := p.sync(src, "vol")
	assertSame(t, p.targets["vol"], data)
	limit := int64(3*MiB*105/100) + int64(st.ManifestBytes)
	t.Logf("3 MiB append: wire_bytes %d, manifest_bytes %d (%d entries), limit %d, chunks sent %d, raw %d",
		st.WireBytes, st.ManifestBytes, st.ManifestEntries, limit, st.ChunksSent, st.BytesSentRaw)
	if st.WireBytes > limit {
		t.Fatalf("wire bytes %d above 1.05 × 3 MiB + manifest (%d)", st.WireBytes, limit)
	}
}

// TestResumeAfterAgentCancel: an agent that gives up half way leaves the
// target incomplete (never current); the next sync resumes and sends only
// what is missing.
func TestResumeAfterAgentCancel(t *testing.T) {
	p := newPair(t, pairOpts{})
	src := filepath.Join(p.dir, "source.img")
	data := randBytes(9, 96*MiB)
	writeFile(t, src, data)

	ctx, cancel := context.WithCancel(context.Background())
	opt := p.options(src, "vol")
	opt.Transport.Streams = 1
	opt.Transport.BandwidthLimit = 16 * MiB // far from done when cancelled at 40 MiB
	opt.Progress = func(pr agent.Progress) {
		if pr.SentBytes > 40*MiB {
			cancel()
		}
	}
	if _, err := agent.Sync(ctx, opt); err == nil {
		t.Fatal("cancelled sync succeeded")
	}
	p.stop() // wait until the receiver has recorded what it wrote
	vs, err := receiver.ReadStatus(p.stateDir, "vol")
	if err != nil {
		t.Fatal(err)
	}
	if vs.Current || !vs.Incomplete {
		t.Fatalf("after an interrupted first sync the target is reported %+v", vs)
	}
	p.start()
	st := p.sync(src, "vol")
	assertSame(t, p.targets["vol"], data)
	t.Logf("resume: second run sent %d of %d chunks (%d bytes)", st.ChunksSent, st.ChunksData, st.BytesSentRaw)
	if st.ChunksSent == 0 || st.ChunksSent >= st.ChunksData*3/4 {
		t.Fatalf("resume sent %d of %d chunks; want only the part not written before", st.ChunksSent, st.ChunksData)
	}
	if st.TargetState != "incomplete" {
		t.Errorf("WELCOME said %q, want incomplete", st.TargetState)
	}
}

// TestTargetChangedOutside: a file target modified behind the receiver's
// back is re-indexed, and the sync still makes it identical.
func TestTargetChangedOutside(t *testing.T) {
	p := newPair(t, pairOpts{})
	src := filepath.Join(p.dir, "source.img")
	data := randBytes(10, 32*MiB)
	writeFile(t, src, data)
	p.sync(src, "vol")
	f, err := os.OpenFile(p.targets["vol"], os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(randBytes(11, 100000), 5*MiB)
	f.Close()
	st := p.sync(src, "vol")
	assertSame(t, p.targets["vol"], data)
	if st.ChunksSent == 0 || st.ChunksSent > 4 {
		t.Fatalf("repairing a 100 kB outside change sent %d chunks", st.ChunksSent)
	}
}

// TestSeededTarget: a target that already holds most of the data (copied by
// other means) is indexed by reading it, and only the rest is sent.
func TestSeededTarget(t *testing.T) {
	p := newPair(t, pairOpts{})
	src := filepath.Join(p.dir, "source.img")
	data := randBytes(12, 48*MiB)
	writeFile(t, src, data)
	seed := append([]byte{}, data...)
	copy(seed[10*MiB:], randBytes(13, 2*MiB))
	writeFile(t, p.targets["vol"], seed)
	st := p.sync(src, "vol")
	assertSame(t, p.targets["vol"], data)
	if st.BytesSentRaw > 5*MiB {
		t.Fatalf("seeded target: sent %d bytes for a 2 MiB difference", st.BytesSentRaw)
	}
}

func TestRefusals(t *testing.T) {
	p := newPair(t, pairOpts{})
	src := filepath.Join(p.dir, "source.img")
	writeFile(t, src, randBytes(14, 2*MiB))

	_, err := agent.Sync(context.Background(), p.options(src, "nope"))
	if remoteCode(err) != transport.ErrCodeUnknown {
		t.Errorf("unknown volume: %v", err)
	}
	if _, err := agent.Sync(context.Background(), p.options(src, "../etc")); !errors.Is(err, transport.ErrInvalidVolumeName) {
		t.Errorf("invalid volume name: %v", err)
	}
	opt := p.options(src, "vol")
	opt.Transport.TLS = nil
	opt.Transport.Insecure = true
	if _, err := agent.Sync(context.Background(), opt); err == nil {
		t.Error("plain TCP agent accepted by a TLS receiver")
	}
	if _, err := os.Stat(p.targets["vol"]); !os.IsNotExist(err) {
		t.Errorf("a refused sync created the target: %v", err)
	}
}

func TestMultipleTargets(t *testing.T) {
	dir := t.TempDir()
	targets := map[string]string{}
	for i := 0; i < 3; i++ {
		targets[fmt.Sprintf("v%d", i)] = filepath.Join(dir, fmt.Sprintf("t%d.img", i))
	}
	p := newPair(t, pairOpts{targets: targets})
	errs := make(chan error, 3)
	datas := make([][]byte, 3)
	for i := 0; i < 3; i++ {
		datas[i] = randBytes(uint64(20+i), 8*MiB)
		src := filepath.Join(dir, fmt.Sprintf("s%d.img", i))
		writeFile(t, src, datas[i])
		go func() {
			_, err := agent.Sync(context.Background(), p.options(src, fmt.Sprintf("v%d", i)))
			errs <- err
		}()
	}
	for i := 0; i < 3; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 3; i++ {
		assertSame(t, targets[fmt.Sprintf("v%d", i)], datas[i])
	}
}

// TestChangedExtentHints: a round given the previous manifest and the
// changed extents (Options.Previous/Changed, as the caller vouches) reads
// about the changed bytes and still converges.
func TestChangedExtentHints(t *testing.T) {
	p := newPair(t, pairOpts{})
	src := filepath.Join(p.dir, "source.img")
	data := randBytes(50, 200*MiB)
	writeFile(t, src, data)
	first := p.sync(src, "vol")
	copy(data[130*MiB:], randBytes(51, 2*MiB))
	writeFile(t, src, data)
	opt := p.options(src, "vol")
	opt.Previous = first.Manifest
	opt.Changed = []chunk.Extent{{Offset: 130 * MiB, Length: 2 * MiB}}
	st, err := agent.Sync(context.Background(), opt)
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, p.targets["vol"], data)
	t.Logf("hinted round: read %d and reused %d of %d bytes, sent %d chunks", st.BytesRead, st.ReusedBytes, st.SourceBytes, st.ChunksSent)
	if st.ScanMode != agent.ScanIncremental || st.BytesRead > 2*MiB+4*chunk.DefaultMaxSize || st.BytesRead+st.ReusedBytes < 200*MiB || st.ChunksSent == 0 {
		t.Fatalf("scan %s: read %d, reused %d bytes, sent %d chunks", st.ScanMode, st.BytesRead, st.ReusedBytes, st.ChunksSent)
	}
}
