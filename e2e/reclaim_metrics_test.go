package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/internal/enginetest"
	"github.com/prune-guard/prune-guard/internal/promtool"
)

// reclaim's metrics on a real engine: a run once writes the textfile after
// its pass (promtool finds nothing to say), the next run counts on from the
// file the first wrote, and reclaim --watch serves the same series, with
// the process and build metrics, on --metrics-addr.
func TestReclaimMetricsTextfileCountsOnAndWatchServesThem(t *testing.T) {
	t.Parallel()
	e := enginetest.Start(t, enginetest.Options{})
	old := e.BuildImage(t, "pg-reclaim-metrics:1", map[string]string{"blob": randomBlob(t, 1<<20)}, nil)
	dir := t.TempDir()
	r := reclaimer{bin: enginetest.BuildBinary(t), host: e.Host(), state: filepath.Join(dir, "state.json"), audit: filepath.Join(dir, "audit.jsonl")}
	textfile := filepath.Join(dir, "prune_guard_reclaim.prom")
	seedState(t, r.state, map[string]time.Duration{old: 2 * time.Hour})
	args := []string{"--high", "99", "--low", "98", "--max-unused", "1h", "--min-age", "0s", "--control-socket", "", "--metrics-textfile", textfile}
	r.mustRun(t, args...) // removes the image unused for two hours
	r.mustRun(t, args...) // nothing left to do
	if e.ImageExists(t, old) {
		t.Fatalf("reclaim kept %s, unused for longer than --max-unused", old)
	}

	text, err := os.ReadFile(textfile)
	if err != nil {
		t.Fatal(err)
	}
	promtool.CheckMetrics(t, text)
	requireSeries(t, string(text),
		`prune_guard_reclaim_passes_total{outcome="acted"} 1`,
		`prune_guard_reclaim_passes_total{outcome="idle"} 1`,
		`prune_guard_reclaim_images_removed_total 1`,
		`prune_guard_reclaim_pass_failures_total 0`,
		`prune_guard_reclaim_last_pass_success 1`,
		`prune_guard_reclaim_mark_ratio{mark="high"} 0.99`)
	if fi, err := os.Stat(textfile); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("textfile mode: %v %v; want 0644", fi.Mode(), err)
	}
	if strings.Contains(string(text), "go_goroutines") {
		t.Errorf("the textfile holds Go runtime metrics, which collide with node_exporter's own")
	}

	t.Run("reclaim --watch serves them on --metrics-addr", func(t *testing.T) {
		sock := filepath.Join(dir, "metrics.sock")
		watch := exec.Command(r.bin, append([]string{"reclaim", "--docker-host", r.host, "--state", r.state, "--audit-log", r.audit,
			"--watch", "1s", "--metrics-addr", "unix:" + sock}, args[:len(args)-2]...)...)
		watch.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := watch.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = watch.Process.Signal(syscall.SIGTERM); _ = watch.Wait() })
		var body string
		waitFor(t, time.Minute, "a pass in reclaim --watch's scrape", func() bool {
			if _, err := os.Stat(sock); err != nil {
				return false
			}
			body = scrape(t, unixClient(sock, 30*time.Second), "http://reclaim/metrics")
			return strings.Contains(body, `prune_guard_reclaim_passes_total{outcome="idle"}`)
		})
		promtool.CheckMetrics(t, []byte(body))
		requireSeries(t, body, `prune_guard_reclaim_watch_interval_seconds 1`)
		for _, want := range []string{"prune_guard_build_info{goversion=", "process_resident_memory_bytes ", "go_goroutines "} {
			if !strings.Contains(body, want) {
				t.Errorf("the scrape lacks %s", want)
			}
		}
	})
}
