package auditlog

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/prune-guard/prune-guard/audit"
)

// Counts are decisions by outcome.
type Counts struct {
	Allow     int64 `json:"allow"`
	Deny      int64 `json:"deny"`
	WouldDeny int64 `json:"would-deny"`
}

func (c *Counts) add(decision audit.Outcome) {
	switch decision {
	case audit.Allow:
		c.Allow++
	case audit.Deny:
		c.Deny++
	case audit.WouldDeny:
		c.WouldDeny++
	}
}

// Total is the number of decisions counted.
func (c Counts) Total() int64 { return c.Allow + c.Deny + c.WouldDeny }

// Refused is the number of decisions a rule refused or would have refused.
func (c Counts) Refused() int64 { return c.Deny + c.WouldDeny }

// Limits on a summary's memory, whatever the log holds. Rules, operations
// and users are few; commands repeat. A log with more distinct keys than
// this was written by something else, or under attack, and its long tail is
// better counted together than held.
const (
	// MaxKeys is the number of distinct keys a table holds; later new
	// keys are counted under Other.
	MaxKeys = 10000
	// maxKeyBytes bounds one key (a URI may be up to 1 MiB).
	maxKeyBytes = 512
	// Other is the key a full table counts new keys under.
	Other = "(other)"
)

// table counts decisions by key, holding at most MaxKeys keys.
type table struct {
	counts map[string]*Counts
	full   bool
}

func (t *table) add(key string, decision audit.Outcome) {
	if t.counts == nil {
		t.counts = make(map[string]*Counts)
	}
	key = truncate(key)
	c, ok := t.counts[key]
	if !ok {
		if len(t.counts) >= MaxKeys {
			t.full = true
			key = Other
			c = t.counts[key]
		}
		if c == nil {
			c = new(Counts)
			t.counts[key] = c
		}
	}
	c.add(decision)
}

// Row is one key of a table and its counts.
type Row struct {
	Key string
	Counts
}

// rows returns the table sorted by by's value, largest first, then by key.
func (t *table) rows(by func(Counts) int64) []Row {
	rows := make([]Row, 0, len(t.counts))
	for k, c := range t.counts {
		rows = append(rows, Row{k, *c})
	}
	slices.SortFunc(rows, func(a, b Row) int {
		if n := cmp.Compare(by(b.Counts), by(a.Counts)); n != 0 {
			return n
		}
		return strings.Compare(a.Key, b.Key)
	})
	return rows
}

func (t *table) json() map[string]Counts {
	m := make(map[string]Counts, len(t.counts))
	for k, c := range t.counts {
		m[k] = *c
	}
	return m
}

// truncate cuts s to maxKeyBytes on a rune boundary.
func truncate(s string) string {
	if len(s) <= maxKeyBytes {
		return s
	}
	cut := maxKeyBytes
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// TopDenied is how many refused commands a summary lists.
const TopDenied = 10

// Summary counts the lines a filter kept.
type Summary struct {
	Filter Filter
	// Read counts the non-blank lines read, Skipped those that were not
	// audit records (TooLong of them for their length; FirstSkipped is
	// the first one's line number).
	Read, Skipped, TooLong int64
	FirstSkipped           int
	// Matched counts the lines the filter kept: Decisions plus events.
	Matched     int64
	Decisions   Counts
	First, Last time.Time

	events     map[string]int64
	rules      table
	operations table
	users      table
	commands   table
}

// NewSummary returns an empty summary of the lines f keeps.
func NewSummary(f Filter) *Summary { return &Summary{Filter: f} }

// Add counts l, which the filter kept.
func (s *Summary) Add(l *Line) {
	s.Matched++
	if !l.Time.IsZero() {
		if s.First.IsZero() || l.Time.Before(s.First) {
			s.First = l.Time
		}
		if l.Time.After(s.Last) {
			s.Last = l.Time
		}
	}
	if !l.IsDecision {
		if s.events == nil {
			s.events = make(map[string]int64)
		}
		msg := truncate(l.Msg)
		if _, ok := s.events[msg]; !ok && len(s.events) >= MaxKeys {
			msg = Other
		}
		s.events[msg]++
		return
	}
	s.Decisions.add(l.Decision)
	s.rules.add(l.Rule, l.Decision)
	s.operations.add(l.Operation, l.Decision)
	s.users.add(l.User, l.Decision)
	if l.Decision == audit.Deny || l.Decision == audit.WouldDeny {
		s.commands.add(l.Method+" "+ReadableURI(l.URI), l.Decision)
	}
}

// ByRule returns the decisions by rule, most first; "" is no rule.
func (s *Summary) ByRule() []Row { return s.rules.rows(Counts.Total) }

// ByOperation returns the decisions by operation, most first.
func (s *Summary) ByOperation() []Row { return s.operations.rows(Counts.Total) }

// ByUser returns the decisions by user, most first; "" is a client that
// dockerd did not authenticate with a TLS certificate (the local socket).
func (s *Summary) ByUser() []Row { return s.users.rows(Counts.Total) }

// TopDenied returns at most n of the commands refused (deny or would-deny)
// most often, each as its method and readable URI.
func (s *Summary) TopDenied(n int) []Row {
	rows := s.commands.rows(Counts.Refused)
	return rows[:min(n, len(rows))]
}

// Events returns the events counted, by message.
func (s *Summary) Events() map[string]int64 { return s.events }

func (s *Summary) setRead(r *Reader) {
	s.Read, s.Skipped, s.TooLong, s.FirstSkipped = r.Read, r.Skipped, r.TooLong, r.FirstSkipped
}

// jsonSummary is the --json form. Keys are the recorded values, so scripts
// can match them against the log's own fields.
type jsonSummary struct {
	Since        string            `json:"since,omitempty"`
	DeniedOnly   bool              `json:"denied_only"`
	LinesRead    int64             `json:"lines_read"`
	LinesMatched int64             `json:"lines_matched"`
	NotJSON      int64             `json:"not_json"`
	TooLong      int64             `json:"too_long,omitempty"`
	FirstNotJSON int               `json:"first_not_json_line,omitempty"`
	First        string            `json:"first,omitempty"`
	Last         string            `json:"last,omitempty"`
	Decisions    Counts            `json:"decisions"`
	Events       map[string]int64  `json:"events"`
	ByRule       map[string]Counts `json:"by_rule"`
	ByOperation  map[string]Counts `json:"by_operation"`
	ByUser       map[string]Counts `json:"by_user"`
	TopDenied    []jsonCommand     `json:"top_denied"`
	// Truncated is set when a table reached MaxKeys and counted the rest
	// under "(other)".
	Truncated bool `json:"truncated,omitempty"`
}

type jsonCommand struct {
	Command   string `json:"command"`
	Deny      int64  `json:"deny"`
	WouldDeny int64  `json:"would-deny"`
}

func jsonTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.Format(time.RFC3339Nano)
}

