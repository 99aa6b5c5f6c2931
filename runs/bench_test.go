package runs

import (
	"context"
	"fmt"
	"testing"

	"github.com/prune-guard/prune-guard/rules"
)

// BenchmarkState500Containers is one destructive decision's question on a
// busy host: 500 active containers, 5 of them a job's, the default
// detection (so services are listed too) and a running Watch's record, so
// no replay. Host processes are left out; BenchmarkProcScan measures them.
func BenchmarkState500Containers(b *testing.B) {
	var cs []map[string]any
	for i := range 500 {
		labels := map[string]string{"com.docker.compose.project": "app", "com.docker.compose.service": fmt.Sprint("svc", i), "maintainer": "ops"}
		if i%100 == 0 {
			labels["com.gitlab.gitlab-runner.job.id"] = fmt.Sprint(4700 + i)
		}
		cs = append(cs, map[string]any{"Id": fmt.Sprintf("%064x", i), "Names": []string{fmt.Sprint("/app-svc", i, "-1")}, "Labels": labels})
	}
	f := &fakeEngine{containers: cs, serviceErr: 503, serviceMsg: "This node is not a swarm manager."}
	tr := newTracker(b, f)
	tr.watching = true // a running Watch's record answers for ended jobs
	d := rules.MustDetection(rules.DefaultDetectionSettings())
	b.ReportAllocs()
	for b.Loop() {
		if st := tr.State(context.Background(), d); st.Err != nil || len(st.Active) != 5 {
			b.Fatalf("state %+v", st)
		}
	}
}

// BenchmarkProcScan scans this machine's /proc with the default detection.
func BenchmarkProcScan(b *testing.B) {
	v := viewProcs("/proc")
	if !v.visible {
		b.Skip(v.why)
	}
	d := rules.MustDetection(rules.DefaultDetectionSettings())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.scanProcs(d); err != nil {
			b.Fatal(err)
		}
	}
}
