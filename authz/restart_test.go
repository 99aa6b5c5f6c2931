package authz

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

// dockerd keeps its connections to an authorization plugin alive between
// calls. When the plugin is restarted, a call dockerd sends on a connection
// to the old process breaks after it was written; dockerd then retries, but
// its plugin client (moby pkg/plugins callWithRetry) resends a request body
// it has already read, so the retry is an empty call, which prune-guard
// must refuse: the docker command fails with "malformed authorization call
// refused: decode call: EOF" although the new process is up and the socket
// (under socket activation) never went away. e2e/faults_test.go measures
// it. With ConnPerCall every answer closes its connection, dockerd never
// holds one to reuse, and a call after a restart always dials the new
// process. Without it (the default, for throughput) the server must never
// close a kept connection itself, or the same race would happen in normal
// operation.
func TestConnPerCallClosesEveryConnectionAndTheDefaultKeepsThem(t *testing.T) {
	for _, perCall := range []bool{true, false} {
		closed := servePing(t, perCall)
		for path, c := range closed {
			if c != perCall {
				t.Errorf("ConnPerCall=%v: %s closed its connection: %v", perCall, path, c)
			}
		}
	}
}

// servePing serves the protocol and reports, per call path, whether the answer
// closed its connection.
func servePing(t *testing.T, perCall bool) map[string]bool {
	sock := filepath.Join(t.TempDir(), "p.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	log := logrus.New()
	log.SetOutput(io.Discard)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, l, &testDecider{}, nil, Options{Drain: time.Second, ConnPerCall: perCall, Log: log})
	}()
	defer func() {
		cancel()
		<-done
	}()

	// The transport dockerd's plugin client uses: keep-alive by default.
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	closed := map[string]bool{}
	for _, path := range []string{"/Plugin.Activate", "/AuthZPlugin.AuthZReq", "/AuthZPlugin.AuthZRes"} {
		resp, err := c.Post("http://plugin"+path, "application/json", bytes.NewReader([]byte(`{"RequestMethod":"GET","RequestUri":"/_ping"}`)))
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		closed[path] = resp.Close
	}
	return closed
}
