package k8sagent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/csi"
)

// DefaultFreezeTimeout is how long a filesystem stays frozen at most when
// spec.freeze.timeout is not set.
const DefaultFreezeTimeout = 2 * time.Minute

// Errors of a freeze; a Failed status's reason says which.
var (
	// ErrCannotFreeze: the volume has no filesystem this agent may freeze
	// (block mode, not mounted by a pod of this node, a shared or the
	// node's own filesystem, a filesystem without freeze support).
	ErrCannotFreeze = errors.New("cannot freeze")
	// ErrAlreadyFrozen: FIFREEZE said EBUSY: someone else froze it.
	ErrAlreadyFrozen = errors.New("already frozen")
)

// mountInfoPath lists this process's mounts: in the DaemonSet, the host's
// kubelet directory is mounted with HostToContainer propagation, so the
// pods' volume mounts appear here under the agent's KubeletDir.
const mountInfoPath = "/proc/self/mountinfo"

// The freeze ioctls of linux/fs.h, _IOWR('X', 119 and 120, int), which
// golang.org/x/sys/unix does not name.
const (
	fiFreeze = 0xc0045877
	fiThaw   = 0xc0045878
)

// maxMountInfo bounds what is read of mountInfoPath.
const maxMountInfo = 64 << 20

// fsMount is a mounted filesystem of a volume.
type fsMount struct {
	point  string // mount point, in this process's mount namespace
	dev    uint64 // the filesystem's device (major:minor)
	root   string // the directory of the filesystem mounted there ("/": all of it)
	fstype string
}

// frozenSet remembers which VolumeSync's volume this process froze (its
// PV), so that a VolumeSync deleted while frozen is still thawed.
type frozenSet struct {
	mu sync.Mutex
	pv map[types.NamespacedName]string
}

func newFrozenSet() *frozenSet { return &frozenSet{pv: map[types.NamespacedName]string{}} }

func (s *frozenSet) add(k types.NamespacedName, pv string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pv[k] = pv
}

func (s *frozenSet) get(k types.NamespacedName) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	pv, ok := s.pv[k]
	return pv, ok
}

func (s *frozenSet) remove(k types.NamespacedName) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.pv, k)
}

