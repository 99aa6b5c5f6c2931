package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime/debug"
	"strconv"
	"sync"
	"time"
)

// Each client connection is paired with a connection of its own to the
// engine, dialed at its first forwarded request and kept as long as both
// keep theirs. Pairing makes the proxy transparent to everything the
// Docker API does with a connection (keep-alive, Upgrade hijacks, full
// duplex, streams) at the cost of the engine seeing as many connections as
// the clients open, which is what it sees without the proxy.
//
// On each connection the proxy reads one request head at a time, asks the
// Decider, then forwards the head as the client sent it and the body as
// net/http frames it, while relaying the response as the engine sends it,
// byte for byte and at once. Only a 101 (Switching Protocols) answer or a
// response that lasts until the connection closes (dockerd's hijacks
// without Upgrade) turns the connection into a raw byte pipe.

const (
	// clientBufSize is a client connection's read buffer: request heads
	// fit in it, and bodies stream through it.
	clientBufSize = 4 << 10
	// engineBufSize is the engine side's read buffer, taken from a pool
	// for the length of one exchange.
	engineBufSize = 32 << 10
	// headTimeout bounds the arrival of a request head once its first byte
	// came: a client that stalls mid-head holds only its own connection,
	// and not for ever. An idle connection has no deadline at all.
	headTimeout = time.Minute
)

var engineBufs = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, engineBufSize) }}

// conn is one client connection.
type conn struct {
	s    *Server
	c    net.Conn
	br   *bufio.Reader
	long []byte // a request head longer than br's buffer

	e     net.Conn      // the engine connection paired with c; nil until needed
	ebr   *bufio.Reader // e's reader, during an exchange
	elong []byte
	obs   Observer // the exchange's observer, if its verdict has one

	// body is the request body's copy to the engine during an exchange:
	// it yields once, when the body is sent (bodySent waits for it).
	body    <-chan error
	bodyErr error

	closeOnce sync.Once
}

func newConn(s *Server, nc net.Conn) *conn {
	return &conn{s: s, c: nc, br: bufio.NewReaderSize(nc, clientBufSize)}
}

// serve runs the connection until either side ends it.
func (c *conn) serve() {
	defer func() {
		if p := recover(); p != nil {
			c.s.o.Log.WithField("panic", fmt.Sprint(p)).WithField("stack", string(debug.Stack())).
				Error("panic while proxying a connection; closed it")
		}
		c.closeClient()
		c.closeEngine()
		c.s.forget(c)
	}()
	if prior, err := hasHTTP2Preface(c.br); err != nil {
		return
	} else if prior {
		c.s.setIdle(c, false)
		c.serveHTTP2()
		return
	}
	for {
		// Idle: wait for the next request with no deadline at all. An
		// engine connection kept alive behaves the same way.
		if _, err := c.br.Peek(1); err != nil {
			return
		}
		if !c.s.setIdle(c, false) {
			return
		}
		if !c.exchange() || !c.s.setIdle(c, true) {
			return
		}
	}
}

// exchange proxies one request and its response. It reports whether the
// connection may carry another.
func (c *conn) exchange() (keep bool) {
	raw, err := c.readRequestHead()
	if err != nil {
		c.refuseHead(err)
		return false
	}
	h, err := parseRequestHead(raw)
	if err != nil {
		c.refuseHead(err)
		return false
	}
	v := c.s.d.Decide(context.Background(), c.request(&h))
	if !v.Allow {
		c.s.refused.Add(1)
		// A body that was not read cannot be skipped safely: close.
		keep = !h.close && h.body == noBody
		c.answer(http.StatusForbidden, denialText(c.s.o.Name, v.Message), keep)
		return keep
	}
	if v.Observe != nil {
		return c.observe(&h, v.Observe)
	}
	return c.forward(&h)
}

// errRelayFailed is what an observer is told when relaying failed
// unexpectedly (a panic, which costs the connection).
var errRelayFailed = errors.New("the proxy failed while relaying the response")

// observe forwards an allowed request whose verdict observes the
// response, and tells the observer when the exchange ends, however it
// ends.
func (c *conn) observe(h *requestHead, obs Observer) (keep bool) {
	c.obs = obs
	err := errRelayFailed
	defer func() {
		c.obs = nil
		obs.Done(err)
	}()
	keep, err = c.forwardObserved(h)
	return keep
}

// readRequestHead reads the next request head. Only a head that has not
// arrived whole is bounded in time: a deadline costs a timer, and nearly
// every head comes in one read.
func (c *conn) readRequestHead() ([]byte, error) {
	if buf, _ := c.br.Peek(c.br.Buffered()); bytes.Contains(buf, crlfcrlf) {
		return readHead(c.br, &c.long)
	}
	_ = c.c.SetReadDeadline(time.Now().Add(headTimeout))
	defer c.c.SetReadDeadline(time.Time{})
	return readHead(c.br, &c.long)
}

