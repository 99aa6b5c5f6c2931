package proxy

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"

	"github.com/sirupsen/logrus"
	"golang.org/x/net/http2"
)

// HTTP/2 reaches the engine two ways, and the proxy terminates both, so
// that it decides every request and every gRPC call on its own, never a
// connection as a whole:
//
//   - prior knowledge on the socket (Docker 29.2 and later serve gRPC there,
//     before the router and every authorization plugin, and REST too);
//   - BuildKit's control tunnel, POST /grpc upgraded to h2c, on every engine
//     with BuildKit (buildx's docker driver: build, prune, du).
//
// Each stream is decided, then forwarded on an HTTP/2 connection of the
// proxy's own to the engine (golang.org/x/net/http2 on both sides).

// http2Preface is the client connection preface of HTTP/2 (RFC 9113 §3.4).
var http2Preface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

// hasHTTP2Preface reports whether the connection begins with HTTP/2's
// client preface. It reads no further than the first byte that differs.
func hasHTTP2Preface(br *bufio.Reader) (bool, error) {
	for n := 1; n <= len(http2Preface); n++ {
		b, err := br.Peek(n)
		if err != nil {
			return false, err
		}
		if b[n-1] != http2Preface[n-1] {
			return false, nil
		}
	}
	return true, nil
}

// maxGRPCMessage bounds the first message of a call the proxy reads to
// decide it: grpc-go's default receive limit, which the engine applies too.
const maxGRPCMessage = 4 << 20

// h2Server serves the client side of every HTTP/2 connection.
var h2Server = &http2.Server{}

// serveHTTP2 serves a connection that began with the HTTP/2 preface,
// forwarding to an HTTP/2 connection of its own to the engine.
func (c *conn) serveHTTP2() {
	f := &forwarder{c: c, redial: true}
	defer f.close()
	h2Server.ServeConn(&readerConn{Conn: c.c, r: c.br}, c.h2Opts(f))
}

// serveTunnel serves BuildKit's control tunnel after the engine switched
// it to h2c: the client speaks HTTP/2 to the proxy, the proxy to the
// engine over the same upgraded engine connection.
func (c *conn) serveTunnel() error {
	// The engine may have sent its SETTINGS right after the 101; they are
	// in the pooled reader, which goes back to its pool when this
	// exchange ends, while the HTTP/2 client reads on: copy them out.
	early, _ := c.ebr.Peek(c.ebr.Buffered())
	engine := &readerConn{Conn: c.e, r: io.MultiReader(bytes.NewReader(bytes.Clone(early)), c.e)}
	_, _ = c.ebr.Discard(len(early))
	f := &forwarder{c: c}
	cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(engine)
	if err != nil {
		return fmt.Errorf("h2c to the engine in the /grpc tunnel: %w", err)
	}
	f.cc = cc
	defer f.close()
	h2Server.ServeConn(&readerConn{Conn: c.c, r: c.br}, c.h2Opts(f))
	return nil
}

// h2Opts serves h on an HTTP/2 connection, with what the HTTP/2 library
// has to say about a connection (a client that left mid-preface, say) in
// the proxy's log at debug level rather than on standard error.
func (c *conn) h2Opts(h http.Handler) *http2.ServeConnOpts {
	return &http2.ServeConnOpts{Handler: h, BaseConfig: &http.Server{
		ErrorLog: log.New(debugWriter{c.s.o.Log}, "", 0),
	}}
}

// debugWriter writes lines to a logger at debug level.
type debugWriter struct{ l logrus.FieldLogger }

func (w debugWriter) Write(p []byte) (int, error) {
	w.l.Debug(strings.TrimSpace(string(p)))
	return len(p), nil
}

// readerConn is a connection whose reads come from r (a reader holding
// what was read ahead, then the connection).
type readerConn struct {
	net.Conn
	r io.Reader
}

