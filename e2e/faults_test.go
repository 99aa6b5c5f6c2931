package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/internal/enginetest"
)

// An engine that hangs or hangs up must not hang docker: a decision that
// needs the engine gives up after --engine-timeout and denies with a reason
// that says the state is unknown; decisions that need no engine, reads
// above all, are unaffected; and when the engine answers again the plugin
// uses it at once, without a restart.
func TestUnreachableOrSlowEngineDeniesDestructiveRequestsInBoundedTimeAndRecovers(t *testing.T) {
	t.Parallel()
	const timeout = time.Second
	// Past the timeout the plugin answers; the rest is dockerd, the plugin
	// round trip and a busy 2-core machine.
	const bound = timeout + 3*time.Second
	fake := startFakeEngine(t)
	e, _ := enginetest.StartGuarded(t, enginetest.Options{PluginArgs: []string{"--docker-host", fake.host(), "--engine-timeout", timeout.String()}})
	fake.upstream.Store(e.Socket())
	a := newAPI(t, e)
	victim := "pg-fault-victim:1"
	a.importImage(victim)

	timed := func(r wireReq) (wireResp, time.Duration) {
		start := time.Now()
		rs := send(t, e, r)
		return rs[0], time.Since(start)
	}

	for _, mode := range []string{"hang", "close"} {
		t.Run("engine that does "+mode, func(t *testing.T) {
			fake.set(mode)
			dangling := a.importImage("")

			r, took := timed(post("/v1.41/images/prune?"+pruneDangling, cliHeaders...))
			msg, denied := denialOf(r)
			if !denied || !strings.Contains(msg, "run state is unknown") {
				t.Errorf("dangling prune with the engine %s: %d %q; want a denial saying the run state is unknown", mode, r.status, r.body)
			}
			if took > bound {
				t.Errorf("dangling prune took %v to be denied; want within %v", took, bound)
			}
			t.Logf("dangling prune denied in %v: %s", took.Round(time.Millisecond), msg)

			r, took = timed(del("/v1.41/images/" + victim))
			msg, denied = denialOf(r)
			if !denied || !(strings.Contains(msg, "unknown") || strings.Contains(msg, "cannot tell")) {
				t.Errorf("image delete with the engine %s: %d %q; want a denial saying what is unknown", mode, r.status, r.body)
			}
			if took > bound {
				t.Errorf("image delete took %v to be denied; want within %v", took, bound)
			}
			t.Logf("image delete denied in %v: %s", took.Round(time.Millisecond), msg)

			// Decided by the request alone: no engine question, no wait.
			r, took = timed(post("/v1.41/images/prune?"+pruneAll, cliHeaders...))
			if msg, denied := denialOf(r); !denied || !strings.Contains(msg, "(rule no-prune-all)") || took > timeout {
				t.Errorf("image prune -a with the engine %s: %d %q in %v; want no-prune-all at once", mode, r.status, r.body, took)
			}
			// Everything else passes at once.
			for _, req := range []wireReq{
				{method: "GET", target: "/v1.41/containers/json?all=1"},
				{method: "GET", target: "/v1.41/images/json"},
				withBody(post("/v1.41/containers/create?name=pg-fault-"+mode, jsonCT), `{"Image":"`+victim+`","Cmd":["/none"]}`),
				del("/v1.41/containers/pg-fault-" + mode),
			} {
				r, took := timed(req)
				if r.status/100 != 2 || took > timeout {
					t.Errorf("%s %s with the engine %s: %d %q in %v; want it through at once", req.method, req.target, mode, r.status, r.body, took)
				}
			}
			if !a.imageExists(victim) || !a.imageExists(dangling) {
				t.Errorf("a denied request removed an image")
			}
		})
	}

	t.Run("engine answering again", func(t *testing.T) {
		fake.set("proxy")
		r, took := timed(post("/v1.41/images/prune?"+pruneDangling, cliHeaders...))
		if r.status != http.StatusOK {
			t.Fatalf("dangling prune after the engine came back: %d %q; want it allowed without restarting the plugin", r.status, r.body)
		}
		t.Logf("first decision after the engine came back: allowed in %v", took.Round(time.Millisecond))
		if r, _ := timed(del("/v1.41/images/" + victim)); r.status != http.StatusOK {
			t.Fatalf("image delete after the engine came back: %d %q", r.status, r.body)
		}
		if a.imageExists(victim) {
			t.Errorf("%s still exists after its delete was allowed", victim)
		}
	})
}

