package audit

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// Narrowing an audit file's mode is for the regular file prune-guard writes
// its records to. An operator may point --audit-log at a device instead
// (/dev/null to drop records, /dev/stdout under a supervisor): Open must
// leave such a node's mode alone, or "--audit-log /dev/null" would make the
// host's /dev/null 0600 and break every unprivileged process that writes to
// it.
func TestOpenLeavesTheModeOfADeviceAlone(t *testing.T) {
	node := filepath.Join(t.TempDir(), "null")
	// Our own node for the null device (char 1,3), never the host's.
	if err := syscall.Mknod(node, syscall.S_IFCHR|0o666, 1<<8|3); err != nil {
		if errors.Is(err, syscall.EPERM) && os.Getenv("CI") != "true" {
			t.Skipf("creating a device node needs root: %v", err)
		}
		t.Fatal(err)
	}
	if err := os.Chmod(node, 0o666); err != nil { // whatever the umask
		t.Fatal(err)
	}
	if f, err := os.OpenFile(node, os.O_WRONLY, 0); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("device nodes cannot be opened here (a nodev mount?), and CI=true must run this test: %v", err)
		}
		t.Skipf("device nodes cannot be opened here (a nodev mount?): %v", err)
	} else {
		f.Close()
	}
	al, err := Open(node, -1)
	if err != nil {
		// Refusing a device is acceptable too; changing it is not.
		t.Logf("Open refused the device: %v", err)
	} else {
		al.Event("test", nil)
		al.Close()
	}
	fi, err := os.Stat(node)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o666 {
		t.Errorf("Open changed the device node's mode from 0666 to %o", got)
	}
}
