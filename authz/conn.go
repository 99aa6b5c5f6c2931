package authz

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
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/docker/go-plugins-helpers/authorization"
	"github.com/docker/go-plugins-helpers/sdk"
	"github.com/sirupsen/logrus"
)

// The lean server answers the two calls dockerd makes on every API call,
// POST /AuthZPlugin.AuthZReq and POST /AuthZPlugin.AuthZRes, on its own
// HTTP/1.1 connection loop, and hands any connection carrying anything else
// to net/http, which then serves that connection for the rest of its life.
//
// dockerd's plugin client (moby pkg/plugins) sends exactly one shape: a
// keep-alive POST of Content-Length-framed JSON from Go's http.Client, with
// Host, User-Agent, Content-Length, Accept and Accept-Encoding headers. The
// loop takes only requests it fully understands: the two paths, HTTP/1.1, a
// single Content-Length, a Host, no Transfer-Encoding, no Expect, no
// Upgrade, a Connection header of "close" or "keep-alive" if any, and
// header lines net/http would accept as they are. Anything else (GET
// /status, /metrics, Plugin.Activate, chunked or 100-continue calls,
// HTTP/1.0, unknown paths, bad requests) goes to net/http unread, so it
// behaves exactly as before.
//
// It keeps the server's invariants: an idle kept connection is never closed
// by the plugin (no idle timeout); a call's head and body are bounded in
// time (callReadTimeout) only while the plugin waits for them; ConnPerCall
// answers every call with "Connection: close"; shutdown closes idle
// connections and lets calls in flight finish.

// readBufSize is a connection's read buffer: dockerd's AuthZReq calls fit
// in one, and larger ones stream through it.
const readBufSize = 16 << 10

// maxHead bounds the request line and headers the lean loop reads; a
// longer head goes to net/http. dockerd's is about 200 bytes.
const maxHead = 4 << 10

type callPath int

const (
	pathAuthZReq callPath = iota + 1
	pathAuthZRes
)

// leanServer is one Serve of the protocol handler.
type leanServer struct {
	h        *handler
	log      logrus.FieldLogger
	perCall  bool
	fallback *http.Server
	handoff  *handoffListener

	shutting atomic.Bool
	mu       sync.Mutex
	conns    map[*leanConn]bool // value: idle
	wg       sync.WaitGroup
}

// leanConn is one connection on the lean loop.
type leanConn struct {
	c    net.Conn
	br   *bufio.Reader
	dec  decoder
	out  []byte
	date []byte
	sec  int64
}

func serveLean(ctx context.Context, l net.Listener, h *handler, o Options) error {
	s := &leanServer{
		h:       h,
		log:     o.Log,
		perCall: o.ConnPerCall,
		fallback: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 10 * time.Second,
			// No ReadTimeout or IdleTimeout: either would make the
			// server close idle connections dockerd may be about to
			// reuse.
		},
		handoff: newHandoffListener(l.Addr()),
		conns:   map[*leanConn]bool{},
	}
	if o.ConnPerCall {
		s.fallback.SetKeepAlivesEnabled(false)
	}
	go func() { _ = s.fallback.Serve(s.handoff) }()

	errc := make(chan error, 1)
	go func() { errc <- s.accept(l) }()
	select {
	case err := <-errc:
		s.handoff.Close()
		s.fallback.Close()
		s.closeAll()
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	l.Close()
	<-errc
	return s.drain(o.Drain)
}

// accept runs the accept loop until l fails for good, retrying on
// temporary errors (out of file descriptors) as net/http does.
func (s *leanServer) accept(l net.Listener) error {
	var delay time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if s.shutting.Load() || errors.Is(err, net.ErrClosed) {
				return err
			}
			var te interface{ Temporary() bool }
			if errors.As(err, &te) && te.Temporary() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		lc := &leanConn{c: c, br: bufio.NewReaderSize(c, readBufSize), dec: decoder{keep: s.h.headers}}
		s.mu.Lock()
		if s.shutting.Load() {
			s.mu.Unlock()
			c.Close()
			continue
		}
		s.conns[lc] = true
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serve(lc)
	}
}

// drain closes idle connections, lets calls in flight finish within d, and
// shuts net/http's connections down the same way.
func (s *leanServer) drain(d time.Duration) error {
	s.mu.Lock()
	s.shutting.Store(true)
	for lc, idle := range s.conns {
		if idle {
			lc.c.Close()
		}
	}
	s.mu.Unlock()
	s.handoff.Close()

	sctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	fallbackErr := make(chan error, 1)
	go func() { fallbackErr <- s.fallback.Shutdown(sctx) }()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-sctx.Done():
		s.closeAll()
		err = sctx.Err()
	}
	if ferr := <-fallbackErr; err == nil {
		err = ferr
	}
	if err != nil {
		return fmt.Errorf("drain in-flight calls: %w", err)
	}
	return nil
}

func (s *leanServer) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for lc := range s.conns {
		lc.c.Close()
	}
}

