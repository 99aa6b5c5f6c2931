package policy

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"time"
)

// Watch polls the policy file at path every interval and calls apply with
// the newly loaded policy, or with the error that kept it out, each time the
// file's content changes. A file that disappears is reported as an error
// (the policy in force stays) unless optional is set, in which case its
// absence means the built-in default.
//
// Polling, rather than inotify, survives editors that replace files by
// rename, config management that swaps symlinks, and files that appear
// after start, with no platform code; a policy file changes rarely.
func Watch(ctx context.Context, path string, optional bool, interval time.Duration, last []byte, apply func(*Config, error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		data, err := os.ReadFile(path)
		switch {
		case errors.Is(err, fs.ErrNotExist) && optional:
			if last != nil {
				last = nil
				apply(Default(), nil)
			}
			continue
		case err != nil:
			if last != nil {
				last = nil
				apply(nil, err)
			}
			continue
		case last != nil && bytes.Equal(data, last):
			continue
		}
		last = data
		apply(Parse(path, data))
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
