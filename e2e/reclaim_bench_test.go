package e2e

import (
	"archive/tar"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/internal/enginetest"
)

// imageArchive writes a "docker save" archive of n single-layer images
// tagged NAME-i:1, each layer one file of size random bytes, so that a
// test gets hundreds of distinct images from one "docker load" instead of
// hundreds of builds.
func imageArchive(t testing.TB, name string, n, size int) string {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(path string, b []byte) {
		if err := tw.WriteHeader(&tar.Header{Name: path, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	type entry struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	var manifest []entry
	for i := range n {
		var layer bytes.Buffer
		lw := tar.NewWriter(&layer)
		payload := make([]byte, size)
		if _, err := rand.Read(payload); err != nil {
			t.Fatal(err)
		}
		if err := lw.WriteHeader(&tar.Header{Name: "blob", Mode: 0o644, Size: int64(size), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		lw.Write(payload)
		lw.Close()
		sum := sha256.Sum256(layer.Bytes())
		diffID := "sha256:" + hex.EncodeToString(sum[:])
		config, _ := json.Marshal(map[string]any{
			"architecture": "amd64", "os": "linux", "created": time.Now().UTC().Format(time.RFC3339Nano),
			"config": map[string]any{"Cmd": []string{"true"}},
			"rootfs": map[string]any{"type": "layers", "diff_ids": []string{diffID}},
		})
		csum := sha256.Sum256(config)
		cname := hex.EncodeToString(csum[:]) + ".json"
		dir := hex.EncodeToString(sum[:])
		add(dir+"/layer.tar", layer.Bytes())
		add(cname, config)
		manifest = append(manifest, entry{Config: cname, RepoTags: []string{fmt.Sprintf("%s-%d:1", name, i)}, Layers: []string{dir + "/layer.tar"}})
	}
	m, _ := json.Marshal(manifest)
	add("manifest.json", m)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "images.tar")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// BenchmarkReclaimPassOver200Images measures reclaim on a real engine
// holding 200 images (loaded at once, each 256 KiB, all hours old): b.N
// planning passes (a dry run plans over all 200 and the containers, and
// reads the engine's events since the last pass), and one pass that
// removes 50 of them, reported as ms/removing-pass. Run it by hand:
//
//	PG_ENGINE=20.10 go test ./e2e -run '^$' -bench ReclaimPassOver200Images -benchtime 5x
func BenchmarkReclaimPassOver200Images(b *testing.B) {
	const n, size = 200, 256 << 10
	disk := enginetest.NewSmallDisk(b, 1<<30)
	e, p := enginetest.StartGuarded(b, enginetest.Options{ExtraArgs: disk.Args()})
	g := guard{Engine: e, plugin: p}
	g.mustAllow(b, "load", "--quiet", "--input", imageArchive(b, "pg-bench", n, size))
	ids := g.ImageIDs(b)
	if len(ids) < n {
		b.Fatalf("%d images loaded; want %d", len(ids), n)
	}
	dir := b.TempDir()
	r := reclaimer{bin: enginetest.BuildBinary(b), host: g.Host(), state: filepath.Join(dir, "state.json"), audit: filepath.Join(dir, "reclaim.jsonl")}
	ages := map[string]time.Duration{}
	for i, id := range ids {
		ages[id] = time.Duration(300+i) * time.Minute
	}
	seedState(b, r.state, ages)

	total, _ := disk.Usage(b)
	perImage := int64(size)
	if g.Identity().ContainerdStore {
		perImage *= 2
	}
	u := disk.Percent(b)
	unit := 100 * float64(perImage) / float64(total)
	args := []string{"--high", pct(u - 0.1), "--low", pct(u - 49.5*unit)}
	b.ResetTimer()
	for range b.N {
		r.mustRun(b, append(args, "--dry-run")...)
	}
	b.StopTimer()

	began := time.Now()
	out := r.mustRun(b, args...)
	took := time.Since(began)
	removed := strings.Count(out, "\nremoved ")
	b.ReportMetric(float64(took.Milliseconds()), "ms/removing-pass")
	b.ReportMetric(float64(removed), "images/removing-pass")
	b.Logf("FIGURE: %s: a pass over %d images removed %d in %v (process included): %s", g.Identity(), len(ids), removed, took.Round(time.Millisecond),
		lastLine(out))
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