func (c *readerConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// forwarder decides and forwards the streams of one client HTTP/2
// connection.
type forwarder struct {
	c      *conn
	redial bool // dial the engine again if its connection broke

	mu sync.Mutex
	cc *http2.ClientConn
}

func (f *forwarder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	req, grpc := f.request(r)
	v := f.c.s.d.Decide(r.Context(), req)
	if !v.Allow {
		f.c.s.refused.Add(1)
		if grpc {
			writeGRPCStatus(w, grpcPermissionDenied, v.Message)
		} else {
			writeJSONError(w, http.StatusForbidden, denialText(f.c.s.o.Name, v.Message))
		}
		return
	}
	if v.Observe != nil {
		f.forwardObserved(w, r, grpc, v.Observe)
		return
	}
	f.forward(w, r, grpc)
}

// forward sends an allowed stream to the engine and relays its response;
// the error says why the engine did not answer.
func (f *forwarder) forward(w http.ResponseWriter, r *http.Request, grpc bool) (upstream error) {
	cc, err := f.clientConn()
	if err != nil {
		f.unavailable(unobserved(w), grpc, err)
		return err
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host, pr.Out.Host = "http", "docker", pr.In.Host
		},
		Transport:     cc,
		FlushInterval: -1,
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			upstream = err
			f.unavailable(unobserved(w), grpc, err)
		},
	}
	rp.ServeHTTP(w, r)
	return upstream
}

// forwardObserved is forward with obs told the response, and told when
// the stream ends however it ends. ReverseProxy aborts a handler whose
// response it could not copy with a panic (http.ErrAbortHandler), which
// goes on after the observer heard of it.
func (f *forwarder) forwardObserved(w http.ResponseWriter, r *http.Request, grpc bool, obs Observer) {
	ow := &observedResponse{ResponseWriter: w, obs: obs}
	err := errRelayFailed
	defer func() {
		if p := recover(); p != nil {
			obs.Done(fmt.Errorf("the response was cut off: %v", p))
			panic(p)
		}
		obs.Done(err)
	}()
	if err = f.forward(ow, r, grpc); err != nil {
		err = fmt.Errorf("the engine does not answer: %w", err)
	} else {
		err = ow.err
	}
}

// observedResponse tells an observer what a stream's response writes:
// its status, then its body once written. ReverseProxy flushes through
// Unwrap (http.ResponseController).
type observedResponse struct {
	http.ResponseWriter
	obs    Observer
	status int
	err    error
}

func (o *observedResponse) WriteHeader(status int) {
	o.ResponseWriter.WriteHeader(status)
	if status >= 200 && o.status == 0 {
		o.status = status
		o.obs.Response(status)
	}
}

func (o *observedResponse) Write(p []byte) (int, error) {
	if o.status == 0 {
		o.WriteHeader(http.StatusOK)
	}
	n, err := o.ResponseWriter.Write(p)
	if n > 0 {
		o.obs.Body(p[:n])
	}
	if err != nil && o.err == nil {
		o.err = err
	}
	return n, err
}

func (o *observedResponse) Unwrap() http.ResponseWriter { return o.ResponseWriter }

// unobserved is where the proxy writes an answer of its own: not through
// an observer, which is told of the engine's responses only.
func unobserved(w http.ResponseWriter) http.ResponseWriter {
	if o, ok := w.(*observedResponse); ok {
		return o.ResponseWriter
	}
	return w
}

// request is the Decider's view of an HTTP/2 request. For a gRPC call
// whose decision reads the first message, it reads that message and puts
// it back in front of the body.
func (f *forwarder) request(r *http.Request) (Request, bool) {
	req := Request{Method: r.Method, URI: r.RequestURI, HTTP2: true}
	for _, name := range f.c.s.o.Headers {
		if vs := r.Header.Values(name); len(vs) > 0 {
			if req.Headers == nil {
				req.Headers = map[string]string{}
			}
			req.Headers[name] = vs[0]
		}
	}
	if !isGRPC(r.Header.Get("Content-Type")) {
		return req, false
	}
	// gRPC servers (grpc-go's ServeHTTP, which the engine uses) route on
	// the decoded path.
	req.URI = r.URL.Path
	req.GRPC = &GRPCCall{}
	if f.c.s.o.ReadsMessage != nil && f.c.s.o.ReadsMessage(req.URI) {
		req.GRPC.Message, req.GRPC.Unread = readFirstMessage(r)
	}
	return req, true
}

// isGRPC reports whether a Content-Type is gRPC's, as grpc-go tells it.
func isGRPC(ct string) bool {
	return ct == "application/grpc" || strings.HasPrefix(ct, "application/grpc+") || strings.HasPrefix(ct, "application/grpc;")
}