// restartSample is one docker call made while the plugin restarts.
type restartSample struct {
	start, end time.Time
	status     int
	body       string // of an answer other than 200
	err        error
}

// Kill the plugin while docker calls are in flight and start it again after
// a supervisor's delay: measure what the calls see. dockerd retries a plugin
// call that fails with backoff (1 s, 2 s, 4 s ... up to 30 s), so without
// socket activation calls stall for a whole backoff step; with socket
// activation the socket outlives the process and calls made during the
// restart wait in its backlog for exactly as long as the restart takes.
// (A call in flight when the process is SIGKILLed fails mid-way and waits
// out dockerd's first backoff step either way; SIGTERM lets it finish.)
func TestPluginRestartWindowAndSocketActivation(t *testing.T) {
	t.Parallel()
	const restartDelay = 300 * time.Millisecond
	for _, tc := range []struct {
		name      string
		activated bool
		sig       syscall.Signal
	}{
		{"own socket, SIGKILL", false, syscall.SIGKILL},
		{"socket activation, SIGKILL", true, syscall.SIGKILL},
		// systemctl restart: SIGTERM, in-flight calls drain.
		{"socket activation, SIGTERM", true, syscall.SIGTERM},
	} {
		name, activated := tc.name, tc.activated
		t.Run(name, func(t *testing.T) {
			fake := startFakeEngine(t)
			p := newServedPlugin(t, activated, "--docker-host", fake.host(), "--audit-log", filepath.Join(t.TempDir(), "audit.jsonl"))
			p.start()
			e := enginetest.Start(t, enginetest.Options{ExtraArgs: []string{"--authorization-plugin=" + p.name}})
			fake.upstream.Store(e.Socket())

			c := &http.Client{Timeout: time.Minute, Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, "unix", e.Socket())
				},
				MaxIdleConnsPerHost: 8,
			}}
			var (
				mu      sync.Mutex
				samples []restartSample
			)
			ctx, stop := context.WithCancel(context.Background())
			defer stop()
			var wg sync.WaitGroup
			for range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for ctx.Err() == nil {
						s := restartSample{start: time.Now()}
						resp, err := c.Get("http://docker/v1.41/version")
						if err == nil {
							b, _ := io.ReadAll(resp.Body)
							resp.Body.Close()
							s.status = resp.StatusCode
							if s.status != http.StatusOK {
								s.body = strings.TrimSpace(string(b))
							}
						}
						s.end, s.err = time.Now(), err
						mu.Lock()
						samples = append(samples, s)
						mu.Unlock()
					}
				}()
			}
			// Calls flow before the kill...
			waitUntil(t, 10*time.Second, "calls through the plugin", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(samples) > 50
			})
			killedAt := time.Now()
			p.kill(tc.sig)
			time.Sleep(restartDelay) // the supervisor's restart delay: the outage being measured
			p.start()
			answering := time.Now()
			// ...and until one that started after the plugin answered again
			// has come back, plus a little.
			waitUntil(t, time.Minute, "a call to succeed after the restart", func() bool {
				mu.Lock()
				defer mu.Unlock()
				for _, s := range samples {
					if s.start.After(answering) && s.err == nil && s.status == http.StatusOK {
						return true
					}
				}
				return false
			})
			stop()
			wg.Wait()

			// A call can fail in two ways here. The first is dockerd's: it
			// retries a plugin call that broke mid-way (a call in flight on
			// the killed process, or sent on a pooled keep-alive connection
			// to it), but its plugin client (moby pkg/plugins callWithRetry)
			// resends a request body it has already read, so the retry is an
			// empty call, which prune-guard must refuse ("malformed
			// authorization call refused: decode call: EOF"). The second is
			// finding no plugin at all (connection refused, no such socket):
			// that is what socket activation removes, so with it no call may
			// fail that way. Both are counted, separately for calls in
			// flight at the kill and calls made after it.
			type tally struct{ calls, emptyRetry, other int }
			var (
				inFlight, made tally
				slowest        time.Duration
				recovered      time.Time
				errs           []string
			)
			for _, s := range samples {
				if s.end.Before(killedAt) {
					continue
				}
				tl := &made
				if s.start.Before(killedAt) {
					tl = &inFlight
				}
				tl.calls++
				switch {
				case s.err != nil:
					tl.other++
					errs = append(errs, netErrText(s.err))
				case s.status == http.StatusOK:
					if tl == &made {
						slowest = max(slowest, s.end.Sub(s.start))
						if recovered.IsZero() || s.end.Before(recovered) {
							recovered = s.end
						}
					}
				case s.status == http.StatusForbidden && strings.Contains(s.body, "decode call: EOF"):
					tl.emptyRetry++
					errs = append(errs, fmt.Sprintf("%d %s", s.status, s.body))
				default:
					tl.other++
					errs = append(errs, fmt.Sprintf("%d %s", s.status, s.body))
				}
			}
			restart := answering.Sub(killedAt)
			t.Logf("%s: plugin answering again %v after the kill (restart delay %v); first call made after the kill came back OK %v after it, slowest OK call made after it took %v; "+
				"calls made after the kill: %d, failed on dockerd's empty retry %d, failed otherwise %d; calls in flight at the kill: %d, failed on dockerd's empty retry %d, failed otherwise %d",
				name, restart.Round(time.Millisecond), restartDelay, recovered.Sub(killedAt).Round(time.Millisecond), slowest.Round(time.Millisecond),
				made.calls, made.emptyRetry, made.other, inFlight.calls, inFlight.emptyRetry, inFlight.other)
			if len(errs) > 0 {
				sort.Strings(errs)
				t.Logf("failures: %s", strings.Join(errs[:min(len(errs), 10)], "; "))
			}
			if activated {
				if made.other+inFlight.other > 0 {
					t.Errorf("with socket activation %d calls failed for want of a plugin; want every call to wait for the new process", made.other+inFlight.other)
				}
				if limit := restart + 2*time.Second; recovered.IsZero() || recovered.Sub(killedAt) > limit || slowest > limit {
					t.Errorf("with socket activation calls made during the restart took up to %v; want at most the restart (%v) plus 2 s", slowest, restart)
				}
			}
		})
	}
}

