package policy

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"time"
)

// Watch follows the policy file at path until ctx ends. It reads the file
// every interval and calls apply when the content changed, and reads it on
// every value from reload and calls apply whether or not it changed (an
// operator who asks for a reload gets one, and sees it in the log). apply
// receives the newly loaded policy, or the error that kept it out. A file
// that disappears is reported as an error (the policy in force stays)
// unless optional is set, in which case its absence means the built-in
// default. last is the content the policy in force was loaded from (nil
// when there was no file).
//
// One goroutine reads and applies, and reload only asks it to: a read taken
// before an edit is applied before the read that sees the edit, so the
// policy in force is always the file's latest content. Two goroutines, one
// per trigger, could apply a stale read after a fresh one and keep the old
// policy until the next edit.
//
// Polling, rather than inotify, survives editors that replace files by
// rename, config management that swaps symlinks, and files that appear
// after start, with no platform code; a policy file changes rarely.
func Watch(ctx context.Context, path string, optional bool, interval time.Duration, last []byte, reload <-chan struct{}, apply func(*Config, error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	w := &watcher{path: path, optional: optional, last: last, apply: apply}
	w.follow(ctx, t.C, reload)
}

// watcher is the state of the one reload loop: the content last applied.
type watcher struct {
	path     string
	optional bool
	last     []byte
	apply    func(*Config, error)
}

// follow reads the file on every tick and every reload until ctx ends.
func (w *watcher) follow(ctx context.Context, tick <-chan time.Time, reload <-chan struct{}) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
			w.load(false)
		case <-reload:
			w.load(true)
		}
	}
}

// load reads the file and applies what it holds, unless it holds what was
// applied last and force is not set. A file that is missing or unreadable
// counts as unchanged while it stays so, so an error is reported once, not
// every interval.
func (w *watcher) load(force bool) {
	data, err := os.ReadFile(w.path)
	unchanged := w.last != nil && bytes.Equal(data, w.last)
	if err != nil {
		unchanged = w.last == nil
		data = nil
	}
	if unchanged && !force {
		return
	}
	w.last = data
	switch {
	case errors.Is(err, fs.ErrNotExist) && w.optional:
		w.apply(Default(), nil)
	case err != nil:
		w.apply(nil, err)
	default:
		w.apply(Parse(w.path, data))
	}
}

// LoadOptional loads path, or returns the built-in default when optional is
// set and the file does not exist. It also returns the bytes it read, for
// Watch.
func LoadOptional(path string, optional bool) (*Config, []byte, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && optional {
		return Default(), nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	c, err := Parse(path, data)
	return c, data, err
}
