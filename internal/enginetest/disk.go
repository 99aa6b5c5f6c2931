package enginetest

import (
	"fmt"
	"path/filepath"
	"testing"
)

// SmallDisk is a size-limited filesystem for an engine's data root, so that
// a test can fill it with images of known size and watch its usage. It is a
// tmpfs: overlay2 works on it, its usage is exact and immediate (no
// reserved blocks, no deferred frees), and it needs no loop device.
type SmallDisk struct {
	dir  string
	size int64
}

// DataRoot is the engine's data root on the small disk.
func (d *SmallDisk) DataRoot() string { return filepath.Join(d.dir, "data") }

// Args are the dockerd arguments that put its data root on the disk (the
// last --data-root on dockerd's command line wins).
func (d *SmallDisk) Args() []string { return []string{"--data-root", d.DataRoot()} }

// Percent is the disk's used share, 0 to 100, as reclaim computes it.
func (d *SmallDisk) Percent(t testing.TB) float64 {
	t.Helper()
	total, avail := d.Usage(t)
	return 100 * float64(total-avail) / float64(total)
}

// String describes the disk for logs.
func (d *SmallDisk) String() string {
	return fmt.Sprintf("tmpfs of %d MiB at %s", d.size>>20, d.dir)
}
