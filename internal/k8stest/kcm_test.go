package k8stest_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/voldelta/voldelta/internal/k8stest"
)

// TestControllerManagerReconcilesDeployments runs the real
// kube-controller-manager against the test control plane: a Deployment of 2
// replicas gets a ReplicaSet and 2 Pods (Pending: no scheduler or kubelet
// runs), and scaling it to 0 deletes them; a StatefulSet the same.
func TestControllerManagerReconcilesDeployments(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cp := k8stest.Start(t)
	cp.StartControllerManager(t)
	kube, err := kubernetes.NewForConfig(cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	const ns = "apps"
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	dep, err := kube.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr(int32(2)),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Template: podTemplate("web"),
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitPods(t, ctx, kube, ns, "app=web", 2)
	rss, err := kube.AppsV1().ReplicaSets(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
	if err != nil {
		t.Fatal(err)
	}
	if len(rss.Items) != 1 || !ownedBy(rss.Items[0].OwnerReferences, dep.UID) {
		t.Fatalf("ReplicaSets of Deployment web: %+v", rss.Items)
	}
	pods, err := kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if !ownedBy(p.OwnerReferences, rss.Items[0].UID) || p.Status.Phase != corev1.PodPending || p.Spec.NodeName != "" {
			t.Fatalf("pod %s: owners %+v, phase %s, node %q", p.Name, p.OwnerReferences, p.Status.Phase, p.Spec.NodeName)
		}
	}
	scale(t, ctx, kube, "deployments", ns, "web", 0)
	waitPods(t, ctx, kube, ns, "app=web", 0)
	// The Deployment reports what the controller did.
	err = k8stest.Eventually(ctx, func() (bool, string, error) {
		d, err := kube.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		return d.Status.ObservedGeneration == d.Generation && d.Status.Replicas == 0, fmt.Sprintf("status %+v", d.Status), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	scale(t, ctx, kube, "deployments", ns, "web", 1)
	waitPods(t, ctx, kube, ns, "app=web", 1)

	// A StatefulSet (Parallel: an OrderedReady one waits for each Pod to
	// be Ready, which none becomes without a kubelet).
	_, err = kube.AppsV1().StatefulSets(ns).Create(ctx, &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "db"},
		Spec: appsv1.StatefulSetSpec{
			Replicas:            ptr(int32(2)),
			PodManagementPolicy: appsv1.ParallelPodManagement,
			Selector:            &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
			Template:            podTemplate("db"),
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitPods(t, ctx, kube, ns, "app=db", 2)
	for _, name := range []string{"db-0", "db-1"} {
		if _, err := kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{}); err != nil {
			t.Fatalf("StatefulSet pod %s: %v", name, err)
		}
	}
	scale(t, ctx, kube, "statefulsets", ns, "db", 0)
	waitPods(t, ctx, kube, ns, "app=db", 0)

	// The garbage collector deletes what a deleted Deployment owned.
	if err := kube.AppsV1().Deployments(ns).Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPods(t, ctx, kube, ns, "app=web", 0)
	err = k8stest.Eventually(ctx, func() (bool, string, error) {
		rss, err := kube.AppsV1().ReplicaSets(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil {
			return false, "", err
		}
		return len(rss.Items) == 0, fmt.Sprintf("%d ReplicaSets", len(rss.Items)), nil
	})
	if err != nil {
		t.Fatalf("ReplicaSet of the deleted Deployment: %v", err)
	}
}

// podTemplate is a pod template labeled app=name whose container never
// runs (no kubelet).
func podTemplate(name string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: name, Image: "registry.invalid/" + name + ":1"}},
		},
	}
}

func ownedBy(refs []metav1.OwnerReference, uid types.UID) bool {
	for _, r := range refs {
		if r.UID == uid && r.Controller != nil && *r.Controller {
			return true
		}
	}
	return false
}

// waitPods waits until exactly n pods match selector in ns.
func waitPods(t *testing.T, ctx context.Context, kube kubernetes.Interface, ns, selector string, n int) {
	t.Helper()
	err := k8stest.Eventually(ctx, func() (bool, string, error) {
		pods, err := kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return false, "", err
		}
		var names []string
		for _, p := range pods.Items {
			names = append(names, p.Name)
		}
		return len(pods.Items) == n, fmt.Sprintf("pods %v", names), nil
	})
	if err != nil {
		t.Fatalf("want %d pods %s in %s: %v", n, selector, ns, err)
	}
}

// scale sets the replicas of a Deployment or StatefulSet through its scale
// subresource, as kubectl scale does (again on a conflict: the controllers
// write the object's status meanwhile).
func scale(t *testing.T, ctx context.Context, kube kubernetes.Interface, resource, ns, name string, replicas int32) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var err error
		var s *autoscalingv1.Scale
		switch resource {
		case "deployments":
			if s, err = kube.AppsV1().Deployments(ns).GetScale(ctx, name, metav1.GetOptions{}); err == nil {
				s.Spec.Replicas = replicas
				_, err = kube.AppsV1().Deployments(ns).UpdateScale(ctx, name, s, metav1.UpdateOptions{})
			}
		case "statefulsets":
			if s, err = kube.AppsV1().StatefulSets(ns).GetScale(ctx, name, metav1.GetOptions{}); err == nil {
				s.Spec.Replicas = replicas
				_, err = kube.AppsV1().StatefulSets(ns).UpdateScale(ctx, name, s, metav1.UpdateOptions{})
			}
		default:
			err = fmt.Errorf("unknown resource %s", resource)
		}
		return err
	})
	if err != nil {
		t.Fatalf("scale %s %s/%s to %d: %v", resource, ns, name, replicas, err)
	}
}
