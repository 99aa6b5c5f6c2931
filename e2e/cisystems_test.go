package e2e

import (
	"encoding/hex"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/prune-guard/prune-guard/internal/enginetest"
)

// The CI systems' job containers, started on a real engine exactly as each
// system labels and names them (sources in docs/ci-systems.md), hold back
// every image delete and every prune while they live, and the denial names
// the system and the job the way rules.Run.String renders it.
//
// The teardown grace is off (--run-grace=0s) here: its own tests watch
// engine events, and these check only "while the job's container lives" and
// "after it is gone".

// ciJob is one CI system's job container.
type ciJob struct {
	// detector is the detector that must recognise it, as status names it.
	detector string
	// name and labels are the container's, as the CI system sets them;
	// a label whose value is "" is given as a bare --label KEY.
	name   string
	labels []string
	// running starts it with docker run -d; otherwise docker create.
	running bool
	// job is how denials, the audit log and status name it
	// (rules.Run.String).
	job string
}

// startCIGuard starts a guarded engine whose plugin has the teardown grace
// off and the given extra arguments.
func startCIGuard(t *testing.T, args ...string) guard {
	t.Helper()
	e, p := enginetest.StartGuarded(t, enginetest.Options{PluginArgs: append([]string{"--run-grace=0s"}, args...)})
	return guard{Engine: e, plugin: p}
}

// startJob starts j's container from image and removes it in a cleanup if
// the test has not; it returns a function that removes it now.
func startJob(t *testing.T, g guard, j ciJob, image string) (remove func()) {
	t.Helper()
	args := []string{"create"}
	if j.running {
		args = []string{"run", "-d"}
	}
	args = append(args, "--name", j.name)
	for _, l := range j.labels {
		args = append(args, "--label", l)
	}
	g.mustAllow(t, append(args, image)...)
	removed := false
	t.Cleanup(func() {
		if !removed {
			g.Docker(t, "rm", "-f", j.name)
		}
	})
	return func() {
		t.Helper()
		g.mustAllow(t, "rm", "-f", j.name)
		removed = true
	}
}

// serverAPIVersion is the engine's own maximum API version, the one the CLI
// negotiates down to.
func serverAPIVersion(t testing.TB, g guard) string {
	t.Helper()
	return strings.TrimSpace(g.mustAllow(t, "version", "--format", "{{.Server.APIVersion}}"))
}

// apiBefore reports whether API version v is below want (both "1.NN").
func apiBefore(t testing.TB, v, want string) bool {
	t.Helper()
	minor := func(s string) int {
		_, m, ok := strings.Cut(s, ".")
		n, err := strconv.Atoi(m)
		if !ok || err != nil {
			t.Fatalf("API version %q is not 1.NN", s)
		}
		return n
	}
	return minor(v) < minor(want)
}

// filtersQuery is the query the docker CLI sends for a filter set:
// filters=<url-encoded JSON> (docker/cli opts/filters, url.Values.Encode).
func filtersQuery(json string) string {
	return url.Values{"filters": {json}}.Encode()
}

// denyHTTP sends a request with no body and requires a prune-guard denial
// that mentions every string in want.
func (g guard) denyHTTP(t testing.TB, method, uri string, want ...string) {
	t.Helper()
	status, body := g.HTTP(t, method, uri, nil, nil)
	if status != 403 || !strings.Contains(body, g.denialPrefix()) {
		t.Errorf("%s %s = %d %s; want 403 with %q", method, uri, status, strings.TrimSpace(body), g.denialPrefix())
		return
	}
	for _, w := range want {
		if !strings.Contains(body, w) {
			t.Errorf("%s %s: denial does not mention %q:\n%s", method, uri, w, body)
		}
	}
}

// passHTTP sends a request with no body and requires that prune-guard let
// it through: whatever the daemon answers, it is not the plugin's denial.
// It returns the daemon's status.
func (g guard) passHTTP(t testing.TB, method, uri string) int {
	t.Helper()
	status, body := g.HTTP(t, method, uri, nil, nil)
	if strings.Contains(body, "authorization denied") {
		t.Errorf("%s %s = %d %s; want prune-guard to let it through", method, uri, status, strings.TrimSpace(body))
	}
	return status
}

// pgStatus runs "prune-guard status" against g and returns its output.
func pgStatus(t testing.TB, g guard) string {
	t.Helper()
	cmd := exec.Command(enginetest.BuildBinary(t), "status", "--socket", g.statusSocket(), "--docker-host", g.Host())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("prune-guard status: %v\n%s", err, out)
	}
	return string(out)
}

