package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"strconv"
)

// The request head reader takes exactly the requests whose framing every Go
// net/http server reads the same way, and refuses the rest with a 400: the
// engine behind the proxy is a Go server (of several Go versions, one per
// engine release), and the proxy must never see a different request, or a
// different end of a request, than the engine does. So it accepts less than
// net/http (FuzzReadRequestHead checks that whatever it accepts, net/http
// reads alike):
//
//   - lines end in CRLF; a bare LF or CR is refused (Go accepts a bare LF);
//   - the request line is METHOD SP TARGET SP HTTP/1.1 or HTTP/1.0, with a
//     token method and a target free of controls and spaces;
//   - header names are tokens, values free of controls other than tab, and
//     no line folding (obs-fold);
//   - HTTP/1.1 has exactly one Host (its value may be empty: moby's hijack
//     dialer sends "Host: " for /grpc and /session);
//   - at most one Content-Length, of decimal digits only;
//   - at most one Transfer-Encoding, exactly "chunked", only in HTTP/1.1
//     and never beside a Content-Length (Go ignores the length then; a
//     request carrying both is ambiguous to anything else on the path).

// maxHeadBytes bounds a request or response head. dockerd's own server
// reads at most 1 MiB of request line and headers (net/http's
// DefaultMaxHeaderBytes); a longer head would be refused there too.
const maxHeadBytes = 1 << 20

// errHeadTooLarge is a head over maxHeadBytes.
var errHeadTooLarge = errors.New("request head larger than 1 MiB")

// framing is how a message's body is delimited.
type framing uint8

const (
	noBody   framing = iota // no body at all
	sized                   // Content-Length bytes
	chunked                 // Transfer-Encoding: chunked
	untilEOF                // a response that lasts until the connection closes
)

// requestHead is what the proxy reads of a request head. Its byte slices
// point into the reader's buffer and are valid until the next read.
type requestHead struct {
	raw         []byte // the whole head, blank line included
	method      []byte
	target      []byte
	http10      bool
	body        framing
	length      int64  // for sized
	contentType []byte // the first Content-Type, as the engine reads it
	hasCT       bool
	lengthRaw   []byte // the Content-Length value, trimmed
	close       bool   // the client asked to close after this request
	upgrade     bool   // Connection: upgrade with an Upgrade header
	upgradeTo   []byte // the Upgrade header's value
	// What the exchange needs once the head is forwarded, when the bytes
	// above may be gone: the client reader's buffer fills with the body
	// and what follows.
	head       bool // a HEAD request: its answer has no body
	grpcTunnel bool // BuildKit's control tunnel: POST /grpc upgraded to h2c
}

// headError is a request the proxy refuses to read, with the reason the
// client is told.
type headError struct{ why string }

func (e *headError) Error() string { return e.why }

func badHead(format string, a ...any) error { return &headError{fmt.Sprintf(format, a...)} }

// readHead consumes the next head from br, up to and including its blank
// line, and returns it. A head that fits br's buffer is returned in place
// (valid until br is read again); a longer one is gathered in *long.
func readHead(br *bufio.Reader, long *[]byte) ([]byte, error) {
	scanned := 0
	for {
		buf, _ := br.Peek(br.Buffered())
		if i := bytes.Index(buf[scanned:], crlfcrlf); i >= 0 {
			head := buf[:scanned+i+4]
			if err := checkLineEnds(head, scanned); err != nil {
				return nil, err
			}
			_, _ = br.Discard(len(head))
			return head, nil
		}
		if err := checkLineEnds(buf, scanned); err != nil {
			return nil, err
		}
		scanned = max(len(buf)-3, 0)
		if len(buf) == br.Size() {
			return readLongHead(br, long)
		}
		if _, err := br.Peek(len(buf) + 1); err != nil {
			return nil, err
		}
	}
}

// readLongHead gathers a head longer than the read buffer.
func readLongHead(br *bufio.Reader, long *[]byte) ([]byte, error) {
	b := (*long)[:0]
	for {
		if len(b) > maxHeadBytes {
			return nil, errHeadTooLarge
		}
		chunk, err := br.ReadSlice('\n')
		from := len(b)
		b = append(b, chunk...)
		*long = b
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
		if err := checkLineEnds(b, max(from-1, 0)); err != nil {
			return nil, err
		}
		if bytes.HasSuffix(b, crlfcrlf) {
			return b, nil
		}
	}
}

