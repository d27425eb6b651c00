// Package deploy_test checks the manifests in deploy/: every kustomization
// lists existing files (and every file is listed), every object decodes
// strictly into its typed Go object, and the agent's, receiver's and
// Migration controller's pods and RBAC have the properties
// docs/kubernetes.md and docs/migration.md promise. The integration test in
// internal/k8stest applies them to a real kube-apiserver.
package deploy_test

import (
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/internal/k8stest"
)

var clusterScoped = k8stest.ClusterScopedKinds

func decoder(t *testing.T) runtime.Decoder {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, apiextv1.AddToScheme, v1alpha1.AddToScheme, snapv1.AddToScheme} {
		if err := add(s); err != nil {
			t.Fatal(err)
		}
	}
	return serializer.NewCodecFactory(s, serializer.EnableStrict).UniversalDeserializer()
}

// load decodes every object of a kustomization into its typed object.
func load(t *testing.T, dir string) []runtime.Object {
	t.Helper()
	ms, err := k8stest.LoadKustomization(dir, clusterScoped)
	if err != nil {
		t.Fatal(err)
	}
	dec := decoder(t)
	var out []runtime.Object
	for _, m := range ms {
		obj, gvk, err := dec.Decode(m.Raw, nil, nil)
		if err != nil {
			t.Fatalf("%s: %s %s: %v", m.File, m.Object.GetKind(), m.Object.GetName(), err)
		}
		if _, ok := obj.(runtime.Unstructured); ok {
			t.Fatalf("%s: %v decoded into no Go type", m.File, gvk)
		}
		out = append(out, obj)
	}
	return out
}

func TestEveryManifestIsInAKustomization(t *testing.T) {
	listed := map[string]bool{}
	for _, d := range []string{"agent", "receiver", "controller", "examples", "crds", "namespace", "monitoring", "velero"} {
		ms, err := k8stest.LoadKustomization(d, clusterScoped)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms {
			listed[filepath.Clean(m.File)] = true
		}
	}
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && d.Name() == "testdata" {
			return filepath.SkipDir // test inputs, not manifests (monitoring's alert unit tests)
		}
		if err != nil || d.IsDir() || filepath.Ext(p) != ".yaml" || d.Name() == "kustomization.yaml" {
			return err
		}
		if !listed[p] {
			t.Errorf("%s is in no kustomization", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestAgent(t *testing.T) {
	objs := load(t, "agent")
	var ds *appsv1.DaemonSet
	var crds, roles int
	for _, o := range objs {
		switch o := o.(type) {
		case *appsv1.DaemonSet:
			ds = o
		case *apiextv1.CustomResourceDefinition:
			crds++
		case *rbacv1.ClusterRole:
			roles++
			checkRole(t, o)
		case *corev1.Namespace:
			if o.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
				t.Errorf("namespace %s: not labelled for privileged pods", o.Name)
			}
		}
	}
	if ds == nil || crds != 3 || roles != 1 { // VolumeSync, VolumeTarget, Migration
		t.Fatalf("agent: DaemonSet %v, %d CRDs, %d ClusterRoles", ds != nil, crds, roles)
	}
	if ds.Namespace != "voldelta-system" {
		t.Errorf("DaemonSet namespace %q", ds.Namespace)
	}
	spec := ds.Spec.Template.Spec
	if !slices.ContainsFunc(spec.Tolerations, func(t corev1.Toleration) bool { return t.Operator == corev1.TolerationOpExists && t.Key == "" }) {
		t.Error("the agent does not tolerate every taint")
	}
	c := spec.Containers[0]
	if c.Image != "voldelta/voldelta:latest" || c.Args[0] != "agent" {
		t.Errorf("container %s %v", c.Image, c.Args)
	}
	if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged {
		t.Error("the agent is not privileged")
	}
	if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
		return e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName"
	}) {
		t.Error("NODE_NAME is not the pod's node")
	}
	hostPaths := map[string]string{}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[hostPaths[m.Name]] = m
	}
	htc := corev1.MountPropagationHostToContainer
	for path, ro := range map[string]bool{"/dev": false, "/var/lib/kubelet": true, "/var/lib/longhorn": true} {
		m, ok := mounts[path]
		if !ok {
			t.Errorf("host %s is not mounted", path)
			continue
		}
		if m.MountPropagation == nil || *m.MountPropagation != htc || m.ReadOnly != ro || m.MountPath != "/host"+path {
			t.Errorf("mount of %s: %+v", path, m)
		}
	}
	if !slices.Contains(c.Args, "--host-root=/host") {
		t.Errorf("args %v lack --host-root=/host", c.Args)
	}
	// The pods' volume mounts, which spec.freeze freezes, are found under
	// <host root><kubelet dir>: that must be where the kubelet's directory
	// is mounted, with its mounts propagated.
	var kubelet string
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--kubelet-dir="); ok {
			kubelet = v
		}
	}
	if m, ok := mounts[kubelet]; kubelet == "" || !ok || m.MountPath != "/host"+kubelet || m.MountPropagation == nil || *m.MountPropagation != htc {
		t.Errorf("--kubelet-dir=%q is not the host's kubelet directory mounted under /host with HostToContainer propagation (%+v)", kubelet, m)
	}
}

