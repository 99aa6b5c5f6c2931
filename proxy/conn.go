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
	"os"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
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

	// e is the engine connection paired with c; nil until needed. Only
	// c's own goroutine sets it, under emu, so that cutOff may read it
	// from another.
	e     net.Conn
	emu   sync.Mutex
	ebr   *bufio.Reader // e's reader (through er), during an exchange
	er    engineReader
	elong []byte
	watch clientWatch // the exchange's
	obs   Observer    // the exchange's observer, if its verdict has one

	closeOnce sync.Once
}

func newConn(s *Server, nc net.Conn) *conn {
	c := &conn{s: s, c: nc, br: bufio.NewReaderSize(nc, clientBufSize)}
	c.er.c = c
	return c
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
	req := c.request(&h)
	v := c.s.d.Decide(context.Background(), req)
	if !v.Allow {
		c.s.refused.Add(1)
		// A body that was not read cannot be skipped safely: close.
		keep = !h.close && h.body == noBody
		c.answer(h.head, http.StatusForbidden, denialText(c.s.o.Name, v.Message), keep)
		return keep
	}
	if v.Observe != nil {
		return c.observe(&h, &req, v.Observe)
	}
	return c.forward(&h, &req)
}

// errRelayFailed is what an observer is told when relaying failed
// unexpectedly (a panic, which costs the connection).
var errRelayFailed = errors.New("the proxy failed while relaying the response")

// observe forwards an allowed request whose verdict observes the
// response, and tells the observer when the exchange ends, however it
// ends.
func (c *conn) observe(h *requestHead, req *Request, obs Observer) (keep bool) {
	c.obs = obs
	err := errRelayFailed
	defer func() {
		c.obs = nil
		obs.Done(err)
	}()
	keep, err = c.forwardObserved(h, req)
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
	r := Request{Method: string(h.method), URI: string(h.target)}
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
		c.answer(false, http.StatusBadRequest, "prune-guard: malformed request refused: "+he.why, false)
	case errors.Is(err, errHeadTooLarge):
		c.answer(false, http.StatusRequestHeaderFieldsTooLarge, "prune-guard: "+err.Error(), false)
	}
	// Anything else is the connection failing: nobody to answer.
}

// forward sends an allowed request to the engine and relays its response.
// Once the head is sent, h's byte slices are not to be read: the client
// reader's buffer, which they point into, fills with the body and the
// client's next bytes.
func (c *conn) forward(h *requestHead, req *Request) bool {
	keep, _ := c.forwardObserved(h, req)
	return keep
}

