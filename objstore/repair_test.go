package objstore

import (
	"bytes"
	"context"
	"crypto/md5"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/minio/minio-go/v7"
	"github.com/voldelta/voldelta/chunk"
)

// firstChunk returns the first data entry of generation gen of vol.
func firstChunk(t *testing.T, s *Store, vol string, gen uint64) chunk.Entry {
	t.Helper()
	m, _, err := s.ReadManifest(context.Background(), vol, gen)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range m.Entries {
		if !e.Zero {
			return e
		}
	}
	t.Fatal("no data entry")
	return chunk.Entry{}
}

// damage replaces the chunk object of e with its bytes with one bit
// flipped (the same size), as a bad disk or a stray writer would leave it.
// With forgeMeta, the replacement carries metadata that matches it (a
// damage no HEAD request can see); otherwise it has none.
func damage(t *testing.T, s *Store, e chunk.Entry, forgeMeta bool) {
	t.Helper()
	ctx := context.Background()
	cl := adminClient(t)
	key := s.chunkKey(e.ID)
	o, err := cl.GetObject(ctx, s.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	obj, err := io.ReadAll(o)
	o.Close()
	if err != nil {
		t.Fatal(err)
	}
	obj[len(obj)/2] ^= 0x10
	opt := minio.PutObjectOptions{}
	if forgeMeta {
		m := metaOf(obj, e.Length)
		if m.md5 != md5.Sum(obj) {
			t.Fatal("metaOf")
		}
		opt.UserMetadata = m.userMetadata()
	}
	if _, err := cl.PutObject(ctx, s.bucket, key, bytes.NewReader(obj), int64(len(obj)), opt); err != nil {
		t.Fatal(err)
	}
}

// pullErr pulls the latest generation of vol into a fresh target and
// returns the error; on success the target must hold want.
func pullErr(t *testing.T, s *Store, vol string, want []byte) error {
	t.Helper()
	dir := t.TempDir()
	target := filepath.Join(dir, "t.img")
	_, err := s.Pull(context.Background(), PullOptions{Volume: vol, Target: target, StateDir: dir})
	if err == nil {
		assertFile(t, target, want)
	}
	return err
}

// assertDamagedChunkError checks that a pull's err names the damaged chunk
// object and how to repair it.
func assertDamagedChunkError(t *testing.T, s *Store, err error, e chunk.Entry) {
	t.Helper()
	var ce *ChunkError
	if !errors.Is(err, ErrCorrupt) || !errors.As(err, &ce) || ce.Key != s.chunkKey(e.ID) || ce.ID != e.ID {
		t.Fatalf("pull of a generation with a damaged chunk: %v, want a ChunkError (ErrCorrupt) for %s", err, s.chunkKey(e.ID))
	}
	for _, want := range []string{s.chunkKey(e.ID), "is damaged", "voldelta push --confirm-all --volume v"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("pull error does not say %q: %v", want, err)
		}
	}
}

// 14a: a chunk object damaged in the store is named by pull, with the way
// to repair it; a plain push trusts it (it is referenced by a manifest);
// push --confirm-all finds it by its HEAD and re-uploads it, and the pull
// then succeeds, also of the older generation.
func TestConfirmAllRepairsDamagedChunk(t *testing.T) {
	s := newStore(t)
	v := genVolume(21, 4<<20)
	push(t, s, "v", v, PushOptions{})
	victim := firstChunk(t, s, "v", 1)
	damage(t, s, victim, false)

	err := pullErr(t, s, "v", v)
	assertDamagedChunkError(t, s, err, victim)
	t.Logf("pull: %v", err)

	plain := push(t, s, "v", v, PushOptions{})
	if plain.ChunksUploaded != 0 || plain.ChunksRepaired != 0 {
		t.Fatalf("plain push: %+v", plain)
	}
	st := push(t, s, "v", v, PushOptions{ConfirmAll: true})
	t.Logf("confirm-all push: %d reused chunks confirmed, %d repaired, %d uploaded", st.ChunksConfirmed, st.ChunksRepaired, st.ChunksUploaded)
	if st.ChunksRepaired != 1 || st.ChunksUploaded != 1 || st.ChunksConfirmed != st.ChunksReused {
		t.Fatalf("confirm-all push did not repair exactly the damaged chunk: %+v", st)
	}
	if err := pullErr(t, s, "v", v); err != nil {
		t.Fatalf("pull after the repair: %v", err)
	}
	if err := tryPull(t, s, "v", 1, v); err != nil {
		t.Fatalf("pull of generation 1 after the repair: %v", err)
	}
	// Repaired: the next confirm-all push finds nothing to do.
	if again := push(t, s, "v", v, PushOptions{ConfirmAll: true}); again.ChunksRepaired != 0 || again.ChunksUploaded != 0 {
		t.Fatalf("second confirm-all push: %+v", again)
	}
}

