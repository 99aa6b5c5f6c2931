package rules

import (
	"errors"
	"strings"
	"testing"
)

func TestImageProtection(t *testing.T) {
	p := Protection{
		Images: []string{"docker.io/library/*", "registry.example/base/*:*"},
		Labels: []string{"prune-guard.keep=true", "org.example.pinned"},
	}
	tests := []struct {
		name   string
		refs   []string
		labels map[string]string
		want   bool
	}{
		{"familiar official image matches its normalized pattern", []string{"alpine:3.19"}, nil, true},
		{"name-only request target means :latest", []string{"busybox"}, nil, true},
		{"digest reference of an official image", []string{"alpine@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}, nil, true},
		{"private registry base image with tag", []string{"registry.example/base/node:20"}, nil, true},
		{"private registry image outside base", []string{"registry.example/app/web:1"}, nil, false},
		{"user image on Docker Hub is not library", []string{"someone/tool:1"}, nil, false},
		{"protecting label with value", []string{"registry.example/app:1"}, map[string]string{"prune-guard.keep": "true"}, true},
		{"protecting label with another value", []string{"registry.example/app:1"}, map[string]string{"prune-guard.keep": "false"}, false},
		{"key-only label protects any value", []string{"registry.example/app:1"}, map[string]string{"org.example.pinned": ""}, true},
		{"an image with no references and no labels", nil, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, why := p.Image(tt.refs, tt.labels)
			if got != tt.want {
				t.Errorf("Image(%v, %v) = %v (%s), want %v", tt.refs, tt.labels, got, why, tt.want)
			}
			if got && why == "" {
				t.Error("a protected image must say why")
			}
		})
	}
}

func TestPluginProtection(t *testing.T) {
	p := Protection{Plugins: []string{"prune-guard"}}
	for name, want := range map[string]bool{
		"prune-guard":             true,
		"prune-guard:latest":      true,
		"prune-guard:v2":          false,
		"vieux/sshfs:latest":      false,
		"example.com/prune-guard": false,
	} {
		if got, _ := p.Plugin(name); got != want {
			t.Errorf("Plugin(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestProtectionValidateRejectsBadPatterns(t *testing.T) {
	for _, p := range []Protection{
		{Images: []string{"registry.example/[base"}},
		{Images: []string{" "}},
		{Labels: []string{"=true"}},
		{Plugins: []string{"[x"}},
	} {
		if err := p.Validate(); err == nil {
			t.Errorf("Validate(%+v) accepted a bad entry", p)
		}
	}
}

func TestDefaultPolicyProtectsImagesAndItself(t *testing.T) {
	protectedImage := FactsFuncs{ImageFunc: func(string) Check { return Check{Yes: true, Why: "alpine:3 matches docker.io/library/*"} }}
	d := Evaluate(Classification{Op: OpImageDelete, Target: "alpine:3"}, Default(), protectedImage)
	if d.Allow || d.Rule != "keep-protected" || !strings.Contains(d.Message, "matches docker.io/library/*") {
		t.Errorf("protected image delete: %+v", d)
	}
	self := FactsFuncs{PluginFunc: func(n string) Check { return Check{Yes: n == "prune-guard", Why: "plugin prune-guard is protected"} }}
	if d := Evaluate(Classification{Op: OpPluginChange, Target: "prune-guard"}, Default(), self); d.Allow || d.Rule != "protect-self" {
		t.Errorf("disable of prune-guard: %+v", d)
	}
	if d := Evaluate(Classification{Op: OpPluginChange, Target: "other"}, Default(), self); !d.Allow {
		t.Errorf("disable of another plugin: %+v", d)
	}
	unknown := FactsFuncs{ImageFunc: func(string) Check { return Check{Err: errors.New("engine down")} }}
	if d := Evaluate(Classification{Op: OpImageDelete, Target: "x"}, Default(), unknown); d.Allow || !strings.Contains(d.Message, "cannot tell whether it is protected") {
		t.Errorf("unknown protection must deny: %+v", d)
	}
}

func TestWarnModeLetsDeniesThroughAsWouldDeny(t *testing.T) {
	p := Default()
	p.Mode = WarnOnly
	d := Evaluate(Classification{Op: OpImagePruneAll}, p, FactsFuncs{})
	if !d.Allow || !d.Warned || d.Rule != "no-prune-all" || d.Message == "" {
		t.Errorf("warn mode: %+v", d)
	}
	if d := Evaluate(Classification{Op: OpUnknown, Doubt: "x"}, p, FactsFuncs{}); d.Allow {
		t.Errorf("warn mode must not open fail-closed: %+v", d)
	}
}
