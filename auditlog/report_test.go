package auditlog

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/audit"
)

const pruneAll = "/v1.43/images/prune?filters=%7B%22dangling%22%3A%7B%22false%22%3Atrue%7D%7D"

// sample is a small log: events, the three decisions, two users, a
// malformed line, spread over an hour.
var sample = lines(
	event("2026-11-26T09:00:00Z", "prune-guard started", "source", "built-in default", "policy", "aaaa"),
	decision("2026-11-26T09:10:00Z", "deny", "no-prune-all", "image-prune-all", "POST", pruneAll),
	decision("2026-11-26T09:20:00Z", "deny", "no-prune-all", "image-prune-all", "POST", pruneAll, "user", "ci-bot"),
	decision("2026-11-26T09:30:00Z", "allow", "", "image-delete", "DELETE", "/v1.43/images/alpine:3"),
	`this line is not JSON`,
	decision("2026-11-26T09:40:00Z", "would-deny", "no-build-prune-all", "build-prune-all", "POST", "/v1.43/build/prune?all=1"),
	event("2026-11-26T09:45:00Z", "policy rejected", "error", "p.yaml:3: unknown key"),
	decision("2026-11-26T09:50:00Z", "deny", "no-delete-during-run", "image-delete", "DELETE", "/v1.43/images/alpine:3",
		"runs", []string{"prune-guard.run=42 (container build)"}),
)

func report(t *testing.T, in string, o Options) (*Summary, string) {
	t.Helper()
	var out bytes.Buffer
	s, err := Report(strings.NewReader(in), &out, o)
	if err != nil {
		t.Fatalf("Report: %v", err)
	}
	return s, out.String()
}

func rowsOf(rows []Row) map[string]Counts {
	m := map[string]Counts{}
	for _, r := range rows {
		m[r.Key] = r.Counts
	}
	return m
}

