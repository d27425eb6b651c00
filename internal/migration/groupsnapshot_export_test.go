package migration

import (
	"context"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
)

// GroupSnapshotCut exposes groupSnapshotCut to the tests.
func (r *Reconciler) GroupSnapshotCut(ctx context.Context, m *v1alpha1.Migration) (bool, error) {
	return r.groupSnapshotCut(ctx, m)
}