// readFirstMessage reads a gRPC call's first length-prefixed message from
// r's body and puts the bytes it read back in front of the rest.
func readFirstMessage(r *http.Request) (msg []byte, unread string) {
	var prefix [5]byte
	n, err := io.ReadFull(r.Body, prefix[:])
	read := prefix[:n]
	defer func() {
		r.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(read), r.Body), r.Body}
	}()
	if err != nil {
		return nil, "the call ended before its first message"
	}
	size := binary.BigEndian.Uint32(prefix[1:])
	if size > maxGRPCMessage {
		return nil, fmt.Sprintf("its first message is %d bytes, more than the %d the engine accepts", size, maxGRPCMessage)
	}
	// Grown as the message arrives, not allocated at its declared size.
	var buf bytes.Buffer
	m, err := io.CopyN(&buf, r.Body, int64(size))
	body := buf.Bytes()
	read = append(read, body...)
	if err != nil || m < int64(size) {
		return nil, "the call ended inside its first message"
	}
	if body == nil {
		body = []byte{}
	}
	switch prefix[0] {
	case 0:
		return body, ""
	case 1:
		return decompress(r.Header.Get("Grpc-Encoding"), body)
	}
	return nil, fmt.Sprintf("its first message has an invalid compressed flag %d", prefix[0])
}

// decompress undoes a message's compression, if it is gzip, the one
// encoding grpc-go and BuildKit's clients offer.
func decompress(encoding string, body []byte) ([]byte, string) {
	if encoding != "gzip" {
		return nil, fmt.Sprintf("its first message is compressed with %q, which prune-guard cannot read", encoding)
	}
	zr, err := gzip.NewReader(bytes.NewReader(body))
	if err != nil {
		return nil, "its first message is not valid gzip"
	}
	out, err := io.ReadAll(io.LimitReader(zr, maxGRPCMessage+1))
	if err != nil || len(out) > maxGRPCMessage {
		return nil, "its first message does not decompress within the engine's limit"
	}
	return out, ""
}

// clientConn returns the HTTP/2 connection to the engine, dialing a new
// one if there is none or it broke and this forwarder may.
func (f *forwarder) clientConn() (*http2.ClientConn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cc != nil && (f.cc.CanTakeNewRequest() || !f.redial) {
		return f.cc, nil
	}
	if !f.redial {
		return nil, errors.New("the engine's /grpc tunnel is closed")
	}
	if f.cc != nil {
		f.cc.Close()
	}
	d := net.Dialer{Timeout: f.c.s.o.DialTimeout}
	e, err := d.DialContext(context.Background(), "unix", f.c.s.o.Engine)
	if err != nil {
		return nil, err
	}
	cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(e)
	if err != nil {
		e.Close()
		return nil, err
	}
	f.cc = cc
	return cc, nil
}

func (f *forwarder) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cc != nil {
		f.cc.Close()
	}
}

// unavailable answers a request the engine did not.
func (f *forwarder) unavailable(w http.ResponseWriter, grpc bool, err error) {
	msg := fmt.Sprintf("prune-guard: the engine at %s does not answer: %v", f.c.s.o.Engine, err)
	if grpc {
		writeGRPCStatus(w, grpcUnavailable, msg)
		return
	}
	writeJSONError(w, http.StatusBadGateway, msg)
}

// gRPC status codes (google.golang.org/grpc/codes).
const (
	grpcPermissionDenied = 7
	grpcUnavailable      = 14
)

// writeGRPCStatus ends a call with a status and message and no response
// message (gRPC's Trailers-Only form), which every gRPC client reports as
// the call's error.
func writeGRPCStatus(w http.ResponseWriter, code int, msg string) {
	h := w.Header()
	h.Set("Content-Type", "application/grpc")
	h.Set("Grpc-Status", fmt.Sprint(code))
	h.Set("Grpc-Message", encodeGRPCMessage(msg))
	w.WriteHeader(http.StatusOK)
}

// encodeGRPCMessage percent-encodes a status message as gRPC's HTTP/2
// mapping asks: every byte outside printable ASCII, and '%'.
func encodeGRPCMessage(msg string) string {
	var b strings.Builder
	for i := range len(msg) {
		c := msg[i]
		if c >= 0x20 && c <= 0x7e && c != '%' {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}

// writeJSONError answers as dockerd answers an error.
func writeJSONError(w http.ResponseWriter, status int, msg string) {
	var body bytes.Buffer
	_ = jsonMessage(&body, msg)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body.Bytes())
}