// setupFreeze registers ReconcileFreeze as a controller of its own: a
// round holds its VolumeSync's Reconcile for as long as it sends, and a
// thaw (or a freeze's timeout) must never wait for that.
func (r *Reconciler) setupFreeze(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("volumesync-freeze").
		For(&v1alpha1.VolumeSync{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		WithOptions(controller.Options{MaxConcurrentReconciles: 4}).
		Complete(reconcile.Func(r.ReconcileFreeze))
}

// ReconcileFreeze freezes and thaws the filesystem of a VolumeSync of
// this node as its spec.freeze asks, and reports it in status.freeze:
// frozen for a new token; thawed when spec.freeze goes or its token
// changes, when spec.freeze.timeout passed since it froze it, or when the
// VolumeSync is deleted. Only status.freeze is written.
func (r *Reconciler) ReconcileFreeze(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var vs v1alpha1.VolumeSync
	if err := r.o.Reader.Get(ctx, req.NamespacedName, &vs); err != nil {
		if apierrors.IsNotFound(err) {
			return ctrl.Result{}, r.thawGone(req.NamespacedName)
		}
		return ctrl.Result{}, fmt.Errorf("get VolumeSync %s: %w", req, err)
	}
	orig := vs.DeepCopy()
	want := vs.Spec.Freeze
	if vs.DeletionTimestamp != nil {
		want = nil
	}
	now := r.o.Clock.Now()
	if st := vs.Status.Freeze; st != nil && st.Phase == v1alpha1.FreezeFrozen && st.Node == r.o.NodeName {
		if want != nil && want.Token == st.Token {
			return r.keepFrozen(ctx, orig, &vs, now)
		}
		why := "spec.freeze removed"
		if want != nil {
			why = "spec.freeze.token changed to " + want.Token
		}
		if err := r.thaw(ctx, &vs, now, v1alpha1.FreezeReasonReleased, why); err != nil {
			return ctrl.Result{}, err
		}
		if err := r.patchStatus(ctx, orig, &vs); err != nil {
			return ctrl.Result{}, err
		}
		orig = vs.DeepCopy()
	}
	if want == nil || (vs.Status.Freeze != nil && vs.Status.Freeze.Token == want.Token) {
		return ctrl.Result{}, nil // nothing asked, or this token is done with (or another node's)
	}
	return r.freeze(ctx, orig, &vs, now)
}

// freezeTimeout is how long vs's filesystem may stay frozen.
func freezeTimeout(f *v1alpha1.VolumeFreeze) time.Duration {
	if f != nil && f.Timeout != nil && f.Timeout.Duration > 0 {
		return f.Timeout.Duration
	}
	return DefaultFreezeTimeout
}

// freeze freezes vs's filesystem for spec.freeze's token if its volume is
// attached to this node, and records Frozen, or Failed and why.
func (r *Reconciler) freeze(ctx context.Context, orig, vs *v1alpha1.VolumeSync, now time.Time) (ctrl.Result, error) {
	token := vs.Spec.Freeze.Token
	vol, err := r.o.Resolver.ResolvePVC(ctx, vs.Namespace, vs.Spec.SourcePVC)
	if err == nil {
		var att csi.Attachment
		if att, err = r.o.Resolver.AttachedNode(ctx, vol); err == nil && att.Node != r.o.NodeName {
			return ctrl.Result{}, nil // that node's agent freezes it
		}
	}
	var mounts []fsMount
	switch {
	case err != nil && !isUnresolved(err):
		return ctrl.Result{}, err
	case err != nil:
		if vs.Status.Node != r.o.NodeName {
			return ctrl.Result{}, nil // the agent that ran its rounds reports it
		}
		err = fmt.Errorf("%w: %w", ErrCannotFreeze, err)
	case vol.Block:
		err = fmt.Errorf("%w: PV %s is a block volume (volumeMode Block): it has no filesystem to freeze", ErrCannotFreeze, vol.PV)
	default:
		if mounts, err = r.freezableMounts(vol.PV); err == nil {
			err = freezeAll(mounts)
		}
	}
	if err != nil {
		reason := v1alpha1.FreezeReasonCannotFreeze
		if errors.Is(err, ErrAlreadyFrozen) {
			reason = v1alpha1.FreezeReasonAlreadyFrozen
		} else if !errors.Is(err, ErrCannotFreeze) {
			return ctrl.Result{}, fmt.Errorf("freeze PVC %s/%s: %w", vs.Namespace, vs.Spec.SourcePVC, err) // retried
		}
		r.o.Logger.Warn("cannot freeze", "volumesync", vs.Namespace+"/"+vs.Name, "err", err)
		vs.Status.Freeze = &v1alpha1.VolumeFreezeStatus{Token: token, Phase: v1alpha1.FreezeFailed, Node: r.o.NodeName,
			Reason: reason, Message: limitMessage(err.Error())}
		return ctrl.Result{}, r.patchStatus(ctx, orig, vs)
	}
	frozen := metav1.NewMicroTime(now)
	vs.Status.Freeze = &v1alpha1.VolumeFreezeStatus{Token: token, Phase: v1alpha1.FreezeFrozen, Node: r.o.NodeName,
		FrozenTime: &frozen, Reason: v1alpha1.FreezeReasonFrozen, Message: limitMessage("froze " + describeMounts(mounts))}
	if err := r.patchStatus(ctx, orig, vs); err != nil {
		// Unrecorded, a freeze would outlive a restart: undo it.
		if terr := thawAll(mounts); terr != nil {
			err = errors.Join(err, terr)
		}
		return ctrl.Result{}, err
	}
	r.frozen.add(keyOf(vs), vol.PV)
	r.o.Logger.Info("filesystem frozen", "volumesync", vs.Namespace+"/"+vs.Name, "token", token, "mounts", describeMounts(mounts))
	return ctrl.Result{RequeueAfter: freezeTimeout(vs.Spec.Freeze)}, nil
}

// keepFrozen handles a filesystem this node froze for the current token:
// thawed once the timeout passed; after a restart of the agent, checked
// to be still frozen.
func (r *Reconciler) keepFrozen(ctx context.Context, orig, vs *v1alpha1.VolumeSync, now time.Time) (ctrl.Result, error) {
	st := vs.Status.Freeze
	timeout := freezeTimeout(vs.Spec.Freeze)
	var deadline time.Time
	if st.FrozenTime != nil {
		deadline = st.FrozenTime.Add(timeout)
	}
	if !now.Before(deadline) {
		if err := r.thaw(ctx, vs, now, v1alpha1.FreezeReasonTimeout, fmt.Sprintf("frozen for spec.freeze.timeout (%s)", timeout)); err != nil {
			return ctrl.Result{}, err
		}
		return ctrl.Result{}, r.patchStatus(ctx, orig, vs)
	}
	if _, ok := r.frozen.get(keyOf(vs)); !ok {
		if err := r.checkStillFrozen(ctx, vs, now); err != nil {
			return ctrl.Result{}, err
		}
		if err := r.patchStatus(ctx, orig, vs); err != nil {
			return ctrl.Result{}, err
		}
	}
	return ctrl.Result{RequeueAfter: deadline.Sub(now)}, nil
}

// checkStillFrozen is for a filesystem the status says this node froze
// but this process did not (it restarted): FIFREEZE says EBUSY if it is
// still frozen. If it was not, someone thawed it and the snapshots cannot
// rely on it: it is thawed again and reported Failed.
func (r *Reconciler) checkStillFrozen(ctx context.Context, vs *v1alpha1.VolumeSync, now time.Time) error {
	pv, err := r.pvOf(ctx, vs)
	if err != nil {
		return err
	}
	mounts, err := r.freezableMounts(pv)
	if err != nil {
		return fmt.Errorf("find the frozen filesystem of PVC %s/%s: %w", vs.Namespace, vs.Spec.SourcePVC, err)
	}
	var thawed []fsMount
	for _, m := range mounts {
		switch err := freezeMount(m); {
		case errors.Is(err, ErrAlreadyFrozen):
		case err != nil:
			return errors.Join(fmt.Errorf("check the freeze of %s: %w", m.point, err), thawAll(thawed))
		default:
			thawed = append(thawed, m) // it was not frozen: we just froze it
		}
	}
	if len(thawed) == 0 {
		r.frozen.add(keyOf(vs), pv)
		return nil
	}
	if err := thawAll(mounts); err != nil {
		return err
	}
	t := metav1.NewMicroTime(now)
	st := vs.Status.Freeze
	st.Phase, st.ThawedTime, st.Reason = v1alpha1.FreezeFailed, &t, v1alpha1.FreezeReasonThawedOutside
	st.Message = limitMessage("thawed by someone else while frozen (" + describeMounts(thawed) + "): writes may have reached it")
	return nil
}

// thaw thaws vs's filesystem and records Thawed for reason.
func (r *Reconciler) thaw(ctx context.Context, vs *v1alpha1.VolumeSync, now time.Time, reason, why string) error {
	pv, err := r.pvOf(ctx, vs)
	if err != nil {
		return err
	}
	mounts, err := podMounts(pv, r.o.KubeletDir)
	if err != nil {
		return err
	}
	if err := thawAll(mounts); err != nil {
		return fmt.Errorf("thaw PVC %s/%s: %w", vs.Namespace, vs.Spec.SourcePVC, err)
	}
	r.frozen.remove(keyOf(vs))
	t := metav1.NewMicroTime(now)
	st := vs.Status.Freeze
	st.Phase, st.ThawedTime, st.Reason = v1alpha1.FreezeThawed, &t, reason
	st.Message = limitMessage("thawed: " + why)
	r.o.Logger.Info("filesystem thawed", "volumesync", vs.Namespace+"/"+vs.Name, "token", st.Token, "reason", reason)
	return nil
}

// thawGone thaws what this process froze for a VolumeSync that is gone.
func (r *Reconciler) thawGone(k types.NamespacedName) error {
	pv, ok := r.frozen.get(k)
	if !ok {
		return nil
	}
	mounts, err := podMounts(pv, r.o.KubeletDir)
	if err == nil {
		err = thawAll(mounts)
	}
	if err != nil {
		return fmt.Errorf("thaw PV %s of deleted VolumeSync %s: %w", pv, k, err)
	}
	r.frozen.remove(k)
	r.o.Logger.Info("filesystem of a deleted VolumeSync thawed", "volumesync", k.String(), "pv", pv)
	return nil
}

// pvOf names vs's PV: the one this process froze, or its PVC's.
func (r *Reconciler) pvOf(ctx context.Context, vs *v1alpha1.VolumeSync) (string, error) {
	if pv, ok := r.frozen.get(keyOf(vs)); ok {
		return pv, nil
	}
	vol, err := r.o.Resolver.ResolvePVC(ctx, vs.Namespace, vs.Spec.SourcePVC)
	if err != nil {
		return "", fmt.Errorf("resolve the frozen volume of VolumeSync %s/%s: %w", vs.Namespace, vs.Name, err)
	}
	return vol.PV, nil
}

// freezableMounts returns pv's mounts by pods of this node, one per
// filesystem, if each may be frozen: the whole of a filesystem that is not
// the node's own (a driver that bind-mounts a directory of the node's
// disk would otherwise freeze the node).
func (r *Reconciler) freezableMounts(pv string) ([]fsMount, error) {
	mounts, err := podMounts(pv, r.o.KubeletDir)
	if err != nil {
		return nil, err
	}
	if len(mounts) == 0 {
		return nil, fmt.Errorf("%w: no pod on node %s mounts PV %s (no %s in %s)", ErrCannotFreeze, r.o.NodeName, pv,
			csiMountPoint(r.o.KubeletDir, "<pod>", pv), mountInfoPath)
	}
	node := map[uint64]string{}
	for _, p := range []string{"/", r.o.KubeletDir} {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			return nil, fmt.Errorf("stat %s: %w", p, err)
		}
		node[uint64(st.Dev)] = p
	}
	for _, m := range mounts {
		if p, ok := node[m.dev]; ok {
			return nil, fmt.Errorf("%w: %s is on the filesystem of %s (device %s): freezing it would freeze the node", ErrCannotFreeze, m.point, p, devString(m.dev))
		}
		if m.root != "/" {
			return nil, fmt.Errorf("%w: %s is the directory %s of a %s filesystem, which others may share", ErrCannotFreeze, m.point, m.root, m.fstype)
		}
	}
	return mounts, nil
}

// csiMountPoint is where the kubelet mounts a CSI PV's filesystem for a
// pod.
func csiMountPoint(kubeletDir, podUID, pv string) string {
	return filepath.Join(kubeletDir, "pods", podUID, "volumes", "kubernetes.io~csi", pv, "mount")
}

// podMounts reads mountInfoPath for pv's mounts by pods.
func podMounts(pv, kubeletDir string) ([]fsMount, error) {
	f, err := os.Open(mountInfoPath)
	if err != nil {
		return nil, fmt.Errorf("list mounts: %w", err)
	}
	defer f.Close()
	mounts, err := parsePodMounts(io.LimitReader(f, maxMountInfo+1), kubeletDir, pv)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", mountInfoPath, err)
	}
	return mounts, nil
}

