package listener

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"syscall"
)

// listenFdsStart is the first file descriptor systemd passes (sd_listen_fds).
const listenFdsStart = 3

// Inherited returns the listening socket passed by systemd socket activation
// (LISTEN_PID naming this process, LISTEN_FDS=1), or nil when none was.
//
// With an inherited socket, connections dockerd makes while prune-guard
// restarts wait in the socket's backlog instead of failing, because the
// socket outlives the process.
func Inherited() (net.Listener, error) {
	pid, err := strconv.Atoi(os.Getenv("LISTEN_PID"))
	if err != nil || pid != os.Getpid() {
		return nil, nil
	}
	n, err := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if err != nil || n == 0 {
		return nil, nil
	}
	// Children must not believe the sockets are theirs.
	os.Unsetenv("LISTEN_PID")
	os.Unsetenv("LISTEN_FDS")
	os.Unsetenv("LISTEN_FDNAMES")
	if n != 1 {
		return nil, fmt.Errorf("socket activation passed %d sockets, want 1", n)
	}
	syscall.CloseOnExec(listenFdsStart)
	f := os.NewFile(listenFdsStart, "systemd-socket")
	l, err := net.FileListener(f)
	f.Close() // FileListener dups the descriptor
	if err != nil {
		return nil, fmt.Errorf("use socket from socket activation: %w", err)
	}
	return l, nil
}
