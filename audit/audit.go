// Package audit writes prune-guard's audit log: one JSON object per line for
// every decision an operator may need to review later.
//
// It must never write a credential. Everything that reaches a record passes
// through Redact first, although dockerd already strips the Authorization and
// registry-auth headers and prune-guard never records headers or bodies.
package audit

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prune-guard/prune-guard/redact"
	"github.com/prune-guard/prune-guard/rules"
)

// Outcome is what a decision did, as the audit log records it.
type Outcome string

// The three outcomes. Readers count nothing else as a decision.
const (
	Allow     Outcome = "allow"
	Deny      Outcome = "deny"
	WouldDeny Outcome = "would-deny"
)

// OutcomeOf is the one mapping from a policy decision to its outcome: a warn
// rule allows the request and records that it would have denied it.
func OutcomeOf(d rules.Decision) Outcome {
	switch {
	case !d.Allow:
		return Deny
	case d.Warned:
		return WouldDeny
	}
	return Allow
}

// Valid reports whether o is one of the three outcomes.
func (o Outcome) Valid() bool { return o == Allow || o == Deny || o == WouldDeny }

// Record is one audit line: the schema is defined here once, written by
// Log.Write and read back by package auditlog, so a renamed field cannot
// make the reader see empty values. Fields are declared in the order of
// their JSON keys, which is the order lines have always had.
type Record struct {
	// Decision is set on every decision line and on nothing else: a
	// pull record (Pull set) and an event have none, which is how readers
	// tell them apart.
	Decision Outcome `json:"decision,omitempty"`
	Doubt    string  `json:"doubt,omitempty"`
	// DurationUS is how long the decision took, in microseconds.
	DurationUS int64  `json:"duration_us,omitempty"`
	Level      string `json:"level"`
	Method     string `json:"method"`
	Msg        string `json:"msg"`
	Operation  string `json:"operation"`
	// Policy is the short hash of the policy that decided.
	Policy string `json:"policy,omitempty"`
	// Protected is why the request's image or plugin is protected, when
	// the decision asked and found it so (rules.Decision.Protected).
	// Lines written before it was recorded, and decisions that found
	// nothing protected, did not ask or could not tell, lack it.
	Protected string `json:"protected,omitempty"`
	// Pull makes the line a pull record: an image pull counted for cache
	// accounting, not a decision (Decision is empty).
	Pull   *Pull    `json:"pull,omitempty"`
	Reason string   `json:"reason"`
	Rule   string   `json:"rule"`
	Runs   []string `json:"runs"`
	Target string   `json:"target,omitempty"`
	// Time is when the line was written, RFC 3339 with nanoseconds; Write
	// sets it, and Level and Msg.
	Time string `json:"time"`
	URI  string `json:"uri"`
	User string `json:"user"`
}

// PullResult says whether a pulled image was local before the pull.
type PullResult string

// The results of a pull.
const (
	// PullHit: the reference was local before the pull, so only a
	// manifest check went to the registry (unless a newer image was
	// downloaded under it).
	PullHit PullResult = "hit"
	// PullMiss: the reference was not local.
	PullMiss PullResult = "miss"
	// PullUnknown: prune-guard could not tell (the engine did not answer,
	// the pull names every tag, or which image it names is in doubt).
	PullUnknown PullResult = "unknown"
)

// Pull is what a pull record carries beyond the request: where from, and
// whether the cache had it.
type Pull struct {
	// Registry is the reference's registry, normalized: docker.io for
	// Docker Hub, host[:port] (lower case) otherwise; "(unknown)" when the
	// reference is.
	Registry string     `json:"registry"`
	Result   PullResult `json:"result"`
	// Progress is what the pull's progress stream reported; only a proxy,
	// which relays the stream, records it.
	Progress *PullProgress `json:"progress,omitempty"`
	// Error is why the pull failed, as the engine said it (proxy mode),
	// or why the stream could not be followed to its end.
	Error string `json:"error,omitempty"`
}

// PullProgress counts the layers of a pull and the bytes it downloaded,
// as the engine's progress stream reported them.
type PullProgress struct {
	LayersReused     int64 `json:"layers_reused"`
	LayersDownloaded int64 `json:"layers_downloaded"`
	BytesDownloaded  int64 `json:"bytes_downloaded"`
}

// Log is an audit log. It is safe for concurrent use: writes are
// serialized, and each record is written with a single Write call, so lines
// never interleave.
type Log struct {
	mu sync.Mutex // serializes writes, so failWriter can find a record's offset
	c  io.Closer
	w  *failWriter
}

// Open opens the audit log at path for appending; "-" means standard
// output. The file is created owner-only (0600), or 0640 with group gid
// when gid >= 0; an existing file that others can read is narrowed to that.
func Open(path string, gid int) (*Log, error) {
	if path == "-" || path == "" {
		return New(os.Stdout, nil), nil
	}
	mode := os.FileMode(0o600)
	if gid >= 0 {
		mode = 0o640
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, mode)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("audit log %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		// A device or pipe (/dev/null, /dev/stdout under a supervisor) is
		// the operator's choice of sink: its mode is not ours to change,
		// and it cannot be truncated after a short write.
		return New(f, f), nil
	}
	if err := secure(f, fi, mode, gid); err != nil {
		f.Close()
		return nil, fmt.Errorf("audit log %s: %w", path, err)
	}
	lg := New(f, f)
	lg.w.file = f
	return lg, nil
}

