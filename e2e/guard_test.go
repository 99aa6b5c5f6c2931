package e2e

import (
	"strings"
	"testing"

	"github.com/prune-guard/prune-guard/internal/enginetest"
)

// Filters that make POST /images/prune remove tagged images too. Each was
// checked against an unguarded dockerd 20.10: it deletes every unused
// tagged image.
const (
	danglingFalse       = "%7B%22dangling%22%3A%7B%22false%22%3Atrue%7D%7D" // {"dangling":{"false":true}}
	danglingFalseLegacy = "%7B%22dangling%22%3A%5B%22false%22%5D%7D"        // {"dangling":["false"]}
	danglingZero        = "%7B%22dangling%22%3A%7B%220%22%3Atrue%7D%7D"     // {"dangling":{"0":true}}
	emptyFilters        = "%7B%7D"                                          // {}
)

func TestPruneThatRemovesTaggedImagesIsAlwaysDenied(t *testing.T) {
	t.Parallel()
	g := startGuard(t)
	tags := buildTagged(t, g)
	dangling := g.MakeDangling(t)

	cli := []struct {
		name string
		args []string
		want []string
	}{
		{"docker image prune -af", []string{"image", "prune", "-af"}, []string{"(rule no-prune-all)"}},
		{"docker system prune -af", []string{"system", "prune", "-af"}, []string{"(rule no-prune-all)"}},
		// With --volumes the CLI prunes volumes before images; on API 1.41
		// a volume prune removes named volumes, so no-volume-prune-all
		// denies first. Either way nothing tagged may go.
		{"docker system prune -af --volumes", []string{"system", "prune", "-af", "--volumes"}, []string{"(rule no-"}},
		{"docker builder prune -af", []string{"builder", "prune", "-af"}, []string{"(rule no-build-prune-all)"}},
	}
	for _, tc := range cli {
		t.Run(tc.name, func(t *testing.T) {
			victim := buildVictim(t, g)
			g.mustDeny(t, tc.args, tc.want...)
			requireImages(t, g, victim)
		})
	}

	raw := []struct{ name, uri string }{
		{"filters dangling=false", "/v1.41/images/prune?filters=" + danglingFalse},
		{"legacy filters form dangling=[false]", "/v1.41/images/prune?filters=" + danglingFalseLegacy},
		{"filters dangling=0", "/v1.41/images/prune?filters=" + danglingZero},
		{"unversioned path", "/images/prune?filters=" + danglingFalse},
		{"percent-encoded path", "/v1.41/images/%70rune?filters=" + danglingFalse},
		{"absolute-form request target", "http://docker/v1.41/images/prune?filters=" + danglingFalse},
		// dockerd reads the first filters value.
		{"repeated filters key with dangling=false first", "/v1.41/images/prune?filters=" + danglingFalse + "&filters=" + emptyFilters},
	}
	for _, tc := range raw {
		t.Run("raw HTTP "+tc.name, func(t *testing.T) {
			victim := buildVictim(t, g)
			g.mustDenyHTTP(t, "POST", tc.uri)
			requireImages(t, g, victim)
		})
	}

	// Below API 1.42 dockerd makes every volume prune remove named volumes,
	// so the CLI's plain volume prune is volume-prune-all and denied. From
	// 1.42 (CLI and engine 23.0 and later) it removes anonymous volumes
	// only and passes; --all (CLI 23.0 and later) is the one denied.
	t.Run("docker volume prune", func(t *testing.T) {
		g.mustAllow(t, "volume", "create", "pg-keep")
		mark := auditMark(t, g)
		if namedVolumesPrunedByDefault(t, g) {
			g.mustDeny(t, []string{"volume", "prune", "-f"}, "(rule no-volume-prune-all)")
		} else {
			g.mustAllow(t, "volume", "prune", "-f")
			g.mustAllow(t, "volume", "inspect", "pg-keep")
			g.mustDeny(t, []string{"volume", "prune", "-af"}, "(rule no-volume-prune-all)")
		}
		g.mustAllow(t, "volume", "inspect", "pg-keep")
		auditLine(t, g, mark, map[string]string{"decision": "deny", "rule": "no-volume-prune-all", "operation": "volume-prune-all"})
	})

	// None of the denied attempts reached the daemon: every image built
	// before them, dangling included, is still there.
	requireImages(t, g, append(tags, dangling)...)

	t.Run("audit log records the denial of docker image prune -af", func(t *testing.T) {
		mark := auditMark(t, g)
		g.mustDeny(t, []string{"image", "prune", "-af"})
		line := auditLine(t, g, mark, map[string]string{
			"decision":  "deny",
			"rule":      "no-prune-all",
			"operation": "image-prune-all",
			"method":    "POST",
		})
		requireAuditFields(t, line)
		if uri, _ := line["uri"].(string); !strings.Contains(uri, "/images/prune") {
			t.Errorf("audit uri = %q, want the prune request's URI", uri)
		}
	})
}

