package authz

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/go-plugins-helpers/authorization"
	"github.com/sirupsen/logrus"
)

// servePlugin serves a guard on a fresh socket until the test ends; stop
// ends it early and returns Serve's error.
func servePlugin(t testing.TB, o Options) (sock string, stop func() error) {
	t.Helper()
	sock = filepath.Join(t.TempDir(), "p.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	return sock, serveOn(t, l, o)
}

// serveOn serves the protocol on l until the test ends; stop ends it early
// and returns Serve's error.
func serveOn(t testing.TB, l net.Listener, o Options) (stop func() error) {
	t.Helper()
	log := logrus.New()
	log.SetOutput(io.Discard)
	o.Log = log
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, l, &testDecider{}, statusHandler, o) }()
	var err2 error
	stopped := false
	stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			err2 = <-done
		}
		return err2
	}
	t.Cleanup(func() { stop() })
	return stop
}

// rawCall is one HTTP request as bytes.
func rawCall(path string, body []byte, extra ...string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: plugin\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: %d\r\n", path, len(body))
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("Accept: application/vnd.docker.plugins.v1.2+json\r\nAccept-Encoding: gzip\r\n\r\n")
	b.Write(body)
	return b.Bytes()
}

func readAnswer(t testing.TB, br *bufio.Reader) (*http.Response, authorization.Response) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	var a authorization.Response
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &a) != nil {
		t.Fatalf("answer %s: %q", resp.Status, b)
	}
	return resp, a
}

