package auditlog

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"
)

// testdata/cache.jsonl is a proxy's log of a morning: Docker Hub and a
// private registry, hits, misses, a pull of every tag, a failed pull, a
// pull whose reference is in doubt, reclaim removing two images that are
// pulled again (one by tag, with its last use recorded; one by digest,
// without), a decision and a line that is not JSON.
var cacheAt = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

func cacheReport(t *testing.T, o CacheOptions) (*Cache, string) {
	t.Helper()
	f, err := os.Open("testdata/cache.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out bytes.Buffer
	c, err := CacheReport(f, &out, o)
	if err != nil {
		t.Fatal(err)
	}
	return c, out.String()
}

func TestCacheReportCountsPullsHitsAndBytesByRegistry(t *testing.T) {
	c, text := cacheReport(t, CacheOptions{At: cacheAt, HubLimit: 100})
	t.Logf("prune-guard audit cache --at %s testdata/cache.jsonl:\n%s", cacheAt.Format(time.RFC3339), text)
	want := map[string]RegistryPulls{
		"docker.io": {Pulls: 6, Hit: 1, Miss: 4, Unknown: 1, Failed: 1, Relayed: 5,
			LayersReused: 9, LayersDownloaded: 7, BytesDownloaded: 3<<20 + 48<<20 + 1<<20},
		"registry.example:5000": {Pulls: 2, Miss: 2, Relayed: 2, LayersReused: 2, LayersDownloaded: 4, BytesDownloaded: 6 << 20},
		"(unknown)":             {Pulls: 1, Unknown: 1},
	}
	if got := c.Registries(); strings.Join(got, " ") != "docker.io registry.example:5000 (unknown)" {
		t.Errorf("registries %v, want most pulls first", got)
	}
	for name, w := range want {
		if got := c.Registry(name); got != w {
			t.Errorf("%s: %+v\nwant %+v", name, got, w)
		}
	}
	if r, ok := c.Registry("docker.io").HitRatio(); !ok || r != 0.2 {
		t.Errorf("docker.io hit ratio %v, %v; want 1 hit of 5 known", r, ok)
	}
	if _, ok := c.Registry("(unknown)").HitRatio(); ok {
		t.Error("a registry with no known result has a hit ratio")
	}
	if c.Pulls != 9 || c.Read != 14 || c.Skipped != 1 || c.FirstSkipped != 11 {
		t.Errorf("pulls %d, read %d, skipped %d (first %d)", c.Pulls, c.Read, c.Skipped, c.FirstSkipped)
	}
	for _, s := range []string{
		"     6       1       4        1      20.0%  docker.io\n",
		"     9           7      52.0 MiB  docker.io\n",
		"1 pull failed",
		"Docker Hub: 5 pulls in the 6 hours to 2026-11-26T12:00:00Z, against a limit of 100 (5%)\n",
	} {
		if !strings.Contains(text, s) {
			t.Errorf("the report lacks %q", s)
		}
	}
}

func TestCacheReportFindsImagesEvictedTooEarlyAndSaysWhatWouldKeepThem(t *testing.T) {
	c, text := cacheReport(t, CacheOptions{At: cacheAt, HubLimit: 100})
	if len(c.Evictions) != 2 {
		t.Fatalf("evictions %+v, want the re-pulled app:v1 and old-app", c.Evictions)
	}
	app, old := c.Evictions[0], c.Evictions[1]
	if app.Reference != "registry.example:5000/team/app:v1" || app.PulledAgain.Sub(app.Removed) != 90*time.Minute || !strings.HasSuffix(app.Image, "1111") {
		t.Errorf("app eviction %+v", app)
	}
	if !strings.HasPrefix(old.Reference, "docker.io/library/old-app@sha256:") || !old.LastUsed.IsZero() {
		t.Errorf("a pull by digest must find the image removed under its RepoDigest: %+v", old)
	}
	advice := c.Advice()
	if a := advice[0]; a.MinAge != "4h" || a.ProtectImage != "registry.example:5000/team/app:*" || a.KeepPerRepo != 1 || a.RaiseMinAgeBy != "" {
		t.Errorf("app advice %+v: unused 3h30m when pulled again, so --min-age 4h", a)
	}
	if a := advice[1]; a.MinAge != "" || a.RaiseMinAgeBy != "2h35m" || a.ProtectImage != "old-app@*" {
		t.Errorf("old-app advice %+v: no last use recorded, so the removal-to-pull time", a)
	}
	for _, s := range []string{
		"evicted too early: 2 images reclaim removed pulled again within 24 hours\n",
		"  2026-11-26T09:05:00Z removed registry.example:5000/team/app:v1 (image 111111111111), pulled again 1h30m later\n" +
			"      keep it with --min-age 4h (it had been unused 3h30m when it was pulled again), --protect-image 'registry.example:5000/team/app:*', or --keep-per-repo 1\n",
		"a --min-age more than 2h35m longer than the one in force",
	} {
		if !strings.Contains(text, s) {
			t.Errorf("the report lacks %q", s)
		}
	}
}

func TestCacheReportSinceLeavesOutOlderPullsButNotTheHubWindow(t *testing.T) {
	since := time.Date(2026, 11, 26, 9, 30, 0, 0, time.UTC)
	c, text := cacheReport(t, CacheOptions{Since: since, At: cacheAt, HubLimit: 4})
	if c.Pulls != 5 || c.HubPulls != 5 || len(c.Evictions) != 0 {
		t.Errorf("since 09:30: %d pulls, %d in the Hub window, %d evictions; want 5, 5 and none (the removals came before)", c.Pulls, c.HubPulls, len(c.Evictions))
	}
	if !strings.Contains(text, "selected: since 2026-11-26T09:30:00Z") || !strings.Contains(text, "(125%): OVER THE LIMIT") {
		t.Errorf("report:\n%s", text)
	}
	if _, late := cacheReport(t, CacheOptions{At: cacheAt.Add(24 * time.Hour), HubLimit: 100}); !strings.Contains(late, "Docker Hub: 0 pulls") {
		t.Errorf("a day later the window is empty:\n%s", late)
	}
}

func TestCacheReportJSON(t *testing.T) {
	_, out := cacheReport(t, CacheOptions{At: cacheAt, HubLimit: 100, JSON: true})
	var j struct {
		Pulls      int64 `json:"pulls"`
		Registries []struct {
			Registry string   `json:"registry"`
			Pulls    int64    `json:"pulls"`
			Hit      int64    `json:"hit"`
			HitRatio *float64 `json:"hit_ratio"`
			Bytes    int64    `json:"bytes_downloaded"`
		} `json:"registries"`
		DockerHub struct {
			WindowStart string `json:"window_start"`
			Pulls       int64  `json:"pulls"`
			Limit       int64  `json:"limit"`
		} `json:"docker_hub"`
		Evicted []struct {
			Reference string `json:"reference"`
			Change    Advice `json:"change"`
		} `json:"evicted_too_early"`
	}
	if err := json.Unmarshal([]byte(out), &j); err != nil || strings.Count(out, "\n") != 1 {
		t.Fatalf("not one JSON object: %v\n%s", err, out)
	}
	if j.Pulls != 9 || len(j.Registries) != 3 || j.Registries[0].Registry != "docker.io" || *j.Registries[0].HitRatio != 0.2 ||
		j.Registries[2].HitRatio != nil || j.Registries[0].Bytes != 52<<20 {
		t.Errorf("registries %+v", j.Registries)
	}
	if j.DockerHub.Pulls != 5 || j.DockerHub.Limit != 100 || j.DockerHub.WindowStart != "2026-11-26T06:00:00Z" {
		t.Errorf("docker_hub %+v", j.DockerHub)
	}
	if len(j.Evicted) != 2 || j.Evicted[0].Change.MinAge != "4h" || j.Evicted[1].Change.RaiseMinAgeBy != "2h35m" {
		t.Errorf("evicted_too_early %+v", j.Evicted)
	}
}

// An empty log, or one from before pulls were recorded, says so.
func TestCacheReportOfALogWithoutPulls(t *testing.T) {
	var out bytes.Buffer
	c, err := CacheReport(strings.NewReader(sample), &out, CacheOptions{At: cacheAt, HubLimit: 100})
	if err != nil || c.Pulls != 0 {
		t.Fatalf("%v, %d pulls", err, c.Pulls)
	}
	for _, s := range []string{"cache: 0 pulls in 8 lines\n", "no pulls recorded", "Docker Hub: 0 pulls", "evicted too early: none"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("report lacks %q:\n%s", s, out.String())
		}
	}
}

func TestShortDurations(t *testing.T) {
	for d, want := range map[time.Duration]string{
		20 * time.Second: "under a minute", 45 * time.Minute: "45m", 2 * time.Hour: "2h",
		90*time.Minute + 20*time.Second: "1h30m", 26 * time.Hour: "26h",
	} {
		if got := short(d); got != want {
			t.Errorf("short(%v) = %q, want %q", d, got, want)
		}
	}
}
