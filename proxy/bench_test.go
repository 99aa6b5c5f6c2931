package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// allowAll allows everything.
type allowAll struct{}

func (allowAll) Decide(context.Context, Request) Verdict { return Verdict{Allow: true} }

// fixedEngine answers every request on a connection with the same small
// JSON response, as fast as it can: what the proxy costs shows on its own.
func fixedEngine(tb testing.TB) string {
	tb.Helper()
	sock := filepath.Join(tb.TempDir(), "engine.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { l.Close() })
	body := `[{"Id":"0123456789abcdef","Names":["/c1"],"Image":"bb:1","State":"created"}]` + "\n"
	resp := fmt.Sprintf("HTTP/1.1 200 OK\r\nApi-Version: 1.51\r\nContent-Type: application/json\r\nDate: Fri, 04 Dec 2026 15:00:00 GMT\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					if _, err := readHead(br, new([]byte)); err != nil {
						return
					}
					if _, err := io.WriteString(c, resp); err != nil {
						return
					}
				}
			}()
		}
	}()
	return sock
}

// serveProxy serves a proxy in front of engine on a fresh socket.
func serveProxy(tb testing.TB, d Decider, engine string) string {
	tb.Helper()
	sock := filepath.Join(tb.TempDir(), "proxy.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		tb.Fatal(err)
	}
	s := New(d, Options{Engine: engine, Headers: []string{"Content-Type", "Content-Length"}, Drain: time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	tb.Cleanup(func() { cancel(); <-done })
	return sock
}

// BenchmarkKeptConnectionGET measures one GET /containers/json through the
// proxy on a kept connection, the call every docker ps makes.
func BenchmarkKeptConnectionGET(b *testing.B) {
	for _, via := range []string{"engine", "proxy"} {
		b.Run(via, func(b *testing.B) {
			sock := fixedEngine(b)
			if via == "proxy" {
				sock = serveProxy(b, allowAll{}, sock)
			}
			c, err := net.Dial("unix", sock)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			br := bufio.NewReader(c)
			req := []byte("GET /v1.51/containers/json HTTP/1.1\r\nHost: api.moby.localhost\r\nUser-Agent: Docker-Client/28.5.2 (linux)\r\n\r\n")
			var long []byte
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Write(req); err != nil {
					b.Fatal(err)
				}
				head, err := readHead(br, &long)
				if err != nil {
					b.Fatal(err)
				}
				r, err := parseResponseHead(head, false)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := br.Discard(int(r.length)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
