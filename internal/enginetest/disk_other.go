//go:build !linux

package enginetest

import (
	"runtime"
	"testing"
)

// NewSmallDisk needs Linux (tmpfs and overlay2); elsewhere it skips t, or
// fails it under CI.
func NewSmallDisk(t testing.TB, size int64) *SmallDisk {
	t.Helper()
	Unavailable(t, "a small disk for an engine needs Linux, not %s", runtime.GOOS)
	return nil
}

// Usage is never reached off Linux: NewSmallDisk has stopped the test.
func (d *SmallDisk) Usage(t testing.TB) (total, avail uint64) {
	t.Helper()
	t.Fatal("enginetest: SmallDisk needs Linux")
	return 0, 0
}

// FreeInodes is never reached off Linux: NewSmallDisk has stopped the test.
func (d *SmallDisk) FreeInodes(t testing.TB) uint64 {
	t.Helper()
	t.Fatal("enginetest: SmallDisk needs Linux")
	return 0
}
