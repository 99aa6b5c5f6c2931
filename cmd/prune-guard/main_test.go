package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

func TestDockerCommandLinesBecomeTheRequestsTheCLISends(t *testing.T) {
	tests := []struct {
		cmd  string
		want []string
	}{
		{"docker image prune -a", []string{`POST /v1.44/images/prune?filters=%7B%22dangling%22%3A%7B%22false%22%3Atrue%7D%7D`}},
		{"docker image prune -f", []string{`POST /v1.44/images/prune?filters=%7B%22dangling%22%3A%7B%22true%22%3Atrue%7D%7D`}},
		{"docker system prune -af", []string{"POST /v1.44/containers/prune", "POST /v1.44/networks/prune", "POST /v1.44/images/prune?filters=%7B%22dangling%22%3A%7B%22false%22%3Atrue%7D%7D", "POST /v1.44/build/prune?all=1"}},
		{"docker rmi alpine:3 busybox", []string{"DELETE /v1.44/images/alpine:3", "DELETE /v1.44/images/busybox"}},
		{"docker plugin disable prune-guard", []string{"POST /v1.44/plugins/prune-guard/disable"}},
		{"docker builder prune --all", []string{"POST /v1.44/build/prune?all=1"}},
	}
	for _, tt := range tests {
		t.Run(tt.cmd, func(t *testing.T) {
			reqs, err := dockerRequests(strings.Fields(tt.cmd), "1.44")
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range reqs {
				got = append(got, r.Method+" "+r.URI)
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
	if _, err := dockerRequests([]string{"docker", "run", "alpine"}, "1.44"); err == nil || !strings.Contains(err.Error(), "METHOD URI") {
		t.Errorf("an unknown command should point to METHOD URI, got %v", err)
	}
}

func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newRootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

func TestExplainNamesOperationRuleAndDecision(t *testing.T) {
	out, err := run(t, "explain", "--", "docker", "image", "prune", "-a")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"operation: image-prune-all", "rule:      no-prune-all", "decision:  deny", "message:   prune-guard: image prune --all is blocked"} {
		if !strings.Contains(out, want) {
			t.Errorf("explain output lacks %q:\n%s", want, out)
		}
	}
	out, err = run(t, "explain", "--run-active", "DELETE", "/v1.43/images/alpine")
	if err != nil || !strings.Contains(out, "rule:      no-delete-during-run") {
		t.Errorf("explain --run-active: %v\n%s", err, out)
	}
	out, err = run(t, "explain", "DELETE", "/v1.43/images/alpine")
	if err != nil || !strings.Contains(out, "decision:  allow") {
		t.Errorf("explain without a run: %v\n%s", err, out)
	}
}

func TestCheckAcceptsTheDefaultAndRejectsABadFile(t *testing.T) {
	dir := t.TempDir()
	out, err := run(t, "policy", "default")
	if err != nil {
		t.Fatal(err)
	}
	good := dir + "/good.yaml"
	bad := dir + "/bad.yaml"
	writeFile(t, good, out)
	writeFile(t, bad, "rules:\n  - name: x\n    match: [image-prune-everything]\n")
	if out, err := run(t, "check", good); err != nil || !strings.Contains(out, "ok") {
		t.Errorf("check default: %v %s", err, out)
	}
	if _, err := run(t, "check", bad); err == nil || !strings.Contains(err.Error(), "bad.yaml:3:") {
		t.Errorf("check bad: %v", err)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
