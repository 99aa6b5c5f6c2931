package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// recorder is an Observer that keeps what it is told.
type recorder struct {
	mu     sync.Mutex
	status int
	body   bytes.Buffer
	calls  int // Body calls
	done   int
	err    error
}

func (r *recorder) Response(status int) { r.mu.Lock(); r.status = status; r.mu.Unlock() }

func (r *recorder) Body(p []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.body.Write(p)
	r.calls++
}

func (r *recorder) Done(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.done++
	r.err = err
}

func (r *recorder) snapshot() (status int, body string, done int, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.status, r.body.String(), r.done, r.err
}

// observingDecider allows everything, observing each response with a
// recorder of its own when observe is set.
type observingDecider struct {
	observe bool
	mu      sync.Mutex
	rec     []*recorder
}

func (d *observingDecider) Decide(context.Context, Request) Verdict {
	if !d.observe {
		return Verdict{Allow: true}
	}
	r := &recorder{}
	d.mu.Lock()
	d.rec = append(d.rec, r)
	d.mu.Unlock()
	return Verdict{Allow: true, Observe: r}
}

func (d *observingDecider) last(t *testing.T) *recorder {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.rec) == 0 {
		t.Fatal("no request was observed")
	}
	return d.rec[len(d.rec)-1]
}

// scriptedEngine answers every request with pieces, written one at a time
// as raw bytes: each piece only once got says the client received the one
// before. A proxy that held any piece back would stall the script.
func scriptedEngine(t *testing.T, pieces []string, got <-chan struct{}) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "engine.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := readHead(bufio.NewReader(c), new([]byte)); err != nil {
					return
				}
				for i, p := range pieces {
					if i > 0 {
						select {
						case <-got:
						case <-time.After(5 * time.Second):
							return // the client never got the last piece
						}
					}
					if _, err := io.WriteString(c, p); err != nil {
						return
					}
				}
			}()
		}
	}()
	return sock
}

// pullContent is a pull's progress stream; pullPieces sends it as a
// chunked body, a chunk a message, in pieces cut inside chunk data and
// between chunks. (Not inside a framing line: the proxy passes a size line
// or a chunk's closing CRLF on once it is whole, to follow the framing.)
const pullContent = "{\"status\":\"Pulling from pg/app\",\"id\":\"1\"}\r\n" +
	"{\"status\":\"Already exists\",\"id\":\"aaaaaaaaaaaa\"}\r\n" +
	"{\"status\":\"Downloading\",\"progressDetail\":{\"current\":5,\"total\":9},\"id\":\"b\"}\r\n"

var pullPieces = func() []string {
	var body strings.Builder
	for _, m := range strings.SplitAfter(pullContent, "\n") {
		if m != "" {
			fmt.Fprintf(&body, "%x\r\n%s\r\n", len(m), m)
		}
	}
	body.WriteString("0\r\n\r\n")
	b := body.String()
	head := "HTTP/1.1 200 OK\r\nApi-Version: 1.51\r\nContent-Type: application/json\r\nDate: Fri, 04 Dec 2026 15:00:00 GMT\r\nTransfer-Encoding: chunked\r\n\r\n"
	// Cut inside the first message's data, after its chunk, and inside
	// the second's data.
	cuts := []int{0, 20, 4 + 43 + 2, 4 + 43 + 2 + 4 + 30, len(b)}
	pieces := []string{head}
	for i := 1; i < len(cuts); i++ {
		pieces = append(pieces, b[cuts[i-1]:cuts[i]])
	}
	return pieces
}()

