package deploy_test

// The Helm chart in charts/voldelta renders the objects of the kustomize
// bases: the tests below keep the two in step, lint the chart (helm lint
// --strict) and check what its values change. They run the pinned helm
// (scripts/ensure-helm.sh, `make tools`).

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"

	"github.com/voldelta/voldelta/internal/k8stest"
)

const (
	chartRelease   = "voldelta"
	chartNamespace = "voldelta-system" // the kustomize bases' namespace
)

// helmOnlyLabels are the labels the chart adds to the kustomize bases'
// (metadata.labels and pod templates' labels); selectors carry none of them.
var helmOnlyLabels = []string{"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance", "app.kubernetes.io/version"}

func render(t *testing.T, args ...string) []k8stest.Manifest {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ms, err := k8stest.RenderChart(ctx, t.TempDir(), k8stest.ChartDir(), chartRelease, chartNamespace, args...)
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

func objKey(u *unstructured.Unstructured) string {
	return u.GetAPIVersion() + " " + u.GetKind() + " " + u.GetNamespace() + "/" + u.GetName()
}

// normalized is the object without the chart's own labels.
func normalized(u *unstructured.Unstructured) map[string]any {
	o := u.DeepCopy().Object
	strip := func(fields ...string) {
		labels, ok, _ := unstructured.NestedStringMap(o, fields...)
		if !ok {
			return
		}
		for _, l := range helmOnlyLabels {
			delete(labels, l)
		}
		unstructured.SetNestedStringMap(o, labels, fields...)
	}
	strip("metadata", "labels")
	strip("spec", "template", "metadata", "labels")
	return o
}

// diff lists the paths where a and b differ.
func diff(path string, a, b any) []string {
	am, aok := a.(map[string]any)
	bm, bok := b.(map[string]any)
	if aok && bok {
		keys := map[string]bool{}
		for k := range am {
			keys[k] = true
		}
		for k := range bm {
			keys[k] = true
		}
		var out []string
		for k := range keys {
			out = append(out, diff(path+"."+k, am[k], bm[k])...)
		}
		sort.Strings(out)
		return out
	}
	as, aok := a.([]any)
	bs, bok := b.([]any)
	if aok && bok && len(as) == len(bs) {
		var out []string
		for i := range as {
			out = append(out, diff(fmt.Sprintf("%s[%d]", path, i), as[i], bs[i])...)
		}
		return out
	}
	if reflect.DeepEqual(a, b) {
		return nil
	}
	ja, _ := yaml.Marshal(a)
	jb, _ := yaml.Marshal(b)
	return []string{fmt.Sprintf("%s: chart %s, kustomize %s", path, bytes.TrimSpace(ja), bytes.TrimSpace(jb))}
}

// toUnstructured converts a typed object to its JSON map.
func toUnstructured(t *testing.T, o runtime.Object) map[string]any {
	t.Helper()
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(o)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// kustomized returns the objects of the bases, each once (they share the
// namespace and the CRDs).
func kustomized(t *testing.T, bases ...string) map[string]*unstructured.Unstructured {
	t.Helper()
	out := map[string]*unstructured.Unstructured{}
	for _, b := range bases {
		ms, err := k8stest.LoadKustomization(b, clusterScoped)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms {
			out[objKey(m.Object)] = m.Object
		}
	}
	return out
}

// TestChartRendersTheKustomizeBases: the chart, as release "voldelta" in
// voldelta-system, renders exactly the objects of each kustomize base when
// only that base's component is enabled (and namespace.create, since each
// base applies the namespace), and at its default values those of
// deploy/agent and deploy/controller but the Namespace (helm install needs
// it before it installs).
func TestChartRendersTheKustomizeBases(t *testing.T) {
	only := func(component string) []string {
		var args []string
		for _, c := range []string{"agent", "receiver", "controller"} {
			args = append(args, "--set", fmt.Sprintf("%s.enabled=%v", c, c == component))
		}
		return append(args, "--set", "namespace.create=true")
	}
	for _, tc := range []struct {
		name          string
		args          []string
		bases         []string
		kustomizeOnly []string
	}{
		{"agent", only("agent"), []string{"agent"}, nil},
		{"receiver", only("receiver"), []string{"receiver"}, nil},
		{"controller", only("controller"), []string{"controller"}, nil},
		{"defaults", nil, []string{"agent", "controller"}, []string{"v1 Namespace /voldelta-system"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := kustomized(t, tc.bases...)
			for _, k := range tc.kustomizeOnly {
				if want[k] == nil {
					t.Fatalf("%s is not in the kustomize bases %v", k, tc.bases)
				}
				delete(want, k)
			}
			got := map[string]*unstructured.Unstructured{}
			for _, m := range render(t, tc.args...) {
				k := objKey(m.Object)
				if got[k] != nil {
					t.Errorf("the chart renders %s twice", k)
				}
				got[k] = m.Object
			}
			for k, g := range got {
				w, ok := want[k]
				if !ok {
					t.Errorf("the chart renders %s, which the kustomize bases %v do not", k, tc.bases)
					continue
				}
				for _, d := range diff(k, normalized(g), w.Object) {
					t.Error(d)
				}
			}
			for k := range want {
				if got[k] == nil {
					t.Errorf("the kustomize bases %v have %s, which the chart does not render", tc.bases, k)
				}
			}
		})
	}
}

// TestChartCRDsAreDeployCRDs: the chart's crds/ are copies of deploy/crds
// (controller-gen's output, `make generate`): copy them after an API change.
func TestChartCRDsAreDeployCRDs(t *testing.T) {
	want, err := filepath.Glob("crds/*_*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	chartCRDs := filepath.Join(k8stest.ChartDir(), "crds")
	got, err := filepath.Glob(filepath.Join(chartCRDs, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	names := func(ps []string) (out []string) {
		for _, p := range ps {
			out = append(out, filepath.Base(p))
		}
		return out
	}
	if !slices.Equal(names(got), names(want)) || len(want) != 3 {
		t.Fatalf("charts/voldelta/crds has %v, deploy/crds %v", names(got), names(want))
	}
	for _, w := range want {
		a, err := os.ReadFile(w)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(chartCRDs, filepath.Base(w)))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("charts/voldelta/crds/%s differs from deploy/%s: cp deploy/crds/voldelta.io_*.yaml charts/voldelta/crds/", filepath.Base(w), w)
		}
	}
}

// TestChartLint: helm lint --strict (templates, values against
// values.schema.json, Chart.yaml) at the defaults and with every optional
// part on.
func TestChartLint(t *testing.T) {
	for _, args := range [][]string{
		nil,
		{"--set", "receiver.enabled=true,namespace.create=true,metrics.serviceMonitor.enabled=true"},
		{"--set", "receiver.enabled=true,receiver.listen.enabled=false,agent.snapshotMetadata=false,controller.leaderElect=false"},
	} {
		if err := k8stest.ReadChart(k8stest.ChartDir()); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		out, err := k8stest.Helm(ctx, t.TempDir(), append([]string{"lint", "--strict", k8stest.ChartDir(), "--namespace", chartNamespace}, args...)...)
		cancel()
		if err != nil {
			t.Errorf("helm lint %v: %v\n%s", args, err, out)
		}
	}
}

// typed decodes the rendered objects strictly into their Go types (the
// ServiceMonitor, whose type we do not import, stays unstructured).
func typed(t *testing.T, ms []k8stest.Manifest) []runtime.Object {
	t.Helper()
	dec := decoder(t)
	var out []runtime.Object
	for _, m := range ms {
		if m.Object.GetKind() == "ServiceMonitor" {
			out = append(out, m.Object)
			continue
		}
		obj, _, err := dec.Decode(m.Raw, nil, nil)
		if err != nil {
			t.Fatalf("%s: %s %s: %v", m.File, m.Object.GetKind(), m.Object.GetName(), err)
		}
		out = append(out, obj)
	}
	return out
}

func find[T runtime.Object](objs []runtime.Object, name string) T {
	var zero T
	for _, o := range objs {
		if x, ok := o.(T); ok && (name == "" || o.(interface{ GetName() string }).GetName() == name) {
			return x
		}
	}
	return zero
}

func count[T runtime.Object](objs []runtime.Object) int {
	n := 0
	for _, o := range objs {
		if _, ok := o.(T); ok {
			n++
		}
	}
	return n
}

// TestChartValues: what the values documented in values.yaml change.
func TestChartValues(t *testing.T) {
	t.Run("defaults", func(t *testing.T) {
		objs := typed(t, render(t))
		for _, o := range objs {
			if u, ok := o.(*unstructured.Unstructured); ok {
				t.Errorf("a %s is rendered by default", u.GetKind())
			}
			if r, ok := o.(*rbacv1.ClusterRole); ok {
				checkRole(t, r)
			}
		}
		if n := count[*corev1.Service](objs); n != 0 {
			t.Errorf("%d Services by default (no receiver, no metrics Services)", n)
		}
	})
	t.Run("receiver pinned, own image, no attach", func(t *testing.T) {
		objs := typed(t, render(t, "--set", "receiver.enabled=true,agent.enabled=false,controller.enabled=false",
			"--set", `receiver.nodeSelector.kubernetes\.io/hostname=replica-node-1`, "--set", "receiver.attach=false",
			"--set", "image.repository=registry.example/voldelta,image.tag=v0.1.0,receiver.tls.secretName=rcv-tls",
			"--set", "receiver.service.type=NodePort"))
		dep := find[*appsv1.Deployment](objs, "voldelta-receiver")
		if dep == nil {
			t.Fatal("no receiver Deployment")
		}
		spec := dep.Spec.Template.Spec
		c := spec.Containers[0]
		if spec.NodeSelector["kubernetes.io/hostname"] != "replica-node-1" || c.Image != "registry.example/voldelta:v0.1.0" ||
			!slices.Contains(c.Args, "--attach=false") || spec.Volumes[2].Secret == nil || spec.Volumes[2].Secret.SecretName != "rcv-tls" {
			t.Errorf("receiver: nodeSelector %v, image %s, args %v, volumes %+v", spec.NodeSelector, c.Image, c.Args, spec.Volumes)
		}
		role := find[*rbacv1.ClusterRole](objs, "voldelta-receiver")
		for _, r := range role.Rules {
			if slices.Contains(r.Resources, "volumeattachments") && (slices.Contains(r.Verbs, "create") || slices.Contains(r.Verbs, "delete")) {
				t.Errorf("receiver.attach=false still grants %v on volumeattachments", r.Verbs)
			}
		}
		if svc := find[*corev1.Service](objs, "voldelta-receiver"); svc == nil || svc.Spec.Type != corev1.ServiceTypeNodePort {
			t.Errorf("receiver Service %+v", svc)
		}
	})
	t.Run("velero", func(t *testing.T) {
		objs := typed(t, render(t, "--set", "velero.namespace=velero,receiver.enabled=true"))
		for _, name := range []string{"voldelta-controller", "voldelta-receiver"} {
			c := find[*appsv1.Deployment](objs, name).Spec.Template.Spec.Containers[0]
			if !slices.Contains(c.Args, "--velero-namespace=velero") {
				t.Errorf("%s args %v lack --velero-namespace=velero", name, c.Args)
			}
		}
		// The roles grant what deploy/velero's do.
		base := kustomized(t, "velero")
		for chartRole, baseRole := range map[string]string{"voldelta-controller-velero": "voldelta-velero", "voldelta-receiver-velero": "voldelta-velero-receiver"} {
			got := find[*rbacv1.ClusterRole](objs, chartRole)
			want := base["rbac.authorization.k8s.io/v1 ClusterRole /"+baseRole]
			if got == nil || want == nil {
				t.Fatalf("ClusterRole %s (chart) or %s (deploy/velero) missing", chartRole, baseRole)
			}
			rules, _, _ := unstructured.NestedSlice(want.Object, "rules")
			if d := diff(chartRole, toUnstructured(t, got)["rules"], rules); len(d) > 0 {
				t.Errorf("rules differ: %v", d)
			}
			if b := find[*rbacv1.ClusterRoleBinding](objs, chartRole); b == nil || b.RoleRef.Name != chartRole {
				t.Errorf("no ClusterRoleBinding %s", chartRole)
			}
		}
		if find[*rbacv1.ClusterRole](typed(t, render(t)), "voldelta-controller-velero") != nil {
			t.Error("the Velero roles are rendered without velero.namespace")
		}
	})
	t.Run("receiver of store targets only", func(t *testing.T) {
		objs := typed(t, render(t, "--set", "receiver.enabled=true,receiver.listen.enabled=false"))
		dep := find[*appsv1.Deployment](objs, "voldelta-receiver")
		c := dep.Spec.Template.Spec.Containers[0]
		for _, a := range c.Args {
			if strings.HasPrefix(a, "--listen") || strings.HasPrefix(a, "--tls-") {
				t.Errorf("a store-only receiver has %s", a)
			}
		}
		if find[*corev1.Service](objs, "voldelta-receiver") != nil || len(dep.Spec.Template.Spec.Volumes) != 2 {
			t.Errorf("a store-only receiver has a Service or the TLS volume: %+v", dep.Spec.Template.Spec.Volumes)
		}
	})
	t.Run("agent longhorn paths, no snapshot metadata", func(t *testing.T) {
		objs := typed(t, render(t, "--set", "longhorn.dataPaths={/var/lib/longhorn,/mnt/disk2},longhorn.namespace=storage",
			"--set", "agent.snapshotMetadata=false,agent.cacheDir=/srv/voldelta", "--set-string", `agent.nodeSelector.voldelta\.io/agent=true`,
			"--set", "agent.tolerations=null"))
		ds := find[*appsv1.DaemonSet](objs, "voldelta-agent")
		spec := ds.Spec.Template.Spec
		c := spec.Containers[0]
		for _, a := range []string{"--longhorn-data-path=/var/lib/longhorn", "--longhorn-data-path=/mnt/disk2", "--longhorn-namespace=storage", "--no-snapshot-metadata"} {
			if !slices.Contains(c.Args, a) {
				t.Errorf("agent args %v lack %s", c.Args, a)
			}
		}
		mounts := map[string]string{}
		for _, m := range c.VolumeMounts {
			mounts[m.MountPath] = m.Name
		}
		hostPaths := map[string]string{}
		for _, v := range spec.Volumes {
			if v.HostPath != nil {
				hostPaths[v.Name] = v.HostPath.Path
			}
		}
		if hostPaths[mounts["/host/mnt/disk2"]] != "/mnt/disk2" || hostPaths[mounts["/host/var/lib/longhorn"]] != "/var/lib/longhorn" ||
			hostPaths[mounts["/var/lib/voldelta/agent"]] != "/srv/voldelta" {
			t.Errorf("agent mounts %v of host paths %v", mounts, hostPaths)
		}
		if spec.NodeSelector["voldelta.io/agent"] != "true" || len(spec.Tolerations) != 0 {
			t.Errorf("agent nodeSelector %v, tolerations %v", spec.NodeSelector, spec.Tolerations)
		}
		if count[*rbacv1.Role](objs) != 1 { // the controller's leader election only
			t.Error("agent.snapshotMetadata=false still renders the token Role")
		}
		for _, r := range find[*rbacv1.ClusterRole](objs, "voldelta-agent").Rules {
			if slices.Contains(r.APIGroups, "cbt.storage.k8s.io") {
				t.Error("agent.snapshotMetadata=false still grants snapshotmetadataservices")
			}
		}
	})
	t.Run("no longhorn", func(t *testing.T) {
		objs := typed(t, render(t, "--set", "longhorn.dataPaths=null"))
		c := find[*appsv1.DaemonSet](objs, "voldelta-agent").Spec.Template.Spec.Containers[0]
		if !slices.Contains(c.Args, "--longhorn-data-path=-") {
			t.Errorf("agent args %v", c.Args)
		}
	})
	t.Run("ServiceMonitor", func(t *testing.T) {
		objs := typed(t, render(t, "--set", "receiver.enabled=true,metrics.serviceMonitor.enabled=true,metrics.serviceMonitor.labels.release=prometheus"))
		sm := find[*unstructured.Unstructured](objs, "voldelta")
		if sm == nil || sm.GetAPIVersion() != "monitoring.coreos.com/v1" || sm.GetLabels()["release"] != "prometheus" {
			t.Fatalf("ServiceMonitor %v", sm)
		}
		sel, _, _ := unstructured.NestedStringMap(sm.Object, "spec", "selector", "matchLabels")
		eps, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints")
		if len(eps) != 1 || eps[0].(map[string]any)["port"] != "metrics" {
			t.Fatalf("ServiceMonitor endpoints %v", eps)
		}
		// Every component's metrics Service is selected, and selects its pods' port "metrics".
		selected := map[string]bool{}
		for _, o := range objs {
			svc, ok := o.(*corev1.Service)
			if !ok || !matches(sel, svc.Labels) {
				continue
			}
			if svc.Spec.Ports[0].Name != "metrics" || svc.Spec.Ports[0].TargetPort.StrVal != "metrics" {
				t.Errorf("metrics Service %s: ports %+v", svc.Name, svc.Spec.Ports)
			}
			for _, o := range objs {
				if tpl := podTemplate(o); tpl != nil && matches(svc.Spec.Selector, tpl.Labels) {
					if !slices.ContainsFunc(tpl.Spec.Containers[0].Ports, func(p corev1.ContainerPort) bool { return p.Name == "metrics" }) {
						t.Errorf("the pods of %s have no port metrics", svc.Name)
					}
					selected[svc.Name+" "+tpl.Spec.Containers[0].Name] = true
				}
			}
		}
		want := map[string]bool{"voldelta-agent-metrics agent": true, "voldelta-receiver-metrics receiver": true, "voldelta-controller-metrics controller": true}
		if !reflect.DeepEqual(selected, want) {
			t.Errorf("ServiceMonitor selects %v, want %v", selected, want)
		}
	})
	t.Run("secrets", func(t *testing.T) {
		objs := typed(t, render(t, "--set", "receiver.enabled=true,receiver.tls.create=true,receiver.tls.ca=CA,receiver.tls.cert=CERT,receiver.tls.key=KEY",
			"--set", "secrets.tls[0].name=voldelta-agent-tls,secrets.tls[0].namespace=shop,secrets.tls[0].ca=CA,secrets.tls[0].cert=C,secrets.tls[0].key=K",
			"--set", "secrets.store[0].name=voldelta-store,secrets.store[0].namespace=shop,secrets.store[0].accessKeyID=AK,secrets.store[0].secretAccessKey=SK"))
		rcv := find[*corev1.Secret](objs, "voldelta-receiver-tls")
		agent := find[*corev1.Secret](objs, "voldelta-agent-tls")
		store := find[*corev1.Secret](objs, "voldelta-store")
		if rcv == nil || string(rcv.Data["tls.key"]) != "KEY" || rcv.Namespace != chartNamespace {
			t.Errorf("receiver TLS Secret %+v", rcv)
		}
		if agent == nil || agent.Namespace != "shop" || string(agent.Data["ca.crt"]) != "CA" || string(agent.Data["tls.crt"]) != "C" {
			t.Errorf("agent TLS Secret %+v", agent)
		}
		if store == nil || store.Namespace != "shop" || string(store.Data["AWS_SECRET_ACCESS_KEY"]) != "SK" || len(store.Data) != 2 {
			t.Errorf("store Secret %+v", store)
		}
		if dep := find[*appsv1.Deployment](objs, "voldelta-receiver"); dep.Spec.Template.Annotations["checksum/tls"] == "" {
			t.Error("the receiver's pods do not roll when the chart's TLS Secret changes")
		}
	})
	t.Run("schema", func(t *testing.T) {
		for _, set := range []string{"reciever.enabled=true", "receiver.service.type=External", "longhorn.dataPaths={var/lib/longhorn}", "logFormat=xml"} {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			_, err := k8stest.RenderChart(ctx, t.TempDir(), k8stest.ChartDir(), chartRelease, chartNamespace, "--set", set)
			cancel()
			if err == nil || !strings.Contains(err.Error(), "schema") {
				t.Errorf("--set %s: %v, want values.schema.json to refuse it", set, err)
			}
		}
	})
	t.Run("missing secret value", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, err := k8stest.RenderChart(ctx, t.TempDir(), k8stest.ChartDir(), chartRelease, chartNamespace,
			"--set", "receiver.enabled=true,receiver.tls.create=true,receiver.tls.ca=CA")
		if err == nil || !strings.Contains(err.Error(), "receiver.tls.cert") {
			t.Errorf("receiver.tls.create without a cert: %v", err)
		}
	})
}

func matches(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func podTemplate(o runtime.Object) *corev1.PodTemplateSpec {
	switch o := o.(type) {
	case *appsv1.Deployment:
		return &o.Spec.Template
	case *appsv1.DaemonSet:
		return &o.Spec.Template
	}
	return nil
}
