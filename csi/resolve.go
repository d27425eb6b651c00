package csi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
)

// LonghornDriver is the CSI driver name of Longhorn.
const LonghornDriver = "driver.longhorn.io"

// LonghornVolumes is the resource of Longhorn's Volume custom resources.
var LonghornVolumes = schema.GroupVersionResource{Group: "longhorn.io", Version: "v1beta2", Resource: "volumes"}

// ResolverOptions configure a Resolver.
type ResolverOptions struct {
	// Kube reads PVCs, PVs and VolumeAttachments. Required.
	Kube kubernetes.Interface
	// Attachments, if set, lists VolumeAttachments instead of Kube (e.g.
	// from an informer cache: AttachedNode lists them on every call).
	Attachments func(ctx context.Context) ([]storagev1.VolumeAttachment, error)
	// Dynamic reads Longhorn Volumes; nil: Longhorn attachment and
	// encryption are read from VolumeAttachments and PV attributes only.
	Dynamic dynamic.Interface
	// HostRoot is where the node's root file system is mounted in this
	// container ("/" when running on the host, "/host" in the DaemonSet);
	// device paths are looked up under it. Default "/".
	HostRoot string
	// KubeletDir is the kubelet's root directory on the host, where block
	// volumes of other drivers are published. Default /var/lib/kubelet.
	KubeletDir string
	// LonghornNamespace holds Longhorn's custom resources. Default
	// longhorn-system.
	LonghornNamespace string
}

// Resolver maps PVCs to volumes, devices and nodes.
type Resolver struct{ o ResolverOptions }

// NewResolver checks o and returns a Resolver.
func NewResolver(o ResolverOptions) (*Resolver, error) {
	if o.Kube == nil {
		return nil, errors.New("csi: ResolverOptions.Kube is required")
	}
	if o.HostRoot == "" {
		o.HostRoot = "/"
	}
	if !filepath.IsAbs(o.HostRoot) {
		return nil, fmt.Errorf("csi: host root %q is not an absolute path", o.HostRoot)
	}
	if o.KubeletDir == "" {
		o.KubeletDir = "/var/lib/kubelet"
	}
	if o.LonghornNamespace == "" {
		o.LonghornNamespace = "longhorn-system"
	}
	if o.Attachments == nil {
		kube := o.Kube
		o.Attachments = func(ctx context.Context) ([]storagev1.VolumeAttachment, error) {
			l, err := kube.StorageV1().VolumeAttachments().List(ctx, metav1.ListOptions{})
			if err != nil {
				return nil, err
			}
			return l.Items, nil
		}
	}
	return &Resolver{o: o}, nil
}

// Volume is a resolved CSI volume.
type Volume struct {
	Namespace string // of the PVC
	PVC       string
	PV        string
	Driver    string // CSI driver name
	Handle    string // CSI volumeHandle (for Longhorn, the Longhorn volume name)
	// Size is the PV's capacity in bytes (the device can be a little larger).
	Size int64
	// Block: the PV's volumeMode is Block.
	Block bool
	// Encrypted: a Longhorn volume encrypted with LUKS; DevicePath is the
	// opened mapper device, whose contents are the plain text.
	Encrypted bool
	// DevicePath is the volume's device in this container (under the host
	// root); "" if none can be named (a non-Longhorn volume not published
	// as a block device on this node).
	DevicePath string
}

// Longhorn reports whether the volume is a Longhorn volume.
func (v *Volume) Longhorn() bool { return v.Driver == LonghornDriver }

// ResolvePVC resolves the PVC namespace/name. Errors wrap ErrNotFound,
// ErrNotBound or ErrNotCSI where those apply.
func (r *Resolver) ResolvePVC(ctx context.Context, namespace, name string) (*Volume, error) {
	pvc, err := r.o.Kube.CoreV1().PersistentVolumeClaims(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("PVC %s/%s: %w", namespace, name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get PVC %s/%s: %w", namespace, name, err)
	}
	if pvc.Spec.VolumeName == "" || pvc.Status.Phase != corev1.ClaimBound {
		return nil, fmt.Errorf("PVC %s/%s: %w (phase %q)", namespace, name, ErrNotBound, pvc.Status.Phase)
	}
	v, err := r.ResolvePV(ctx, pvc.Spec.VolumeName)
	if err != nil {
		return nil, fmt.Errorf("PVC %s/%s: %w", namespace, name, err)
	}
	v.Namespace, v.PVC = namespace, name
	return v, nil
}

// ResolvePV resolves a PersistentVolume by name.
func (r *Resolver) ResolvePV(ctx context.Context, name string) (*Volume, error) {
	pv, err := r.o.Kube.CoreV1().PersistentVolumes().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("PV %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get PV %s: %w", name, err)
	}
	c := pv.Spec.CSI
	if c == nil || c.Driver == "" || c.VolumeHandle == "" {
		return nil, fmt.Errorf("PV %s: %w", name, ErrNotCSI)
	}
	v := &Volume{PV: name, Driver: c.Driver, Handle: c.VolumeHandle,
		Block: pv.Spec.VolumeMode != nil && *pv.Spec.VolumeMode == corev1.PersistentVolumeBlock}
	if q, ok := pv.Spec.Capacity[corev1.ResourceStorage]; ok {
		v.Size = q.Value()
	}
	if v.Longhorn() {
		if err := safeName(v.Handle); err != nil {
			return nil, fmt.Errorf("PV %s: %w", name, err)
		}
		v.Encrypted = c.VolumeAttributes["encrypted"] == "true"
		if lv, err := r.longhornVolume(ctx, v.Handle); err == nil {
			if enc, ok, _ := unstructured.NestedBool(lv.Object, "spec", "encrypted"); ok {
				v.Encrypted = enc
			}
		}
		dir := "longhorn"
		if v.Encrypted {
			dir = "mapper"
		}
		v.DevicePath = filepath.Join(r.o.HostRoot, "dev", dir, v.Handle)
	} else {
		v.DevicePath = r.publishedBlockDevice(name)
	}
	return v, nil
}

