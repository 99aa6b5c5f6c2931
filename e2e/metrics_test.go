package e2e

import (
	"bufio"
	"crypto/tls"
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

	"github.com/prune-guard/prune-guard/internal/enginetest"
	"github.com/prune-guard/prune-guard/internal/promtool"
	"github.com/prune-guard/prune-guard/internal/testpki"
	"github.com/prune-guard/prune-guard/policy"
)

// scrape GETs url with c and returns the body, failing t unless it is 200.
func scrape(t *testing.T, c *http.Client, url string) string {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %s\n%s", url, resp.Status, body)
	}
	return string(body)
}

// requireSeries fails t unless body has each line (a series and its value).
func requireSeries(t *testing.T, body string, lines ...string) {
	t.Helper()
	have := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		have[sc.Text()] = true
	}
	for _, l := range lines {
		if !have[l] {
			t.Errorf("the scrape lacks %q", l)
		}
	}
}

// The plugin's metrics listener in authz mode: its scrape passes promtool,
// counts the denial, the job and the policy, and carries the build info and
// the process and Go runtime metrics.
func TestMetricsAuthzModePassesPromtool(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(t.TempDir(), "metrics.sock")
	e, p := enginetest.StartGuarded(t, enginetest.Options{PluginArgs: []string{"--metrics-addr", "unix:" + sock}})
	g := guard{Engine: e, plugin: p}
	img := buildVictim(t, g)
	g.mustAllow(t, "run", "-d", "--name", "job-metrics", "--label", runLabel+"=job-88", img)
	g.mustDeny(t, []string{"image", "prune", "-af"})

	body := scrape(t, unixClient(sock, 30*time.Second), "http://prune-guard/metrics")
	promtool.CheckMetrics(t, []byte(body))
	requireSeries(t, body,
		`prune_guard_decisions_total{decision="deny",rule="no-prune-all"} 1`,
		`prune_guard_active_jobs{detector="prune-guard"} 1`,
		`prune_guard_run_state_known 1`,
		fmt.Sprintf(`prune_guard_policy_info{sha256=%q} 1`, statusOf(t, g).Policy.Hash))
	for _, want := range []string{"prune_guard_build_info{goversion=", "process_resident_memory_bytes ", "go_goroutines "} {
		if !strings.Contains(body, want) {
			t.Errorf("the scrape lacks %s", want)
		}
	}
	// The plugin socket serves the same.
	promtool.CheckMetrics(t, []byte(scrape(t, unixClient(p.Socket(), 30*time.Second), "http://plugin/metrics")))
}

// The proxy's metrics: promtool finds nothing to say in proxy mode either.
func TestMetricsProxyModePassesPromtool(t *testing.T) {
	t.Parallel()
	e := enginetest.Start(t, enginetest.Options{})
	dir := t.TempDir()
	metricsSock := filepath.Join(dir, "metrics.sock")
	client := startProxy(t, e, "--metrics-addr", "unix:"+metricsSock)
	c := unixClient(client, 30*time.Second)
	for _, uri := range []string{"/_ping", "/v1.41/containers/json", "/v1.41/images/json"} {
		scrape(t, c, "http://docker"+uri)
	}
	body := scrape(t, unixClient(metricsSock, 30*time.Second), "http://prune-guard/metrics")
	promtool.CheckMetrics(t, []byte(body))
	requireSeries(t, body, `prune_guard_run_state_known 1`)
	if !strings.Contains(body, "prune_guard_reads_allowed_total ") || strings.Contains(body, "prune_guard_reads_allowed_total 0\n") {
		t.Errorf("the proxy counted no reads:\n%s", body)
	}
}

