package rules

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestBuiltInDetectorsRecogniseEachCISystemsJobs(t *testing.T) {
	d := MustDetection(DefaultDetectionSettings())
	tests := []struct {
		name     string
		obj      Object
		detector string // "" when no detector may match
		job      string
		says     string // the run as a denial names it
	}{
		{name: "prune-guard's own label names the run by its value",
			obj:      Object{Kind: Container, Name: "web-1", Labels: map[string]string{"prune-guard.run": "build-42"}},
			detector: "prune-guard", job: "build-42", says: "prune-guard run build-42, container web-1"},
		{name: "prune-guard's label marks services too",
			obj:      Object{Kind: Service, Name: "deploy", Labels: map[string]string{"prune-guard.run": "r9"}},
			detector: "prune-guard", job: "r9"},
		{name: "a GitLab job container is named by its job id",
			obj:      Object{Kind: Container, Name: "runner-abc-project-1-concurrent-0-build", Labels: map[string]string{"com.gitlab.gitlab-runner.job.id": "4711", "com.gitlab.gitlab-runner.managed": "true"}},
			detector: "gitlab", job: "4711", says: "GitLab job 4711, container runner-abc-project-1-concurrent-0-build"},
		{name: "GitLab's per-runner labels alone are no job",
			obj: Object{Kind: Container, Name: "c", Labels: map[string]string{"com.gitlab.gitlab-runner.managed": "true"}}},
		{name: "a GitHub Actions job container carries a 6-hex key with an empty value",
			obj:      Object{Kind: Container, Name: "a1b2c3_redis_1f2e3d", Labels: map[string]string{"a1b2c3": ""}},
			detector: "github-actions", says: "GitHub Actions job, container a1b2c3_redis_1f2e3d"},
		{name: "container hooks use the hex of RUNNER_NAME, longer than 6 digits",
			obj:      Object{Kind: Container, Name: "job", Labels: map[string]string{"72756e6e65722d31": ""}},
			detector: "github-actions"},
		{name: "a hex key with a value is not GitHub's label",
			obj: Object{Kind: Container, Name: "c", Labels: map[string]string{"a1b2c3": "x"}}},
		{name: "a 5-digit hex key is too short for GitHub's label",
			obj: Object{Kind: Container, Name: "c", Labels: map[string]string{"a1b2c": ""}}},
		{name: "upper-case hex is not GitHub's label",
			obj: Object{Kind: Container, Name: "c", Labels: map[string]string{"A1B2C3": ""}}},
		{name: "a Buildkite job container is named by its job id",
			obj:      Object{Kind: Container, Name: "buildkite01", Labels: map[string]string{"com.buildkite.job-id": "0190-aa"}},
			detector: "buildkite", job: "0190-aa"},
		{name: "a Drone step is named by repository slug and build number",
			obj:      Object{Kind: Container, Name: "drone-x", Labels: map[string]string{"io.drone.build.number": "42", "io.drone.repo.slug": "octo/app"}},
			detector: "drone", job: "octo/app #42", says: "Drone build octo/app #42, container drone-x"},
		{name: "a Woodpecker step is named by its workflow uuid",
			obj:      Object{Kind: Container, Name: "wp_01", Labels: map[string]string{"wp_uuid": "01HX", "wp_step": "build"}},
			detector: "woodpecker", job: "01HX"},
		{name: "a Jenkins docker-plugin agent is named by its container",
			obj:      Object{Kind: Container, Name: "agent-7", Labels: map[string]string{"com.nirima.jenkins.plugins.docker.JenkinsId": "e3b0"}},
			detector: "jenkins", says: "Jenkins agent, container agent-7"},
		{name: "a Testcontainers container is named by its session",
			obj:      Object{Kind: Container, Name: "pg", Labels: map[string]string{"org.testcontainers": "true", "org.testcontainers.sessionId": "s-1"}},
			detector: "testcontainers", job: "s-1"},
		{name: "a Gitea act_runner task is known by its name",
			obj:      Object{Kind: Container, Name: "GITEA-ACTIONS-TASK-12_WORKFLOW-ci_JOB-build"},
			detector: "gitea"},
		{name: "a Forgejo runner task is known by its name",
			obj:      Object{Kind: Container, Name: "FORGEJO-ACTIONS-TASK-3_WORKFLOW-abc_JOB-test"},
			detector: "forgejo"},
		{name: "a GitHub Actions host job is its Runner.Worker process",
			obj:      Object{Kind: Process, ID: "1234", Name: "Runner.Worker"},
			detector: "github-actions-host", says: "GitHub Actions job, process Runner.Worker (pid 1234)"},
		{name: "a GitLab shell job is a process with GITLAB_CI and CI_JOB_ID",
			obj:      Object{Kind: Process, ID: "99", Name: "bash", Env: map[string]string{"CI_JOB_ID": "4711", "GITLAB_CI": "true"}},
			detector: "gitlab-shell", job: "4711"},
		{name: "CI_JOB_ID without GITLAB_CI is another system's variable",
			obj: Object{Kind: Process, ID: "99", Name: "bash", Env: map[string]string{"CI_JOB_ID": "4711"}}},
		{name: "a Buildkite bootstrap is a process with BUILDKITE_JOB_ID",
			obj:      Object{Kind: Process, ID: "7", Name: "buildkite-agent", Env: map[string]string{"BUILDKITE_JOB_ID": "0190"}},
			detector: "buildkite-agent", job: "0190"},
		{name: "compose projects are opt-in",
			obj: Object{Kind: Container, Name: "ci-1-web-1", Labels: map[string]string{"com.docker.compose.project": "ci-1"}}},
		{name: "act containers are opt-in",
			obj: Object{Kind: Container, Name: "act-CI-build"}},
		{name: "GitLab job labels on a service are not looked at: GitLab runs containers",
			obj: Object{Kind: Service, Name: "s", Labels: map[string]string{"com.gitlab.gitlab-runner.job.id": "1"}}},
		{name: "a plain container is no job",
			obj: Object{Kind: Container, Name: "db", Labels: map[string]string{"maintainer": "x"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, ok := d.Match(tt.obj)
			if ok != (tt.detector != "") {
				t.Fatalf("Match = %+v, %v; want detector %q", r, ok, tt.detector)
			}
			if !ok {
				return
			}
			if r.Detector != tt.detector || r.Job != tt.job {
				t.Errorf("detector %q job %q, want %q %q", r.Detector, r.Job, tt.detector, tt.job)
			}
			if tt.says != "" && r.String() != tt.says {
				t.Errorf("String() = %q, want %q", r.String(), tt.says)
			}
		})
	}
}

func TestDetectorsAreSwitchedBySettings(t *testing.T) {
	tests := []struct {
		name     string
		settings DetectionSettings
		obj      Object
		want     string // detector that matches, "" for none
		err      string // substring of the settings error
	}{
		{name: "an opt-in detector is switched on with a value pattern",
			settings: DetectionSettings{Labels: []string{DefaultRunLabel}, Switches: map[string]string{"compose": "ci-*"}},
			obj:      Object{Kind: Container, Name: "w", Labels: map[string]string{"com.docker.compose.project": "ci-17"}}, want: "compose"},
		{name: "the compose pattern keeps long-lived stacks out",
			settings: DetectionSettings{Labels: []string{DefaultRunLabel}, Switches: map[string]string{"compose": "ci-*"}},
			obj:      Object{Kind: Container, Name: "w", Labels: map[string]string{"com.docker.compose.project": "monitoring"}}},
		{name: "act on matches any act- container",
			settings: DetectionSettings{Labels: []string{DefaultRunLabel}, Switches: map[string]string{"act": "on"}},
			obj:      Object{Kind: Container, Name: "act-CI-build-1"}, want: "act"},
		{name: "a default detector can be switched off",
			settings: DetectionSettings{Labels: []string{DefaultRunLabel}, Switches: map[string]string{"gitlab": "off"}},
			obj:      Object{Kind: Container, Name: "c", Labels: map[string]string{"com.gitlab.gitlab-runner.job.id": "1"}}},
		{name: "prune-guard's own detector can be switched off",
			settings: DetectionSettings{Labels: []string{DefaultRunLabel}, Switches: map[string]string{"prune-guard": "off"}},
			obj:      Object{Kind: Container, Name: "c", Labels: map[string]string{"prune-guard.run": "1"}}},
		{name: "run labels KEY=VALUE select by value",
			settings: DetectionSettings{Labels: []string{"ci=nightly"}},
			obj:      Object{Kind: Container, Name: "c", Labels: map[string]string{"ci": "nightly"}}, want: "prune-guard"},
		{name: "a selector by label",
			settings: DetectionSettings{Labels: []string{DefaultRunLabel}, Selectors: []Selector{{Name: "nightly", System: "Nightly build", Label: "ci.nightly"}}},
			obj:      Object{Kind: Container, Name: "c", Labels: map[string]string{"ci.nightly": "7"}}, want: "nightly"},
		{name: "a selector by key and value pattern",
			settings: DetectionSettings{Labels: []string{DefaultRunLabel}, Selectors: []Selector{{Name: "team", KeyPattern: "team.*.job", ValuePattern: "j-*"}}},
			obj:      Object{Kind: Container, Name: "c", Labels: map[string]string{"team.a.job": "j-1"}}, want: "team"},
		{name: "a selector by name prefix matches services only when asked",
			settings: DetectionSettings{Labels: []string{DefaultRunLabel}, Selectors: []Selector{{Name: "deploys", NamePrefix: "deploy-", Services: true}}},
			obj:      Object{Kind: Service, Name: "deploy-7"}, want: "deploys"},
		{name: "a selector by name prefix ignores services by default",
			settings: DetectionSettings{Labels: []string{DefaultRunLabel}, Selectors: []Selector{{Name: "deploys", NamePrefix: "deploy-"}}},
			obj:      Object{Kind: Service, Name: "deploy-7"}},
		{name: "an unknown detector is an error that lists the known ones",
			settings: DetectionSettings{Labels: []string{DefaultRunLabel}, Switches: map[string]string{"gitlabb": "on"}}, err: `unknown detector "gitlabb" (built-in: prune-guard, gitlab,`},
		{name: "a pattern for a detector that is not opt-in is an error",
			settings: DetectionSettings{Labels: []string{DefaultRunLabel}, Switches: map[string]string{"gitlab": "ci-*"}}, err: `detector gitlab: "ci-*" is not on or off`},
		{name: "a bad pattern is an error",
			settings: DetectionSettings{Labels: []string{DefaultRunLabel}, Switches: map[string]string{"compose": "ci-["}}, err: "value pattern"},
		{name: "a selector needs exactly one way to match",
			settings: DetectionSettings{Labels: []string{DefaultRunLabel}, Selectors: []Selector{{Name: "x", Label: "a", NamePrefix: "b"}}}, err: "exactly one of"},
		{name: "a selector may not take a detector's name",
			settings: DetectionSettings{Labels: []string{DefaultRunLabel}, Selectors: []Selector{{Name: "gitlab", Label: "a"}}}, err: "already a detector's name"},
		{name: "a negative grace is an error",
			settings: DetectionSettings{Labels: []string{DefaultRunLabel}, Grace: -time.Second}, err: "negative"},
		{name: "empty run labels are an error",
			settings: DetectionSettings{}, err: "no run labels"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := NewDetection(tt.settings)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			r, ok := d.Match(tt.obj)
			if got := r.Detector; ok != (tt.want != "") || got != tt.want {
				t.Errorf("Match = %q, %v; want %q", got, ok, tt.want)
			}
		})
	}
}

