package reclaim

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/moby/moby/api/types/events"

	"github.com/prune-guard/prune-guard/eventstream"
)

func TestAMissingStateFileIsAnEmptyState(t *testing.T) {
	st, err := LoadState(filepath.Join(t.TempDir(), "none.json"))
	if err != nil {
		t.Fatalf("LoadState: %v", err)
	}
	if len(st.Images) != 0 || !st.Since.IsZero() {
		t.Errorf("state = %+v, want empty", st)
	}
}

func TestSavedStateLoadsBackOwnerOnlyWithNoTemporaryFileLeft(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new", "dir") // created on save
	path := filepath.Join(dir, "state.json")
	st := NewState()
	st.Since = now
	st.Images["sha256:a"] = used(5*time.Hour, time.Hour)
	st.Images["sha256:b"] = seen(2 * time.Hour)
	if err := st.Save(path); err != nil {
		t.Fatalf("Save: %v", err)
	}
	st.Images["sha256:b"] = seen(time.Hour) // a second save replaces the first
	if err := st.Save(path); err != nil {
		t.Fatalf("Save again: %v", err)
	}

	got, err := LoadState(path)
	if err != nil {
		t.Fatalf("LoadState: %v", err)
	}
	if !got.Since.Equal(now) || len(got.Images) != 2 ||
		!got.Images["sha256:a"].LastUsed.Equal(ago(time.Hour)) || !got.Images["sha256:b"].FirstSeen.Equal(ago(time.Hour)) {
		t.Errorf("loaded %+v, want what was saved last", got)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %v, want 0600", fi.Mode().Perm())
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("directory holds %v, want only the state file", names)
	}
}

func TestACorruptStateFileStartsAfreshAndSaysSo(t *testing.T) {
	for name, content := range map[string]string{
		"truncated":     `{"version":1,"images":{"sha256:a":{"first_seen":"2026-`,
		"not json":      "\x00\x01garbage",
		"other version": `{"version":2,"images":{}}`,
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.json")
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			st, err := LoadState(path)
			if !errors.Is(err, ErrCorruptState) {
				t.Errorf("LoadState error = %v, want ErrCorruptState", err)
			}
			if st == nil || len(st.Images) != 0 {
				t.Errorf("state = %+v, want a fresh, empty one", st)
			}
		})
	}
}

func TestResync(t *testing.T) {
	images := []Image{
		image("known", tags("known:1")),
		image("unknown", tags("built:2015")),
		image("base", tags("base:1")),
		image("step", parent("base")), // intermediate
		image("app", tags("app:1"), parent("step")),
		image("running", tags("svc:1")),
	}
	created := ago(30 * time.Hour)
	containers := []Container{
		{ID: "c1", Name: "/old-job", ImageID: "sha256:app", State: "exited", Created: created},
		{ID: "c2", Name: "/svc", ImageID: "sha256:running", State: "running", Created: created},
	}
	st := NewState()
	st.Images["sha256:known"] = seen(50 * time.Hour)
	st.Images["sha256:app"] = seen(50 * time.Hour)
	st.Images["sha256:running"] = seen(50 * time.Hour)
	st.Images["sha256:removed"] = seen(50 * time.Hour)

	st.Resync(now, images, containers)

	t.Run("an unrecorded image is first seen now, not at its build date", func(t *testing.T) {
		if r := st.Images["sha256:unknown"]; !r.FirstSeen.Equal(now) || !r.LastUsed.IsZero() {
			t.Errorf("record = %+v, want first seen now", r)
		}
	})
	t.Run("a recorded image keeps its record", func(t *testing.T) {
		if r := st.Images["sha256:known"]; !r.FirstSeen.Equal(ago(50 * time.Hour)) {
			t.Errorf("record = %+v, want first seen 50h ago", r)
		}
	})
	t.Run("a container's creation is a use of its image", func(t *testing.T) {
		if r := st.Images["sha256:app"]; !r.LastUsed.Equal(created) {
			t.Errorf("record = %+v, want last used at the container's creation %v", r, created)
		}
	})
	t.Run("a running container uses its image now", func(t *testing.T) {
		if r := st.Images["sha256:running"]; !r.LastUsed.Equal(now) {
			t.Errorf("record = %+v, want last used now", r)
		}
	})
	t.Run("records of images that are gone are dropped", func(t *testing.T) {
		if r, ok := st.Images["sha256:removed"]; ok {
			t.Errorf("record of a removed image kept: %+v", r)
		}
	})
	t.Run("intermediate images are not seeded", func(t *testing.T) {
		if r, ok := st.Images["sha256:step"]; ok {
			t.Errorf("intermediate image seeded: %+v", r)
		}
	})
}