func TestDanglingImagePruneIsAllowedWhileNoRunIsActive(t *testing.T) {
	t.Parallel()
	g := startGuard(t)
	tags := buildTagged(t, g)

	t.Run("docker image prune -f", func(t *testing.T) {
		dangling := g.MakeDangling(t)
		mark := auditMark(t, g)
		g.mustAllow(t, "image", "prune", "-f")
		requireGone(t, g, dangling)
		requireImages(t, g, tags...)
		line := auditLine(t, g, mark, map[string]string{"decision": "allow", "operation": "image-prune"})
		requireAuditFields(t, line)
	})
	t.Run("raw HTTP POST /v1.41/images/prune without filters", func(t *testing.T) {
		dangling := g.MakeDangling(t)
		if status, body := g.HTTP(t, "POST", "/v1.41/images/prune", nil, nil); status != 200 {
			t.Fatalf("POST /v1.41/images/prune = %d %s; want 200", status, body)
		}
		requireGone(t, g, dangling)
		requireImages(t, g, tags...)
	})
	t.Run("docker rmi of an unused tagged image", func(t *testing.T) {
		spare := "pg-spare:" + enginetest.Nonce(t)
		g.BuildImage(t, spare, map[string]string{"spare": spare}, nil)
		mark := auditMark(t, g)
		g.mustAllow(t, "rmi", spare)
		requireGone(t, g, spare)
		auditLine(t, g, mark, map[string]string{"decision": "allow", "operation": "image-delete"})
	})
}

// A run is active while a container (created, running, paused or
// restarting) or a swarm service carries the run label. While it is, image
// deletes and every prune are denied, naming the run; once it is gone they
// work again.
func TestActiveRunBlocksImageDeletesAndPrunes(t *testing.T) {
	t.Parallel()
	g := startGuard(t)
	base := "pg-run-base:1"
	g.BuildImage(t, base, nil, nil)

	type runKind struct {
		name  string
		start func(t *testing.T, label, name string)
		stop  func(t *testing.T, name string)
	}
	rmContainer := func(t *testing.T, name string) { g.mustAllow(t, "rm", "-f", name) }
	kinds := []runKind{
		{"running container", func(t *testing.T, label, name string) {
			g.mustAllow(t, "run", "-d", "--label", label, "--name", name, base)
		}, rmContainer},
		{"created container", func(t *testing.T, label, name string) {
			g.mustAllow(t, "create", "--label", label, "--name", name, base)
		}, rmContainer},
		{"paused container", func(t *testing.T, label, name string) {
			g.mustAllow(t, "run", "-d", "--label", label, "--name", name, base)
			if _, stderr, err := g.Docker(t, "pause", name); err != nil {
				g.mustAllow(t, "rm", "-f", name)
				if pauseUnsupported(stderr) {
					enginetest.Unavailable(t, "this kernel cannot pause containers (cgroup freezer): %s", stderr)
				}
				t.Fatalf("docker pause: %v\n%s", err, stderr)
			}
		}, rmContainer},
		{"swarm service without replicas", func(t *testing.T, label, name string) {
			g.SwarmInit(t)
			// The service marks the run even with no task running.
			g.mustAllow(t, "service", "create", "--detach", "--no-resolve-image", "--replicas", "0",
				"--label", label, "--name", name, base)
		}, func(t *testing.T, name string) { g.mustAllow(t, "service", "rm", name) }},
	}
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			n := enginetest.Nonce(t)
			runID := "ci-" + n
			name := "pg-run-" + n
			spare := "pg-spare:" + n
			g.BuildImage(t, spare, map[string]string{"spare": n}, nil)
			dangling := g.MakeDangling(t)
			bystander := "pg-bystander-" + n // unlabelled and stopped: container prune's prey
			g.mustAllow(t, "create", "--name", bystander, base)
			t.Cleanup(func() { g.Docker(t, "rm", "-f", bystander) })
			network := "pg-net-" + n
			g.mustAllow(t, "network", "create", network)
			t.Cleanup(func() { g.Docker(t, "network", "rm", network) })
			volume := "pg-vol-" + n
			g.mustAllow(t, "volume", "create", volume)
			t.Cleanup(func() { g.Docker(t, "volume", "rm", volume) })

			k.start(t, runLabel+"="+runID, name)
			stopped := false
			t.Cleanup(func() {
				if !stopped {
					k.stop(t, name)
				}
			})

			mark := auditMark(t, g)
			g.mustDeny(t, []string{"rmi", spare}, "(rule no-delete-during-run)", runID, name)
			line := auditLine(t, g, mark, map[string]string{"decision": "deny", "rule": "no-delete-during-run", "operation": "image-delete"})
			requireAuditFields(t, line)
			if runs := auditRuns(t, line); !anyContains(runs, runID) {
				t.Errorf("audit runs = %q, want the active run %s", runs, runID)
			}
			for _, args := range [][]string{
				{"image", "prune", "-f"},
				{"container", "prune", "-f"},
				{"network", "prune", "-f"},
				{"builder", "prune", "-f"},
			} {
				g.mustDeny(t, args, "(rule no-prune-during-run)", runID, name)
			}
			// Below API 1.42 no-volume-prune-all matches first, so this
			// denial names that rule rather than the run.
			if namedVolumesPrunedByDefault(t, g) {
				g.mustDeny(t, []string{"volume", "prune", "-f"}, "(rule no-volume-prune-all)")
			} else {
				g.mustDeny(t, []string{"volume", "prune", "-f"}, "(rule no-prune-during-run)", runID, name)
			}

			requireImages(t, g, spare, dangling, base)
			g.mustAllow(t, "container", "inspect", bystander)
			g.mustAllow(t, "network", "inspect", network)
			g.mustAllow(t, "volume", "inspect", volume)

			// Teardown ends the run: the same requests now work.
			k.stop(t, name)
			stopped = true
			g.mustAllow(t, "rmi", spare)
			requireGone(t, g, spare)
			g.mustAllow(t, "image", "prune", "-f")
			requireGone(t, g, dangling)
			requireImages(t, g, base)
		})
	}

	t.Run("unlabelled container is not a run", func(t *testing.T) {
		n := enginetest.Nonce(t)
		spare := "pg-spare:" + n
		g.BuildImage(t, spare, map[string]string{"spare": n}, nil)
		name := "pg-plain-" + n
		g.mustAllow(t, "run", "-d", "--label", "other.label=x", "--name", name, base)
		t.Cleanup(func() { g.Docker(t, "rm", "-f", name) })
		g.mustAllow(t, "rmi", spare)
		requireGone(t, g, spare)
	})
}

