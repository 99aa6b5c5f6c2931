package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/internal/enginetest"
)

// The teardown grace (issue 9) on a real engine: after a CI job's last
// container is gone, image deletes and image prunes stay refused for
// run.grace and the denial says when they resume; container and network
// prunes scoped to the ended job pass at once; after the grace the image
// delete passes. The plugin learns the end from the engine's events (serve
// follows them), so nothing here tells it that a job ended.

// shortGrace is the grace for the tests that wait it out: long enough for
// the handful of requests each test makes inside it on a busy 2-core
// machine, short enough to wait for.
const shortGrace = 8 * time.Second

// graceBound bounds waiting for a grace to be over: the grace itself, plus
// room for a loaded machine.
func graceBound(grace time.Duration) time.Duration { return grace + 20*time.Second }

// startGraceGuard starts a guarded engine whose plugin has the teardown
// grace grace and the given extra arguments.
func startGraceGuard(t *testing.T, grace time.Duration, args ...string) guard {
	t.Helper()
	e, p := enginetest.StartGuarded(t, enginetest.Options{PluginArgs: append([]string{"--run-grace=" + grace.String()}, args...)})
	return guard{Engine: e, plugin: p}
}

// graceDenial is what an image delete's denial says when no job is live
// and job is among those in their teardown grace.
func graceDenial(job string) []string {
	return []string{"is blocked during a CI job's teardown grace (rule no-delete-during-run): in its teardown grace: ",
		job + " ended at ", "image deletes and image prunes resume at "}
}

// pruneGraceDenial is graceDenial for an image prune, refused by the prune
// rule.
func pruneGraceDenial(job string) []string {
	return []string{"image prune is blocked during a CI job's teardown grace (rule no-prune-during-run): in its teardown grace: ",
		job + " ended at ", "image deletes and image prunes resume at "}
}

// waitDeleteResumes retries "docker rmi ref" until prune-guard lets it
// through, within bound; every refusal meanwhile must be the grace's, for
// job. It returns how long the delete stayed refused.
func (g guard) waitDeleteResumes(t *testing.T, ref, job string, bound time.Duration) time.Duration {
	t.Helper()
	began := time.Now()
	for {
		_, stderr, err := g.Docker(t, "rmi", ref)
		if err == nil {
			return time.Since(began)
		}
		if !strings.Contains(stderr, g.denialPrefix()) {
			t.Fatalf("docker rmi %s failed without a prune-guard denial: %v\n%s", ref, err, stderr)
		}
		for _, w := range graceDenial(job) {
			if !strings.Contains(stderr, w) {
				t.Fatalf("docker rmi %s while waiting for the grace to end: denial does not mention %q:\n%s", ref, w, stderr)
			}
		}
		if time.Since(began) > bound {
			t.Fatalf("docker rmi %s still refused %v after the job ended:\n%s", ref, bound, stderr)
		}
		time.Sleep(250 * time.Millisecond) // polling the plugin's answer; the grace is seconds
	}
}

// scopeLabel is the label a scoped prune of j's objects uses: the first of
// its labels (KEY=VALUE, or KEY for GitHub's empty-valued key).
func (j ciJob) scopeLabel() string { return j.labels[0] }

