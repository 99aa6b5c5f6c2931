package auditlog

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Printable returns s with every rune a terminal could act on escaped:
// control characters (ESC starts a terminal escape sequence), format
// characters such as bidirectional overrides, and invalid UTF-8. The log's
// strings come from clients, and its JSON escaping is undone by decoding.
func Printable(s string) string {
	clean := true
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r < utf8.RuneSelf && !unicode.IsPrint(r):
			fmt.Fprintf(&b, `\x%02x`, r)
		case !unicode.IsPrint(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
		i += size
	}
	return b.String()
}

// ReadableURI returns a recorded URI for people: the path as dockerd
// received it (an encoded path is how a request would try to slip past a
// guard, so it stays visible) and the query decoded, so that prune filters
// read as JSON. A query that does not decode is shown raw.
func ReadableURI(uri string) string {
	path, query, ok := strings.Cut(uri, "?")
	if !ok {
		return path
	}
	if q, err := url.QueryUnescape(query); err == nil {
		query = q
	}
	return path + "?" + query
}

// formatTime shows a time to the second in UTC, so that the lines of hosts
// or runs with different zones line up and sort as text.
func formatTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// or returns s, or alt when s is empty.
func or(s, alt string) string {
	if s == "" {
		return alt
	}
	return s
}

// writeLine writes l as one readable line:
//
//	TIME  DECISION  RULE  OPERATION  METHOD URI  [runs: …]  [user: …]
//	TIME  pull      RESULT  REGISTRY  REFERENCE  [layers: …]  [error: …]  [user: …]
//	TIME  event     MSG  [KEY=VALUE …]
func writeLine(w io.Writer, l *Line) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%-20s ", formatTime(l.Time))
	if l.Pull != nil && !l.IsDecision {
		writePull(&b, l)
	} else if !l.IsDecision {
		fmt.Fprintf(&b, "%-10s %s", "event", Printable(or(l.Msg, "(no msg)")))
		writeEventFields(&b, l.Raw)
	} else {
		fmt.Fprintf(&b, "%-10s %-20s %-16s %s %s", l.Decision, Printable(or(l.Rule, "-")),
			Printable(or(l.Operation, "-")), Printable(or(l.Method, "-")), Printable(or(ReadableURI(l.URI), "-")))
		if len(l.Runs) > 0 {
			fmt.Fprintf(&b, "  runs: %s", Printable(strings.Join(l.Runs, ", ")))
		}
		if l.User != "" {
			fmt.Fprintf(&b, "  user: %s", Printable(l.User))
		}
	}
	b.WriteByte('\n')
	_, err := io.WriteString(w, b.String())
	return err
}

// writePull writes a pull record's fields after its time.
func writePull(b *strings.Builder, l *Line) {
	p := l.Pull
	fmt.Fprintf(b, "%-10s %-20s %-16s %s", "pull", Printable(or(string(p.Result), "-")), Printable(or(p.Registry, "-")),
		Printable(or(l.Target, "(unknown reference)")))
	if pr := p.Progress; pr != nil {
		fmt.Fprintf(b, "  layers: %d reused, %d downloaded (%s)", pr.LayersReused, pr.LayersDownloaded, bytesText(pr.BytesDownloaded))
	}
	if p.Error != "" {
		fmt.Fprintf(b, "  error: %s", Printable(p.Error))
	}
	if l.User != "" {
		fmt.Fprintf(b, "  user: %s", Printable(l.User))
	}
}

// writeEventFields appends an event's fields other than time, level and msg
// as key=value, sorted by key. Events are few and each kind carries its own
// fields (serve's policy events, reclaim's passes), so they are shown
// whole rather than through a fixed list.
func writeEventFields(b *strings.Builder, raw []byte) {
	var fields map[string]json.RawMessage
	if json.Unmarshal(raw, &fields) != nil {
		return
	}
	sep := "  "
	for _, k := range slices.Sorted(maps.Keys(fields)) {
		switch k {
		case "time", "level", "msg":
			continue
		}
		v := string(fields[k])
		var s string
		if json.Unmarshal(fields[k], &s) == nil {
			if k == "policy" {
				s = shortHash(s)
			}
			v = Printable(s)
			if s == "" || strings.ContainsAny(s, " \t\"=") || v != s {
				v = strconv.Quote(s)
			}
		}
		fmt.Fprintf(b, "%s%s=%s", sep, Printable(k), v)
		sep = " "
	}
}

// shortHash cuts a policy hash to the 12 digits decision lines record
// (policy.Config.ShortHash); events record the whole hash.
func shortHash(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

// plural returns "1 line was" or "3 lines were" style phrases.
func plural(n int64, one, many string) string {
	if n == 1 {
		return fmt.Sprintf("1 %s", one)
	}
	return fmt.Sprintf("%d %s", n, many)
}

// SkippedNote says how many lines were skipped and where the first was,
// or returns "" when none were.
func SkippedNote(skipped, tooLong int64, first int) string {
	if skipped == 0 {
		return ""
	}
	note := plural(skipped, "line was not a JSON audit record", "lines were not JSON audit records")
	if tooLong > 0 {
		note += fmt.Sprintf(", %d of them longer than %d MiB", tooLong, MaxLineBytes>>20)
	}
	return fmt.Sprintf("%s (skipped; the first is line %d)", note, first)
}
