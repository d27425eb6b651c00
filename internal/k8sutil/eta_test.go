package k8sutil

import (
	"testing"
	"time"
)

func TestETA(t *testing.T) {
	if r := Rate(300, 3*time.Second); r != 100 {
		t.Fatalf("rate %v, want 100", r)
	}
	if r := Rate(300, 0); r != 0 {
		t.Fatalf("rate with no time %v, want 0", r)
	}
	for _, c := range []struct {
		done, total uint64
		rate        float64
		known       bool
		want        string // "" for nil
	}{
		{100, 1000, 100, true, "9s"},
		{100, 1000, 0, true, ""},
		{100, 1000, 100, false, ""},
		{1000, 1000, 0, true, "0s"},
		{1, 1000, 1000, true, "1s"}, // rounded up: never 0 s before the end
	} {
		got := ETA(c.done, c.total, c.rate, c.known)
		switch {
		case c.want == "" && got != nil:
			t.Errorf("ETA(%+v) = %v, want none", c, got.Duration)
		case c.want != "" && (got == nil || got.Duration.String() != c.want):
			t.Errorf("ETA(%+v) = %v, want %s", c, got, c.want)
		}
	}
}
