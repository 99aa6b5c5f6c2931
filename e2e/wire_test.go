package e2e

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/internal/enginetest"
)

// This file holds what the adversarial, fault and load tests share: raw
// HTTP requests written byte for byte (repeated headers, chunked bodies,
// pipelining), and a small engine API client for setting up victims
// without the docker CLI (a process per call would dominate the runtime).

// wireReq is one HTTP/1.1 request as it goes on the wire.
type wireReq struct {
	method, target string
	// headers are "Key: value" lines in order; keys may repeat.
	headers []string
	body    string
	// chunked sends the body with Transfer-Encoding: chunked.
	chunked bool
	// then is a request pipelined after this one on the same connection.
	then *wireReq
}

// bytes renders r (and what is pipelined after it). Every request gets a
// Host header unless it has one; the last one asks the server to close the
// connection, so that reading until EOF collects every answer. A body gets
// a Content-Length unless the headers set one or it is chunked.
func (r wireReq) bytes() []byte {
	var b bytes.Buffer
	for req := &r; req != nil; req = req.then {
		fmt.Fprintf(&b, "%s %s HTTP/1.1\r\n", req.method, req.target)
		hasHost, hasLength := false, false
		for _, h := range req.headers {
			k, _, _ := strings.Cut(h, ":")
			switch strings.ToLower(strings.TrimSpace(k)) {
			case "host":
				hasHost = true
			case "content-length":
				hasLength = true
			}
			b.WriteString(h + "\r\n")
		}
		if !hasHost {
			b.WriteString("Host: docker\r\n")
		}
		if req.then == nil {
			b.WriteString("Connection: close\r\n")
		}
		switch {
		case req.chunked:
			b.WriteString("Transfer-Encoding: chunked\r\n\r\n")
			if req.body != "" {
				fmt.Fprintf(&b, "%x\r\n%s\r\n", len(req.body), req.body)
			}
			b.WriteString("0\r\n\r\n")
		case req.body != "" && !hasLength:
			fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n%s", len(req.body), req.body)
		default:
			b.WriteString("\r\n" + req.body)
		}
	}
	return b.Bytes()
}

// wireResp is one answer read off the wire.
type wireResp struct {
	status int
	body   string
}

// wireTimeout bounds one raw exchange.
const wireTimeout = time.Minute

// wireSend writes raw to the unix socket sock and reads answers until the
// server closes the connection. It never half-closes its side: dockerd
// cancels prune handlers (router.WithCancel) when the client goes away, and
// a canceled prune proves nothing.
func wireSend(sock string, raw []byte) ([]wireResp, error) {
	c, err := net.DialTimeout("unix", sock, wireTimeout)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(wireTimeout)); err != nil {
		return nil, err
	}
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(raw)
		werr <- err
	}()
	var out []wireResp
	br := bufio.NewReader(c)
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			if len(out) > 0 && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || strings.Contains(err.Error(), "connection reset")) {
				break
			}
			if len(out) == 0 && !errors.Is(err, os.ErrDeadlineExceeded) {
				// The handler took the connection over (BuildKit's /grpc
				// speaks HTTP/2 on it) or dropped it: status 0.
				out = append(out, wireResp{status: 0, body: "no HTTP/1.1 answer: " + err.Error()})
				break
			}
			return out, fmt.Errorf("reading answer %d: %w", len(out)+1, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return out, fmt.Errorf("reading answer %d's body: %w", len(out)+1, err)
		}
		out = append(out, wireResp{status: resp.StatusCode, body: strings.TrimSpace(string(body))})
		if resp.Close {
			break
		}
	}
	// The server may answer before it has read all of a request it refuses.
	select {
	case <-werr:
	case <-time.After(time.Second):
	}
	return out, nil
}

// send sends r to e and fails t when the exchange breaks.
func send(t testing.TB, e *enginetest.Engine, r wireReq) []wireResp {
	t.Helper()
	resps, err := wireSend(e.Socket(), r.bytes())
	if err != nil {
		t.Fatalf("raw %s %s: %v", r.method, r.target, err)
	}
	return resps
}

