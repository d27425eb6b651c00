package k8sreceiver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/csi"
	"github.com/voldelta/voldelta/receiver"
)

// The volume populator: a PVC whose spec.dataSourceRef names a
// VolumeTarget (apiGroup voldelta.io, kind VolumeTarget, same namespace)
// is given a volume that holds that target's last committed generation,
// while the target keeps receiving rounds. It follows the flow of
// Kubernetes' lib-volume-populator, with the receiver doing the copy
// itself instead of a pod:
//
//  1. Provisioning: a "prime" PVC like the user's, without a data source,
//     is created in the same namespace (voldelta-prime-<uid of the PVC>);
//     its StorageClass provisions a volume (on the receiver's node when
//     the class binds on first consumer).
//  2. Copying: the prime's PV is attached to the receiver's node, and the
//     committed generation is copied into it under the target's lock
//     (receiver.CopyCommitted: every entry checked as read, then the copy
//     read back against the manifest); then it is detached.
//  3. Rebinding: the PV, annotated with where its bytes came from, is
//     handed to the user's PVC (claimRef); Kubernetes' PV controller binds
//     them and the prime PVC, now Lost, is deleted.
//  4. Then the PVC is bound and annotated with the VolumeTarget, the
//     generation and its root hash (and the Event "Populated" says so).

// PopulatePhase is where the population of one PVC is; the prime PVC
// carries it (annotation voldelta.io/populate-phase).
type PopulatePhase string

// The phases of a population, in order.
const (
	PopulateProvisioning PopulatePhase = "Provisioning"
	PopulateCopying      PopulatePhase = "Copying"
	PopulateRebinding    PopulatePhase = "Rebinding"
)

// Labels and annotations of the populator.
const (
	// LabelPrimeOf marks a prime PVC with the UID of the PVC it
	// populates.
	LabelPrimeOf = "voldelta.io/prime-of"
	// AnnotationPrimeFor is the name of the PVC a prime populates.
	AnnotationPrimeFor = "voldelta.io/prime-for"
	// AnnotationPopulatePhase is a prime PVC's PopulatePhase.
	AnnotationPopulatePhase = "voldelta.io/populate-phase"
	// AnnotationPopulatedFrom is set on a populated PV and PVC:
	// "<namespace>/<VolumeTarget>" its bytes were copied from; the
	// generation and root hash go in AnnotationGeneration and
	// AnnotationRootHash.
	AnnotationPopulatedFrom = "voldelta.io/populated-from"

	annotationSelectedNode = "volume.kubernetes.io/selected-node"
	annotationPopulator    = "populate:" // annotationTarget of the populator's VolumeAttachments, + namespace/pvc
)

// Event reasons of the populator, on the PVC being populated.
const (
	ReasonPopulateWaiting   = "PopulateWaiting"
	ReasonPopulateFailed    = "PopulateFailed"
	ReasonPopulateCopied    = "PopulateCopied"
	ReasonPopulateCompleted = "Populated"
)

// PopulatorOptions configure a Populator.
type PopulatorOptions struct {
	// Client reads PVCs and VolumeTargets (cached) and writes PVCs.
	// Required.
	Client client.Client
	// Kube reads and patches PVs and StorageClasses and manages
	// VolumeAttachments. Required.
	Kube kubernetes.Interface
	// Resolver resolves the prime's PV to a device on this node. Required.
	Resolver *csi.Resolver
	// NodeName is the receiver's node. Required.
	NodeName string
	// StateDir is the receiver's state directory. Required.
	StateDir string
	// Workers is the parallelism of the copy; default GOMAXPROCS.
	Workers int
	// Recorder records Events on the PVCs; optional.
	Recorder events.EventRecorder
	// Logger; nil logs nothing.
	Logger *slog.Logger
}

// Populator reconciles PVCs whose dataSourceRef names a VolumeTarget.
type Populator struct{ o PopulatorOptions }

