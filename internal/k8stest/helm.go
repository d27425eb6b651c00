package k8stest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"

	"github.com/voldelta/voldelta/internal/toolcache"
)

// ChartDir is the directory of the voldelta Helm chart.
func ChartDir() string { return filepath.Join(RepoRoot(), "charts", "voldelta") }

// HelmBinary returns the path of the pinned helm (scripts/ensure-helm.sh),
// or an error saying how to get it.
func HelmBinary() (string, error) {
	bin := toolcache.Bin("VOLDELTA_HELM", "helm")
	if fi, err := os.Stat(bin); err != nil || fi.IsDir() {
		return "", fmt.Errorf("the chart tests need helm at %s: run `make tools` or scripts/ensure-helm.sh, or set VOLDELTA_HELM", bin)
	}
	return bin, nil
}

// Helm runs the pinned helm with args, with its cache, configuration and
// data directories under home (no repository or plugin of the machine is
// used), and returns its standard output; the error carries its standard
// error.
func Helm(ctx context.Context, home string, args ...string) ([]byte, error) {
	bin, err := HelmBinary()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("helm %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// RenderChart renders the chart in chartDir as release in namespace, CRDs
// included (helm template --include-crds), with the extra helm arguments
// (e.g. --set a=b), and decodes every object. A Manifest's File is the
// template it came from ("# Source:" of helm's output).
func RenderChart(ctx context.Context, home, chartDir, release, namespace string, args ...string) ([]Manifest, error) {
	if err := ReadChart(chartDir); err != nil {
		return nil, err
	}
	out, err := Helm(ctx, home, append([]string{"template", release, chartDir, "--namespace", namespace, "--include-crds"}, args...)...)
	if err != nil {
		return nil, err
	}
	return DecodeManifests("helm template "+release, out)
}

// ReadChart reads every file of the chart in dir. helm reads them in a
// process of its own: a test that reads them too makes go test's cache of
// its result depend on them.
func ReadChart(dir string) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		_, err = os.ReadFile(p)
		return err
	})
}

// DecodeManifests decodes the YAML documents of b (empty ones skipped),
// each named by its "# Source: " comment if it has one, else by source.
func DecodeManifests(source string, b []byte) ([]Manifest, error) {
	rd := utilyaml.NewYAMLReader(bufioReader(b))
	var out []Manifest
	for {
		doc, err := rd.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", source, err)
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		name := source
		for _, l := range strings.Split(string(doc), "\n") {
			if s, ok := strings.CutPrefix(l, "# Source: "); ok {
				name = s
				break
			}
		}
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(doc, &u.Object); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if u.GetKind() == "" || u.GetAPIVersion() == "" || u.GetName() == "" {
			return nil, fmt.Errorf("%s: a document without apiVersion, kind or name", name)
		}
		raw, err := u.MarshalJSON()
		if err != nil {
			return nil, err
		}
		out = append(out, Manifest{File: name, Raw: raw, Object: u})
	}
}

// WriteKubeconfig writes a kubeconfig of the control plane's admin (a
// member of system:masters) to path, for tools such as helm.
func (cp *ControlPlane) WriteKubeconfig(path string) error {
	return cp.WriteKubeconfigContexts(path, map[string]string{"test": ""})
}

// WriteKubeconfigContexts writes a kubeconfig of the control plane's admin
// with one context per name, each in the namespace given ("" the
// default); the first name in order is the current context. Two contexts
// on one control plane can play a source and a destination cluster.
func (cp *ControlPlane) WriteKubeconfigContexts(path string, namespaces map[string]string) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: cp.Config.Host, CertificateAuthorityData: cp.Config.CAData}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: cp.Config.BearerToken}
	for _, name := range slices.Sorted(maps.Keys(namespaces)) {
		kc.Contexts[name] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "admin", Namespace: namespaces[name]}
		if kc.CurrentContext == "" {
			kc.CurrentContext = name
		}
	}
	return clientcmd.WriteToFile(*kc, path)
}
