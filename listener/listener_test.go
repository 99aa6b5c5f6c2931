package listener

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestUnixSocketIs0660AndReplacesOnlyAStaleSocket(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.sock")

	l, err := Unix(path, -1)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o660 {
		t.Errorf("socket mode %o; want 0660", got)
	}
	if _, err := Unix(path, -1); err == nil || !strings.Contains(err.Error(), "already served") {
		t.Errorf("a second listener on a live socket: %v; want it refused", err)
	}

	// A socket nothing answers on is stale and replaced.
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	l, err = Unix(path, -1)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	l.Close()
}

func TestUnixNeverRemovesAFileThatIsNotASocket(t *testing.T) {
	dir := t.TempDir()
	for name, make := range map[string]func(string) error{
		"regular file": func(p string) error { return os.WriteFile(p, []byte("keep me"), 0o600) },
		"directory":    func(p string) error { return os.Mkdir(p, 0o700) },
		"symlink":      func(p string) error { return os.Symlink("/etc/hostname", p) },
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
			if err := make(path); err != nil {
				t.Fatal(err)
			}
			before, _ := os.Lstat(path)
			if l, err := Unix(path, -1); err == nil {
				l.Close()
				t.Fatalf("listened on %s at a %s", path, name)
			} else if !strings.Contains(err.Error(), "not a socket") {
				t.Errorf("error %q does not say the path is not a socket", err)
			}
			after, err := os.Lstat(path)
			if err != nil || after.Mode() != before.Mode() || after.ModTime() != before.ModTime() {
				t.Errorf("the %s was changed: %v", name, err)
			}
		})
	}
}
