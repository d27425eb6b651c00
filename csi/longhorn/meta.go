package longhorn

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// File names and affixes of a Longhorn v1 replica directory
// (longhorn-engine pkg/util/disk/constant.go, pkg/replica/replica.go).
const (
	volumeMetaFile = "volume.meta"
	snapPrefix     = "volume-snap-"
	headPrefix     = "volume-head-"
	imgSuffix      = ".img"
	metaSuffix     = ".meta"

	// maxMetaSize bounds what is read of one metadata file; Longhorn's are
	// a few hundred bytes (labels included).
	maxMetaSize = 1 << 20
)

// Info is what volume.meta says about a replica (longhorn-engine
// replica.Info; the JSON keys are its Go field names).
type Info struct {
	// Size is the volume size in bytes; for an encrypted volume it
	// includes the LUKS header.
	Size uint64
	// Head is the live write layer, e.g. "volume-head-002.img".
	Head string
	// Parent is the head's parent as volume.meta records it; the head's
	// own .img.meta is what the chain is built from.
	Parent string
	// SectorSize is the replica's sector size (512).
	SectorSize int64
	// Dirty is set while the replica is open (it is normally true for a
	// replica in use) and cleared on a clean close.
	Dirty bool
	// Rebuilding is set while the replica is being rebuilt from another.
	Rebuilding bool
	// Error is the replica's last recorded error, if any.
	Error string
	// BackingFilePath names the backing image under the chain, if any.
	BackingFilePath string
	// Encrypted: the layers hold the LUKS-encrypted device, header
	// included, and so does every image read from them.
	Encrypted bool
}

// volumeMeta is volume.meta on disk.
type volumeMeta struct {
	Size            int64
	Head            string
	Dirty           bool
	Rebuilding      bool
	Error           string
	Parent          string
	SectorSize      int64
	BackingFilePath string
	Encrypted       bool
}

// diskMeta is a <disk>.img.meta on disk. Name is not trusted: Longhorn
// writes the old head's name into a new snapshot's meta, and names the disk
// by the meta file's name when it reads it back.
type diskMeta struct {
	Name        string
	Parent      string
	Removed     bool
	UserCreated bool
	Created     string
	Labels      map[string]string
}

// decodeMeta decodes the first JSON value of data into v, ignoring what
// follows it, as Longhorn's json.Decoder does.
func decodeMeta(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(v); err != nil {
		if err == io.EOF {
			return fmt.Errorf("empty file")
		}
		return err
	}
	return nil
}

// parseVolumeMeta parses volume.meta.
func parseVolumeMeta(data []byte) (Info, error) {
	var m volumeMeta
	if err := decodeMeta(data, &m); err != nil {
		return Info{}, err
	}
	if m.Size <= 0 {
		return Info{}, fmt.Errorf("size %d", m.Size)
	}
	if m.Head == "" {
		return Info{}, fmt.Errorf("no head")
	}
	if !validDiskFile(m.Head) {
		return Info{}, fmt.Errorf("head %q is not a disk file name", m.Head)
	}
	if m.Parent != "" && !validDiskFile(m.Parent) {
		return Info{}, fmt.Errorf("parent %q is not a disk file name", m.Parent)
	}
	return Info{
		Size:            uint64(m.Size),
		Head:            m.Head,
		Parent:          m.Parent,
		SectorSize:      m.SectorSize,
		Dirty:           m.Dirty,
		Rebuilding:      m.Rebuilding,
		Error:           m.Error,
		BackingFilePath: m.BackingFilePath,
		Encrypted:       m.Encrypted,
	}, nil
}

// parseDiskMeta parses the .img.meta of the disk file name file.
func parseDiskMeta(file string, data []byte) (*disk, error) {
	var m diskMeta
	if err := decodeMeta(data, &m); err != nil {
		return nil, err
	}
	if m.Parent != "" && !validDiskFile(m.Parent) {
		return nil, fmt.Errorf("parent %q is not a disk file name", m.Parent)
	}
	if m.Parent == file {
		return nil, fmt.Errorf("disk is its own parent")
	}
	return &disk{
		file:        file,
		parent:      m.Parent,
		removed:     m.Removed,
		userCreated: m.UserCreated,
		created:     parseCreated(m.Created),
		labels:      m.Labels,
	}, nil
}

// parseCreated parses a disk's creation time: RFC 3339 in UTC since
// longhorn-engine's util.Now; the zero time when absent or unparsable (it is
// informational only).
func parseCreated(s string) time.Time {
	for _, layout := range []string{time.RFC3339Nano, time.RubyDate, time.UnixDate} {
		if t, err := time.Parse(layout, s); err == nil {
			return t
		}
	}
	return time.Time{}
}

// validDiskFile reports whether name can be a disk file of a replica
// directory: a plain file name ending in ".img".
func validDiskFile(name string) bool {
	return strings.HasSuffix(name, imgSuffix) && len(name) > len(imgSuffix) &&
		!strings.ContainsRune(name, '/') && name != "." && name != ".."
}

// isSnapshotFile reports whether name is a snapshot disk file name,
// "volume-snap-<name>.img".
func isSnapshotFile(name string) bool {
	return strings.HasPrefix(name, snapPrefix) && strings.HasSuffix(name, imgSuffix) &&
		len(name) > len(snapPrefix)+len(imgSuffix) && !strings.ContainsRune(name, '/')
}

// snapshotName is the bare snapshot name of a snapshot disk file.
func snapshotName(file string) string {
	return strings.TrimSuffix(strings.TrimPrefix(file, snapPrefix), imgSuffix)
}

// snapshotFile is the disk file name of a bare snapshot name.
func snapshotFile(name string) string {
	return snapPrefix + name + imgSuffix
}

// readMeta reads a small metadata file.
func readMeta(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxMetaSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxMetaSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxMetaSize)
	}
	return data, nil
}
