package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/prune-guard/prune-guard/guard"
	"github.com/prune-guard/prune-guard/listener"
)

// controlSocket is where serve and proxy answer GET /status, GET /metrics
// and POST /reclaim/grants, and where reclaim asks for its grants: a
// root-only socket (0600) in a root-only place.
const controlSocket = "/run/prune-guard/control.sock"

// controlEnv sets --control-socket, for serve, proxy and reclaim alike.
var controlEnv = envVar{name: "PRUNE_GUARD_CONTROL_SOCKET", flag: "control-socket"}

// controlUsage is the flag's help for serve and proxy.
const controlUsage = "root-only unix socket (mode 0600) serving GET /status, GET /metrics and POST /reclaim/grants, the grants 'prune-guard reclaim' needs to remove images during a CI job when the disk is critical; \"\" for none"

// control is an open control socket.
type control struct {
	l    net.Listener
	done chan struct{} // closed once serve has stopped; closing the listener unlinked the socket
}

// openControl listens on the control socket at path (none for ""). It is
// opened before the guard serves, so that a path another process serves is
// an error at start, when the path was given (explicit). The default path
// is not worth stopping over: a unit file written before serve had a
// control socket may not let it create /run/prune-guard, and a guard that
// exits there fails every docker call. It then serves without one and says
// what is lost.
func openControl(path string, explicit bool, log logrus.FieldLogger) (*control, error) {
	if path == "" {
		return nil, nil
	}
	l, err := listener.OwnerOnly(path)
	if err != nil && !explicit {
		log.WithError(err).Warn("no control socket: 'prune-guard status' falls back to the plugin's socket, and 'prune-guard reclaim' gets no grants for the deletes a pass at --critical makes during CI jobs; give the unit RuntimeDirectory=prune-guard (packaging/systemd) or set --control-socket")
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("--control-socket: %w", err)
	}
	return &control{l: l, done: make(chan struct{})}, nil
}

// serve answers on the control socket until ctx ends, with every request's
// peer credentials in its context for the grant handler's check; wait
// returns once it has stopped.
func (c *control) serve(ctx context.Context, d *decider) {
	if c == nil {
		return
	}
	srv := &http.Server{
		Handler:           d.g.ControlHandler(controlPeer),
		ReadHeaderTimeout: 10 * time.Second,
		ConnContext:       listener.WithPeer,
	}
	go func() {
		defer close(c.done)
		if err := serveServer(ctx, c.l, srv, time.Second); err != nil {
			d.log.WithError(err).Error("control socket stopped")
		}
	}()
}

// wait returns once serve has drained and removed the socket, so that a
// process that exits leaves no socket behind; ctx must have ended.
func (c *control) wait() {
	if c == nil {
		return
	}
	<-c.done
}

// close gives the socket up unserved, when the guard fails to start.
// Closing the listener unlinks the socket it made, and nothing else that
// may have come to stand at its path.
func (c *control) close() {
	if c == nil {
		return
	}
	c.l.Close()
}

// controlPeer is the guard's view of a control request's peer.
func controlPeer(ctx context.Context) (guard.Peer, error) {
	p, err := listener.PeerFrom(ctx)
	return guard.Peer{PID: p.PID, UID: p.UID}, err
}