// secure gives an audit file its mode and group, whatever umask or an
// earlier run left: the log names users and images, so it is never
// world-readable.
func secure(f *os.File, fi os.FileInfo, mode os.FileMode, gid int) error {
	if gid >= 0 {
		if err := f.Chown(-1, gid); err != nil {
			return fmt.Errorf("set group: %w", err)
		}
	}
	if fi.Mode().Perm() != mode {
		if err := f.Chmod(mode); err != nil {
			return fmt.Errorf("set mode %o: %w", mode, err)
		}
	}
	return nil
}

// New writes records to w and closes c (if any) on Close.
func New(w io.Writer, c io.Closer) *Log {
	return &Log{c: c, w: &failWriter{w: w}}
}

// OnError calls f (at most once a minute, with the count of failures so
// far) when a record cannot be written: a full disk or a revoked file must
// be reported loudly, but must never stop decisions.
func (lg *Log) OnError(f func(err error, failures int64)) { lg.w.setOnError(f) }

// Failures counts records that could not be written.
func (lg *Log) Failures() int64 { return lg.w.failures.Load() }

// Write appends r to the log, redacted, with its time, level and message.
func (lg *Log) Write(r Record) {
	r.URI, r.Reason, r.Target, r.Doubt = redact.String(r.URI), redact.String(r.Reason), redact.String(r.Target), redact.String(r.Doubt)
	r.Protected = redact.String(r.Protected)
	r.Runs = redactAll(r.Runs)
	r.Time = time.Now().Format(time.RFC3339Nano)
	switch {
	case r.Pull != nil:
		p := *r.Pull
		p.Error = redact.String(p.Error)
		r.Pull, r.Decision = &p, ""
		r.Level, r.Msg = "info", "image pull"
	case r.Decision == Deny:
		r.Level, r.Msg = "warning", "request denied"
	case r.Decision == WouldDeny:
		r.Level, r.Msg = "warning", "request allowed, but a warn rule would deny it"
	default:
		r.Level, r.Msg = "info", "request allowed"
	}
	lg.writeJSON(r)
}

// Event records something that is not a request decision (start, stop).
// It carries no decision field, which is how readers tell it apart.
func (lg *Log) Event(msg string, fields map[string]any) {
	line := make(map[string]any, len(fields)+3)
	for k, v := range fields {
		if s, ok := v.(string); ok {
			v = redact.String(s)
		}
		line[k] = v
	}
	line["level"], line["msg"], line["time"] = "info", msg, time.Now().Format(time.RFC3339Nano)
	lg.writeJSON(line)
}

// writeJSON writes v as one line with a single Write call, so concurrent
// lines never interleave.
func (lg *Log) writeJSON(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		// Every value written here marshals; a failure is a bug, and is
		// counted and reported like a failed write rather than lost.
		lg.w.fail(fmt.Errorf("encode audit record: %w", err))
		return
	}
	lg.mu.Lock()
	defer lg.mu.Unlock()
	_, _ = lg.w.Write(append(b, '\n'))
}

// Close closes the underlying file, if the log owns one.
func (lg *Log) Close() error {
	if lg.c == nil {
		return nil
	}
	return lg.c.Close()
}

func redactAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = redact.String(s)
	}
	return out
}

// failWriter counts write failures and reports them, rate-limited. When it
// writes to a regular file, a record cut short (a full disk) is truncated
// away, so the next record never glues onto half a line. Log serializes
// calls to Write, so the size read before a write is the record's offset.
type failWriter struct {
	w        io.Writer
	file     *os.File // set for regular files
	failures atomic.Int64

	mu       sync.Mutex
	onError  func(error, int64)
	reported time.Time
}

func (fw *failWriter) setOnError(f func(error, int64)) {
	fw.mu.Lock()
	fw.onError = f
	fw.mu.Unlock()
}

func (fw *failWriter) Write(p []byte) (int, error) {
	var start int64 = -1
	if fw.file != nil {
		if fi, err := fw.file.Stat(); err == nil {
			start = fi.Size()
		}
	}
	n, err := fw.w.Write(p)
	if err == nil && n < len(p) {
		err = io.ErrShortWrite
	}
	if err != nil {
		if n > 0 && start >= 0 {
			if terr := fw.file.Truncate(start); terr != nil {
				err = fmt.Errorf("%w; and removing the partial record failed: %v", err, terr)
			}
		}
		fw.fail(err)
		// The failure is counted and reported; the caller has nothing
		// more to do about it.
		return len(p), nil
	}
	return n, nil
}

// fail counts a record that could not be written and reports it, at most
// once a minute.
func (fw *failWriter) fail(err error) {
	failures := fw.failures.Add(1)
	fw.mu.Lock()
	f := fw.onError
	report := f != nil && time.Since(fw.reported) >= time.Minute
	if report {
		fw.reported = time.Now()
	}
	fw.mu.Unlock()
	if report {
		f(err, failures)
	}
}
