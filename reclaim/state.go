package reclaim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// stateVersion is the state file's format; a file of another version is
// read as corrupt.
const stateVersion = 1

// Record is what reclaim knows of one image's use on this host.
type Record struct {
	// FirstSeen is when the image was pulled, tagged, loaded or built, or
	// when reclaim first listed it: never the image's build date, which
	// says nothing about when this host got it.
	FirstSeen time.Time `json:"first_seen"`
	// LastUsed is the latest container create, start or exit that used
	// the image, or pull or tag of it after it was first seen.
	LastUsed time.Time `json:"last_used,omitzero"`
}

// State is reclaim's memory between passes: one record per image ID, and
// the moment up to which the engine's events have been read.
type State struct {
	Version int               `json:"version"`
	Since   time.Time         `json:"since,omitzero"`
	Images  map[string]Record `json:"images"`
}

// NewState returns an empty state, as on a host's first pass.
func NewState() *State {
	return &State{Version: stateVersion, Images: map[string]Record{}}
}

// ErrCorruptState marks a state file that exists but cannot be read as a
// state. Starting afresh from it is safe: every image is then first seen
// now, so nothing is old enough to remove until --min-age has passed.
var ErrCorruptState = errors.New("corrupt state file")

// LoadState reads the state file at path. A missing file is an empty
// state. A corrupt one returns an empty state and an error wrapping
// ErrCorruptState, which a caller may report and go on from.
func LoadState(path string) (*State, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return NewState(), nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	var s State
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&s); err != nil {
		return NewState(), fmt.Errorf("%w %s: %v", ErrCorruptState, path, err)
	}
	if s.Version != stateVersion {
		return NewState(), fmt.Errorf("%w %s: version %d, want %d", ErrCorruptState, path, s.Version, stateVersion)
	}
	if s.Images == nil {
		s.Images = map[string]Record{}
	}
	return &s, nil
}

// Save writes the state to path atomically: a temporary file in the same
// directory, written and fsynced, renamed over path, then the directory
// fsynced, so that a crash leaves the old state or the new one, never a
// torn file. The file is owner-only; a missing directory is created 0700.
func (s *State) Save(path string) error {
	s.Version = stateVersion
	b, err := json.MarshalIndent(s, "", "\t")
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	b = append(b, '\n')
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // fails harmlessly once renamed
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("save state: write %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("save state: fsync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("save state: close %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("save state: fsync %s: %w", dir, err)
	}
	return nil
}

// Seen records that image id appeared at t (pulled, tagged, loaded). An
// image seen again is being used: a CI job pulls what it is about to run.
func (s *State) Seen(id string, t time.Time) {
	r, ok := s.Images[id]
	if !ok || r.FirstSeen.IsZero() {
		r.FirstSeen = t
	} else if t.After(r.LastUsed) {
		r.LastUsed = t
	}
	s.Images[id] = r
}

// Used records that a container used image id at t.
func (s *State) Used(id string, t time.Time) {
	r, ok := s.Images[id]
	if !ok || r.FirstSeen.IsZero() {
		r.FirstSeen = t
	}
	if t.After(r.LastUsed) {
		r.LastUsed = t
	}
	s.Images[id] = r
}

// Resync brings the records in line with what the engine holds now, which
// fills the gaps dropped events leave: a listed image without a record is
// first seen now; every container's creation is a use of its image, and a
// running, paused or restarting container uses its image now; records of
// images that are gone are dropped.
func (s *State) Resync(now time.Time, images []Image, containers []Container) {
	present := make(map[string]bool, len(images))
	children := make(map[string]bool, len(images))
	for _, im := range images {
		present[im.ID] = true
		children[im.ParentID] = true
	}
	for _, im := range images {
		listed := !im.Dangling() || !children[im.ID]
		if _, ok := s.Images[im.ID]; !ok && listed {
			s.Images[im.ID] = Record{FirstSeen: now}
		}
	}
	for _, c := range containers {
		if !present[c.ImageID] {
			continue
		}
		switch c.State {
		case "running", "paused", "restarting":
			s.Used(c.ImageID, now)
		default:
			if !c.Created.IsZero() {
				s.Used(c.ImageID, c.Created)
			}
		}
	}
	for id := range s.Images {
		if !present[id] {
			delete(s.Images, id)
		}
	}
}
