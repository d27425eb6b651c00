package k8stest_test

import (
	"context"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/voldelta/voldelta/internal/k8stest"
)

// buildPlugin builds the voldelta binary as the kubectl plugin
// (kubectl-voldelta) into a directory of t's.
func buildPlugin(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "kubectl-voldelta")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/voldelta")
	cmd.Dir = k8stest.RepoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/voldelta: %v\n%s", err, out)
	}
	return bin
}

// kubectlVoldelta runs the plugin bin with kubeconfig and args, and
// returns what it printed.
func kubectlVoldelta(t *testing.T, ctx context.Context, bin, kubeconfig string, args ...string) string {
	t.Helper()
	out, err := exec.CommandContext(ctx, bin, append(args, "--kubeconfig", kubeconfig)...).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl voldelta %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// wantRow fails t unless out has a row whose first field is name and
// whose fields include each of want.
func wantRow(t *testing.T, out, name string, want ...string) {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || f[0] != name {
			continue
		}
		for _, w := range want {
			if !slices.Contains(f, w) {
				t.Errorf("row %s lacks %q: %q", name, w, l)
			}
		}
		return
	}
	t.Errorf("no row %s in\n%s", name, out)
}