func TestDefaultDetectionLooksAtContainersServicesAndProcesses(t *testing.T) {
	d := MustDetection(DefaultDetectionSettings())
	for _, k := range []ObjectKind{Container, Service, Process} {
		if !d.Looks(k) {
			t.Errorf("default detection does not look at %v", k)
		}
	}
	if got := strings.Join(d.EnvKeys(), ","); got != "CI_JOB_ID,GITLAB_CI,BUILDKITE_JOB_ID" {
		t.Errorf("EnvKeys = %s", got)
	}
	if d.Grace != 2*time.Minute {
		t.Errorf("default grace %v, want 2m", d.Grace)
	}
	off := DetectionSettings{Labels: []string{DefaultRunLabel}, Switches: map[string]string{
		"github-actions-host": "off", "gitlab-shell": "off", "buildkite-agent": "off"}}
	if MustDetection(off).Looks(Process) {
		t.Error("with the process detectors off, processes must not be scanned")
	}
}

func TestRunInScopeFollowsMatchKVList(t *testing.T) {
	r := Run{Labels: map[string]string{"a": "1", "b": ""}}
	tests := []struct {
		scope []string
		want  bool
	}{
		{nil, true},
		{[]string{"a"}, true},
		{[]string{"a=1"}, true},
		{[]string{"a=2"}, false},
		{[]string{"a", "b="}, true},
		{[]string{"a", "c"}, false},
		{[]string{"a=1=x"}, false},
	}
	for _, tt := range tests {
		if got := r.InScope(tt.scope); got != tt.want {
			t.Errorf("InScope(%q) = %v, want %v", tt.scope, got, tt.want)
		}
	}
	if (Run{Kind: Process}).InScope([]string{"a"}) {
		t.Error("a run without labels cannot be selected by a label scope")
	}
}

// BenchmarkMatch500Containers is the local matching a destructive decision
// does on a busy host: every active container against every default
// detector, most of them not jobs.
func BenchmarkMatch500Containers(b *testing.B) {
	d := MustDetection(DefaultDetectionSettings())
	objs := make([]Object, 500)
	for i := range objs {
		labels := map[string]string{"com.docker.compose.project": "stack", "com.docker.compose.service": fmt.Sprint("svc", i), "maintainer": "x"}
		if i%50 == 0 {
			labels["com.gitlab.gitlab-runner.job.id"] = fmt.Sprint(i)
		}
		objs[i] = Object{Kind: Container, ID: fmt.Sprint(i), Name: fmt.Sprint("stack-svc", i, "-1"), Labels: labels}
	}
	b.ReportAllocs()
	for b.Loop() {
		n := 0
		for _, o := range objs {
			if _, ok := d.Match(o); ok {
				n++
			}
		}
		if n != 10 {
			b.Fatalf("matched %d, want 10", n)
		}
	}
}
