package main

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// TestQuick runs the short subset of the fault suite (one SIGKILL of each
// side, a tampered file target, a lost journal, a garbage state file)
// against the binary built from this tree, as `go run ./faults -quick`
// does. A FAIL row fails the test: those are the guarantees of
// docs/reliability.md. FAULTS_ONLY narrows it.
func TestQuick(t *testing.T) {
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	e, err := NewEnv(root, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Cleanup)
	e.SizeMiB = 64
	e.Log = testLog{t}
	e.SetSeed(uint64(time.Now().UnixNano()))
	t.Logf("seed %d", e.Seed)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rows := RunCases(ctx, e, Cases(true), os.Getenv("FAULTS_ONLY"))
	var b strings.Builder
	PrintTable(&b, rows)
	t.Logf("\n%s", b.String())
	for _, r := range rows {
		switch r.Verdict {
		case "FAIL":
			t.Errorf("%s: FAIL (data lost: %v): %s", r.Case, r.DataLost, r.Observed)
		case "SKIP":
			t.Errorf("%s: not run: %s (run the tests as root: the fault suite needs loop devices and mounts)", r.Case, r.Observed)
		}
		for _, d := range r.Details {
			t.Log("  ", d)
		}
	}
}

type testLog struct{ t *testing.T }

func (w testLog) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}
