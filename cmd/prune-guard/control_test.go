package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/prune-guard/prune-guard/audit"
	"github.com/prune-guard/prune-guard/guard"
	"github.com/prune-guard/prune-guard/policy"
)

// grantClientEnv makes this test binary a grant client (TestMain-free: the
// helper test below reads it), so that a test can ask for a grant from a
// process of another user.
const grantClientEnv = "PG_TEST_GRANT_CLIENT_SOCKET"

// TestHelperGrantClient is not a test: run with grantClientEnv set, it asks
// the socket there for a grant and prints the answer's status and body.
func TestHelperGrantClient(t *testing.T) {
	sock := os.Getenv(grantClientEnv)
	if sock == "" {
		t.Skip("a helper process for TestNonRootProcessGetsNoGrant")
	}
	body, _ := json.Marshal(guard.GrantRequest{Images: []string{"sha256:" + strings.Repeat("e", 64)}, Critical: 95,
		Usage: guard.GrantUsage{DataRoot: "/var/lib/docker", Percent: 99}})
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := c.Post("http://prune-guard/reclaim/grants", "application/json", bytes.NewReader(body))
	if err != nil {
		fmt.Printf("RESULT: %v\n", err)
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	fmt.Printf("RESULT: %d %s\n", resp.StatusCode, b)
}

// A process of another user gets no grant: the socket is 0600 so it cannot
// connect, and were the socket opened to it by mistake, the handler reads
// its credentials from the kernel and refuses it.
func TestNonRootProcessGetsNoGrant(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to run a process as another user")
	}
	dir := socketDir(t, "pgctltest")
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "c.sock")
	ctl, err := openControl(path, true, logrus.New())
	if err != nil {
		t.Fatal(err)
	}
	buf := &syncBuffer{}
	log := logrus.New()
	log.SetOutput(io.Discard)
	g := guard.New(policy.Default(), fixedRuns{}, noNames{}, audit.New(buf, nil), log)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ctl.serve(ctx, &decider{g: g, log: log})

	// The test binary sits in a root-only build directory: nobody runs a
	// copy.
	self := filepath.Join(dir, "client.test")
	if err := copyExecutable(os.Args[0], self); err != nil {
		t.Fatal(err)
	}
	asNobody := func() string {
		cmd := exec.Command(self, "-test.run=^TestHelperGrantClient$", "-test.v")
		cmd.Env = append(os.Environ(), grantClientEnv+"="+path)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, _ := cmd.CombinedOutput()
		for _, l := range strings.Split(string(out), "\n") {
			if r, ok := strings.CutPrefix(l, "RESULT: "); ok {
				return r
			}
		}
		t.Fatalf("the helper printed no result:\n%s", out)
		return ""
	}
	if got := asNobody(); !strings.Contains(got, "permission denied") {
		t.Errorf("nobody on the 0600 socket: %s; want the connection refused (permission denied)", got)
	}
	// Defence in depth: the socket opened to everyone by mistake.
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	if got := asNobody(); !strings.HasPrefix(got, "403 ") || !strings.Contains(got, "uid 65534 is not root") || strings.Contains(got, "pgg_") {
		t.Errorf("nobody on an open socket: %s; want 403 naming uid 65534 and no token", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(buf.String(), "reclaim grant refused") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(buf.String(), `"uid":65534`) {
		t.Errorf("the refusal is not audited with the peer's uid:\n%s", buf.String())
	}
}

// socketDir is a directory for a test's unix sockets, removed with the
// test. t.TempDir's paths carry the test's name and can exceed the 108
// bytes a socket's path may have.
func socketDir(t *testing.T, prefix string) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func copyExecutable(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}

// A control socket that cannot be made stops serve and proxy only when
// its path was given; at the default path they serve without one and say
// so, since a guard that exits fails every docker call.
func TestControlSocketThatCannotBeMadeFailsOnlyWhenGiven(t *testing.T) {
	// A path under a regular file cannot be made, by root either.
	blocker := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(blocker, "c.sock")

	if _, err := openControl(path, true, logrus.New()); err == nil || !strings.Contains(err.Error(), "--control-socket") {
		t.Errorf("given --control-socket %s: err %v; want an error naming the flag", path, err)
	}
	var logged bytes.Buffer
	log := logrus.New()
	log.SetOutput(&logged)
	ctl, err := openControl(path, false, log)
	if err != nil || ctl != nil {
		t.Errorf("default control socket that cannot be made: %v, %v; want none and no error", ctl, err)
	}
	if !strings.Contains(logged.String(), "no control socket") {
		t.Errorf("log does not say the control socket is missing: %q", logged.String())
	}
}

// A guard that stops leaves no control socket behind: once wait returns,
// the socket is gone, so the process may exit.
func TestControlSocketIsGoneOnceWaitReturns(t *testing.T) {
	dir := socketDir(t, "pgctlwait")
	path := filepath.Join(dir, "c.sock")
	log := logrus.New()
	log.SetOutput(io.Discard)
	g := guard.New(policy.Default(), fixedRuns{}, noNames{}, audit.New(io.Discard, nil), log)
	for i := range 20 {
		ctl, err := openControl(path, true, log)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		ctl.serve(ctx, &decider{g: g, log: log})
		cancel()
		ctl.wait()
		if _, err := os.Lstat(path); err == nil {
			t.Fatalf("round %d: %s is still there after wait", i, path)
		}
	}
}

// A guard that fails to start after opening its control socket gives it up.
func TestControlSocketGivenUpIsGone(t *testing.T) {
	dir := socketDir(t, "pgctlclose")
	path := filepath.Join(dir, "c.sock")
	ctl, err := openControl(path, true, logrus.New())
	if err != nil {
		t.Fatal(err)
	}
	ctl.close()
	if _, err := os.Lstat(path); err == nil {
		t.Errorf("%s is still there after close", path)
	}
	var none *control
	none.close()
	none.wait()
}