// api is a plain client for an engine's socket, for setup and checks.
type api struct {
	t testing.TB
	e *enginetest.Engine
	c *http.Client
}

func newAPI(t testing.TB, e *enginetest.Engine) *api {
	return &api{t: t, e: e, c: &http.Client{
		Timeout: wireTimeout,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", e.Socket())
			},
			MaxIdleConnsPerHost: 8,
		},
	}}
}

// do sends one request and returns the status and body; a transport error
// fails the test.
func (a *api) do(method, path, contentType string, body []byte) (int, []byte) {
	a.t.Helper()
	req, err := http.NewRequest(method, "http://docker"+path, bytes.NewReader(body))
	if err != nil {
		a.t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := a.c.Do(req)
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		a.t.Fatalf("%s %s: reading answer: %v", method, path, err)
	}
	return resp.StatusCode, b
}

// must is do for requests that must succeed (2xx).
func (a *api) must(method, path, contentType string, body []byte) []byte {
	a.t.Helper()
	status, b := a.do(method, path, contentType, body)
	if status/100 != 2 {
		a.t.Fatalf("%s %s = %d %s", method, path, status, bytes.TrimSpace(b))
	}
	return b
}

// exists reports whether GET path answers 200 (404 is "no"); anything else
// fails the test, so a denial never reads as "gone".
func (a *api) exists(path string) bool {
	a.t.Helper()
	status, b := a.do("GET", path, "", nil)
	switch status {
	case http.StatusOK:
		return true
	case http.StatusNotFound:
		return false
	}
	a.t.Fatalf("GET %s = %d %s", path, status, bytes.TrimSpace(b))
	return false
}

// tarOf returns a tar archive holding files (name => content).
func tarOf(t testing.TB, files map[string]string) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for name, content := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(content))}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(content)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// importImage creates a one-file image (docker import: milliseconds, no
// build) under ref, or untagged (dangling) when ref is "", and returns its
// ID. Its content is unique, so every call makes a new image.
func (a *api) importImage(ref string) string {
	a.t.Helper()
	q := url.Values{"fromSrc": {"-"}}
	if ref != "" {
		repo, tag := splitRef(ref)
		q.Set("repo", repo)
		q.Set("tag", tag)
	}
	out := a.must("POST", "/v1.41/images/create?"+q.Encode(), "application/x-tar",
		tarOf(a.t, map[string]string{"nonce": enginetest.Nonce(a.t)}))
	var last struct {
		Status string `json:"status"`
		Error  string `json:"error"`
	}
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		if err := dec.Decode(&last); err != nil {
			a.t.Fatalf("import %s: %v: %s", ref, err, out)
		}
		if last.Error != "" {
			a.t.Fatalf("import %s: %s", ref, last.Error)
		}
	}
	if !strings.HasPrefix(last.Status, "sha256:") {
		a.t.Fatalf("import %s answered %s", ref, out)
	}
	return last.Status
}

// splitRef splits NAME[:TAG] into repository and tag (latest by default); a
// colon before the last slash is a registry port, not a tag.
func splitRef(ref string) (repo, tag string) {
	i := strings.LastIndex(ref, ":")
	if i < 0 || strings.Contains(ref[i:], "/") {
		return ref, "latest"
	}
	return ref[:i], ref[i+1:]
}

// imageExists reports whether ref (name, ID or digest reference) resolves.
func (a *api) imageExists(ref string) bool {
	a.t.Helper()
	return a.exists("/v1.41/images/" + ref + "/json")
}

// denialOf reports whether a response is prune-guard's denial through
// dockerd, and returns its message.
func denialOf(r wireResp) (string, bool) {
	if r.status != http.StatusForbidden {
		return "", false
	}
	var m struct{ Message string }
	if json.Unmarshal([]byte(r.body), &m) != nil {
		m.Message = r.body
	}
	if !strings.Contains(m.Message, "authorization denied by plugin") || !strings.Contains(m.Message, ": prune-guard: ") {
		return "", false
	}
	return m.Message, true
}
