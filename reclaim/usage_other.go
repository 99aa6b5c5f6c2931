//go:build !linux

package reclaim

import (
	"fmt"
	"runtime"
)

// Measure needs Linux: the engines reclaim serves run there.
func Measure(path string) (Usage, error) {
	return Usage{}, fmt.Errorf("measuring %s: reclaim runs on Linux, not %s", path, runtime.GOOS)
}
