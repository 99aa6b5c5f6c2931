package reclaim

import (
	"fmt"
	"syscall"
)

// Measure reports how full the filesystem holding path is. path must be
// visible to this process as the engine sees it: reclaim runs on the
// engine's host (or with the data root mounted at the same path).
func Measure(path string) (Usage, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return Usage{}, fmt.Errorf("statfs %s: %w", path, err)
	}
	// Block counts are in fragment-size units; Linux reports a zero
	// fragment size only on filesystems where it equals the block size.
	unit := uint64(st.Frsize)
	if unit == 0 {
		unit = uint64(st.Bsize)
	}
	// Linux has no separate count of inodes an unprivileged writer may
	// take (statvfs's f_favail is f_ffree).
	return Usage{Path: path, Total: st.Blocks * unit, Avail: st.Bavail * unit, Inodes: st.Files, FreeInodes: st.Ffree}, nil
}
