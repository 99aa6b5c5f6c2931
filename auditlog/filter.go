package auditlog

import (
	"fmt"
	"strings"
	"time"

	"github.com/prune-guard/prune-guard/audit"
)

// Filter selects the lines a report shows and counts.
type Filter struct {
	// Since drops lines recorded before it; the zero time keeps all. When
	// it is set, a line without a readable time is dropped too: it cannot
	// be shown to be recent.
	Since time.Time
	// Denied keeps only the decisions a rule refused or would have
	// refused: deny and would-deny. Events are dropped.
	Denied bool
}

// Match reports whether f keeps l.
func (f Filter) Match(l *Line) bool {
	if !f.Since.IsZero() && (l.Time.IsZero() || l.Time.Before(f.Since)) {
		return false
	}
	if f.Denied && !(l.IsDecision && (l.Decision == audit.Deny || l.Decision == audit.WouldDeny)) {
		return false
	}
	return true
}

// ParseSince reads a "since" bound: a Go duration counted back from now
// ("24h", "90m"), or an RFC 3339 time ("2026-11-26T09:00:00Z"). The empty
// string means no bound and returns the zero time.
func ParseSince(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("%q: a duration counts back from now and cannot be negative", s)
		}
		return now.Add(-d), nil
	}
	// time.RFC3339 also accepts fractional seconds, as the log writes them.
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	hint := ""
	if strings.HasSuffix(s, "d") {
		hint = " (Go durations have no days: 7 days is 168h)"
	}
	return time.Time{}, fmt.Errorf("%q: want a duration such as 24h or 90m, or an RFC 3339 time such as 2026-11-26T09:00:00Z%s", s, hint)
}
