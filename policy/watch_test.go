package policy

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// The contents the tests write, by name.
var watchContents = map[string]string{
	"enforce": "mode: enforce\n",
	"warn":    "mode: warn\n",
	"broken":  "rules: [\n",
}

// describe names what apply was given: a content's name, "default" or
// "error".
func describe(c *Config, err error) string {
	switch {
	case err != nil:
		return "error"
	case c.Source == BuiltIn:
		return "default"
	}
	for name, content := range watchContents {
		if c.Hash == hash([]byte(content)) {
			return name
		}
	}
	return "unknown content " + c.Hash
}

func TestTheReloadLoopAppliesWhatThePolicyFileHolds(t *testing.T) {
	tests := []struct {
		name     string
		optional bool
		start    string   // the file's content when watching starts; "" for no file
		steps    []string // poll, reload, remove, or a content to write
		want     []string // what apply was given, in order
	}{
		{name: "a poll applies a changed file", start: "enforce", steps: []string{"warn", "poll"}, want: []string{"warn"}},
		{name: "a poll of an unchanged file applies nothing", start: "enforce", steps: []string{"poll", "poll"}},
		{name: "a reload applies the file even when it is unchanged", start: "enforce", steps: []string{"reload", "reload"}, want: []string{"enforce", "enforce"}},
		{name: "a poll after a reload that brought the change in applies nothing", start: "enforce", steps: []string{"warn", "reload", "poll"}, want: []string{"warn"}},
		{name: "a file that does not load is rejected once, and its fix applied", start: "enforce", steps: []string{"broken", "poll", "poll", "warn", "poll"}, want: []string{"error", "warn"}},
		{name: "a reload reports a file that does not load every time", start: "enforce", steps: []string{"broken", "reload", "reload"}, want: []string{"error", "error"}},
		{name: "a missing optional file means the built-in default, once", optional: true, start: "enforce", steps: []string{"remove", "poll", "poll"}, want: []string{"default"}},
		{name: "a missing file that is not optional is an error, once", start: "enforce", steps: []string{"remove", "poll", "poll"}, want: []string{"error"}},
		{name: "a reload of a missing optional file applies the built-in default", optional: true, start: "enforce", steps: []string{"remove", "reload"}, want: []string{"default"}},
		{name: "an optional file that appears is applied", optional: true, steps: []string{"poll", "warn", "poll"}, want: []string{"warn"}},
		{name: "a file that comes back after a rejection is applied", start: "enforce", steps: []string{"remove", "poll", "enforce", "poll"}, want: []string{"error", "enforce"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "policy.yaml")
			var last []byte
			if tt.start != "" {
				last = []byte(watchContents[tt.start])
				writeAtomically(t, path, watchContents[tt.start])
			}
			var got []string
			w := &watcher{path: path, optional: tt.optional, last: last, apply: func(c *Config, err error) {
				got = append(got, describe(c, err))
			}}
			for _, step := range tt.steps {
				switch step {
				case "poll":
					w.load(false)
				case "reload":
					w.load(true)
				case "remove":
					if err := os.Remove(path); err != nil {
						t.Fatal(err)
					}
				default:
					writeAtomically(t, path, watchContents[step])
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("applied %q, want %q", got, tt.want)
			}
		})
	}
}

// TestReloadsRacingEditsLeaveTheFilesLastContentInForce races reloads (what
// SIGHUP sends) and polls against a stream of edits. Every read is applied
// in the order it was taken, so the versions applied never go back, and once
// the edits stop and a last reload is taken, the policy in force is the
// file's last content.
func TestReloadsRacingEditsLeaveTheFilesLastContentInForce(t *testing.T) {
	const rounds, edits = 20, 25
	for round := range rounds {
		path := filepath.Join(t.TempDir(), "policy.yaml")
		version := map[string]int{}
		content := func(v int) string { return fmt.Sprintf("mode: enforce\n# version %d of round %d\n", v, round) }
		for v := range edits + 1 {
			version[hash([]byte(content(v)))] = v
		}
		writeAtomically(t, path, content(0))

		// apply runs on Watch's goroutine; got is read once Watch has
		// returned.
		var got []int
		apply := func(c *Config, err error) {
			if err != nil {
				t.Errorf("round %d: a complete file was rejected: %v", round, err)
				return
			}
			got = append(got, version[c.Hash])
		}
		ctx, cancel := context.WithCancel(context.Background())
		reload := make(chan struct{})
		watching := make(chan struct{})
		go func() {
			defer close(watching)
			Watch(ctx, path, false, time.Millisecond, []byte(content(0)), reload, apply)
		}()

		var wg sync.WaitGroup
		stop := make(chan struct{})
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				case reload <- struct{}{}:
				}
			}
		})
		for v := 1; v <= edits; v++ {
			writeAtomically(t, path, content(v))
		}
		close(stop)
		wg.Wait()
		// Received after the last edit, so it reads the last content.
		reload <- struct{}{}
		cancel()
		<-watching

		for i := 1; i < len(got); i++ {
			if got[i] < got[i-1] {
				t.Errorf("round %d: version %d was applied after version %d", round, got[i], got[i-1])
				break
			}
		}
		if len(got) == 0 || got[len(got)-1] != edits {
			t.Fatalf("round %d: the policy in force is version %v, want the last one written, %d", round, got[max(len(got)-1, 0):], edits)
		}
	}
}

// writeAtomically replaces the file by rename, as editors and config
// management do, so a read sees the old content or the new, never a part.
func writeAtomically(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}
