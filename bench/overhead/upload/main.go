// Command upload measures a proxy's memory under large request bodies: it
// streams one file as the body of --calls concurrent requests (by default
// POST /images/load, as `docker load` sends it: chunked) through a unix
// socket, and reads the proxy's VmRSS and VmHWM from /proc/PID/status
// before, during (sampled) and after.
//
// VmHWM is the peak over the process's life, so before the burst it is
// reset to the current RSS (writing 5 to /proc/PID/clear_refs, as root):
// the peak printed is the burst's own. If the reset fails, it says so and
// the peak includes whatever came before.
//
//	upload --socket /tmp/p.sock --pid 1234 --calls 32 --file image.tar
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

type options struct {
	socket, label, file, path string
	pid, calls                int
	sized                     bool
	timeout                   time.Duration
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("upload: ")
	var o options
	flag.StringVar(&o.socket, "socket", "", "the unix socket to send the requests to (the proxy's)")
	flag.IntVar(&o.pid, "pid", 0, "the process ID whose memory to report (the proxy's)")
	flag.StringVar(&o.label, "label", "proxy", "name to print")
	flag.IntVar(&o.calls, "calls", 32, "concurrent requests")
	flag.StringVar(&o.file, "file", "", "the body of every request, read from disk for each (an image tar for /images/load)")
	flag.StringVar(&o.path, "path", "/v1.41/images/load?quiet=1", "API `path` to POST to")
	flag.BoolVar(&o.sized, "sized", false, "send a Content-Length instead of a chunked body")
	flag.DurationVar(&o.timeout, "timeout", 5*time.Minute, "bound on the whole burst")
	flag.Parse()
	if o.socket == "" || o.pid <= 0 || o.file == "" || o.calls < 1 || o.calls > 256 || !strings.HasPrefix(o.path, "/") {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(o); err != nil {
		log.Fatal(err)
	}
}

func run(o options) error {
	fi, err := os.Stat(o.file)
	if err != nil {
		return err
	}
	rss0, _, err := memory(o.pid)
	if err != nil {
		return err
	}
	reset := "peak since the burst began"
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", o.pid), []byte("5"), 0); err != nil {
		reset = fmt.Sprintf("peak over the process's life (could not reset VmHWM: %v)", err)
	}

	stop := make(chan struct{})
	sampled := make(chan int64, 1)
	go func() { sampled <- sampleRSS(o.pid, stop) }()

	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	cpu0, err := cpuTime(o.pid)
	if err != nil {
		return err
	}
	start := time.Now()
	errs := make([]error, o.calls)
	var wg sync.WaitGroup
	for i := range o.calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = call(ctx, o)
		}()
	}
	wg.Wait()
	took := time.Since(start)
	close(stop)
	maxRSS := <-sampled
	rss1, hwm1, err := memory(o.pid)
	if err != nil {
		return err
	}
	cpu1, err := cpuTime(o.pid)
	if err != nil {
		return err
	}

	total := float64(fi.Size()) * float64(o.calls)
	fmt.Printf("%-8s %d×%.0f MiB %s bodies in %.1fs (%.0f MB/s; its CPU: %.2fs, %.2f ms per MB): RSS before %.1f MiB, %s (VmHWM) %.1f MiB, highest RSS sampled %.1f MiB, RSS after %.1f MiB\n",
		o.label, o.calls, float64(fi.Size())/(1<<20), framing(o.sized), took.Seconds(), total/1e6/took.Seconds(),
		(cpu1 - cpu0).Seconds(), float64((cpu1-cpu0).Milliseconds())/(total/1e6),
		mib(rss0), reset, mib(hwm1), mib(maxRSS), mib(rss1))
	var failed []error
	for _, e := range errs {
		if e != nil {
			failed = append(failed, e)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%s: %d of %d requests failed; the first: %w", o.label, len(failed), o.calls, failed[0])
	}
	return nil
}

func framing(sized bool) string {
	if sized {
		return "sized"
	}
	return "chunked"
}

// call sends the file as one request's body, on a connection of its own,
// and reads the whole answer. docker load answers 200 and reports a
// failure in its JSON stream, so an "errorDetail" there is a failure too.
func call(ctx context.Context, o options) error {
	f, err := os.Open(o.file)
	if err != nil {
		return err
	}
	defer f.Close()
	var body io.Reader = struct{ io.Reader }{f} // hides the size: chunked
	if o.sized {
		body = f
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://docker"+o.path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-tar")
	if o.sized {
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		req.ContentLength = fi.Size()
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", o.socket)
		},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("reading the answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK || bytes.Contains(answer, []byte(`"errorDetail"`)) {
		return fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(clip(answer)))
	}
	return nil
}

func clip(b []byte) []byte {
	if len(b) > 300 {
		return b[:300]
	}
	return b
}

// sampleRSS reads pid's VmRSS every 10ms until stop closes, and returns
// the highest seen.
func sampleRSS(pid int, stop <-chan struct{}) int64 {
	var highest int64
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if rss, _, err := memory(pid); err == nil {
			highest = max(highest, rss)
		}
		select {
		case <-stop:
			return highest
		case <-t.C:
		}
	}
}

func mib(kib int64) float64 { return float64(kib) / 1024 }

// cpuTime returns the user plus system CPU time pid has used so far, all
// its threads included: utime and stime, the 14th and 15th fields of
// /proc/PID/stat, in USER_HZ ticks (100 a second on Linux).
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("reading CPU time: %w", err)
	}
	// The command name (field 2) may hold spaces and parentheses; the
	// fields after the last ')' start with field 3.
	i := bytes.LastIndexByte(b, ')')
	fields := strings.Fields(string(b[i+1:]))
	if i < 0 || len(fields) < 13 {
		return 0, fmt.Errorf("parsing /proc/%d/stat: unexpected format", pid)
	}
	var total time.Duration
	for _, f := range fields[11:13] {
		ticks, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parsing /proc/%d/stat: %w", pid, err)
		}
		total += time.Duration(ticks) * 10 * time.Millisecond
	}
	return total, nil
}

// memory returns VmRSS and VmHWM of pid, in KiB.
func memory(pid int) (rss, hwm int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("reading memory: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		name, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch name {
		case "VmRSS":
			rss = n
		case "VmHWM":
			hwm = n
		}
	}
	if rss == 0 {
		return 0, 0, errors.New("no VmRSS in /proc/" + strconv.Itoa(pid) + "/status")
	}
	return rss, hwm, nil
}
