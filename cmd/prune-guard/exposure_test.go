package main

import (
	"net"
	"os"
	"path/filepath"
	"testing"
)

// A socket is reachable through a symbolic link only as far as the
// directories above the socket itself allow, whatever the link's own
// directories allow.
func TestReachableByFollowsALinkToTheSocket(t *testing.T) {
	base := t.TempDir()
	// t.TempDir's directories are private; open them as /run is.
	for _, d := range []string{base, filepath.Dir(base)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mk := func(dir string, mode os.FileMode) string {
		p := filepath.Join(base, dir)
		if err := os.Mkdir(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // past the umask
			t.Fatal(err)
		}
		return p
	}
	open, private, links := mk("open", 0o755), mk("private", 0o700), mk("links", 0o755)
	for _, dir := range []string{open, private} {
		l, err := net.Listen("unix", filepath.Join(dir, "s.sock"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		if err := os.Chmod(filepath.Join(dir, "s.sock"), 0o666); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join(dir, "s.sock"), filepath.Join(links, filepath.Base(dir)+".sock")); err != nil {
			t.Fatal(err)
		}
	}
	for link, want := range map[string]string{"open.sock": "every local user", "private.sock": ""} {
		if got := reachableBy(filepath.Join(links, link)); got != want {
			t.Errorf("reachableBy(%s) = %q; want %q", link, got, want)
		}
	}
}
