package longhorn

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// mkReplicaDir makes dataPath/replicas/name with a volume.meta (nil: none).
func mkReplicaDir(t *testing.T, dataPath, name string, info *lhInfo) string {
	t.Helper()
	dir := filepath.Join(dataPath, "replicas", name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if info != nil {
		data, _ := json.Marshal(info)
		if err := os.WriteFile(filepath.Join(dir, volumeMetaFile), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestFindReplica(t *testing.T) {
	ok := &lhInfo{Size: mib, Head: "volume-head-001.img", Dirty: true}
	rebuilding := &lhInfo{Size: mib, Head: "volume-head-001.img", Rebuilding: true}
	failed := &lhInfo{Size: mib, Head: "volume-head-001.img", Error: "disk gone"}

	data := t.TempDir()
	want := mkReplicaDir(t, data, "pvc-1-0123abcd", ok)
	mkReplicaDir(t, data, "pvc-1-89abcdef", rebuilding)
	mkReplicaDir(t, data, "pvc-1-deadbeef", failed)
	mkReplicaDir(t, data, "pvc-1-12345678", nil)                                // no volume.meta
	mkReplicaDir(t, data, "pvc-1-2-0123abcd", ok)                               // volume pvc-1-2
	mkReplicaDir(t, data, "pvc-1-0123ABCD", ok)                                 // not lower-case hex
	mkReplicaDir(t, data, "pvc-1-0123abc", ok)                                  // 7 digits
	mkReplicaDir(t, data, "pvc-10-0123abcd", ok)                                // volume pvc-10
	os.WriteFile(filepath.Join(data, "replicas", "pvc-1-aaaaaaaa"), nil, 0o644) // a file

	got, err := FindReplica(data, "pvc-1")
	if err != nil || got != want {
		t.Fatalf("FindReplica = %q, %v; want %q", got, err, want)
	}
	cands, err := FindReplicas(data, "pvc-1")
	if err != nil || len(cands) != 4 {
		t.Fatalf("FindReplicas = %+v, %v", cands, err)
	}
	usable := 0
	for _, c := range cands {
		if c.Usable() {
			usable++
		}
	}
	if usable != 1 {
		t.Fatalf("%d usable candidates", usable)
	}
	if got, err := FindReplica(data, "pvc-1-2"); err != nil || filepath.Base(got) != "pvc-1-2-0123abcd" {
		t.Fatalf("FindReplica(pvc-1-2) = %q, %v", got, err)
	}

	// A second usable replica makes it ambiguous.
	mkReplicaDir(t, data, "pvc-1-00000000", ok)
	if _, err := FindReplica(data, "pvc-1"); !errors.Is(err, ErrAmbiguousReplica) {
		t.Fatalf("two usable replicas: %v", err)
	}

	// Only unusable ones: not found, with the reasons.
	data2 := t.TempDir()
	mkReplicaDir(t, data2, "pvc-1-89abcdef", rebuilding)
	_, err = FindReplica(data2, "pvc-1")
	if !errors.Is(err, ErrReplicaNotFound) || !strings.Contains(err.Error(), "rebuilding") {
		t.Fatalf("only a rebuilding replica: %v", err)
	}
	if _, err := FindReplica(data2, "pvc-2"); !errors.Is(err, ErrReplicaNotFound) {
		t.Fatalf("no replica: %v", err)
	}
	if _, err := FindReplica(t.TempDir(), "pvc-1"); !errors.Is(err, ErrReplicaNotFound) {
		t.Fatalf("no replicas directory: %v", err)
	}
	for _, v := range []string{"", "a/b"} {
		if _, err := FindReplica(data, v); err == nil {
			t.Fatalf("volume %q accepted", v)
		}
	}
}

// TestFindThenRead: the directory FindReplica returns opens and reads.
func TestFindThenRead(t *testing.T) {
	f := overlapping(t)
	dir, err := FindReplica(filepath.Dir(filepath.Dir(f.dir)), "pvc-test")
	if err == nil {
		t.Fatalf("found %s outside a replicas directory", dir)
	}
	data := t.TempDir()
	if err := os.Mkdir(filepath.Join(data, "replicas"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(f.dir, filepath.Join(data, "replicas", filepath.Base(f.dir))); err != nil {
		t.Fatal(err)
	}
	dir, err = FindReplica(data, "pvc-test")
	if err != nil {
		t.Fatal(err)
	}
	f.dir = dir
	checkImage(t, f, f.open(), "s2")
}
