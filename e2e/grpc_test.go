package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/prune-guard/prune-guard/internal/enginetest"
)

// grpcTimeout bounds one gRPC call to the engine.
const grpcTimeout = 20 * time.Second

// BuildKit's control API (github.com/moby/buildkit api/services/control
// control.proto, v0.33.0), spoken by a real gRPC client with the messages
// encoded by hand, so the test needs grpc-go and no BuildKit module.
const (
	controlDiskUsage = "/moby.buildkit.v1.Control/DiskUsage" // DiskUsageRequest → DiskUsageResponse{repeated UsageRecord record = 1}
	controlPrune     = "/moby.buildkit.v1.Control/Prune"     // PruneRequest{bool all = 2} → stream UsageRecord
)

// Docker 29.2 and later answer gRPC on the API socket themselves: an HTTP/2
// request with Content-Type application/grpc goes to the daemon's gRPC
// server (BuildKit's control API) without passing the router or any
// authorization plugin (moby daemon/command/httphandler.go, commit
// d210449d85). A prune of the whole build cache then passes a policy that
// refuses every build-cache prune and every BuildKit stream, and the plugin
// never hears of it. Older engines answer no gRPC on the socket: the same
// client fails and the cache stays. docs/threat-model.md says what an
// operator can do.
func TestNativeGRPCPrunesTheBuildCachePastThePluginOnDocker29(t *testing.T) {
	t.Parallel()
	e := enginetest.Start(t, enginetest.Options{})
	id := e.Identity()

	// Build cache, made before any plugin is in the chain: a BuildKit
	// build with its context in the request body (on 29.5 and later an
	// authorization plugin breaks exactly those builds; see
	// TestNoBuildkitStreamRuleRefusesSessionsAndKeepsTheRest).
	a := newAPI(t, e)
	ctx := tarOf(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY f /f\n", "f": enginetest.Nonce(t)})
	if out := a.must("POST", "/build?version=2&t=pg-grpc:1", "application/x-tar", ctx); strings.Contains(string(out), `"error"`) {
		t.Fatalf("BuildKit build on the engine without a plugin failed: %s", out)
	}
	before := buildCacheRecords(t, e)
	if before == 0 {
		t.Fatalf("the BuildKit build left no build cache (GET /system/df)")
	}

	// prune-guard with the no-buildkit-stream rule joins the running engine.
	bin := enginetest.BuildBinary(t)
	policy := filepath.Join(t.TempDir(), "policy.yaml")
	def, err := exec.Command(bin, "policy", "default").Output()
	if err != nil {
		t.Fatalf("prune-guard policy default: %v", err)
	}
	writePolicy(t, policy, string(def)+"  - name: no-buildkit-stream\n    match: [buildkit-stream]\n    action: deny\n")
	p := enginetest.StartPlugin(t, bin, "--docker-host", e.Host(), "--policy", policy)
	// serve asks the engine its version once at start (a ping and GET
	// /version); let it finish before the plugin joins, so that the
	// counts below see the test's calls alone.
	waitFor(t, 20*time.Second, "serve's engine check", func() bool { return strings.Contains(p.LogTail(), `msg="engine answered"`) })
	e.Reload(t, map[string]any{"authorization-plugins": []string{p.Name()}})
	t.Cleanup(func() { e.Reload(t, map[string]any{}) })
	g := guard{Engine: e, plugin: p}
	g.mustDeny(t, []string{"builder", "prune", "-af"}, "(rule no-build-prune-all)")
	if rs := send(t, e, post("/grpc", "Upgrade: h2c", "Connection: Upgrade")); rs[0].status != http.StatusForbidden {
		t.Fatalf("POST /grpc = %d %q; want no-buildkit-stream's denial", rs[0].status, rs[0].body)
	}
	// The plugin counts every request it allows as harmless: one plain
	// API call moves the counter by one. A scrape asks the engine which
	// jobs are active, through the plugin too: two scrapes in a row say
	// what one costs.
	seen := pluginReads(t, p)
	scrape := pluginReads(t, p) - seen
	seen += scrape
	if status, _ := e.HTTP(t, "GET", "/version", nil, nil); status != http.StatusOK {
		t.Fatalf("GET /version = %d", status)
	}
	if reads := pluginReads(t, p); reads != seen+scrape+1 {
		t.Fatalf("the plugin's reads went %d -> %d for one GET /version and a scrape that costs %d; want +%d", seen, reads, scrape, scrape+1)
	}

	seen = pluginReads(t, p)
	conn := dialGRPC(t, e)
	records, duErr := grpcDiskUsage(conn)
	pruned, pruneErr := grpcPruneAll(conn)
	reads := pluginReads(t, p)
	after := buildCacheRecords(t, e)
	t.Logf("%s: gRPC DiskUsage: %d records, err %v; Prune all: %d records, err %v; build cache %d -> %d records",
		id, records, duErr, pruned, pruneErr, before, after)

	// serve (once the engine answered) and status say so, on these
	// engines only.
	const warning = "answers gRPC on its API socket itself"
	status, err := exec.Command(bin, "status", "--socket", p.Socket(), "--docker-host", e.Host()).CombinedOutput()
	if err != nil {
		t.Fatalf("prune-guard status: %v\n%s", err, status)
	}
	if got := strings.Contains(string(status), warning); got != id.ServesNativeGRPC() {
		t.Errorf("status warns about native gRPC: %v; want %v\n%s", got, id.ServesNativeGRPC(), status)
	}
	if id.ServesNativeGRPC() {
		waitFor(t, 20*time.Second, "serve's native-gRPC warning in its log", func() bool { return strings.Contains(p.LogTail(), warning) })
	} else if strings.Contains(p.LogTail(), warning) {
		t.Errorf("serve warns about native gRPC on %s:\n%s", id.Version, p.LogTail())
	}

	if !id.ServesNativeGRPC() {
		// Before 29.2 the socket speaks only HTTP/1.1 (and h2c upgrades
		// after /grpc, which the plugin sees and denies above).
		if duErr == nil || pruneErr == nil {
			t.Errorf("gRPC on the API socket of %s succeeded; want it refused (no native gRPC before 29.2)", id.Version)
		}
		if after != before {
			t.Errorf("build cache went %d -> %d records; want it untouched", before, after)
		}
		return
	}
	if duErr != nil || pruneErr != nil {
		t.Fatalf("gRPC on the API socket of %s failed (DiskUsage: %v, Prune: %v); want it served natively", id.Version, duErr, pruneErr)
	}
	if records != before || pruned == 0 || after != 0 {
		t.Errorf("DiskUsage saw %d records (df %d), Prune removed %d, %d left; want every record removed", records, before, pruned, after)
	}
	if reads != seen+scrape {
		t.Errorf("the plugin's reads went %d -> %d (a scrape costs %d); want no call at all for native gRPC", seen, reads, scrape)
	}
	for _, l := range p.AuditLines(t) {
		if strings.Contains(fmt.Sprint(l["uri"]), "moby.buildkit") {
			t.Errorf("the plugin audited a gRPC call: %v", l)
		}
	}
}

// buildCacheRecords counts the engine's build cache records (GET /system/df).
func buildCacheRecords(t testing.TB, e *enginetest.Engine) int {
	t.Helper()
	status, body := e.HTTP(t, "GET", "/system/df", nil, nil)
	if status != http.StatusOK {
		t.Fatalf("GET /system/df = %d %s", status, body)
	}
	var df struct{ BuildCache []json.RawMessage }
	if err := json.Unmarshal([]byte(body), &df); err != nil {
		t.Fatalf("GET /system/df: %v", err)
	}
	return len(df.BuildCache)
}

// pluginReads is the plugin's count of requests it allowed as reads
// (prune_guard_reads_allowed_total on its socket's /metrics).
func pluginReads(t testing.TB, p *enginetest.Plugin) int64 {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", p.Socket())
		},
	}}
	resp, err := c.Get("http://plugin/metrics")
	if err != nil {
		t.Fatalf("plugin /metrics: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "prune_guard_reads_allowed_total "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatalf("plugin /metrics: %q: %v", sc.Text(), err)
			}
			return n
		}
	}
	t.Fatalf("plugin /metrics has no prune_guard_reads_allowed_total (%v)", sc.Err())
	return 0
}

