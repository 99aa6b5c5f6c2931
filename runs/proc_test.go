package runs

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/prune-guard/prune-guard/rules"
)

// fakeProc is a process in a fake /proc tree.
type fakeProc struct {
	pid, comm, environ, ns, exe string
	noComm                      bool // vanished between readdir and comm
}

const hostNS = "pid:[4026531836]"

// buildProc writes a /proc tree whose "self" is pid self.
func buildProc(t *testing.T, self string, procs ...fakeProc) string {
	t.Helper()
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range procs {
		dir := filepath.Join(root, p.pid)
		must(os.MkdirAll(filepath.Join(dir, "ns"), 0o755))
		ns := p.ns
		if ns == "" {
			ns = hostNS
		}
		must(os.Symlink(ns, filepath.Join(dir, "ns", "pid")))
		if !p.noComm {
			must(os.WriteFile(filepath.Join(dir, "comm"), []byte(p.comm+"\n"), 0o644))
		}
		must(os.WriteFile(filepath.Join(dir, "environ"), []byte(p.environ), 0o644))
		if p.exe != "" {
			must(os.Symlink(p.exe, filepath.Join(dir, "exe")))
		}
	}
	must(os.Symlink(self, filepath.Join(root, "self")))
	must(os.WriteFile(filepath.Join(root, "meminfo"), []byte("MemTotal: 1 kB\n"), 0o644))
	return root
}

// hostProcs is a host running one job of each process detector's kind, and
// what must not count.
var hostProcs = []fakeProc{
	{pid: "100", comm: "Runner.Worker"}, // prune-guard itself, as far as the test goes
	{pid: "200", comm: "Runner.Worker", exe: "/opt/runner/bin/Runner.Worker"},
	{pid: "201", comm: "bash", environ: "PATH=/bin\x00GITLAB_CI=true\x00CI_JOB_ID=4711\x00CI_JOB_TOKEN=secret\x00"},
	{pid: "202", comm: "bash", environ: "HOME=/root\x00BUILDKITE_JOB_ID=0190-abc\x00"},
	{pid: "203", comm: "Runner.Worker", ns: "pid:[4026532999]"}, // inside a container
	{pid: "204", noComm: true, environ: "BUILDKITE_JOB_ID=gone\x00"},
	{pid: "205", comm: "bash", environ: "GITLAB_CI=false\x00CI_JOB_ID=1\x00"},
	{pid: "206", comm: "sshd", environ: "BUILDKITE_JOB_ID=cut-short"}, // no NUL: cut by the read bound
}

