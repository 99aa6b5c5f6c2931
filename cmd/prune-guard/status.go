package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/prune-guard/prune-guard/engine"
	"github.com/prune-guard/prune-guard/guard"
	"github.com/prune-guard/prune-guard/policy"
	"github.com/prune-guard/prune-guard/redact"
	"github.com/prune-guard/prune-guard/runs"
)

func newStatusCmd() *cobra.Command {
	var socket, dockerHost string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show active runs, the policy in force and decision counters",
		Long: `Show what prune-guard would rely on right now: the CI runs that are active on the
engine (and which label makes each count), the policy the running plugin enforces
with its hash, and the plugin's decision counters since it started.

The runs come from the engine (--docker-host); the policy, the counters and the
mode in force (authz or proxy) from the running prune-guard, on its control
socket (serve and proxy both open one) or, in authz mode, the plugin's socket.
With no --socket, the default control socket is asked first, then the plugin's
socket. Exits 1 when prune-guard does not answer.

--json prints the same as one JSON object, with the field names that
docs/install.md documents (those it marks stable keep their names and
meaning across releases); the exit status is the same.`,
		Example: `  prune-guard status
  prune-guard status --json | jq '.runs.active[].job'
  prune-guard status --socket /run/docker/plugins/prune-guard.sock --docker-host unix:///var/run/docker.sock`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			if asJSON {
				return runStatusJSON(ctx, cmd.OutOrStdout(), socket, dockerHost)
			}
			return runStatus(ctx, cmd.OutOrStdout(), socket, dockerHost)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object (fields in docs/install.md) instead of text")
	cmd.Flags().StringVar(&socket, "socket", "", "the running prune-guard's socket: its control socket (serve and proxy) or the plugin's (serve); default: "+controlSocket+", then "+pluginSocket)
	cmd.Flags().StringVar(&dockerHost, "docker-host", defaultDockerHost, "engine to ask for active runs")
	bindEnv(cmd, socketEnv, dockerHostEnv)
	return cmd
}

func fetchStatus(ctx context.Context, socket string) (guard.Status, error) {
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}}
	req, err := http.NewRequestWithContext(ctx, "GET", "http://prune-guard/status", nil)
	if err != nil {
		return guard.Status{}, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return guard.Status{}, fmt.Errorf("prune-guard does not answer on %s: %w", socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return guard.Status{}, fmt.Errorf("prune-guard on %s answered %s", socket, resp.Status)
	}
	var s guard.Status
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		if errors.As(err, new(*json.UnmarshalTypeError)) {
			// Between installing a new binary and restarting the
			// plugin, the running one may be of another version.
			return guard.Status{}, fmt.Errorf("read status: %w (is the running plugin of another version? restart it after an upgrade)", err)
		}
		return guard.Status{}, fmt.Errorf("read status: %w", err)
	}
	return s, nil
}

// fetchAnyStatus asks the socket given, or else the control socket, which
// both modes open, and then the plugin's socket (a serve started with
// --control-socket "").
func fetchAnyStatus(ctx context.Context, socket string) (guard.Status, error) {
	if socket != "" {
		return fetchStatus(ctx, socket)
	}
	st, err := fetchStatusWithin(ctx, controlSocket, socketAttempt)
	if err == nil {
		return st, nil
	}
	st, err2 := fetchStatusWithin(ctx, pluginSocket, socketAttempt)
	if err2 == nil {
		return st, nil
	}
	return st, fmt.Errorf("%w; %w", err, err2)
}

// socketAttempt bounds each default socket's answer, so that a hung
// control socket leaves time for the plugin's and for the engine.
const socketAttempt = 3 * time.Second

func fetchStatusWithin(ctx context.Context, socket string, d time.Duration) (guard.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return fetchStatus(ctx, socket)
}

// gatherStatus asks the running prune-guard for its status, or, when it
// does not answer, the engine for the runs and the warnings; statusErr says
// why prune-guard did not answer.
func gatherStatus(ctx context.Context, socket, dockerHost string) (st guard.Status, statusErr, err error) {
	c, err := engine.Open(dockerHost)
	if err != nil {
		return st, nil, err
	}
	defer c.Close()
	st, statusErr = fetchAnyStatus(ctx, socket)
	if statusErr == nil {
		return st, nil, nil
	}
	// Without prune-guard, ask the engine with the built-in detectors;
	// the teardown grace is known only to a running prune-guard.
	st.Runs = ownRuns(ctx, c)
	if v, err := askEngineVersion(ctx, c, statusEngineTimeout); err == nil {
		st.Warnings = engineWarnings(v, guard.ModeAuthz)
	}
	return st, statusErr, nil
}

func runStatus(ctx context.Context, w io.Writer, socket, dockerHost string) error {
	st, statusErr, err := gatherStatus(ctx, socket, dockerHost)
	if err != nil {
		return err
	}
	if statusErr == nil {
		writeTransport(w, st.Transport)
	}
	writeRuns(w, st, statusErr == nil, dockerHost)
	for _, warning := range st.Warnings {
		fmt.Fprintf(w, "WARNING: %s\n", warning)
	}
	fmt.Fprintln(w)
	if statusErr != nil {
		fmt.Fprintf(w, "Plugin: %v\n", statusErr)
		return statusErr
	}
	p := st.Policy
	fmt.Fprintf(w, "Policy: %s (hash %.12s, mode %s, audit %s)\n", p.Source, p.Hash, p.Mode, p.Audit)
	for i, r := range p.Rules {
		fmt.Fprintf(w, "  %d. %s\n", i+1, r)
	}
	if len(p.Images)+len(p.Labels)+len(p.Plugins) > 0 {
		fmt.Fprintf(w, "  protected: images %v, labels %v, plugins %v\n", p.Images, p.Labels, p.Plugins)
	}
	writeCounters(w, st)
	return nil
}

