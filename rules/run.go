package rules

import (
	"fmt"
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
	// Image is a container's image: its ID as the engine lists it, or
	// the name it was created with as its events carry it; "" for
	// services and processes.
	Image string
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
	// Image is a container's image (Object.Image), so that reclaim can
	// spare the images of jobs that ended within the teardown grace.
	Image string
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
