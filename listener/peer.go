package listener

import (
	"context"
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// Peer is the process at the other end of a unix socket connection, as the
// kernel recorded it when the connection was made (SO_PEERCRED): a client
// cannot choose what it says.
type Peer struct {
	PID int32
	UID uint32
	GID uint32
}

// PeerOf reads the peer credentials of a unix socket connection.
func PeerOf(c net.Conn) (Peer, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return Peer{}, fmt.Errorf("not a unix socket connection (%T)", c)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Peer{}, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Peer{}, err
	}
	if credErr != nil {
		return Peer{}, fmt.Errorf("SO_PEERCRED: %w", credErr)
	}
	return Peer{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid}, nil
}

type peerKey struct{}

// peerResult is a connection's peer, or why it is unknown.
type peerResult struct {
	peer Peer
	err  error
}

// WithPeer is an http.Server ConnContext: it records the connection's peer
// credentials in the context of every request on it, for PeerFrom.
func WithPeer(ctx context.Context, c net.Conn) context.Context {
	p, err := PeerOf(c)
	return context.WithValue(ctx, peerKey{}, peerResult{p, err})
}

// ErrNoPeer is PeerFrom's error for a request whose server recorded no
// peer credentials (its ConnContext is not WithPeer).
var ErrNoPeer = errors.New("the connection's peer credentials were not recorded")

// PeerFrom returns the peer credentials WithPeer recorded for the
// connection a request came on.
func PeerFrom(ctx context.Context) (Peer, error) {
	r, ok := ctx.Value(peerKey{}).(peerResult)
	if !ok {
		return Peer{}, ErrNoPeer
	}
	return r.peer, r.err
}