// checkLineEnds refuses a bare LF, or a CR not followed by LF, in b from
// index from on (b may end in the middle of a CRLF).
func checkLineEnds(b []byte, from int) error {
	for i := from; i < len(b); i++ {
		c := b[i]
		switch {
		case c == '\n' && (i == 0 || b[i-1] != '\r'):
			return badHead("a line of the head ends in a bare LF; end lines with CRLF")
		case c == '\r' && i+1 < len(b) && b[i+1] != '\n':
			return badHead("a bare CR in the head")
		}
	}
	return nil
}

var crlfcrlf = []byte("\r\n\r\n")

// parseRequestHead reads a request head (as peekHead returns it).
func parseRequestHead(raw []byte) (requestHead, error) {
	h := requestHead{raw: raw}
	line, rest, _ := bytes.Cut(raw, crlf)
	if err := h.requestLine(line); err != nil {
		return h, err
	}
	var seen headerCounts
	for {
		line, rest, _ = bytes.Cut(rest, crlf)
		if len(line) == 0 {
			break
		}
		name, value, err := splitHeader(line)
		if err != nil {
			return h, err
		}
		if err := h.header(name, value, &seen); err != nil {
			return h, err
		}
	}
	return h, h.finish(seen)
}

var crlf = []byte("\r\n")

// requestLine reads METHOD SP TARGET SP VERSION.
func (h *requestHead) requestLine(line []byte) error {
	method, rest, ok1 := bytes.Cut(line, []byte(" "))
	target, version, ok2 := bytes.Cut(rest, []byte(" "))
	if !ok1 || !ok2 {
		return badHead("malformed request line %q", clip(line))
	}
	if !isToken(method) {
		return badHead("invalid method %q", clip(method))
	}
	if string(method) == "CONNECT" {
		return badHead("CONNECT is not a Docker API method")
	}
	if len(target) == 0 || !validTarget(target) {
		return badHead("invalid request target %q", clip(target))
	}
	// net/http parses the target so, and refuses what does not parse.
	if _, err := url.ParseRequestURI(string(target)); err != nil {
		return badHead("invalid request target %q", clip(target))
	}
	switch string(version) {
	case "HTTP/1.1":
	case "HTTP/1.0":
		h.http10 = true
	default:
		return badHead("unsupported protocol %q (HTTP/1.1, HTTP/1.0, or HTTP/2 with prior knowledge)", clip(version))
	}
	h.method, h.target = method, target
	return nil
}

// headerCounts counts the headers framing depends on.
type headerCounts struct {
	host, length, te int
	connUpgrade      bool
}

// header records one header line.
func (h *requestHead) header(name, value []byte, seen *headerCounts) error {
	switch {
	case equalFold(name, "Host"):
		seen.host++
	case equalFold(name, "Content-Length"):
		seen.length++
		n, ok := parseLength(value)
		if !ok {
			return badHead("invalid Content-Length %q", clip(value))
		}
		h.length, h.lengthRaw = n, value
	case equalFold(name, "Transfer-Encoding"):
		seen.te++
		if !equalFold(value, "chunked") {
			return badHead("unsupported Transfer-Encoding %q (only chunked)", clip(value))
		}
	case equalFold(name, "Content-Type"):
		if !h.hasCT {
			h.contentType, h.hasCT = value, true
		}
	case equalFold(name, "Connection"):
		forEachToken(value, func(t []byte) {
			switch {
			case equalFold(t, "close"):
				h.close = true
			case equalFold(t, "upgrade"):
				seen.connUpgrade = true
			}
		})
	case equalFold(name, "Upgrade"):
		if h.upgradeTo == nil {
			h.upgradeTo = value
		}
	}
	return nil
}

// finish checks the headers as a whole and settles the framing.
func (h *requestHead) finish(seen headerCounts) error {
	switch {
	case !h.http10 && seen.host != 1:
		return badHead("a request must carry exactly one Host header (it has %d)", seen.host)
	case seen.host > 1:
		return badHead("too many Host headers")
	case seen.length > 1:
		return badHead("more than one Content-Length")
	case seen.te > 1:
		return badHead("more than one Transfer-Encoding")
	case seen.te == 1 && seen.length == 1:
		return badHead("both Content-Length and Transfer-Encoding: the framing is ambiguous")
	case seen.te == 1 && h.http10:
		return badHead("Transfer-Encoding in an HTTP/1.0 request")
	case seen.te == 1:
		h.body = chunked
	case seen.length == 1 && h.length > 0:
		h.body = sized
	}
	h.upgrade = seen.connUpgrade && h.upgradeTo != nil
	h.head = string(h.method) == "HEAD"
	h.grpcTunnel = h.upgradeTo != nil && equalFold(h.upgradeTo, "h2c") && isGRPCTunnel(h.target)
	// An HTTP/1.0 connection is served one request: keeping it alive would
	// take the keep-alive dance of both ends, which no Docker client needs.
	h.close = h.close || h.http10
	return nil
}