// request is the Decider's view of a request head.
func (c *conn) request(h *requestHead) Request {
	r := Request{Method: h.method, URI: h.target}
	if len(c.s.o.Headers) == 0 {
		return r
	}
	_, rest, _ := bytes.Cut(h.raw, crlf)
	for {
		var line []byte
		line, rest, _ = bytes.Cut(rest, crlf)
		if len(line) == 0 {
			return r
		}
		name, value, _ := bytes.Cut(line, []byte(":"))
		for _, want := range c.s.o.Headers {
			if !equalFold(name, want) {
				continue
			}
			if r.Headers == nil {
				r.Headers = make(map[string]string, len(c.s.o.Headers))
			}
			if _, seen := r.Headers[want]; !seen {
				r.Headers[want] = string(bytes.Trim(value, " \t"))
			}
		}
	}
}

// refuseHead answers a head the proxy will not read, if the client is
// still there to hear it.
func (c *conn) refuseHead(err error) {
	var he *headError
	switch {
	case errors.As(err, &he):
		c.answer(http.StatusBadRequest, "prune-guard: malformed request refused: "+he.why, false)
	case errors.Is(err, errHeadTooLarge):
		c.answer(http.StatusRequestHeaderFieldsTooLarge, "prune-guard: "+err.Error(), false)
	}
	// Anything else is the connection failing: nobody to answer.
}

// forward sends an allowed request to the engine and relays its response.
func (c *conn) forward(h *requestHead) bool {
	keep, _ := c.forwardObserved(h)
	return keep
}

// forwardObserved is forward, also saying why the exchange ended early.
func (c *conn) forwardObserved(h *requestHead) (bool, error) {
	if err := c.sendHead(h); err != nil {
		keep := !h.close && h.body == noBody
		c.answer(http.StatusBadGateway, fmt.Sprintf("prune-guard: the engine at %s does not answer: %v", c.s.o.Engine, err), keep)
		return keep, fmt.Errorf("the engine does not answer: %w", err)
	}
	c.ebr = engineBufs.Get().(*bufio.Reader)
	c.ebr.Reset(c.e)
	defer c.releaseEngineBuf()

	c.body = c.sendBody(h)
	keep, err := c.relay(h)
	if bodyErr := c.bodySent(); bodyErr != nil {
		keep = false
		if err == nil {
			err = bodyErr
		}
	}
	if err != nil {
		c.s.o.Log.WithError(err).WithField("request", h.method+" "+string(clip([]byte(h.target)))).Debug("exchange ended early")
	}
	return keep && err == nil && !h.close, err
}

// sendHead writes the request head to the engine, dialing it first if
// needed. A kept engine connection that turns out dead (the engine
// restarted) is replaced once: nothing of the request reached it.
func (c *conn) sendHead(h *requestHead) error {
	for attempt := 0; ; attempt++ {
		fresh := c.e == nil
		if fresh {
			if err := c.dialEngine(); err != nil {
				return err
			}
		}
		head := h.raw
		var err error
		if h.body == sized && int64(c.br.Buffered()) >= h.length && h.length <= clientBufSize {
			// A small body already here goes out with its head, in one
			// write.
			body, _ := c.br.Peek(int(h.length))
			bufs := net.Buffers{head, body}
			_, err = bufs.WriteTo(c.e)
			if err == nil {
				_, _ = c.br.Discard(int(h.length))
				h.body = noBody
			}
		} else {
			_, err = c.e.Write(head)
		}
		if err == nil {
			return nil
		}
		c.closeEngine()
		if fresh || attempt > 0 {
			return err
		}
	}
}

func (c *conn) dialEngine() error {
	d := net.Dialer{Timeout: c.s.o.DialTimeout}
	e, err := d.Dial("unix", c.s.o.Engine)
	if err != nil {
		return err
	}
	c.e = e
	return nil
}

// sendBody forwards the request body while the response is relayed (full
// duplex: the engine may answer before it has read the body, and may read
// while it writes). The channel yields once the body is sent.
func (c *conn) sendBody(h *requestHead) <-chan error {
	done := make(chan error, 1)
	switch h.body {
	case noBody:
		done <- nil
	case sized:
		go func() { done <- copySized(c.e, c.br, h.length) }()
	case chunked:
		go func() { done <- copyChunked(c.e, c.br) }()
	}
	return done
}

// bodySent waits until the request body has been sent, and says how that
// went. Reading the client's connection for anything else (a hijacked
// stream, a tunnel) must wait for it: the body's copy reads it too.
func (c *conn) bodySent() error {
	if c.body != nil {
		c.bodyErr, c.body = <-c.body, nil
	}
	return c.bodyErr
}