// forwardObserved is forward, also saying why the exchange ended early.
func (c *conn) forwardObserved(h *requestHead, req *Request) (bool, error) {
	if err := c.sendHead(h); err != nil {
		keep := !h.close && h.body == noBody
		c.answer(h.head, http.StatusBadGateway, fmt.Sprintf("prune-guard: the engine at %s does not answer: %v", c.s.o.Engine, err), keep)
		return keep, fmt.Errorf("the engine does not answer: %w", err)
	}
	c.ebr = engineBufs.Get().(*bufio.Reader)
	c.ebr.Reset(&c.er)
	defer c.releaseEngineBuf()

	w := c.watchClient(c.sendBody(h))
	keep, err := c.relay(h, w)
	bodyErr, gone := w.stop()
	if bodyErr != nil || gone {
		keep = false
		if err == nil {
			err = bodyErr
		}
	}
	if err != nil {
		c.s.o.Log.WithError(err).WithField("request", req.Method+" "+string(clip([]byte(req.URI)))).Debug("exchange ended early")
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
	c.emu.Lock()
	c.e = e
	c.emu.Unlock()
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

// relay copies the engine's response to the client. It reports whether
// both connections may carry another exchange.
func (c *conn) relay(h *requestHead, w *clientWatch) (keep bool, err error) {
	raw, err := readHead(c.ebr, &c.elong)
	if err == nil {
		var r responseHead
		if r, err = parseResponseHead(raw, h.head); err == nil {
			return c.relayResponse(h, raw, &r, w)
		}
	}
	// Nothing of a final response reached the client yet: say why.
	c.answer(h.head, http.StatusBadGateway, fmt.Sprintf("prune-guard: the engine at %s broke off the response: %v", c.s.o.Engine, err), false)
	return false, fmt.Errorf("engine response: %w", err)
}

// relayResponse relays one response head and what follows it.
func (c *conn) relayResponse(h *requestHead, raw []byte, r *responseHead, w *clientWatch) (keep bool, err error) {
	if c.obs != nil && (r.status >= 200 || r.status == http.StatusSwitchingProtocols) {
		c.obs.Response(r.status)
	}
	switch {
	case r.status == http.StatusSwitchingProtocols:
		if _, err := c.c.Write(raw); err != nil {
			return false, err
		}
		// From here on the client's bytes are the engine's, not a
		// request: the watch ends.
		if bodyErr, _ := w.stop(); bodyErr != nil {
			return false, bodyErr
		}
		return false, c.switched(h)
	case r.status < 200:
		// 100 Continue and the like: on to the final answer.
		if _, err := c.c.Write(raw); err != nil {
			return false, err
		}
		return c.relay(h, w)
	}
	if r.body == untilEOF {
		if bodyErr, _ := w.stop(); bodyErr != nil {
			return false, bodyErr
		}
	}
	if err := c.relayBody(raw, r); err != nil {
		return false, err
	}
	return !r.close, nil
}

// clientWatch notices a client that leaves while the proxy waits on the
// engine for its answer. Once the request's body is sent it waits for the
// client's next byte: a byte is a pipelined request, left for the next
// exchange; the client's end (EOF, or its connection failing) is passed on
// to the engine as a half-close, as dockerd would see it without the
// proxy. Its request context ends, and a stream with nothing to send
// (events, logs -f of a quiet container, wait) ends with it instead of
// holding both connections until the engine writes again, which may be
// never. A body the client broke off is passed on the same way.
//
// The watch costs a goroutine, so it starts only when the engine has kept
// the exchange waiting for watchAfter (engineReader): nearly every exchange
// is over sooner.
type clientWatch struct {
	c     *conn
	sentc <-chan error // the body's copy, as sendBody returns it

	started, stopped bool          // touched by the exchange's goroutine only
	sent             chan struct{} // closed once the body is sent, or failed
	done             chan struct{} // closed once the watch is over
	stopping         atomic.Bool
	bodyErr          error // valid once sent is closed
	gone             bool  // valid once done is closed
}

// watchAfter is how long an exchange may wait on the engine before the
// client is watched for its end.
const watchAfter = 50 * time.Millisecond

// watchClient prepares c's watch for the exchange whose body sendBody is
// copying, and arms it.
func (c *conn) watchClient(sent <-chan error) *clientWatch {
	c.watch = clientWatch{c: c, sentc: sent}
	_ = c.e.SetReadDeadline(time.Now().Add(watchAfter))
	return &c.watch
}

// start starts the watch, unless it has started or stopped.
func (w *clientWatch) start() {
	if w.started || w.stopped {
		return
	}
	w.started = true
	w.sent, w.done = make(chan struct{}), make(chan struct{})
	c := w.c
	go func() {
		defer close(w.done)
		w.bodyErr = <-w.sentc
		close(w.sent)
		if w.bodyErr != nil {
			c.halfCloseEngine()
			return
		}
		if _, err := c.br.Peek(1); err != nil && !w.stopping.Load() {
			w.gone = true
			c.halfCloseEngine()
		}
	}()
}

// stop disarms the watch, waits for the request's body to be sent, ends
// the wait for the client's next byte and reports the body's error and
// whether the client left. Only the exchange's own goroutine calls it;
// calls after the first report the same.
func (w *clientWatch) stop() (bodyErr error, gone bool) {
	if w.stopped {
		return w.bodyErr, w.gone
	}
	w.stopped = true
	_ = w.c.e.SetReadDeadline(time.Time{})
	if !w.started {
		w.bodyErr = <-w.sentc
		return w.bodyErr, false
	}
	<-w.sent
	w.stopping.Store(true)
	// A read deadline in the past ends a pending Peek; the bufio reader
	// keeps no error from it (net/http ends its background read the same
	// way).
	_ = w.c.c.SetReadDeadline(aLongTimeAgo)
	<-w.done
	_ = w.c.c.SetReadDeadline(time.Time{})
	return w.bodyErr, w.gone
}

// engineReader reads the engine connection during an exchange. When the
// watch's deadline passes it starts the watch and reads on.
type engineReader struct{ c *conn }

func (r *engineReader) Read(p []byte) (int, error) {
	c := r.c
	for {
		n, err := c.e.Read(p)
		if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) || c.watch.stopped {
			return n, err
		}
		_ = c.e.SetReadDeadline(time.Time{})
		c.watch.start()
		if n > 0 {
			return n, nil
		}
	}
}

// aLongTimeAgo is a deadline that has passed.
var aLongTimeAgo = time.Unix(1, 0)

// halfCloseEngine ends the engine connection's write side, so that the
// engine reads the end of what the client sent.
func (c *conn) halfCloseEngine() {
	c.emu.Lock()
	defer c.emu.Unlock()
	if c.e == nil {
		return
	}
	if cw, ok := c.e.(closeWriter); ok {
		_ = cw.CloseWrite()
		return
	}
	c.e.Close()
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
// dockerd writes its errors. The answer to a HEAD request (head) has the
// head alone, as net/http answers HEAD: its Content-Length is the body's
// that a GET would get.
func (c *conn) answer(head bool, status int, message string, keep bool) {
	var body bytes.Buffer
	_ = jsonMessage(&body, message)
	var b bytes.Buffer
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nDate: %s\r\nContent-Length: %s\r\n",
		status, http.StatusText(status), time.Now().UTC().Format(http.TimeFormat), strconv.Itoa(body.Len()))
	if !keep {
		b.WriteString("Connection: close\r\n")
	}
	b.WriteString("\r\n")
	if !head {
		b.Write(body.Bytes())
	}
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
	c.emu.Lock()
	defer c.emu.Unlock()
	if c.e != nil {
		c.e.Close()
		c.e = nil
	}
}

// cutOff closes both of the connection's ends, from any goroutine: an
// exchange that waits on the engine (a quiet stream, an attach) ends too.
func (c *conn) cutOff() {
	c.closeClient()
	c.emu.Lock()
	defer c.emu.Unlock()
	if c.e != nil {
		c.e.Close()
	}
}
