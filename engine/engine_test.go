package engine

import (
	"context"
	"net"
	"net/http"
	"path/filepath"
	"testing"

	"github.com/moby/moby/client"
)

// A header put in a request's context reaches the engine on that request,
// and only on it.
func TestWithHeaderReachesTheEngineOnThatRequestOnly(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "d.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 4)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodDelete {
			got <- r.Header.Get("X-Prune-Guard-Grant")
		}
		w.Header().Set("Api-Version", "1.41")
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte("[]"))
	})}
	go srv.Serve(l)
	defer srv.Close()

	c, err := Open("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := WithHeader(context.Background(), "X-Prune-Guard-Grant", "pgg_0123")
	if _, err := c.ImageRemove(ctx, "sha256:abc", client.ImageRemoveOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ImageRemove(context.Background(), "sha256:abc", client.ImageRemoveOptions{}); err != nil {
		t.Fatal(err)
	}
	if a, b := <-got, <-got; a != "pgg_0123" || b != "" {
		t.Errorf("headers %q then %q; want the grant on the first delete only", a, b)
	}
}
