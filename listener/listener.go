// Package listener opens the unix sockets prune-guard serves on (the plugin
// socket, a metrics socket, the proxy's socket) and takes over a socket
// systemd passes by socket activation.
//
// It must never delete or replace a file that is not a socket, never take
// over a socket another process still answers on, and never let a socket
// exist, even for an instant, with wider permissions than it was asked for.
package listener

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// ErrServed is the error of a socket another process still answers on.
var ErrServed = errors.New("socket is already served by another process")

// Unix listens on a unix socket at path with mode 0660, owned by group gid
// when gid >= 0. A stale socket file (one nothing answers on) is replaced;
// a socket that still answers, and any path that is not a socket, are
// refused.
func Unix(path string, gid int) (net.Listener, error) {
	return listen(path, gid, 0o660)
}

// OwnerOnly listens on a unix socket at path with mode 0600: only its owner
// (root, for prune-guard) may connect. It is for sockets that hand out
// something a local user must never get, as the control socket's reclaim
// grants; Unix's rules for stale sockets and foreign files apply.
func OwnerOnly(path string) (net.Listener, error) {
	return listen(path, -1, 0o600)
}

func listen(path string, gid int, mode os.FileMode) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	// The socket must never exist with wider permissions, not even between
	// creation and chmod. Sockets are opened at startup, before other
	// goroutines create files, so the process-wide umask change is safe.
	old := syscall.Umask(0o777 &^ int(mode))
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, mode); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod socket %s: %w", path, err)
	}
	if gid >= 0 {
		if err := os.Chown(path, -1, gid); err != nil {
			l.Close()
			return nil, fmt.Errorf("chown socket %s: %w", path, err)
		}
	}
	return l, nil
}

// removeStale removes a socket file at path that nothing answers on. A file
// that is not a socket, or a socket that answers, is an error: it belongs to
// someone else.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket (%s); move it away or choose another path", path, fi.Mode().Type())
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("%s: %w; stop it first", path, ErrServed)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	return nil
}
