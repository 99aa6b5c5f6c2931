package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
)

// readRequest reads one request head the way the proxy does.
func readRequest(data []byte) (requestHead, *bufio.Reader, error) {
	br := bufio.NewReaderSize(bytes.NewReader(data), clientBufSize)
	var long []byte
	raw, err := readHead(br, &long)
	if err != nil {
		return requestHead{}, br, err
	}
	h, err := parseRequestHead(raw)
	return h, br, err
}

// checkLikeNetHTTP fails unless the proxy refuses data or reads from it
// what net/http reads: the same method, target and version, the same first
// Content-Type, and the same body framing.
func checkLikeNetHTTP(t *testing.T, data []byte) bool {
	t.Helper()
	h, _, err := readRequest(data)
	if err != nil {
		return false
	}
	req, rerr := http.ReadRequest(bufio.NewReader(bytes.NewReader(data)))
	if rerr != nil {
		t.Fatalf("the proxy accepted what net/http refuses (%v): %q", rerr, data)
	}
	switch {
	case req.Method != string(h.method):
		t.Fatalf("method %q, net/http %q: %q", h.method, req.Method, data)
	case req.RequestURI != string(h.target):
		t.Fatalf("target %q, net/http %q: %q", h.target, req.RequestURI, data)
	case req.ProtoMinor == 0 != h.http10 || req.ProtoMajor != 1:
		t.Fatalf("version http10=%v, net/http %s: %q", h.http10, req.Proto, data)
	}
	if cts := req.Header.Values("Content-Type"); h.hasCT != (len(cts) > 0) || h.hasCT && cts[0] != string(h.contentType) {
		t.Fatalf("Content-Type %q (%v), net/http %q: %q", h.contentType, h.hasCT, cts, data)
	}
	switch h.body {
	case chunked:
		if len(req.TransferEncoding) != 1 || req.TransferEncoding[0] != "chunked" {
			t.Fatalf("chunked, net/http %q length %d: %q", req.TransferEncoding, req.ContentLength, data)
		}
	case sized:
		if req.ContentLength != h.length || len(req.TransferEncoding) != 0 {
			t.Fatalf("length %d, net/http %d %q: %q", h.length, req.ContentLength, req.TransferEncoding, data)
		}
	case noBody:
		if req.ContentLength != 0 || len(req.TransferEncoding) != 0 {
			t.Fatalf("no body, net/http length %d %q: %q", req.ContentLength, req.TransferEncoding, data)
		}
	}
	return true
}

var headSeeds = []string{
	"GET /v1.51/containers/json HTTP/1.1\r\nHost: api.moby.localhost\r\nUser-Agent: Docker-Client/28.5.2 (linux)\r\n\r\n",
	"POST /v1.51/images/prune?filters=%7B%7D HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\nContent-Type: application/json\r\n\r\n",
	"POST /build?t=x HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\nContent-Type: application/x-tar\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
	"POST /grpc HTTP/1.1\r\nHost: \r\nUser-Agent: x\r\nContent-Length: 0\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
	"POST /containers/x/attach?stream=1&stdin=1 HTTP/1.1\r\nHost: d\r\nContent-Type: text/plain\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n",
	"POST /images/prune HTTP/1.0\r\nContent-Type: a\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\n\r\nx=1",
	"DELETE /images/a HTTP/1.1\r\nhost:d\r\nCONTENT-LENGTH: 00\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: d\r\nX:\t a \t\r\n\r\n",
}

func TestRequestHeadsAreReadAsNetHTTPReadsThem(t *testing.T) {
	for _, s := range headSeeds {
		if !checkLikeNetHTTP(t, []byte(s)) {
			_, _, err := readRequest([]byte(s))
			t.Errorf("refused %q: %v", s, err)
		}
	}
}

// A head longer than the read buffer is gathered whole.
func TestALongHeadIsReadWhole(t *testing.T) {
	long := "GET /build?buildargs=" + strings.Repeat("a", 3*clientBufSize) + " HTTP/1.1\r\nHost: d\r\nX-Registry-Config: " +
		strings.Repeat("b", 2*clientBufSize) + "\r\n\r\nGET /next HTTP/1.1\r\nHost: d\r\n\r\n"
	h, br, err := readRequest([]byte(long))
	if err != nil || len(h.target) != len("/build?buildargs=")+3*clientBufSize {
		t.Fatalf("long head: %v, target %d bytes", err, len(h.target))
	}
	var scratch []byte
	next, err := readHead(br, &scratch)
	if err != nil || !bytes.HasPrefix(next, []byte("GET /next ")) {
		t.Errorf("the request after a long head: %q %v", next, err)
	}
}

func FuzzReadRequestHead(f *testing.F) {
	for _, s := range headSeeds {
		f.Add([]byte(s))
	}
	f.Add([]byte("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"))
	f.Add([]byte("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkLikeNetHTTP(t, data)
	})
}

// The chunked body the proxy forwards is, byte for byte, what net/http
// reads from the client's.
func TestChunkedBodiesAreReframedAsNetHTTPReadsThem(t *testing.T) {
	for _, body := range []string{
		"5\r\nhello\r\n0\r\n\r\n",
		"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
		"0\r\n\r\n",
	} {
		var out bytes.Buffer
		br := bufio.NewReader(strings.NewReader(body + "NEXT"))
		if err := copyChunked(&out, br); err != nil {
			t.Fatalf("%q: %v", body, err)
		}
		rest, _ := io.ReadAll(br)
		if string(rest) != "NEXT" {
			t.Errorf("%q: %q left after the body, want NEXT", body, rest)
		}
		want, _ := io.ReadAll(httpChunked(body))
		got, _ := io.ReadAll(httpChunked(out.String()))
		if !bytes.Equal(got, want) {
			t.Errorf("%q: forwarded %q reads as %q, want %q", body, out.String(), got, want)
		}
	}
	// Trailers are refused, not passed on.
	if err := copyChunked(io.Discard, bufio.NewReader(strings.NewReader("0\r\nX-Trailer: 1\r\n\r\n"))); err == nil {
		t.Error("a trailer was accepted")
	}
}

func httpChunked(s string) io.Reader {
	req, err := http.ReadRequest(bufio.NewReader(strings.NewReader("POST / HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n" + s)))
	if err != nil {
		return strings.NewReader("")
	}
	return req.Body
}

// relayChunked finds the end of a chunked response, in whatever pieces it
// arrives, and hands an observer the chunk data alone.
func TestChunkedResponsesEndWhereTheyEnd(t *testing.T) {
	resp := "3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n"
	for split := 1; split < len(resp); split++ {
		for _, obs := range []*recorder{nil, {}} {
			r := io.MultiReader(strings.NewReader(resp[:split]), strings.NewReader(resp[split:]+"NEXT"))
			br := bufio.NewReaderSize(r, 16)
			var out bytes.Buffer
			var o Observer
			if obs != nil {
				o = obs
			}
			if err := relayChunked(&out, br, o); err != nil {
				t.Fatalf("split at %d: %v", split, err)
			}
			if out.String() != resp {
				t.Fatalf("split at %d: relayed %q", split, out.String())
			}
			if obs != nil && obs.body.String() != "abc0123456789abcdef" {
				t.Fatalf("split at %d: the observer got %q", split, obs.body.String())
			}
		}
	}
}
