package guard

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/prune-guard/prune-guard/policy"
	"github.com/prune-guard/prune-guard/rules"
)

// Status is what GET /status answers: the policy in
// force and the counters since start. "prune-guard status" reads it.
type Status struct {
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
	s := Status{Transport: g.Transport(), Policy: describePolicy(g.Config()), Stats: g.stats.Snapshot(), AuditWriteFailures: g.audit.Failures()}
	if w := g.warnings.Load(); w != nil {
		s.Warnings = *w
	}
	return s
}

// WriteMetrics writes the guard's counters in the Prometheus text
// exposition format. It is written by hand: a dozen series do not justify
// a client library in a process that sits in front of every docker call.
func WriteMetrics(w io.Writer, s Status) {
	fmt.Fprintln(w, "# HELP prune_guard_decisions_total Decisions on destructive or denied requests, by rule and decision.")
	fmt.Fprintln(w, "# TYPE prune_guard_decisions_total counter")
	rulesSeen := make([]string, 0, len(s.Stats.Decisions))
	for r := range s.Stats.Decisions {
		rulesSeen = append(rulesSeen, r)
	}
	sort.Strings(rulesSeen)
	for _, r := range rulesSeen {
		ds := s.Stats.Decisions[r]
		names := make([]string, 0, len(ds))
		for d := range ds {
			names = append(names, d)
		}
		sort.Strings(names)
		for _, d := range names {
			fmt.Fprintf(w, "prune_guard_decisions_total{rule=%q,decision=%q} %d\n", r, d, ds[d])
		}
	}
	fmt.Fprintln(w, "# HELP prune_guard_reads_allowed_total Non-destructive requests allowed without an engine query.")
	fmt.Fprintln(w, "# TYPE prune_guard_reads_allowed_total counter")
	fmt.Fprintf(w, "prune_guard_reads_allowed_total %d\n", s.Stats.Reads)
	fmt.Fprintln(w, "# HELP prune_guard_decision_seconds Time to decide a destructive request, engine queries included.")
	fmt.Fprintln(w, "# TYPE prune_guard_decision_seconds histogram")
	var cum int64
	for i, b := range LatencyBuckets {
		cum += s.Stats.LatencyCounts[i]
		fmt.Fprintf(w, "prune_guard_decision_seconds_bucket{le=%q} %d\n", trimFloat(b.Seconds()), cum)
	}
	fmt.Fprintf(w, "prune_guard_decision_seconds_bucket{le=\"+Inf\"} %d\n", s.Stats.LatencyN)
	fmt.Fprintf(w, "prune_guard_decision_seconds_sum %s\n", trimFloat(s.Stats.LatencySum.Seconds()))
	fmt.Fprintf(w, "prune_guard_decision_seconds_count %d\n", s.Stats.LatencyN)
	for _, m := range []struct {
		name, help string
		v          int64
	}{
		{"prune_guard_engine_errors_total", "Engine queries that failed or timed out (the state was unknown).", s.Stats.EngineErrors},
		{"prune_guard_policy_reloads_total", "Policy files loaded after start.", s.Stats.Reloads},
		{"prune_guard_policy_rejections_total", "Policy files rejected (the policy in force stayed).", s.Stats.Rejections},
		{"prune_guard_audit_write_failures_total", "Audit records that could not be written.", s.AuditWriteFailures},
	} {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s counter\n%s %d\n", m.name, m.help, m.name, m.name, m.v)
	}
	writePulls(w, s)
	fmt.Fprintln(w, "# HELP prune_guard_start_time_seconds When prune-guard started.")
	fmt.Fprintln(w, "# TYPE prune_guard_start_time_seconds gauge")
	fmt.Fprintf(w, "prune_guard_start_time_seconds %d\n", s.Stats.Started.Unix())
}

// writePulls writes the pull counters. Layers and bytes are written in
// proxy mode only, the one mode that sees a pull's progress: zeros in authz
// mode would read as "nothing downloaded".
func writePulls(w io.Writer, s Status) {
	fmt.Fprintln(w, "# HELP prune_guard_image_pulls_total Image pulls, by registry and result: hit (the image was local before the pull), miss, unknown.")
	fmt.Fprintln(w, "# TYPE prune_guard_image_pulls_total counter")
	regs := make([]string, 0, len(s.Stats.Pulls))
	for r := range s.Stats.Pulls {
		regs = append(regs, r)
	}
	sort.Strings(regs)
	for _, r := range regs {
		results := make([]string, 0, len(s.Stats.Pulls[r]))
		for res := range s.Stats.Pulls[r] {
			results = append(results, res)
		}
		sort.Strings(results)
		for _, res := range results {
			fmt.Fprintf(w, "prune_guard_image_pulls_total{registry=%q,result=%q} %d\n", r, res, s.Stats.Pulls[r][res])
		}
	}
	if s.Transport.Mode != ModeProxy {
		return
	}
	fmt.Fprintln(w, "# HELP prune_guard_pull_layers_total Layers of the pulls the proxy relayed, by result: reused (already local) or downloaded.")
	fmt.Fprintln(w, "# TYPE prune_guard_pull_layers_total counter")
	fmt.Fprintf(w, "prune_guard_pull_layers_total{result=\"downloaded\"} %d\n", s.Stats.PullLayersDownloaded)
	fmt.Fprintf(w, "prune_guard_pull_layers_total{result=\"reused\"} %d\n", s.Stats.PullLayersReused)
	fmt.Fprintln(w, "# HELP prune_guard_pull_bytes_total Bytes the pulls the proxy relayed downloaded, as their progress reported them.")
	fmt.Fprintln(w, "# TYPE prune_guard_pull_bytes_total counter")
	fmt.Fprintf(w, "prune_guard_pull_bytes_total %d\n", s.Stats.PullBytes)
}

func trimFloat(f float64) string {
	s := fmt.Sprintf("%.6f", f)
	s = strings.TrimRight(s, "0")
	return strings.TrimSuffix(s, ".")
}

// MetricsHandler serves WriteMetrics.
func (g *Guard) MetricsHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		WriteMetrics(w, g.counters())
	})
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
