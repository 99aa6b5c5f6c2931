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
}

// Log is an audit log. It is safe for concurrent use: logrus serializes
// writers, and each record is written with a single Write call, so lines
// never interleave.
type Log struct {
	l *logrus.Logger
	c io.Closer
}

// Open opens the audit log at path for appending, creating it owner-only
// (0600); "-" means standard output.
func Open(path string) (*Log, error) {
	if path == "-" || path == "" {
		return New(os.Stdout, nil), nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	return New(f, f), nil
}

// New writes records to w and closes c (if any) on Close.
func New(w io.Writer, c io.Closer) *Log {
	l := logrus.New()
	l.SetOutput(w)
	l.SetFormatter(&logrus.JSONFormatter{TimestampFormat: time.RFC3339Nano})
	l.SetLevel(logrus.InfoLevel)
	return &Log{l: l, c: c}
}

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
