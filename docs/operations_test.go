package docs

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/voldelta/voldelta/transport"
)

func readDoc(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestOperationsNamesEveryErrorCode checks that operations.md's table of
// transport error codes has a row for every code, under the name the
// agent prints ("peer reported <name>: ...", transport.ErrorCode.String).
func TestOperationsNamesEveryErrorCode(t *testing.T) {
	doc := readDoc(t, "docs/operations.md")
	for c := transport.ErrCodeProtocol; c <= transport.ErrCodeGroup; c++ {
		if strings.HasPrefix(c.String(), "error ") {
			t.Errorf("code %d has no name", c)
			continue
		}
		want := "| " + strconv.Itoa(int(c)) + " | `" + c.String() + "`"
		if !strings.Contains(doc, want) {
			t.Errorf("docs/operations.md has no row starting %q", want)
		}
	}
	if next := transport.ErrCodeGroup + 1; !strings.HasPrefix(next.String(), "error ") {
		t.Errorf("code %d (%s) exists, but operations.md's table and this test stop at %d", next, next, transport.ErrCodeGroup)
	}
}

var metricRE = regexp.MustCompile(`voldelta_(?:agent|receiver)_[a-z_]+`)

// TestOperationsListsTheMetrics checks that operations.md lists exactly
// the metrics the Kubernetes agent and receiver register.
func TestOperationsListsTheMetrics(t *testing.T) {
	var code []string
	for _, f := range []string{"internal/k8sagent/metrics.go", "internal/k8sreceiver/metrics.go"} {
		code = append(code, metricRE.FindAllString(readDoc(t, f), -1)...)
	}
	doc := metricRE.FindAllString(readDoc(t, "docs/operations.md"), -1)
	want, got := set(code), set(doc)
	if len(want) == 0 {
		t.Fatal("no metric names found in the code: did metrics.go move?")
	}
	for m := range want {
		if !got[m] {
			t.Errorf("docs/operations.md does not list metric %s", m)
		}
	}
	for m := range got {
		if !want[m] {
			t.Errorf("docs/operations.md lists metric %s, which the code does not register", m)
		}
	}
}

func set(xs []string) map[string]bool {
	m := make(map[string]bool, len(xs))
	for _, x := range xs {
		m[x] = true
	}
	return m
}
