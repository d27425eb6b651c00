package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
)

// migrateOptions is what every migrate subcommand works with.
type migrateOptions struct {
	Client    client.WithWatch
	Namespace string
	// JSON prints the objects as the API returns them instead of tables.
	JSON bool
	// Live redraws the view in place (Out is a terminal); else one line
	// per change.
	Live bool
	Out  io.Writer
	// Err gets notes that are not the result (with JSON, and "no
	// migrations found").
	Err io.Writer
	Now func() time.Time
	// Program is how the binary was invoked ("voldelta", "kubectl
	// voldelta"), for the hints the views print.
	Program string
}

// action is what cutover and abort set.
type action int

const (
	actionCutover action = iota
	actionAbort
)

func (a action) String() string {
	if a == actionAbort {
		return "abort"
	}
	return "cutover"
}

func runMigrateList(ctx context.Context, o migrateOptions, all bool) error {
	var list v1alpha1.MigrationList
	var opts []client.ListOption
	if !all {
		opts = append(opts, client.InNamespace(o.Namespace))
	}
	if err := o.Client.List(ctx, &list, opts...); err != nil {
		return apiError(err)
	}
	if o.JSON {
		list.APIVersion, list.Kind = v1alpha1.GroupVersion.String(), "MigrationList"
		for i := range list.Items {
			forOutput(&list.Items[i])
		}
		if list.Items == nil {
			list.Items = []v1alpha1.Migration{}
		}
		return printJSON(o.Out, &list)
	}
	if len(list.Items) == 0 {
		if all {
			fmt.Fprintln(o.Err, "No migrations found.")
		} else {
			fmt.Fprintf(o.Err, "No migrations found in namespace %s.\n", o.Namespace)
		}
		return nil
	}
	return writeMigrationList(o.Out, list.Items, all, o.Now())
}

func runMigrateStatus(ctx context.Context, o migrateOptions, name string, follow bool) error {
	key := client.ObjectKey{Namespace: o.Namespace, Name: name}
	if !follow {
		m, err := getMigration(ctx, o.Client, key)
		if err != nil {
			return err
		}
		if o.JSON {
			return printJSON(o.Out, forOutput(m))
		}
		return writeMigrationStatus(o.Out, m, o.Now(), o.Program)
	}
	v := newMigrationView(o, false)
	_, err := watchMigration(ctx, o.Client, key, v.show)
	if errors.Is(err, context.Canceled) {
		return nil // Ctrl-C ends watching
	}
	if err != nil {
		return err
	}
	return v.finish()
}

// runMigrateRequest is cutover and abort: set the field unless the phase
// refuses it (checked on the object the patch applies to: the patch
// carries its resourceVersion), then, with wait, follow it to the end.
func runMigrateRequest(ctx context.Context, o migrateOptions, name string, act action, wait bool) error {
	key := client.ObjectKey{Namespace: o.Namespace, Name: name}
	m, note, err := requestMigration(ctx, o.Client, key, act)
	if err != nil {
		return err
	}
	if o.JSON {
		fmt.Fprintln(o.Err, note)
	} else {
		fmt.Fprintln(o.Out, note)
	}
	if !wait {
		if o.JSON {
			return printJSON(o.Out, forOutput(m))
		}
		return nil
	}
	v := newMigrationView(o, true)
	if m, err = watchMigration(ctx, o.Client, key, v.show); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("stopped waiting for migration %s/%s (%w); the migration goes on", key.Namespace, key.Name, err)
		}
		return err
	}
	if err := v.finish(); err != nil {
		return err
	}
	return waitResult(m, act)
}

// waitResult is the error a --wait ends with, nil when the migration
// ended the way act asked for.
func waitResult(m *v1alpha1.Migration, act action) error {
	want := v1alpha1.MigrationCompleted
	if act == actionAbort {
		want = v1alpha1.MigrationAborted
	}
	if m.Status.Phase == want {
		return nil
	}
	why := ""
	if m.Status.Message != "" {
		why = ": " + m.Status.Message
	}
	if act == actionAbort && m.Status.Phase == v1alpha1.MigrationCompleted {
		why = ": the group committed before the abort took effect; the destination is promoted" + why
	}
	return fmt.Errorf("migration %s/%s is %s%s", m.Namespace, m.Name, m.Status.Phase, why)
}

