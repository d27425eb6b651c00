package receiver

import (
	"testing"
)

// TestApplyProgress: the progress an apply reports ends at what its
// result says: every byte asked for was fetched and written, copies are
// counted, the figures never go backwards, and once the plan is complete
// (Planned) nothing more is asked for.
func TestApplyProgress(t *testing.T) {
	p := smallParams()
	src := randBytes(7, 8*MiB)
	h := newHarness(t, "")
	var got []ApplyProgress
	h.opt.Progress = func(pr ApplyProgress) { got = append(got, pr) }
	first := h.mustApply(src, p)
	checkProgress(t, "first apply", got, first, uint64(len(src)))

	// A shifted copy of the first MiB at the start and a changed MiB: some
	// chunks are copied within the target, some fetched.
	next := append(append([]byte{}, src[:1*MiB]...), src...)
	copy(next[5*MiB:], randBytes(8, 1*MiB))
	got = nil
	second := h.mustApply(next, p)
	if second.CopyBytes == 0 || second.FetchBytes == 0 {
		t.Fatalf("second apply copied %d and fetched %d bytes: the test wants both", second.CopyBytes, second.FetchBytes)
	}
	checkProgress(t, "second apply", got, second, uint64(len(next)))
}

func checkProgress(t *testing.T, what string, got []ApplyProgress, r Result, size uint64) {
	t.Helper()
	if len(got) == 0 {
		t.Fatalf("%s: no progress reported", what)
	}
	for k := 1; k < len(got); k++ {
		a, b := got[k-1], got[k]
		if b.NeedBytes < a.NeedBytes || b.FetchedBytes < a.FetchedBytes || b.CopiedBytes < a.CopiedBytes || a.Planned && !b.Planned {
			t.Fatalf("%s: progress went backwards: %+v then %+v", what, a, b)
		}
		if a.Planned && b.NeedBytes != a.NeedBytes {
			t.Fatalf("%s: more asked for after the plan was complete: %+v then %+v", what, a, b)
		}
	}
	last := got[len(got)-1]
	want := ApplyProgress{SourceBytes: size, NeedBytes: r.FetchBytes, FetchedBytes: r.FetchBytes, CopiedBytes: r.CopyBytes, Planned: true}
	if last != want {
		t.Fatalf("%s: last progress %+v, want %+v (from the result %+v)", what, last, want, r)
	}
}