func TestProcessDetectorsRecogniseHostJobs(t *testing.T) {
	root := buildProc(t, "100", hostProcs...)
	tr := newTracker(t, &fakeEngine{})
	tr.procs = viewProcs(root)
	st := tr.State(context.Background(), rules.MustDetection(rules.DefaultDetectionSettings()))
	if st.Err != nil {
		t.Fatal(st.Err)
	}
	var got []string
	for _, r := range st.Active {
		got = append(got, r.Detector+": "+r.String())
	}
	slices.Sort(got)
	want := []string{
		"buildkite-agent: Buildkite job 0190-abc, process bash (pid 202)",
		"github-actions-host: GitHub Actions job, process Runner.Worker (pid 200)",
		"gitlab-shell: GitLab job 4711, process bash (pid 201)",
	}
	if !slices.Equal(got, want) {
		t.Errorf("runs:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestProcessScanReadsOnlyTheEnvironmentDetectorsName(t *testing.T) {
	root := buildProc(t, "100", hostProcs...)
	v := viewProcs(root)
	objs, err := v.scanProcs(rules.MustDetection(rules.DefaultDetectionSettings()))
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		for k := range o.Env {
			if !slices.Contains([]string{"CI_JOB_ID", "GITLAB_CI", "BUILDKITE_JOB_ID"}, k) {
				t.Errorf("pid %s: read %s, which no detector names", o.ID, k)
			}
		}
		if o.ID == "200" && o.Exe != "/opt/runner/bin/Runner.Worker" {
			t.Errorf("pid 200: exe %q", o.Exe)
		}
	}

	// Without an environment detector, no environment is read at all.
	off := map[string]string{}
	for _, b := range rules.Builtins() {
		if b.Name != "github-actions-host" {
			off[b.Name] = "off"
		}
	}
	d, err := rules.NewDetection(rules.DetectionSettings{Switches: off})
	if err != nil {
		t.Fatal(err)
	}
	objs, err = v.scanProcs(d)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 1 || objs[0].Env != nil {
		t.Errorf("objects %+v, want pid 200 alone, without an environment", objs)
	}
}

func TestHostProcessThatEndedIsEndedWhenNoticed(t *testing.T) {
	root := buildProc(t, "100", fakeProc{pid: "200", comm: "Runner.Worker"})
	f := &fakeEngine{}
	tr := newTracker(t, f)
	tr.procs = viewProcs(root)
	d := rules.MustDetection(rules.DefaultDetectionSettings())
	if st := tr.State(context.Background(), d); len(st.Active) != 1 {
		t.Fatalf("active %v, want the Runner.Worker", st.Active)
	}
	if err := os.RemoveAll(filepath.Join(root, "200")); err != nil {
		t.Fatal(err)
	}
	f.clock.Add(grace / 2)
	st := tr.State(context.Background(), d)
	if len(st.Active) != 0 || len(st.Ended) != 1 || !st.Ended[0].Ended.Equal(f.clock.Now()) {
		t.Fatalf("active %v, ended %+v; want the Runner.Worker ended when noticed", st.Active, st.Ended)
	}
}

func TestHostProcessesAreInvisibleToPID1OfItsOwnNamespace(t *testing.T) {
	root := buildProc(t, "1", fakeProc{pid: "1", comm: "prune-guard"}, fakeProc{pid: "200", comm: "Runner.Worker"})
	tr := newTracker(t, &fakeEngine{})
	tr.procs = viewProcs(root)
	if ok, why := tr.HostVisible(); ok || !strings.Contains(why, "PID 1") {
		t.Fatalf("HostVisible = %v, %q; want invisible, saying why", ok, why)
	}
	if st := tr.State(context.Background(), rules.MustDetection(rules.DefaultDetectionSettings())); st.Err != nil || len(st.Active) != 0 {
		t.Fatalf("state = %+v, want no process runs and no error", st)
	}
}

func TestHostProcessesAreVisibleInTheHostNamespace(t *testing.T) {
	v := viewProcs(buildProc(t, "100", fakeProc{pid: "100", comm: "prune-guard"}))
	if !v.visible || v.ns != hostNS {
		t.Fatalf("view = %+v, want visible with the host's namespace", v)
	}
}

func TestUnreadableProcMakesTheStateUnknown(t *testing.T) {
	root := buildProc(t, "100", fakeProc{pid: "100", comm: "prune-guard"})
	tr := newTracker(t, &fakeEngine{})
	tr.procs = viewProcs(root)
	if err := os.RemoveAll(root); err != nil {
		t.Fatal(err)
	}
	if st := tr.State(context.Background(), rules.MustDetection(rules.DefaultDetectionSettings())); st.Err == nil {
		t.Fatal("a /proc that cannot be read must make the state unknown")
	}
}

func TestParseEnvironKeepsOnlyWantedCompleteVariables(t *testing.T) {
	tests := []struct {
		in   string
		want map[string]string
	}{
		{"A=1\x00B=2\x00", map[string]string{"A": "1"}},
		{"B=2\x00", nil},
		{"A=x=y\x00", map[string]string{"A": "x=y"}},
		{"A=\x00", map[string]string{"A": ""}},
		{"=A\x00A\x00", nil},
		{"A=cut", nil},
		{"", nil},
	}
	for _, tt := range tests {
		got := parseEnviron([]byte(tt.in), []string{"A"})
		if len(got) != len(tt.want) || (tt.want != nil && got["A"] != tt.want["A"]) {
			t.Errorf("parseEnviron(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func FuzzParseEnviron(f *testing.F) {
	for _, p := range hostProcs {
		f.Add([]byte(p.environ))
	}
	f.Add([]byte("A=\x00\x00=\x00CI_JOB_ID"))
	keys := []string{"CI_JOB_ID", "GITLAB_CI", "BUILDKITE_JOB_ID"}
	f.Fuzz(func(t *testing.T, b []byte) {
		env := parseEnviron(b, keys)
		for k, v := range env {
			if !slices.Contains(keys, k) {
				t.Errorf("unwanted key %q", k)
			}
			if strings.Contains(v, "\x00") || !strings.Contains(string(b), k+"="+v+"\x00") {
				t.Errorf("%s=%q is not a complete variable of the input", k, v)
			}
		}
	})
}
