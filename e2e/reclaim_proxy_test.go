package e2e

import (
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/internal/enginetest"
)

// In proxy mode too, reclaim's own deletes pass during a job by their
// grants and nothing else does, and a budgeted build prune passes when no
// job is active.
func TestReclaimThroughTheProxy(t *testing.T) {
	t.Parallel()
	disk := enginetest.NewSmallDisk(t, 288<<20)
	e := enginetest.Start(t, enginetest.Options{ExtraArgs: disk.Args()})
	bin := enginetest.BuildBinary(t)
	px := enginetest.StartProxy(t, bin, e)

	// Build cache (BuildKit, context in the body: no plugin is in the
	// engine's chain), untagged so no image shares it.
	a := newAPI(t, e)
	for i := range 3 {
		tag := fmt.Sprintf("pg-pbc-%d:1", i)
		ctx := tarOf(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY f /f\n", "f": randomBlob(t, 4<<20)})
		if out := a.must("POST", "/build?version=2&t="+tag, "application/x-tar", ctx); strings.Contains(string(out), `"error"`) {
			t.Fatalf("BuildKit build: %s", out)
		}
		e.MustDocker(t, "rmi", tag)
	}
	var old []string
	for i := 1; i <= 3; i++ {
		old = append(old, e.BuildImage(t, fmt.Sprintf("pg-px-old%d:1", i), map[string]string{"blob": randomBlob(t, criticalBlob)}, nil))
	}
	job := e.BuildImage(t, "pg-px-job:1", nil, nil)
	dir := t.TempDir()
	r := reclaimer{bin: bin, host: px.Host(), state: filepath.Join(dir, "state.json"), audit: filepath.Join(dir, "reclaim.jsonl")}
	seedState(t, r.state, map[string]time.Duration{old[0]: 5 * time.Hour, old[1]: 4 * time.Hour, old[2]: 3 * time.Hour, job: 9 * time.Hour})

	t.Run("without a job the budgeted build prune passes the proxy", func(t *testing.T) {
		out := r.mustRun(t, "--high", "99", "--low", "98", "--build-cache-max", "12MiB", "--control-socket", px.ControlSocket())
		if !strings.Contains(out, "build cache: ") || !strings.Contains(out, "(budget 12MiB, ") {
			t.Errorf("output does not show the budgeted prune:\n%s", out)
		}
		i := slices.IndexFunc(px.AuditLines(t), func(l map[string]any) bool { return l["operation"] == "build-prune" && l["decision"] == "allow" })
		if i < 0 {
			t.Errorf("the proxy audited no allowed build prune")
		}
	})

	e.MustDocker(t, "run", "-d", "--label", runLabel+"=job-px", "--name", "pg-px-job", "pg-px-job:1")
	t.Run("a plain delete and a made-up grant are refused through the proxy during the job", func(t *testing.T) {
		for _, h := range []map[string]string{nil, {grantHeader: "pgg_0123456789abcdef0123456789abcdef"}} {
			status, body := unixHTTP(t, px.Socket(), "DELETE", "/images/"+old[0], h, nil)
			if status != http.StatusForbidden || !strings.Contains(body, "(rule no-delete-during-run)") {
				t.Errorf("DELETE through the proxy with %v = %d %s; want the run's denial", h, status, body)
			}
		}
	})

	t.Run("at critical reclaim's deletes pass the proxy by their grants", func(t *testing.T) {
		perImage := int64(criticalBlob)
		if e.Identity().ContainerdStore {
			perImage *= 2
		}
		total, _ := disk.Usage(t)
		u, unit := disk.Percent(t), 100*float64(perImage)/float64(total)
		mark := r.mark(t)
		r.mustRun(t, "--high", pct(u-1), "--low", pct(u-2.6*unit), "--critical", pct(u-0.5), "--control-socket", px.ControlSocket())
		var removed []string
		for _, l := range withMsg(r.events(t, mark), "reclaim removed image") {
			removed = append(removed, fmt.Sprint(l["image"]))
		}
		if !slices.Equal(removed, old) {
			t.Errorf("removed %v; want %v", removed, old)
		}
		for _, id := range old {
			if !slices.ContainsFunc(px.AuditLines(t), func(l map[string]any) bool {
				return l["target"] == id && l["rule"] == "reclaim-grant" && l["decision"] == "allow"
			}) {
				t.Errorf("the proxy did not audit %s as allowed by a reclaim grant", id)
			}
		}
		if !e.ImageExists(t, job) {
			t.Errorf("the job's image is gone")
		}
	})
}
