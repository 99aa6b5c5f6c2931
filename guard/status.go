package guard

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/prune-guard/prune-guard/buildinfo"
	"github.com/prune-guard/prune-guard/policy"
	"github.com/prune-guard/prune-guard/rules"
)

// Status is what GET /status answers: the policy in
// force and the counters since start. "prune-guard status" reads it.
type Status struct {
	// Version is the running prune-guard's build (buildinfo.Version).
	Version            string       `json:"version"`
	Transport          Transport    `json:"transport"`
	Warnings           []string     `json:"warnings,omitempty"`
	Policy             PolicyStatus `json:"policy"`
	Runs               RunsStatus   `json:"runs"`
	Stats              Snapshot     `json:"stats"`
	AuditWriteFailures int64        `json:"audit_write_failures"`
}

// PolicyStatus describes the policy in force.
type PolicyStatus struct {
	Source    string   `json:"source"`
	Hash      string   `json:"hash"`
	Mode      string   `json:"mode"`
	Audit     string   `json:"audit"`
	RunLabels []string `json:"run_labels"`
	Detectors []string `json:"detectors"`
	Grace     string   `json:"grace"`
	Rules     []string `json:"rules"`
	Images    []string `json:"protected_images"`
	Labels    []string `json:"protected_labels"`
	Plugins   []string `json:"protected_plugins"`
}

func describePolicy(c *policy.Config) PolicyStatus {
	ps := PolicyStatus{Source: c.Source, Hash: c.Hash, Mode: c.Policy.Mode.String(), Audit: c.Audit.String(),
		RunLabels: c.Run.Labels, Detectors: c.Detection.Names(), Grace: c.Detection.Grace.String(),
		Images: c.Protect.Images, Labels: c.Protect.Labels, Plugins: c.Protect.Plugins}
	for _, r := range c.Policy.Rules {
		ps.Rules = append(ps.Rules, r.String())
	}
	return ps
}

// RunsStatus is the run state as the guard sees it now.
type RunsStatus struct {
	RunsView
	// HostProcesses says whether host-process detectors can see the
	// host's processes.
	HostProcesses string `json:"host_processes"`
}

// DescribeState is a run state as status shows it: for each live job,
// which detector counts it and why.
func DescribeState(st rules.RunState, det rules.Detection) RunsStatus {
	rs := RunsStatus{RunsView: viewRuns(st)}
	looks := map[string]string{}
	for _, dt := range det.Detectors {
		looks[dt.Name] = dt.Looks
	}
	for i, r := range rs.Active {
		rs.Active[i].Looks = looks[r.Detector]
	}
	return rs
}

// Status reports the guard's state, asking the engine for the run state.
func (g *Guard) Status(ctx context.Context) Status {
	s := g.counters()
	det := g.Config().Detection
	s.Runs = DescribeState(g.runs.State(ctx, det), det)
	s.Runs.HostProcesses = HostProcesses(g.runs.HostVisible())
	return s
}

// HostProcesses words whether the host's processes are visible.
func HostProcesses(visible bool, why string) string {
	if visible {
		return "visible: host-process detectors are active"
	}
	return "not visible (" + why + "): host-process detectors see nothing; a managed plugin needs pidhost"
}

// counters is Status without the run state, which costs an engine query.
func (g *Guard) counters() Status {
	s := Status{Version: buildinfo.Version(), Transport: g.Transport(), Policy: describePolicy(g.Config()), Stats: g.stats.Snapshot(), AuditWriteFailures: g.audit.Failures()}
	if w := g.warnings.Load(); w != nil {
		s.Warnings = *w
	}
	return s
}

// Handler serves GET /status (for "prune-guard status") and GET /metrics
// (for scrapers that can reach the socket).
func (g *Guard) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(g.Status(r.Context()))
	})
	mux.Handle("GET /metrics", g.MetricsHandler())
	return mux
}