// setIdle records whether lc waits for a call; it returns false when the
// server is shutting down, so an idle connection is closed instead.
func (s *leanServer) setIdle(lc *leanConn, idle bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.conns[lc]; !ok {
		return false
	}
	if idle && s.shutting.Load() {
		return false
	}
	s.conns[lc] = idle
	return true
}

func (s *leanServer) forget(lc *leanConn) {
	s.mu.Lock()
	delete(s.conns, lc)
	s.mu.Unlock()
	s.wg.Done()
}

// serve runs one connection's call loop.
func (s *leanServer) serve(lc *leanConn) {
	handedOff := false
	defer func() {
		// Deciding recovers its own panics; this is for the protocol
		// code, so that a bug there costs a connection, not the plugin.
		if p := recover(); p != nil {
			s.log.WithField("panic", fmt.Sprint(p)).Error("panic while serving a plugin connection; closed it")
		}
		if !handedOff {
			lc.c.Close()
		}
		s.forget(lc)
	}()
	for {
		// Idle: wait for the next call with no deadline at all. The
		// plugin must never close a kept connection dockerd may be
		// about to use (DECISIONS.md, 2026-11-26).
		if _, err := lc.br.Peek(1); err != nil {
			return
		}
		if !s.setIdle(lc, false) {
			return
		}
		keep, handoff := s.call(lc)
		if handoff {
			if s.handoff.give(&bufferedConn{Conn: lc.c, r: lc.br}) {
				handedOff = true
			}
			return
		}
		if !keep || !s.setIdle(lc, true) {
			return
		}
	}
}

// call answers one call, or reports that net/http should have the
// connection (nothing of the call consumed).
func (s *leanServer) call(lc *leanConn) (keep, handoff bool) {
	deadline := false
	waitFor := func(n int) {
		// Bound the wait only when the call is not all here yet: a
		// deadline costs a timer, and most calls arrive in one read.
		if !deadline && lc.br.Buffered() < n {
			_ = lc.c.SetReadDeadline(time.Now().Add(callReadTimeout))
			deadline = true
		}
	}
	defer func() {
		if deadline && keep {
			_ = lc.c.SetReadDeadline(time.Time{})
		}
	}()

	h, ok, err := readHead(lc.br, waitFor)
	if err != nil {
		return false, false
	}
	if !ok {
		return false, true
	}
	_, _ = lc.br.Discard(h.size)
	keep = !h.close && !s.perCall && !s.shutting.Load()
	waitFor(int(min(h.length, readBufSize)))

	if h.path == pathAuthZRes {
		// The response phase is always allowed: nothing to decode.
		if _, err := discard(lc.br, h.length); err != nil {
			return false, false
		}
		keep = keep && !s.shutting.Load()
		err := lc.write(allowBody, keep)
		return keep && err == nil, false
	}

	if h.length > maxCallSize {
		// More than dockerd can send: read past it without keeping it,
		// so the answer is not lost to a reset, then close.
		if _, err := discard(lc.br, h.length); err != nil {
			return false, false
		}
		_ = lc.write(denyBody(fmt.Errorf("decode call: the call is %d bytes, more than the %d dockerd can send", h.length, maxCallSize)), false)
		return false, false
	}
	req, derr := lc.dec.decode(lc.br, h.length)
	if _, err := discard(lc.br, lc.dec.r.n); err != nil || isReadError(derr) {
		// The call did not arrive whole: answer if we can, and close.
		keep = false
		if derr == nil {
			derr = fmt.Errorf("read call: %w", err)
		}
	}
	var body []byte
	if derr != nil {
		body = denyBody(fmt.Errorf("decode call: %w", derr))
	} else {
		// Not the serving context: a call in flight when shutdown
		// starts is still decided (Options.Drain bounds it).
		body = s.h.respond(context.Background(), req)
	}
	keep = keep && !s.shutting.Load() // shutdown may have begun while it was read
	werr := lc.write(body, keep)
	return keep && werr == nil, false
}

// isReadError tells a connection failure from a call that decoded badly.
func isReadError(err error) bool {
	if err == nil {
		return false
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, net.ErrClosed)
}