// waitUntil polls cond every 10 ms until it holds, failing t after d.
func waitUntil(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// authzCall is a plugin call's answer.
type authzCall struct {
	Allow bool
	Msg   string
	Err   string
}

// Calls that did not come from dockerd, straight to the plugin socket:
// malformed, empty, enormous. None may be allowed for a destructive route,
// none may take the plugin down, and its memory must stay bounded.
func TestMalformedEmptyAndHugeCallsAreRefusedWithoutCrashOrUnboundedMemory(t *testing.T) {
	t.Parallel()
	fake := startFakeEngine(t)
	fake.set("close") // every engine question fails at once: the state is unknown
	p := newServedPlugin(t, false, "--docker-host", fake.host(), "--engine-timeout", "1s", "--audit-log", filepath.Join(t.TempDir(), "audit.jsonl"))
	p.start()
	c := unixClient(p.sock, 2*time.Minute)

	call := func(t *testing.T, body []byte) authzCall {
		t.Helper()
		resp, err := c.Post("http://plugin/AuthZPlugin.AuthZReq", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatalf("plugin call (%d bytes): %v", len(body), err)
		}
		defer resp.Body.Close()
		var out authzCall
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &out) != nil {
			// dockerd denies on a non-200 or undecodable answer too.
			return authzCall{Msg: fmt.Sprintf("HTTP %d %.200s", resp.StatusCode, b)}
		}
		return out
	}
	callJSON := func(method, uri string, headers map[string]string, body []byte) []byte {
		b, err := json.Marshal(map[string]any{"RequestMethod": method, "RequestUri": uri, "RequestHeaders": headers, "RequestBody": body})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	manyHeaders := map[string]string{}
	for i := range 100_000 {
		manyHeaders[fmt.Sprintf("X-Pad-%d", i)] = "v"
	}
	pruneAllURI := "/v1.41/images/prune?" + pruneAll

	for _, tc := range []struct {
		name string
		body []byte
	}{
		{"empty call", nil},
		{"not JSON", []byte("DELETE /v1.41/images/base HTTP/1.1")},
		{"truncated JSON", []byte(`{"RequestMethod":"DELETE","RequestUri":"/v1.41/images/base"`)},
		{"JSON null", []byte(`null`)},
		{"method without URI", []byte(`{"RequestMethod":"DELETE"}`)},
		{"nested 100 000 deep", []byte(strings.Repeat("[", 100_000))},
		{"NUL byte in the URI", callJSON("POST", "/v1.41/images/prune\x00?"+pruneAll, nil, nil)},
		{"invalid UTF-8 in the URI", callJSON("DELETE", "/v1.41/images/\xff\xfe", nil, nil)},
		{"10 MiB body on a delete", callJSON("DELETE", "/v1.41/images/base", nil, bytes.Repeat([]byte("A"), 10<<20))},
		{"13 MiB body: past the 12 MiB call limit once base64", callJSON("DELETE", "/v1.41/images/base", nil, bytes.Repeat([]byte("A"), 13<<20))},
		{"8 MiB URI on prune -a", []byte(fmt.Sprintf(`{"RequestMethod":"POST","RequestUri":%q}`, pruneAllURI+"&pad="+strings.Repeat("x", 8<<20)))},
		{"100 000 headers on prune -a", callJSON("POST", pruneAllURI, manyHeaders, nil)},
		{"base64 that is not", []byte(`{"RequestMethod":"POST","RequestUri":"` + pruneAllURI + `","RequestBody":"!!!!"}`)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := call(t, tc.body)
			if got.Allow {
				t.Errorf("allowed (%q); a call that is malformed or names a destructive route must be denied", got.Msg)
			}
			if !p.alive() {
				t.Fatalf("the plugin died:\n%s", tailFile(p.log, 20))
			}
			t.Logf("denied: %.200s", got.Msg)
		})
	}

	t.Run("a call that stops halfway", func(t *testing.T) {
		conn, err := net.Dial("unix", p.sock)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "POST /AuthZPlugin.AuthZReq HTTP/1.1\r\nHost: plugin\r\nContent-Length: %d\r\n\r\n{\"RequestMethod\":", 10<<20)
		conn.Close()
		if !p.alive() {
			t.Fatalf("the plugin died")
		}
	})

	t.Run("still deciding", func(t *testing.T) {
		if got := call(t, callJSON("GET", "/_ping", nil, nil)); !got.Allow {
			t.Errorf("a read was denied after the malformed calls: %q", got.Msg)
		}
		if got := call(t, callJSON("POST", pruneAllURI, nil, nil)); got.Allow || !strings.Contains(got.Msg, "no-prune-all") {
			t.Errorf("prune -a after the malformed calls: %+v", got)
		}
	})

	t.Run("memory after many huge calls", func(t *testing.T) {
		before, _ := procStatus(t, p.pid())
		huge := callJSON("DELETE", "/v1.41/images/base", nil, bytes.Repeat([]byte("B"), 11<<20)) // ~15 MiB once base64
		var wg sync.WaitGroup
		var allowed sync.Map
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 8 {
					if got := call(t, huge); got.Allow {
						allowed.Store(fmt.Sprint(w, i), got.Msg)
					}
				}
			}()
		}
		wg.Wait()
		allowed.Range(func(k, v any) bool { t.Errorf("huge call %v allowed: %v", k, v); return true })
		rss, peak := procStatus(t, p.pid())
		t.Logf("plugin memory: RSS %d MiB before, %d MiB after 32 calls of %d MiB (4 at a time), peak %d MiB",
			before>>10, rss>>10, len(huge)>>20, peak>>10)
		// Generous bounds: a call is capped at 12 MiB and decoded as a stream;
		// four at a time must not come near a gigabyte.
		if peak > 1<<20 {
			t.Errorf("peak RSS %d MiB; want under 1024 MiB", peak>>10)
		}
		if rss > 512<<10 {
			t.Errorf("RSS after the calls %d MiB; want under 512 MiB", rss>>10)
		}
		if !p.alive() {
			t.Fatalf("the plugin died")
		}
	})
}

