package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDaemonJSONEditsKeepEverythingElse(t *testing.T) {
	for _, tc := range []struct {
		name, in, action, want, err string
	}{
		{"authz on a missing file", "", "authz", "{\n  \"authorization-plugins\": [\n    \"prune-guard\"\n  ]\n}\n", ""},
		{"authz keeps other plugins and keys in order", `{"b":1,"authorization-plugins":["x"],"a":12345678901234567890}`, "authz",
			"{\n  \"b\": 1,\n  \"authorization-plugins\": [\n    \"x\",\n    \"prune-guard\"\n  ],\n  \"a\": 12345678901234567890\n}\n", ""},
		{"authz twice adds once", "{\n  \"authorization-plugins\": [\n    \"prune-guard\"\n  ]\n}\n", "authz", "{\n  \"authorization-plugins\": [\n    \"prune-guard\"\n  ]\n}\n", ""},
		{"proxy replaces hosts and group, drops the plugin", `{"hosts":["fd://"],"group":"docker","authorization-plugins":["prune-guard"],"debug":true}`, "proxy",
			"{\n  \"hosts\": [\n    \"unix:///run/docker/engine.sock\"\n  ],\n  \"group\": \"root\",\n  \"debug\": true\n}\n", ""},
		{"proxy keeps another plugin", `{"authorization-plugins":["other","prune-guard"]}`, "proxy",
			"{\n  \"authorization-plugins\": [\n    \"other\"\n  ],\n  \"hosts\": [\n    \"unix:///run/docker/engine.sock\"\n  ],\n  \"group\": \"root\"\n}\n", ""},
		{"authz refuses a proxy-mode file", `{"hosts":["unix:///run/docker/engine.sock"]}`, "authz", "", "set up for proxy mode"},
		{"a key twice", `{"a":1,"a":2}`, "proxy", "", `"a" is set twice`},
		{"not an object", `[]`, "proxy", "", "not a JSON object"},
		{"text after it", `{} {}`, "proxy", "", "text after"},
		{"hosts not a list", `{"hosts":"fd://"}`, "proxy", "", "not a list of strings"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "daemon.json")
			if tc.in != "" {
				if err := os.WriteFile(p, []byte(tc.in), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			err := run(p, tc.action)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v; want one containing %q", err, tc.err)
				}
				if b, _ := os.ReadFile(p); string(b) != tc.in {
					t.Errorf("the file changed on an error: %s", b)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tc.want {
				t.Errorf("got\n%s\nwant\n%s", b, tc.want)
			}
		})
	}
}
