package authz

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// The call decoder reads an AuthZReq call's JSON as a stream and keeps only
// what a decision reads: the method, the URI, the user, the Content-Type and
// Content-Length headers and whether a body was forwarded. Everything else,
// above all the base64 body, is checked and skipped as it streams past, so
// memory does not grow with the call and nothing is allocated for a read.
//
// It accepts a subset of what encoding/json accepts into
// authorization.Request and, where it accepts, yields the same values
// (FuzzDecodeCall checks both): strings are unescaped the same way
// (surrogate pairs, U+FFFD for invalid UTF-8 and lone surrogates), unknown
// members are skipped, and a field of the wrong type is an error. It
// refuses more than encoding/json where dockerd never reaches: a field name
// that matches only by encoding/json's case folding or that names a field
// a second time (dockerd encodes its own struct, so each name comes once and
// exactly), an unknown member name that is not ASCII, escapes inside
// base64, arrays as []byte, nesting deeper than maxDepth, and strings longer
// than maxString. Refusing is always safe: the call is denied.

// maxString bounds one decoded string we keep (URI, method, user, a header
// name or value). dockerd's own server reads at most 1 MiB of request line
// and headers (net/http's DefaultMaxHeaderBytes, plus 4 KiB of slack), so no
// string of a real call is longer.
const maxString = 1<<20 + 4<<10

// maxDepth bounds the nesting of values the decoder skips; dockerd's calls
// nest three deep.
const maxDepth = 1000

// field names the members of authorization.Request, by their JSON names.
type field int

const (
	fUnknown field = iota
	fUser
	fUserAuthNMethod
	fRequestMethod
	fRequestURI
	fRequestBody
	fRequestHeaders
	fRequestPeerCertificates
	fResponseStatusCode
	fResponseBody
	fResponseHeaders
)

var fieldNames = [...]string{
	fUser:                    "User",
	fUserAuthNMethod:         "UserAuthNMethod",
	fRequestMethod:           "RequestMethod",
	fRequestURI:              "RequestUri",
	fRequestBody:             "RequestBody",
	fRequestHeaders:          "RequestHeaders",
	fRequestPeerCertificates: "RequestPeerCertificates",
	fResponseStatusCode:      "ResponseStatusCode",
	fResponseBody:            "ResponseBody",
	fResponseHeaders:         "ResponseHeaders",
}

// decoder decodes calls; one per connection, reused, so that its buffers
// are allocated once.
type decoder struct {
	keep    []string // the request headers to keep (Options.Headers)
	r       callReader
	key     []byte // the object key being matched
	val     []byte // a string value being kept
	headers []header
}

type header struct{ name, value string }

// callReader reads one call's bytes from a bufio.Reader: n bytes
// (Content-Length), or to EOF when n < 0.
type callReader struct {
	br *bufio.Reader
	n  int64
}

var errTruncated = io.ErrUnexpectedEOF

// chunk returns the call's bytes already buffered, reading more if there
// are none; at the end of the call it returns errTruncated.
func (r *callReader) chunk() ([]byte, error) {
	if r.n == 0 {
		return nil, errTruncated
	}
	if r.br.Buffered() == 0 {
		if _, err := r.br.Peek(1); err != nil {
			if errors.Is(err, io.EOF) {
				return nil, errTruncated
			}
			return nil, err
		}
	}
	b, _ := r.br.Peek(r.br.Buffered())
	if r.n > 0 && int64(len(b)) > r.n {
		b = b[:r.n]
	}
	return b, nil
}

// peek returns up to k of the next bytes (fewer at the end of the call).
func (r *callReader) peek(k int) []byte {
	if r.n >= 0 && int64(k) > r.n {
		k = int(r.n)
	}
	b, _ := r.br.Peek(k)
	return b
}

func (r *callReader) skip(k int) {
	_, _ = r.br.Discard(k) // k bytes are buffered
	if r.n > 0 {
		r.n -= int64(k)
	}
}

func (r *callReader) byte() (byte, error) {
	b, err := r.chunk()
	if err != nil {
		return 0, err
	}
	r.skip(1)
	return b[0], nil
}

