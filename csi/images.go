package csi

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/voldelta/voldelta/agent"
	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/csi/longhorn"
)

// Images is the ImageSource of the agent: Longhorn v1 snapshots are read
// from the volume's replica on this node; other drivers' snapshots only
// with LiveDevice.
type Images struct {
	// LonghornDataPaths are the paths of Longhorn's disks on this node as
	// seen in this container (e.g. /host/var/lib/longhorn, mounted
	// read-only); replicas are looked for under each.
	LonghornDataPaths []string
	// LiveDevice reads the volume's live device (DevicePath) for snapshots
	// voldelta cannot read, after the snapshot is ready. The image is then
	// NOT point-in-time: the application must not write during the round
	// (e.g. it is scaled down or frozen), or the receiver refuses the round
	// when it sees a chunk change. Off by default.
	LiveDevice bool
}

// Open implements ImageSource.
func (s *Images) Open(ctx context.Context, v *Volume, snap SnapshotResult) (Image, error) {
	if !snap.Ready {
		return nil, fmt.Errorf("snapshot is not ready")
	}
	if v.Longhorn() && len(s.LonghornDataPaths) > 0 {
		img, err := s.openLonghorn(v, snap.Handle)
		if err == nil || !s.LiveDevice || !errors.Is(err, ErrUnsupported) {
			return img, err
		}
	}
	if s.LiveDevice {
		return openDevice(v)
	}
	return nil, fmt.Errorf("driver %s: %w (no reader for its snapshots; enable the live-device fallback only for quiesced volumes)", v.Driver, ErrUnsupported)
}

func (s *Images) openLonghorn(v *Volume, handle string) (Image, error) {
	vol, name, err := ParseLonghornSnapshotHandle(handle)
	if err != nil {
		return nil, err
	}
	if vol != v.Handle {
		return nil, fmt.Errorf("snapshot handle %q is of Longhorn volume %q, not %q", handle, vol, v.Handle)
	}
	if v.Encrypted {
		return nil, errEncrypted(vol, "the volume is encrypted")
	}
	r, err := s.replicaWith(vol, name)
	if err != nil {
		return nil, err
	}
	img, err := r.OpenSnapshot(name)
	if err != nil {
		return nil, err
	}
	if err := refuseLUKS(vol, img); err != nil {
		img.Close()
		return nil, err
	}
	return &longhornImage{Image: img, id: SnapshotIdentity(vol, img.Snapshot())}, nil
}

// longhornImage is the image of a Longhorn snapshot, with its identity.
type longhornImage struct {
	*longhorn.Image
	id string
}

// ImageID implements Identified: SnapshotIdentity of the snapshot.
func (i *longhornImage) ImageID() string { return i.id }

// errEncrypted is the refusal of an encrypted Longhorn volume.
func errEncrypted(vol, why string) error {
	return fmt.Errorf("Longhorn volume %s is encrypted (%s): its replica holds LUKS ciphertext: %w", vol, why, ErrUnsupported)
}

// luksMagic starts the header of a LUKS1 and of a LUKS2 device; a big-endian
// 16-bit version (1 or 2) follows it.
var luksMagic = []byte("LUKS\xba\xbe")

// refuseLUKS refuses an image that starts with a LUKS header: an encrypted
// Longhorn volume whose volume.meta does not say so (longhorn-engine up to
// v1.9 writes no Encrypted key), refused like one that does. The magic is
// enough (any version). A volume that is not Longhorn-encrypted but that
// the workload formatted with LUKS itself starts the same way and is
// refused too (its image would be the right bytes, but the two cannot be
// told apart from the replica).
func refuseLUKS(vol string, img io.ReaderAt) error {
	hdr := make([]byte, len(luksMagic)+2)
	n, err := img.ReadAt(hdr, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read the start of Longhorn volume %s: %w", vol, err)
	}
	if n < len(hdr) || !bytes.Equal(hdr[:len(luksMagic)], luksMagic) {
		return nil
	}
	return errEncrypted(vol, fmt.Sprintf("its image starts with a LUKS%d header", binary.BigEndian.Uint16(hdr[len(luksMagic):])))
}

// replicaWith opens the first usable replica of Longhorn volume vol on this
// node that has snapshot name, refusing an encrypted one.
func (s *Images) replicaWith(vol, name string) (*longhorn.Replica, error) {
	cands, err := s.replicas(vol)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, c := range cands {
		if !c.Usable() {
			continue
		}
		r, err := longhorn.OpenReplica(c.Dir)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if r.Info().Encrypted {
			return nil, errEncrypted(vol, "its volume.meta says so")
		}
		if _, err := r.Snapshot(name); err != nil {
			errs = append(errs, err) // an old replica without this snapshot
			continue
		}
		return r, nil
	}
	if len(errs) == 0 {
		errs = append(errs, longhorn.ErrReplicaNotFound)
	}
	return nil, fmt.Errorf("snapshot %s of Longhorn volume %s on this node (data path %s; give the volume a replica on the node it is attached to, e.g. dataLocality best-effort): %w",
		name, vol, strings.Join(s.LonghornDataPaths, ", "), errors.Join(errs...))
}

