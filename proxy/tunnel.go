package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"path"
)

// switched carries on after the engine switched protocols (101) for
// request h. BuildKit's control tunnel (POST /grpc, Upgrade: h2c) is
// terminated on both sides so that each call in it is decided; everything
// else (attach and exec with Upgrade: tcp, BuildKit's /session tunnel, in
// which the engine is the caller) becomes a raw byte pipe.
func (c *conn) switched(h *requestHead) error {
	if h.grpcTunnel {
		return c.serveTunnel()
	}
	return c.pipe(c.client())
}

// isGRPCTunnel reports whether a request target is BuildKit's control
// tunnel, as moby routes it (/grpc, with or without an API version).
func isGRPCTunnel(target []byte) bool {
	p := string(target)
	if i := indexAny(p, "?#"); i >= 0 {
		p = p[:i]
	}
	if path.Base(p) != "grpc" {
		return false
	}
	dir := path.Dir(p)
	return dir == "/" || len(dir) > 2 && dir[:2] == "/v" && path.Dir(dir) == "/"
}

func indexAny(s, chars string) int {
	for i := range len(s) {
		for j := range len(chars) {
			if s[i] == chars[j] {
				return i
			}
		}
	}
	return -1
}

// closeWriter is a connection that can be half-closed.
type closeWriter interface{ CloseWrite() error }

// pipe copies bytes both ways until both directions are done, passing a
// half-close on as a half-close: stdin's end must reach the container
// while its output still flows back (docker attach and exec), and the
// engine cancels an attach whose connection closes entirely. What comes
// back is written to back, the client connection or an observed writer
// in front of it.
func (c *conn) pipe(back io.Writer) error {
	toEngine := make(chan error, 1)
	go func() { toEngine <- halfCopy(c.e, c.e, c.br) }()
	backErr := halfCopy(back, c.c, c.ebr)
	if backErr != nil {
		// The client is gone: nothing more can reach it, so the engine
		// may stop too.
		c.closeEngineConn()
	}
	there := <-toEngine
	return errors.Join(backErr, there)
}

// halfCopy copies src to dst (which writes to conn) and then half-closes
// conn.
func halfCopy(dst io.Writer, conn net.Conn, src *bufio.Reader) error {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	_, err := io.CopyBuffer(dst, src, *bp)
	if cw, ok := conn.(closeWriter); ok {
		if cerr := cw.CloseWrite(); err == nil && cerr != nil && !errors.Is(cerr, net.ErrClosed) {
			err = fmt.Errorf("half-close: %w", cerr)
		}
	}
	return err
}

// closeEngineConn closes the engine connection without forgetting it, so
// that a copy still using it ends.
func (c *conn) closeEngineConn() {
	c.emu.Lock()
	defer c.emu.Unlock()
	if c.e != nil {
		c.e.Close()
	}
}
