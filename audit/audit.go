// Package audit writes prune-guard's audit log: one JSON object per line for
// every decision an operator may need to review later.
//
// It must never write a credential. Everything that reaches a record passes
// through Redact first, although dockerd already strips the Authorization and
// registry-auth headers and prune-guard never records headers or bodies.
package audit

import (
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
)

// Decision values of a record.
const (
	Allowed   = "allow"
	Denied    = "deny"
	WouldDeny = "would-deny"
)

// Record is one audited decision.
type Record struct {
	Decision  string
	Rule      string
	Operation string
	Method    string
	URI       string
	Target    string
	User      string
	Runs      []string
	Reason    string
	Doubt     string
	Duration  time.Duration
	// Policy is the short hash of the policy that decided.
	Policy string
}

// Log is an audit log. It is safe for concurrent use: logrus serializes
// writers, and each record is written with a single Write call, so lines
// never interleave.
type Log struct {
	l *logrus.Logger
	c io.Closer
	w *failWriter
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
	fw := &failWriter{w: w}
	l := logrus.New()
	l.SetOutput(fw)
	l.SetFormatter(&logrus.JSONFormatter{TimestampFormat: time.RFC3339Nano})
	l.SetLevel(logrus.InfoLevel)
	return &Log{l: l, c: c, w: fw}
}

// OnError calls f (at most once a minute, with the count of failures so
// far) when a record cannot be written: a full disk or a revoked file must
// be reported loudly, but must never stop decisions.
func (lg *Log) OnError(f func(err error, failures int64)) { lg.w.setOnError(f) }

// Failures counts records that could not be written.
func (lg *Log) Failures() int64 { return lg.w.failures.Load() }

// Write appends r to the log.
func (lg *Log) Write(r Record) {
	f := logrus.Fields{
		"decision":  r.Decision,
		"rule":      r.Rule,
		"operation": r.Operation,
		"method":    r.Method,
		"uri":       Redact(r.URI),
		"user":      r.User,
		"runs":      redactAll(r.Runs),
		"reason":    Redact(r.Reason),
	}
	if r.Target != "" {
		f["target"] = Redact(r.Target)
	}
	if r.Doubt != "" {
		f["doubt"] = Redact(r.Doubt)
	}
	if r.Policy != "" {
		f["policy"] = r.Policy
	}
	if r.Duration > 0 {
		f["duration_us"] = r.Duration.Microseconds()
	}
	e := lg.l.WithFields(f)
	switch r.Decision {
	case Denied:
		e.Warn("request denied")
	case WouldDeny:
		e.Warn("request allowed, but a warn rule would deny it")
	default:
		e.Info("request allowed")
	}
}

// Event records something that is not a request decision (start, stop).
func (lg *Log) Event(msg string, fields map[string]any) {
	clean := make(logrus.Fields, len(fields))
	for k, v := range fields {
		if s, ok := v.(string); ok {
			v = Redact(s)
		}
		clean[k] = v
	}
	lg.l.WithFields(clean).Info(msg)
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
		out[i] = Redact(s)
	}
	return out
}

// failWriter counts write failures and reports them, rate-limited. When it
// writes to a regular file, a record cut short (a full disk) is truncated
// away, so the next record never glues onto half a line. logrus serializes
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
		// Tell logrus the record was written: it would otherwise print its
		// own complaint for every record, and the failure is already
		// counted and reported.
		return len(p), nil
	}
	return n, nil
}