// 14a: a damage a HEAD cannot see (the object's metadata and ETag agree
// with its wrong bytes) is repaired by VerifyChunks, which downloads and
// re-hashes every reused chunk; ConfirmAll alone leaves it.
func TestVerifyChunksRepairsInvisibleDamage(t *testing.T) {
	s := newStore(t)
	v := genVolume(22, 4<<20)
	push(t, s, "v", v, PushOptions{})
	victim := firstChunk(t, s, "v", 1)
	damage(t, s, victim, true)
	assertDamagedChunkError(t, s, pullErr(t, s, "v", v), victim)

	head := push(t, s, "v", v, PushOptions{ConfirmAll: true})
	if head.ChunksRepaired != 0 {
		t.Fatalf("HEADs saw a damage that matches its metadata: %+v", head)
	}
	st := push(t, s, "v", v, PushOptions{VerifyChunks: true})
	t.Logf("verify-chunks push: %d reused chunks downloaded and re-hashed, %d repaired", st.ChunksConfirmed, st.ChunksRepaired)
	if st.ChunksRepaired != 1 || st.ChunksUploaded != 1 || st.ChunksConfirmed != st.ChunksReused {
		t.Fatalf("verify-chunks push: %+v", st)
	}
	if err := pullErr(t, s, "v", v); err != nil {
		t.Fatalf("pull after the repair: %v", err)
	}
}

// changingReader returns other's bytes once changed is set.
type changingReader struct {
	data, other []byte
	changed     atomic.Bool
}

func (r *changingReader) ReadAt(p []byte, off int64) (int, error) {
	src := r.data
	if r.changed.Load() {
		src = r.other
	}
	return bytes.NewReader(src).ReadAt(p, off)
}

// 14a: a repair re-reads the chunk from the source and checks its hash
// before it overwrites the object: a source that changed since the scan
// fails the push and leaves the object (and no new generation) alone.
func TestRepairNeverWritesWrongBytes(t *testing.T) {
	s := newStore(t)
	v := genVolume(23, 4<<20)
	push(t, s, "v", v, PushOptions{})
	victim := firstChunk(t, s, "v", 1)
	damage(t, s, victim, false)
	before, err := s.stat(context.Background(), "stat", s.chunkKey(victim.ID))
	if err != nil {
		t.Fatal(err)
	}
	other := bytes.Clone(v)
	for i := range other {
		other[i] ^= 0xff
	}
	src := &changingReader{data: v, other: other}
	_, err = s.Push(context.Background(), src, uint64(len(v)), PushOptions{Volume: "v", Params: smallParams(), ConfirmAll: true,
		afterUpload: func(context.Context) error { src.changed.Store(true); return nil }})
	if !errors.Is(err, ErrSourceChanged) || !strings.Contains(err.Error(), s.chunkKey(victim.ID)) {
		t.Fatalf("repair from a changed source: %v, want ErrSourceChanged naming the chunk", err)
	}
	after, err := s.stat(context.Background(), "stat", s.chunkKey(victim.ID))
	if err != nil || after.ETag != before.ETag {
		t.Fatalf("the damaged object was overwritten: ETag %s → %s (%v)", before.ETag, after.ETag, err)
	}
	if gens, err := s.Generations(context.Background(), "v"); err != nil || len(gens) != 1 {
		t.Fatalf("generations %v (%v) after the failed push", gens, err)
	}
}
