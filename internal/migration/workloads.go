package migration

import (
	"context"
	"fmt"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
)

// workload is what the controller needs of a Deployment or StatefulSet.
type workload struct {
	obj      client.Object
	replicas int32 // spec.replicas (default 1)
	// gone: the workload's controller saw its latest spec and counts no
	// replicas.
	gone     bool
	selector *metav1.LabelSelector
	// setReplicas sets spec.replicas on obj.
	setReplicas func(int32)
}

func (r *Reconciler) getWorkload(ctx context.Context, ns string, kind v1alpha1.WorkloadKind, name string) (*workload, error) {
	key := types.NamespacedName{Namespace: ns, Name: name}
	var w workload
	switch kind {
	case v1alpha1.KindDeployment:
		var d appsv1.Deployment
		if err := r.o.Reader.Get(ctx, key, &d); err != nil {
			return nil, err
		}
		w = workload{obj: &d, replicas: replicasOf(d.Spec.Replicas), selector: d.Spec.Selector,
			gone:        d.Status.ObservedGeneration >= d.Generation && d.Status.Replicas == 0,
			setReplicas: func(n int32) { d.Spec.Replicas = &n }}
	case v1alpha1.KindStatefulSet:
		var s appsv1.StatefulSet
		if err := r.o.Reader.Get(ctx, key, &s); err != nil {
			return nil, err
		}
		w = workload{obj: &s, replicas: replicasOf(s.Spec.Replicas), selector: s.Spec.Selector,
			gone:        s.Status.ObservedGeneration >= s.Generation && s.Status.Replicas == 0,
			setReplicas: func(n int32) { s.Spec.Replicas = &n }}
	default:
		return nil, failf(ReasonInvalidSpec, "workload %s: kind %q, want Deployment or StatefulSet", name, kind)
	}
	return &w, nil
}

func replicasOf(p *int32) int32 {
	if p == nil {
		return 1
	}
	return *p
}

// recordWorkloads records the replica count of every workload of
// spec.quiesce.workloads not recorded yet, and reports whether it recorded
// any. All of them are read before any is recorded: a missing one fails
// the migration before anything is scaled.
func (r *Reconciler) recordWorkloads(ctx context.Context, m *v1alpha1.Migration) (bool, error) {
	var add []v1alpha1.WorkloadStatus
	var missing []string
	for _, ref := range m.Spec.Quiesce.Workloads {
		if slices.ContainsFunc(m.Status.Workloads, func(w v1alpha1.WorkloadStatus) bool { return w.Kind == ref.Kind && w.Name == ref.Name }) {
			continue
		}
		w, err := r.getWorkload(ctx, m.Namespace, ref.Kind, ref.Name)
		switch {
		case apierrors.IsNotFound(err):
			missing = append(missing, fmt.Sprintf("%s %s/%s", ref.Kind, m.Namespace, ref.Name))
			continue
		case err != nil:
			return false, fmt.Errorf("get %s %s/%s: %w", ref.Kind, m.Namespace, ref.Name, err)
		}
		add = append(add, v1alpha1.WorkloadStatus{Kind: ref.Kind, Name: ref.Name, Replicas: w.replicas})
	}
	if len(missing) > 0 {
		return false, failf(ReasonWorkloadMissing, "spec.quiesce.workloads: %s not found", strings.Join(missing, ", "))
	}
	m.Status.Workloads = append(m.Status.Workloads, add...)
	return len(add) > 0, nil
}

// scale sets a workload's spec.replicas to n (if it is not already).
func (r *Reconciler) scale(ctx context.Context, ns string, kind v1alpha1.WorkloadKind, name string, n int32) error {
	w, err := r.getWorkload(ctx, ns, kind, name)
	if err != nil {
		return fmt.Errorf("get %s %s/%s: %w", kind, ns, name, err)
	}
	if w.replicas == n {
		return nil
	}
	orig := w.obj.DeepCopyObject().(client.Object)
	w.setReplicas(n)
	if err := r.o.Client.Patch(ctx, w.obj, client.MergeFrom(orig)); err != nil {
		return fmt.Errorf("scale %s %s/%s to %d: %w", kind, ns, name, n, err)
	}
	r.o.Logger.Info("scaled", "kind", kind, "workload", ns+"/"+name, "from", w.replicas, "to", n)
	return nil
}

// remaining describes the recorded workloads that still have replicas or
// pods; with podsOnly, only those with pods.
func (r *Reconciler) remaining(ctx context.Context, m *v1alpha1.Migration, podsOnly bool) ([]string, error) {
	var out []string
	for _, ws := range m.Status.Workloads {
		w, err := r.getWorkload(ctx, m.Namespace, ws.Kind, ws.Name)
		if err != nil {
			return nil, fmt.Errorf("get %s %s/%s: %w", ws.Kind, m.Namespace, ws.Name, err)
		}
		live, err := r.livePods(ctx, m.Namespace, w.selector)
		if err != nil {
			return nil, fmt.Errorf("pods of %s %s/%s: %w", ws.Kind, m.Namespace, ws.Name, err)
		}
		switch {
		case len(live) > 0:
			out = append(out, fmt.Sprintf("%s %s: %d pods (%s)", ws.Kind, ws.Name, len(live), strings.Join(live, ", ")))
		case !w.gone && !podsOnly:
			out = append(out, fmt.Sprintf("%s %s: replicas not yet 0 in its status", ws.Kind, ws.Name))
		}
	}
	return out, nil
}

// livePods names the pods of ns that selector matches and that have not
// ended (terminating pods count: they may still write).
func (r *Reconciler) livePods(ctx context.Context, ns string, selector *metav1.LabelSelector) ([]string, error) {
	sel, err := metav1.LabelSelectorAsSelector(selector)
	if err != nil {
		return nil, fmt.Errorf("selector: %w", err)
	}
	var pods corev1.PodList
	if err := r.o.Reader.List(ctx, &pods, client.InNamespace(ns), client.MatchingLabelsSelector{Selector: sel}); err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	var live []string
	for _, p := range pods.Items {
		if p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			live = append(live, p.Name)
		}
	}
	slices.Sort(live)
	return live, nil
}

// restoreWorkloads scales every recorded workload back to its recorded
// count and names those it scaled. A workload that is gone is skipped.
func (r *Reconciler) restoreWorkloads(ctx context.Context, m *v1alpha1.Migration) ([]string, error) {
	var done []string
	for _, ws := range m.Status.Workloads {
		err := r.scale(ctx, m.Namespace, ws.Kind, ws.Name, ws.Replicas)
		if apierrors.IsNotFound(err) {
			r.o.Logger.Warn("workload to restore is gone", "kind", ws.Kind, "workload", m.Namespace+"/"+ws.Name)
			continue
		}
		if err != nil {
			return done, err
		}
		done = append(done, fmt.Sprintf("%s %s to %d", ws.Kind, ws.Name, ws.Replicas))
	}
	return done, nil
}
