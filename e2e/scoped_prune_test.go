package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prune-guard/prune-guard/internal/enginetest"
)

// Label-scoped prunes (issue 9, part 2) and the CI systems' official
// cleaners, on a real engine, with the real docker CLI and as the raw HTTP
// requests the CLI sends. Each case checks what is left on the engine, not
// only the status code.

// gitlabManaged is the label GitLab's clear-docker-cache scopes its prunes
// with (packaging/root/usr/share/gitlab-runner/clear-docker-cache).
const gitlabManaged = "com.gitlab.gitlab-runner.managed=true"

func containerExists(t testing.TB, g guard, name string) bool {
	t.Helper()
	_, _, err := g.Docker(t, "container", "inspect", "--format", "{{.Id}}", name)
	return err == nil
}

func networkExists(t testing.TB, g guard, name string) bool {
	t.Helper()
	_, _, err := g.Docker(t, "network", "inspect", "--format", "{{.Id}}", name)
	return err == nil
}

func volumeExists(t testing.TB, g guard, name string) bool {
	t.Helper()
	_, _, err := g.Docker(t, "volume", "inspect", "--format", "{{.Name}}", name)
	return err == nil
}

// The GitHub Actions container hooks prune networks at the start and end of
// every job with a label filter on hex(RUNNER_NAME)
// (actions/runner-container-hooks packages/docker/src/dockerCommands/
// network.ts), and a failed prune fails the job. With two runners on one
// host, runner A's prune must pass while runner B's job is active, and must
// still be refused when it would select the active job's objects.
func TestGitHubHooksNetworkPrunePassesWhileAnotherRunnersJobIsActive(t *testing.T) {
	t.Parallel()
	g := startCIGuard(t)
	base := "pg-cibase:1"
	g.BuildImage(t, base, nil, nil)
	n := enginetest.Nonce(t)
	runnerA, runnerB := hexOf("runner-a-"+n[:4]), hexOf("runner-b-"+n[:4])

	// Runner B's job is running: its job container and network carry its
	// key with an empty value, as the hooks create them.
	jobB := "pg-gh-job-b-" + n
	g.mustAllow(t, "run", "-d", "--name", jobB, "--label", runnerB, base)
	t.Cleanup(func() { g.Docker(t, "rm", "-f", jobB) })
	netB := "github_network_b_" + n
	g.mustAllow(t, "network", "create", "--label", runnerB, netB)
	t.Cleanup(func() { g.Docker(t, "network", "rm", netB) })
	jobText := "GitHub Actions job, container " + jobB

	leftoverA := func(t *testing.T) string {
		t.Helper()
		net := "github_network_a_" + enginetest.Nonce(t)
		g.mustAllow(t, "network", "create", "--label", runnerA, net)
		t.Cleanup(func() { g.Docker(t, "network", "rm", net) })
		return net
	}
	requireB := func(t *testing.T) {
		t.Helper()
		if !networkExists(t, g, netB) {
			t.Errorf("runner B's network %s is gone", netB)
		}
		if !containerExists(t, g, jobB) {
			t.Errorf("runner B's job container %s is gone", jobB)
		}
	}

	t.Run("runner A's prune as raw HTTP passes and removes only A's network", func(t *testing.T) {
		netA := leftoverA(t)
		if st := g.passHTTP(t, "POST", "/v1.41/networks/prune?"+filtersQuery(`{"label":{"`+runnerA+`":true}}`)); st != 200 {
			t.Errorf("network prune = %d, want 200", st)
		}
		if networkExists(t, g, netA) {
			t.Errorf("runner A's network %s survived its own prune", netA)
		}
		requireB(t)
	})
	t.Run("runner A's prune as the issue writes it (unencoded, bare path) passes", func(t *testing.T) {
		netA := leftoverA(t)
		if st := g.passHTTP(t, "POST", `/networks/prune?filters={"label":{"`+runnerA+`":true}}`); st != 200 {
			t.Errorf("network prune = %d, want 200", st)
		}
		if networkExists(t, g, netA) {
			t.Errorf("runner A's network %s survived its own prune", netA)
		}
		requireB(t)
	})
	t.Run("runner A's prune with the CLI, as the hooks run it, passes", func(t *testing.T) {
		netA := leftoverA(t)
		g.mustAllow(t, "network", "prune", "--force", "--filter", "label="+runnerA)
		if networkExists(t, g, netA) {
			t.Errorf("runner A's network %s survived its own prune", netA)
		}
		requireB(t)
	})
	t.Run("a prune scoped to the active job's key is refused", func(t *testing.T) {
		want := []string{"(rule no-prune-during-run)", "its label filter " + runnerB + " selects the job's objects", "active " + jobText}
		g.denyHTTP(t, "POST", "/v1.41/networks/prune?"+filtersQuery(`{"label":{"`+runnerB+`":true}}`), want...)
		g.mustDeny(t, []string{"network", "prune", "--force", "--filter", "label=" + runnerB}, want...)
		requireB(t)
	})
	t.Run("an unscoped network prune is refused", func(t *testing.T) {
		netA := leftoverA(t)
		g.mustDeny(t, []string{"network", "prune", "-f"}, "(rule no-prune-during-run)", "active "+jobText)
		if !networkExists(t, g, netA) {
			t.Errorf("network %s is gone after a refused prune", netA)
		}
		requireB(t)
	})
	t.Run("container and dangling-image prunes scoped to runner A pass", func(t *testing.T) {
		m := enginetest.Nonce(t)
		stoppedA := "pg-gh-a-" + m
		g.mustAllow(t, "create", "--name", stoppedA, "--label", runnerA+"-stopped", base)
		t.Cleanup(func() { g.Docker(t, "rm", "-f", stoppedA) })
		// A created container with runner A's key is itself a job, so the
		// leftover carries a different label and is selected by it.
		g.mustAllow(t, "container", "prune", "-f", "--filter", "label="+runnerA+"-stopped")
		if containerExists(t, g, stoppedA) {
			t.Errorf("container %s survived the scoped container prune", stoppedA)
		}
		g.mustAllow(t, "image", "prune", "-f", "--filter", "label="+runnerA)
		g.passHTTP(t, "POST", "/v1.42/volumes/prune?"+filtersQuery(`{"label":{"`+runnerA+`":true}}`))
		requireB(t)
	})
	t.Run("an image prune --all scoped to another label is still refused during a job", func(t *testing.T) {
		m := enginetest.Nonce(t)
		img := "pg-scoped:" + m
		g.BuildImage(t, img, map[string]string{"scoped": m}, map[string]string{"ci.scope": m})
		g.mustDeny(t, []string{"image", "prune", "-af", "--filter", "label=ci.scope=" + m}, "(rule no-prune-during-run)", "active "+jobText)
		requireImages(t, g, img, base)
	})
}

