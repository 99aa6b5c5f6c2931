package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/prune-guard/prune-guard/audit"
	"github.com/prune-guard/prune-guard/guard"
	"github.com/prune-guard/prune-guard/policy"
	"github.com/prune-guard/prune-guard/rules"
)

// stateRuns reports one run state whenever asked.
type stateRuns rules.RunState

func (s stateRuns) State(context.Context, rules.Detection) rules.RunState { return rules.RunState(s) }

func (stateRuns) HostVisible() (bool, string) { return false, "pid namespace" }

// serveStatus serves a guard's /status on a unix socket, as serve does.
func serveStatus(t *testing.T, h http.Handler) string {
	t.Helper()
	socket := filepath.Join(t.TempDir(), "pg.sock")
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return socket
}

// The runs travel from the plugin to "prune-guard status" as structured
// JSON; the text status prints from them is the text it has always printed.
func TestStatusPrintsTheRunsThePluginSends(t *testing.T) {
	endedAt := time.Date(2026, 12, 1, 10, 41, 13, 0, time.UTC)
	live := rules.Run{Detector: "gitlab", System: "GitLab job", Job: "4711", Kind: rules.Container, Name: "build"}
	ended := rules.Run{Detector: "gitlab", System: "GitLab job", Job: "4700", Kind: rules.Container, Name: "old", Ended: endedAt}
	blind := &rules.Blind{Since: endedAt.Add(47 * time.Second), Why: "prune-guard started then"}
	head := "CI jobs (engine unix:///var/run/docker.sock, as the plugin sees them):\n" +
		"  detectors: " + strings.Join(policy.Default().Detection.Names(), ", ") + "; teardown grace 2m0s\n" +
		"  host processes: not visible (pid namespace): host-process detectors see nothing; a managed plugin needs pidhost\n"
	const inGrace = "  in teardown grace: GitLab job 4700, container old (ended 2026-12-01T10:41:13Z, grace until 2026-12-01T10:43:13Z)\n"
	const unseen = "  unseen: whether a job ended before 2026-12-01T10:42:00Z (prune-guard started then); counted as active until 2026-12-01T10:44:00Z\n"
	tests := []struct {
		name  string
		state rules.RunState
		want  string
	}{
		{name: "a live job with its detector, a job in its grace, the unseen stretch",
			state: rules.RunState{Active: []rules.Run{live}, Ended: []rules.Run{ended}, Blind: blind, Grace: 2 * time.Minute},
			want: head +
				"  active: GitLab job 4711, container build (detector gitlab: label com.gitlab.gitlab-runner.job.id on containers)\n" +
				inGrace + unseen +
				"  prunes that could touch these jobs and every image delete are denied until they end\n"},
		{name: "only a job in its grace holds image operations",
			state: rules.RunState{Ended: []rules.Run{ended}, Grace: 2 * time.Minute},
			want:  head + inGrace + "  image deletes and image prunes are denied until the grace is over\n"},
		{name: "an unseen stretch alone holds image operations",
			state: rules.RunState{Blind: blind, Grace: 2 * time.Minute},
			want:  head + unseen + "  image deletes and image prunes are denied until the grace is over\n"},
		{name: "an unknown state says why and what is denied",
			state: rules.RunState{Err: errors.New("engine down"), Grace: 2 * time.Minute},
			want:  head + "  unknown: engine down\n  (prune-guard denies prunes and image deletes while the run state is unknown)\n"},
		{name: "no job",
			state: rules.RunState{Grace: 2 * time.Minute},
			want:  head + "  none active: dangling prunes and image deletes are allowed\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			log := logrus.New()
			log.SetOutput(io.Discard)
			g := guard.New(policy.Default(), stateRuns(tt.state), noNames{}, audit.New(io.Discard, nil), log)
			st, err := fetchStatus(t.Context(), serveStatus(t, g.Handler()))
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			writeRuns(&out, st, true, "unix:///var/run/docker.sock")
			if out.String() != tt.want {
				t.Errorf("status prints\n%s\nwant\n%s", out.String(), tt.want)
			}
		})
	}
}