func dial(t testing.TB, sock string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

var (
	readCall     = []byte(`{"RequestMethod":"GET","RequestUri":"/v1.41/containers/json"}`)
	pruneAllCall = []byte(`{"RequestMethod":"POST","RequestUri":"` + pruneAllURI + `"}`)
)

// Pipelined calls on one kept connection are answered in order, and both
// phases and every other request keep working on the same connection.
func TestLeanLoopAnswersPipelinedCallsOnAKeptConnection(t *testing.T) {
	sock, _ := servePlugin(t, Options{Drain: time.Second})
	c, br := dial(t, sock)
	var all []byte
	all = append(all, rawCall("/AuthZPlugin.AuthZReq", readCall)...)
	all = append(all, rawCall("/AuthZPlugin.AuthZRes", bytes.Repeat([]byte("x"), 100<<10))...)
	all = append(all, rawCall("/AuthZPlugin.AuthZReq", pruneAllCall)...)
	all = append(all, rawCall("/AuthZPlugin.AuthZReq", nil)...)
	if _, err := c.Write(all); err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"allow", "allow", "no-prune-all", "decode call: EOF"} {
		resp, a := readAnswer(t, br)
		if resp.Close {
			t.Errorf("answer %d closes the connection", i)
		}
		if (want == "allow") != a.Allow || want != "allow" && !strings.Contains(a.Msg, want) {
			t.Errorf("answer %d: %+v, want %s", i, a, want)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/vnd.docker.plugins.v1.1+json" {
			t.Errorf("answer %d: Content-Type %q", i, ct)
		}
	}
	// Then something the lean loop does not take: net/http answers it,
	// and the calls after it, on the same connection.
	fmt.Fprintf(c, "GET /status HTTP/1.1\r\nHost: plugin\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /status: %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	c.Write(rawCall("/AuthZPlugin.AuthZReq", pruneAllCall))
	if _, a := readAnswer(t, br); a.Allow {
		t.Errorf("prune -a after the hand-over allowed: %+v", a)
	}
}

// Requests the lean loop leaves to net/http are decided the same way.
func TestNetHTTPServesWhatTheLeanLoopDoesNotTake(t *testing.T) {
	sock, _ := servePlugin(t, Options{Drain: time.Second})
	chunked := func(body []byte) string {
		return fmt.Sprintf("POST /AuthZPlugin.AuthZReq HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", len(body), body)
	}
	for name, tc := range map[string]struct {
		raw   string
		allow bool
	}{
		"chunked read":        {chunked(readCall), true},
		"chunked prune -a":    {chunked(pruneAllCall), false},
		"expect 100-continue": {string(rawCall("/AuthZPlugin.AuthZReq", pruneAllCall, "Expect: 100-continue")), false},
		"bare LF":             {"POST /AuthZPlugin.AuthZReq HTTP/1.1\nHost: p\nContent-Length: " + fmt.Sprint(len(readCall)) + "\n\n" + string(readCall), true},
		"HTTP/1.0":            {strings.Replace(string(rawCall("/AuthZPlugin.AuthZReq", readCall)), "HTTP/1.1", "HTTP/1.0", 1), true},
		"activate":            {string(rawCall("/Plugin.Activate", nil)), false},
	} {
		t.Run(name, func(t *testing.T) {
			c, br := dial(t, sock)
			c.Write([]byte(tc.raw))
			resp, err := http.ReadResponse(br, nil)
			for err == nil && resp.StatusCode == http.StatusContinue {
				resp, err = http.ReadResponse(br, nil)
			}
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			if name == "activate" {
				if !bytes.Contains(b, []byte(`"authz"`)) {
					t.Errorf("Activate: %s", b)
				}
				return
			}
			var a authorization.Response
			if err := json.Unmarshal(b, &a); err != nil || a.Allow != tc.allow {
				t.Errorf("%s: %q, want allow=%v", resp.Status, b, tc.allow)
			}
		})
	}
	t.Run("bad request", func(t *testing.T) {
		c, br := dial(t, sock)
		c.Write([]byte("POST /AuthZPlugin.AuthZReq HTTP/1.1\r\nHost: p\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx"))
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusBadRequest {
			t.Errorf("two Content-Lengths: %v %v, want net/http's 400", resp, err)
		}
	})
}

// A call longer than dockerd can send is read past, refused, and the
// connection closed; the plugin keeps serving.
func TestOversizedCallIsRefusedWithoutKeepingIt(t *testing.T) {
	sock, _ := servePlugin(t, Options{Drain: time.Second})
	c, br := dial(t, sock)
	body := append(append([]byte(`{"RequestMethod":"GET","RequestUri":"/_ping","RequestBody":"`), bytes.Repeat([]byte("A"), maxCallSize)...), `"}`...)
	go c.Write(rawCall("/AuthZPlugin.AuthZReq", body))
	resp, a := readAnswer(t, br)
	if a.Allow || !strings.Contains(a.Msg, "more than") || !resp.Close {
		t.Errorf("oversized call: %+v (close %v)", a, resp.Close)
	}
	c2, br2 := dial(t, sock)
	c2.Write(rawCall("/AuthZPlugin.AuthZReq", readCall))
	if _, a := readAnswer(t, br2); !a.Allow {
		t.Errorf("a read after the oversized call: %+v", a)
	}
}

// On shutdown an idle connection is closed and a call in flight is still
// answered, with "Connection: close".
func TestShutdownClosesIdleConnectionsAndDrainsCallsInFlight(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "p.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	call := rawCall("/AuthZPlugin.AuthZReq", pruneAllCall)
	head := call[:len(call)-5]
	// reading tells when the server waits for the rest of the busy call:
	// it reads again after it has everything sent so far.
	reading := make(chan struct{})
	stop := serveOn(t, &readWatcher{Listener: l, after: len(head), reading: reading}, Options{Drain: 5 * time.Second})

	idle, idleBR := dial(t, sock)
	idle.Write(rawCall("/AuthZPlugin.AuthZReq", readCall))
	readAnswer(t, idleBR)

	busy, busyBR := dial(t, sock)
	busy.Write(head)
	<-reading
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	// The idle connection is closed once shutdown has begun: from then on
	// the busy call's answer must close its connection.
	idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := idleBR.ReadByte(); err != io.EOF {
		t.Errorf("idle connection after shutdown: %v, want EOF", err)
	}
	busy.Write(call[len(head):])
	resp, a := readAnswer(t, busyBR)
	if a.Allow || !resp.Close {
		t.Errorf("call in flight: %+v, close %v", a, resp.Close)
	}
	if err := <-stopped; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

// readWatcher closes reading when a connection it accepted (the second, in
// the test above) is read again after its first after bytes were read.
type readWatcher struct {
	net.Listener
	after   int
	reading chan struct{}
	n       int
}

func (w *readWatcher) Accept() (net.Conn, error) {
	c, err := w.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if w.n++; w.n != 2 {
		return c, nil
	}
	return &watchedConn{Conn: c, w: w}, nil
}

type watchedConn struct {
	net.Conn
	w    *readWatcher
	read int
	once sync.Once
}

func (c *watchedConn) Read(p []byte) (int, error) {
	if c.read >= c.w.after {
		c.once.Do(func() { close(c.w.reading) })
	}
	n, err := c.Conn.Read(p)
	c.read += n
	return n, err
}

// benchCall sends call on c and reads one answer into buf, allocating
// nothing itself, so that -benchmem counts the server's allocations.
func benchCall(b *testing.B, c net.Conn, br *bufio.Reader, call []byte, buf []byte) {
	if _, err := c.Write(call); err != nil {
		b.Fatal(err)
	}
	n := -1
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			b.Fatal(err)
		}
		if len(line) <= 2 {
			break
		}
		if v, ok := bytes.CutPrefix(line, []byte("Content-Length: ")); ok {
			n = 0
			for _, d := range bytes.TrimSpace(v) {
				n = n*10 + int(d-'0')
			}
		}
	}
	if n < 0 {
		b.Fatal("no Content-Length")
	}
	if _, err := io.ReadFull(br, buf[:n]); err != nil {
		b.Fatal(err)
	}
}

