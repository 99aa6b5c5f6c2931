package auditlog

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"os"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/prune-guard/prune-guard/audit"
	"github.com/prune-guard/prune-guard/policy"
)

// jl renders one audit line from key/value pairs, as the audit package
// writes them (a JSON object per line).
func jl(kv ...any) string {
	m := map[string]any{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i].(string)] = kv[i+1]
	}
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// decision renders a decision line with the fields every decision carries.
func decision(at, d, rule, op, method, uri string, kv ...any) string {
	return jl(append([]any{"time", at, "level", "info", "msg", "request", "decision", d, "rule", rule,
		"operation", op, "method", method, "uri", uri, "user", "", "runs", nil, "reason", "test"}, kv...)...)
}

// event renders a line without a decision.
func event(at, msg string, kv ...any) string {
	return jl(append([]any{"time", at, "level", "info", "msg", msg}, kv...)...)
}

func lines(ls ...string) string { return strings.Join(ls, "\n") + "\n" }

// readAll reads every audit line in s.
func readAll(t *testing.T, r *Reader) []Line {
	t.Helper()
	var out []Line
	for {
		l, err := r.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		c := *l
		c.Raw = bytes.Clone(l.Raw)
		out = append(out, c)
	}
}

func TestReaderSkipsAndCountsLinesThatAreNotAuditRecords(t *testing.T) {
	good := decision("2026-11-26T09:00:00Z", "deny", "no-prune-all", "image-prune-all", "POST", "/images/prune")
	tests := []struct {
		name string
		bad  string
	}{
		{"plain text", "prune-guard serving on /run/docker/plugins/prune-guard.sock"},
		{"a JSON array", `["decision","deny"]`},
		{"JSON null, which encoding/json accepts for a struct", `null`},
		{"a JSON number", `42`},
		{"an object cut short by a crash", `{"decision":"deny","rule":"no-pr`},
		{"a field of the wrong type", `{"decision":"deny","runs":"not a list"}`},
		{"a decision prune-guard never writes", `{"decision":"maybe","rule":"x"}`},
		{"a decision that is not a string", `{"decision":true}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewReader(strings.NewReader(lines(good, tt.bad, good)))
			got := readAll(t, r)
			if len(got) != 2 || got[1].Number != 3 {
				t.Fatalf("read %d lines %+v, want the 2 good ones (lines 1 and 3)", len(got), got)
			}
			if r.Skipped != 1 || r.FirstSkipped != 2 || r.Read != 3 {
				t.Errorf("Skipped=%d FirstSkipped=%d Read=%d, want 1, 2, 3", r.Skipped, r.FirstSkipped, r.Read)
			}
		})
	}
}

func TestReaderAcceptsBlankLinesCRLFAndALastLineWithoutNewline(t *testing.T) {
	a := decision("2026-11-26T09:00:00Z", "allow", "", "image-prune", "POST", "/images/prune")
	b := event("2026-11-26T09:00:01Z", "policy loaded", "source", "/etc/p.yaml")
	r := NewReader(strings.NewReader("\n" + a + "\r\n  \n" + b))
	got := readAll(t, r)
	if len(got) != 2 || r.Skipped != 0 || r.Read != 2 {
		t.Fatalf("got %d lines, Skipped=%d Read=%d; want 2, 0, 2", len(got), r.Skipped, r.Read)
	}
	if string(got[0].Raw) != a {
		t.Errorf("Raw = %q, want the line without its CRLF %q", got[0].Raw, a)
	}
	if got[1].IsDecision || got[1].Msg != "policy loaded" || !strings.Contains(string(got[1].Raw), "/etc/p.yaml") || got[1].Number != 4 {
		t.Errorf("last line = %+v, want the event on line 4", got[1])
	}
}

func TestReaderSkipsALineLongerThanTheLimitWithoutLosingTheNext(t *testing.T) {
	good := decision("2026-11-26T09:00:00Z", "deny", "r", "image-delete", "DELETE", "/images/x")
	long := `{"decision":"deny","uri":"` + strings.Repeat("a", MaxLineBytes) + `"}`
	r := NewReader(strings.NewReader(lines(long, good)))
	got := readAll(t, r)
	if len(got) != 1 || got[0].Number != 2 {
		t.Fatalf("got %+v, want only line 2", got)
	}
	if r.Skipped != 1 || r.TooLong != 1 || r.FirstSkipped != 1 {
		t.Errorf("Skipped=%d TooLong=%d FirstSkipped=%d, want 1, 1, 1", r.Skipped, r.TooLong, r.FirstSkipped)
	}
}

func TestReaderReadsWhatTheAuditPackageWrites(t *testing.T) {
	var buf bytes.Buffer
	lg := audit.New(&buf, nil)
	lg.Event("prune-guard started", map[string]any{"source": "built-in default", "policy": "0123456789ab"})
	lg.Write(audit.Record{Decision: audit.Deny, Rule: "no-delete-during-run", Operation: "image-delete",
		Method: "DELETE", URI: "/v1.43/images/alpine", Target: "alpine", User: "ci",
		Runs: []string{"prune-guard.run=7 (container c)"}, Reason: "blocked", Policy: "0123456789ab"})
	lg.Write(audit.Record{Decision: audit.WouldDeny, Rule: "no-prune-all", Operation: "image-prune-all",
		Method: "POST", URI: "/images/prune", Doubt: "a form body"})

	got := readAll(t, NewReader(&buf))
	if len(got) != 3 {
		t.Fatalf("read %d lines, want 3:\n%s", len(got), buf.String())
	}
	if ev := got[0]; ev.IsDecision || ev.Msg != "prune-guard started" || !strings.Contains(string(ev.Raw), `"source":"built-in default"`) || ev.Time.IsZero() {
		t.Errorf("event = %+v", ev)
	}
	d := got[1]
	if !d.IsDecision || d.Decision != audit.Deny || d.Rule != "no-delete-during-run" || d.Operation != "image-delete" ||
		d.Method != "DELETE" || d.URI != "/v1.43/images/alpine" || d.Target != "alpine" || d.User != "ci" ||
		len(d.Runs) != 1 || d.Policy != "0123456789ab" || d.Time.IsZero() {
		t.Errorf("decision = %+v", d)
	}
	if w := got[2]; w.Decision != audit.WouldDeny || w.Doubt != "a form body" {
		t.Errorf("would-deny = %+v", w)
	}
}

func TestReaderDecompressesGzip(t *testing.T) {
	plain := lines(
		decision("2026-11-26T09:00:00Z", "deny", "no-prune-all", "image-prune-all", "POST", "/images/prune"),
		event("2026-11-26T09:00:01Z", "prune-guard stopped"),
	)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte(plain))
	zw.Close()
	got := readAll(t, NewReader(&gz))
	if len(got) != 2 || got[0].Rule != "no-prune-all" {
		t.Errorf("read %+v from a gzip-compressed log, want its 2 lines", got)
	}
}

func TestReaderReturnsInputErrorsInsteadOfCountingThem(t *testing.T) {
	good := decision("2026-11-26T09:00:00Z", "deny", "r", "image-delete", "DELETE", "/images/x")
	failing := io.MultiReader(strings.NewReader(good+"\n"), iotest.ErrReader(errors.New("disk on fire")))
	r := NewReader(failing)
	if _, err := r.Next(); err != nil {
		t.Fatalf("first line: %v", err)
	}
	if _, err := r.Next(); err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Errorf("Next after a read error = %v, want that error", err)
	}
}

// FuzzReport feeds arbitrary input through a report and a replay: neither
// may panic, and every line read is either counted or skipped.
func FuzzReport(f *testing.F) {
	f.Add([]byte(lines(decision("2026-11-26T09:00:00Z", "deny", "no-prune-all", "image-prune-all", "POST", "/images/prune?filters=%7B"))))
	f.Add([]byte(`{"decision":"allow","runs":["unknown: x"],"doubt":"d","operation":"image-prune-all","method":"POST","uri":"/v1.43/images/prune"}`))
	f.Add([]byte("\x1f\x8b\x08\x00garbage"))
	f.Add([]byte("null\n[]\n{\"msg\":1}\n"))
	if seed, err := os.ReadFile("testdata/cache.jsonl"); err == nil {
		f.Add(seed)
	}
	p := policy.Default().Policy
	f.Fuzz(func(t *testing.T, in []byte) {
		s, err := Report(bytes.NewReader(in), io.Discard, Options{})
		if err == nil && s.Matched+s.Skipped != s.Read {
			t.Errorf("Read=%d but Matched=%d and Skipped=%d", s.Read, s.Matched, s.Skipped)
		}
		Replay(bytes.NewReader(in), io.Discard, p, ReplayOptions{JSON: true})
		for _, j := range []bool{false, true} {
			c, err := CacheReport(bytes.NewReader(in), io.Discard, CacheOptions{At: time.Unix(1764158400, 0), HubLimit: 100, JSON: j})
			if err == nil && (c.Pulls < 0 || len(c.removed) > MaxKeys || len(c.Evictions) > maxEvictions) {
				t.Errorf("cache report out of bounds: %d pulls, %d removals held, %d evictions", c.Pulls, len(c.removed), len(c.Evictions))
			}
		}
	})
}

// TestEveryRecordFieldSurvivesTheRoundTrip fills every field of the one
// schema by reflection, writes it with the audit package and reads it back,
// so a field added or renamed on one side only cannot go unnoticed.
func TestEveryRecordFieldSurvivesTheRoundTrip(t *testing.T) {
	var want audit.Record
	v := reflect.ValueOf(&want).Elem()
	for i := range v.NumField() {
		f := v.Field(i)
		switch f.Kind() {
		case reflect.String:
			f.SetString("v-" + v.Type().Field(i).Name)
		case reflect.Int64:
			f.SetInt(int64(1000 + i))
		case reflect.Slice:
			f.Set(reflect.ValueOf([]string{"run-" + v.Type().Field(i).Name}))
		case reflect.Pointer:
			// Pull: a pull record, read back below.
		default:
			t.Fatalf("field %s has kind %s: extend this test", v.Type().Field(i).Name, f.Kind())
		}
	}
	want.Decision = audit.WouldDeny
	var buf bytes.Buffer
	audit.New(&buf, nil).Write(want)
	got := readAll(t, NewReader(&buf))
	if len(got) != 1 || !got[0].IsDecision {
		t.Fatalf("read %+v from %s", got, buf.String())
	}
	// Write sets the time, level and message itself.
	want.Time, want.Level, want.Msg = got[0].Record.Time, got[0].Level, got[0].Msg
	if !reflect.DeepEqual(got[0].Record, want) {
		t.Errorf("read back\n %+v\nwant\n %+v", got[0].Record, want)
	}

	// The same record as a pull record: no decision, the pull's fields.
	want.Pull = &audit.Pull{Registry: "registry.example:5000", Result: audit.PullMiss, Error: "v-Error",
		Progress: &audit.PullProgress{LayersReused: 1, LayersDownloaded: 2, BytesDownloaded: 3}}
	buf.Reset()
	audit.New(&buf, nil).Write(want)
	got = readAll(t, NewReader(&buf))
	if len(got) != 1 || got[0].IsDecision || got[0].Decision != "" {
		t.Fatalf("a pull record read as %+v from %s", got, buf.String())
	}
	want.Decision, want.Time, want.Level, want.Msg = "", got[0].Record.Time, got[0].Level, got[0].Msg
	if !reflect.DeepEqual(got[0].Record, want) {
		t.Errorf("pull record read back\n %+v\nwant\n %+v", got[0].Record, want)
	}
}