func TestStatusFromAPluginOfAnotherVersionSaysSo(t *testing.T) {
	socket := serveStatus(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, `{"runs":{"active":["GitLab job 4711, container build (detector gitlab: …)"],"ended":null}}`)
	}))
	_, err := fetchStatus(t.Context(), socket)
	if err == nil || !strings.Contains(err.Error(), "another version") {
		t.Errorf("error = %v, want one that suggests the plugin is of another version", err)
	}
}

// status --json prints one object a program can decode, with the fields
// docs/install.md documents as stable.
func TestStatusJSONDecodes(t *testing.T) {
	live := rules.Run{Detector: "gitlab", System: "GitLab job", Job: "4711", Kind: rules.Container, Name: "build"}
	log := logrus.New()
	log.SetOutput(io.Discard)
	g := guard.New(policy.Default(), stateRuns(rules.RunState{Active: []rules.Run{live}, Grace: 2 * time.Minute}), noNames{}, audit.New(io.Discard, nil), log)
	g.SetTransport(guard.Transport{Mode: guard.ModeAuthz, Engine: "unix:///var/run/docker.sock"})
	socket := serveStatus(t, g.Handler())
	var out bytes.Buffer
	if err := runStatusJSON(t.Context(), &out, socket, "unix:///nonexistent/docker.sock"); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out.String())
	}
	// Decoded as a program would: by the documented names, into plain
	// maps, so a renamed field fails here.
	var doc struct {
		SchemaVersion int    `json:"schema_version"`
		Reachable     bool   `json:"reachable"`
		Version       string `json:"version"`
		Transport     struct {
			Mode string `json:"mode"`
		} `json:"transport"`
		Policy struct {
			Source string `json:"source"`
			Hash   string `json:"hash"`
			Mode   string `json:"mode"`
		} `json:"policy"`
		Runs struct {
			Error  string `json:"error"`
			Active []struct {
				Run, Detector, Job string
			} `json:"active"`
		} `json:"runs"`
		Stats struct {
			Started   time.Time                   `json:"started"`
			Reads     int64                       `json:"reads_allowed"`
			Decisions map[string]map[string]int64 `json:"decisions"`
		} `json:"stats"`
		AuditWriteFailures *int64 `json:"audit_write_failures"`
	}
	dec := json.NewDecoder(&out)
	if err := dec.Decode(&doc); err != nil {
		t.Fatalf("decode: %v", err)
	}
	if dec.More() {
		t.Error("status --json printed more than one object")
	}
	if doc.SchemaVersion != 1 || !doc.Reachable || doc.Version == "" || doc.Transport.Mode != "authz" ||
		doc.Policy.Hash != policy.Default().Hash || doc.Policy.Mode != "enforce" || doc.Stats.Started.IsZero() || doc.AuditWriteFailures == nil {
		t.Errorf("status --json: %+v", doc)
	}
	if len(doc.Runs.Active) != 1 || doc.Runs.Active[0].Job != "GitLab job 4711" || doc.Runs.Active[0].Detector != "gitlab" {
		t.Errorf("runs.active = %+v", doc.Runs.Active)
	}
}

// When prune-guard does not answer, status --json still prints the object,
// says why, and exits non-zero.
func TestStatusJSONWithoutPruneGuard(t *testing.T) {
	var out bytes.Buffer
	err := runStatusJSON(t.Context(), &out, filepath.Join(t.TempDir(), "none.sock"), "unix:///nonexistent/docker.sock")
	if err == nil {
		t.Fatal("status --json succeeded without prune-guard")
	}
	var rep StatusReport
	if derr := json.Unmarshal(out.Bytes(), &rep); derr != nil {
		t.Fatalf("decode: %v\n%s", derr, out.String())
	}
	if rep.Reachable || rep.Error == "" || rep.SchemaVersion != 1 || rep.Runs.Error == "" {
		t.Errorf("status --json without prune-guard: %+v", rep)
	}
}