// benchServe measures one call through the whole server over a unix
// socket, as dockerd sends it. It uses only Serve and Handler, so the same
// file measures older servers too.
func benchServe(b *testing.B, path string, body []byte) {
	sock, _ := servePlugin(b, Options{Drain: time.Second})
	c, br := dial(b, sock)
	call := rawCall(path, body)
	buf := make([]byte, 64<<10)
	benchCall(b, c, br, call, buf)
	b.SetBytes(int64(len(call)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		benchCall(b, c, br, call, buf)
	}
}

func BenchmarkServeAuthZReqRead(b *testing.B) {
	body := dockerdCall(b, authorization.Request{RequestMethod: "GET", RequestURI: "/v1.41/containers/json",
		RequestHeaders: map[string]string{"User-Agent": "Docker-Client/28.2.2 (linux)", "Accept": "*/*"}})
	benchServe(b, "/AuthZPlugin.AuthZReq", body)
}

func BenchmarkServeAuthZRes(b *testing.B) {
	body := dockerdCall(b, authorization.Request{RequestMethod: "GET", RequestURI: "/v1.41/containers/json",
		RequestHeaders: map[string]string{"User-Agent": "Docker-Client/28.2.2 (linux)", "Accept": "*/*"}, ResponseStatusCode: 200,
		ResponseHeaders: map[string]string{"Api-Version": "1.41", "Content-Type": "application/json"}, ResponseBody: bytes.Repeat([]byte(`{"Id":"x"},`), 200)})
	benchServe(b, "/AuthZPlugin.AuthZRes", body)
}

// The largest response dockerd forwards: its 64 KiB buffer, base64.
func BenchmarkServeAuthZRes64KiB(b *testing.B) {
	body := dockerdCall(b, authorization.Request{RequestMethod: "GET", RequestURI: "/v1.41/images/json", ResponseStatusCode: 200,
		ResponseBody: bytes.Repeat([]byte("x"), 64<<10)})
	benchServe(b, "/AuthZPlugin.AuthZRes", body)
}

// The largest request body dockerd forwards (29.3.1 and later).
func BenchmarkServeAuthZReq4MiBBody(b *testing.B) {
	body := dockerdCall(b, authorization.Request{RequestMethod: "POST", RequestURI: "/v1.41/containers/create",
		RequestHeaders: map[string]string{"Content-Type": "application/json"}, RequestBody: bytes.Repeat([]byte("x"), 4<<20)})
	benchServe(b, "/AuthZPlugin.AuthZReq", body)
}
