package main

import (
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// sink serves a unix socket that reads every body to its end and answers
// with answer; it counts the bytes it read.
func sink(t *testing.T, answer string) (string, *atomic.Int64) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var got atomic.Int64
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TransferEncoding) == 0 || r.TransferEncoding[0] != "chunked" {
			http.Error(w, "want a chunked body", http.StatusBadRequest)
			return
		}
		n, _ := io.Copy(io.Discard, r.Body)
		got.Add(n)
		io.WriteString(w, answer)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sock, &got
}

func TestRunStreamsEveryBody(t *testing.T) {
	sock, got := sink(t, `{"stream":"Loaded image: x:1\n"}`)
	file := filepath.Join(t.TempDir(), "body")
	if err := os.WriteFile(file, []byte(strings.Repeat("x", 100<<10)), 0o600); err != nil {
		t.Fatal(err)
	}
	o := options{socket: sock, pid: os.Getpid(), label: "t", file: file, path: "/images/load", calls: 4, timeout: time.Minute}
	if err := run(o); err != nil {
		t.Fatal(err)
	}
	if want := int64(4 * 100 << 10); got.Load() != want {
		t.Errorf("the server read %d bytes, want %d", got.Load(), want)
	}
}

func TestRunFailsOnAnErrorInTheStream(t *testing.T) {
	sock, _ := sink(t, `{"errorDetail":{"message":"unexpected EOF"},"error":"unexpected EOF"}`)
	file := filepath.Join(t.TempDir(), "body")
	if err := os.WriteFile(file, []byte("not a tar"), 0o600); err != nil {
		t.Fatal(err)
	}
	o := options{socket: sock, pid: os.Getpid(), label: "t", file: file, path: "/images/load", calls: 2, timeout: time.Minute}
	if err := run(o); err == nil || !strings.Contains(err.Error(), "2 of 2 requests failed") {
		t.Errorf("run = %v, want both requests failed", err)
	}
}

func TestMemoryAndCPUTimeOfSelf(t *testing.T) {
	rss, hwm, err := memory(os.Getpid())
	if err != nil || rss <= 0 || hwm < rss {
		t.Errorf("memory(self) = %d, %d, %v", rss, hwm, err)
	}
	start := time.Now()
	for x := 0; time.Since(start) < 50*time.Millisecond; x++ {
		_ = x * x
	}
	if cpu, err := cpuTime(os.Getpid()); err != nil || cpu <= 0 {
		t.Errorf("cpuTime(self) = %v, %v", cpu, err)
	}
	if _, _, err := memory(1 << 30); err == nil {
		t.Error("memory of a missing process succeeded")
	}
}
