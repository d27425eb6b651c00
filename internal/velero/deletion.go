package velero

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	velerov1 "github.com/vmware-tanzu/velero/pkg/apis/velero/v1"
	velerov2 "github.com/vmware-tanzu/velero/pkg/apis/velero/v2alpha1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	"github.com/voldelta/voldelta/objstore"
)

// FinalizerDeleteBackup is the finalizer Velero's backup deletion puts on
// a DeleteBackupRequest for the data movers: it stays until each mover
// deleted its data of the backup (Velero's design
// volume-snapshot-data-movement, "Backup Deletion").
const FinalizerDeleteBackup = "velero.io/dm-delete-backup"

// LabelBackupName is the label of a backup's DataUploads naming it.
const LabelBackupName = "velero.io/backup-name"

// DeletionOptions configure Deletions.
type DeletionOptions struct {
	// Client reads DeleteBackupRequests, DataUploads and locations, and
	// removes the finalizer and the DataUploads. Required.
	Client client.Client
	// Kube reads the mover's ConfigMap and the locations' Secrets.
	// Required.
	Kube kubernetes.Interface
	// Namespace is Velero's. Required.
	Namespace string
	// Recorder, Logger: optional.
	Recorder events.EventRecorder
	Logger   *slog.Logger
}

// Deletions reconciles DeleteBackupRequests: the generations the voldelta
// mover pushed for the backup are removed from the store (their manifests
// go to the trash; `voldelta gc` reclaims their chunks), its DataUploads
// deleted, then the finalizer removed. A failure leaves the finalizer and
// the DataUploads not yet done, and is retried.
type Deletions struct{ o DeletionOptions }

// NewDeletions checks o and returns Deletions.
func NewDeletions(o DeletionOptions) (*Deletions, error) {
	if o.Client == nil || o.Kube == nil || o.Namespace == "" {
		return nil, errors.New("velero: DeletionOptions.Client, Kube and Namespace are required")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Deletions{o: o}, nil
}

// SetupWithManager registers the reconciler for the DeleteBackupRequests
// of Velero's namespace that carry the finalizer.
func (d *Deletions) SetupWithManager(mgr ctrl.Manager) error {
	mine := predicate.NewPredicateFuncs(func(o client.Object) bool {
		return o.GetNamespace() == d.o.Namespace && controllerutil.ContainsFinalizer(o, FinalizerDeleteBackup)
	})
	return ctrl.NewControllerManagedBy(mgr).Named("velero-deletebackup").
		For(&velerov1.DeleteBackupRequest{}, builder.WithPredicates(mine)).Complete(d)
}

// Reconcile implements reconcile.Reconciler.
func (d *Deletions) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var dbr velerov1.DeleteBackupRequest
	if err := d.o.Client.Get(ctx, req.NamespacedName, &dbr); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !controllerutil.ContainsFinalizer(&dbr, FinalizerDeleteBackup) {
		return ctrl.Result{}, nil
	}
	var dus velerov2.DataUploadList
	if err := d.o.Client.List(ctx, &dus, client.InNamespace(d.o.Namespace), client.MatchingLabels{LabelBackupName: dbr.Spec.BackupName}); err != nil {
		return ctrl.Result{}, fmt.Errorf("list DataUploads of backup %s: %w", dbr.Spec.BackupName, err)
	}
	var errs []error
	for i := range dus.Items {
		du := &dus.Items[i]
		if du.Spec.DataMover != MoverName {
			continue
		}
		if err := d.forget(ctx, du); err != nil {
			errs = append(errs, fmt.Errorf("DataUpload %s: %w", du.Name, err))
			continue
		}
		if err := d.o.Client.Delete(ctx, du); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		d.event(&dbr, corev1.EventTypeWarning, "DeleteFailed", "%v", err)
		return ctrl.Result{}, err
	}
	orig := dbr.DeepCopy()
	controllerutil.RemoveFinalizer(&dbr, FinalizerDeleteBackup)
	if err := d.o.Client.Patch(ctx, &dbr, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
		return ctrl.Result{}, fmt.Errorf("remove finalizer: %w", err)
	}
	d.event(&dbr, corev1.EventTypeNormal, "Deleted", "voldelta's data of backup %s removed", dbr.Spec.BackupName)
	return ctrl.Result{}, nil
}

// forget removes the generation a completed DataUpload pushed; one that
// never completed pushed none.
func (d *Deletions) forget(ctx context.Context, du *velerov2.DataUpload) error {
	if du.Status.Phase != velerov2.DataUploadPhaseCompleted || du.Status.SnapshotID == "" {
		return nil
	}
	volume, gen, err := ParseSnapshotID(du.Status.SnapshotID)
	if err != nil {
		return err
	}
	store, err := OpenLocation(ctx, d.o.Client, d.o.Kube, d.o.Namespace, du.Spec.BackupStorageLocation, d.o.Logger)
	if err != nil {
		return err
	}
	err = store.Forget(ctx, volume, uint64(gen))
	if errors.Is(err, objstore.ErrNotFound) {
		return nil // removed already
	}
	return err
}

func (d *Deletions) event(dbr *velerov1.DeleteBackupRequest, typ, reason, note string, args ...any) {
	if d.o.Recorder != nil {
		d.o.Recorder.Eventf(dbr, nil, typ, reason, "DeleteBackup", note, args...)
	}
}
