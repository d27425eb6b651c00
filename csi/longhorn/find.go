package longhorn

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Candidate is one replica directory of a volume found by FindReplicas.
type Candidate struct {
	// Dir is the replica directory.
	Dir string
	// Info is its volume.meta (zero if Err is set).
	Info Info
	// Err is why its volume.meta could not be read, if it could not.
	Err error
}

// Usable reports whether the candidate can be read: its volume.meta parses,
// it is not rebuilding and records no error. Dirty does not count against
// it: Longhorn sets Dirty whenever the replica is open.
func (c Candidate) Usable() bool {
	return c.Err == nil && !c.Info.Rebuilding && c.Info.Error == ""
}

// why says why a candidate is not usable.
func (c Candidate) why() string {
	switch {
	case c.Err != nil:
		return c.Err.Error()
	case c.Info.Rebuilding:
		return "rebuilding"
	case c.Info.Error != "":
		return "error: " + c.Info.Error
	}
	return "usable"
}

// FindReplicas lists the replica directories of volume under the Longhorn
// data path dataPath (e.g. /var/lib/longhorn): the directories
// dataPath/replicas/<volume>-<8 hex digits>, in name order, each with its
// volume.meta. It fails only if the replicas directory cannot be read.
func FindReplicas(dataPath, volume string) ([]Candidate, error) {
	if volume == "" || strings.ContainsRune(volume, '/') {
		return nil, fmt.Errorf("invalid volume name %q", volume)
	}
	root := filepath.Join(dataPath, "replicas")
	entries, err := os.ReadDir(root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list replicas: %w", err)
	}
	var out []Candidate
	for _, e := range entries {
		if !e.IsDir() || !isReplicaDirOf(e.Name(), volume) {
			continue
		}
		c := Candidate{Dir: filepath.Join(root, e.Name())}
		data, err := readMeta(filepath.Join(c.Dir, volumeMetaFile))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			c.Err = ErrNotReplica
		case err != nil:
			c.Err = err
		default:
			if c.Info, err = parseVolumeMeta(data); err != nil {
				c.Err = fmt.Errorf("%w: %v", ErrBadMetadata, err)
			}
		}
		out = append(out, c)
	}
	return out, nil
}

// isReplicaDirOf reports whether name is "<volume>-" followed by exactly
// eight lower-case hex digits, the name longhorn-manager gives a replica's
// data directory. The fixed suffix keeps volume "a" from matching the
// replicas of volume "a-b".
func isReplicaDirOf(name, volume string) bool {
	suffix, ok := strings.CutPrefix(name, volume+"-")
	if !ok || len(suffix) != 8 {
		return false
	}
	for _, c := range []byte(suffix) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// FindReplica returns the replica directory of volume under the Longhorn
// data path dataPath (see FindReplicas). Of the directories found, only the
// usable ones count (Candidate.Usable: volume.meta readable, not
// Rebuilding, no Error; Dirty is normal for an open replica). It fails with
// ErrReplicaNotFound if none is usable and with ErrAmbiguousReplica if more
// than one is: a node can hold an old replica beside the live one, and the
// caller must then choose with what it knows (e.g. which one holds the
// snapshot it just took).
func FindReplica(dataPath, volume string) (string, error) {
	cands, err := FindReplicas(dataPath, volume)
	if err != nil {
		return "", err
	}
	var usable, skipped []string
	for _, c := range cands {
		if c.Usable() {
			usable = append(usable, c.Dir)
		} else {
			skipped = append(skipped, fmt.Sprintf("%s (%s)", filepath.Base(c.Dir), c.why()))
		}
	}
	switch len(usable) {
	case 1:
		return usable[0], nil
	case 0:
		if len(skipped) == 0 {
			return "", fmt.Errorf("volume %s under %s: %w", volume, dataPath, ErrReplicaNotFound)
		}
		return "", fmt.Errorf("volume %s under %s: %w; skipped %s", volume, dataPath, ErrReplicaNotFound, strings.Join(skipped, ", "))
	}
	slices.Sort(usable)
	return "", fmt.Errorf("volume %s under %s: %w: %s", volume, dataPath, ErrAmbiguousReplica, strings.Join(usable, ", "))
}
