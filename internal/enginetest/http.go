package enginetest

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// httpTimeout bounds one raw HTTP exchange with the engine.
const httpTimeout = time.Minute

// HTTP sends one HTTP/1.1 request to the engine's socket and returns the
// status code and response body. The request line is written as given, so
// uri reaches dockerd byte for byte: encoded paths, absolute-form targets,
// repeated query keys. Headers are written in sorted order after
// "Host: docker"; Content-Length is added for a non-nil body unless headers
// set it or Transfer-Encoding. To repeat a header, use RawHTTP.
func (e *Engine) HTTP(t testing.TB, method, uri string, headers map[string]string, body []byte) (status int, respBody string) {
	t.Helper()
	var req bytes.Buffer
	fmt.Fprintf(&req, "%s %s HTTP/1.1\r\n", method, uri)
	if !hasHeader(headers, "Host") {
		req.WriteString("Host: docker\r\n")
	}
	keys := make([]string, 0, len(headers))
	for k := range headers {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&req, "%s: %s\r\n", k, headers[k])
	}
	if body != nil && !hasHeader(headers, "Content-Length") && !hasHeader(headers, "Transfer-Encoding") {
		fmt.Fprintf(&req, "Content-Length: %d\r\n", len(body))
	}
	if !hasHeader(headers, "Connection") {
		req.WriteString("Connection: close\r\n")
	}
	req.WriteString("\r\n")
	req.Write(body)
	return e.RawHTTP(t, req.Bytes())
}

// RawHTTP writes request to the engine's socket exactly as given (it must be
// one complete HTTP/1.1 request, normally with "Connection: close") and
// returns the status code and body of the response.
func (e *Engine) RawHTTP(t testing.TB, request []byte) (status int, respBody string) {
	t.Helper()
	status, respBody, err := e.rawHTTP(request)
	if err != nil {
		t.Fatalf("enginetest: raw HTTP %s: %v", firstLine(request), err)
	}
	t.Logf("> %s => %d %s", firstLine(request), status, strings.TrimSpace(respBody))
	return status, respBody
}

func (e *Engine) rawHTTP(request []byte) (int, string, error) {
	conn, err := net.DialTimeout("unix", e.Socket(), httpTimeout)
	if err != nil {
		return 0, "", fmt.Errorf("connecting: %w", err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(httpTimeout)); err != nil {
		return 0, "", err
	}
	if _, err := conn.Write(request); err != nil {
		return 0, "", fmt.Errorf("writing request: %w", err)
	}
	// Parsing the response with net/http is fine: only the request must be
	// ours, byte for byte.
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0, "", fmt.Errorf("reading response: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, string(b), fmt.Errorf("reading response body: %w", err)
	}
	return resp.StatusCode, string(b), nil
}

func hasHeader(h map[string]string, name string) bool {
	for k := range h {
		if strings.EqualFold(k, name) {
			return true
		}
	}
	return false
}

func firstLine(b []byte) string {
	line, _, _ := bytes.Cut(b, []byte("\r\n"))
	q := strconv.Quote(string(line)) // control bytes made visible
	return q[1 : len(q)-1]
}