// A few detectors through the whole cycle, each job labelled exactly as its
// CI system labels it: while the job's container lives every image delete
// and prune is refused; once it is removed, image deletes and image prunes
// are refused during the grace (the denial and the audit record name the
// ended job and when deletes resume) while container and network prunes
// scoped to the job's label pass at once; after the grace the image delete
// and the image prune pass.
func TestImageDeletesWaitOutTheTeardownGraceWhileScopedContainerAndNetworkPrunesPass(t *testing.T) {
	t.Parallel()
	g := startGraceGuard(t, shortGrace)
	base := "pg-gracebase:1"
	g.BuildImage(t, base, nil, nil)

	want := map[string]bool{"gitlab": true, "github-actions": true, "buildkite": true, "testcontainers": true}
	for _, j := range builtinJobs(enginetest.Nonce(t)) {
		// One container per CI system; the hooks variant of GitHub's key
		// is the back-to-back test's.
		if !want[j.detector] || len(j.labels) == 0 || strings.HasPrefix(j.name, "pg-hooks-") {
			continue
		}
		t.Run(j.detector+"/"+j.name, func(t *testing.T) {
			n := enginetest.Nonce(t)
			victim := "pg-grace-victim:" + n
			g.BuildImage(t, victim, map[string]string{"victim": n}, nil)
			dangling := g.MakeDangling(t)
			// The job's leftovers a scoped prune selects: a network and an
			// exited step container carrying the job's label.
			network := "pg-grace-net-" + n
			g.mustAllow(t, "network", "create", "--label", j.scopeLabel(), network)
			t.Cleanup(func() { g.Docker(t, "network", "rm", network) })
			step := "pg-grace-step-" + n
			g.mustAllow(t, "run", "--name", step, "--label", j.scopeLabel(), base, "busybox", "true")
			t.Cleanup(func() { g.Docker(t, "rm", "-f", step) })

			remove := startJob(t, g, j, base)
			g.mustDeny(t, []string{"rmi", victim}, "while a CI job is active (rule no-delete-during-run)", "active "+j.job)
			g.mustDeny(t, []string{"network", "prune", "-f", "--filter", "label=" + j.scopeLabel()},
				"(rule no-prune-during-run)", "selects the job's objects", "active "+j.job)

			remove()
			mark := auditMark(t, g)
			g.mustDeny(t, []string{"rmi", victim}, graceDenial(j.job)...)
			line := auditLine(t, g, mark, map[string]string{"decision": "deny", "rule": "no-delete-during-run", "operation": "image-delete"})
			if runs := auditRuns(t, line); !anyContains(runs, j.job+" (ended ") || !anyContains(runs, ", grace until ") {
				t.Errorf("audit runs = %q; want %q listed as ended with its grace", runs, j.job)
			}
			g.mustDeny(t, []string{"image", "prune", "-f"}, pruneGraceDenial(j.job)...)

			// The grace protects images only.
			g.mustAllow(t, "container", "prune", "-f", "--filter", "label="+j.scopeLabel())
			if containerExists(t, g, step) {
				t.Errorf("step container %s survived the scoped container prune", step)
			}
			g.mustAllow(t, "network", "prune", "-f", "--filter", "label="+j.scopeLabel())
			if networkExists(t, g, network) {
				t.Errorf("job network %s survived the scoped network prune", network)
			}
			requireImages(t, g, victim, dangling, base)

			waited := g.waitDeleteResumes(t, victim, j.job, graceBound(shortGrace))
			t.Logf("image delete refused for %v after the job ended (grace %v)", waited.Round(100*time.Millisecond), shortGrace)
			requireGone(t, g, victim)
			g.mustAllow(t, "image", "prune", "-f")
			requireGone(t, g, dangling)
			requireImages(t, g, base)
		})
	}
}