// writeCounters prints the decision counters.
func writeCounters(w io.Writer, st guard.Status) {
	s := st.Stats
	fmt.Fprintf(w, "\nSince %s (%s ago):\n", s.Started.Format(time.RFC3339), time.Since(s.Started).Round(time.Second))
	fmt.Fprintf(w, "  reads allowed without an engine query: %d\n", s.Reads)
	fmt.Fprintf(w, "  denied %d, would-deny %d, destructive allowed %d; engine errors %d; policy reloads %d, rejected %d; audit write failures %d\n",
		s.Total("deny"), s.Total("would-deny"), s.Total("allow"), s.EngineErrors, s.Reloads, s.Rejections, st.AuditWriteFailures)
	if len(s.Decisions) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  RULE\tALLOW\tDENY\tWOULD-DENY")
	names := make([]string, 0, len(s.Decisions))
	for r := range s.Decisions {
		names = append(names, r)
	}
	sort.Strings(names)
	for _, r := range names {
		d := s.Decisions[r]
		fmt.Fprintf(tw, "  %s\t%d\t%d\t%d\n", r, d["allow"], d["deny"], d["would-deny"])
	}
	tw.Flush()
}

// StatusReport is what "status --json" prints: one JSON object, the
// running prune-guard's status (guard.Status, the document its /status
// serves) with whether it answered. docs/install.md lists the fields and
// says which are stable; a change to a stable one raises SchemaVersion.
type StatusReport struct {
	// SchemaVersion is 1.
	SchemaVersion int `json:"schema_version"`
	// Reachable says whether prune-guard answered; when it did not, Error
	// says why, the runs are the engine's answer with the built-in
	// detectors and the policy and counters are empty.
	Reachable  bool   `json:"reachable"`
	Error      string `json:"error,omitempty"`
	DockerHost string `json:"docker_host"`
	guard.Status
}

// statusSchemaVersion is StatusReport's SchemaVersion.
const statusSchemaVersion = 1

func runStatusJSON(ctx context.Context, w io.Writer, socket, dockerHost string) error {
	st, statusErr, err := gatherStatus(ctx, socket, dockerHost)
	if err != nil {
		return err
	}
	rep := StatusReport{SchemaVersion: statusSchemaVersion, Reachable: statusErr == nil, DockerHost: redact.String(dockerHost), Status: st}
	if statusErr != nil {
		rep.Error = statusErr.Error()
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(rep); err != nil {
		return err
	}
	return statusErr
}

// statusEngineTimeout bounds each question status asks the engine.
const statusEngineTimeout = 5 * time.Second

// ownRuns asks the engine directly, with the built-in detection.
func ownRuns(ctx context.Context, c runs.Engine) guard.RunsStatus {
	tr := runs.New(c, statusEngineTimeout)
	det := policy.Default().Detection
	rs := guard.DescribeState(tr.State(ctx, det), det)
	rs.HostProcesses = guard.HostProcesses(tr.HostVisible())
	return rs
}

func writeRuns(w io.Writer, st guard.Status, fromPlugin bool, dockerHost string) {
	src := "as the plugin sees them"
	if !fromPlugin {
		src = "asked of the engine with the built-in detectors; the teardown grace is known only to a running plugin"
	}
	fmt.Fprintf(w, "CI jobs (engine %s, %s):\n", redact.String(dockerHost), src)
	if p := st.Policy; fromPlugin {
		fmt.Fprintf(w, "  detectors: %s; teardown grace %s\n", strings.Join(p.Detectors, ", "), p.Grace)
	}
	if st.Runs.HostProcesses != "" {
		fmt.Fprintf(w, "  host processes: %s\n", st.Runs.HostProcesses)
	}
	r := st.Runs
	switch {
	case r.Error != "":
		fmt.Fprintf(w, "  unknown: %s\n  (prune-guard denies prunes and image deletes while the run state is unknown)\n", r.Error)
		return
	case len(r.Active)+len(r.Ended) == 0 && r.Unseen == nil:
		fmt.Fprintln(w, "  none active: dangling prunes and image deletes are allowed")
		return
	}
	for _, a := range r.Active {
		fmt.Fprintf(w, "  active: %s (detector %s: %s)\n", a.Run, a.Detector, a.Looks)
	}
	for _, e := range r.Ended {
		fmt.Fprintf(w, "  in teardown grace: %s\n", e)
	}
	if r.Unseen != nil {
		fmt.Fprintf(w, "  unseen: %s\n", r.Unseen)
	}
	if len(r.Active) > 0 {
		fmt.Fprintln(w, "  prunes that could touch these jobs and every image delete are denied until they end")
	} else {
		fmt.Fprintln(w, "  image deletes and image prunes are denied until the grace is over")
	}
}

// writeTransport says which mode is in force, and where.
func writeTransport(w io.Writer, t guard.Transport) {
	switch t.Mode {
	case guard.ModeProxy:
		fmt.Fprintf(w, "Mode: proxy (clients use %s; the engine's own socket is %s)\n", t.Listen, redact.String(t.Engine))
	case guard.ModeAuthz:
		fmt.Fprintf(w, "Mode: authz (dockerd's authorization plugin; engine %s)\n", redact.String(t.Engine))
	}
}