// gitlabHost is what a GitLab docker-executor host holds when
// clear-docker-cache runs: a base image without GitLab's label (pulled by a
// job), an image carrying it, a finished job's exited container and its
// network and cache volume.
type gitlabHost struct {
	base, managedImage, exited, network, volume string
}

func newGitLabHost(t *testing.T, g guard) gitlabHost {
	t.Helper()
	n := enginetest.Nonce(t)
	h := gitlabHost{
		base:         "pg-alpine:" + n,
		managedImage: "pg-runner-built-" + n + ":latest",
		exited:       "runner-t3stt0k3-project-42-concurrent-0-" + n + "-build",
		network:      "runner-t3stt0k3-project-42-concurrent-0-job-4700-network-" + n,
		volume:       "runner-t3stt0k3-project-42-concurrent-0-cache-" + n,
	}
	g.BuildImage(t, h.base, map[string]string{"base": n}, nil)
	g.BuildImage(t, h.managedImage, map[string]string{"managed": n}, map[string]string{"com.gitlab.gitlab-runner.managed": "true"})
	// Finished: exited, so it no longer counts as a job.
	g.mustAllow(t, "run", "--name", h.exited, "--label", "com.gitlab.gitlab-runner.job.id=4700", "--label", gitlabManaged, h.base, "busybox", "true")
	t.Cleanup(func() { g.Docker(t, "rm", "-f", h.exited) })
	g.mustAllow(t, "network", "create", "--label", gitlabManaged, h.network)
	t.Cleanup(func() { g.Docker(t, "network", "rm", h.network) })
	g.mustAllow(t, "volume", "create", "--label", gitlabManaged, "--label", "com.gitlab.gitlab-runner.job.id=4700", h.volume)
	t.Cleanup(func() { g.Docker(t, "volume", "rm", h.volume) })
	return h
}

