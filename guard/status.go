package guard

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

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

// Peer identifies the process a control socket request came from, as the
// kernel recorded it (SO_PEERCRED).
type Peer struct {
	PID int32
	UID uint32
}

// maxGrantBody bounds a grant request's body.
const maxGrantBody = 64 << 10

// ControlHandler serves the control socket: Handler's GET /status and GET
// /metrics, and POST /reclaim/grants, which gives "prune-guard reclaim" a
// grant for the deletes it must make while a CI job holds them (GrantRequest
// in, GrantAnswer out). The socket is root-only; peer says who connected,
// and a grant goes to root (UID 0) alone even so.
func (g *Guard) ControlHandler(peer func(context.Context) (Peer, error)) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", g.Handler())
	mux.HandleFunc("POST /reclaim/grants", func(w http.ResponseWriter, r *http.Request) {
		p, err := peer(r.Context())
		if err != nil || p.UID != 0 {
			why := fmt.Sprintf("uid %d is not root", p.UID)
			if err != nil {
				why = "its peer credentials are unknown: " + err.Error()
			}
			g.audit.Event("reclaim grant refused", map[string]any{"pid": p.PID, "uid": p.UID, "reason": why})
			http.Error(w, "prune-guard: reclaim grants are given to root only ("+why+")", http.StatusForbidden)
			return
		}
		var req GrantRequest
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxGrantBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			http.Error(w, "prune-guard: read the grant request: "+err.Error(), http.StatusBadRequest)
			return
		}
		ans, err := g.grants.issue(req)
		if err != nil {
			g.audit.Event("reclaim grant refused", map[string]any{"pid": p.PID, "uid": p.UID, "reason": err.Error()})
			http.Error(w, "prune-guard: no grant: "+err.Error(), http.StatusBadRequest)
			return
		}
		untag := make([]string, len(req.Untag))
		for i, u := range req.Untag {
			untag[i] = u.Ref
		}
		// Who asked, for what and why; never the token.
		g.audit.Event("reclaim grant issued", map[string]any{"pid": p.PID, "images": req.Images, "untag": untag,
			"usage": req.Usage.Percent, "critical": req.Critical, "data_root": req.Usage.DataRoot, "runs": strings.Join(req.Runs, "; "),
			"expires": ans.Expires.UTC().Format(time.RFC3339)})
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_ = json.NewEncoder(w).Encode(ans)
	})
	return mux
}
