package k8sreceiver

import (
	"context"
	"log/slog"
	"slices"
	"testing"

	velerov2 "github.com/vmware-tanzu/velero/pkg/apis/velero/v2alpha1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crfake "sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/internal/velero"
)

// The objects a restore waits on requeue the DataDownloads that wait on
// them, and only those: the mover's unfinished ones in Velero's namespace.
func TestRestoreWatchesMapToTheirDataDownloads(t *testing.T) {
	dd := func(name, uid, mover string, phase velerov2.DataDownloadPhase, warm string) client.Object {
		d := &velerov2.DataDownload{ObjectMeta: metav1.ObjectMeta{Namespace: "velero", Name: name, UID: types.UID("uid-" + uid)},
			Spec:   velerov2.DataDownloadSpec{DataMover: mover, TargetVolume: velerov2.TargetVolumeSpec{Namespace: "app", PVC: "data"}},
			Status: velerov2.DataDownloadStatus{Phase: phase}}
		if warm != "" {
			d.Annotations = map[string]string{annotationWarm: warm}
			d.Spec.TargetVolume.PVC = "warm-data"
		}
		return d
	}
	s := runtime.NewScheme()
	if err := velero.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	cl := crfake.NewClientBuilder().WithScheme(s).WithObjects(
		dd("cold", "a", velero.MoverName, velerov2.DataDownloadPhaseInProgress, ""),
		dd("other-mover", "b", "velero", velerov2.DataDownloadPhaseInProgress, ""),
		dd("done", "c", velero.MoverName, velerov2.DataDownloadPhaseCompleted, ""),
		dd("warm", "d", velero.MoverName, velerov2.DataDownloadPhasePrepared, "dst/w1"),
	).Build()
	r := &Restores{o: RestoreOptions{Client: cl, Namespace: "velero", Logger: slog.New(slog.DiscardHandler)}}
	ctx := context.Background()
	pvc := func(ns, name string, labels map[string]string) client.Object {
		return &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels}}
	}
	va := func(key string) client.Object {
		va := &storagev1.VolumeAttachment{ObjectMeta: metav1.ObjectMeta{Name: "va"}}
		if key != "" {
			va.Annotations = map[string]string{annotationTarget: key}
		}
		return va
	}
	vt := func(restoring string) client.Object {
		return &v1alpha1.VolumeTarget{ObjectMeta: metav1.ObjectMeta{Namespace: "dst", Name: "w1",
			Annotations: map[string]string{AnnotationRestoring: restoring}}}
	}
	for _, c := range []struct {
		name string
		got  []reconcile.Request
		want []string
	}{
		{"target PVC", r.forClaim(ctx, pvc("app", "data", nil)), []string{"cold"}},
		{"warm target PVC", r.forClaim(ctx, pvc("app", "warm-data", nil)), []string{"warm"}},
		{"prime PVC", r.forClaim(ctx, pvc("velero", restorePrimeName("uid-a"), map[string]string{LabelRestoreOf: "uid-a"})), []string{"cold"}},
		{"prime of a finished restore", r.forClaim(ctx, pvc("velero", "p", map[string]string{LabelRestoreOf: "uid-c"})), nil},
		{"unrelated PVC", r.forClaim(ctx, pvc("app", "logs", nil)), nil},
		{"cold restore's attachment", r.forAttachment(ctx, va(annotationRestore+"velero/cold")), []string{"cold"}},
		{"attachment of a restore elsewhere", r.forAttachment(ctx, va(annotationRestore+"other/cold")), nil},
		{"warm replica's attachment", r.forAttachment(ctx, va("dst/w1")), []string{"warm"}},
		{"populator's attachment", r.forAttachment(ctx, va(annotationPopulator+"app/data")), nil},
		{"foreign attachment", r.forAttachment(ctx, va("")), nil},
		{"replica being restored onto", r.forReplica(ctx, vt("velero/warm")), []string{"warm"}},
		{"replica restored from elsewhere", r.forReplica(ctx, vt("other/warm")), nil},
		{"replica not restored onto", r.forReplica(ctx, vt("")), nil},
	} {
		var names []string
		for _, q := range c.got {
			if q.Namespace != "velero" {
				t.Errorf("%s: requeues %v outside Velero's namespace", c.name, q)
			}
			names = append(names, q.Name)
		}
		slices.Sort(names)
		if !slices.Equal(names, c.want) {
			t.Errorf("%s: requeues %v, want %v", c.name, names, c.want)
		}
	}
}