// dialGRPC connects a gRPC client to the engine's API socket: HTTP/2 with
// prior knowledge over the unix socket, as buildx's native-gRPC driver and
// BuildKit's client do.
func dialGRPC(t testing.TB, e *enginetest.Engine) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///docker",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", e.Socket())
		}),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})),
	)
	if err != nil {
		t.Fatalf("gRPC client for %s: %v", e.Socket(), err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// grpcDiskUsage calls Control.DiskUsage and counts the records.
func grpcDiskUsage(conn *grpc.ClientConn) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), grpcTimeout)
	defer cancel()
	var resp []byte
	if err := conn.Invoke(ctx, controlDiskUsage, []byte{}, &resp); err != nil {
		return 0, err
	}
	return countField(resp, 1)
}

// grpcPruneAll calls Control.Prune with all=true, as "docker builder prune
// --all" asks, and counts the records it streams back.
func grpcPruneAll(conn *grpc.ClientConn) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), grpcTimeout)
	defer cancel()
	desc := &grpc.StreamDesc{StreamName: "Prune", ServerStreams: true}
	s, err := conn.NewStream(ctx, desc, controlPrune)
	if err != nil {
		return 0, err
	}
	req := protowire.AppendVarint(protowire.AppendTag(nil, 2, protowire.VarintType), 1) // all: true
	if err := s.SendMsg(req); err != nil {
		return 0, err
	}
	if err := s.CloseSend(); err != nil {
		return 0, err
	}
	n := 0
	for {
		var rec []byte
		err := s.RecvMsg(&rec)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return n, nil
			}
			return n, err
		}
		n++
	}
}

// countField counts the occurrences of field num in a protobuf message.
func countField(b []byte, num protowire.Number) (int, error) {
	n := 0
	for len(b) > 0 {
		f, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return n, protowire.ParseError(l)
		}
		b = b[l:]
		l = protowire.ConsumeFieldValue(f, typ, b)
		if l < 0 {
			return n, protowire.ParseError(l)
		}
		b = b[l:]
		if f == num {
			n++
		}
	}
	return n, nil
}

// rawCodec sends and receives messages as the bytes they are; the test
// encodes the few fields it needs with protowire.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	b, ok := v.([]byte)
	if !ok {
		return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
	}
	return b, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	p, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
	}
	*p = append((*p)[:0], data...)
	return nil
}

func (rawCodec) Name() string { return "proto" } // what the server expects on the wire

var _ encoding.Codec = rawCodec{}
