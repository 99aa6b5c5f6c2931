package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// policyDecider refuses image prunes and DELETEs, allows the rest, and
// remembers what it was asked.
type policyDecider struct {
	mu    sync.Mutex
	asked []Request
}

func (d *policyDecider) Decide(_ context.Context, r Request) Verdict {
	d.mu.Lock()
	d.asked = append(d.asked, r)
	d.mu.Unlock()
	switch {
	case strings.Contains(r.URI, "/images/prune"), r.Method == "DELETE":
		return Verdict{Message: "prune-guard: refused by the test (rule test)"}
	case r.GRPC != nil && strings.HasSuffix(r.URI, "/Prune"):
		return Verdict{Message: "prune-guard: gRPC prune refused by the test"}
	}
	return Verdict{Allow: true}
}

func (d *policyDecider) requests() []Request {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]Request(nil), d.asked...)
}

// goEngine is a Go net/http server on a unix socket standing for dockerd:
// the same server code reads the requests the proxy forwards.
func goEngine(t testing.TB, h http.Handler) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "engine.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sock
}

// engineMux answers like a small dockerd.
func engineMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /containers/json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `[{"Id":"c1"}]`+"\n")
	})
	mux.HandleFunc("POST /images/prune", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"ImagesDeleted":null}`)
	})
	// /echo returns the body's length and SHA-256, read while it writes
	// (full duplex, as the build route does on 29.5).
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		_ = http.NewResponseController(w).EnableFullDuplex()
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, "reading\n")
		w.(http.Flusher).Flush()
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		fmt.Fprintf(w, "%d %x %v\n", n, h.Sum(nil), err)
	})
	// /stream writes a line every time it is asked, as logs -f does.
	mux.HandleFunc("GET /stream", func(w http.ResponseWriter, r *http.Request) {
		for i := range 3 {
			fmt.Fprintf(w, "line %d\n", i)
			w.(http.Flusher).Flush()
			time.Sleep(20 * time.Millisecond)
		}
	})
	// /attach hijacks as dockerd does: 101 with Upgrade, 200 and a
	// stream that lasts until the connection closes without; it echoes
	// stdin upper-cased and half-closes when stdin ends.
	mux.HandleFunc("POST /attach", func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		if _, upgrade := r.Header["Upgrade"]; upgrade {
			io.WriteString(conn, "HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
		} else {
			io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\n")
		}
		in, _ := io.ReadAll(brw)
		io.WriteString(conn, strings.ToUpper(string(in)))
		conn.(*net.UnixConn).CloseWrite()
		io.Copy(io.Discard, conn)
	})
	return mux
}

func newClient(sock string) *http.Client {
	return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		MaxIdleConnsPerHost: 4,
	}}
}

func dialRaw(t testing.TB, sock string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

func TestReadsPassAndRefusalsGetDockerdsAnswer(t *testing.T) {
	d := &policyDecider{}
	sock := serveProxy(t, d, goEngine(t, engineMux()))
	c := newClient(sock)
	resp, err := c.Get("http://docker/containers/json")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != `[{"Id":"c1"}]`+"\n" {
		t.Errorf("GET = %d %q", resp.StatusCode, b)
	}
	resp, err = c.Post("http://docker/images/prune?filters=%7B%7D", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	want := `{"message":"authorization denied by plugin prune-guard: prune-guard: refused by the test (rule test)"}` + "\n"
	if resp.StatusCode != http.StatusForbidden || string(b) != want || resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("refused prune = %d %q %q; want 403 %q", resp.StatusCode, resp.Header.Get("Content-Type"), b, want)
	}
	// The kept connection serves the next request after a refusal.
	if resp, err := c.Get("http://docker/containers/json"); err != nil || resp.StatusCode != 200 {
		t.Errorf("GET after a refusal: %v %v", resp, err)
	}
}

// Every request on a kept connection is decided, pipelined ones included,
// and answered in order.
func TestEveryRequestOnAKeptConnectionIsDecided(t *testing.T) {
	d := &policyDecider{}
	sock := serveProxy(t, d, goEngine(t, engineMux()))
	c, br := dialRaw(t, sock)
	reqs := "GET /containers/json HTTP/1.1\r\nHost: d\r\n\r\n" +
		"POST /images/prune HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\n\r\n" +
		"GET /containers/json HTTP/1.1\r\nHost: d\r\n\r\n"
	if _, err := io.WriteString(c, reqs); err != nil {
		t.Fatal(err)
	}
	for i, want := range []int{200, 403, 200} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != want {
			t.Errorf("answer %d = %d, want %d", i, resp.StatusCode, want)
		}
	}
	if n := len(d.requests()); n != 3 {
		t.Errorf("the decider was asked %d times, want 3", n)
	}
}

// Bodies stream through whole and unbuffered, Content-Length or chunked,
// while the engine writes its answer (full duplex).
func TestBodiesStreamWholeInFullDuplex(t *testing.T) {
	sock := serveProxy(t, &policyDecider{}, goEngine(t, engineMux()))
	c := newClient(sock)
	body := bytes.Repeat([]byte("0123456789abcdef"), 4<<20/16+3)
	sum := fmt.Sprintf("%d %x <nil>\n", len(body), sha256.Sum256(body))
	for name, r := range map[string]io.Reader{
		"content-length": bytes.NewReader(body),
		"chunked":        io.MultiReader(bytes.NewReader(body)), // no length known: chunked
	} {
		t.Run(name, func(t *testing.T) {
			resp, err := c.Post("http://docker/echo", "application/x-tar", r)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != "reading\n"+sum {
				t.Errorf("echo = %q, want %q", b, "reading\n"+sum)
			}
		})
	}
}

// A stream's pieces reach the client as the engine writes them.
func TestStreamsArePassedOnAtOnce(t *testing.T) {
	sock := serveProxy(t, &policyDecider{}, goEngine(t, engineMux()))
	resp, err := newClient(sock).Get("http://docker/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil || line != "line 0\n" {
		t.Fatalf("first line %q %v", line, err)
	}
	rest, _ := io.ReadAll(br)
	if string(rest) != "line 1\nline 2\n" {
		t.Errorf("rest %q", rest)
	}
}

// Attach and exec hijack the connection: stdin's end reaches the engine as
// a half-close while the output still comes back, with and without
// Upgrade.
func TestHijacksPassAHalfCloseOn(t *testing.T) {
	sock := serveProxy(t, &policyDecider{}, goEngine(t, engineMux()))
	for _, upgrade := range []bool{true, false} {
		t.Run(fmt.Sprintf("upgrade=%v", upgrade), func(t *testing.T) {
			c, br := dialRaw(t, sock)
			head := "POST /attach HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\n"
			if upgrade {
				head += "Connection: Upgrade\r\nUpgrade: tcp\r\n"
			}
			io.WriteString(c, head+"\r\n")
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			if want := map[bool]int{true: 101, false: 200}[upgrade]; resp.StatusCode != want {
				t.Fatalf("status %d, want %d", resp.StatusCode, want)
			}
			io.WriteString(c, "hello stdin")
			c.(*net.UnixConn).CloseWrite()
			out, _ := io.ReadAll(br)
			if string(out) != "HELLO STDIN" {
				t.Errorf("output %q", out)
			}
		})
	}
}

// A malformed request gets a 400 that says why and loses only its own
// connection.
func TestMalformedRequestsGet400AndCloseOnlyTheirConnection(t *testing.T) {
	sock := serveProxy(t, &policyDecider{}, goEngine(t, engineMux()))
	other, otherBR := dialRaw(t, sock)
	for name, raw := range map[string]string{
		"bare LF":                 "GET /containers/json HTTP/1.1\nHost: d\n\n",
		"two lengths":             "POST /echo HTTP/1.1\r\nHost: d\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
		"length and chunked":      "POST /echo HTTP/1.1\r\nHost: d\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"no host":                 "GET /containers/json HTTP/1.1\r\n\r\n",
		"folded header":           "GET /containers/json HTTP/1.1\r\nHost: d\r\nX: a\r\n b\r\n\r\n",
		"gzip transfer encoding":  "POST /echo HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
		"HTTP/0.9 style":          "GET /\r\n\r\n",
		"space in the target":     "GET /a b HTTP/1.1\r\nHost: d\r\n\r\n",
		"chunked in HTTP/1.0":     "POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"signed content length":   "POST /echo HTTP/1.1\r\nHost: d\r\nContent-Length: +1\r\n\r\nx",
		"control in header value": "GET /containers/json HTTP/1.1\r\nHost: d\r\nX: a\x01b\r\n\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			c, br := dialRaw(t, sock)
			io.WriteString(c, raw)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("no answer: %v", err)
			}
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 400 || !resp.Close || !strings.Contains(string(b), "malformed request refused") {
				t.Errorf("%d close=%v %q; want a 400 that closes and says why", resp.StatusCode, resp.Close, b)
			}
		})
	}
	io.WriteString(other, "GET /containers/json HTTP/1.1\r\nHost: d\r\n\r\n")
	if resp, err := http.ReadResponse(otherBR, nil); err != nil || resp.StatusCode != 200 {
		t.Errorf("another connection after the malformed ones: %v %v", resp, err)
	}
}

// With the engine down every request gets an answer that says so, and the
// proxy serves again as soon as the engine is back.
func TestEngineDownIsAClearErrorAndRecovers(t *testing.T) {
	dir := t.TempDir()
	engine := filepath.Join(dir, "engine.sock")
	sock := serveProxy(t, &policyDecider{}, engine)
	c := newClient(sock)
	resp, err := c.Get("http://docker/containers/json")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var m struct{ Message string }
	if resp.StatusCode != http.StatusBadGateway || json.Unmarshal(b, &m) != nil || !strings.Contains(m.Message, "does not answer") {
		t.Errorf("engine down: %d %q", resp.StatusCode, b)
	}
	l, err := net.Listen("unix", engine)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: engineMux()}
	go srv.Serve(l)
	defer srv.Close()
	if resp, err := c.Get("http://docker/containers/json"); err != nil || resp.StatusCode != 200 {
		t.Errorf("after the engine came back: %v %v", resp, err)
	}
}

// A client that stops reading a stream holds only its own connection.
func TestAClientThatStopsReadingHoldsUpNoOther(t *testing.T) {
	mux := engineMux()
	big := bytes.Repeat([]byte("x"), 1<<20)
	mux.HandleFunc("GET /flood", func(w http.ResponseWriter, r *http.Request) {
		for r.Context().Err() == nil {
			if _, err := w.Write(big); err != nil {
				return
			}
		}
	})
	sock := serveProxy(t, &policyDecider{}, goEngine(t, mux))
	stuck, _ := dialRaw(t, sock)
	io.WriteString(stuck, "GET /flood HTTP/1.1\r\nHost: d\r\n\r\n")
	// The stuck client reads nothing; others go on.
	c := newClient(sock)
	for i := range 20 {
		if resp, err := c.Get("http://docker/containers/json"); err != nil || resp.StatusCode != 200 {
			t.Fatalf("request %d beside a stuck stream: %v %v", i, resp, err)
		} else {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
}

// Connections come and go without leaving goroutines behind.
func TestManyConnectionsLeaveNoGoroutines(t *testing.T) {
	sock := serveProxy(t, &policyDecider{}, goEngine(t, engineMux()))
	before := runtime.NumGoroutine()
	for range 2000 {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "GET /containers/json HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")
		io.Copy(io.Discard, c)
		c.Close()
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before+5 {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines before, %d after 2000 connections", before, runtime.NumGoroutine())
		}
		runtime.Gosched()
		time.Sleep(10 * time.Millisecond)
	}
}

// An answer of the proxy's own to a HEAD request (a refusal, the engine
// down) is a head with no body, as net/http answers HEAD: a body would be
// read as the next answer on the kept connection. The docker CLI pings
// with HEAD /_ping before every command.
func TestAnswersOfTheProxysOwnToHEADCarryNoBody(t *testing.T) {
	for _, tc := range []struct {
		name, engine, target string
		status, next         int
	}{
		{"refused", goEngine(t, engineMux()), "/images/prune", http.StatusForbidden, http.StatusOK},
		{"engine down", filepath.Join(t.TempDir(), "gone.sock"), "/_ping", http.StatusBadGateway, http.StatusBadGateway},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, br := dialRaw(t, serveProxy(t, &policyDecider{}, tc.engine))
			io.WriteString(c, "HEAD "+tc.target+" HTTP/1.1\r\nHost: d\r\n\r\nGET /containers/json HTTP/1.1\r\nHost: d\r\n\r\n")
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodHead})
			if err != nil || resp.StatusCode != tc.status || resp.Close {
				t.Fatalf("HEAD %s: %v %v; want %d on a kept connection", tc.target, resp, err, tc.status)
			}
			resp, err = http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("the answer after HEAD's: %v (HEAD's answer carried a body?)", err)
			}
			io.Copy(io.Discard, resp.Body)
			if resp.StatusCode != tc.next {
				t.Errorf("the answer after HEAD's = %d, want %d", resp.StatusCode, tc.next)
			}
		})
	}
}

// A client that leaves while the engine streams nothing (docker events, logs
// -f of a quiet container) is noticed at once: the engine sees its end, as
// it would without the proxy, and ends the stream, so that neither the
// engine's handler nor the proxy's connections wait for a write that may
// never come. A client that only half-closes still gets the stream's end.
func TestAClientThatLeavesAQuietStreamEndsItAtTheEngine(t *testing.T) {
	for _, half := range []bool{false, true} {
		t.Run(fmt.Sprintf("half-close=%v", half), func(t *testing.T) {
			mux := engineMux()
			ended := make(chan struct{})
			mux.HandleFunc("GET /events", func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusOK)
				w.(http.Flusher).Flush()
				<-r.Context().Done() // as dockerd's events route: only the client's end stops it
				close(ended)
			})
			c, br := dialRaw(t, serveProxy(t, &policyDecider{}, goEngine(t, mux)))
			io.WriteString(c, "GET /events HTTP/1.1\r\nHost: d\r\n\r\n")
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("GET /events: %v %v", resp, err)
			}
			if half {
				c.(*net.UnixConn).CloseWrite()
			} else {
				c.Close()
			}
			select {
			case <-ended:
			case <-time.After(10 * time.Second):
				t.Fatal("the engine's stream still runs 10 s after its client left")
			}
			if half {
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				if _, err := io.Copy(io.Discard, resp.Body); err != nil {
					t.Errorf("the half-closed client did not get the stream's end: %v", err)
				}
			}
		})
	}
}

// Shutting down cuts off, once the drain bound has passed, the exchanges
// that wait on the engine with their client still there (a stream the
// engine keeps open whatever the client does, an attach to a quiet
// container), and Serve returns.
func TestShutdownCutsOffExchangesThatWaitOnTheEngine(t *testing.T) {
	mux := engineMux()
	release := make(chan struct{})
	mux.HandleFunc("GET /quiet", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		<-release // deaf to the client's end
	})
	engine := goEngine(t, mux)
	t.Cleanup(func() { close(release) }) // before the engine's cleanup
	sock := filepath.Join(t.TempDir(), "proxy.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	const drain = 200 * time.Millisecond
	s := New(&policyDecider{}, Options{Engine: engine, Drain: drain})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()

	for _, head := range []string{
		"GET /quiet HTTP/1.1\r\nHost: d\r\n\r\n",
		"POST /attach HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n",
	} {
		c, br := dialRaw(t, sock)
		io.WriteString(c, head)
		if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode/100 > 2 {
			t.Fatalf("%q: %v %v", head, resp, err)
		}
	}
	cancel()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "cut off") {
			t.Errorf("Serve = %v; want it to say requests in flight were cut off", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("Serve still waits 10 s after shutdown began (drain bound %v)", drain)
	}
}
