package enginetest

import (
	"os"
	"strings"
	"testing"
)

// BlobDownloads returns the blob downloads (the access log's GET
// /v2/NAME/blobs/DIGEST lines) served so far, in order, so that a failure
// can say which layers were fetched.
func (r *Registry) BlobDownloads(t testing.TB) []string {
	t.Helper()
	data, err := os.ReadFile(r.log)
	if err != nil {
		t.Fatalf("enginetest: read registry log: %v", err)
	}
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		if strings.Contains(l, `"GET /v2/`) && strings.Contains(l, "/blobs/") {
			out = append(out, strings.TrimSpace(l))
		}
	}
	return out
}