// Concurrent decisions through dockerd: every denial gets exactly one
// audit line, each line whole. The audit file is owner-only and the socket
// 0660.
func TestAuditLogKeepsEveryLineWholeUnderConcurrentDenials(t *testing.T) {
	t.Parallel()
	g := startGuard(t)
	const n, workers = 400, 16
	jobs := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var bad []string
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				r := wireReq{method: "POST", target: fmt.Sprintf("/v1.41/images/prune?pgn=%d&%s", i, pruneAll)}
				rs, err := wireSend(g.Socket(), r.bytes())
				if err != nil || len(rs) == 0 || rs[0].status != http.StatusForbidden {
					mu.Lock()
					bad = append(bad, fmt.Sprintf("request %d: %v %v", i, rs, err))
					mu.Unlock()
				}
			}
		}()
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	if len(bad) > 0 {
		t.Fatalf("%d of %d prune -a requests were not denied: %s", len(bad), n, strings.Join(bad[:min(5, len(bad))], "; "))
	}

	var lines []map[string]any
	waitUntil(t, 10*time.Second, fmt.Sprintf("%d audit lines", n), func() bool {
		lines = g.plugin.AuditLines(t) // fails t on any line that is not a whole JSON object
		count := 0
		for _, l := range lines {
			if l["operation"] == "image-prune-all" {
				count++
			}
		}
		return count >= n
	})
	seen := map[int]int{}
	for _, l := range lines {
		uri, _ := l["uri"].(string)
		var i int
		if _, err := fmt.Sscanf(uri, "/v1.41/images/prune?pgn=%d&", &i); err == nil {
			seen[i]++
			if l["decision"] != "deny" || l["rule"] != "no-prune-all" {
				t.Errorf("audit line for request %d: %v", i, l)
			}
		}
	}
	for i := range n {
		if seen[i] != 1 {
			t.Errorf("request %d has %d audit lines; want exactly 1", i, seen[i])
		}
	}
	t.Logf("%d concurrent denials (%d at a time): %d audit lines, each whole and each request once", n, workers, len(seen))

	for _, f := range []struct {
		path string
		want os.FileMode
	}{{g.plugin.AuditPath(), 0o600}, {g.plugin.Socket(), 0o660}} {
		fi, err := os.Stat(f.path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != f.want {
			t.Errorf("%s has mode %o; want %o", f.path, got, f.want)
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && (st.Uid != 0 || st.Gid != 0) {
			t.Errorf("%s is owned by %d:%d; want root:root", f.path, st.Uid, st.Gid)
		}
	}
}

// An audit log that cannot be written (a full disk) must not stop
// decisions: denials still deny, harmless requests still pass, and the
// failure is reported loudly in the plugin's log and status. When space
// comes back, records are written again, each line still whole.
func TestFullAuditDiskKeepsDecidingAndReportsLoudly(t *testing.T) {
	t.Parallel()
	checkDeciding := func(t *testing.T, g guard) {
		t.Helper()
		a := newAPI(t, g.Engine)
		spare := "pg-full-spare:1"
		a.importImage(spare)
		dangling := a.importImage("")
		for i := range 20 {
			rs := send(t, g.Engine, post(fmt.Sprintf("/v1.41/images/prune?full=%d&%s", i, pruneAll)))
			if _, denied := denialOf(rs[0]); !denied {
				t.Fatalf("prune -a with a full audit disk: %v; want denied", rs)
			}
		}
		if rs := send(t, g.Engine, post("/v1.41/images/prune?"+pruneDangling, cliHeaders...)); rs[0].status != http.StatusOK {
			t.Errorf("dangling prune with a full audit disk: %v; want allowed", rs)
		}
		if a.imageExists(dangling) {
			t.Errorf("the allowed dangling prune did not run")
		}
		if rs := send(t, g.Engine, del("/v1.41/images/"+spare)); rs[0].status != http.StatusOK || a.imageExists(spare) {
			t.Errorf("rmi with a full audit disk: %v; want allowed and gone", rs)
		}
		if rs := send(t, g.Engine, wireReq{method: "GET", target: "/v1.41/containers/json"}); rs[0].status != http.StatusOK {
			t.Errorf("docker ps with a full audit disk: %v", rs)
		}
		// Loudly: an error in the plugin's log that names the audit log and
		// the cause, and a failure count in its status.
		logText := g.plugin.LogTail()
		if !strings.Contains(logText, "level=error") || !strings.Contains(strings.ToLower(logText), "audit") || !strings.Contains(logText, "no space left on device") {
			t.Errorf("the plugin's log does not report the audit failure as an error naming the audit log and ENOSPC:\n%s", logText)
		}
		var st struct {
			Failures int64 `json:"audit_write_failures"`
		}
		resp, err := unixClient(g.plugin.Socket(), 10*time.Second).Get("http://plugin/status")
		if err != nil {
			t.Fatalf("plugin status: %v", err)
		}
		json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if st.Failures == 0 {
			t.Errorf("plugin status reports no audit write failures")
		}
		t.Logf("audit write failures reported in status: %d", st.Failures)
	}

	t.Run("/dev/full", func(t *testing.T) {
		// A node of our own for the full device: the plugin may set the
		// mode of the file it is given, and /dev/full is the host's.
		dir := t.TempDir()
		full := filepath.Join(dir, "full")
		if err := syscall.Mknod(full, syscall.S_IFCHR|0o666, int(1<<8|7)); err != nil {
			t.Fatalf("mknod %s (char 1,7): %v", full, err)
		}
		if f, err := os.OpenFile(full, os.O_WRONLY, 0); err != nil {
			// A nodev temp directory: the tmpfs case below still fills a disk.
			enginetest.Unavailable(t, "device nodes cannot be opened in %s: %v", dir, err)
		} else {
			f.Close()
		}
		e, p := enginetest.StartGuarded(t, enginetest.Options{PluginArgs: []string{"--audit-log", full}})
		checkDeciding(t, guard{Engine: e, plugin: p})
		if fi, err := os.Stat(full); err == nil {
			t.Logf("the audit device's mode after start: %v (it was 0666)", fi.Mode())
		}
	})

	t.Run("tmpfs that fills up and frees again", func(t *testing.T) {
		dir := t.TempDir()
		if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=64k,mode=0700"); err != nil {
			t.Fatalf("mounting a 64 KiB tmpfs: %v", err)
		}
		// Registered before the plugin starts, so it runs after the plugin
		// has stopped and closed the file.
		t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
		path := filepath.Join(dir, "audit.jsonl")
		e, p := enginetest.StartGuarded(t, enginetest.Options{PluginArgs: []string{"--audit-log", path}})
		g := guard{Engine: e, plugin: p}
		waitUntil(t, 5*time.Second, "the start event in the audit log", func() bool {
			fi, err := os.Stat(path)
			return err == nil && fi.Size() > 0
		})
		filler := filepath.Join(dir, "filler")
		fill(t, filler)
		checkDeciding(t, g)

		// Space comes back: the next records are written, whole.
		if err := os.Remove(filler); err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			send(t, g.Engine, post(fmt.Sprintf("/v1.41/images/prune?after=%d&%s", i, pruneAll)))
		}
		var after int
		waitUntil(t, 5*time.Second, "records after space came back", func() bool {
			b, _ := os.ReadFile(path)
			after = strings.Count(string(b), "after=")
			return after >= 3
		})
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var broken []string
		for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) != nil {
				broken = append(broken, line)
			}
		}
		if len(broken) > 0 {
			t.Errorf("%d audit line(s) are not whole JSON objects after the disk filled and freed (a record cut short by ENOSPC, then the next one appended to it):\n%s",
				len(broken), strings.Join(broken, "\n"))
		}
	})
}

// fill writes to path until the file system is full.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 512)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling %s: %v", path, err)
			}
			return
		}
	}
}