// nonSpace returns the next byte that is not JSON white space.
func (r *callReader) nonSpace() (byte, error) {
	for {
		b, err := r.chunk()
		if err != nil {
			return 0, err
		}
		for i, c := range b {
			if !isSpace(c) {
				r.skip(i + 1)
				return c, nil
			}
		}
		r.skip(len(b))
	}
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func syntaxError(format string, a ...any) error {
	return fmt.Errorf("invalid JSON: "+format, a...)
}

// decode reads one AuthZReq call from br (n bytes, or to EOF for n < 0).
// The Request it returns shares nothing with d.
func (d *decoder) decode(br *bufio.Reader, n int64) (Request, error) {
	d.r = callReader{br: br, n: n}
	d.headers = d.headers[:0]
	var req Request
	c, err := d.r.nonSpace()
	if err != nil {
		if errors.Is(err, errTruncated) {
			return req, io.EOF // an empty call, as encoding/json says it
		}
		return req, err
	}
	if c != '{' {
		return req, syntaxError("the call is not a JSON object")
	}
	if err := d.object(&req); err != nil {
		return req, err
	}
	switch c, err := d.r.nonSpace(); {
	case err == nil:
		return req, fmt.Errorf("trailing data after the request object (%q)", c)
	case !errors.Is(err, errTruncated):
		return req, err
	}
	// A decision only looks headers up, so an empty map and none are the
	// same to it; the map is made only when it holds something.
	if len(d.headers) > 0 {
		req.Headers = make(map[string]string, len(d.headers))
		for _, h := range d.headers {
			req.Headers[h.name] = h.value
		}
	}
	// Long strings would otherwise stay with the connection.
	if cap(d.key) > 64<<10 {
		d.key = nil
	}
	if cap(d.val) > 64<<10 {
		d.val = nil
	}
	return req, nil
}

// object decodes the call's members; the '{' has been read.
func (d *decoder) object(req *Request) error {
	var seen [len(fieldNames)]bool
	return d.members(func() error {
		f, err := matchField(d.key)
		if err != nil {
			return err
		}
		if f != fUnknown {
			if seen[f] {
				return fmt.Errorf("field %s appears twice; dockerd sends each field once", d.key)
			}
			seen[f] = true
		}
		switch f {
		case fUser:
			return d.stringField(&req.User, false)
		case fUserAuthNMethod:
			var authn string // no decision reads it
			return d.stringField(&authn, false)
		case fRequestMethod:
			return d.stringField(&req.Method, true)
		case fRequestURI:
			return d.stringField(&req.URI, false)
		case fRequestBody:
			return d.bytesField(&req.BodyForwarded)
		case fRequestHeaders:
			return d.headersField(true)
		case fResponseStatusCode:
			return d.intField()
		case fResponseBody:
			var present bool
			return d.bytesField(&present)
		case fResponseHeaders:
			return d.headersField(false)
		default: // fRequestPeerCertificates (no decision reads them) and unknown names
			c, err := d.r.nonSpace()
			if err != nil {
				return err
			}
			return d.skipValue(c, 0)
		}
	})
}

// members reads an object's members up to its '}', the '{' read, leaving
// each key in d.key and calling value to read its value.
func (d *decoder) members(value func() error) error {
	c, err := d.r.nonSpace()
	if err != nil {
		return err
	}
	if c == '}' {
		return nil
	}
	for {
		if c != '"' {
			return syntaxError("object key is not a string")
		}
		d.key = d.key[:0]
		if err := d.str(&d.key); err != nil {
			return err
		}
		if c, err = d.r.nonSpace(); err != nil {
			return err
		}
		if c != ':' {
			return syntaxError("missing ':' after object key")
		}
		if err := value(); err != nil {
			return err
		}
		if c, err = d.r.nonSpace(); err != nil {
			return err
		}
		switch c {
		case '}':
			return nil
		case ',':
			if c, err = d.r.nonSpace(); err != nil {
				return err
			}
		default:
			return syntaxError("missing ',' or '}' after object member")
		}
	}
}

// matchField finds the field a key names exactly. A key encoding/json
// would match only by its case folding (ASCII case, or a non-ASCII rune such
// as 'ſ' folding to 'S') is refused: dockerd never sends one. Any other key
// is an unknown member, skipped as encoding/json skips it.
func matchField(key []byte) (field, error) {
	for f, name := range fieldNames {
		if f != int(fUnknown) && string(key) == name {
			return field(f), nil
		}
	}
	for _, c := range key {
		if c >= utf8.RuneSelf {
			return fUnknown, fmt.Errorf("member name %q is not ASCII; dockerd sends only its own field names", key)
		}
	}
	for f, name := range fieldNames {
		if f != int(fUnknown) && asciiEqualFold(key, name) {
			return fUnknown, fmt.Errorf("member name %q is not dockerd's %q", key, name)
		}
	}
	return fUnknown, nil
}

// stringField decodes a string or null into *s. Known methods are interned
// so that deciding a read allocates nothing for them.
func (d *decoder) stringField(s *string, method bool) error {
	c, err := d.r.nonSpace()
	if err != nil {
		return err
	}
	switch c {
	case 'n':
		return d.literal("ull") // null leaves the field as it was
	case '"':
	default:
		return fmt.Errorf("field %s is not a string", d.key)
	}
	d.val = d.val[:0]
	if err := d.str(&d.val); err != nil {
		return err
	}
	if method {
		if m, ok := internMethod(d.val); ok {
			*s = m
			return nil
		}
	}
	*s = string(d.val)
	return nil
}

func internMethod(b []byte) (string, bool) {
	switch string(b) {
	case "GET":
		return "GET", true
	case "HEAD":
		return "HEAD", true
	case "POST":
		return "POST", true
	case "PUT":
		return "PUT", true
	case "DELETE":
		return "DELETE", true
	}
	return "", false
}

// bytesField checks a base64 string (or null) as encoding/json would decode
// it into a []byte, setting *present when it decodes to at least one byte.
// The bytes themselves are never decoded.
func (d *decoder) bytesField(present *bool) error {
	c, err := d.r.nonSpace()
	if err != nil {
		return err
	}
	switch c {
	case 'n':
		*present = false
		return d.literal("ull")
	case '"':
	default:
		return fmt.Errorf("field %s is not a base64 string", d.key)
	}
	var v base64Check
	for {
		chunk, err := d.r.chunk()
		if err != nil {
			return err
		}
		end := bytes.IndexByte(chunk, '"')
		run := chunk
		if end >= 0 {
			run = chunk[:end]
		}
		if !v.write(run) {
			return fmt.Errorf("field %s: illegal base64 data", d.key)
		}
		if end >= 0 {
			d.r.skip(end + 1)
			break
		}
		d.r.skip(len(chunk))
	}
	some, ok := v.end()
	if !ok {
		return fmt.Errorf("field %s: illegal base64 data", d.key)
	}
	*present = some
	return nil
}

// base64Check follows base64.StdEncoding.Decode over a stream: quanta of
// four alphabet characters, the last of which may end in "==" or "=". It
// treats anything else as invalid, including the \r and \n Decode skips,
// which inside a JSON string can only come from escapes dockerd never
// writes.
type base64Check struct {
	chars int   // alphabet characters so far
	pad   uint8 // 0: none yet; 1: one of "==" seen; 2: padding complete
	bad   bool
}

var base64Alphabet = func() (t [256]bool) {
	for _, c := range "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/" {
		t[c] = true
	}
	return t
}()

func (v *base64Check) write(p []byte) bool {
	for len(p) > 0 && !v.bad {
		if v.pad == 0 {
			i := 0
			for i < len(p) && base64Alphabet[p[i]] {
				i++
			}
			v.chars += i
			if p = p[i:]; len(p) == 0 {
				break
			}
		}
		switch {
		case p[0] == '=' && v.pad == 0 && v.chars%4 == 2:
			v.pad = 1
		case p[0] == '=' && v.pad == 0 && v.chars%4 == 3, p[0] == '=' && v.pad == 1:
			v.pad = 2
		default:
			v.bad = true
		}
		p = p[1:]
	}
	return !v.bad
}

// end reports whether the data decoded to at least one byte, and whether
// it was valid.
func (v *base64Check) end() (present, ok bool) {
	switch {
	case v.bad, v.pad == 1, v.pad == 0 && v.chars%4 != 0:
		return false, false
	}
	return v.chars > 0, true
}

// headersField decodes a map[string]string (or null). For RequestHeaders it
// keeps the headers the decider reads; the others are checked and skipped.
// A header named twice keeps its last value, as encoding/json does.
func (d *decoder) headersField(keep bool) error {
	c, err := d.r.nonSpace()
	if err != nil {
		return err
	}
	switch c {
	case 'n':
		return d.literal("ull")
	case '{':
	default:
		return fmt.Errorf("field %s is not an object", d.key)
	}
	return d.members(func() error {
		wanted := keep && d.keeps(d.key)
		c, err := d.r.nonSpace()
		if err != nil {
			return err
		}
		value := ""
		switch {
		case c == 'n':
			if err := d.literal("ull"); err != nil {
				return err
			}
		case c != '"':
			return errors.New("a header value is not a string")
		case wanted:
			d.val = d.val[:0]
			if err := d.str(&d.val); err != nil {
				return err
			}
			value = string(d.val)
		default:
			return d.str(nil)
		}
		if wanted {
			d.setHeader(string(d.key), value)
		}
		return nil
	})
}

// keeps reports whether name is one of the headers the decider reads.
func (d *decoder) keeps(name []byte) bool {
	for _, h := range d.keep {
		if bytes.EqualFold(name, []byte(h)) {
			return true
		}
	}
	return false
}

func (d *decoder) setHeader(name, value string) {
	for i := range d.headers {
		if d.headers[i].name == name {
			d.headers[i].value = value
			return
		}
	}
	d.headers = append(d.headers, header{name, value})
}

// intField checks an int (or null): encoding/json takes an integer literal
// that fits, and refuses fractions and exponents.
func (d *decoder) intField() error {
	c, err := d.r.nonSpace()
	if err != nil {
		return err
	}
	if c == 'n' {
		return d.literal("ull")
	}
	d.val = append(d.val[:0], c)
	if err := d.number(c, &d.val); err != nil {
		return err
	}
	if _, err := strconv.ParseInt(string(d.val), 10, 0); err != nil {
		return fmt.Errorf("field %s is not an int", d.key)
	}
	return nil
}

// literal reads the rest of true, false or null.
func (d *decoder) literal(rest string) error {
	for i := 0; i < len(rest); i++ {
		c, err := d.r.byte()
		if err != nil {
			return err
		}
		if c != rest[i] {
			return syntaxError("invalid literal")
		}
	}
	return nil
}

// number reads a JSON number whose first byte c has been read, appending
// its bytes to *keep if keep is not nil.
func (d *decoder) number(c byte, keep *[]byte) error {
	next := func() (byte, bool) {
		b := d.r.peek(1)
		if len(b) == 0 {
			return 0, false
		}
		return b[0], true
	}
	take := func(c byte) {
		d.r.skip(1)
		if keep != nil {
			if len(*keep) > 64 {
				return // long enough to be refused as an int anyway
			}
			*keep = append(*keep, c)
		}
	}
	digits := func() int {
		n := 0
		for c, ok := next(); ok && '0' <= c && c <= '9'; c, ok = next() {
			take(c)
			n++
		}
		return n
	}
	if c == '-' {
		b, err := d.r.byte()
		if err != nil {
			return err
		}
		c = b
		if keep != nil {
			*keep = append(*keep, c)
		}
	}
	switch {
	case c == '0':
	case '1' <= c && c <= '9':
		digits()
	default:
		return syntaxError("invalid number")
	}
	if c, ok := next(); ok && c == '.' {
		take(c)
		if digits() == 0 {
			return syntaxError("invalid number")
		}
	}
	if c, ok := next(); ok && (c == 'e' || c == 'E') {
		take(c)
		if c, ok := next(); ok && (c == '+' || c == '-') {
			take(c)
		}
		if digits() == 0 {
			return syntaxError("invalid number")
		}
	}
	return nil
}

// skipValue checks and skips a JSON value whose first byte c has been read.
func (d *decoder) skipValue(c byte, depth int) error {
	if depth > maxDepth {
		return syntaxError("nested deeper than %d", maxDepth)
	}
	switch {
	case c == '"':
		return d.str(nil)
	case c == '{':
		return d.members(func() error {
			c, err := d.r.nonSpace()
			if err != nil {
				return err
			}
			return d.skipValue(c, depth+1)
		})
	case c == '[':
		c, err := d.r.nonSpace()
		if err != nil || c == ']' {
			return err
		}
		for {
			if err := d.skipValue(c, depth+1); err != nil {
				return err
			}
			if c, err = d.r.nonSpace(); err != nil {
				return err
			}
			switch c {
			case ']':
				return nil
			case ',':
				if c, err = d.r.nonSpace(); err != nil {
					return err
				}
			default:
				return syntaxError("missing ',' or ']' in array")
			}
		}
	case c == 't':
		return d.literal("rue")
	case c == 'f':
		return d.literal("alse")
	case c == 'n':
		return d.literal("ull")
	case c == '-' || '0' <= c && c <= '9':
		return d.number(c, nil)
	}
	return syntaxError("invalid character %q looking for a value", c)
}

// plainByte marks the bytes a JSON string holds as themselves.
var plainByte = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// str reads a JSON string after its opening quote, appending its decoded
// bytes to *out (checking only, when out is nil), as encoding/json unquotes
// it.
func (d *decoder) str(out *[]byte) error {
	add := func(b []byte) error {
		if out == nil {
			return nil
		}
		if len(*out)+len(b) > maxString {
			return fmt.Errorf("a string is longer than %d bytes, more than dockerd sends", maxString)
		}
		*out = append(*out, b...)
		return nil
	}
	var enc [utf8.UTFMax]byte
	addRune := func(r rune) error { return add(enc[:utf8.EncodeRune(enc[:], r)]) }
	for {
		b, err := d.r.chunk()
		if err != nil {
			return err
		}
		i := 0
		for i < len(b) && plainByte[b[i]] {
			i++
		}
		if err := add(b[:i]); err != nil {
			return err
		}
		if i == len(b) {
			d.r.skip(i)
			continue
		}
		c := b[i]
		d.r.skip(i + 1)
		switch {
		case c == '"':
			return nil
		case c < 0x20:
			return syntaxError("control character in a string")
		case c == '\\':
			if err := d.escape(addRune, add); err != nil {
				return err
			}
		default: // a byte of a multi-byte sequence, or an invalid one
			var seq [utf8.UTFMax]byte
			p := append(seq[:0], c)
			p = append(p, d.r.peek(utf8.UTFMax-1)...)
			r, size := utf8.DecodeRune(p)
			d.r.skip(size - 1)
			if r == utf8.RuneError && size == 1 {
				err = addRune(unicode.ReplacementChar)
			} else {
				err = add(p[:size])
			}
			if err != nil {
				return err
			}
		}
	}
}

// escape decodes the escape after a backslash.
func (d *decoder) escape(addRune func(rune) error, add func([]byte) error) error {
	c, err := d.r.byte()
	if err != nil {
		return err
	}
	switch c {
	case '"', '\\', '/':
		return add([]byte{c})
	case 'b':
		return add([]byte{'\b'})
	case 'f':
		return add([]byte{'\f'})
	case 'n':
		return add([]byte{'\n'})
	case 'r':
		return add([]byte{'\r'})
	case 't':
		return add([]byte{'\t'})
	case 'u':
	default:
		return syntaxError("invalid escape in a string")
	}
	p := d.r.peek(4)
	r := hex4(p)
	if r < 0 {
		return syntaxError("invalid \\u escape in a string")
	}
	d.r.skip(4)
	if utf16.IsSurrogate(r) {
		// encoding/json pairs it with a following \u escape if the two
		// make a rune, and otherwise writes U+FFFD and leaves the next
		// escape alone.
		if p := d.r.peek(6); len(p) == 6 && p[0] == '\\' && p[1] == 'u' {
			if dec := utf16.DecodeRune(r, hex4(p[2:])); dec != unicode.ReplacementChar {
				d.r.skip(6)
				return addRune(dec)
			}
		}
		r = unicode.ReplacementChar
	}
	return addRune(r)
}

// hex4 returns the value of four hex digits, or -1.
func hex4(p []byte) rune {
	if len(p) < 4 {
		return -1
	}
	var r rune
	for _, c := range p[:4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			c = c - 'A' + 10
		default:
			return -1
		}
		r = r*16 + rune(c)
	}
	return r
}