// GitHub's container hooks, back to back on one runner: runner A's job ends
// (the hooks remove its container), and its next job starts with
// POST /networks/prune?filters={"label":{"<hexA>":true}}, which fails the
// job if refused. It passes at once, inside the grace, and removes the
// ended job's network; a container prune scoped the same way and an
// unscoped one pass too; the ended job's image stays protected.
func TestGitHubHooksNextJobPrunesTheEndedJobsNetworkAtOnceDuringTheGrace(t *testing.T) {
	t.Parallel()
	g := startGraceGuard(t, 2*time.Minute) // the default: nothing here waits it out
	base := "pg-gracebase:1"
	g.BuildImage(t, base, nil, nil)
	n := enginetest.Nonce(t)
	runnerA := hexOf("runner-a-" + n[:4])
	image := "pg-gh-job-image:" + n
	g.BuildImage(t, image, map[string]string{"job": n}, nil)

	job1 := "pg-gh-a-job1-" + n
	net1 := "github_network_" + n
	g.mustAllow(t, "network", "create", "--label", runnerA, net1)
	t.Cleanup(func() { g.Docker(t, "network", "rm", net1) })
	g.mustAllow(t, "run", "-d", "--name", job1, "--label", runnerA, "--network", net1, image)
	t.Cleanup(func() { g.Docker(t, "rm", "-f", job1) })
	jobText := "GitHub Actions job, container " + job1
	g.mustDeny(t, []string{"rmi", image}, "active "+jobText)

	// Job 1's cleanup removes its container; job 2 starts at once.
	g.mustAllow(t, "rm", "-f", job1)
	if st := g.passHTTP(t, "POST", `/networks/prune?filters={"label":{"`+runnerA+`":true}}`); st != 200 {
		t.Errorf("next job's network prune = %d, want 200", st)
	}
	if networkExists(t, g, net1) {
		t.Errorf("ended job's network %s survived the next job's prune", net1)
	}
	if st := g.passHTTP(t, "POST", "/containers/prune?"+filtersQuery(`{"label":{"`+runnerA+`":true}}`)); st != 200 {
		t.Errorf("next job's container prune = %d, want 200", st)
	}
	g.mustAllow(t, "container", "prune", "-f")
	g.mustAllow(t, "network", "prune", "-f")

	// Job 2 runs on the same runner; job 1 is still in its grace.
	net2 := "github_network_2_" + n
	g.mustAllow(t, "network", "create", "--label", runnerA, net2)
	t.Cleanup(func() { g.Docker(t, "network", "rm", net2) })
	mark := auditMark(t, g)
	g.mustDeny(t, []string{"rmi", image}, graceDenial(jobText)...)
	line := auditLine(t, g, mark, map[string]string{"decision": "deny", "rule": "no-delete-during-run"})
	if runs := auditRuns(t, line); !anyContains(runs, jobText+" (ended ") {
		t.Errorf("audit runs = %q; want %q as ended", runs, jobText)
	}
	requireImages(t, g, image, base)
}

// Every built-in container detector's job, started as its CI system starts
// it and then removed: each is listed in the grace denial's audit record
// and by status as in its teardown grace.
func TestEveryContainerDetectorsEndedJobIsHeldForTheGrace(t *testing.T) {
	t.Parallel()
	g := startGraceGuard(t, 2*time.Minute)
	base := "pg-gracebase:1"
	g.BuildImage(t, base, nil, nil)
	victim := buildVictim(t, g)
	jobs := builtinJobs(enginetest.Nonce(t))
	var removes []func()
	for _, j := range jobs {
		removes = append(removes, startJob(t, g, j, base))
	}
	for _, remove := range removes {
		remove()
	}
	mark := auditMark(t, g)
	g.mustDeny(t, []string{"rmi", victim}, "during a CI job's teardown grace", "image deletes and image prunes resume at ")
	runs := auditRuns(t, auditLine(t, g, mark, map[string]string{"decision": "deny", "rule": "no-delete-during-run"}))
	out := pgStatus(t, g)
	for _, j := range jobs {
		if !anyContains(runs, j.job+" (ended ") {
			t.Errorf("audit runs do not list %s (detector %s) as ended: %q", j.job, j.detector, runs)
		}
		if !strings.Contains(out, "in teardown grace: "+j.job+" (ended ") {
			t.Errorf("status does not list %s (detector %s) in its teardown grace", j.job, j.detector)
		}
	}
	if t.Failed() {
		t.Logf("status:\n%s", out)
	}
	requireImages(t, g, victim)
	g.mustAllow(t, "network", "prune", "-f")
	g.mustAllow(t, "container", "prune", "-f")
}
