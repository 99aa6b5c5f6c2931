package enginetest

import (
	"os"
	"strconv"
	"syscall"
	"testing"
)

// NewSmallDisk mounts a tmpfs of size bytes. Call it before Start, and pass
// Args in Options.ExtraArgs: its cleanup, registered first, then runs after
// the engine's, and unmounts whatever the engine left and the tmpfs.
func NewSmallDisk(t testing.TB, size int64) *SmallDisk {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "a small disk for an engine needs root (euid is %d)", os.Geteuid())
	}
	dir, err := os.MkdirTemp("/tmp", "pgdisk")
	if err != nil {
		t.Fatalf("enginetest: creating mount point: %v", err)
	}
	d := &SmallDisk{dir: dir, size: size}
	t.Cleanup(func() {
		t.Helper()
		for _, err := range unmountUnder(dir) {
			t.Errorf("enginetest: %v", err)
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("enginetest: removing small disk: %v", err)
		}
	})
	opts := "size=" + strconv.FormatInt(size, 10) + ",mode=0700"
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, opts); err != nil {
		Unavailable(t, "mounting a %d-byte tmpfs at %s: %v", size, dir, err)
	}
	if err := os.Mkdir(d.DataRoot(), 0o711); err != nil {
		t.Fatalf("enginetest: creating data root: %v", err)
	}
	return d
}

// Usage returns the disk's size and the bytes still available, measured
// as reclaim measures them.
func (d *SmallDisk) Usage(t testing.TB) (total, avail uint64) {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(d.dir, &st); err != nil {
		t.Fatalf("enginetest: statfs %s: %v", d.dir, err)
	}
	unit := uint64(st.Frsize)
	if unit == 0 {
		unit = uint64(st.Bsize)
	}
	return st.Blocks * unit, st.Bavail * unit
}

// FreeInodes is the disk's count of free inodes, as reclaim reads it.
func (d *SmallDisk) FreeInodes(t testing.TB) uint64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(d.dir, &st); err != nil {
		t.Fatalf("enginetest: statfs %s: %v", d.dir, err)
	}
	return st.Ffree
}