// TestAnObservedResponseReachesTheClientByteForByteAndAtOnce: with an
// observer, the client gets exactly the engine's bytes, each piece before
// the engine sends the next (nothing buffered), and the observer the
// content without the chunked framing, then Done once.
func TestAnObservedResponseReachesTheClientByteForByteAndAtOnce(t *testing.T) {
	sized := []string{
		"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 39\r\n\r\n",
		`{"message":"pull access denied`, ` for x"}` + "\n",
	}
	untilEOF := []string{
		"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n",
		`{"status":"a"}` + "\r\n", `{"status":"b"}` + "\r\n",
	}
	tests := []struct {
		name    string
		pieces  []string
		status  int
		content string
	}{
		{"a chunked progress stream", pullPieces, 200, pullContent},
		{"a sized error", sized, 404, `{"message":"pull access denied for x"}` + "\n"},
		{"a body that lasts until the connection closes", untilEOF, 200, `{"status":"a"}` + "\r\n" + `{"status":"b"}` + "\r\n"},
	}
	for _, tt := range tests {
		for _, observe := range []bool{false, true} {
			name := tt.name
			if observe {
				name += ", observed"
			}
			t.Run(name, func(t *testing.T) {
				got := make(chan struct{}, 1)
				d := &observingDecider{observe: observe}
				sock := serveProxy(t, d, scriptedEngine(t, tt.pieces, got))
				received := readScripted(t, sock, tt.pieces, got)
				if want := strings.Join(tt.pieces, ""); received != want {
					t.Fatalf("the client got\n%q\nthe engine sent\n%q", received, want)
				}
				if !observe {
					return
				}
				status, body, done, err := waitDone(t, d.last(t))
				if status != tt.status || body != tt.content || done != 1 || err != nil {
					t.Errorf("observer: status %d, done %d (%v), content\n%q\nwant status %d, content\n%q", status, done, err, body, tt.status, tt.content)
				}
			})
		}
	}
}

// readScripted sends a pull through sock and reads the answer piece by
// piece, telling the engine after each, until the connection ends or
// every piece came.
func readScripted(t *testing.T, sock string, pieces []string, got chan<- struct{}) string {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "POST /v1.51/images/create?fromImage=pg%2Fapp&tag=1 HTTP/1.1\r\nHost: api.moby.localhost\r\nContent-Length: 0\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var out []byte
	buf := make([]byte, 4096)
	for i, want := 0, 0; i < len(pieces); i++ {
		want += len(pieces[i])
		for len(out) < want {
			n, err := c.Read(buf)
			out = append(out, buf[:n]...)
			if err != nil {
				t.Fatalf("after %d of %d pieces (%q): %v; is the proxy holding a piece back?", i, len(pieces), out, err)
			}
		}
		got <- struct{}{}
	}
	return string(out)
}

// An engine that is not there: the client gets the proxy's 502, and the
// observer hears of no response, and why.
func TestAnObserverHearsWhenTheEngineDoesNotAnswer(t *testing.T) {
	d := &observingDecider{observe: true}
	sock := serveProxy(t, d, filepath.Join(t.TempDir(), "nothing.sock"))
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "POST /v1.51/images/create?fromImage=x&tag=1 HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("response %v, %v; want 502", resp, err)
	}
	status, body, done, derr := waitDone(t, d.last(t))
	if status != 0 || body != "" || done != 1 || derr == nil || !strings.Contains(derr.Error(), "does not answer") {
		t.Errorf("observer: status %d body %q done %d err %v", status, body, done, derr)
	}
}

// Over HTTP/2 (Docker 29.2 and later serve REST there too) the observer is
// told the same: the status, the content, then Done.
func TestAnObservedHTTP2StreamTellsTheObserver(t *testing.T) {
	progress := `{"status":"Already exists","id":"a"}` + "\r\n" + `{"status":"Pull complete","id":"b"}` + "\r\n"
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1.51/images/create", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		for _, line := range strings.SplitAfter(progress, "\n") {
			io.WriteString(w, line)
			w.(http.Flusher).Flush()
		}
	})
	engine := goH2Engine(t, mux)
	d := &observingDecider{observe: true}
	sock := serveProxy(t, d, engine)
	tr := &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, _, _ string, _ *tls.Config) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Post("http://docker/v1.51/images/create?fromImage=x&tag=1", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(got) != progress {
		t.Fatalf("client got %q, %v", got, err)
	}
	if status, body, _, derr := waitDone(t, d.last(t)); status != 200 || body != progress || derr != nil {
		t.Errorf("observer: status %d body %q err %v", status, body, derr)
	}
}

// waitDone waits until the observer is told the exchange ended: the
// client may have its answer a moment before, and returns what the
// observer was told.
func waitDone(t *testing.T, r *recorder) (status int, body string, done int, err error) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if status, body, done, err = r.snapshot(); done > 0 {
			return status, body, done, err
		}
		if time.Now().After(deadline) {
			t.Fatal("the observer was never told the exchange ended")
		}
		time.Sleep(time.Millisecond)
	}
}

// goH2Engine serves h on a unix socket with h2c prior knowledge and
// HTTP/1.1, as Docker 29.2 does.
func goH2Engine(t *testing.T, h http.Handler) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "engine.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, Protocols: new(http.Protocols)}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sock
}
