package redact

import (
	"strings"
	"testing"
)

func TestStringRemovesCredentials(t *testing.T) {
	tests := []struct {
		name, in, secret string
	}{
		{"password query parameter", "/v1.41/auth?username=bob&password=hunter2", "hunter2"},
		{"encoded parameter name", "/x?pass%77ord=hunter2", "hunter2"},
		{"registry auth in query", "/v1.41/images/create?X-Registry-Auth=eyJ1c2VybmFtZSI6ImJvYiJ9", "eyJ1c2VybmFtZSI6ImJvYiJ9"},
		{"token parameter", "/plugins/pull?remote=x&access_token=abc123def", "abc123def"},
		{"userinfo in absolute-form target", "http://bob:hunter2@docker/v1.41/images/prune", "hunter2"},
		{"JWT anywhere", "DELETE /images/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0"},
		{"GitHub token", "/images/ghp_0123456789abcdefghijABCDEFGHIJ", "ghp_0123456789abcdefghijABCDEFGHIJ"},
		{"AWS key", "key AKIAABCDEFGHIJKLMNOP in a message", "AKIAABCDEFGHIJKLMNOP"},
		{"bearer header text", "Authorization: Bearer abc.def.ghi-123", "abc.def.ghi-123"},
		{"reclaim grant token", "X-Prune-Guard-Grant: pgg_0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdef"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := String(tt.in)
			if strings.Contains(got, tt.secret) {
				t.Errorf("String(%q) = %q still holds the secret", tt.in, got)
			}
		})
	}
}

func TestStringKeepsOrdinaryRequestsReadable(t *testing.T) {
	for _, s := range []string{
		"/v1.41/images/prune?filters=%7B%22dangling%22%3A%7B%22false%22%3Atrue%7D%7D",
		"/v1.41/images/registry.example:5000/base/node@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
		"prune-guard.run=build-42 (container web-1)",
	} {
		if got := String(s); got != s {
			t.Errorf("String(%q) = %q, want it unchanged", s, got)
		}
	}
}

func FuzzString(f *testing.F) {
	f.Add("/auth?password=x")
	f.Add("http://u:p@h/x?token=y&a=b")
	f.Fuzz(func(t *testing.T, s string) {
		once := String(s)
		if twice := String(once); twice != once {
			t.Fatalf("Redact is not idempotent: %q -> %q -> %q", s, once, twice)
		}
	})
}
