package rules

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"
)

// ObjectKind is what a detector looks at.
type ObjectKind uint8

const (
	// Container is a container the engine lists as created, running,
	// paused or restarting.
	Container ObjectKind = iota + 1
	// Service is a swarm service.
	Service
	// Process is a process on the host (CI agents that run jobs on the
	// host itself, not in a job container).
	Process
)

func (k ObjectKind) String() string {
	switch k {
	case Container:
		return "container"
	case Service:
		return "service"
	case Process:
		return "process"
	}
	return fmt.Sprintf("ObjectKind(%d)", uint8(k))
}

// kinds is a set of ObjectKinds.
type kinds uint8

func kindSet(ks ...ObjectKind) kinds {
	var s kinds
	for _, k := range ks {
		s |= 1 << k
	}
	return s
}

func (s kinds) has(k ObjectKind) bool { return s&(1<<k) != 0 }

// Object is one thing detectors look at: a container or swarm service as the
// engine lists it, or a host process.
type Object struct {
	Kind ObjectKind
	// ID is the container or service ID, or the process ID.
	ID string
	// Name is the container's name without its leading '/', the service's
	// name, or the process's command name (/proc/PID/comm).
	Name string
	// Labels are a container's or service's labels; nil for a process.
	Labels map[string]string
	// Env holds a process's environment variables, only those that
	// Detection.EnvKeys names; nil for containers and services.
	Env map[string]string
	// Exe is a process's executable path, when it could be read.
	Exe string
}

// Run is one object that marks a CI job as active: a container, service or
// process some detector recognised.
type Run struct {
	// Detector names the detector that recognised it ("gitlab").
	Detector string
	// System names the job's kind the way an operator says it
	// ("GitLab job", "Testcontainers session").
	System string
	// Job is the job's identifier ("4711"), or "" when the CI system gives
	// the object no job identifier and the object's name names the job.
	Job  string
	Kind ObjectKind
	Name string
	ID   string
	// Labels are the object's labels, kept so that a prune's label scope
	// can be checked against the job's objects.
	Labels map[string]string
	// Ended is when the object was last seen or went away; zero while it
	// is still there.
	Ended time.Time
}

// String names the run the way an operator would look it up:
// "GitLab job 4711, container runner-x-build".
func (r Run) String() string {
	if r.Kind == 0 {
		// A run known only by its recorded description (audit replay).
		return r.Job
	}
	var b strings.Builder
	b.WriteString(r.System)
	if r.Job != "" {
		b.WriteString(" ")
		b.WriteString(r.Job)
	}
	b.WriteString(", ")
	b.WriteString(r.Kind.String())
	b.WriteString(" ")
	b.WriteString(r.Name)
	if r.Kind == Process {
		fmt.Fprintf(&b, " (pid %s)", r.ID)
	}
	return b.String()
}

// InScope reports whether a prune whose positive label filters are scope
// could remove this run's objects: moby's filters.Args.MatchKVList, under
// which every KEY or KEY=VALUE of the filter must be on the object. A run
// without labels (a host process) carries nothing a label scope selects.
func (r Run) InScope(scope []string) bool {
	if len(scope) == 0 {
		return true
	}
	if len(r.Labels) == 0 {
		return false
	}
	for _, sel := range scope {
		k, v, hasValue := strings.Cut(sel, "=")
		got, ok := r.Labels[k]
		if !ok || (hasValue && got != v) {
			return false
		}
	}
	return true
}

// matcher recognises a job's object and returns the job's identifier ("" when
// the object's own name names the job).
type matcher func(o Object) (job string, ok bool)

// Detector recognises the objects of one CI system's jobs.
type Detector struct {
	// Name is the detector's policy name ("gitlab").
	Name string
	// System is how denials name its jobs ("GitLab job").
	System string
	// Looks says what it looks for, for status and the default policy.
	Looks string
	kinds kinds
	env   []string
	match matcher
}

// Match reports whether o belongs to one of the detector's jobs.
func (d Detector) Match(o Object) (Run, bool) {
	if !d.kinds.has(o.Kind) {
		return Run{}, false
	}
	job, ok := d.match(o)
	if !ok {
		return Run{}, false
	}
	return Run{Detector: d.Name, System: d.System, Job: job, Kind: o.Kind, Name: o.Name, ID: o.ID, Labels: o.Labels}, true
}

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