func TestReceiver(t *testing.T) {
	var dep *appsv1.Deployment
	var svc *corev1.Service
	for _, o := range load(t, "receiver") {
		switch o := o.(type) {
		case *appsv1.Deployment:
			dep = o
		case *corev1.Service:
			svc = o
		case *rbacv1.ClusterRole:
			checkRole(t, o) // Secrets: get only (store targets' credentials)
		}
	}
	if dep == nil || svc == nil {
		t.Fatal("no Deployment or Service")
	}
	c := dep.Spec.Template.Spec.Containers[0]
	if c.Args[0] != "k8s-receiver" || *dep.Spec.Replicas != 1 || dep.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		t.Errorf("receiver: %v, %d replicas, %s", c.Args, *dep.Spec.Replicas, dep.Spec.Strategy.Type)
	}
	if svc.Spec.Ports[0].Port != 7300 {
		t.Errorf("service port %d", svc.Spec.Ports[0].Port)
	}
}

func TestController(t *testing.T) {
	var dep *appsv1.Deployment
	var role *rbacv1.ClusterRole
	var leases *rbacv1.Role
	for _, o := range load(t, "controller") {
		switch o := o.(type) {
		case *appsv1.Deployment:
			dep = o
		case *rbacv1.ClusterRole:
			role = o
			checkRole(t, o)
		case *rbacv1.Role:
			leases = o
		}
	}
	if dep == nil || role == nil || leases == nil {
		t.Fatalf("controller: Deployment %v, ClusterRole %v, Role %v", dep != nil, role != nil, leases != nil)
	}
	spec := dep.Spec.Template.Spec
	c := spec.Containers[0]
	if c.Image != "voldelta/voldelta:latest" || c.Args[0] != "controller" || !slices.Contains(c.Args, "--leader-elect") ||
		spec.ServiceAccountName != "voldelta-controller" || dep.Namespace != "voldelta-system" {
		t.Errorf("controller: %s %v, service account %s, namespace %s", c.Image, c.Args, spec.ServiceAccountName, dep.Namespace)
	}
	if sc := c.SecurityContext; sc == nil || (sc.Privileged != nil && *sc.Privileged) || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("the controller may escalate privileges")
	}
	// What the controller does (internal/migration), and no deletes.
	grants := func(group, resource, verb string) bool {
		return slices.ContainsFunc(role.Rules, func(r rbacv1.PolicyRule) bool {
			return slices.Contains(r.APIGroups, group) && slices.Contains(r.Resources, resource) && slices.Contains(r.Verbs, verb)
		})
	}
	for _, g := range [][3]string{
		{"voldelta.io", "migrations", "watch"}, {"voldelta.io", "migrations", "patch"}, {"voldelta.io", "migrations/status", "update"},
		{"voldelta.io", "volumesyncs", "create"}, {"voldelta.io", "volumesyncs", "patch"}, {"voldelta.io", "volumesyncs", "watch"},
		{"apps", "deployments", "patch"}, {"apps", "statefulsets", "patch"}, {"apps", "deployments", "watch"},
		{"", "pods", "list"}, {"", "persistentvolumeclaims", "list"}, {"events.k8s.io", "events", "create"},
		// The final group snapshot: the members' label, their driver, the
		// group, its class, its member VolumeSnapshots.
		{"", "persistentvolumeclaims", "patch"}, {"", "persistentvolumes", "get"},
		{"groupsnapshot.storage.k8s.io", "volumegroupsnapshots", "create"}, {"groupsnapshot.storage.k8s.io", "volumegroupsnapshots", "get"},
		{"groupsnapshot.storage.k8s.io", "volumegroupsnapshots", "watch"}, {"groupsnapshot.storage.k8s.io", "volumegroupsnapshotclasses", "list"},
		{"groupsnapshot.storage.k8s.io", "volumegroupsnapshotclasses", "get"},
		{"snapshot.storage.k8s.io", "volumesnapshots", "list"}, {"snapshot.storage.k8s.io", "volumesnapshots", "get"}, // also spec.quiesce.freeze: the final snapshots' creationTime
	} {
		if !grants(g[0], g[1], g[2]) {
			t.Errorf("the controller's ClusterRole lacks %s %s/%s", g[2], g[0], g[1])
		}
	}
	for _, r := range role.Rules {
		if slices.Contains(r.Verbs, "delete") || slices.Contains(r.Verbs, "deletecollection") || slices.Contains(r.Resources, "secrets") {
			t.Errorf("the controller's ClusterRole grants %+v", r)
		}
		// It writes no snapshot but its group snapshot, and touches no
		// class or content: the member VolumeSnapshots are only read.
		for _, res := range r.Resources {
			writes := slices.ContainsFunc(r.Verbs, func(v string) bool { return v == "create" || v == "update" || v == "patch" || v == "*" })
			if strings.Contains(res, "snapshot") && res != "volumegroupsnapshots" && (writes || slices.Contains(r.Verbs, "watch")) {
				t.Errorf("the controller's ClusterRole grants %v on %s", r.Verbs, res)
			}
			if strings.Contains(res, "content") || res == "*" || slices.Contains(r.APIGroups, "*") {
				t.Errorf("the controller's ClusterRole grants %+v", r)
			}
		}
		if slices.Contains(r.Resources, "persistentvolumeclaims") && slices.ContainsFunc(r.Verbs, func(v string) bool { return v == "update" || v == "create" }) {
			t.Errorf("the controller may do more to PVCs than label them: %+v", r)
		}
	}
}

