package listener

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
)

func TestOwnerOnlySocketIs0600(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.sock")
	l, err := OwnerOnly(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("socket mode %o; want 0600", got)
	}
	if _, err := OwnerOnly(path); err == nil {
		t.Errorf("a second listener on a live socket succeeded")
	}
}

// The credentials a request's handler sees are the connecting process's,
// as the kernel recorded them.
func TestPeerCredentialsReachTheHandler(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.sock")
	l, err := OwnerOnly(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ConnContext: WithPeer, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, err := PeerFrom(r.Context())
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		_ = json.NewEncoder(w).Encode(p)
	})}
	go srv.Serve(l)
	defer srv.Close()

	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}}
	resp, err := c.Get("http://x/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var p Peer
	if err := json.NewDecoder(resp.Body).Decode(&p); err != nil {
		t.Fatalf("status %s: %v", resp.Status, err)
	}
	if p.UID != uint32(os.Getuid()) || p.PID != int32(os.Getpid()) || p.GID != uint32(os.Getgid()) {
		t.Errorf("peer %+v; want uid %d, gid %d, pid %d", p, os.Getuid(), os.Getgid(), os.Getpid())
	}
}

func TestPeerFromWithoutWithPeerIsAnError(t *testing.T) {
	if _, err := PeerFrom(context.Background()); err != ErrNoPeer {
		t.Errorf("PeerFrom of a bare context: %v; want ErrNoPeer", err)
	}
}