// replicas lists the replica directories of a Longhorn volume on every
// data path.
func (s *Images) replicas(volume string) ([]longhorn.Candidate, error) {
	var out []longhorn.Candidate
	for _, p := range s.LonghornDataPaths {
		c, err := longhorn.FindReplicas(p, volume)
		if err != nil {
			return nil, err
		}
		out = append(out, c...)
	}
	return out, nil
}

var (
	_ ChangeTracker      = (*Images)(nil)
	_ SnapshotIdentifier = (*Images)(nil)
)

// Changed implements ChangeTracker for Longhorn v1 snapshots of one volume:
// the data extents of the layers between them in the replica on this node
// (longhorn.Replica.Delta, which refuses a base with a Removed snapshot
// below it and a chain that changed while it ran). Other drivers, and
// encrypted volumes (the layers' offsets are the ciphertext's, not the
// plain text's), give ErrUnsupported.
func (s *Images) Changed(ctx context.Context, v *Volume, base, target string) ([]chunk.Extent, error) {
	d, err := s.delta(ctx, v, base, target)
	if err != nil {
		return nil, err
	}
	return d.extents, nil
}

// SnapshotID implements SnapshotIdentifier: SnapshotIdentity of the
// Longhorn snapshot with that handle, as the replica on this node records
// it.
func (s *Images) SnapshotID(ctx context.Context, v *Volume, handle string) (string, error) {
	if !v.Longhorn() || len(s.LonghornDataPaths) == 0 {
		return "", fmt.Errorf("driver %s: %w", v.Driver, ErrUnsupported)
	}
	vol, name, err := ParseLonghornSnapshotHandle(handle)
	if err != nil {
		return "", err
	}
	if vol != v.Handle {
		return "", fmt.Errorf("snapshot handle %q is of Longhorn volume %q, not %q", handle, vol, v.Handle)
	}
	r, err := s.replicaWith(vol, name)
	if err != nil {
		return "", err
	}
	snap, err := r.Snapshot(name)
	if err != nil {
		return "", err
	}
	return SnapshotIdentity(vol, snap), nil
}

// delta is the change from snapshot base to snapshot target (handles) of
// Longhorn volume v, with the base's identity and the target's size as the
// replica that answered records them.
type delta struct {
	extents    []chunk.Extent
	baseID     string
	targetSize uint64
}

func (s *Images) delta(ctx context.Context, v *Volume, base, target string) (delta, error) {
	if !v.Longhorn() || len(s.LonghornDataPaths) == 0 {
		return delta{}, fmt.Errorf("driver %s: %w", v.Driver, ErrUnsupported)
	}
	bvol, bname, err := ParseLonghornSnapshotHandle(base)
	if err != nil {
		return delta{}, err
	}
	tvol, tname, err := ParseLonghornSnapshotHandle(target)
	if err != nil {
		return delta{}, err
	}
	if bvol != v.Handle || tvol != v.Handle {
		return delta{}, fmt.Errorf("snapshots %q and %q are not both of Longhorn volume %q", base, target, v.Handle)
	}
	if v.Encrypted {
		return delta{}, errEncrypted(v.Handle, "the volume is encrypted")
	}
	cands, err := s.replicas(v.Handle)
	if err != nil {
		return delta{}, err
	}
	var errs []error
	for _, c := range cands {
		if err := ctx.Err(); err != nil {
			return delta{}, err
		}
		if !c.Usable() {
			continue
		}
		r, err := longhorn.OpenReplica(c.Dir)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if r.Info().Encrypted {
			return delta{}, errEncrypted(v.Handle, "its volume.meta says so")
		}
		d, err := replicaDelta(r, v.Handle, bname, tname)
		if errors.Is(err, ErrUnsupported) {
			return delta{}, err
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		return d, nil
	}
	if len(errs) == 0 {
		errs = append(errs, longhorn.ErrReplicaNotFound)
	}
	return delta{}, fmt.Errorf("changes from %s to %s of Longhorn volume %s: %w", bname, tname, v.Handle, errors.Join(errs...))
}

// replicaDelta is the delta from base to target (snapshot names) in one
// replica. The target must not start with a LUKS header.
func replicaDelta(r *longhorn.Replica, vol, base, target string) (delta, error) {
	bs, err := r.Snapshot(base)
	if err != nil {
		return delta{}, err
	}
	img, err := r.OpenSnapshot(target)
	if err != nil {
		return delta{}, err
	}
	err = refuseLUKS(vol, img)
	size := img.Size()
	img.Close()
	if err != nil {
		return delta{}, err
	}
	exts, err := r.Delta(base, target)
	if err != nil {
		return delta{}, err
	}
	out := make([]chunk.Extent, len(exts))
	for i, e := range exts {
		out[i] = chunk.Extent{Offset: e.Offset, Length: e.Length}
	}
	return delta{extents: out, baseID: SnapshotIdentity(vol, bs), targetSize: size}, nil
}

type deviceImage struct {
	*os.File
	size uint64
}

func (d *deviceImage) Size() uint64 { return d.size }

func openDevice(v *Volume) (Image, error) {
	if v.DevicePath == "" {
		return nil, fmt.Errorf("PV %s: no device on this node: %w", v.PV, ErrNotFound)
	}
	f, size, err := agent.OpenSource(v.DevicePath)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("device %s: %w", v.DevicePath, ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	return &deviceImage{File: f, size: size}, nil
}