// MarshalJSON encodes the summary as the --json output's last line holds it.
func (s *Summary) MarshalJSON() ([]byte, error) {
	j := jsonSummary{
		Since:        jsonTime(s.Filter.Since),
		DeniedOnly:   s.Filter.Denied,
		LinesRead:    s.Read,
		LinesMatched: s.Matched,
		NotJSON:      s.Skipped,
		TooLong:      s.TooLong,
		FirstNotJSON: s.FirstSkipped,
		First:        jsonTime(s.First),
		Last:         jsonTime(s.Last),
		Decisions:    s.Decisions,
		Events:       s.events,
		ByRule:       s.rules.json(),
		ByOperation:  s.operations.json(),
		ByUser:       s.users.json(),
		TopDenied:    []jsonCommand{},
		Truncated:    s.rules.full || s.operations.full || s.users.full || s.commands.full || s.events[Other] > 0,
	}
	if j.Events == nil {
		j.Events = map[string]int64{}
	}
	for _, r := range s.TopDenied(TopDenied) {
		j.TopDenied = append(j.TopDenied, jsonCommand{r.Key, r.Deny, r.WouldDeny})
	}
	return marshal(j)
}

// WriteText writes the summary as tables for people.
func (s *Summary) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "summary: %s", plural(s.Decisions.Total(), "decision", "decisions"))
	if s.Decisions.Total() > 0 {
		fmt.Fprintf(&b, " (%d allow, %d deny, %d would-deny)", s.Decisions.Allow, s.Decisions.Deny, s.Decisions.WouldDeny)
	}
	fmt.Fprintf(&b, " and %s in %d of %s", plural(s.Matched-s.Decisions.Total(), "event", "events"),
		s.Matched, plural(s.Read, "line", "lines"))
	if !s.First.IsZero() {
		fmt.Fprintf(&b, ", %s to %s", formatTime(s.First), formatTime(s.Last))
	}
	b.WriteString("\n")
	var sel []string
	if !s.Filter.Since.IsZero() {
		sel = append(sel, "since "+formatTime(s.Filter.Since))
	}
	if s.Filter.Denied {
		sel = append(sel, "deny and would-deny only")
	}
	if len(sel) > 0 {
		fmt.Fprintf(&b, "selected: %s\n", strings.Join(sel, ", "))
	}
	if note := SkippedNote(s.Skipped, s.TooLong, s.FirstSkipped); note != "" {
		b.WriteString(note + "\n")
	}

	if len(s.events) > 0 {
		b.WriteString("\nevents:\n")
		msgs := make([]string, 0, len(s.events))
		for m := range s.events {
			msgs = append(msgs, m)
		}
		slices.SortFunc(msgs, func(a, b string) int {
			return cmp.Or(cmp.Compare(s.events[b], s.events[a]), strings.Compare(a, b))
		})
		for _, m := range msgs {
			fmt.Fprintf(&b, "%8d  %s\n", s.events[m], Printable(m))
		}
	}
	if s.Decisions.Total() > 0 {
		writeTable(&b, "rule", s.ByRule(), s.rules.full, "(no rule)")
		writeTable(&b, "operation", s.ByOperation(), s.operations.full, "-")
		writeTable(&b, "user", s.ByUser(), s.users.full, "(local)")
	}
	if top := s.TopDenied(TopDenied); len(top) > 0 {
		fmt.Fprintf(&b, "\ntop denied commands:\n%8s  %10s  %s\n", "deny", "would-deny", "command")
		for _, r := range top {
			fmt.Fprintf(&b, "%8d  %10d  %s\n", r.Deny, r.WouldDeny, Printable(r.Key))
		}
		if n := len(s.commands.counts) - len(top); n > 0 {
			fmt.Fprintf(&b, "%8s  and %s\n", "", plural(int64(n), "other command", "other commands"))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func writeTable(b *strings.Builder, name string, rows []Row, full bool, empty string) {
	fmt.Fprintf(b, "\ndecisions by %s:\n%8s  %8s  %10s  %s\n", name, "allow", "deny", "would-deny", name)
	for _, r := range rows {
		fmt.Fprintf(b, "%8d  %8d  %10d  %s\n", r.Allow, r.Deny, r.WouldDeny, Printable(or(r.Key, empty)))
	}
	if full {
		fmt.Fprintf(b, "%8s  (more than %d distinct; the rest are counted as %s)\n", "", MaxKeys, Other)
	}
}
