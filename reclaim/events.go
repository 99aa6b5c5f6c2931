package reclaim

import (
	"strings"

	"github.com/distribution/reference"
	"github.com/moby/moby/api/types/events"

	"github.com/prune-guard/prune-guard/eventstream"
)

// Event filters: the engine events that say an image appeared or was used.
var (
	eventTypes   = []string{string(events.ContainerEventType), string(events.ImageEventType)}
	eventActions = []string{
		string(events.ActionCreate), string(events.ActionStart), string(events.ActionDie), // container
		string(events.ActionPull), string(events.ActionTag), string(events.ActionLoad), string(events.ActionImport), // image
	}
)

// Index resolves the names events carry (a tag, a digest reference, a full
// or short ID) to image IDs, the way the engine does: a reference first,
// then a unique ID prefix.
type Index struct {
	ids  []string
	full map[string]bool   // the IDs, for an exact match
	refs map[string]string // normalized reference → ID
}

// NewIndex indexes the images' IDs and references.
func NewIndex(images []Image) *Index {
	x := &Index{refs: map[string]string{}, full: map[string]bool{}}
	for _, im := range images {
		x.ids = append(x.ids, im.ID)
		x.full[im.ID] = true
		for _, r := range im.Refs() {
			if n, ok := normalize(r); ok {
				x.refs[n] = im.ID
			}
		}
	}
	return x
}

// Resolve returns the ID of the image name refers to.
func (x *Index) Resolve(name string) (string, bool) {
	if name == "" {
		return "", false
	}
	if x.full[name] {
		return name, true
	}
	if n, ok := normalize(name); ok {
		if id, ok := x.refs[n]; ok {
			return id, true
		}
	}
	hex := strings.TrimPrefix(name, "sha256:")
	if hex == "" || strings.Trim(hex, "0123456789abcdef") != "" {
		return "", false
	}
	found := ""
	for _, id := range x.ids {
		if strings.HasPrefix(strings.TrimPrefix(id, "sha256:"), hex) {
			if found != "" && found != id {
				return "", false // ambiguous: the engine would refuse it too
			}
			found = id
		}
	}
	return found, found != ""
}

// normalize returns a reference's canonical form, with ":latest" added to a
// bare name, so that "alpine", "alpine:latest" and
// "docker.io/library/alpine:latest" are one key.
func normalize(ref string) (string, bool) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return "", false
	}
	return reference.TagNameOnly(named).String(), true
}

// Observe applies one engine event to the state: a container create,
// start or exit is a use of its image; an image pull, tag, load or import
// is a sighting, at the event's time (eventstream.Time: an undated event's
// is when it was received). Events naming an image the index does not know
// (removed since, or a name that has moved) are ignored: the next resync
// covers what they would have said. It reports whether the event was
// applied.
func (s *State) Observe(e eventstream.Event, x *Index) bool {
	switch e.Type {
	case events.ContainerEventType:
		switch e.Action {
		case events.ActionCreate, events.ActionStart, events.ActionDie:
			// The image attribute is the name the container was
			// created with, not an ID.
			if id, ok := x.Resolve(e.Actor.Attributes["image"]); ok {
				s.Used(id, e.At)
				return true
			}
		}
	case events.ImageEventType:
		switch e.Action {
		case events.ActionPull, events.ActionTag, events.ActionLoad, events.ActionImport:
			// A pull names the reference pulled; the others, the ID.
			if id, ok := x.Resolve(e.Actor.ID); ok {
				s.Seen(id, e.At)
				return true
			}
		}
	}
	return false
}