func TestExamples(t *testing.T) {
	var kinds []string
	for _, o := range load(t, "examples") {
		switch o := o.(type) {
		case *v1alpha1.VolumeSync:
			d := o.Spec.Destination
			if o.Spec.Trigger.Interval == nil || (d.TLSSecretName == "") == (d.Store == nil) {
				t.Errorf("VolumeSync example %s: %+v", o.Name, o.Spec)
			}
		case *v1alpha1.VolumeTarget:
			if (len(o.Spec.AllowedIdentities) == 0) == (o.Spec.Store == nil) {
				t.Errorf("VolumeTarget example %s: set allowedIdentities or store: %+v", o.Name, o.Spec)
			}
		case *corev1.Secret:
			if len(o.StringData["AWS_ACCESS_KEY_ID"]) == 0 || len(o.StringData["AWS_SECRET_ACCESS_KEY"]) == 0 {
				t.Errorf("Secret example %s lacks the store's keys", o.Name)
			}
		case *snapv1.VolumeSnapshotClass:
			if o.Parameters["type"] != "snap" || o.Driver != "driver.longhorn.io" {
				t.Errorf("VolumeSnapshotClass example: %+v", o)
			}
		}
		kinds = append(kinds, strings.TrimPrefix(strings.TrimPrefix(runtimeKind(o), "*v1alpha1."), "*v1."))
	}
	slices.Sort(kinds)
	if want := []string{"Secret", "VolumeSnapshotClass", "VolumeSync", "VolumeSync", "VolumeTarget", "VolumeTarget"}; !slices.Equal(kinds, want) {
		t.Errorf("examples: %v, want %v", kinds, want)
	}
}

func runtimeKind(o runtime.Object) string {
	switch o.(type) {
	case *v1alpha1.VolumeSync:
		return "VolumeSync"
	case *v1alpha1.VolumeTarget:
		return "VolumeTarget"
	case *snapv1.VolumeSnapshotClass:
		return "VolumeSnapshotClass"
	case *corev1.Secret:
		return "Secret"
	}
	return "other"
}

// checkRole: least privilege, no wildcards, no Secret access beyond get.
func checkRole(t *testing.T, r *rbacv1.ClusterRole) {
	t.Helper()
	for _, rule := range r.Rules {
		for _, l := range [][]string{rule.APIGroups, rule.Resources, rule.Verbs} {
			if slices.Contains(l, "*") {
				t.Errorf("%s: wildcard in %+v", r.Name, rule)
			}
		}
		if slices.Contains(rule.Resources, "secrets") && !slices.Equal(rule.Verbs, []string{"get"}) {
			t.Errorf("%s: secrets verbs %v, want only get", r.Name, rule.Verbs)
		}
		if slices.Contains(rule.Verbs, "escalate") || slices.Contains(rule.Verbs, "bind") || slices.Contains(rule.Verbs, "impersonate") {
			t.Errorf("%s: privileged verb in %+v", r.Name, rule)
		}
	}
}
