// Command burst measures an authorization plugin's memory: its resident
// set when idle, and its peak under a burst of large calls sent straight to
// its socket, as no dockerd ever sends them (dockerd forwards request
// bodies under 1 MiB, 4 MiB from 29.3.1).
//
// It reads VmRSS and VmHWM from /proc/PID/status. VmHWM is the peak over
// the process's life, so run it on a plugin that has only been idle or
// under the overhead load; the load itself shows up in "peak before".
//
//	burst --socket /run/docker/plugins/x.sock --pid 1234 --calls 32 --size 14MiB
package main

import (
	"bufio"
	"bytes"
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

func main() {
	log.SetFlags(0)
	log.SetPrefix("burst: ")
	socket := flag.String("socket", "", "the plugin's unix socket")
	pid := flag.Int("pid", 0, "the plugin's process ID")
	label := flag.String("label", "plugin", "name to print")
	calls := flag.Int("calls", 32, "concurrent calls")
	sizeMiB := flag.Int("size-mib", 14, "size of each call in MiB")
	flag.Parse()
	if *socket == "" || *pid <= 0 || *calls < 1 || *calls > 256 || *sizeMiB < 1 || *sizeMiB > 64 {
		flag.Usage()
		os.Exit(2)
	}
	rss0, hwm0, err := memory(*pid)
	if err != nil {
		log.Fatal(err)
	}
	// A DELETE with a body of base64 'A's: a destructive call, so any
	// plugin must read it (or refuse it) rather than allow it unread.
	size := *sizeMiB << 20
	prefix := `{"RequestMethod":"DELETE","RequestUri":"/v1.41/images/x","RequestBody":"`
	body := make([]byte, 0, size)
	body = append(body, prefix...)
	body = append(body, bytes.Repeat([]byte("A"), size-len(prefix)-2)...)
	body = append(body, `"}`...)

	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, *calls)
	allowed := make([]bool, *calls)
	for i := range *calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			allowed[i], errs[i] = call(*socket, body)
		}()
	}
	wg.Wait()
	took := time.Since(start)
	rss1, hwm1, err := memory(*pid)
	if err != nil {
		log.Fatal(err)
	}
	failed, nAllowed := 0, 0
	var last error
	for i, e := range errs {
		if e != nil {
			failed++
			last = e
		}
		if allowed[i] {
			nAllowed++
		}
	}
	fmt.Printf("%-8s idle RSS %5.1f MiB  peak before %6.1f MiB  %d×%d MiB calls in %5.2fs: peak %6.1f MiB, RSS after %6.1f MiB",
		*label, mib(rss0), mib(hwm0), *calls, *sizeMiB, took.Seconds(), mib(hwm1), mib(rss1))
	if nAllowed > 0 {
		fmt.Printf("  (%d allowed)", nAllowed)
	}
	if failed > 0 {
		fmt.Printf("  (%d calls failed, last: %v)", failed, last)
	}
	fmt.Println()
	if failed > 0 {
		os.Exit(1)
	}
}

func mib(kib int64) float64 { return float64(kib) / 1024 }

// call sends one AuthZReq and reads the answer, reporting whether it
// allowed the call (the do-nothing plugin does).
func call(socket string, body []byte) (bool, error) {
	c, err := net.DialTimeout("unix", socket, 5*time.Second)
	if err != nil {
		return false, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
	go func() {
		fmt.Fprintf(c, "POST /AuthZPlugin.AuthZReq HTTP/1.1\r\nHost: plugin\r\nContent-Length: %d\r\n\r\n", len(body))
		_, _ = c.Write(body)
	}()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return false, err
	}
	if resp.StatusCode != http.StatusOK {
		return false, nil // dockerd takes any other status as a deny
	}
	return bytes.Contains(b, []byte(`"Allow":true`)), nil
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
	return rss, hwm, nil
}
