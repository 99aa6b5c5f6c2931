package rules

import (
	"path"
	"strings"
)

// This file is the table of CI systems prune-guard recognises out of the
// box, and the matchers its rows use. A new CI system is a row here, a
// section in docs/ci-systems.md and a case in e2e/cisystems_test.go.

// Built-in detector names that take part in the configuration.
const (
	// PruneGuardDetector matches the run labels (run.labels, --run-label).
	PruneGuardDetector = "prune-guard"
	// DefaultRunLabel is the prune-guard detector's label when none is
	// configured.
	DefaultRunLabel = "prune-guard.run"
)

// builtin is one row of the built-in detector table.
type builtin struct {
	name, system, looks string
	// on says whether the detector is enabled with no configuration.
	on bool
	// optIn detectors are enabled with a value pattern ("ci-*"); make
	// receives it ("*" for "on").
	optIn bool
	kinds kinds
	// env are the environment variables a process detector reads.
	env  []string
	make func(pattern string) matcher
}

// builtins is the table of CI systems prune-guard knows. The labels and
// names are what each system's own code sets (see docs/ci-systems.md for the
// sources); job containers are matched, never volumes, because GitLab's
// cache volumes carry job labels and outlive their jobs.
var builtins = []builtin{
	{name: "gitlab", system: "GitLab job", on: true, kinds: kindSet(Container),
		looks: "label com.gitlab.gitlab-runner.job.id on containers",
		make:  func(string) matcher { return labelValue("com.gitlab.gitlab-runner.job.id") }},
	{name: "github-actions", system: "GitHub Actions job", on: true, kinds: kindSet(Container),
		looks: "a label whose key is 6 or more lowercase hex digits with an empty value (actions/runner, container hooks)",
		make:  func(string) matcher { return githubLabel }},
	{name: "buildkite", system: "Buildkite job", on: true, kinds: kindSet(Container, Service),
		looks: "label com.buildkite.job-id",
		make:  func(string) matcher { return labelValue("com.buildkite.job-id") }},
	{name: "drone", system: "Drone build", on: true, kinds: kindSet(Container, Service),
		looks: "label io.drone.build.number (named with io.drone.repo.slug)",
		make:  func(string) matcher { return droneBuild }},
	{name: "woodpecker", system: "Woodpecker workflow", on: true, kinds: kindSet(Container, Service),
		looks: "label wp_uuid",
		make:  func(string) matcher { return labelValue("wp_uuid") }},
	{name: "jenkins", system: "Jenkins agent", on: true, kinds: kindSet(Container, Service),
		looks: "label com.nirima.jenkins.plugins.docker.JenkinsId (docker-plugin agents)",
		make:  func(string) matcher { return labelPresent("com.nirima.jenkins.plugins.docker.JenkinsId") }},
	{name: "testcontainers", system: "Testcontainers session", on: true, kinds: kindSet(Container),
		looks: "label org.testcontainers.sessionId",
		make:  func(string) matcher { return labelValue("org.testcontainers.sessionId") }},
	{name: "gitea", system: "Gitea Actions job", on: true, kinds: kindSet(Container),
		looks: "container name starting GITEA-ACTIONS-TASK- (act_runner sets no labels)",
		make:  func(string) matcher { return namePrefix("GITEA-ACTIONS-TASK-") }},
	{name: "forgejo", system: "Forgejo Actions job", on: true, kinds: kindSet(Container),
		looks: "container name starting FORGEJO-ACTIONS-TASK-",
		make:  func(string) matcher { return namePrefix("FORGEJO-ACTIONS-TASK-") }},
	{name: "github-actions-host", system: "GitHub Actions job", on: true, kinds: kindSet(Process),
		looks: "a Runner.Worker process on the host (jobs whose steps run on the runner host)",
		make:  func(string) matcher { return processNamed("Runner.Worker") }},
	{name: "gitlab-shell", system: "GitLab job", on: true, kinds: kindSet(Process), env: []string{"CI_JOB_ID", "GITLAB_CI"},
		looks: "a host process with GITLAB_CI=true and CI_JOB_ID in its environment (shell executor)",
		make:  func(string) matcher { return processEnv("CI_JOB_ID", "GITLAB_CI", "true") }},
	{name: "buildkite-agent", system: "Buildkite job", on: true, kinds: kindSet(Process), env: []string{"BUILDKITE_JOB_ID"},
		looks: "a host process with BUILDKITE_JOB_ID in its environment (agent bootstrap)",
		make:  func(string) matcher { return processEnv("BUILDKITE_JOB_ID", "", "") }},
	{name: "compose", system: "compose project", optIn: true, kinds: kindSet(Container),
		looks: "label com.docker.compose.project with a value matching the pattern (long-lived stacks would block pruning for ever: opt in, e.g. \"ci-*\")",
		make:  func(p string) matcher { return labelPattern("com.docker.compose.project", p) }},
	{name: "stack", system: "swarm stack", optIn: true, kinds: kindSet(Container, Service),
		looks: "label com.docker.stack.namespace with a value matching the pattern",
		make:  func(p string) matcher { return labelPattern("com.docker.stack.namespace", p) }},
	{name: "act", system: "act job", optIn: true, kinds: kindSet(Container),
		looks: "container name starting act- (nektos/act), with the rest of the name matching the pattern",
		make:  func(p string) matcher { return namePattern("act-", p) }},
}

