package csi

import (
	"context"
	"errors"
	"fmt"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Snapshotter creates, inspects and deletes CSI VolumeSnapshots.
type Snapshotter struct {
	client snapclient.Interface
	poll   time.Duration
}

// NewSnapshotter returns a Snapshotter. poll is the RetryAfter of a
// snapshot that is not ready yet (default 2s); callers that watch
// VolumeSnapshots are woken earlier.
func NewSnapshotter(client snapclient.Interface, poll time.Duration) (*Snapshotter, error) {
	if client == nil {
		return nil, errors.New("csi: NewSnapshotter needs a snapshot client")
	}
	if poll <= 0 {
		poll = 2 * time.Second
	}
	return &Snapshotter{client: client, poll: poll}, nil
}

// SnapshotRequest describes the VolumeSnapshot of one round.
type SnapshotRequest struct {
	Namespace string
	Name      string
	PVC       string
	// Class is the VolumeSnapshotClass; "" for the default class.
	Class  string
	Labels map[string]string
	// Owner, if set, becomes the snapshot's controller reference (so it is
	// garbage-collected with its VolumeSync).
	Owner *metav1.OwnerReference
	// Existing: the snapshot is someone else's (e.g. a member of a
	// VolumeGroupSnapshot); it is never created, and until it exists the
	// result is not Ready.
	Existing bool
}

// SnapshotResult is the state of an ensured snapshot.
type SnapshotResult struct {
	// Ready: the snapshot and its content are ready to use and Handle is set.
	Ready bool
	// RetryAfter is when to look again if not Ready.
	RetryAfter time.Duration
	// Created: this call created the VolumeSnapshot.
	Created bool
	// Content is the bound VolumeSnapshotContent's name, once bound.
	Content string
	// Handle is the CSI snapshot handle (content status.snapshotHandle).
	Handle string
	// Driver is the content's CSI driver.
	Driver string
	// RestoreSize in bytes, if reported.
	RestoreSize int64
	// CreationTime is when the storage cut the snapshot, if reported.
	CreationTime time.Time
}

// EnsureSnapshot creates the snapshot req describes if it does not exist
// and reports whether it is ready. A snapshot or content with an error
// gives an error wrapping ErrSnapshotFailed: delete it (EnsureDeleted) and
// take another. An existing snapshot of another PVC is an error.
func (s *Snapshotter) EnsureSnapshot(ctx context.Context, req SnapshotRequest) (SnapshotResult, error) {
	api := s.client.SnapshotV1().VolumeSnapshots(req.Namespace)
	vs, err := api.Get(ctx, req.Name, metav1.GetOptions{})
	created := false
	if apierrors.IsNotFound(err) && req.Existing {
		return SnapshotResult{RetryAfter: s.poll}, nil
	}
	if apierrors.IsNotFound(err) {
		obj := &snapv1.VolumeSnapshot{
			ObjectMeta: metav1.ObjectMeta{Name: req.Name, Namespace: req.Namespace, Labels: req.Labels},
			Spec: snapv1.VolumeSnapshotSpec{
				Source: snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: &req.PVC},
			},
		}
		if req.Class != "" {
			obj.Spec.VolumeSnapshotClassName = &req.Class
		}
		if req.Owner != nil {
			obj.OwnerReferences = []metav1.OwnerReference{*req.Owner}
		}
		vs, err = api.Create(ctx, obj, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			vs, err = api.Get(ctx, req.Name, metav1.GetOptions{})
		} else {
			created = err == nil
		}
	}
	if err != nil {
		return SnapshotResult{}, fmt.Errorf("VolumeSnapshot %s/%s: %w", req.Namespace, req.Name, err)
	}
	if src := vs.Spec.Source.PersistentVolumeClaimName; src == nil || *src != req.PVC {
		return SnapshotResult{}, fmt.Errorf("VolumeSnapshot %s/%s exists but is not a snapshot of PVC %s", req.Namespace, req.Name, req.PVC)
	}
	if req.Owner != nil && !created && !req.Existing {
		if ref := metav1.GetControllerOf(vs); ref == nil || ref.UID != req.Owner.UID {
			return SnapshotResult{}, fmt.Errorf("VolumeSnapshot %s/%s exists but was not taken for %s %s", req.Namespace, req.Name, req.Owner.Kind, req.Owner.Name)
		}
	}
	res := SnapshotResult{Created: created, RetryAfter: s.poll}
	if vs.DeletionTimestamp != nil {
		return res, fmt.Errorf("VolumeSnapshot %s/%s is being deleted: %w", req.Namespace, req.Name, ErrSnapshotFailed)
	}
	st := vs.Status
	if st == nil {
		return res, nil
	}
	if st.Error != nil && st.Error.Message != nil {
		return res, fmt.Errorf("VolumeSnapshot %s/%s: %w: %s", req.Namespace, req.Name, ErrSnapshotFailed, *st.Error.Message)
	}
	if st.BoundVolumeSnapshotContentName == nil || *st.BoundVolumeSnapshotContentName == "" {
		return res, nil
	}
	res.Content = *st.BoundVolumeSnapshotContentName
	vsc, err := s.client.SnapshotV1().VolumeSnapshotContents().Get(ctx, res.Content, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return res, nil // bound in the snapshot's status before the content is visible to us
	}
	if err != nil {
		return res, fmt.Errorf("VolumeSnapshotContent %s: %w", res.Content, err)
	}
	res.Driver = vsc.Spec.Driver
	cst := vsc.Status
	if cst == nil {
		return res, nil
	}
	if cst.Error != nil && cst.Error.Message != nil {
		return res, fmt.Errorf("VolumeSnapshotContent %s: %w: %s", res.Content, ErrSnapshotFailed, *cst.Error.Message)
	}
	if cst.SnapshotHandle != nil {
		res.Handle = *cst.SnapshotHandle
	}
	if cst.RestoreSize != nil {
		res.RestoreSize = *cst.RestoreSize
	}
	if cst.CreationTime != nil {
		res.CreationTime = time.Unix(0, *cst.CreationTime)
	}
	ready := st.ReadyToUse != nil && *st.ReadyToUse && cst.ReadyToUse != nil && *cst.ReadyToUse
	if ready && res.Handle != "" {
		res.Ready, res.RetryAfter = true, 0
	}
	return res, nil
}

// DeleteResult says whether a snapshot is gone.
type DeleteResult struct {
	// Gone: the VolumeSnapshot no longer exists.
	Gone bool
	// RetryAfter is when to look again if not Gone.
	RetryAfter time.Duration
}

// EnsureDeleted deletes the VolumeSnapshot namespace/name if it exists.
// Deletion is asynchronous (the snapshot controller removes the content
// first); Gone says whether the object is gone already.
func (s *Snapshotter) EnsureDeleted(ctx context.Context, namespace, name string) (DeleteResult, error) {
	api := s.client.SnapshotV1().VolumeSnapshots(namespace)
	vs, err := api.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return DeleteResult{Gone: true}, nil
	}
	if err != nil {
		return DeleteResult{}, fmt.Errorf("VolumeSnapshot %s/%s: %w", namespace, name, err)
	}
	if vs.DeletionTimestamp == nil {
		err = api.Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &vs.UID}})
		if apierrors.IsNotFound(err) {
			return DeleteResult{Gone: true}, nil
		}
		if err != nil {
			return DeleteResult{}, fmt.Errorf("delete VolumeSnapshot %s/%s: %w", namespace, name, err)
		}
	}
	if _, err := api.Get(ctx, name, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		return DeleteResult{Gone: true}, nil
	}
	return DeleteResult{RetryAfter: s.poll}, nil
}
