package objstore

import (
	"path/filepath"
	"sync/atomic"
	"testing"
)

// TestPullDownloadedCountsEveryObject: PullOptions.Downloaded sees every
// object a pull downloads, the manifest and each chunk, so what it summed
// is PullStats.BytesDownloaded, for a first pull and for a delta pull.
func TestPullDownloadedCountsEveryObject(t *testing.T) {
	s := newStore(t)
	dir := t.TempDir()
	target, state := filepath.Join(dir, "target"), filepath.Join(dir, "state")
	v1 := genVolume(11, 3<<20)
	push(t, s, "db", v1, PushOptions{})
	v2, _ := mutate(12, v1, 4, 8<<10, 0)
	for i, data := range [][]byte{v1, v2} {
		if i > 0 {
			push(t, s, "db", data, PushOptions{})
		}
		var sum, calls atomic.Uint64
		st := pull(t, s, PullOptions{Volume: "db", Target: target, StateDir: state,
			Downloaded: func(n uint64) { sum.Add(n); calls.Add(1) }})
		if sum.Load() != st.BytesDownloaded || calls.Load() != st.ChunksFetched+1 {
			t.Errorf("pull %d: Downloaded summed %d bytes in %d calls; stats say %d bytes, %d chunks and the manifest",
				i+1, sum.Load(), calls.Load(), st.BytesDownloaded, st.ChunksFetched)
		}
		assertFile(t, target, data)
	}
}
