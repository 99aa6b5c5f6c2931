// Package auditlog reads prune-guard's audit log back: it streams the
// JSON-lines file, filters it, summarizes the decisions, and replays recorded
// requests against another policy.
//
// Audit logs grow without bound and an operator reads them on the host that
// wrote them, so everything here streams: one line is held at a time, and
// the summaries keep only counters, bounded in their number of keys. A line
// that is not a JSON audit record is counted and skipped, never fatal: a
// truncated last line (a crash mid-write) or a stray line must not hide the
// rest of the log.
//
// The log records what dockerd sent, so every string in it may come from an
// untrusted client. The text forms escape control characters and other
// non-printable runes, so reading the log cannot drive the reader's terminal.
//
// The package does no file I/O of its own: callers pass readers and writers.
package auditlog