func TestObserve(t *testing.T) {
	const (
		alpine = "sha256:3f57d9401f8d42f986df300f0c69192fc41da28ccc8d797829467780db3dd741"
		app    = "sha256:3f50aaaa1f8d42f986df300f0c69192fc41da28ccc8d797829467780db3dd741"
	)
	idx := NewIndex([]Image{
		{ID: alpine, RepoTags: []string{"alpine:3.19"}, RepoDigests: []string{"alpine@sha256:0123456789012345678901234567890123456789012345678901234567890123"}},
		{ID: app, RepoTags: []string{"registry.example:5000/team/app:1"}},
	})
	at, received := ago(3*time.Hour), ago(time.Minute)
	msg := func(typ events.Type, action events.Action, actorID string, attrs map[string]string) events.Message {
		return events.Message{Type: typ, Action: action, Actor: events.Actor{ID: actorID, Attributes: attrs}, TimeNano: at.UnixNano()}
	}
	cases := []struct {
		name      string
		state     map[string]Record
		m         events.Message
		wantID    string
		wantFirst time.Time
		wantLast  time.Time
	}{
		{
			name:   "a container create by tag is a use of the tagged image",
			m:      msg(events.ContainerEventType, events.ActionCreate, "c1", map[string]string{"image": "alpine:3.19"}),
			wantID: alpine, wantFirst: at, wantLast: at,
		},
		{
			name:   "the canonical name resolves like the familiar one",
			m:      msg(events.ContainerEventType, events.ActionStart, "c1", map[string]string{"image": "docker.io/library/alpine:3.19"}),
			wantID: alpine, wantFirst: at, wantLast: at,
		},
		{
			name:   "a container started by a short ID resolves to its image",
			state:  map[string]Record{app: seen(50 * time.Hour)},
			m:      msg(events.ContainerEventType, events.ActionDie, "c1", map[string]string{"image": "3f50aaaa"}),
			wantID: app, wantFirst: ago(50 * time.Hour), wantLast: at,
		},
		{
			name:   "a pull of a new image is its first sighting, at the event's time",
			m:      msg(events.ImageEventType, events.ActionPull, "registry.example:5000/team/app:1", nil),
			wantID: app, wantFirst: at,
		},
		{
			name:   "a pull of a known image is a use",
			state:  map[string]Record{alpine: seen(50 * time.Hour)},
			m:      msg(events.ImageEventType, events.ActionPull, "alpine:3.19", nil),
			wantID: alpine, wantFirst: ago(50 * time.Hour), wantLast: at,
		},
		{
			name:   "a tag names the image by ID",
			m:      msg(events.ImageEventType, events.ActionTag, alpine, map[string]string{"name": "alpine:latest"}),
			wantID: alpine, wantFirst: at,
		},
		{
			name: "a digest reference resolves",
			m: msg(events.ContainerEventType, events.ActionCreate, "c1",
				map[string]string{"image": "alpine@sha256:0123456789012345678901234567890123456789012345678901234567890123"}),
			wantID: alpine, wantFirst: at, wantLast: at,
		},
		{
			name: "an ambiguous short ID is ignored, as the engine would refuse it",
			m:    msg(events.ContainerEventType, events.ActionCreate, "c1", map[string]string{"image": "3f5"}),
		},
		{
			name: "an image no longer present is ignored",
			m:    msg(events.ContainerEventType, events.ActionCreate, "c1", map[string]string{"image": "gone:1"}),
		},
		{
			name: "other actions are ignored",
			m:    msg(events.ContainerEventType, events.ActionExecStart, "c1", map[string]string{"image": "alpine:3.19"}),
		},
		{
			name:   "an event without a time is a use when it was received",
			m:      events.Message{Type: events.ContainerEventType, Action: events.ActionCreate, Actor: events.Actor{Attributes: map[string]string{"image": "alpine:3.19"}}},
			wantID: alpine, wantFirst: received, wantLast: received,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := NewState()
			for id, r := range tc.state {
				st.Images[id] = r
			}
			applied := st.Observe(eventstream.Received(tc.m, received), idx)
			if tc.wantID == "" {
				if applied || len(st.Images) != len(tc.state) {
					t.Errorf("Observe applied the event: %+v", st.Images)
				}
				return
			}
			r, ok := st.Images[tc.wantID]
			if !applied || !ok {
				t.Fatalf("Observe did not record %s: %+v", tc.wantID, st.Images)
			}
			if !r.FirstSeen.Equal(tc.wantFirst) || !r.LastUsed.Equal(tc.wantLast) {
				t.Errorf("record = first %v, last %v; want first %v, last %v", r.FirstSeen, r.LastUsed, tc.wantFirst, tc.wantLast)
			}
		})
	}
}
