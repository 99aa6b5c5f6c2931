package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/internal/enginetest"
)

// reclaimTimeout bounds one "prune-guard reclaim" run.
const reclaimTimeout = 2 * time.Minute

// blobSize is the payload of each image the reclaim scenario builds:
// random bytes, so that neither layer compression nor sharing changes
// what an image costs on disk.
const blobSize = 16 << 20

// randomBlob returns n random bytes as a string, for BuildImage.
func randomBlob(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// reclaimer runs "prune-guard reclaim" against one engine with one state
// file and one audit file.
type reclaimer struct {
	bin   string
	host  string
	state string
	audit string
}

// run runs reclaim with args after the engine, state and audit flags, and
// returns what it printed; err is non-nil when it exits non-zero.
func (r reclaimer) run(t testing.TB, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), reclaimTimeout)
	defer cancel()
	argv := append([]string{"reclaim", "--docker-host", r.host, "--state", r.state, "--audit-log", r.audit}, enginetest.WithoutGrace(args)...)
	cmd := exec.CommandContext(ctx, r.bin, argv...)
	cmd.Env = append(os.Environ(), "DOCKER_HOST=unix:///nonexistent") // --docker-host must win
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	began := time.Now()
	err := cmd.Run()
	t.Logf("$ prune-guard reclaim %s => %v (%v)\n%s", strings.Join(args, " "), errText(err), time.Since(began).Round(time.Millisecond), out.String())
	if ctx.Err() != nil {
		t.Fatalf("prune-guard reclaim did not finish within %v", reclaimTimeout)
	}
	return out.String(), err
}

func errText(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}

// mustRun is run for invocations that must exit 0.
func (r reclaimer) mustRun(t testing.TB, args ...string) string {
	t.Helper()
	out, err := r.run(t, args...)
	if err != nil {
		t.Fatalf("prune-guard reclaim %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// events returns reclaim's audit lines after the first mark, in order.
func (r reclaimer) events(t testing.TB, mark int) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(r.audit)
	if err != nil {
		t.Fatalf("reading reclaim's audit log: %v", err)
	}
	var lines []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("reclaim audit line is not JSON: %v\n%s", err, sc.Text())
		}
		lines = append(lines, m)
	}
	return lines[min(mark, len(lines)):]
}

func (r reclaimer) mark(t testing.TB) int {
	t.Helper()
	if _, err := os.Stat(r.audit); os.IsNotExist(err) {
		return 0
	}
	return len(r.events(t, 0))
}

// withMsg returns the lines whose msg is msg.
func withMsg(lines []map[string]any, msg string) []map[string]any {
	var out []map[string]any
	for _, l := range lines {
		if l["msg"] == msg {
			out = append(out, l)
		}
	}
	return out
}

// pct formats a threshold for --high and --low.
func pct(f float64) string { return strconv.FormatFloat(f, 'f', 2, 64) }

