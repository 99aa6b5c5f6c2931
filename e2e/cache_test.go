package e2e

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/internal/enginetest"
)

// The cache proof, on Debian's docker-registry at 127.0.0.1: a CI run is
// deployed (pull, containers labelled as a run, a named volume, a
// network), a "docker system prune -af" attempted mid-run changes nothing,
// the run is torn down (containers, volume and network removed), and the
// redeploy downloads no blob at all: the images stayed. Then a new image is
// pushed under the same tag, and the next deploy pulls it: the cache never
// masks a changed image.
func TestWarmCacheSurvivesTeardownAndNeverMasksAChangedImage(t *testing.T) {
	t.Parallel()
	reg := enginetest.StartRegistry(t)
	// The builder stands for the pipeline that publishes images; the CI
	// host is a separate, guarded engine that starts with an empty cache.
	builder := enginetest.Start(t, enginetest.Options{})
	g := startGuard(t)

	app := reg.Addr + "/pg/app:1"
	sidecar := reg.Addr + "/pg/sidecar:1"
	publish := func(ref string, size int) string {
		builder.BuildImage(t, ref, map[string]string{"payload": randomBlob(t, size)}, nil)
		builder.MustDocker(t, "push", ref)
		return strings.TrimSpace(builder.MustDocker(t, "image", "inspect", "--format", "{{index .RepoDigests 0}}", ref))
	}
	appDigest := publish(app, 32<<20)
	publish(sidecar, 4<<20)

	pull := func(t *testing.T) (took time.Duration, blobs int) {
		t.Helper()
		before := reg.BlobGets(t)
		began := time.Now()
		g.mustAllow(t, "pull", app)
		g.mustAllow(t, "pull", sidecar)
		return time.Since(began), reg.BlobGets(t) - before
	}
	// deploy starts a run's containers, labelled as the run, on their own
	// network and with a named volume, as a CI job would.
	deploy := func(t *testing.T, run string) []string {
		t.Helper()
		net, vol := "pg-net-"+run, "pg-vol-"+run
		g.mustAllow(t, "network", "create", net)
		g.mustAllow(t, "volume", "create", vol)
		label := runLabel + "=" + run
		g.mustAllow(t, "run", "-d", "--name", run+"-app", "--label", label, "--network", net, "-v", vol+":/data", app)
		g.mustAllow(t, "run", "-d", "--name", run+"-sidecar", "--label", label, "--network", net, sidecar)
		g.mustAllow(t, "exec", run+"-app", "busybox", "sh", "-c", "echo state > /data/state")
		return []string{run + "-app", run + "-sidecar"}
	}
	teardown := func(t *testing.T, run string, containers []string) {
		t.Helper()
		g.mustAllow(t, append([]string{"rm", "-f"}, containers...)...)
		g.mustAllow(t, "volume", "rm", "pg-vol-"+run)
		g.mustAllow(t, "network", "rm", "pg-net-"+run)
	}

	cold, coldBlobs := pull(t)
	if coldBlobs == 0 {
		t.Fatalf("the cold pull downloaded no blob; the CI engine was not cold")
	}
	appID := imageID(t, g, app)

	containers := deploy(t, "job-1")
	t.Run("docker system prune -af during the run changes nothing", func(t *testing.T) {
		before := engineObjects(t, g, "pg-vol-job-1")
		mark := auditMark(t, g)
		g.mustDeny(t, []string{"system", "prune", "-af"}, "job-1")
		if after := engineObjects(t, g, "pg-vol-job-1"); after != before {
			t.Errorf("engine objects changed:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		auditLine(t, g, mark, map[string]string{"decision": "deny"})
	})
	teardown(t, "job-1", containers)
	requireImages(t, g, app, sidecar)

	t.Run("the redeploy downloads no blob", func(t *testing.T) {
		warm, blobs := pull(t)
		if blobs != 0 {
			t.Errorf("the warm pull downloaded %d blobs; want 0:\n%s", blobs, strings.Join(reg.BlobDownloads(t)[reg.BlobGets(t)-blobs:], "\n"))
		}
		containers := deploy(t, "job-2")
		if got := containerImage(t, g, containers[0]); got != appID {
			t.Errorf("redeployed container runs %s, want the cached %s", got, appID)
		}
		t.Logf("FIGURE: cold pull %v (%d blob downloads), warm redeploy pull %v (%d blob downloads), %.0fx faster",
			cold.Round(time.Millisecond), coldBlobs, warm.Round(time.Millisecond), blobs, float64(cold)/float64(warm))
		teardown(t, "job-2", containers)
	})

	t.Run("a new image under the same tag is pulled, never masked by the cache", func(t *testing.T) {
		newDigest := publish(app, 4<<20)
		if newDigest == appDigest {
			t.Fatalf("the new push has the old digest %s", newDigest)
		}
		mark := reg.BlobGets(t)
		out := g.mustAllow(t, "pull", app)
		if !strings.Contains(out, "Downloaded newer image") {
			t.Errorf("docker pull did not download the newer image:\n%s", out)
		}
		if n := reg.BlobGets(t) - mark; n == 0 {
			t.Errorf("the pull of the changed image downloaded no blob")
		}
		newID := imageID(t, g, app)
		if newID == appID {
			t.Fatalf("%s still names the old image %s", app, appID)
		}
		digests := g.mustAllow(t, "image", "inspect", "--format", "{{range .RepoDigests}}{{.}} {{end}}", app)
		if !slices.Contains(strings.Fields(digests), newDigest) {
			t.Errorf("%s has digests %q, want the pushed %s", app, digests, newDigest)
		}
		containers := deploy(t, "job-3")
		if got := containerImage(t, g, containers[0]); got != newID {
			t.Errorf("the deploy after the change runs %s, want the new %s", got, newID)
		}
		teardown(t, "job-3", containers)
	})
}

func imageID(t testing.TB, g guard, ref string) string {
	t.Helper()
	return strings.TrimSpace(g.mustAllow(t, "image", "inspect", "--format", "{{.Id}}", ref))
}

func containerImage(t testing.TB, g guard, name string) string {
	t.Helper()
	return strings.TrimSpace(g.mustAllow(t, "container", "inspect", "--format", "{{.Image}}", name))
}

// engineObjects lists the engine's images, containers and networks, and
// inspects the named volumes, to compare before and after a request that
// must change nothing. (Not "docker volume ls": listing volumes makes
// dockerd probe every socket in /run/docker/plugins for a volume driver,
// which takes seconds per stale socket another test left.)
func engineObjects(t testing.TB, g guard, volumes ...string) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{
		{"image", "ls", "--all", "--quiet", "--no-trunc"},
		{"container", "ls", "--all", "--quiet", "--no-trunc"},
		{"network", "ls", "--quiet", "--no-trunc"},
		append([]string{"volume", "inspect", "--format", "{{.Name}}"}, volumes...),
	} {
		lines := strings.Fields(g.mustAllow(t, args...))
		slices.Sort(lines)
		b.WriteString(args[0] + ": " + strings.Join(lines, " ") + "\n")
	}
	return b.String()
}
