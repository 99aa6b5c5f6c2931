// Command noopplugin is a Docker authorization plugin that allows every
// request and response without looking at it.
//
// It is the protocol floor for the overhead benchmark: whatever it costs is
// the price of dockerd calling out to any authz plugin at all (two HTTP
// round trips over a unix socket per API call, plus JSON encoding of the
// request and response). prune-guard's own overhead is what it costs on top
// of this.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/docker/go-plugins-helpers/authorization"
)

// allowAll implements authorization.Plugin by allowing everything.
type allowAll struct{}

func (allowAll) AuthZReq(authorization.Request) authorization.Response {
	return authorization.Response{Allow: true}
}

func (allowAll) AuthZRes(authorization.Request) authorization.Response {
	return authorization.Response{Allow: true}
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("noopplugin: ")
	socket := flag.String("socket", "", "unix socket `path` to listen on (e.g. /run/docker/plugins/NAME.sock)")
	flag.Parse()
	if *socket == "" || flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*socket); err != nil {
		log.Fatal(err)
	}
}

func run(socket string) error {
	// A socket file left behind by a killed predecessor would make Listen
	// fail with EADDRINUSE; nothing can be listening on it if we are about
	// to be discovered under the same name.
	if err := os.Remove(socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing stale socket: %w", err)
	}
	l, err := net.Listen("unix", socket)
	if err != nil {
		return fmt.Errorf("listening: %w", err)
	}

	// Closing the listener makes Serve return and unlinks the socket, so
	// dockerd never discovers a dead plugin under this name.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sigs
		l.Close()
	}()

	err = authorization.NewHandler(allowAll{}).Serve(l)
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return fmt.Errorf("serving: %w", err)
}
