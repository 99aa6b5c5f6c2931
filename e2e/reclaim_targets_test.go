package e2e

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/internal/enginetest"
)

// Byte targets and --keep-per-repo on a real engine, without a job: less
// free than --min-free (written in SI units) starts a pass below --high, which
// frees until --target-free (binary units) is free; the two most recently
// used tags of a repository stay whatever their age; a short inode floor
// starts a pass too.
func TestReclaimByteTargetsAndKeepPerRepo(t *testing.T) {
	t.Parallel()
	disk := enginetest.NewSmallDisk(t, 256<<20)
	e, p := enginetest.StartGuarded(t, enginetest.Options{ExtraArgs: disk.Args()})
	g := guard{Engine: e, plugin: p}
	build := func(tag string) string {
		return g.BuildImage(t, tag, map[string]string{"blob": randomBlob(t, criticalBlob)}, nil)
	}
	kpr1, kpr2, kpr3, kpr4 := build("pg-kpr:1"), build("pg-kpr:2"), build("pg-kpr:3"), build("pg-kpr:4")
	btA, btB, btC := build("pg-bt:a"), build("pg-bt:b"), build("pg-bt:c")
	name := map[string]string{kpr1: "pg-kpr:1", kpr2: "pg-kpr:2", kpr3: "pg-kpr:3", kpr4: "pg-kpr:4", btA: "pg-bt:a", btB: "pg-bt:b", btC: "pg-bt:c"}

	dir := t.TempDir()
	r := reclaimer{bin: enginetest.BuildBinary(t), host: g.Host(), state: filepath.Join(dir, "state.json"), audit: filepath.Join(dir, "reclaim.jsonl")}
	// Removal order, oldest first: pg-kpr:1, pg-kpr:2, pg-bt:a; the two
	// most recent tags of each repository stay.
	seedState(t, r.state, map[string]time.Duration{kpr1: 6 * time.Hour, kpr2: 5 * time.Hour, kpr3: 4 * time.Hour, kpr4: 3 * time.Hour,
		btA: 270 * time.Minute, btB: 2 * time.Hour, btC: 90 * time.Minute})

	perImage := int64(criticalBlob)
	if g.Identity().ContainerdStore {
		perImage *= 2
	}
	_, avail := disk.Usage(t)
	// Less than min-free is free by half an image; target-free is two
	// and a half images above what is free: two or three removals, by
	// what an image frees on this image store.
	minFree := fmt.Sprintf("%dMB", int64(math.Ceil(float64(int64(avail)+perImage/2)/1e6)))
	targetFree := fmt.Sprintf("%dKiB", (int64(avail)+5*perImage/2)>>10)
	args := []string{"--high", "99", "--low", "98", "--min-free", minFree, "--target-free", targetFree, "--keep-per-repo", "2", "--min-age", "1h"}

	t.Run("the dry run names the byte trigger and the tags --keep-per-repo keeps", func(t *testing.T) {
		out := r.mustRun(t, append(slices.Clone(args), "--dry-run")...)
		for _, want := range []string{
			"available, under --min-free " + minFree,
			"pg-kpr:4 (" + shortID(kpr4) + "): pg-kpr:4 is one of the 2 most recently used tags of pg-kpr (--keep-per-repo)",
			"pg-kpr:3 (" + shortID(kpr3) + "): pg-kpr:3 is one of the 2 most recently used tags of pg-kpr (--keep-per-repo)",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("less free than min-free frees until target-free, keeping two tags of the repository", func(t *testing.T) {
		mark := r.mark(t)
		r.mustRun(t, args...)
		_, after := disk.Usage(t)
		target := (int64(avail) + 5*perImage/2) >> 10 << 10
		if int64(after) < target {
			t.Errorf("%d bytes free after the pass; want at least --target-free %s (%d)", after, targetFree, target)
		}
		var removed []string
		for _, l := range withMsg(r.events(t, mark), "reclaim removed image") {
			removed = append(removed, name[fmt.Sprint(l["image"])])
		}
		// What an image frees differs by image store: the oldest go
		// until target-free holds, never the kept tags.
		order := []string{"pg-kpr:1", "pg-kpr:2", "pg-bt:a", "pg-bt:b"}
		if len(removed) < 2 || !slices.Equal(removed, order[:min(len(removed), len(order))]) {
			t.Errorf("removed %v; want the oldest first, a prefix of %v", removed, order)
		}
		requireImages(t, g, kpr3, kpr4, btC)
		t.Logf("FIGURE: byte targets: %.1f MiB free -> %.1f MiB (min-free %s, target-free %s)", float64(avail)/(1<<20), float64(after)/(1<<20), minFree, targetFree)
	})

	t.Run("fewer free inodes than min-free-inodes start a pass", func(t *testing.T) {
		free := disk.FreeInodes(t)
		out := r.mustRun(t, "--high", "99", "--low", "98", "--min-free-inodes", fmt.Sprint(free+100000), "--keep-per-repo", "2", "--dry-run")
		if !strings.Contains(out, "inodes free, under --min-free-inodes") {
			t.Errorf("output does not name the inode trigger:\n%s", out)
		}
	})
}

// BuildKit's cache within a budget, through the plugin: while a job runs
// reclaim leaves the cache alone and says so; once none does, it runs
// dockerd's budgeted build prune (keep-storage below API 1.48,
// max-used-space from it, never all), which the plugin lets through, and
// the cache ends within its budget. Images are not touched: there is no
// disk pressure.
func TestReclaimKeepsTheBuildCacheWithinItsBudget(t *testing.T) {
	t.Parallel()
	// BuildKit builds through the plugin need buildx: its builds run in
	// BuildKit sessions (/session, /grpc), which the plugin lets through,
	// where one with the context in the request body is broken by any
	// authorization plugin on Docker 29.5 and later
	// (TestNoBuildkitStreamRuleRefusesSessionsAndKeepsTheRest). Adding the
	// plugin by a daemon.json reload instead is no way round: after a
	// reload dockerd 28.5.2 reports its default address pool as "invalid
	// Prefix" in /info, which the API client cannot decode.
	e, p := enginetest.StartGuarded(t, enginetest.Options{Buildx: true})
	g := guard{Engine: e, plugin: p}
	var tags []string
	for i := range 3 {
		tag := fmt.Sprintf("pg-bc-%d:1", i)
		ctx := t.TempDir()
		for name, content := range map[string]string{"Dockerfile": "FROM scratch\nCOPY f /f\n", "f": randomBlob(t, 4<<20)} {
			if err := os.WriteFile(filepath.Join(ctx, name), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		g.mustAllow(t, "buildx", "build", "--quiet", "--tag", tag, ctx)
		tags = append(tags, tag)
	}
	// Untagged, the images share no record with the cache any more.
	g.mustAllow(t, append([]string{"rmi"}, tags...)...)
	g.BuildImage(t, "pg-bc-job:1", nil, nil)
	bin := enginetest.BuildBinary(t)

	dir := t.TempDir()
	r := reclaimer{bin: bin, host: g.Host(), state: filepath.Join(dir, "state.json"), audit: filepath.Join(dir, "reclaim.jsonl")}
	const budget = "12MiB"
	args := []string{"--high", "99", "--low", "98", "--build-cache-max", budget}
	param := "keep-storage="
	if g.Identity().APIAtLeast("1.48") {
		param = "max-used-space="
	}

	t.Run("never during a job", func(t *testing.T) {
		g.mustAllow(t, "create", "--label", runLabel+"=job-bc", "--name", "pg-bc-job", "pg-bc-job:1")
		pluginMark := auditMark(t, g)
		out := r.mustRun(t, args...)
		if !strings.Contains(out, "over its budget "+budget+"; waits: a CI job is active: active prune-guard run job-bc") {
			t.Errorf("output does not say the build cache waits for the job:\n%s", out)
		}
		for _, l := range g.plugin.AuditLines(t)[pluginMark:] {
			if l["operation"] == "build-prune" {
				t.Errorf("a build prune reached the plugin during the job: %v", l)
			}
		}
		g.mustAllow(t, "rm", "pg-bc-job")
	})

	t.Run("without a job a budgeted build prune passes the plugin and the cache ends within budget", func(t *testing.T) {
		mark, pluginMark := r.mark(t), auditMark(t, g)
		out := r.mustRun(t, args...)
		evs := withMsg(r.events(t, mark), "reclaim pruned build cache")
		if len(evs) != 1 {
			t.Fatalf("want one 'reclaim pruned build cache' line, have %v\n%s", evs, out)
		}
		before, after, limit := evs[0]["before_bytes"].(float64), evs[0]["after_bytes"].(float64), evs[0]["budget_bytes"].(float64)
		if before <= limit || after > limit || evs[0]["param"] != strings.TrimSuffix(param, "=") {
			t.Errorf("build cache %v -> %v bytes with budget %v by %v; want it over before and within after, by %s", before, after, limit, evs[0]["param"], param)
		}
		l := auditLine(t, g, pluginMark, map[string]string{"decision": "allow", "operation": "build-prune"})
		if uri := fmt.Sprint(l["uri"]); !strings.Contains(uri, param+fmt.Sprint(12<<20)) || strings.Contains(uri, "all=") {
			t.Errorf("the plugin saw %s; want a budgeted prune (%s), never all", uri, param)
		}
		t.Logf("FIGURE: %s: build cache %.1f MiB -> %.1f MiB (budget %s, %s; dockerd reclaimed %.1f MiB)", g.Identity().Version,
			before/(1<<20), after/(1<<20), budget, strings.TrimSuffix(param, "="), evs[0]["reclaimed_bytes"].(float64)/(1<<20))
		requireImages(t, g, "pg-bc-job:1")
	})
}