// Selector is an operator's own way of recognising a job. Exactly one of
// Label, KeyPattern and NamePrefix is set.
type Selector struct {
	// Name is the selector's detector name, unique among detectors.
	Name string
	// System is how denials name its jobs; default "CI job".
	System string
	// Label is KEY or KEY=VALUE; the job is named by the label's value.
	Label string
	// KeyPattern and ValuePattern are path.Match patterns on a label's key
	// and value (ValuePattern "" matches any value).
	KeyPattern, ValuePattern string
	// NamePrefix matches container (and service) names.
	NamePrefix string
	// Services also matches swarm services, not only containers.
	Services bool
}

// DetectionSettings is the configuration detectors are built from.
type DetectionSettings struct {
	// Labels are the prune-guard detector's selectors, KEY or KEY=VALUE.
	Labels []string
	// Switches turns built-in detectors on ("on"), off ("off"), or, for
	// opt-in detectors, on with a value pattern. Unnamed detectors keep
	// their default.
	Switches map[string]string
	// Selectors are the operator's own detectors.
	Selectors []Selector
	// Grace is how long a job still counts as active for image deletes
	// and image prunes after its last object is gone.
	Grace time.Duration
}

// DefaultGrace is the teardown grace with no configuration.
const DefaultGrace = 2 * time.Minute

// DefaultDetectionSettings are the settings with no configuration.
func DefaultDetectionSettings() DetectionSettings {
	return DetectionSettings{Labels: []string{DefaultRunLabel}, Grace: DefaultGrace}
}

// Detection is a compiled set of enabled detectors and the teardown grace.
// The zero value detects nothing.
type Detection struct {
	Detectors []Detector
	Grace     time.Duration
	envKeys   []string
	kinds     kinds
}

