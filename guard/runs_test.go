package guard

import (
	"encoding/json"
	"errors"
	"net/http/httptest"
	"reflect"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/policy"
	"github.com/prune-guard/prune-guard/rules"
)

var (
	endedAt  = time.Date(2026, 12, 1, 10, 41, 13, 0, time.UTC)
	liveJob  = rules.Run{Detector: "gitlab", System: "GitLab job", Job: "4711", Kind: rules.Container, Name: "build"}
	endedJob = rules.Run{Detector: "gitlab", System: "GitLab job", Job: "4700", Kind: rules.Container, Name: "old", Ended: endedAt}
	unseen   = &rules.Blind{Since: endedAt.Add(47 * time.Second), Why: "prune-guard started then"}
)

// The audit log's runs lines are a documented format (docs/audit.md) that
// replay and e2e tests read: the structured value must flatten to exactly
// the lines prune-guard has always written.
func TestAuditRecordListsTheRunsADecisionReliedOnInTheDocumentedFormat(t *testing.T) {
	east := time.FixedZone("UTC+2", 2*60*60)
	tests := []struct {
		name string
		runs *fakeRuns
		want []string
	}{
		{name: "a live job is named as denials name it",
			runs: &fakeRuns{runs: []rules.Run{liveJob}, grace: 2 * time.Minute},
			want: []string{"GitLab job 4711, container build"}},
		{name: "a job in its teardown grace says when it ended and when the grace is over",
			runs: &fakeRuns{ended: []rules.Run{endedJob}, grace: 2 * time.Minute},
			want: []string{"GitLab job 4700, container old (ended 2026-12-01T10:41:13Z, grace until 2026-12-01T10:43:13Z)"}},
		{name: "live jobs come before ended ones, and the unseen stretch last",
			runs: &fakeRuns{runs: []rules.Run{liveJob}, ended: []rules.Run{endedJob}, blind: unseen, grace: 2 * time.Minute},
			want: []string{
				"GitLab job 4711, container build",
				"GitLab job 4700, container old (ended 2026-12-01T10:41:13Z, grace until 2026-12-01T10:43:13Z)",
				"unseen: whether a job ended before 2026-12-01T10:42:00Z (prune-guard started then); counted as active until 2026-12-01T10:44:00Z",
			}},
		{name: "times from another zone are written in UTC",
			runs: &fakeRuns{ended: []rules.Run{{System: "CI job", Kind: rules.Process, ID: "42", Name: "worker", Ended: endedAt.In(east)}}, grace: time.Minute},
			want: []string{"CI job, process worker (pid 42) (ended 2026-12-01T10:41:13Z, grace until 2026-12-01T10:42:13Z)"}},
		{name: "an unknown run state is its reason",
			runs: &fakeRuns{err: errors.New("cannot ask the engine which runs are active: dial unix: no such file"), grace: 2 * time.Minute},
			want: []string{"unknown: cannot ask the engine which runs are active: dial unix: no such file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, buf := newTestGuard(tt.runs)
			if v := g.Decide(ctx, Request{Method: "DELETE", URI: "/v1.41/images/node:20"}); v.Allow {
				t.Fatalf("the delete was allowed; want it held by the runs")
			}
			var got []string
			for _, r := range buf.lines(t)[0]["runs"].([]any) {
				got = append(got, r.(string))
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("runs = %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestStatusSendsTheRunStateAsStructuredValues(t *testing.T) {
	tests := []struct {
		name string
		runs *fakeRuns
		want RunsStatus
	}{
		{name: "a live job with the detector that counts it and what it looks for, an ended job with its grace, the unseen stretch",
			runs: &fakeRuns{runs: []rules.Run{liveJob}, ended: []rules.Run{endedJob}, blind: unseen, grace: 2 * time.Minute},
			want: RunsStatus{RunsView: RunsView{
				Active: []ActiveRun{{Run: "GitLab job 4711, container build", Detector: "gitlab", Job: "GitLab job 4711", Looks: looksOf(t, "gitlab")}},
				Ended: []EndedRun{{Run: "GitLab job 4700, container old", Detector: "gitlab", Job: "GitLab job 4700",
					Ended: endedAt, GraceUntil: endedAt.Add(2 * time.Minute)}},
				Unseen: &Unseen{Since: unseen.Since, Why: "prune-guard started then", Until: unseen.Since.Add(2 * time.Minute)},
			}, HostProcesses: HostProcesses(true, "")}},
		{name: "an unknown state is its error",
			runs: &fakeRuns{err: errors.New("engine down")},
			want: RunsStatus{RunsView: RunsView{Error: "engine down"}, HostProcesses: HostProcesses(true, "")}},
		{name: "no job is no runs",
			runs: &fakeRuns{},
			want: RunsStatus{HostProcesses: HostProcesses(true, "")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, _ := newTestGuard(tt.runs)
			rec := httptest.NewRecorder()
			g.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/status", nil))
			var got Status
			if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
				t.Fatalf("GET /status: %v\n%s", err, rec.Body)
			}
			if !reflect.DeepEqual(got.Runs, tt.want) {
				t.Errorf("status runs = %+v\nwant %+v\nJSON: %s", got.Runs, tt.want, rec.Body)
			}
		})
	}
}

func looksOf(t *testing.T, detector string) string {
	t.Helper()
	for _, d := range policy.Default().Detection.Detectors {
		if d.Name == detector {
			return d.Looks
		}
	}
	t.Fatalf("no detector %s in the default detection", detector)
	return ""
}
