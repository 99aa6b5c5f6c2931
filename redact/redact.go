// Package redact removes credentials from text before it is logged or
// audited: values of secret-named query parameters, userinfo in URLs, and
// anything shaped like a well-known token.
//
// It is a leaf: it imports nothing of prune-guard's, so that every package
// that writes text somewhere (the engine client's errors, the audit log, the
// operational log) can use it without depending on the others. It must never
// keep a secret it found, and never panic on input.
package redact

import (
	"net/url"
	"regexp"
	"strings"
)

// redacted replaces every secret String finds.
const redacted = "[REDACTED]"

// secretKeys are query parameter names whose values are credentials. Matching
// is by substring on the lower-cased, decoded name.
var secretKeys = []string{"password", "passwd", "secret", "token", "auth", "credential", "apikey", "api_key", "access_key", "private_key"}

// tokenPattern finds strings shaped like well-known credentials anywhere:
// JWTs (registry identity tokens), GitHub, GitLab, Slack and AWS keys,
// prune-guard's own reclaim grant tokens (pgg_ and 32 hex digits), and
// basic-auth userinfo in absolute URLs.
var tokenPattern = regexp.MustCompile(`eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}(\.[A-Za-z0-9_-]*)?` +
	`|pgg_[0-9a-fA-F]{16,}` +
	`|gh[pousr]_[A-Za-z0-9]{20,}` +
	`|github_pat_[A-Za-z0-9_]{20,}` +
	`|glpat-[A-Za-z0-9_-]{20,}` +
	`|xox[abposr]-[A-Za-z0-9-]{10,}` +
	`|A[KS]IA[A-Z0-9]{16}` +
	`|(?i:bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}`)

// userinfoPattern finds user:password@ in an absolute-form request target.
var userinfoPattern = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.-]*://)[^/@?#\s]*@`)

// String removes credentials from s: values of secret-named query parameters,
// userinfo, and anything shaped like a known token.
func String(s string) string {
	if s == "" {
		return s
	}
	s = userinfoPattern.ReplaceAllString(s, "${1}"+redacted+"@")
	if i := strings.IndexByte(s, '?'); i >= 0 {
		s = s[:i+1] + redactQuery(s[i+1:])
	}
	return tokenPattern.ReplaceAllString(s, redacted)
}

// redactQuery blanks the values of secret-named parameters, keeping the
// query's order and encoding otherwise untouched so the audit line still
// shows what the client sent. Pairs are split on '&' and also on ';' (a
// separator for daemons built with Go before 1.17) and '#' (a fragment the
// server keeps in the raw URI), so no reading of the query leaks a value.
func redactQuery(q string) string {
	var b strings.Builder
	for {
		i := strings.IndexAny(q, "&;#")
		pair := q
		if i >= 0 {
			pair = q[:i]
		}
		b.WriteString(redactPair(pair))
		if i < 0 {
			return b.String()
		}
		b.WriteByte(q[i])
		q = q[i+1:]
	}
}

func redactPair(p string) string {
	k, _, hasValue := strings.Cut(p, "=")
	if !hasValue {
		return p
	}
	name, err := url.QueryUnescape(k)
	if err != nil {
		name = k
	}
	name = strings.ToLower(name)
	for _, sk := range secretKeys {
		if strings.Contains(name, sk) {
			return k + "=" + redacted
		}
	}
	return p
}