// startProxy starts "prune-guard proxy" in front of e and returns the
// socket clients use; a t.Cleanup stops it.
func startProxy(t *testing.T, e *enginetest.Engine, args ...string) string {
	t.Helper()
	dir := t.TempDir()
	listen := filepath.Join(dir, "docker.sock")
	argv := append([]string{"proxy", "--listen", listen, "--socket-group", "", "--control-socket", filepath.Join(dir, "control.sock"),
		"--docker-host", e.Host(), "--audit-log", filepath.Join(dir, "audit.jsonl"), "--run-grace", "0s"}, args...)
	cmd := exec.Command(enginetest.BuildBinary(t), argv...)
	logPath := filepath.Join(dir, "proxy.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			data, _ := os.ReadFile(logPath)
			t.Logf("proxy log:\n%s", data)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			data, _ := os.ReadFile(logPath)
			t.Fatalf("prune-guard proxy exited: %v\n%s", err, data)
		default:
		}
		if resp, err := unixClient(listen, 5*time.Second).Get("http://docker/_ping"); err == nil {
			resp.Body.Close()
			return listen
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("prune-guard proxy did not answer on %s", listen)
	return ""
}

// Scraping from other hosts: the plugin listens on every address only with
// a web configuration; a real client over TLS, trusting the test CA, gets
// 401 without credentials and 200 with them.
func TestMetricsRemoteScrapeNeedsTLSAndBasicAuth(t *testing.T) {
	t.Parallel()
	pki := testpki.New(t)
	cfg := pki.WebConfig(t, "prometheus", "correct horse")
	port := freePort(t)
	e, p := enginetest.StartGuarded(t, enginetest.Options{PluginArgs: []string{"--metrics-addr", fmt.Sprintf("0.0.0.0:%d", port), "--web-config", cfg}})
	_, _ = e, p
	url := fmt.Sprintf("https://127.0.0.1:%d/metrics", port)
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.Pool}}}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a scrape without credentials: %s, want 401", resp.Status)
	}
	req, _ := http.NewRequest("GET", url, nil)
	req.SetBasicAuth("prometheus", "correct horse")
	resp, err = c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "prune_guard_decisions_total") && !strings.Contains(string(body), "prune_guard_reads_allowed_total") {
		t.Fatalf("a scrape with credentials: %s\n%.500s", resp.Status, body)
	}
	promtool.CheckMetrics(t, body)
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// statusDoc is what status --json prints, as a program decodes it.
type statusDoc struct {
	SchemaVersion int    `json:"schema_version"`
	Reachable     bool   `json:"reachable"`
	Error         string `json:"error"`
	Version       string `json:"version"`
	Transport     struct {
		Mode string `json:"mode"`
	} `json:"transport"`
	Policy struct {
		Source string `json:"source"`
		Hash   string `json:"hash"`
		Mode   string `json:"mode"`
	} `json:"policy"`
	Runs struct {
		Error  string `json:"error"`
		Active []struct {
			Run      string `json:"run"`
			Detector string `json:"detector"`
			Job      string `json:"job"`
		} `json:"active"`
	} `json:"runs"`
	Stats struct {
		Reads     int64                       `json:"reads_allowed"`
		Decisions map[string]map[string]int64 `json:"decisions"`
	} `json:"stats"`
}

// statusOf runs "prune-guard status --json" against g's plugin.
func statusOf(t *testing.T, g guard) statusDoc {
	t.Helper()
	out, err := exec.Command(enginetest.BuildBinary(t), "status", "--json", "--socket", g.plugin.Socket(), "--docker-host", g.Host()).Output()
	if err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	var doc statusDoc
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	return doc
}

// status --json against a running plugin with a job and a denial.
func TestStatusJSONShowsRunsPolicyAndCounters(t *testing.T) {
	t.Parallel()
	g := startGuard(t)
	img := buildVictim(t, g)
	g.mustAllow(t, "run", "-d", "--name", "job-json", "--label", runLabel+"=job-99", img)
	g.mustDeny(t, []string{"image", "prune", "-af"})
	doc := statusOf(t, g)
	if doc.SchemaVersion != 1 || !doc.Reachable || doc.Transport.Mode != "authz" || doc.Policy.Source != policy.BuiltIn ||
		len(doc.Policy.Hash) != 64 || doc.Version == "" {
		t.Errorf("status --json: %+v", doc)
	}
	if len(doc.Runs.Active) != 1 || doc.Runs.Active[0].Job != "prune-guard run job-99" || doc.Runs.Active[0].Detector != "prune-guard" {
		t.Errorf("runs.active: %+v", doc.Runs.Active)
	}
	if doc.Stats.Decisions["no-prune-all"]["deny"] != 1 {
		t.Errorf("stats.decisions: %v", doc.Stats.Decisions)
	}
}