// requireCleaned checks the state a clear-docker-cache run that got past
// its image step leaves: the labelled objects gone, the base image kept.
func (h gitlabHost) requireCleaned(t *testing.T, g guard) {
	t.Helper()
	requireGone(t, g, h.managedImage)
	requireImages(t, g, h.base)
	if containerExists(t, g, h.exited) {
		t.Errorf("exited job container %s survived clear-docker-cache", h.exited)
	}
	if networkExists(t, g, h.network) {
		t.Errorf("job network %s survived clear-docker-cache", h.network)
	}
}

// requireUntouched checks that nothing was removed.
func (h gitlabHost) requireUntouched(t *testing.T, g guard) {
	t.Helper()
	requireImages(t, g, h.base, h.managedImage)
	if !containerExists(t, g, h.exited) {
		t.Errorf("container %s is gone", h.exited)
	}
	if !networkExists(t, g, h.network) {
		t.Errorf("network %s is gone", h.network)
	}
	if !volumeExists(t, g, h.volume) {
		t.Errorf("volume %s is gone", h.volume)
	}
}

// GitLab Runner's clear-docker-cache, at each of its versions, under the
// default policy (see docs/ci-systems.md for the script's history).
func TestGitLabClearDockerCacheUnderTheDefaultPolicy(t *testing.T) {
	t.Parallel()
	g := startCIGuard(t)
	managedFilter := filtersQuery(`{"label":{"` + gitlabManaged + `":true}}`)
	oldVolumeAPI := apiBefore(t, serverAPIVersion(t, g), "1.42")

	// ≤ v18: docker system prune -af --filter label=…managed=true. The CLI
	// prunes containers, networks, images (dangling=false plus the label)
	// and then the build cache with all=1; the daemon ignores a build
	// prune's label filter, so that last step is refused and the command
	// exits non-zero after the scoped steps have done their work.
	t.Run("v18 system prune -af with the managed label: scoped steps pass, the build-cache step is refused", func(t *testing.T) {
		h := newGitLabHost(t, g)
		g.mustDeny(t, []string{"system", "prune", "-af", "--filter", "label=" + gitlabManaged}, "build cache prune --all is blocked (rule no-build-prune-all)")
		h.requireCleaned(t, g)
	})
	t.Run("v18 system prune -af as the CLI's raw requests", func(t *testing.T) {
		h := newGitLabHost(t, g)
		for _, uri := range []string{
			"/v1.41/containers/prune?" + managedFilter,
			"/v1.41/networks/prune?" + managedFilter,
			"/v1.41/images/prune?" + filtersQuery(`{"dangling":{"false":true},"label":{"`+gitlabManaged+`":true}}`),
		} {
			if st := g.passHTTP(t, "POST", uri); st != 200 {
				t.Errorf("POST %s = %d, want 200", uri, st)
			}
		}
		g.denyHTTP(t, "POST", "/v1.41/build/prune?all=1&"+managedFilter, "(rule no-build-prune-all)")
		h.requireCleaned(t, g)
	})
	// v19.2.0–v19.2.2: IMAGE_FILTER_FLAGS defaulted to empty, so the image
	// step was an unfiltered image prune -af.
	t.Run("v19.2 unfiltered image prune -af is refused", func(t *testing.T) {
		h := newGitLabHost(t, g)
		g.mustAllow(t, "container", "prune", "-f", "--filter", "label="+gitlabManaged)
		g.mustDeny(t, []string{"image", "prune", "-af"}, "(rule no-prune-all)")
		requireImages(t, g, h.base, h.managedImage)
	})
	// v19.3.0: the image filter is back; separate commands, and network
	// prune is unfiltered in every version.
	t.Run("v19.3 prune mode passes and keeps the unlabelled base image", func(t *testing.T) {
		h := newGitLabHost(t, g)
		g.mustAllow(t, "container", "prune", "-f", "--filter=label="+gitlabManaged)
		g.mustAllow(t, "image", "prune", "-af", "--filter=label="+gitlabManaged)
		g.mustAllow(t, "network", "prune", "-f")
		h.requireCleaned(t, g)
	})
	// prune-volumes mode (the script's default) adds a volume prune with
	// the label. Volume prunes that remove named volumes are refused
	// whatever their label (no-volume-prune-all is not scoped).
	t.Run("v19.3 prune-volumes mode: the volume step is refused", func(t *testing.T) {
		h := newGitLabHost(t, g)
		// Docker < 23.0 clients: volume prune -f --filter; at API < 1.42
		// the daemon prunes named volumes too.
		g.denyHTTP(t, "POST", "/v1.41/volumes/prune?"+managedFilter, "(rule no-volume-prune-all)")
		// Docker ≥ 23.0 clients: volume prune -af --filter.
		_, stderr, err := g.Docker(t, "volume", "prune", "-af", "--filter=label="+gitlabManaged)
		switch {
		case err == nil:
			t.Errorf("volume prune -af --filter=label=%s succeeded; want it refused", gitlabManaged)
		case oldVolumeAPI && !strings.Contains(stderr, g.denialPrefix()):
			// The CLI refuses --all itself against an API < 1.42 daemon.
			t.Logf("the CLI refused volume prune --all itself on this API version: %s", strings.TrimSpace(stderr))
		case !strings.Contains(stderr, "(rule no-volume-prune-all)"):
			t.Errorf("volume prune -af: %v\n%s\nwant a no-volume-prune-all denial", err, stderr)
		}
		if !volumeExists(t, g, h.volume) {
			t.Errorf("cache volume %s is gone", h.volume)
		}
	})
	t.Run("during a GitLab job every step is refused and nothing is removed", func(t *testing.T) {
		h := newGitLabHost(t, g)
		startJob(t, g, ciJob{name: "runner-t3stt0k3-project-42-concurrent-1-" + enginetest.Nonce(t) + "-build", running: true,
			labels: []string{"com.gitlab.gitlab-runner.job.id=4711", gitlabManaged}}, h.base)
		jobText := "active GitLab job 4711, container runner-t3stt0k3-project-42-concurrent-1-"
		g.mustDeny(t, []string{"system", "prune", "-af", "--filter", "label=" + gitlabManaged}, "(rule no-prune-during-run)", jobText)
		// The job's own container carries the managed label, so the scoped
		// container prune selects it.
		g.mustDeny(t, []string{"container", "prune", "-f", "--filter=label=" + gitlabManaged},
			"(rule no-prune-during-run)", "its label filter "+gitlabManaged+" selects the job's objects", jobText)
		g.mustDeny(t, []string{"image", "prune", "-af", "--filter=label=" + gitlabManaged}, "(rule no-prune-during-run)", jobText)
		g.mustDeny(t, []string{"network", "prune", "-f"}, "(rule no-prune-during-run)", jobText)
		h.requireUntouched(t, g)
	})
}