// NewPopulator checks o and returns a Populator.
func NewPopulator(o PopulatorOptions) (*Populator, error) {
	switch {
	case o.Client == nil || o.Kube == nil || o.Resolver == nil:
		return nil, errors.New("k8sreceiver: PopulatorOptions.Client, Kube and Resolver are required")
	case o.NodeName == "" || o.StateDir == "":
		return nil, errors.New("k8sreceiver: PopulatorOptions.NodeName and StateDir are required")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Populator{o: o}, nil
}

// wantsPopulation reports whether pvc's dataSourceRef names a VolumeTarget.
func wantsPopulation(pvc *corev1.PersistentVolumeClaim) bool {
	ref := pvc.Spec.DataSourceRef
	return ref != nil && ref.APIGroup != nil && *ref.APIGroup == v1alpha1.GroupVersion.Group && ref.Kind == "VolumeTarget"
}

// PrimeName is the name of the prime PVC of the PVC with that UID.
func PrimeName(uid types.UID) string { return "voldelta-prime-" + string(uid) }

// SetupWithManager registers the populator: PVCs that name a VolumeTarget,
// and their primes (which requeue the PVC they populate).
func (p *Populator) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("populator").
		For(&corev1.PersistentVolumeClaim{}, builder.WithPredicates(predicate.NewPredicateFuncs(func(o client.Object) bool {
			return wantsPopulation(o.(*corev1.PersistentVolumeClaim))
		}))).
		Watches(&corev1.PersistentVolumeClaim{}, handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
			if o.GetLabels()[LabelPrimeOf] == "" || o.GetAnnotations()[AnnotationPrimeFor] == "" {
				return nil
			}
			return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: o.GetAnnotations()[AnnotationPrimeFor]}}}
		})).
		Complete(p)
}

// Reconcile implements reconcile.Reconciler: one step of the population
// of a PVC; it is requeued until the PVC is bound.
func (p *Populator) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var pvc corev1.PersistentVolumeClaim
	if err := p.o.Client.Get(ctx, req.NamespacedName, &pvc); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !wantsPopulation(&pvc) || pvc.DeletionTimestamp != nil {
		return ctrl.Result{}, p.deletePrime(ctx, &pvc)
	}
	if pvc.Spec.VolumeName != "" {
		return ctrl.Result{}, p.finish(ctx, &pvc)
	}
	if ns := pvc.Spec.DataSourceRef.Namespace; ns != nil && *ns != "" && *ns != pvc.Namespace {
		p.event(&pvc, corev1.EventTypeWarning, ReasonPopulateFailed, "VolumeTarget %s/%s is in another namespace: a PVC is populated only from a VolumeTarget of its own namespace", *ns, pvc.Spec.DataSourceRef.Name)
		return ctrl.Result{}, nil
	}
	vt, wait, err := p.source(ctx, &pvc)
	if err != nil || vt == nil {
		return ctrl.Result{RequeueAfter: wait}, err
	}
	prime, err := p.ensurePrime(ctx, &pvc)
	if err != nil {
		return ctrl.Result{}, err
	}
	if prime.Spec.VolumeName == "" || prime.Status.Phase != corev1.ClaimBound {
		return ctrl.Result{RequeueAfter: 2 * time.Second}, nil // Provisioning
	}
	pv, err := p.o.Kube.CoreV1().PersistentVolumes().Get(ctx, prime.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		return ctrl.Result{}, fmt.Errorf("get PV %s of prime PVC %s/%s: %w", prime.Spec.VolumeName, prime.Namespace, prime.Name, err)
	}
	if pv.Annotations[AnnotationPopulatedFrom] == "" {
		wait, err := p.copy(ctx, &pvc, prime, pv, vt)
		return ctrl.Result{RequeueAfter: wait}, err
	}
	return p.rebind(ctx, &pvc, prime, pv)
}

// source returns the VolumeTarget a PVC names once it has a generation to
// copy; nil and how long to wait otherwise.
func (p *Populator) source(ctx context.Context, pvc *corev1.PersistentVolumeClaim) (*v1alpha1.VolumeTarget, time.Duration, error) {
	var vt v1alpha1.VolumeTarget
	err := p.o.Client.Get(ctx, client.ObjectKey{Namespace: pvc.Namespace, Name: pvc.Spec.DataSourceRef.Name}, &vt)
	if apierrors.IsNotFound(err) {
		p.event(pvc, corev1.EventTypeWarning, ReasonPopulateWaiting, "VolumeTarget %s/%s not found", pvc.Namespace, pvc.Spec.DataSourceRef.Name)
		return nil, 10 * time.Second, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("get VolumeTarget: %w", err)
	}
	if vt.Status.Generation == 0 {
		p.event(pvc, corev1.EventTypeNormal, ReasonPopulateWaiting, "VolumeTarget %s/%s has no committed generation yet", vt.Namespace, vt.Name)
		return nil, 5 * time.Second, nil
	}
	return &vt, 0, nil
}