// parsePodMounts returns the mounts of pv by pods in a mountinfo listing
// (proc(5)): mount points <kubeletDir>/pods/<uid>/volumes/kubernetes.io~csi/<pv>/mount,
// one per device (pods on one node share the filesystem), sorted by mount
// point.
func parsePodMounts(r io.Reader, kubeletDir, pv string) ([]fsMount, error) {
	prefix := filepath.Clean(kubeletDir) + "/pods/"
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	var all []fsMount
	var read int
	for sc.Scan() {
		line := sc.Text()
		if read += len(line) + 1; read > maxMountInfo {
			return nil, fmt.Errorf("longer than %d bytes", maxMountInfo)
		}
		m, ok, err := parseMountLine(line)
		if err != nil {
			return nil, err
		}
		if !ok || !strings.HasPrefix(m.point, prefix) {
			continue
		}
		parts := strings.Split(strings.TrimPrefix(m.point, prefix), "/")
		if len(parts) == 5 && parts[0] != "" && parts[1] == "volumes" && parts[2] == "kubernetes.io~csi" && parts[3] == pv && parts[4] == "mount" {
			all = append(all, m)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	sort.Slice(all, func(i, j int) bool { return all[i].point < all[j].point })
	seen := map[uint64]bool{}
	var out []fsMount
	for _, m := range all {
		if !seen[m.dev] {
			seen[m.dev] = true
			out = append(out, m)
		}
	}
	return out, nil
}

// parseMountLine parses one mountinfo line: "36 35 98:0 /root /point
// opts [optional...] - fstype source superopts".
func parseMountLine(line string) (fsMount, bool, error) {
	f := strings.Fields(line)
	if len(f) < 7 {
		return fsMount{}, false, nil
	}
	sep := -1
	for i := 6; i < len(f); i++ {
		if f[i] == "-" {
			sep = i
			break
		}
	}
	if sep < 0 || sep+1 >= len(f) {
		return fsMount{}, false, nil
	}
	maj, min, ok := strings.Cut(f[2], ":")
	if !ok {
		return fsMount{}, false, fmt.Errorf("device %q in %q", f[2], line)
	}
	ma, err1 := strconv.ParseUint(maj, 10, 32)
	mi, err2 := strconv.ParseUint(min, 10, 32)
	if err1 != nil || err2 != nil {
		return fsMount{}, false, fmt.Errorf("device %q in %q", f[2], line)
	}
	return fsMount{point: unescapeMount(f[4]), root: unescapeMount(f[3]), dev: unix.Mkdev(uint32(ma), uint32(mi)), fstype: f[sep+1]}, true, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// freezeAll freezes every mount, or none: on an error the ones frozen are
// thawed again.
func freezeAll(mounts []fsMount) error {
	for i, m := range mounts {
		if err := freezeMount(m); err != nil {
			return errors.Join(err, thawAll(mounts[:i]))
		}
	}
	return nil
}

// thawAll thaws every mount (one not frozen is fine).
func thawAll(mounts []fsMount) error {
	var errs []error
	for _, m := range mounts {
		if _, err := thawMount(m); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// openMount opens m's mount point, checking that it still holds m's
// filesystem (nothing else may be frozen by mistake).
func openMount(m fsMount) (int, error) {
	fd, err := unix.Open(m.point, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", m.point, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("stat %s: %w", m.point, err)
	}
	if uint64(st.Dev) != m.dev {
		unix.Close(fd)
		return -1, fmt.Errorf("%s is on device %s now, not %s: mounts changed", m.point, devString(uint64(st.Dev)), devString(m.dev))
	}
	return fd, nil
}

// freezeMount freezes m's filesystem (FIFREEZE).
func freezeMount(m fsMount) error {
	fd, err := openMount(m)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	switch err := unix.IoctlSetInt(fd, fiFreeze, 0); {
	case err == nil:
		return nil
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("%w: the %s filesystem at %s (device %s) was frozen by someone else (fsfreeze -f?); thaw it (fsfreeze -u) or leave it out of the freeze",
			ErrAlreadyFrozen, m.fstype, m.point, devString(m.dev))
	case errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTTY):
		return fmt.Errorf("%w: the %s filesystem at %s does not support freezing", ErrCannotFreeze, m.fstype, m.point)
	default:
		return fmt.Errorf("FIFREEZE %s: %w", m.point, err)
	}
}

// thawMount thaws m's filesystem (FITHAW) and reports whether it was
// frozen (EINVAL: it was not).
func thawMount(m fsMount) (bool, error) {
	fd, err := openMount(m)
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	switch err := unix.IoctlSetInt(fd, fiThaw, 0); {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.EINVAL):
		return false, nil
	default:
		return false, fmt.Errorf("FITHAW %s: %w", m.point, err)
	}
}

func describeMounts(mounts []fsMount) string {
	parts := make([]string, 0, len(mounts))
	for _, m := range mounts {
		parts = append(parts, fmt.Sprintf("%s (%s, device %s)", m.point, m.fstype, devString(m.dev)))
	}
	return strings.Join(parts, ", ")
}

func devString(d uint64) string { return fmt.Sprintf("%d:%d", unix.Major(d), unix.Minor(d)) }

func keyOf(vs *v1alpha1.VolumeSync) types.NamespacedName {
	return types.NamespacedName{Namespace: vs.Namespace, Name: vs.Name}
}

func limitMessage(s string) string {
	if len(s) > 1024 {
		return s[:1024]
	}
	return s
}