// Only a positive label filter scopes an image prune --all; a build prune's
// label filter never does.
func TestOnlyAPositiveLabelFilterScopesAnImagePruneAll(t *testing.T) {
	t.Parallel()
	g := startCIGuard(t)
	n := enginetest.Nonce(t)
	base := "pg-alpine:" + n
	g.BuildImage(t, base, map[string]string{"base": n}, nil)
	scoped := func(t *testing.T, labels map[string]string) string {
		t.Helper()
		m := enginetest.Nonce(t)
		img := "pg-scoped-" + m + ":1"
		g.BuildImage(t, img, map[string]string{"scoped": m}, labels)
		return img
	}

	t.Run("label=KEY=VALUE removes only images carrying it", func(t *testing.T) {
		m := enginetest.Nonce(t)
		img := scoped(t, map[string]string{"ci.scope": m})
		other := scoped(t, map[string]string{"ci.scope": "other-" + m})
		g.mustAllow(t, "image", "prune", "-af", "--filter", "label=ci.scope="+m)
		requireGone(t, g, img)
		requireImages(t, g, base, other)
	})
	t.Run("label=KEY as raw HTTP removes only images carrying the key", func(t *testing.T) {
		key := "ci.scope." + enginetest.Nonce(t)
		img := scoped(t, map[string]string{key: "x"})
		uri := "/v1.41/images/prune?" + filtersQuery(`{"dangling":{"false":true},"label":{"`+key+`":true}}`)
		if st := g.passHTTP(t, "POST", uri); st != 200 {
			t.Errorf("POST %s = %d, want 200", uri, st)
		}
		requireGone(t, g, img)
		requireImages(t, g, base)
	})
	t.Run("label!= does not scope", func(t *testing.T) {
		img := scoped(t, map[string]string{"ci.scope": "keep"})
		g.mustDeny(t, []string{"image", "prune", "-af", "--filter", "label!=ci.scope=keep"}, "(rule no-prune-all)")
		requireImages(t, g, base, img)
	})
	t.Run("KEY!=VALUE inside label does not scope", func(t *testing.T) {
		img := scoped(t, map[string]string{"ci.scope": "x"})
		g.denyHTTP(t, "POST", "/v1.41/images/prune?"+filtersQuery(`{"dangling":{"false":true},"label":{"ci.scope!=x":true}}`), "(rule no-prune-all)")
		requireImages(t, g, base, img)
	})
	// buildkite/elastic-ci-stack-for-aws docker-low-disk-gc.
	t.Run("until does not scope: Buildkite docker-low-disk-gc is refused", func(t *testing.T) {
		g.mustDeny(t, []string{"image", "prune", "--all", "--force", "--filter", "until=4h"}, "(rule no-prune-all)")
		g.mustDeny(t, []string{"builder", "prune", "--all", "--force", "--filter", "until=4h"}, "(rule no-build-prune-all)")
		requireImages(t, g, base)
	})
	t.Run("a build prune's label filter does not scope", func(t *testing.T) {
		g.mustDeny(t, []string{"builder", "prune", "-af", "--filter", "label=ci.scope=x"}, "(rule no-build-prune-all)")
		g.denyHTTP(t, "POST", "/v1.41/build/prune?all=1&"+filtersQuery(`{"label":{"ci.scope=x":true}}`), "(rule no-build-prune-all)")
	})
	t.Run("a scoped prune that would take a protected image is refused", func(t *testing.T) {
		m := enginetest.Nonce(t)
		kept := scoped(t, map[string]string{"ci.scope": m, "prune-guard.keep": "true"})
		plain := scoped(t, map[string]string{"ci.scope": m})
		g.mustDeny(t, []string{"image", "prune", "-af", "--filter", "label=ci.scope=" + m}, "(rule keep-protected)")
		requireImages(t, g, kept, plain, base)
	})
}