// ensurePrime returns the prime PVC of pvc, creating it if needed.
func (p *Populator) ensurePrime(ctx context.Context, pvc *corev1.PersistentVolumeClaim) (*corev1.PersistentVolumeClaim, error) {
	var prime corev1.PersistentVolumeClaim
	err := p.o.Client.Get(ctx, client.ObjectKey{Namespace: pvc.Namespace, Name: PrimeName(pvc.UID)}, &prime)
	if err == nil || !apierrors.IsNotFound(err) {
		return &prime, err
	}
	spec := corev1.PersistentVolumeClaimSpec{AccessModes: pvc.Spec.AccessModes, Resources: pvc.Spec.Resources,
		StorageClassName: pvc.Spec.StorageClassName, VolumeMode: pvc.Spec.VolumeMode}
	ann := map[string]string{AnnotationPrimeFor: pvc.Name, AnnotationPopulatePhase: string(PopulateProvisioning)}
	if late, err := bindsLate(ctx, p.o.Kube, pvc.Spec.StorageClassName); err != nil {
		return nil, err
	} else if late {
		ann[annotationSelectedNode] = p.o.NodeName
	}
	prime = corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: pvc.Namespace, Name: PrimeName(pvc.UID),
		Labels: map[string]string{LabelPrimeOf: string(pvc.UID), managedBy: managedByReceiver}, Annotations: ann}, Spec: spec}
	if err := p.o.Client.Create(ctx, &prime); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("create prime PVC %s/%s: %w", prime.Namespace, prime.Name, err)
	}
	p.event(pvc, corev1.EventTypeNormal, ReasonPopulateWaiting, "provisioning prime PVC %s to copy VolumeTarget %s into", prime.Name, pvc.Spec.DataSourceRef.Name)
	return &prime, nil
}

// bindsLate reports whether the StorageClass binds on first consumer.
func bindsLate(ctx context.Context, kube kubernetes.Interface, class *string) (bool, error) {
	if class == nil || *class == "" {
		return false, nil
	}
	sc, err := kube.StorageV1().StorageClasses().Get(ctx, *class, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("get StorageClass %s: %w", *class, err)
	}
	return sc.VolumeBindingMode != nil && *sc.VolumeBindingMode == storagev1.VolumeBindingWaitForFirstConsumer, nil
}

// copy attaches the prime's PV here, copies the target's committed
// generation into it and detaches it; it returns how long to wait before
// the next step.
func (p *Populator) copy(ctx context.Context, pvc, prime *corev1.PersistentVolumeClaim, pv *corev1.PersistentVolume, vt *v1alpha1.VolumeTarget) (time.Duration, error) {
	if err := p.setPhase(ctx, prime, PopulateCopying); err != nil {
		return 0, err
	}
	vol, err := p.o.Resolver.ResolvePV(ctx, pv.Name)
	if err != nil {
		return 0, err
	}
	att, err := p.o.Resolver.AttachedNode(ctx, vol)
	if errors.Is(err, csi.ErrNotAttached) {
		return time.Second, p.attach(ctx, pvc, pv.Name, vol.Driver)
	}
	if err != nil {
		return 0, err
	}
	if att.Node != p.o.NodeName {
		p.event(pvc, corev1.EventTypeWarning, ReasonPopulateWaiting, "prime volume %s is attached to node %s, not to the receiver's node %s", pv.Name, att.Node, p.o.NodeName)
		return 10 * time.Second, nil
	}
	if vol.DevicePath == "" {
		return 0, fmt.Errorf("prime volume %s: no device for driver %s on this node", pv.Name, vol.Driver)
	}
	res, err := receiver.CopyCommitted(ctx, receiver.Volume{Name: vt.Spec.RemoteVolume, StateDir: p.o.StateDir}, vol.DevicePath, p.o.Workers)
	switch {
	case errors.Is(err, receiver.ErrBusy):
		return 2 * time.Second, nil // a round is applying: copy what it commits
	case errors.Is(err, receiver.ErrNotCurrent), errors.Is(err, receiver.ErrNotCommitted), errors.Is(err, receiver.ErrNoState):
		p.event(pvc, corev1.EventTypeWarning, ReasonPopulateWaiting, "VolumeTarget %s holds no current generation to copy: %v", vt.Name, err)
		return 10 * time.Second, nil
	case errors.Is(err, receiver.ErrTooSmall):
		p.event(pvc, corev1.EventTypeWarning, ReasonPopulateFailed, "%v: request at least the target's size", err)
		return time.Minute, nil
	case err != nil:
		p.event(pvc, corev1.EventTypeWarning, ReasonPopulateFailed, "copy: %v", err)
		return 0, err
	}
	patch := client.MergeFrom(pv.DeepCopy())
	pv.Annotations = merge(pv.Annotations, map[string]string{AnnotationPopulatedFrom: vt.Namespace + "/" + vt.Name,
		v1alpha1.AnnotationGeneration: strconv.FormatUint(res.Generation, 10), v1alpha1.AnnotationRootHash: res.Root})
	if err := patchPV(ctx, p.o.Kube, pv, patch); err != nil {
		return 0, err
	}
	p.event(pvc, corev1.EventTypeNormal, ReasonPopulateCopied, "copied generation %d of VolumeTarget %s (root %.16s, %d bytes written) into %s, verified",
		res.Generation, vt.Name, res.Root, res.Bytes, pv.Name)
	p.o.Logger.Info("populated", "pvc", pvc.Namespace+"/"+pvc.Name, "volumetarget", vt.Name, "generation", res.Generation, "duration", res.Duration)
	return time.Second, p.detach(ctx, pvc) // then Rebinding
}

