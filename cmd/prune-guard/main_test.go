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

// "docker builder prune" is explained both ways the CLI sends it: with
// buildx, POST /grpc (both modes) and Control/Prune inside it (proxy mode
// only), and without buildx the REST request; "docker buildx prune" only
// the first way. The PruneRequest is the one buildx sends.
func TestExplainBuilderPruneShowsBuildxGRPCAndTheRESTRequest(t *testing.T) {
	out, err := run(t, "explain", "--", "docker", "builder", "prune", "-af")
	if err != nil {
		t.Fatal(err)
	}
	blocks := strings.Split(out, "\n\n")
	want := []string{
		"With buildx",
		"request:   POST /v1.44/grpc\noperation: buildkit-stream\nrule:      (none matched)\ndecision:  allow\nseen by:   both modes",
		"request:   gRPC /moby.buildkit.v1.Control/Prune (PruneRequest 0a001001: all=true)\noperation: build-prune-all\nrule:      no-build-prune-all",
		"Without buildx",
		"request:   POST /v1.44/build/prune?all=1\noperation: build-prune-all\nrule:      no-build-prune-all",
	}
	if len(blocks) != len(want) {
		t.Fatalf("%d blocks; want %d:\n%s", len(blocks), len(want), out)
	}
	for i, w := range want {
		if !strings.HasPrefix(blocks[i], w) {
			t.Errorf("block %d:\n%s\nwant it to start with\n%s", i, blocks[i], w)
		}
	}
	if !strings.Contains(blocks[2], "decision:  deny\n") || !strings.Contains(blocks[2], "seen by:   proxy mode only; in authz mode the plugin allows the tunnel and never sees this call, which runs") {
		t.Errorf("the gRPC prune should be denied in proxy mode and said to run unseen in authz mode:\n%s", blocks[2])
	}
	if !strings.Contains(blocks[4], "decision:  deny\n") || strings.Contains(blocks[4], "seen by:") {
		t.Errorf("the REST prune should be denied, alike in both modes:\n%s", blocks[4])
	}

	// A budgeted or dangling-only prune passes with no job, and not
	// during one.
	out, err = run(t, "explain", "--", "docker", "buildx", "prune", "-f", "--keep-storage", "10GB")
	if err != nil || strings.Contains(out, "Without buildx") || strings.Contains(out, "/build/prune") ||
		!strings.Contains(out, "request:   gRPC /moby.buildkit.v1.Control/Prune (PruneRequest 0a00: all=false)\noperation: build-prune\nrule:      (none matched)\ndecision:  allow") {
		t.Errorf("docker buildx prune -f: %v\n%s", err, out)
	}
	out, err = run(t, "explain", "--run-active", "--", "docker", "buildx", "prune", "-f")
	if err != nil || !strings.Contains(out, "operation: build-prune\nrule:      no-prune-during-run") {
		t.Errorf("docker buildx prune -f during a run: %v\n%s", err, out)
	}

	// A policy that refuses the tunnel refuses it in authz mode too.
	dir := t.TempDir()
	pol := dir + "/p.yaml"
	if err := os.WriteFile(pol, []byte("rules:\n  - name: no-buildkit-stream\n    match: [buildkit-stream]\n    action: deny\n    message: no BuildKit\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = run(t, "explain", "--policy", pol, "--", "docker", "builder", "prune", "-af")
	if err != nil || !strings.Contains(out, "seen by:   proxy mode only; in authz mode the tunnel is refused, and the call never runs") {
		t.Errorf("with no-buildkit-stream: %v\n%s", err, out)
	}
}

func TestExplainGRPCMethods(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // in the output, or in the error when it begins with "error: "
	}{
		{[]string{"GRPC", "/moby.buildkit.v1.Control/Prune", "--grpc-message", "0a001001"}, "operation: build-prune-all\nrule:      no-build-prune-all"},
		{[]string{"grpc", "/moby.buildkit.v1.Control/Prune", "--grpc-message", ""}, "(PruneRequest (empty): all=false)\noperation: build-prune\nrule:      (none matched)\ndecision:  allow\nseen by:   proxy mode only"},
		{[]string{"GRPC", "/moby.buildkit.v1.Control/Prune", "--grpc-message", "1002"}, "operation: build-prune-all"},
		{[]string{"GRPC", "/moby.buildkit.v1.Control/Prune", "--grpc-message", "10"}, "rule:      fail-closed"},
		{[]string{"GRPC", "/moby.buildkit.v1.Control/Prune"}, "error: decided by its first message; give it with --grpc-message"},
		{[]string{"GRPC", "/moby.buildkit.v1.Control/Prune", "--grpc-message", "zz"}, "error: --grpc-message"},
		{[]string{"GRPC", "/moby.buildkit.v1.Control/DiskUsage"}, "operation: other\nrule:      (none matched)\ndecision:  allow"},
		{[]string{"GRPC", "/com.example.volumes.v1.Volumes/Prune"}, "rule:      no-unknown-grpc: deny grpc-unknown when always\ndecision:  deny\nmessage:   prune-guard: call to unknown gRPC method /com.example.volumes.v1.Volumes/Prune is blocked"},
		{[]string{"GRPC", "moby.buildkit.v1.Control/Prune"}, "error: a gRPC method is a path"},
		{[]string{"POST", "/v1.44/build/prune", "--grpc-message", "00"}, "error: --grpc-message is for GRPC"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			out, err := run(t, append([]string{"explain"}, tc.args...)...)
			if e, ok := strings.CutPrefix(tc.want, "error: "); ok {
				if err == nil || !strings.Contains(err.Error(), e) {
					t.Errorf("error %v; want one containing %q\n%s", err, e, out)
				}
				return
			}
			if err != nil || !strings.Contains(out, tc.want) {
				t.Errorf("%v\n%s\nwant %q", err, out, tc.want)
			}
		})
	}
}