// Scoping is a rule condition (no-prune-all's "when: unscoped"): an operator
// who wants every image prune --all refused sets it back to "always".
func TestOperatorTurnsLabelScopingOffWithAPolicyFile(t *testing.T) {
	t.Parallel()
	def, err := exec.Command(enginetest.BuildBinary(t), "policy", "default").Output()
	if err != nil {
		t.Fatalf("prune-guard policy default: %v", err)
	}
	const unscoped = "  - name: no-prune-all\n    match: [\"image-prune-all\"]\n    when: unscoped\n"
	if !strings.Contains(string(def), unscoped) {
		t.Fatalf("prune-guard policy default has no %q:\n%s", unscoped, def)
	}
	strict := strings.Replace(string(def), unscoped, strings.Replace(unscoped, "unscoped", "always", 1), 1)
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte(strict), 0o644); err != nil {
		t.Fatal(err)
	}
	g := startCIGuard(t, "--policy", path)
	m := enginetest.Nonce(t)
	img := "pg-scoped-" + m + ":1"
	g.BuildImage(t, img, map[string]string{"scoped": m}, map[string]string{"ci.scope": m})
	g.mustDeny(t, []string{"image", "prune", "-af", "--filter", "label=ci.scope=" + m}, "(rule no-prune-all)")
	requireImages(t, g, img)
	// The rest of the default policy is unchanged.
	g.mustAllow(t, "image", "prune", "-f")
}
