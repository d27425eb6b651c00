package k8stest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// Kustomization is the part of a kustomization.yaml that deploy/ uses.
type Kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Namespace  string   `json:"namespace"`
	Resources  []string `json:"resources"`
	Images     []struct {
		Name    string `json:"name"`
		NewName string `json:"newName"`
		NewTag  string `json:"newTag"`
	} `json:"images"`
}

// ClusterScopedKinds are the cluster-scoped kinds deploy/ uses.
var ClusterScopedKinds = map[string]bool{"Namespace": true, "ClusterRole": true, "ClusterRoleBinding": true,
	"CustomResourceDefinition": true, "VolumeSnapshotClass": true}

// Manifest is one object of a manifest file.
type Manifest struct {
	File   string // path relative to the kustomization's directory tree
	Raw    []byte // the YAML document
	Object *unstructured.Unstructured
}

// LoadKustomization reads dir/kustomization.yaml and the objects of its
// resources, recursively (a resource that is a directory is a
// kustomization itself), setting the namespace of namespaced objects as
// kustomize does (a Namespace object or a cluster-scoped kind listed in
// clusterScoped keeps none). It checks that every resource exists and that
// every .yaml file in dir is listed. No other kustomize feature is
// interpreted except images, whose names are rewritten in containers.
func LoadKustomization(dir string, clusterScoped map[string]bool) ([]Manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		return nil, err
	}
	var k Kustomization
	if err := yaml.UnmarshalStrict(b, &k); err != nil {
		return nil, fmt.Errorf("%s/kustomization.yaml: %w", dir, err)
	}
	if k.Kind != "Kustomization" || len(k.Resources) == 0 {
		return nil, fmt.Errorf("%s/kustomization.yaml: kind %q with %d resources", dir, k.Kind, len(k.Resources))
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		n := e.Name()
		if !e.IsDir() && filepath.Ext(n) == ".yaml" && n != "kustomization.yaml" && !slices.Contains(k.Resources, n) {
			return nil, fmt.Errorf("%s: %s is not listed in kustomization.yaml", dir, n)
		}
	}
	var out []Manifest
	for _, r := range k.Resources {
		p := filepath.Join(dir, r)
		fi, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("%s/kustomization.yaml: resource %s: %w", dir, r, err)
		}
		var ms []Manifest
		if fi.IsDir() {
			ms, err = LoadKustomization(p, clusterScoped)
		} else {
			ms, err = LoadManifestFile(p)
		}
		if err != nil {
			return nil, err
		}
		out = append(out, ms...)
	}
	for i := range out {
		m := &out[i]
		kind := m.Object.GetKind()
		if k.Namespace != "" && kind != "Namespace" && !clusterScoped[kind] {
			m.Object.SetNamespace(k.Namespace)
		}
		for _, img := range k.Images {
			rewriteImage(m.Object, img.Name, img.NewName+":"+img.NewTag)
		}
		if m.Raw, err = m.Object.MarshalJSON(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func rewriteImage(u *unstructured.Unstructured, name, to string) {
	cs, ok, _ := unstructured.NestedSlice(u.Object, "spec", "template", "spec", "containers")
	if !ok {
		return
	}
	for _, c := range cs {
		if m, ok := c.(map[string]any); ok && m["image"] == name {
			m["image"] = to
		}
	}
	unstructured.SetNestedSlice(u.Object, cs, "spec", "template", "spec", "containers")
}

// LoadManifestFile reads every YAML document of a file.
func LoadManifestFile(path string) ([]Manifest, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	rd := utilyaml.NewYAMLReader(bufioReader(b))
	var out []Manifest
	for {
		doc, err := rd.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(doc, &u.Object); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if u.GetKind() == "" || u.GetAPIVersion() == "" || u.GetName() == "" {
			return nil, fmt.Errorf("%s: a document without apiVersion, kind or name", path)
		}
		out = append(out, Manifest{File: path, Raw: doc, Object: u})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no objects", path)
	}
	return out, nil
}

func stripComments(doc []byte) []byte {
	var out [][]byte
	for _, l := range bytes.Split(doc, []byte("\n")) {
		if t := bytes.TrimSpace(l); len(t) > 0 && t[0] != '#' && !bytes.Equal(t, []byte("---")) {
			out = append(out, l)
		}
	}
	return bytes.Join(out, []byte("\n"))
}

func bufioReader(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }
