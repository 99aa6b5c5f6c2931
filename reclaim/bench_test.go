package reclaim

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/audit"
)

// host200 is a host of 200 images in 20 repositories of 10 tags, every
// tenth built on the one before it, with 40 containers and a record for
// every image.
func host200() Facts {
	f := Facts{Now: now, Usage: Usage{Path: "/d", Total: 1000 << 20, Avail: 50 << 20}, Records: map[string]Record{}}
	for i := range 200 {
		im := image(fmt.Sprintf("%064x", i), tags(fmt.Sprintf("repo%d:%d", i/10, i%10)), size(4<<20))
		if i%10 != 0 {
			im.ParentID = fmt.Sprintf("sha256:%064x", i-1)
		}
		f.Images = append(f.Images, im)
		f.Records[im.ID] = used(time.Duration(400-i)*time.Hour, time.Duration(200-i/2)*time.Hour)
		if i%5 == 0 {
			f.Containers = append(f.Containers, container(fmt.Sprintf("c%d", i), fmt.Sprintf("%064x", i), "exited"))
		}
	}
	return f
}

// BenchmarkPlan200Images is the planner alone on 200 images, with
// --keep-per-repo.
func BenchmarkPlan200Images(b *testing.B) {
	f := host200()
	o := withOpts(func(o *Options) { o.KeepPerRepo = 3 })
	b.ReportAllocs()
	for range b.N {
		if p := NewPlan(f, o); len(p.Steps) == 0 {
			b.Fatal("no steps")
		}
	}
}

// BenchmarkPass200Images is one whole pass on an engine in memory holding
// 200 images, 50 of which it removes: events, resync, plan, removals (each
// measured before and after), state file.
func BenchmarkPass200Images(b *testing.B) {
	t := &testing.T{}
	for range b.N {
		b.StopTimer()
		var images []*fakeImage
		ages := map[string]time.Duration{}
		for i := range 200 {
			name := fmt.Sprintf("i%03d", i)
			images = append(images, img(name, 10, fmt.Sprintf("repo%d:%d", i/10, i%10)))
			ages[name] = time.Duration(400-i) * time.Hour
		}
		// 90% used; freeing to 85% takes 50 images of 10 bytes.
		f := &fakeEngine{t: t, root: b.TempDir(), total: 10000, base: 7000, images: images, deny: map[string]bool{}}
		cfg := Config{Options: withOpts(func(o *Options) { o.High, o.Low = 88, 85 }), Detection: ciDetection(t, 0),
			StatePath: filepath.Join(b.TempDir(), "state.json"), EngineTimeout: time.Minute}
		st := NewState()
		for n, d := range ages {
			st.Images["sha256:"+n] = seen(d)
		}
		if err := st.Save(cfg.StatePath); err != nil {
			b.Fatal(err)
		}
		r, err := New(cfg, f, audit.New(discard{}, nil))
		if err != nil {
			b.Fatal(err)
		}
		r.now, r.measure = func() time.Time { return now }, f.measure
		b.StartTimer()
		res, err := r.Once(context.Background())
		if err != nil || len(res.Removed) != 50 {
			b.Fatalf("pass: %v, %d removed", err, len(res.Removed))
		}
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