// The scenario on a real engine whose data root is a small
// filesystem: nothing happens below --high; above it, dangling images go
// first, then the least recently used, until usage is below --low; images
// in use, protected or young survive; a labelled run makes reclaim refuse
// and say why; deletions pass through prune-guard's policy (a denial is
// skipped and reported); --max-unused removes stale images without
// pressure.
func TestReclaimKeepsDiskBoundedWithoutPruneAll(t *testing.T) {
	t.Parallel()
	// Room for ten 16 MiB images twice over: the containerd image store
	// keeps each layer both as a content blob and as an unpacked snapshot.
	disk := enginetest.NewSmallDisk(t, 576<<20)
	dir := t.TempDir()
	// The plugin protects pg-rc-precious; reclaim is not told, so its
	// attempt shows that deletions go through the plugin's policy.
	pluginPolicy := filepath.Join(dir, "plugin-policy.yaml")
	writePolicy(t, pluginPolicy, "protect:\n  images: [\"pg-rc-precious:*\"]\n")
	e, p := enginetest.StartGuarded(t, enginetest.Options{ExtraArgs: disk.Args(), PluginArgs: []string{"--policy", pluginPolicy}})
	g := guard{Engine: e, plugin: p}
	t.Logf("data root on a %s", disk)

	build := func(tag string, labels map[string]string) string {
		return g.BuildImage(t, tag, map[string]string{"blob": randomBlob(t, blobSize)}, labels)
	}
	dangling := build("pg-rc-dangling:1", nil)
	g.BuildImage(t, "pg-rc-dangling:1", map[string]string{"small": enginetest.Nonce(t)}, nil) // moves the tag away
	precious := build("pg-rc-precious:1", nil)
	old1 := build("pg-rc-old1:1", nil)
	old2 := build("pg-rc-old2:1", nil)
	old3 := build("pg-rc-old3:1", nil)
	old4 := build("pg-rc-old4:1", nil)
	// Tagged in two repositories: the engine deletes it by ID only after
	// the extra names are gone.
	multi := build("pg-rc-multi:1", nil)
	g.mustAllow(t, "tag", "pg-rc-multi:1", "pg-rc-multi:2")
	g.mustAllow(t, "tag", "pg-rc-multi:1", "pg-rc-alias/multi:1")
	inuse := build("pg-rc-inuse:1", nil)
	kept := build("pg-rc-kept:1", map[string]string{"prune-guard.keep": "true"})
	young := build("pg-rc-young:1", nil)
	g.mustAllow(t, "run", "--name", "pg-rc-user", "pg-rc-inuse:1", "busybox", "true") // exited, still uses its image
	all := []string{dangling, precious, old1, old2, old3, old4, multi, inuse, kept, young}
	name := map[string]string{dangling: "dangling", precious: "precious", old1: "old1", old2: "old2", old3: "old3",
		old4: "old4", multi: "multi", inuse: "inuse", kept: "kept", young: "young"}

	// Seed the state as a host that has had these images for hours;
	// young has no record: reclaim sees it first, now.
	now := time.Now()
	hoursAgo := func(h float64) string {
		return now.Add(-time.Duration(h * float64(time.Hour))).UTC().Format(time.RFC3339Nano)
	}
	records := map[string]any{}
	for id, h := range map[string]float64{dangling: 2, precious: 6, old1: 5, old2: 4, old3: 3, multi: 2.5, old4: 2, inuse: 7, kept: 7} {
		records[id] = map[string]string{"first_seen": hoursAgo(h)}
	}
	seed, err := json.Marshal(map[string]any{"version": 1, "since": now.UTC().Format(time.RFC3339Nano), "images": records})
	if err != nil {
		t.Fatal(err)
	}
	r := reclaimer{bin: enginetest.BuildBinary(t), host: g.Host(), state: filepath.Join(dir, "state.json"), audit: filepath.Join(dir, "reclaim.jsonl")}
	if err := os.WriteFile(r.state, seed, 0o600); err != nil {
		t.Fatal(err)
	}

	total, _ := disk.Usage(t)
	perImage := int64(blobSize)
	if g.Identity().ContainerdStore {
		perImage *= 2 // the layer's blob and its snapshot
	}
	unit := 100 * float64(perImage) / float64(total) // one image, in percent of the disk
	requireAll := func(t *testing.T, ids ...string) {
		t.Helper()
		have := g.ImageIDs(t)
		for _, id := range ids {
			if !slices.Contains(have, id) {
				t.Errorf("image %s (%s) is gone; want it kept", name[id], id)
			}
		}
	}
	requireNone := func(t *testing.T, ids ...string) {
		t.Helper()
		have := g.ImageIDs(t)
		for _, id := range ids {
			if slices.Contains(have, id) {
				t.Errorf("image %s (%s) is still there; want it removed", name[id], id)
			}
		}
	}

	t.Run("below high nothing happens", func(t *testing.T) {
		u := disk.Percent(t)
		out := r.mustRun(t, "--high", pct(u+5), "--low", pct(u-10))
		if !strings.Contains(out, "below high, nothing to do") {
			t.Errorf("output does not say it is below high:\n%s", out)
		}
		requireAll(t, all...)
	})

	// Thresholds for the pressure cases: usage is above high, and low is
	// two and a half images' worth below it.
	u := disk.Percent(t)
	high, low := u-0.5, u-2.5*unit
	pressure := []string{"--high", pct(high), "--low", pct(low)}

	t.Run("dry run prints the plan in order and removes nothing", func(t *testing.T) {
		out := r.mustRun(t, append(slices.Clone(pressure), "--dry-run")...)
		order := []string{shortID(dangling), "pg-rc-precious:1", "pg-rc-old1:1", "pg-rc-old2:1", "pg-rc-old3:1", "pg-rc-multi:1", "pg-rc-old4:1"}
		last := -1
		for _, s := range order {
			i := strings.Index(out, s)
			if i < 0 || i < last {
				t.Errorf("plan does not list %s after the ones before it (%v):\n%s", s, order, out)
			}
			last = i
		}
		for _, want := range []string{
			"plan (dry run: nothing is removed)",
			"pg-rc-inuse:1 (" + shortID(inuse) + "): used by container pg-rc-user (exited)",
			"pg-rc-kept:1 (" + shortID(kept) + "): protected: it carries the protecting label prune-guard.keep=true",
			"pg-rc-young:1 (" + shortID(young) + "): first seen",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("plan lacks %q:\n%s", want, out)
			}
		}
		requireAll(t, all...)
	})

	t.Run("a labelled run makes it refuse and say why", func(t *testing.T) {
		run := "pg-rc-run"
		g.mustAllow(t, "create", "--label", runLabel+"=job-42", "--name", run, "pg-rc-inuse:1")
		out := r.mustRun(t, pressure...)
		if want := "refused: a CI job holds image deletes: active prune-guard run job-42, container " + run; !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
		requireAll(t, all...)
		if l := withMsg(r.events(t, 0), "reclaim refused"); len(l) != 1 || !strings.Contains(fmt.Sprint(l[0]["reason"]), "job-42") {
			t.Errorf("audit: want one 'reclaim refused' line naming the run, have %v", l)
		}
		g.mustAllow(t, "rm", run)
	})

	// A container that came and went since the last pass is known only
	// from the engine's events: old1 is now recently used.
	g.mustAllow(t, "run", "--rm", "pg-rc-old1:1", "busybox", "true")

	t.Run("above high dangling go first, then the least recently used, until below low", func(t *testing.T) {
		mark := r.mark(t)
		pluginMark := auditMark(t, g)
		before := disk.Percent(t)
		out := r.mustRun(t, pressure...)
		after := disk.Percent(t)
		if after > low {
			t.Errorf("usage after reclaim is %.2f%%, want at most --low %.2f%%", after, low)
		}
		evs := r.events(t, mark)
		var removed []string
		for _, l := range withMsg(evs, "reclaim removed image") {
			removed = append(removed, name[fmt.Sprint(l["image"])])
		}
		if want := []string{"dangling", "old2", "old3"}; !slices.Equal(removed, want) {
			t.Errorf("removed %v, in that order; want %v", removed, want)
		}
		skipped := withMsg(evs, "reclaim skipped image")
		if len(skipped) != 1 || skipped[0]["image"] != precious || skipped[0]["result"] != "denied" ||
			!strings.Contains(fmt.Sprint(skipped[0]["error"]), "(rule keep-protected)") {
			t.Errorf("skipped %v; want precious, denied by the plugin's keep-protected rule", skipped)
		}
		requireNone(t, dangling, old2, old3)
		requireAll(t, precious, old1, multi, old4, inuse, kept, young)

		passes := withMsg(evs, "reclaim pass")
		if len(passes) != 1 {
			t.Fatalf("want one 'reclaim pass' audit line, have %v", passes)
		}
		freed, _ := passes[0]["freed_bytes"].(float64)
		if freed < 3*blobSize {
			t.Errorf("freed_bytes = %v, want at least three images' worth (%d)", passes[0]["freed_bytes"], 3*blobSize)
		}
		if !strings.Contains(out, "reclaim: freed ") {
			t.Errorf("no summary line:\n%s", out)
		}
		t.Logf("FIGURE: reclaim freed %.1f MiB in %vms: %.1f%% -> %.1f%% of %d MiB (high %.1f%%, low %.1f%%)",
			freed/(1<<20), passes[0]["duration_ms"], before, after, total>>20, high, low)

		// Each deletion went through the plugin, by ID.
		for _, id := range []string{dangling, old2, old3} {
			auditLine(t, g, pluginMark, map[string]string{"decision": "allow", "operation": "image-delete", "target": id})
		}
		auditLine(t, g, pluginMark, map[string]string{"decision": "deny", "rule": "keep-protected", "target": precious})
	})

	t.Run("max-unused removes stale images without pressure", func(t *testing.T) {
		mark := r.mark(t)
		pluginMark := auditMark(t, g)
		out := r.mustRun(t, "--high", "99", "--low", "98", "--max-unused", "90m", "--min-age", "0s")
		if !strings.Contains(out, "below high; removing images unused for longer than --max-unused 1h30m0s") {
			t.Errorf("output does not say why it acts below high:\n%s", out)
		}
		evs := r.events(t, mark)
		var removed []string
		for _, l := range withMsg(evs, "reclaim removed image") {
			removed = append(removed, name[fmt.Sprint(l["image"])])
		}
		if want := []string{"multi", "old4"}; !slices.Equal(removed, want) {
			t.Errorf("removed %v; want %v (unused for 2h30m and 2h)", removed, want)
		}
		requireNone(t, multi, old4)
		requireAll(t, precious, old1, inuse, kept, young)
		// The extra names went by name, then the image by ID, each
		// through the plugin.
		for _, target := range []string{"pg-rc-multi:2", "pg-rc-alias/multi:1", multi} {
			auditLine(t, g, pluginMark, map[string]string{"decision": "allow", "operation": "image-delete", "target": target})
		}
	})

	t.Run("watch mode follows events between passes and stops on SIGTERM", func(t *testing.T) {
		mark := r.mark(t)
		cmd := exec.Command(r.bin, "reclaim", "--docker-host", r.host, "--state", r.state, "--audit-log", r.audit,
			"--watch", "300ms", "--high", "99", "--low", "98", "--run-grace", "0s")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		defer func() {
			if cmd.ProcessState == nil {
				cmd.Process.Kill()
				<-exited
			}
		}()
		// Wait for the first pass, then use an image in a container that
		// is gone before the next one: only the event stream sees it.
		waitFor(t, 20*time.Second, "the first watch pass", func() bool { return len(withMsg(r.events(t, mark), "reclaim pass")) > 0 })
		used := time.Now()
		g.mustAllow(t, "run", "--rm", "pg-rc-young:1", "busybox", "true")
		waitFor(t, 20*time.Second, "young's use in the state file", func() bool {
			lu := stateRecord(t, r.state, young).LastUsed
			return lu.After(used)
		})
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-exited:
			t.Logf("reclaim --watch output:\n%s", out.String())
			if err != nil {
				t.Errorf("reclaim --watch exited with %v after SIGTERM; want 0", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("reclaim --watch still running 30s after SIGTERM:\n%s", out.String())
		}
		evs := r.events(t, mark)
		if len(withMsg(evs, "reclaim watching")) != 1 || len(withMsg(evs, "reclaim stopped")) != 1 {
			t.Errorf("audit lacks the watching and stopped lines: %v", evs)
		}
		requireAll(t, precious, old1, inuse, kept, young)
	})

	t.Run("when nothing more may go it says why and exits non-zero", func(t *testing.T) {
		u := disk.Percent(t)
		out, err := r.run(t, "--high", pct(u-0.5), "--low", pct(u-10))
		if err == nil {
			t.Errorf("reclaim exited 0 with the disk still above --high")
		}
		for _, want := range []string{
			": still ", "at or above --high " + pct(u-0.5), "nothing more may be removed",
			"kept:", "pg-rc-inuse:1 (" + shortID(inuse) + "): used by container pg-rc-user (exited)",
			"pg-rc-old1:1 (" + shortID(old1) + "): last used",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
		requireAll(t, precious, old1, inuse, kept, young)
	})

	t.Run("given the plugin's policy file it keeps what the plugin protects", func(t *testing.T) {
		u := disk.Percent(t)
		out := r.mustRun(t, "--high", pct(u-0.5), "--low", pct(u-10), "--dry-run", "--policy", pluginPolicy)
		want := "pg-rc-precious:1 (" + shortID(precious) + "): protected: pg-rc-precious:1 matches the protected pattern pg-rc-precious:*"
		if !strings.Contains(out, want) {
			t.Errorf("plan lacks %q:\n%s", want, out)
		}
		// Naming protect.images in the file keeps its default label.
		if want := "pg-rc-kept:1 (" + shortID(kept) + "): protected: it carries the protecting label"; !strings.Contains(out, want) {
			t.Errorf("plan lacks %q:\n%s", want, out)
		}
	})

	t.Run("the state file records first sightings, not build dates", func(t *testing.T) {
		b, err := os.ReadFile(r.state)
		if err != nil {
			t.Fatal(err)
		}
		var st struct {
			Since  time.Time
			Images map[string]struct {
				FirstSeen time.Time `json:"first_seen"`
				LastUsed  time.Time `json:"last_used"`
			}
		}
		if err := json.Unmarshal(b, &st); err != nil {
			t.Fatalf("state file is not JSON: %v\n%s", err, b)
		}
		created, err := time.Parse(time.RFC3339Nano, strings.TrimSpace(g.mustAllow(t, "image", "inspect", "--format", "{{.Created}}", young)))
		if err != nil {
			t.Fatal(err)
		}
		if fs := st.Images[young].FirstSeen; !fs.After(now) || !fs.After(created) {
			t.Errorf("young first seen %v; want the first pass's time, after the seeding (%v) and its build (%v)", fs, now, created)
		}
		if lu := st.Images[old1].LastUsed; !lu.After(now) {
			t.Errorf("old1 last used %v; want the time of the --rm container, after %v", lu, now)
		}
		for _, id := range []string{dangling, old2, old3, multi, old4} {
			if _, ok := st.Images[id]; ok {
				t.Errorf("state still records removed image %s", name[id])
			}
		}
		fi, err := os.Stat(r.state)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("state file mode %v, want 0600", fi.Mode().Perm())
		}
	})
}

// waitFor polls cond until it holds, failing t after d.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v", what, d)
		}
		time.Sleep(100 * time.Millisecond) // polling files another process writes
	}
}

// stateRecord reads one image's record from reclaim's state file.
func stateRecord(t testing.TB, path, id string) struct{ FirstSeen, LastUsed time.Time } {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Images map[string]struct {
			FirstSeen time.Time `json:"first_seen"`
			LastUsed  time.Time `json:"last_used"`
		}
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("state file is not JSON: %v\n%s", err, b)
	}
	r := st.Images[id]
	return struct{ FirstSeen, LastUsed time.Time }{r.FirstSeen, r.LastUsed}
}

// shortID is an image ID as reclaim prints it: 12 hex digits.
func shortID(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	return id[:min(12, len(id))]
}