// discard skips n bytes of the stream through the read buffer.
func discard(br *bufio.Reader, n int64) (int64, error) {
	var done int64
	for done < n {
		k, err := br.Discard(int(min(n-done, 1<<30)))
		done += int64(k)
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

var allowBody = []byte("{\"Allow\":true}\n")

// denyBody is the JSON answer denying a malformed call.
func denyBody(err error) []byte {
	b, _ := json.Marshal(authorization.Response{Allow: false,
		Msg: "prune-guard: malformed authorization call refused: " + err.Error()})
	return append(b, '\n')
}

// respond decides a decoded AuthZReq call and encodes the answer; a read
// that passes costs no encoding at all.
func (h *handler) respond(ctx context.Context, req Request) []byte {
	resp := h.d.Decide(ctx, req)
	if resp == (authorization.Response{Allow: true}) {
		return allowBody
	}
	b, _ := json.Marshal(resp)
	return append(b, '\n')
}

// write sends one 200 answer carrying body.
func (lc *leanConn) write(body []byte, keep bool) error {
	now := time.Now()
	if s := now.Unix(); s != lc.sec || lc.date == nil {
		lc.sec = s
		lc.date = now.UTC().AppendFormat(lc.date[:0], http.TimeFormat)
	}
	b := append(lc.out[:0], "HTTP/1.1 200 OK\r\nContent-Type: "+sdk.DefaultContentTypeV1_1+"\r\nDate: "...)
	b = append(b, lc.date...)
	b = append(b, "\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	if !keep {
		b = append(b, "\r\nConnection: close"...)
	}
	b = append(b, "\r\n\r\n"...)
	b = append(b, body...)
	lc.out = b[:0]
	if cap(lc.out) > 64<<10 {
		lc.out = nil
	}
	_, err := lc.c.Write(b)
	return err
}

// head is what the lean loop needs of a request head.
type head struct {
	size   int // bytes of request line and headers, blank line included
	path   callPath
	length int64
	close  bool
}

// readHead peeks at the next request's head. ok is false when the request
// is not one the lean loop takes; nothing is consumed either way.
func readHead(br *bufio.Reader, waitFor func(int)) (h head, ok bool, err error) {
	var buf []byte
	for {
		buf, _ = br.Peek(br.Buffered())
		if i := bytes.Index(buf, []byte("\r\n\r\n")); i >= 0 {
			buf = buf[:i+4]
			break
		}
		if len(buf) >= maxHead || bareLF(buf) {
			return h, false, nil
		}
		waitFor(len(buf) + 1)
		if _, err := br.Peek(len(buf) + 1); err != nil {
			return h, false, err
		}
	}
	h.size = len(buf)
	line, rest, _ := bytes.Cut(buf, []byte("\r\n"))
	switch string(line) {
	case "POST /" + authorization.AuthZApiRequest + " HTTP/1.1":
		h.path = pathAuthZReq
	case "POST /" + authorization.AuthZApiResponse + " HTTP/1.1":
		h.path = pathAuthZRes
	default:
		return h, false, nil
	}
	var haveLength, haveHost bool
	for {
		line, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		if len(line) == 0 {
			break
		}
		name, value, found := bytes.Cut(line, []byte(":"))
		if !found || !validName(name) || !validValue(value) {
			return h, false, nil
		}
		value = bytes.Trim(value, " \t")
		switch {
		case asciiEqualFold(name, "Content-Length"):
			n, ok := parseLength(value)
			if haveLength || !ok {
				return h, false, nil
			}
			h.length, haveLength = n, true
		case asciiEqualFold(name, "Host"):
			if haveHost {
				return h, false, nil
			}
			haveHost = true
		case asciiEqualFold(name, "Connection"):
			switch {
			case asciiEqualFold(value, "close"):
				h.close = true
			case asciiEqualFold(value, "keep-alive"):
			default:
				return h, false, nil
			}
		case asciiEqualFold(name, "Transfer-Encoding"), asciiEqualFold(name, "Expect"),
			asciiEqualFold(name, "Upgrade"), asciiEqualFold(name, "Trailer"):
			return h, false, nil
		}
	}
	return h, haveLength && haveHost, nil
}

// bareLF reports a line ended by a bare LF, which net/http accepts and the
// lean loop leaves to it.
func bareLF(b []byte) bool {
	for i, c := range b {
		if c == '\n' && (i == 0 || b[i-1] != '\r') {
			return true
		}
	}
	return false
}

// parseLength reads a Content-Length as net/http does: decimal digits only.
func parseLength(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// asciiEqualFold reports whether b and s are equal under ASCII case folding.
func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		if upperASCII(b[i]) != upperASCII(s[i]) {
			return false
		}
	}
	return true
}

// validName reports whether b is an HTTP token (RFC 9110 §5.6.2).
func validName(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if c >= 0x80 || !tokenByte[c] {
			return false
		}
	}
	return true
}

var tokenByte = func() (t [128]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// validValue rejects control characters other than tab, as net/http does.
func validValue(b []byte) bool {
	for _, c := range b {
		if c < 0x20 && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// bufferedConn is a connection handed to net/http with what the lean loop
// has already read from it.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// handoffListener feeds connections the lean loop gives up to net/http.
type handoffListener struct {
	addr   net.Addr
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newHandoffListener(addr net.Addr) *handoffListener {
	return &handoffListener{addr: addr, conns: make(chan net.Conn), closed: make(chan struct{})}
}

// give hands c over; false if the listener is closed (c is then the
// caller's to close).
func (l *handoffListener) give(c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.closed:
		return false
	}
}

func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *handoffListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *handoffListener) Addr() net.Addr { return l.addr }

var _ io.Reader = (*bufferedConn)(nil)

func upperASCII(c byte) byte {
	if 'a' <= c && c <= 'z' {
		c -= 'a' - 'A'
	}
	return c
}