// rebind detaches the populated PV and hands it to pvc.
func (p *Populator) rebind(ctx context.Context, pvc, prime *corev1.PersistentVolumeClaim, pv *corev1.PersistentVolume) (ctrl.Result, error) {
	if err := p.setPhase(ctx, prime, PopulateRebinding); err != nil {
		return ctrl.Result{}, err
	}
	if err := p.detach(ctx, pvc); err != nil {
		return ctrl.Result{}, err
	}
	if att, err := p.o.Resolver.AttachedNode(ctx, &csi.Volume{PV: pv.Name, Driver: pv.Spec.CSI.Driver}); err == nil {
		p.o.Logger.Debug("populated volume still attached", "pv", pv.Name, "node", att.Node)
		return ctrl.Result{RequeueAfter: time.Second}, nil
	}
	if ref := pv.Spec.ClaimRef; ref == nil || ref.UID != pvc.UID {
		patch := client.MergeFrom(pv.DeepCopy())
		pv.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1",
			Namespace: pvc.Namespace, Name: pvc.Name, UID: pvc.UID, ResourceVersion: pvc.ResourceVersion}
		if err := patchPV(ctx, p.o.Kube, pv, patch); err != nil {
			return ctrl.Result{}, err
		}
	}
	return ctrl.Result{RequeueAfter: time.Second}, nil // the PV controller binds them
}

// finish annotates a bound, populated PVC from its PV and deletes its
// prime.
func (p *Populator) finish(ctx context.Context, pvc *corev1.PersistentVolumeClaim) error {
	pv, err := p.o.Kube.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get PV %s: %w", pvc.Spec.VolumeName, err)
	}
	from := pv.Annotations[AnnotationPopulatedFrom]
	if from != "" && pvc.Annotations[AnnotationPopulatedFrom] == "" {
		orig := pvc.DeepCopy()
		pvc.Annotations = merge(pvc.Annotations, map[string]string{AnnotationPopulatedFrom: from,
			v1alpha1.AnnotationGeneration: pv.Annotations[v1alpha1.AnnotationGeneration], v1alpha1.AnnotationRootHash: pv.Annotations[v1alpha1.AnnotationRootHash]})
		if err := p.o.Client.Patch(ctx, pvc, client.MergeFrom(orig)); err != nil {
			return fmt.Errorf("annotate PVC %s/%s: %w", pvc.Namespace, pvc.Name, err)
		}
		p.event(pvc, corev1.EventTypeNormal, ReasonPopulateCompleted, "bound to %s, populated with generation %s of %s",
			pv.Name, pv.Annotations[v1alpha1.AnnotationGeneration], from)
	}
	return p.deletePrime(ctx, pvc)
}

