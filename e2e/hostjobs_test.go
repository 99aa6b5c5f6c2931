package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Host-process detectors on the real host: prune-guard runs as the e2e
// harness runs it, a plain process on the host, and sees the host's
// processes. Job processes are real ones: a copy of sleep named
// Runner.Worker (its comm), and sleep with GitLab's shell-executor or
// Buildkite's bootstrap variables in its environment.
//
// These tests are not parallel: a job process on the host is seen by every
// prune-guard on it, so while one runs no other test of this package may
// (Go runs a package's sequential tests before its parallel ones).

// hostJob is a host process that a process detector recognises.
type hostJob struct {
	detector string
	comm     string   // the process's comm, and the name of the binary run
	env      []string // its environment, beyond PATH
	// system is how denials begin to name it; the process part follows.
	system string
}

var hostJobs = []hostJob{
	{detector: "github-actions-host", comm: "Runner.Worker", system: "GitHub Actions job"},
	{detector: "gitlab-shell", comm: "sleep", env: []string{"GITLAB_CI=true", "CI_JOB_ID=4711", "CI_PROJECT_ID=42"}, system: "GitLab job 4711"},
	{detector: "buildkite-agent", comm: "sleep", env: []string{"BUILDKITE_JOB_ID=0190aa11-2b3c-4d5e-8f90-123456789abc", "BUILDKITE_AGENT_NAME=host-1"},
		system: "Buildkite job 0190aa11-2b3c-4d5e-8f90-123456789abc"},
}

// startHostJob starts j's process (sleep 300, under the name j.comm) and
// returns it with a function that kills and reaps it (a zombie still shows
// in /proc). A cleanup does the same if the test has not.
func startHostJob(t *testing.T, j hostJob) (pid int, end func()) {
	t.Helper()
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatalf("no sleep binary: %v", err)
	}
	bin := sleep
	if j.comm != filepath.Base(sleep) {
		bin = filepath.Join(t.TempDir(), j.comm)
		b, err := os.ReadFile(sleep)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(bin, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(bin, "300")
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, j.env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	done := false
	end = func() {
		if done {
			return
		}
		done = true
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	t.Cleanup(end)
	return cmd.Process.Pid, end
}

// Each host-process detector, with the process exactly as its CI system
// runs it: docker rmi and the image prune are refused while the process
// runs, naming the job and the process; once it is killed, the grace holds
// image deletes and then lets them through. status says the host's
// processes are visible.
func TestHostProcessJobsHoldImageDeletesWhileTheyRunAndThroughTheGrace(t *testing.T) {
	g := startGraceGuard(t, shortGrace)
	if out := pgStatus(t, g); !strings.Contains(out, "host processes: visible") {
		t.Fatalf("status does not say the host's processes are visible:\n%s", out)
	}
	for _, j := range hostJobs {
		t.Run(j.detector, func(t *testing.T) {
			victim := buildVictim(t, g)
			dangling := g.MakeDangling(t)
			pid, end := startHostJob(t, j)
			job := j.system + ", process " + j.comm + " (pid " + strconv.Itoa(pid) + ")"

			mark := auditMark(t, g)
			g.mustDeny(t, []string{"rmi", victim}, "while a CI job is active (rule no-delete-during-run)", "active "+job)
			if runs := auditRuns(t, auditLine(t, g, mark, map[string]string{"decision": "deny", "rule": "no-delete-during-run"})); !anyContains(runs, job) {
				t.Errorf("audit runs = %q, want %q", runs, job)
			}
			g.mustDeny(t, []string{"image", "prune", "-f"}, "(rule no-prune-during-run)", "active "+job)
			out := pgStatus(t, g)
			if !strings.Contains(out, "active: "+job+" (detector "+j.detector+": ") || !strings.Contains(out, "host processes: visible") {
				t.Errorf("status does not name %q (detector %s) with the host's processes visible:\n%s", job, j.detector, out)
			}
			// A host job carries no labels: a scoped container prune passes.
			g.mustAllow(t, "container", "prune", "-f", "--filter", "label=com.gitlab.gitlab-runner.managed=true")

			end()
			g.mustDeny(t, []string{"rmi", victim}, graceDenial(job)...)
			g.mustDeny(t, []string{"image", "prune", "-f"}, pruneGraceDenial(job)...)
			waited := g.waitDeleteResumes(t, victim, job, graceBound(shortGrace))
			t.Logf("image delete refused for %v after the process was killed (grace %v)", waited.Round(100*time.Millisecond), shortGrace)
			requireGone(t, g, victim)
			g.mustAllow(t, "image", "prune", "-f")
			requireGone(t, g, dangling)
		})
	}
}

// --detector github-actions-host=off: a Runner.Worker process is no job,
// while the other process detectors stay on.
func TestHostProcessDetectorSwitchedOffIgnoresRunnerWorker(t *testing.T) {
	g := startGraceGuard(t, shortGrace, "--detector", "github-actions-host=off")
	victim := buildVictim(t, g)
	pid, end := startHostJob(t, hostJobs[0])
	defer end()
	g.mustAllow(t, "rmi", victim)
	requireGone(t, g, victim)
	if out := pgStatus(t, g); strings.Contains(out, "Runner.Worker") || !strings.Contains(out, "none active") {
		t.Errorf("status counts Runner.Worker (pid %d) with its detector off:\n%s", pid, out)
	}

	// The GitLab shell detector is still on.
	j := hostJobs[1]
	pid, endGitLab := startHostJob(t, j)
	defer endGitLab()
	g.mustDeny(t, []string{"rmi", buildVictim(t, g)}, "active "+j.system+", process sleep (pid "+strconv.Itoa(pid)+")")
}