func hexOf(s string) string { return hex.EncodeToString([]byte(s)) }

// builtinJobs are one job container per built-in container detector, named
// and labelled as the CI system's own code does.
func builtinJobs(n string) []ciJob {
	gh := n[:6] // actions/runner: first 6 hex digits of sha256(.runner)
	return []ciJob{
		{detector: "prune-guard", name: "pg-job-" + n, running: true,
			labels: []string{"prune-guard.run=job-" + n},
			job:    "prune-guard run job-" + n + ", container pg-job-" + n},
		{detector: "gitlab", name: "runner-t3stt0k3-project-42-concurrent-0-" + n + "-build",
			labels: []string{"com.gitlab.gitlab-runner.job.id=4711", "com.gitlab.gitlab-runner.managed=true",
				"com.gitlab.gitlab-runner.type=build", "com.gitlab.gitlab-runner.pipeline.id=900", "com.gitlab.gitlab-runner.project.id=42"},
			job: "GitLab job 4711, container runner-t3stt0k3-project-42-concurrent-0-" + n + "-build"},
		{detector: "github-actions", name: "c4e1d2_pgcibase_" + gh, running: true,
			labels: []string{gh},
			job:    "GitHub Actions job, container c4e1d2_pgcibase_" + gh},
		{detector: "github-actions", name: "pg-hooks-job-" + n,
			labels: []string{hexOf("runner-" + n)}, // container hooks: hex(RUNNER_NAME)
			job:    "GitHub Actions job, container pg-hooks-job-" + n},
		{detector: "buildkite", name: "buildkite0190aa11" + n, running: true,
			labels: []string{"com.buildkite.job-id=0190aa11-2b3c-4d5e-8f90-" + n, "com.buildkite.pipeline_slug=app", "com.buildkite.build_number=7"},
			job:    "Buildkite job 0190aa11-2b3c-4d5e-8f90-" + n + ", container buildkite0190aa11" + n},
		{detector: "drone", name: "drone-" + n,
			labels: []string{"io.drone=true", "io.drone.repo.slug=octo/app", "io.drone.repo.namespace=octo", "io.drone.repo.name=app",
				"io.drone.build.number=42", "io.drone.stage.number=1", "io.drone.step.name=test"},
			job: "Drone build octo/app #42, container drone-" + n},
		{detector: "woodpecker", name: "wp_01j" + n, running: true,
			labels: []string{"wp_uuid=01j" + n, "wp_step=test"},
			job:    "Woodpecker workflow 01j" + n + ", container wp_01j" + n},
		{detector: "jenkins", name: "jenkins-agent-" + n,
			labels: []string{"com.nirima.jenkins.plugins.docker.JenkinsId=" + n, "com.nirima.jenkins.plugins.docker.JenkinsNodeName=docker-" + n},
			job:    "Jenkins agent, container jenkins-agent-" + n},
		{detector: "testcontainers", name: "tc-" + n, running: true,
			labels: []string{"org.testcontainers=true", "org.testcontainers.lang=go", "org.testcontainers.sessionId=" + n},
			job:    "Testcontainers session " + n + ", container tc-" + n},
		{detector: "gitea", name: "GITEA-ACTIONS-TASK-17_WORKFLOW-ci_JOB-test-" + n,
			job: "Gitea Actions job, container GITEA-ACTIONS-TASK-17_WORKFLOW-ci_JOB-test-" + n},
		{detector: "forgejo", name: "FORGEJO-ACTIONS-TASK-17_WORKFLOW-" + n + "_JOB-test", running: true,
			job: "Forgejo Actions job, container FORGEJO-ACTIONS-TASK-17_WORKFLOW-" + n + "_JOB-test"},
	}
}