// deletePrime deletes pvc's prime PVC, if any, and the populator's
// VolumeAttachment.
func (p *Populator) deletePrime(ctx context.Context, pvc *corev1.PersistentVolumeClaim) error {
	if err := p.detach(ctx, pvc); err != nil {
		return err
	}
	prime := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: pvc.Namespace, Name: PrimeName(pvc.UID)}}
	if err := p.o.Client.Delete(ctx, prime); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete prime PVC %s/%s: %w", prime.Namespace, prime.Name, err)
	}
	return nil
}

// attach creates a VolumeAttachment of pv to the receiver's node.
func (p *Populator) attach(ctx context.Context, pvc *corev1.PersistentVolumeClaim, pv, driver string) error {
	return attachHere(ctx, p.o.Kube, p.o.NodeName, annotationPopulator+pvc.Namespace+"/"+pvc.Name, pv, driver)
}

// detach deletes the populator's VolumeAttachments for pvc.
func (p *Populator) detach(ctx context.Context, pvc *corev1.PersistentVolumeClaim) error {
	return detachKey(ctx, p.o.Kube, annotationPopulator+pvc.Namespace+"/"+pvc.Name)
}

// attachHere creates a VolumeAttachment of pv to node, annotated with key
// (what it is for).
func attachHere(ctx context.Context, kube kubernetes.Interface, node, key, pv, driver string) error {
	va := &storagev1.VolumeAttachment{
		ObjectMeta: metav1.ObjectMeta{Name: attachmentName(pv, node),
			Labels:      map[string]string{managedBy: managedByReceiver},
			Annotations: map[string]string{annotationTarget: key}},
		Spec: storagev1.VolumeAttachmentSpec{Attacher: driver, NodeName: node,
			Source: storagev1.VolumeAttachmentSource{PersistentVolumeName: &pv}},
	}
	_, err := kube.StorageV1().VolumeAttachments().Create(ctx, va, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("attach volume %s to %s: %w", pv, node, err)
	}
	return nil
}

// detachKey deletes the receiver's VolumeAttachments annotated with key.
func detachKey(ctx context.Context, kube kubernetes.Interface, key string) error {
	vas, err := kube.StorageV1().VolumeAttachments().List(ctx, metav1.ListOptions{LabelSelector: managedBy + "=" + managedByReceiver})
	if err != nil {
		return fmt.Errorf("list VolumeAttachments: %w", err)
	}
	for _, va := range vas.Items {
		if va.Annotations[annotationTarget] != key || va.DeletionTimestamp != nil {
			continue
		}
		err := kube.StorageV1().VolumeAttachments().Delete(ctx, va.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("detach %s: %w", va.Name, err)
		}
	}
	return nil
}

func (p *Populator) setPhase(ctx context.Context, prime *corev1.PersistentVolumeClaim, ph PopulatePhase) error {
	if prime.Annotations[AnnotationPopulatePhase] == string(ph) {
		return nil
	}
	orig := prime.DeepCopy()
	prime.Annotations = merge(prime.Annotations, map[string]string{AnnotationPopulatePhase: string(ph)})
	if err := p.o.Client.Patch(ctx, prime, client.MergeFrom(orig)); err != nil {
		return fmt.Errorf("prime PVC %s/%s: set phase %s: %w", prime.Namespace, prime.Name, ph, err)
	}
	return nil
}

func patchPV(ctx context.Context, kube kubernetes.Interface, pv *corev1.PersistentVolume, patch client.Patch) error {
	data, err := patch.Data(pv)
	if err != nil {
		return err
	}
	if _, err := kube.CoreV1().PersistentVolumes().Patch(ctx, pv.Name, types.MergePatchType, data, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("patch PV %s: %w", pv.Name, err)
	}
	return nil
}

func (p *Populator) event(pvc *corev1.PersistentVolumeClaim, typ, reason, note string, args ...any) {
	if p.o.Recorder != nil {
		p.o.Recorder.Eventf(pvc, nil, typ, reason, "Populate", note, args...)
	}
}

// merge returns m with add set in it (m may be nil).
func merge(m, add map[string]string) map[string]string {
	if m == nil {
		m = make(map[string]string, len(add))
	}
	for k, v := range add {
		m[k] = v
	}
	return m
}