// splitHeader splits a header line into its name and its value with
// surrounding blanks trimmed, refusing what net/http would refuse and line
// folding, which some Go versions still join.
func splitHeader(line []byte) (name, value []byte, err error) {
	if line[0] == ' ' || line[0] == '\t' {
		return nil, nil, badHead("folded header line %q", clip(line))
	}
	name, value, ok := bytes.Cut(line, []byte(":"))
	if !ok || !isToken(name) {
		return nil, nil, badHead("malformed header line %q", clip(line))
	}
	value = bytes.Trim(value, " \t")
	if !validValue(value) {
		return nil, nil, badHead("invalid value of header %q", clip(name))
	}
	return name, value, nil
}

// forEachToken calls f with each comma-separated element of a list header.
func forEachToken(v []byte, f func([]byte)) {
	for len(v) > 0 {
		var t []byte
		t, v, _ = bytes.Cut(v, []byte(","))
		if t = bytes.Trim(t, " \t"); len(t) > 0 {
			f(t)
		}
	}
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

// isToken reports whether b is an HTTP token (RFC 9110 §5.6.2).
func isToken(b []byte) bool {
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

// validTarget rejects controls, spaces and DEL in a request target; net/http
// refuses a target it cannot parse later, per route, and the classifier
// treats an unparsable destructive target as unknown.
func validTarget(b []byte) bool {
	for _, c := range b {
		if c <= 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		if lower(b[i]) != lower(s[i]) {
			return false
		}
	}
	return true
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// clip shortens what a refusal quotes back.
func clip(b []byte) []byte {
	if len(b) > 80 {
		return b[:80]
	}
	return b
}

// responseHead is what the proxy reads of a response head from the engine.
type responseHead struct {
	raw    []byte
	status int
	body   framing
	length int64
	close  bool
}

// parseResponseHead reads the engine's response head to a request, a HEAD
// request if head. The engine is a Go server, so anything unusual here is a
// broken connection, not a client to humour: it is an error.
func parseResponseHead(raw []byte, head bool) (responseHead, error) {
	r := responseHead{raw: raw}
	line, rest, _ := bytes.Cut(raw, crlf)
	version, rest0, ok := bytes.Cut(line, []byte(" "))
	code, _, _ := bytes.Cut(rest0, []byte(" "))
	if !ok || (string(version) != "HTTP/1.1" && string(version) != "HTTP/1.0") || len(code) != 3 {
		return r, fmt.Errorf("malformed status line %q from the engine", clip(line))
	}
	status, err := strconv.Atoi(string(code))
	if err != nil || status < 100 {
		return r, fmt.Errorf("malformed status %q from the engine", clip(code))
	}
	r.status, r.close = status, string(version) == "HTTP/1.0"
	var lengths, tes int
	for {
		line, rest, _ = bytes.Cut(rest, crlf)
		if len(line) == 0 {
			break
		}
		name, value, err := splitHeader(line)
		if err != nil {
			return r, fmt.Errorf("engine response: %w", err)
		}
		switch {
		case equalFold(name, "Content-Length"):
			lengths++
			if r.length, ok = parseLength(value); !ok {
				return r, fmt.Errorf("engine response: invalid Content-Length %q", clip(value))
			}
		case equalFold(name, "Transfer-Encoding"):
			tes++
			if !equalFold(value, "chunked") {
				return r, fmt.Errorf("engine response: unsupported Transfer-Encoding %q", clip(value))
			}
		case equalFold(name, "Connection"):
			forEachToken(value, func(t []byte) {
				if equalFold(t, "close") {
					r.close = true
				}
			})
		}
	}
	if lengths > 1 || tes > 1 || lengths+tes > 1 {
		return r, errors.New("engine response: ambiguous framing")
	}
	switch {
	case status < 200 || status == 204 || status == 304 || head:
		r.body = noBody
	case tes == 1:
		r.body = chunked
	case lengths == 1:
		r.body = sized
		if r.length == 0 {
			r.body = noBody
		}
	default:
		r.body, r.close = untilEOF, true
	}
	return r, nil
}