func TestEveryBuiltInDetectorHoldsImageDeletesAndPrunesWhileItsJobContainerLives(t *testing.T) {
	t.Parallel()
	g := startCIGuard(t)
	base := "pg-cibase:1"
	g.BuildImage(t, base, nil, nil)
	oldVolumeAPI := apiBefore(t, serverAPIVersion(t, g), "1.42")
	// An anonymous-volume prune as an API 1.42 client sends it, so that the
	// run's hold on volume prunes is seen even on engines whose CLI volume
	// prune is volume-prune-all (API < 1.42).
	volumePrune142 := "/v1.42/volumes/prune"

	for _, j := range builtinJobs(enginetest.Nonce(t)) {
		t.Run(j.detector+"/"+j.name, func(t *testing.T) {
			n := enginetest.Nonce(t)
			victim := "pg-other:" + n
			g.BuildImage(t, victim, map[string]string{"other": n}, nil)
			dangling := g.MakeDangling(t)
			stopped := "pg-stopped-" + n // an unlabelled created container: container prune's prey
			g.mustAllow(t, "create", "--name", stopped, base)
			t.Cleanup(func() { g.Docker(t, "rm", "-f", stopped) })
			network := "pg-net-" + n
			g.mustAllow(t, "network", "create", network)
			t.Cleanup(func() { g.Docker(t, "network", "rm", network) })

			remove := startJob(t, g, j, base)

			mark := auditMark(t, g)
			g.mustDeny(t, []string{"rmi", victim}, "(rule no-delete-during-run)", "active "+j.job)
			line := auditLine(t, g, mark, map[string]string{"decision": "deny", "rule": "no-delete-during-run"})
			if runs := auditRuns(t, line); !anyContains(runs, j.job) {
				t.Errorf("audit runs = %q, want %q", runs, j.job)
			}
			for _, args := range [][]string{
				{"image", "prune", "-f"},
				{"container", "prune", "-f"},
				{"network", "prune", "-f"},
				{"builder", "prune", "-f"},
			} {
				g.mustDeny(t, args, "(rule no-prune-during-run)", "active "+j.job)
			}
			if oldVolumeAPI {
				// API < 1.42: the daemon prunes named volumes too, which
				// no-volume-prune-all refuses before any run rule.
				g.mustDeny(t, []string{"volume", "prune", "-f"}, "(rule no-volume-prune-all)")
			} else {
				g.mustDeny(t, []string{"volume", "prune", "-f"}, "(rule no-prune-during-run)", "active "+j.job)
			}
			g.denyHTTP(t, "POST", volumePrune142, "(rule no-prune-during-run)", "active "+j.job)

			if out := pgStatus(t, g); !strings.Contains(out, "active: "+j.job+" (detector "+j.detector+": ") {
				t.Errorf("status does not name the job %q and its detector %s:\n%s", j.job, j.detector, out)
			}
			requireImages(t, g, victim, dangling, base)
			g.mustAllow(t, "container", "inspect", stopped)
			g.mustAllow(t, "network", "inspect", network)

			// The job's container is gone: the same requests pass.
			remove()
			g.mustAllow(t, "rmi", victim)
			requireGone(t, g, victim)
			g.mustAllow(t, "image", "prune", "-f")
			requireGone(t, g, dangling)
			g.mustAllow(t, "container", "prune", "-f")
			if _, _, err := g.Docker(t, "container", "inspect", stopped); err == nil {
				t.Errorf("container %s survived the allowed container prune", stopped)
			}
			g.mustAllow(t, "network", "prune", "-f")
			if _, _, err := g.Docker(t, "network", "inspect", network); err == nil {
				t.Errorf("network %s survived the allowed network prune", network)
			}
			g.mustAllow(t, "builder", "prune", "-f")
			if oldVolumeAPI {
				g.mustDeny(t, []string{"volume", "prune", "-f"}, "(rule no-volume-prune-all)")
			} else {
				g.mustAllow(t, "volume", "prune", "-f")
			}
			g.passHTTP(t, "POST", volumePrune142)
			requireImages(t, g, base)
		})
	}

	// Look-alikes the detectors must not count: a label value on the
	// GitHub key, a key too short, a name that only contains the prefix, a
	// compose project (opt-in), a GitLab cache volume (volumes never count).
	t.Run("look-alikes are not jobs", func(t *testing.T) {
		n := enginetest.Nonce(t)
		for i, args := range [][]string{
			{"--label", n[:6] + "=value"},
			{"--label", "abc12"},
			{"--name", "x-GITEA-ACTIONS-TASK-" + n},
			{"--label", "com.docker.compose.project=ci-7"},
		} {
			name := "pg-lookalike-" + strconv.Itoa(i) + "-" + n
			if args[0] == "--name" {
				name = args[1]
				args = nil
			}
			g.mustAllow(t, append(append([]string{"run", "-d", "--name", name}, args...), base)...)
			t.Cleanup(func() { g.Docker(t, "rm", "-f", name) })
		}
		g.mustAllow(t, "volume", "create", "--label", "com.gitlab.gitlab-runner.job.id=4711",
			"--label", "com.gitlab.gitlab-runner.type=cache", "runner-t3stt0k3-project-42-concurrent-0-cache-"+n)
		t.Cleanup(func() { g.Docker(t, "volume", "rm", "runner-t3stt0k3-project-42-concurrent-0-cache-"+n) })

		victim := "pg-other:" + n
		g.BuildImage(t, victim, map[string]string{"other": n}, nil)
		g.mustAllow(t, "rmi", victim)
		requireGone(t, g, victim)
		g.mustAllow(t, "image", "prune", "-f")
		if out := pgStatus(t, g); !strings.Contains(out, "none active") {
			t.Errorf("status counts a look-alike as a job:\n%s", out)
		}
	})
}

