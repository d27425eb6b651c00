package v1alpha1_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestGeneratedFilesAreCurrent regenerates the deepcopy methods and the CRD
// manifests with the pinned controller-gen into a temporary directory and
// fails if they differ from the committed ones: run `make generate`.
func TestGeneratedFilesAreCurrent(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	cmd := exec.Command(filepath.Join(root, "scripts", "generate.sh"), out)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("scripts/generate.sh: %v\n%s\n(controller-gen is built from tools/controller-gen through the Go module proxy)", err, b)
	}
	compare := func(generated, committed string) {
		t.Helper()
		want, err := os.ReadFile(generated)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(committed)
		if err != nil {
			t.Fatalf("%v: run `make generate`", err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: run `make generate` and commit the result", committed)
		}
	}
	compare(filepath.Join(out, "object", "zz_generated.deepcopy.go"), filepath.Join(root, "api", "v1alpha1", "zz_generated.deepcopy.go"))
	crds, err := filepath.Glob(filepath.Join(out, "crds", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(crds) == 0 {
		t.Fatal("controller-gen generated no CRD")
	}
	for _, f := range crds {
		compare(f, filepath.Join(root, "deploy", "crds", filepath.Base(f)))
	}
	committed, _ := filepath.Glob(filepath.Join(root, "deploy", "crds", "*_*.yaml")) // not kustomization.yaml
	if len(committed) != len(crds) {
		t.Errorf("deploy/crds has %d manifests, controller-gen makes %d: remove the stale ones", len(committed), len(crds))
	}
}