// publishedBlockDevice finds where the kubelet published a block PV on this
// node (<kubelet>/plugins/kubernetes.io/csi/volumeDevices/<pv>/dev/<pod
// UID>, one per pod using it), or "".
func (r *Resolver) publishedBlockDevice(pv string) string {
	if safeName(pv) != nil {
		return ""
	}
	dir := filepath.Join(r.o.HostRoot, r.o.KubeletDir, "plugins", "kubernetes.io", "csi", "volumeDevices", pv, "dev")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return ""
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	if len(names) == 0 {
		return ""
	}
	return filepath.Join(dir, names[0])
}

func safeName(s string) error {
	if s == "" || s == "." || s == ".." || filepath.Base(s) != s {
		return fmt.Errorf("volume handle %q cannot name a device", s)
	}
	return nil
}

// Attachment says where a volume is attached.
type Attachment struct {
	// Node is the node the volume is attached to; "" if none.
	Node string
	// From names the object that said so: "longhorn.io/Volume" or
	// "storage.k8s.io/VolumeAttachment".
	From string
}

// AttachedNode returns the node v is attached to: for Longhorn, the Longhorn
// Volume's status.currentNodeID if it names one; otherwise the node of an
// attached VolumeAttachment of the PV. If the volume is attached nowhere,
// the error wraps ErrNotAttached.
func (r *Resolver) AttachedNode(ctx context.Context, v *Volume) (Attachment, error) {
	if v.Longhorn() && r.o.Dynamic != nil {
		lv, err := r.longhornVolume(ctx, v.Handle)
		switch {
		case err == nil:
			if node, _, _ := unstructured.NestedString(lv.Object, "status", "currentNodeID"); node != "" {
				return Attachment{Node: node, From: "longhorn.io/Volume"}, nil
			}
		case !errors.Is(err, ErrNotFound):
			return Attachment{}, err
		}
	}
	vas, err := r.o.Attachments(ctx)
	if err != nil {
		return Attachment{}, fmt.Errorf("list VolumeAttachments: %w", err)
	}
	var nodes []string
	for _, va := range vas {
		src := va.Spec.Source.PersistentVolumeName
		if src == nil || *src != v.PV || !va.Status.Attached || va.DeletionTimestamp != nil {
			continue
		}
		nodes = append(nodes, va.Spec.NodeName)
	}
	if len(nodes) == 0 {
		return Attachment{}, fmt.Errorf("PV %s: %w", v.PV, ErrNotAttached)
	}
	sort.Strings(nodes) // a multi-attach volume: choose one agent, the same on every node
	return Attachment{Node: nodes[0], From: "storage.k8s.io/VolumeAttachment"}, nil
}

func (r *Resolver) longhornVolume(ctx context.Context, name string) (*unstructured.Unstructured, error) {
	if r.o.Dynamic == nil {
		return nil, fmt.Errorf("Longhorn volume %s: no dynamic client: %w", name, ErrNotFound)
	}
	lv, err := r.o.Dynamic.Resource(LonghornVolumes).Namespace(r.o.LonghornNamespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("Longhorn volume %s/%s: %w", r.o.LonghornNamespace, name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get Longhorn volume %s/%s: %w", r.o.LonghornNamespace, name, err)
	}
	return lv, nil
}

// LonghornVolume resolves a Longhorn volume by name (for a VolumeTarget
// that names one directly).
func (r *Resolver) LonghornVolume(ctx context.Context, name string) (*Volume, error) {
	if err := safeName(name); err != nil {
		return nil, err
	}
	lv, err := r.longhornVolume(ctx, name)
	if err != nil {
		return nil, err
	}
	v := &Volume{Driver: LonghornDriver, Handle: name, Block: true}
	if size, ok, _ := unstructured.NestedString(lv.Object, "spec", "size"); ok {
		fmt.Sscan(size, &v.Size)
	}
	v.Encrypted, _, _ = unstructured.NestedBool(lv.Object, "spec", "encrypted")
	if pv, _, _ := unstructured.NestedString(lv.Object, "status", "kubernetesStatus", "pvName"); pv != "" {
		v.PV = pv
	}
	dir := "longhorn"
	if v.Encrypted {
		dir = "mapper"
	}
	v.DevicePath = filepath.Join(r.o.HostRoot, "dev", dir, name)
	return v, nil
}