// requestMigration sets spec.cutoverRequested or spec.abort with a merge
// patch and says what it did.
func requestMigration(ctx context.Context, cl client.Client, key client.ObjectKey, act action) (*v1alpha1.Migration, string, error) {
	for attempt := 0; ; attempt++ {
		m, err := getMigration(ctx, cl, key)
		if err != nil {
			return nil, "", err
		}
		done, note, err := checkRequest(m, act)
		if err != nil || done {
			return m, note, err
		}
		base := m.DeepCopy()
		if act == actionCutover {
			m.Spec.CutoverRequested = true
		} else {
			m.Spec.Abort = true
		}
		err = cl.Patch(ctx, m, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{}))
		if apierrors.IsConflict(err) && attempt < 10 {
			continue // it changed since we checked its phase: check again
		}
		if err != nil {
			return nil, "", fmt.Errorf("%s migration %s/%s: %w", act, key.Namespace, key.Name, apiError(err))
		}
		return m, note, nil
	}
}

// checkRequest decides on act from m's phase: an error refuses it, done
// means nothing is to be set (already requested); note says what it
// means.
func checkRequest(m *v1alpha1.Migration, act action) (done bool, note string, err error) {
	ref := "migration.voldelta.io/" + m.Name
	st := &m.Status
	switch act {
	case actionCutover:
		switch {
		case st.Phase == v1alpha1.MigrationCompleted:
			return false, "", fmt.Errorf("migration %s/%s is Completed: its cutover already happened (downtime %s); nothing to cut over", m.Namespace, m.Name, downtimeTotal(st))
		case st.Phase.Terminal():
			return false, "", fmt.Errorf("migration %s/%s is %s: it ended and cannot be cut over%s", m.Namespace, m.Name, st.Phase, suffix(st.Message))
		case m.Spec.Abort:
			return false, "", fmt.Errorf("migration %s/%s is being aborted (spec.abort): it cannot be cut over", m.Namespace, m.Name)
		}
		switch st.Phase {
		case v1alpha1.MigrationQuiescing, v1alpha1.MigrationFinalSync, v1alpha1.MigrationCommitting:
			return m.Spec.CutoverRequested, fmt.Sprintf("%s: the cutover is under way (%s)", ref, st.Phase), nil
		case v1alpha1.MigrationReadyForCutover:
			return m.Spec.CutoverRequested, fmt.Sprintf("%s: cutover requested; ready, it starts now (predicted downtime %s)", ref, predicted(st)), nil
		}
		what := "pending"
		if st.Phase == v1alpha1.MigrationPrecopying {
			what = fmt.Sprintf("pre-copying, %d rounds done, last delta %s", st.Rounds, humanBytes(nonNeg(st.LastDeltaBytes)))
		}
		if m.Spec.CutoverRequested {
			return true, fmt.Sprintf("%s: cutover already requested; it starts when the pre-copy converged (%s)", ref, what), nil
		}
		return false, fmt.Sprintf("%s: cutover requested; it starts when the pre-copy converged (%s)", ref, what), nil
	default:
		switch st.Phase {
		case v1alpha1.MigrationCompleted:
			return false, "", fmt.Errorf("migration %s/%s is Completed: the group committed at the destination and an abort is ignored after the commit", m.Namespace, m.Name)
		case v1alpha1.MigrationFailed:
			return false, "", fmt.Errorf("migration %s/%s is Failed: it already ended (workloads scaled back), nothing to abort%s", m.Namespace, m.Name, suffix(st.Message))
		case v1alpha1.MigrationAborted:
			return true, ref + ": already aborted", nil
		case v1alpha1.MigrationCommitting:
			return m.Spec.Abort, ref + ": abort requested; the group is being committed and may complete first", nil
		}
		if m.Spec.Abort {
			return true, ref + ": abort already requested", nil
		}
		return false, fmt.Sprintf("%s: abort requested (was %s); the workloads are scaled back and the destination stays unpromoted", ref, phaseOrPending(st.Phase)), nil
	}
}

func suffix(msg string) string {
	if msg == "" {
		return ""
	}
	return ": " + msg
}