// NewDetection compiles settings, reporting every problem at once.
func NewDetection(s DetectionSettings) (Detection, error) {
	var errs []error
	if s.Grace < 0 {
		errs = append(errs, fmt.Errorf("grace %v is negative", s.Grace))
	}
	d := Detection{Grace: s.Grace}
	if sw, ok := s.Switches[PruneGuardDetector]; !ok || sw == "on" {
		if err := ValidateRunLabels(s.Labels); err != nil {
			errs = append(errs, err)
		}
		d.add(Detector{Name: PruneGuardDetector, System: "prune-guard run", Looks: "run labels " + strings.Join(s.Labels, ", "),
			kinds: kindSet(Container, Service), match: runLabels(s.Labels)})
	} else if sw != "off" {
		errs = append(errs, fmt.Errorf("detector %s: %q is not on or off", PruneGuardDetector, sw))
	}
	known := map[string]bool{PruneGuardDetector: true}
	for _, b := range builtins {
		known[b.name] = true
		det, on, err := b.compile(s.Switches[b.name])
		if err != nil {
			errs = append(errs, err)
		}
		if on {
			d.add(det)
		}
	}
	for name := range s.Switches {
		if !known[name] {
			errs = append(errs, fmt.Errorf("unknown detector %q (built-in: %s)", name, strings.Join(detectorNames(), ", ")))
		}
	}
	for _, sel := range s.Selectors {
		det, err := sel.compile()
		switch {
		case err != nil:
			errs = append(errs, err)
		case known[sel.Name]:
			errs = append(errs, fmt.Errorf("selector name %q is already a detector's name", sel.Name))
		default:
			known[sel.Name] = true
			d.add(det)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return Detection{}, err
	}
	return d, nil
}

// MustDetection is NewDetection for settings known to be valid, such as the
// defaults.
func MustDetection(s DetectionSettings) Detection {
	d, err := NewDetection(s)
	if err != nil {
		panic("rules: invalid built-in detection settings: " + err.Error())
	}
	return d
}

func (d *Detection) add(det Detector) {
	d.Detectors = append(d.Detectors, det)
	d.kinds |= det.kinds
	d.envKeys = append(d.envKeys, det.env...)
}

// Looks reports whether any enabled detector looks at objects of kind k, so
// that a caller can skip listing services or scanning processes.
func (d Detection) Looks(k ObjectKind) bool { return d.kinds.has(k) }

// EnvKeys are the environment variables process detectors read.
func (d Detection) EnvKeys() []string { return d.envKeys }

// Match returns the run o marks, from the first detector that recognises it.
func (d Detection) Match(o Object) (Run, bool) {
	for _, det := range d.Detectors {
		if r, ok := det.Match(o); ok {
			return r, true
		}
	}
	return Run{}, false
}

// Names lists the enabled detectors.
func (d Detection) Names() []string {
	out := make([]string, len(d.Detectors))
	for i, det := range d.Detectors {
		out[i] = det.Name
	}
	return out
}

func detectorNames() []string {
	names := []string{PruneGuardDetector}
	for _, b := range builtins {
		names = append(names, b.name)
	}
	return names
}

// compile turns a switch value into the detector and whether it is on.
func (b builtin) compile(sw string) (Detector, bool, error) {
	det := Detector{Name: b.name, System: b.system, Looks: b.looks, kinds: b.kinds, env: b.env}
	switch {
	case sw == "":
		if b.on {
			det.match = b.make("*")
		}
		return det, b.on, nil
	case sw == "off":
		return det, false, nil
	case sw == "on":
		det.match = b.make("*")
		return det, true, nil
	case b.optIn:
		if err := validPattern(sw); err != nil {
			return det, false, fmt.Errorf("detector %s: value pattern %q: %w", b.name, sw, err)
		}
		det.match = b.make(sw)
		det.Looks += " (" + sw + ")"
		return det, true, nil
	}
	return det, false, fmt.Errorf("detector %s: %q is not on or off", b.name, sw)
}

func (s Selector) compile() (Detector, error) {
	if s.Name == "" {
		return Detector{}, errors.New("a selector needs a name")
	}
	det := Detector{Name: s.Name, System: s.System, kinds: kindSet(Container)}
	if det.System == "" {
		det.System = "CI job"
	}
	if s.Services {
		det.kinds |= kindSet(Service)
	}
	set := 0
	for _, v := range []string{s.Label, s.KeyPattern, s.NamePrefix} {
		if v != "" {
			set++
		}
	}
	if set != 1 {
		return Detector{}, fmt.Errorf("selector %s: give exactly one of label, label-key, name-prefix", s.Name)
	}
	if s.ValuePattern != "" && s.KeyPattern == "" {
		return Detector{}, fmt.Errorf("selector %s: label-value goes with label-key", s.Name)
	}
	switch {
	case s.Label != "":
		if err := ValidateRunLabels([]string{s.Label}); err != nil {
			return Detector{}, fmt.Errorf("selector %s: %w", s.Name, err)
		}
		det.match, det.Looks = runLabels([]string{s.Label}), "label "+s.Label
	case s.KeyPattern != "":
		vp := s.ValuePattern
		if vp == "" {
			vp = "*"
		}
		for _, p := range []string{s.KeyPattern, vp} {
			if err := validPattern(p); err != nil {
				return Detector{}, fmt.Errorf("selector %s: pattern %q: %w", s.Name, p, err)
			}
		}
		det.match, det.Looks = keyValuePattern(s.KeyPattern, vp), fmt.Sprintf("a label whose key matches %s and value %s", s.KeyPattern, vp)
	default:
		det.match, det.Looks = namePrefix(s.NamePrefix), "name starting "+s.NamePrefix
	}
	return det, nil
}

// ValidateRunLabels reports the first run label selector that is not KEY or
// KEY=VALUE, or that there is none.
func ValidateRunLabels(labels []string) error {
	if len(labels) == 0 {
		return errors.New("no run labels configured")
	}
	for _, l := range labels {
		if strings.TrimSpace(l) == "" || strings.HasPrefix(l, "=") {
			return fmt.Errorf("invalid run label %q: want KEY or KEY=VALUE", l)
		}
	}
	return nil
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

// sortRuns orders runs for messages: live before ended, then by system, job
// and name, so a denial reads the same however the engine listed them.
func sortRuns(rs []Run) {
	slices.SortStableFunc(rs, func(a, b Run) int {
		if c := a.Ended.Compare(b.Ended); c != 0 {
			return c
		}
		return strings.Compare(a.String(), b.String())
	})
}

// ValidateSwitch reports whether value can switch the detector called name:
// "on", "off", or a value pattern for an opt-in detector.
func ValidateSwitch(name, value string) error {
	if name == PruneGuardDetector {
		if value != "on" && value != "off" {
			return fmt.Errorf("detector %s: %q is not on or off", name, value)
		}
		return nil
	}
	for _, b := range builtins {
		if b.name == name {
			_, _, err := b.compile(value)
			return err
		}
	}
	return fmt.Errorf("unknown detector %q (built-in: %s)", name, strings.Join(detectorNames(), ", "))
}

// Validate reports what is wrong with the selector on its own.
func (s Selector) Validate() error {
	_, err := s.compile()
	return err
}