// pauseUnsupported reports whether docker pause failed because the kernel
// lacks the cgroup freezer, the one reason to skip the paused case.
func pauseUnsupported(stderr string) bool {
	s := strings.ToLower(stderr)
	return strings.Contains(s, "freezer") || strings.Contains(s, "not supported")
}

// Requests that destroy no cache pass through untouched, with or without an
// active run.
func TestOtherRequestsPassThroughUntouched(t *testing.T) {
	t.Parallel()
	g := startGuard(t)
	for _, during := range []bool{false, true} {
		name := "without a run"
		if during {
			name = "during a run"
		}
		t.Run(name, func(t *testing.T) {
			n := enginetest.Nonce(t)
			img := "pg-pass:" + n
			id := g.BuildImage(t, img, map[string]string{"pass": n}, map[string]string{"pg.test": n}) // docker build
			if during {
				run := "pg-run-" + n
				g.mustAllow(t, "run", "-d", "--label", runLabel+"=ci-"+n, "--name", run, img)
				t.Cleanup(func() { g.Docker(t, "rm", "-f", run) })
			}

			g.mustAllow(t, "ps", "-a")
			if out := g.mustAllow(t, "images", "--no-trunc"); !strings.Contains(out, id) {
				t.Errorf("docker images does not list %s:\n%s", id, out)
			}
			if out := g.mustAllow(t, "run", "--rm", img, "busybox", "echo", "hello "+n); strings.TrimSpace(out) != "hello "+n {
				t.Errorf("docker run printed %q, want %q", out, "hello "+n)
			}
			g.mustAllow(t, "run", "--rm", img, "busybox", "true")
			if out := g.mustAllow(t, "inspect", "--format", "{{.Id}}", img); strings.TrimSpace(out) != id {
				t.Errorf("docker inspect = %q, want %s", out, id)
			}
			if out := g.mustAllow(t, "version"); !strings.Contains(out, "Server:") {
				t.Errorf("docker version shows no server:\n%s", out)
			}
			g.mustAllow(t, "tag", img, img+"-copy")
			g.mustAllow(t, "create", "--name", "pg-gone-"+n, img)
			g.mustAllow(t, "rm", "pg-gone-"+n)

			// The pull fails, but with dockerd's own error: the plugin
			// let it through.
			_, stderr, err := g.Docker(t, "pull", "127.0.0.1:1/nope")
			if err == nil {
				t.Fatal("docker pull 127.0.0.1:1/nope succeeded; want a connection error")
			}
			if strings.Contains(stderr, "authorization") || !strings.Contains(stderr, "127.0.0.1:1") {
				t.Errorf("docker pull 127.0.0.1:1/nope failed with %q; want the daemon's own network error", stderr)
			}
			requireImages(t, g, img, img+"-copy")
		})
	}
}

// --run-label chooses the label that marks a run.
func TestCustomRunLabelMarksARun(t *testing.T) {
	t.Parallel()
	e, p := enginetest.StartGuarded(t, enginetest.Options{PluginArgs: []string{"--run-label", "ci.job"}})
	g := guard{Engine: e, plugin: p}
	n := enginetest.Nonce(t)
	base := "pg-base:" + n
	g.BuildImage(t, base, nil, nil)
	spare := "pg-spare:" + n
	g.BuildImage(t, spare, map[string]string{"spare": n}, nil)

	run := "pg-job-" + n
	g.mustAllow(t, "run", "-d", "--label", "ci.job=job-"+n, "--name", run, base)
	g.mustDeny(t, []string{"rmi", spare}, "(rule no-delete-during-run)", "job-"+n, run)
	requireImages(t, g, spare)

	g.mustAllow(t, "rm", "-f", run)
	g.mustAllow(t, "rmi", spare)
	requireGone(t, g, spare)
}
