package k8sreceiver

import (
	"context"
	"strings"

	velerov2 "github.com/vmware-tanzu/velero/pkg/apis/velero/v2alpha1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/voldelta/voldelta/internal/velero"
)

// A restore waits on objects other than its DataDownload: the prime PVC
// to be provisioned, the volume to attach and detach, the warm replica's
// VolumeTarget to be deleted, the target PVC to be bound. Their changes
// requeue the DataDownload at once; the timed requeues of its steps stay
// as the fallback (a Longhorn volume's attachment, for one, is not
// watched).

// forReplica maps a VolumeTarget to the DataDownload restoring onto it
// (its annotation AnnotationRestoring).
func (r *Restores) forReplica(_ context.Context, o client.Object) []reconcile.Request {
	ns, name, ok := strings.Cut(o.GetAnnotations()[AnnotationRestoring], "/")
	if !ok || ns != r.o.Namespace {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: ns, Name: name}}}
}

// forClaim maps a PVC to the DataDownloads it is the prime of (its label
// LabelRestoreOf) or the target of.
func (r *Restores) forClaim(ctx context.Context, o client.Object) []reconcile.Request {
	if uid := o.GetLabels()[LabelRestoreOf]; uid != "" {
		return r.downloads(ctx, func(dd *velerov2.DataDownload) bool { return string(dd.UID) == uid })
	}
	return r.downloads(ctx, func(dd *velerov2.DataDownload) bool {
		return dd.Spec.TargetVolume.Namespace == o.GetNamespace() && dd.Spec.TargetVolume.PVC == o.GetName()
	})
}

// forAttachment maps a VolumeAttachment to the DataDownload that made it
// (a cold restore's) or that restores onto the VolumeTarget that made it
// (a warm restore's).
func (r *Restores) forAttachment(ctx context.Context, o client.Object) []reconcile.Request {
	key := o.GetAnnotations()[annotationTarget]
	if dd, ok := strings.CutPrefix(key, annotationRestore); ok {
		if ns, name, ok := strings.Cut(dd, "/"); ok && ns == r.o.Namespace {
			return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: ns, Name: name}}}
		}
		return nil
	}
	if key == "" || strings.HasPrefix(key, annotationPopulator) {
		return nil
	}
	return r.downloads(ctx, func(dd *velerov2.DataDownload) bool { return dd.Annotations[annotationWarm] == key })
}

// downloads lists the mover's unfinished DataDownloads that match, from
// the manager's cache. A failed list requeues nothing: the timed requeues
// still run.
func (r *Restores) downloads(ctx context.Context, match func(*velerov2.DataDownload) bool) []reconcile.Request {
	var l velerov2.DataDownloadList
	if err := r.o.Client.List(ctx, &l, client.InNamespace(r.o.Namespace)); err != nil {
		r.o.Logger.Warn("list DataDownloads to requeue", "err", err)
		return nil
	}
	var reqs []reconcile.Request
	for i := range l.Items {
		dd := &l.Items[i]
		if dd.Spec.DataMover != velero.MoverName || downloadFinished(dd.Status.Phase) || !match(dd) {
			continue
		}
		reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: dd.Namespace, Name: dd.Name}})
	}
	return reqs
}

// downloadFinished says whether a DataDownload in phase p is done with.
func downloadFinished(p velerov2.DataDownloadPhase) bool {
	switch p {
	case velerov2.DataDownloadPhaseCompleted, velerov2.DataDownloadPhaseFailed, velerov2.DataDownloadPhaseCanceled:
		return true
	}
	return false
}