func getMigration(ctx context.Context, cl client.Client, key client.ObjectKey) (*v1alpha1.Migration, error) {
	m := &v1alpha1.Migration{}
	if err := cl.Get(ctx, key, m); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("migration %q not found in namespace %s", key.Name, key.Namespace)
		}
		return nil, apiError(err)
	}
	return m, nil
}

// apiError adds a hint when the cluster does not know Migrations.
func apiError(err error) error {
	if meta.IsNoMatchError(err) {
		return fmt.Errorf("%w (is the Migration CRD installed? kubectl apply -k deploy/crds)", err)
	}
	return err
}

// watchMigration calls show with the Migration as it is and then at
// every change, until show returns true, the migration ends (a terminal
// phase: it returns the last object), ctx ends or it is deleted. A watch
// the server closes or expires is resumed from a fresh read.
func watchMigration(ctx context.Context, cl client.WithWatch, key client.ObjectKey, show func(*v1alpha1.Migration) error) (*v1alpha1.Migration, error) {
	sel := fields.OneTermEqualSelector("metadata.name", key.Name)
	for {
		m, err := getMigration(ctx, cl, key)
		if err != nil {
			return nil, err
		}
		if err := show(m); err != nil || m.Status.Phase.Terminal() {
			return m, err
		}
		started := time.Now()
		w, err := cl.Watch(ctx, &v1alpha1.MigrationList{}, client.InNamespace(key.Namespace),
			&client.ListOptions{FieldSelector: sel, Raw: &metav1.ListOptions{ResourceVersion: m.ResourceVersion, AllowWatchBookmarks: true}})
		if err != nil {
			return nil, apiError(err)
		}
		last, err := follow(ctx, w, key, show)
		w.Stop()
		if err != nil || last != nil {
			return last, err
		}
		if time.Since(started) < time.Second { // the server closes at once: do not hammer it
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Second):
			}
		}
	}
}

// follow shows the events of w until the migration ends (it returns the
// object) or w closes (nil, nil: read again and resume).
func follow(ctx context.Context, w watch.Interface, key client.ObjectKey, show func(*v1alpha1.Migration) error) (*v1alpha1.Migration, error) {
	return followWatch(ctx, w, "migration", key, func(m *v1alpha1.Migration) (bool, error) {
		err := show(m)
		return m.Status.Phase.Terminal(), err
	})
}

// followWatch hands the objects of w's events to show until it says done
// (the object is returned) or w closes (zero, nil: read again and resume);
// kind names the object in errors.
func followWatch[T client.Object](ctx context.Context, w watch.Interface, kind string, key client.ObjectKey, show func(T) (bool, error)) (T, error) {
	var zero T
	for {
		select {
		case <-ctx.Done():
			return zero, ctx.Err()
		case ev, ok := <-w.ResultChan():
			if !ok {
				return zero, nil
			}
			switch ev.Type {
			case watch.Added, watch.Modified:
				obj, ok := ev.Object.(T)
				if !ok {
					return zero, fmt.Errorf("watch of %s %s: unexpected %T", kind, key.Name, ev.Object)
				}
				if done, err := show(obj); done || err != nil {
					return obj, err
				}
			case watch.Deleted:
				return zero, fmt.Errorf("%s %s/%s was deleted", kind, key.Namespace, key.Name)
			case watch.Error:
				err := apierrors.FromObject(ev.Object)
				if apierrors.IsResourceExpired(err) || apierrors.IsGone(err) || statusCode(err) == http.StatusGone {
					return zero, nil
				}
				return zero, fmt.Errorf("watch of %s %s: %w", kind, key.Name, err)
			}
		}
	}
}

func statusCode(err error) int32 {
	var se apierrors.APIStatus
	if errors.As(err, &se) {
		return se.Status().Code
	}
	return 0
}

// forOutput makes m what the API returned, as kubectl prints it: with its
// apiVersion and kind (the typed client drops them) and without
// managedFields.
func forOutput(m *v1alpha1.Migration) *v1alpha1.Migration {
	m.APIVersion, m.Kind = v1alpha1.GroupVersion.String(), "Migration"
	m.ManagedFields = nil
	return m
}

func printJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
