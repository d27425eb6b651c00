package csi

import (
	"context"
	"errors"
	"fmt"
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
			return nil, fmt.Errorf("Longhorn volume %s is encrypted: its replica holds LUKS ciphertext: %w", vol, ErrUnsupported)
		}
		if _, err := r.Snapshot(name); err != nil {
			errs = append(errs, err) // an old replica without this snapshot
			continue
		}
		img, err := r.OpenSnapshot(name)
		if err != nil {
			return nil, err
		}
		return img, nil
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

var _ ChangeTracker = (*Images)(nil)

// Changed implements ChangeTracker for Longhorn v1 snapshots of one volume:
// the data extents of the layers between them in the replica on this node
// (longhorn.Replica.Delta). Other drivers give ErrUnsupported.
func (s *Images) Changed(ctx context.Context, v *Volume, base, target string) ([]chunk.Extent, error) {
	if !v.Longhorn() || len(s.LonghornDataPaths) == 0 {
		return nil, fmt.Errorf("driver %s: %w", v.Driver, ErrUnsupported)
	}
	bvol, bname, err := ParseLonghornSnapshotHandle(base)
	if err != nil {
		return nil, err
	}
	tvol, tname, err := ParseLonghornSnapshotHandle(target)
	if err != nil {
		return nil, err
	}
	if bvol != v.Handle || tvol != v.Handle {
		return nil, fmt.Errorf("snapshots %q and %q are not both of Longhorn volume %q", base, target, v.Handle)
	}
	cands, err := s.replicas(v.Handle)
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
		exts, err := r.Delta(bname, tname)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out := make([]chunk.Extent, len(exts))
		for i, e := range exts {
			out[i] = chunk.Extent{Offset: e.Offset, Length: e.Length}
		}
		return out, nil
	}
	if len(errs) == 0 {
		errs = append(errs, longhorn.ErrReplicaNotFound)
	}
	return nil, fmt.Errorf("changes from %s to %s of Longhorn volume %s: %w", bname, tname, v.Handle, errors.Join(errs...))
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
