package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"github.com/sirupsen/logrus"

	"github.com/prune-guard/prune-guard/audit"
	"github.com/prune-guard/prune-guard/engine"
	"github.com/prune-guard/prune-guard/guard"
	"github.com/prune-guard/prune-guard/policy"
	"github.com/prune-guard/prune-guard/reclaim"
	"github.com/prune-guard/prune-guard/rules"
)

// The policy file's reclaim section sets reclaim's settings; a flag (or its
// variable) replaces one setting alone.
func TestReclaimSettingsComeFromThePolicyAndFlagsReplaceThemOneByOne(t *testing.T) {
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(pol, []byte("reclaim:\n  high: 70\n  low: 60\n  critical: 90\n  min-free: 20GB\n  keep-per-repo: 3\n  build-cache-max: 10GiB\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	clearEnv(t, map[string]string{"PRUNE_GUARD_RECLAIM_KEEP_PER_REPO": "5"})
	cmd, o := reclaimCommand()
	if err := cmd.ParseFlags([]string{"--policy", pol, "--low", "65", "--target-free", "25GiB"}); err != nil {
		t.Fatal(err)
	}
	if err := cmd.PreRunE(cmd, nil); err != nil {
		t.Fatal(err)
	}
	cfg, err := o.config(cmd)
	if err != nil {
		t.Fatal(err)
	}
	want := reclaim.Options{High: 70, Low: 65, Critical: 90, MinAge: time.Hour, MinFree: 20_000_000_000, TargetFree: 25 << 30, KeepPerRepo: 5}
	got := cfg.Options
	got.Protect = rules.Protection{}
	if !reflect.DeepEqual(got, want) || cfg.BuildCacheMax != 10<<30 {
		t.Errorf("options %+v, build cache %d; want %+v and 10GiB", got, cfg.BuildCacheMax, want)
	}
	if _, err := reclaim.New(cfg, nil, audit.New(io.Discard, nil)); err != nil {
		t.Errorf("the merged settings do not validate: %v", err)
	}
}

// The control socket's client gets a grant the guard honours: its token
// travels only on the deletes sent with the context it returns, and the
// guard lets exactly those through during a job.
func TestControlGranterGetsAGrantTheGuardHonours(t *testing.T) {
	dir := socketDir(t, "pggrant")
	log := logrus.New()
	log.SetOutput(io.Discard)
	job := []rules.Run{{Detector: "gitlab", System: "GitLab job", Job: "4711", Kind: rules.Container, Name: "build"}}
	g := guard.New(policy.Default(), fixedRuns{active: job}, noNames{}, audit.New(io.Discard, nil), log)
	ctl, err := openControl(filepath.Join(dir, "c.sock"), true, logrus.New())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ctl.serve(ctx, &decider{g: g, log: log})

	// The engine: records each delete's grant header.
	sock := filepath.Join(dir, "d.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan string, 2)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodDelete {
			seen <- r.Header.Get(guard.GrantHeader)
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte("[]"))
	})}
	go srv.Serve(l)
	defer srv.Close()
	ec, err := engine.Open("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ec.Close()

	id := "sha256:" + strings.Repeat("f", 64)
	gctx, err := newControlGranter(filepath.Join(dir, "c.sock")).Grant(ctx, reclaim.Grant{
		Images: []string{id}, Critical: 95, StartedPercent: 96.2, Runs: []string{"GitLab job 4711, container build"},
		Usage: reclaim.Usage{Path: "/var/lib/docker", Total: 100 << 30, Avail: 4 << 30}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ec.ImageRemove(gctx, id, client.ImageRemoveOptions{}); err != nil {
		t.Fatal(err)
	}
	token := <-seen
	if !strings.HasPrefix(token, "pgg_") {
		t.Fatalf("the delete carried %q; want the grant", token)
	}
	decide := func(target string) guard.Verdict {
		return g.Decide(ctx, guard.Request{Method: "DELETE", URI: "/v1.41/images/" + target, Headers: map[string]string{guard.GrantHeader: token}})
	}
	if v := decide("sha256:" + strings.Repeat("e", 64)); v.Allow {
		t.Errorf("the grant let another image through")
	}
	if v := decide(id); !v.Allow {
		t.Errorf("the granted delete was refused: %s", v.Message)
	}
	if v := decide(id); v.Allow {
		t.Errorf("the grant was used twice")
	}
	// A control socket that is not there is an error naming it.
	if _, err := newControlGranter(filepath.Join(dir, "none.sock")).Grant(ctx, reclaim.Grant{}); err == nil || !strings.Contains(err.Error(), "none.sock") {
		t.Errorf("missing socket: %v", err)
	}
}