// Operators' own detection settings, on one engine: an opt-in detector with
// a value pattern, a selector from the policy file, and a built-in detector
// switched off.
func TestOperatorDetectionSettingsDecideWhatCountsAsAJob(t *testing.T) {
	t.Parallel()
	policy := t.TempDir() + "/policy.yaml"
	writePolicy(t, policy, `run:
  selectors:
    - name: nightly
      system: Nightly job
      label: ci.nightly
    - name: bamboo
      system: Bamboo agent
      name-prefix: bamboo-agent-
`)
	g := startCIGuard(t, "--policy", policy, "--detector", "compose=ci-*", "--detector", "gitlab=off")
	base := "pg-cibase:1"
	g.BuildImage(t, base, nil, nil)

	type tc struct {
		name   string
		job    ciJob
		blocks bool
	}
	n := enginetest.Nonce(t)
	for _, c := range []tc{
		{"compose project matching the opt-in pattern is a job", ciJob{detector: "compose", name: "ci-7-web-1-" + n, running: true,
			labels: []string{"com.docker.compose.project=ci-7", "com.docker.compose.service=web", "com.docker.compose.oneoff=False"},
			job:    "compose project ci-7, container ci-7-web-1-" + n}, true},
		{"compose project outside the pattern is not a job", ciJob{detector: "compose", name: "monitoring-prometheus-1-" + n, running: true,
			labels: []string{"com.docker.compose.project=monitoring", "com.docker.compose.service=prometheus"}}, false},
		{"operator label selector from the policy file is a job", ciJob{detector: "nightly", name: "nightly-" + n,
			labels: []string{"ci.nightly=2024-06-01"},
			job:    "Nightly job 2024-06-01, container nightly-" + n}, true},
		{"operator name-prefix selector from the policy file is a job", ciJob{detector: "bamboo", name: "bamboo-agent-" + n, running: true,
			job: "Bamboo agent, container bamboo-agent-" + n}, true},
		{"GitLab job is not a job with the gitlab detector off", ciJob{detector: "gitlab", name: "runner-t3stt0k3-project-42-concurrent-0-" + n + "-build",
			labels: []string{"com.gitlab.gitlab-runner.job.id=4711", "com.gitlab.gitlab-runner.managed=true"}}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := enginetest.Nonce(t)
			victim := "pg-other:" + m
			g.BuildImage(t, victim, map[string]string{"other": m}, nil)
			remove := startJob(t, g, c.job, base)
			out := pgStatus(t, g)
			if !c.blocks {
				g.mustAllow(t, "rmi", victim)
				requireGone(t, g, victim)
				g.mustAllow(t, "network", "prune", "-f")
				if !strings.Contains(out, "none active") {
					t.Errorf("status counts %s as a job:\n%s", c.job.name, out)
				}
				remove()
				return
			}
			g.mustDeny(t, []string{"rmi", victim}, "(rule no-delete-during-run)", "active "+c.job.job)
			g.mustDeny(t, []string{"network", "prune", "-f"}, "(rule no-prune-during-run)", "active "+c.job.job)
			if !strings.Contains(out, "active: "+c.job.job+" (detector "+c.job.detector+": ") {
				t.Errorf("status does not name %q and detector %s:\n%s", c.job.job, c.job.detector, out)
			}
			requireImages(t, g, victim)
			remove()
			g.mustAllow(t, "rmi", victim)
			requireGone(t, g, victim)
		})
	}

	t.Run("status lists the detectors in force", func(t *testing.T) {
		out := pgStatus(t, g)
		line := ""
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "detectors: ") {
				line = l
			}
		}
		for _, want := range []string{"prune-guard", "github-actions", "compose", "nightly", "bamboo"} {
			if !strings.Contains(line, want) {
				t.Errorf("status detectors line %q lacks %s", line, want)
			}
		}
		if strings.Contains(line, " gitlab,") || strings.HasSuffix(line, " gitlab") {
			t.Errorf("status detectors line %q lists gitlab, which --detector gitlab=off switched off", line)
		}
	})
}