// DetectorInfo describes a built-in detector for status and documentation.
type DetectorInfo struct {
	Name, System, Looks string
	// Default is "on", "off" (opt-in detectors) with no configuration.
	Default string
	// OptIn detectors are switched on with a value pattern.
	OptIn bool
}

// Builtins lists the built-in detectors, prune-guard's own first.
func Builtins() []DetectorInfo {
	out := []DetectorInfo{{Name: PruneGuardDetector, System: "prune-guard run", Default: "on",
		Looks: "the run labels (run.labels, --run-label; default " + DefaultRunLabel + ") on containers and services"}}
	for _, b := range builtins {
		def := "off"
		if b.on {
			def = "on"
		}
		out = append(out, DetectorInfo{Name: b.name, System: b.system, Looks: b.looks, Default: def, OptIn: b.optIn})
	}
	return out
}

// runLabels matches any of the KEY or KEY=VALUE selectors; the job is the
// label's value.
func runLabels(sels []string) matcher {
	type sel struct {
		key, value string
		hasValue   bool
	}
	parsed := make([]sel, len(sels))
	for i, s := range sels {
		k, v, ok := strings.Cut(s, "=")
		parsed[i] = sel{k, v, ok}
	}
	return func(o Object) (string, bool) {
		for _, s := range parsed {
			if v, ok := o.Labels[s.key]; ok && (!s.hasValue || v == s.value) {
				return v, true
			}
		}
		return "", false
	}
}

func labelValue(key string) matcher {
	return func(o Object) (string, bool) {
		v, ok := o.Labels[key]
		return v, ok
	}
}

func labelPresent(key string) matcher {
	return func(o Object) (string, bool) {
		_, ok := o.Labels[key]
		return "", ok
	}
}

func labelPattern(key, valuePattern string) matcher {
	return func(o Object) (string, bool) {
		v, ok := o.Labels[key]
		if !ok {
			return "", false
		}
		m, _ := path.Match(valuePattern, v)
		return v, m
	}
}

func keyValuePattern(keyPattern, valuePattern string) matcher {
	return func(o Object) (string, bool) {
		for k, v := range o.Labels {
			if km, _ := path.Match(keyPattern, k); !km {
				continue
			}
			if vm, _ := path.Match(valuePattern, v); vm {
				return v, true
			}
		}
		return "", false
	}
}

func namePrefix(prefix string) matcher {
	return func(o Object) (string, bool) { return "", strings.HasPrefix(o.Name, prefix) }
}

func namePattern(prefix, restPattern string) matcher {
	return func(o Object) (string, bool) {
		rest, ok := strings.CutPrefix(o.Name, prefix)
		if !ok {
			return "", false
		}
		m, _ := path.Match(restPattern, rest)
		return "", m
	}
}

// githubLabel matches actions/runner's container label: its key is the first
// 6 hex digits of the sha256 of the runner's .runner file
// (src/Runner.Worker/Container/DockerCommandManager.cs), or, with container
// hooks, the hex of RUNNER_NAME; its value is empty.
func githubLabel(o Object) (string, bool) {
	for k, v := range o.Labels {
		if v == "" && isLowerHex(k) && len(k) >= 6 {
			return "", true
		}
	}
	return "", false
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// droneBuild names a Drone job by repository slug and build number, as
// drone-runner-docker labels every step container
// (engine/compiler/compiler.go).
func droneBuild(o Object) (string, bool) {
	n, ok := o.Labels["io.drone.build.number"]
	if !ok {
		return "", false
	}
	if slug := o.Labels["io.drone.repo.slug"]; slug != "" {
		return slug + " #" + n, true
	}
	return "#" + n, true
}

func processNamed(comm string) matcher {
	return func(o Object) (string, bool) { return "", o.Name == comm }
}

// processEnv matches a process whose environment has key (non-empty), and,
// when also is set, also=alsoValue; the job is key's value.
func processEnv(key, also, alsoValue string) matcher {
	return func(o Object) (string, bool) {
		v := o.Env[key]
		if v == "" || (also != "" && o.Env[also] != alsoValue) {
			return "", false
		}
		return v, true
	}
}