func TestSummaryCountsDecisionsByRuleOperationAndUser(t *testing.T) {
	s, _ := report(t, sample, Options{})
	if want := (Counts{Allow: 1, Deny: 3, WouldDeny: 1}); s.Decisions != want {
		t.Errorf("Decisions = %+v, want %+v", s.Decisions, want)
	}
	if s.Read != 8 || s.Matched != 7 || s.Skipped != 1 || s.FirstSkipped != 5 {
		t.Errorf("Read=%d Matched=%d Skipped=%d FirstSkipped=%d, want 8, 7, 1, 5", s.Read, s.Matched, s.Skipped, s.FirstSkipped)
	}
	tests := []struct {
		name string
		got  []Row
		want map[string]Counts
	}{
		{"by rule, no rule as empty", s.ByRule(), map[string]Counts{
			"no-prune-all":         {Deny: 2},
			"":                     {Allow: 1},
			"no-build-prune-all":   {WouldDeny: 1},
			"no-delete-during-run": {Deny: 1},
		}},
		{"by operation", s.ByOperation(), map[string]Counts{
			"image-prune-all": {Deny: 2},
			"image-delete":    {Allow: 1, Deny: 1},
			"build-prune-all": {WouldDeny: 1},
		}},
		{"by user, local as empty", s.ByUser(), map[string]Counts{
			"":       {Allow: 1, Deny: 2, WouldDeny: 1},
			"ci-bot": {Deny: 1},
		}},
		{"top denied counts deny and would-deny, query decoded", s.TopDenied(TopDenied), map[string]Counts{
			`POST /v1.43/images/prune?filters={"dangling":{"false":true}}`: {Deny: 2},
			"POST /v1.43/build/prune?all=1":                                {WouldDeny: 1},
			"DELETE /v1.43/images/alpine:3":                                {Deny: 1},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := rowsOf(tt.got); !equalCounts(got, tt.want) {
				t.Errorf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
	if rows := s.ByRule(); rows[0].Key != "no-prune-all" {
		t.Errorf("rows are not sorted by count: %+v", rows)
	}
	if ev := s.Events(); ev["prune-guard started"] != 1 || ev["policy rejected"] != 1 || len(ev) != 2 {
		t.Errorf("Events = %v", ev)
	}
	if s.First.Format(time.RFC3339) != "2026-11-26T09:00:00Z" || s.Last.Format(time.RFC3339) != "2026-11-26T09:50:00Z" {
		t.Errorf("First, Last = %v, %v", s.First, s.Last)
	}
}

func equalCounts(a, b map[string]Counts) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestParseSinceAcceptsADurationOrAnRFC3339Time(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in      string
		want    time.Time
		wantErr string
	}{
		{"", time.Time{}, ""},
		{"24h", now.Add(-24 * time.Hour), ""},
		{"90m", now.Add(-90 * time.Minute), ""},
		{"0s", now, ""},
		{"2026-11-26T09:00:00Z", time.Date(2026, 11, 26, 9, 0, 0, 0, time.UTC), ""},
		{"2026-11-26T10:00:00+01:00", time.Date(2026, 11, 26, 9, 0, 0, 0, time.UTC), ""},
		{"2026-11-26T09:00:00.5Z", time.Date(2026, 11, 26, 9, 0, 0, 5e8, time.UTC), ""},
		{"-1h", time.Time{}, "cannot be negative"},
		{"7d", time.Time{}, "168h"},
		{"yesterday", time.Time{}, "RFC 3339"},
		{"2026-11-26", time.Time{}, "RFC 3339"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSince(tt.in, now)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("ParseSince(%q) error = %v, want one mentioning %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil || !got.Equal(tt.want) {
				t.Errorf("ParseSince(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestFilterKeepsLinesSinceATimeAndDenialsOnly(t *testing.T) {
	now := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	fromDuration, _ := ParseSince("30m", now)
	fromTime, _ := ParseSince("2026-11-26T09:30:00Z", now)
	untimed := decision("not a time", "deny", "r", "image-delete", "DELETE", "/images/x")
	in := sample + untimed + "\n"
	tests := []struct {
		name      string
		f         Filter
		wantTimes []string
	}{
		{"no filter keeps every line, untimed ones too", Filter{},
			[]string{"09:00", "09:10", "09:20", "09:30", "09:40", "09:45", "09:50", "-"}},
		{"--since 30m keeps the last half hour, not untimed lines", Filter{Since: fromDuration},
			[]string{"09:30", "09:40", "09:45", "09:50"}},
		{"--since an RFC 3339 time includes that instant", Filter{Since: fromTime},
			[]string{"09:30", "09:40", "09:45", "09:50"}},
		{"--denied keeps deny and would-deny, drops allows and events", Filter{Denied: true},
			[]string{"09:10", "09:20", "09:40", "09:50", "-"}},
		{"both", Filter{Since: fromDuration, Denied: true},
			[]string{"09:40", "09:50"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			r := NewReader(strings.NewReader(in))
			for _, l := range readAll(t, r) {
				if tt.f.Match(&l) {
					at := "-"
					if !l.Time.IsZero() {
						at = l.Time.Format("15:04")
					}
					got = append(got, at)
				}
			}
			if !slices.Equal(got, tt.wantTimes) {
				t.Errorf("kept %v, want %v", got, tt.wantTimes)
			}
			s, _ := report(t, in, Options{Filter: tt.f})
			if s.Matched != int64(len(tt.wantTimes)) {
				t.Errorf("summary counted %d lines, want %d", s.Matched, len(tt.wantTimes))
			}
		})
	}
}

func TestReportJSONWritesMatchingLinesUnchangedThenOneSummaryObject(t *testing.T) {
	_, out := report(t, sample, Options{JSON: true, Filter: Filter{Denied: true}})
	got := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	var want []string
	for _, l := range strings.Split(sample, "\n") {
		if strings.Contains(l, `"decision":"deny"`) || strings.Contains(l, `"decision":"would-deny"`) {
			want = append(want, l)
		}
	}
	if len(got) != len(want)+1 {
		t.Fatalf("got %d lines, want %d and the summary:\n%s", len(got), len(want), out)
	}
	if !slices.Equal(got[:len(want)], want) {
		t.Errorf("lines were changed:\n got %q\nwant %q", got[:len(want)], want)
	}

	var last map[string]json.RawMessage
	if err := json.Unmarshal([]byte(got[len(got)-1]), &last); err != nil {
		t.Fatalf("last line is not JSON: %v", err)
	}
	if len(last) != 1 || last["summary"] == nil {
		t.Fatalf("last line = %s, want one object with the only key summary", got[len(got)-1])
	}
	var s struct {
		DeniedOnly   bool `json:"denied_only"`
		LinesRead    int  `json:"lines_read"`
		LinesMatched int  `json:"lines_matched"`
		NotJSON      int  `json:"not_json"`
		FirstNotJSON int  `json:"first_not_json_line"`
		First, Last  string
		Decisions    map[string]int            `json:"decisions"`
		Events       map[string]int            `json:"events"`
		ByRule       map[string]map[string]int `json:"by_rule"`
		ByOperation  map[string]map[string]int `json:"by_operation"`
		ByUser       map[string]map[string]int `json:"by_user"`
		TopDenied    []struct {
			Command   string `json:"command"`
			Deny      int    `json:"deny"`
			WouldDeny int    `json:"would-deny"`
		} `json:"top_denied"`
	}
	dec := json.NewDecoder(bytes.NewReader(last["summary"]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		t.Fatalf("summary %s: %v", last["summary"], err)
	}
	if !s.DeniedOnly || s.LinesRead != 8 || s.LinesMatched != 4 || s.NotJSON != 1 || s.FirstNotJSON != 5 {
		t.Errorf("summary counts = %+v", s)
	}
	if s.Decisions["deny"] != 3 || s.Decisions["would-deny"] != 1 || s.Decisions["allow"] != 0 {
		t.Errorf("decisions = %v", s.Decisions)
	}
	if s.ByRule["no-prune-all"]["deny"] != 2 || s.ByUser[""]["deny"] != 2 || s.ByOperation["image-delete"]["deny"] != 1 {
		t.Errorf("tables = %v %v %v", s.ByRule, s.ByUser, s.ByOperation)
	}
	if len(s.TopDenied) != 3 || s.TopDenied[0].Command != `POST /v1.43/images/prune?filters={"dangling":{"false":true}}` || s.TopDenied[0].Deny != 2 {
		t.Errorf("top_denied = %+v", s.TopDenied)
	}
	if s.First != "2026-11-26T09:10:00Z" || s.Last != "2026-11-26T09:50:00Z" {
		t.Errorf("first, last = %s, %s", s.First, s.Last)
	}
	if s.Events == nil || len(s.Events) != 0 {
		t.Errorf("events = %v, want an empty object under --denied", s.Events)
	}
	if strings.Contains(out, `\u003e`) || strings.Contains(out, `\u0026`) {
		t.Errorf("summary escapes characters for HTML:\n%s", out)
	}
}

func TestReportTextListsTheLinesThenTheSummary(t *testing.T) {
	_, out := report(t, sample, Options{})
	listing, summary, ok := strings.Cut(out, "\nsummary: ")
	if !ok {
		t.Fatalf("no summary after the lines:\n%s", out)
	}
	for _, want := range []string{
		`2026-11-26T09:10:00Z deny       no-prune-all         image-prune-all  POST /v1.43/images/prune?filters={"dangling":{"false":true}}`,
		`2026-11-26T09:50:00Z deny       no-delete-during-run image-delete     DELETE /v1.43/images/alpine:3  runs: prune-guard.run=42 (container build)`,
		`2026-11-26T09:20:00Z deny       no-prune-all         image-prune-all  POST /v1.43/images/prune?filters={"dangling":{"false":true}}  user: ci-bot`,
		`2026-11-26T09:30:00Z allow      -                    image-delete     DELETE /v1.43/images/alpine:3`,
		`2026-11-26T09:45:00Z event      policy rejected  error="p.yaml:3: unknown key"`,
		`2026-11-26T09:00:00Z event      prune-guard started  policy=aaaa source="built-in default"`,
	} {
		if !strings.Contains(listing, want+"\n") {
			t.Errorf("listing lacks %q:\n%s", want, listing)
		}
	}
	for _, want := range []string{
		"5 decisions (1 allow, 3 deny, 1 would-deny) and 2 events in 7 of 8 lines, 2026-11-26T09:00:00Z to 2026-11-26T09:50:00Z\n",
		"1 line was not a JSON audit record (skipped; the first is line 5)\n",
		"       1         2           1  (local)\n",
		"       1         0           0  (no rule)\n",
		`       2           0  POST /v1.43/images/prune?filters={"dangling":{"false":true}}` + "\n",
	} {
		if !strings.Contains(summary, want) {
			t.Errorf("summary lacks %q:\n%s", want, summary)
		}
	}
}

func TestReportTextReportsMalformedLinesWithoutFailing(t *testing.T) {
	in := lines("not json", decision("2026-11-26T09:00:00Z", "deny", "r", "image-delete", "DELETE", "/images/x"), "{", "[]")
	s, out := report(t, in, Options{SummaryOnly: true})
	if s.Skipped != 3 || s.Decisions.Deny != 1 {
		t.Errorf("Skipped=%d Deny=%d, want 3, 1", s.Skipped, s.Decisions.Deny)
	}
	if !strings.Contains(out, "3 lines were not JSON audit records (skipped; the first is line 1)") {
		t.Errorf("output does not report the malformed lines:\n%s", out)
	}
	if strings.Contains(out, "DELETE /images/x  ") || strings.HasPrefix(out, "2026") {
		t.Errorf("--summary listed lines:\n%s", out)
	}
}

func TestReportTextEscapesWhatCouldDriveATerminal(t *testing.T) {
	in := lines(decision("2026-11-26T09:00:00Z", "deny", "r\u202e", "image-delete", "DELETE", "/images/x?q=%1b%5b2J%0a",
		"user", "mallory\x1b]0;pwned\x07"),
		event("2026-11-26T09:00:01Z", "policy rejected", "error", "bad\x1b[2J"))
	_, out := report(t, in, Options{})
	if strings.ContainsAny(out, "\x1b\x07\u202e") || strings.Count(out, "DELETE /images/x") != 2 {
		t.Errorf("output holds control characters or a split line:\n%q", out)
	}
	for _, want := range []string{`/images/x?q=\x1b[2J\x0a`, `mallory\x1b]0;pwned\x07`, `r\u202e`, `error="bad\x1b[2J"`} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks the escaped %q:\n%s", want, out)
		}
	}
}

func TestSummaryTablesHoldABoundedNumberOfKeys(t *testing.T) {
	s := NewSummary(Filter{})
	for i := range MaxKeys + 5 {
		s.Add(&Line{IsDecision: true, Record: audit.Record{Decision: audit.Deny, Rule: "r", Operation: "image-delete", Method: "DELETE",
			URI: fmt.Sprintf("/images/%d%s", i, strings.Repeat("x", 2*maxKeyBytes)), User: fmt.Sprint("user", i)}})
	}
	users := rowsOf(s.ByUser())
	if len(users) != MaxKeys+1 || users[Other].Deny != 5 {
		t.Errorf("%d user keys, %s = %+v; want %d keys and the last 5 users counted as %s", len(users), Other, users[Other], MaxKeys+1, Other)
	}
	for _, r := range s.TopDenied(1) {
		if len(r.Key) > maxKeyBytes+len("…") {
			t.Errorf("a command key of %d bytes was kept, want at most %d", len(r.Key), maxKeyBytes)
		}
	}
	var out bytes.Buffer
	s.WriteText(&out)
	if !strings.Contains(out.String(), "the rest are counted as (other)") {
		t.Errorf("the text summary does not say a table was cut")
	}
	j, _ := s.MarshalJSON()
	if !bytes.Contains(j, []byte(`"truncated":true`)) {
		t.Errorf("the JSON summary does not say a table was cut")
	}
}

func TestReadableURIDecodesTheQueryButNotThePath(t *testing.T) {
	tests := []struct{ in, want string }{
		{pruneAll, `/v1.43/images/prune?filters={"dangling":{"false":true}}`},
		{"/v1.43/images/%70rune", "/v1.43/images/%70rune"},
		{"/v1.43/build/prune?all=1&keep-storage=0", "/v1.43/build/prune?all=1&keep-storage=0"},
		{"/images/prune?filters=%zz", "/images/prune?filters=%zz"},
		{"", ""},
	}
	for _, tt := range tests {
		if got := ReadableURI(tt.in); got != tt.want {
			t.Errorf("ReadableURI(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestEventsAreListedWithAllTheirFields(t *testing.T) {
	tests := []struct {
		name, line, want string
	}{
		{"a policy event: the hash cut to 12 digits", event("2026-11-26T09:00:00Z", "policy loaded", "source", "/etc/p.yaml", "policy", strings.Repeat("ab", 32)),
			"2026-11-26T09:00:00Z event      policy loaded  policy=abababababab source=/etc/p.yaml\n"},
		{"numbers, booleans and quoted strings as they are", event("2026-11-26T09:00:00Z", "reclaim pass", "component", "reclaim", "freed_bytes", 1024, "dry_run", false, "reason", "disk full"),
			`2026-11-26T09:00:00Z event      reclaim pass  component=reclaim dry_run=false freed_bytes=1024 reason="disk full"` + "\n"},
		{"no fields", event("2026-11-26T09:00:00Z", "prune-guard stopped"),
			"2026-11-26T09:00:00Z event      prune-guard stopped\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, out := report(t, lines(tt.line), Options{})
			if got, _, _ := strings.Cut(out, "\n\n"); got+"\n" != tt.want {
				t.Errorf("listed\n%q\nwant\n%q", got+"\n", tt.want)
			}
		})
	}
}
