package receiver

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/voldelta/voldelta/transport"
)

// VolumeStatus is what a receiver's state directory says of one volume,
// checked against the target as it is now. Current is true only when the
// target holds a committed generation, no apply has started since (a partly
// written target is never current), and the target's fingerprint still
// vouches that nothing changed it since the commit (see Fingerprint). When
// it does not, Current is false and Problem says why; the next round finds
// and repairs what changed.
type VolumeStatus struct {
	Volume        string     `json:"volume"`
	Target        string     `json:"target"`
	Current       bool       `json:"current"`
	Incomplete    bool       `json:"incomplete"`
	Generation    uint64     `json:"generation"`
	Root          string     `json:"root_hash,omitempty"`
	Size          uint64     `json:"size"`
	Image         string     `json:"image,omitempty"` // the image the committed generation was made from
	Group         *Group     `json:"group,omitempty"` // the group of the round that committed it, if any
	CommittedAt   *time.Time `json:"committed_at,omitempty"`
	ApplyingSince *time.Time `json:"applying_since,omitempty"`
	// Problem says why a committed target is not current: changed or
	// possibly changed outside voldelta, gone, or a failed verification.
	Problem string      `json:"problem,omitempty"`
	History []Committed `json:"history,omitempty"`
}

// ReadStatus returns the status of volume in stateDir; ErrNoState if it
// was never synced.
func ReadStatus(stateDir, volume string) (*VolumeStatus, error) {
	if err := transport.ValidateVolumeName(volume); err != nil {
		return nil, err
	}
	st, err := volumeDir{dir: filepath.Join(stateDir, volume)}.loadState()
	if err != nil {
		return nil, fmt.Errorf("volume %q: %w", volume, err)
	}
	vs := &VolumeStatus{
		Volume: st.Volume, Target: st.Target, Generation: st.Generation, Root: st.Root, Size: st.Size, Image: st.Image,
		Group: st.Group, Incomplete: st.Phase == PhaseApplying, History: st.History,
	}
	vs.Current, vs.Problem = judge(st)
	if !st.CommittedAt.IsZero() {
		t := st.CommittedAt
		vs.CommittedAt = &t
	}
	if st.Applying != nil {
		t := st.Applying.StartedAt
		vs.ApplyingSince = &t
	}
	return vs, nil
}

// judge decides whether the state's committed generation is what its
// target holds now, and if not, why.
func judge(st *State) (bool, string) {
	switch {
	case st.Rescan != "":
		return false, st.Rescan
	case st.Phase != PhaseCommitted:
		return false, ""
	case st.Generation == 0:
		return false, ""
	}
	fp, err := observeTarget(st.Target)
	if err != nil {
		return false, fmt.Sprintf("the target cannot be checked: %v", err)
	}
	switch v, why := st.Fingerprint.compare(fp); v {
	case changedContent:
		return false, "the target was changed outside voldelta since the commit: " + why
	case unknownContent:
		return false, "nothing vouches that the target still holds the committed generation: " + why + "; the next round reads it back"
	}
	return true, ""
}

// ListStatus returns the status of every volume in stateDir.
func ListStatus(stateDir string) ([]*VolumeStatus, error) {
	ents, err := os.ReadDir(stateDir)
	if err != nil {
		return nil, fmt.Errorf("read state directory: %w", err)
	}
	var out []*VolumeStatus
	for _, e := range ents {
		if !e.IsDir() || transport.ValidateVolumeName(e.Name()) != nil {
			continue
		}
		vs, err := ReadStatus(stateDir, e.Name())
		if errors.Is(err, ErrNoState) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, vs)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Volume < out[j].Volume })
	return out, nil
}