// relay copies the engine's response to the client. It reports whether
// both connections may carry another exchange.
func (c *conn) relay(h *requestHead) (keep bool, err error) {
	raw, err := readHead(c.ebr, &c.elong)
	if err == nil {
		var r responseHead
		if r, err = parseResponseHead(raw, h.method); err == nil {
			return c.relayResponse(h, raw, &r)
		}
	}
	// Nothing of a final response reached the client yet: say why.
	c.answer(http.StatusBadGateway, fmt.Sprintf("prune-guard: the engine at %s broke off the response: %v", c.s.o.Engine, err), false)
	return false, fmt.Errorf("engine response: %w", err)
}

// relayResponse relays one response head and what follows it.
func (c *conn) relayResponse(h *requestHead, raw []byte, r *responseHead) (keep bool, err error) {
	if c.obs != nil && (r.status >= 200 || r.status == http.StatusSwitchingProtocols) {
		c.obs.Response(r.status)
	}
	switch {
	case r.status == http.StatusSwitchingProtocols:
		if _, err := c.c.Write(raw); err != nil {
			return false, err
		}
		return false, c.switched(h)
	case r.status < 200:
		// 100 Continue and the like: on to the final answer.
		if _, err := c.c.Write(raw); err != nil {
			return false, err
		}
		return c.relay(h)
	}
	if err := c.relayBody(raw, r); err != nil {
		return false, err
	}
	return !r.close, nil
}

// relayBody sends the response head and its body to the client, and
// tells the exchange's observer, if any, the body's content once the
// client has it.
func (c *conn) relayBody(head []byte, r *responseHead) error {
	switch r.body {
	case noBody:
		_, err := c.c.Write(head)
		return err
	case sized:
		if n := int64(c.ebr.Buffered()); n >= r.length {
			// The usual small answer: head and body in one write.
			body, _ := c.ebr.Peek(int(r.length))
			bufs := net.Buffers{head, body}
			_, err := bufs.WriteTo(c.c)
			if err == nil && c.obs != nil {
				c.obs.Body(body)
			}
			_, _ = c.ebr.Discard(int(r.length))
			return err
		}
		if _, err := c.c.Write(head); err != nil {
			return err
		}
		return copySized(c.client(), c.ebr, r.length)
	case chunked:
		if _, err := c.c.Write(head); err != nil {
			return err
		}
		return relayChunked(c.c, c.ebr, c.obs)
	default: // untilEOF: dockerd's hijack without Upgrade (attach, exec)
		if _, err := c.c.Write(head); err != nil {
			return err
		}
		return c.pipe(c.client())
	}
}

// client is where a response body goes: the client connection, through
// the observer when the exchange has one.
func (c *conn) client() io.Writer {
	if c.obs == nil {
		return c.c
	}
	return observed{c.c, c.obs}
}

// observed writes to the client, then tells the observer what the client
// got.
type observed struct {
	w   io.Writer
	obs Observer
}

func (o observed) Write(p []byte) (int, error) {
	n, err := o.w.Write(p)
	if n > 0 {
		o.obs.Body(p[:n])
	}
	return n, err
}

// answer writes a response of the proxy's own with a JSON message, as
// dockerd writes its errors.
func (c *conn) answer(status int, message string, keep bool) {
	var body bytes.Buffer
	_ = jsonMessage(&body, message)
	var b bytes.Buffer
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nDate: %s\r\nContent-Length: %s\r\n",
		status, http.StatusText(status), time.Now().UTC().Format(http.TimeFormat), strconv.Itoa(body.Len()))
	if !keep {
		b.WriteString("Connection: close\r\n")
	}
	b.WriteString("\r\n")
	b.Write(body.Bytes())
	_, _ = c.c.Write(b.Bytes())
}

// jsonMessage writes an error as dockerd does: {"message": …} with
// json.NewEncoder (HTML-escaped, with a trailing newline). Clients show the
// message as it is.
func jsonMessage(w io.Writer, msg string) error {
	return json.NewEncoder(w).Encode(struct {
		Message string `json:"message"`
	}{msg})
}

// denialText is dockerd's own wording for a request an authorization
// plugin refused (moby pkg/authorization/authz.go), so that every client
// shows a refusal the same way in both modes.
func denialText(name, msg string) string {
	return fmt.Sprintf("authorization denied by plugin %s: %s", name, msg)
}

func (c *conn) releaseEngineBuf() {
	if c.ebr == nil {
		return
	}
	if c.ebr.Buffered() > 0 {
		// The engine sent more than one response: the pairing is off.
		c.closeEngine()
	}
	c.ebr.Reset(nil)
	engineBufs.Put(c.ebr)
	c.ebr = nil
}

func (c *conn) closeClient() {
	c.closeOnce.Do(func() { c.c.Close() })
}

func (c *conn) closeEngine() {
	if c.e != nil {
		c.e.Close()
		c.e = nil
	}
}
