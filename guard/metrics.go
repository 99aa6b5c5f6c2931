package guard

import (
	"context"
	"io"
	"net/http"
	"sort"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/prune-guard/prune-guard/metrics"
)

// The guard's series. Their names, help, types and labels are an interface
// that dashboards (deploy/grafana) and alerts (deploy/prometheus) depend on;
// testdata/metrics*.golden holds them.
var (
	descDecisions = prometheus.NewDesc("prune_guard_decisions_total",
		"Decisions on destructive or denied requests, by rule and decision.", []string{"rule", "decision"}, nil)
	descReads = prometheus.NewDesc("prune_guard_reads_allowed_total",
		"Non-destructive requests allowed without an engine query.", nil, nil)
	descLatency = prometheus.NewDesc("prune_guard_decision_seconds",
		"Time to decide a destructive request, engine queries included.", nil, nil)
	descEngineErrors = prometheus.NewDesc("prune_guard_engine_errors_total",
		"Engine queries that failed or timed out (the state was unknown).", nil, nil)
	descReloads = prometheus.NewDesc("prune_guard_policy_reloads_total",
		"Policy files loaded after start.", nil, nil)
	descRejections = prometheus.NewDesc("prune_guard_policy_rejections_total",
		"Policy files rejected (the policy in force stayed).", nil, nil)
	descAuditFailures = prometheus.NewDesc("prune_guard_audit_write_failures_total",
		"Audit records that could not be written.", nil, nil)
	descStart = prometheus.NewDesc("prune_guard_start_time_seconds",
		"When prune-guard started, in seconds since the epoch.", nil, nil)
	descPolicy = prometheus.NewDesc("prune_guard_policy_info",
		"The policy in force, by the SHA-256 of its file (of the rendered built-in policy when none is given), as status and the audit log name it; always 1.", []string{"sha256"}, nil)
	descRunStateKnown = prometheus.NewDesc("prune_guard_run_state_known",
		"1 when the engine said which CI jobs are active at this scrape, 0 when it could not (prune-guard then refuses prunes and image deletes).", nil, nil)
	descActiveJobs = prometheus.NewDesc("prune_guard_active_jobs",
		"CI jobs active at this scrape, by the detector that counts them (every enabled detector, 0 included); absent while the run state is unknown.", []string{"detector"}, nil)
	descPulls = prometheus.NewDesc("prune_guard_image_pulls_total",
		"Image pulls, by registry and result: hit (the image was local before the pull), miss, unknown.", []string{"registry", "result"}, nil)
	descPullLayers = prometheus.NewDesc("prune_guard_pull_layers_total",
		"Layers of the pulls the proxy relayed, by result: reused (already local) or downloaded.", []string{"result"}, nil)
	descPullBytes = prometheus.NewDesc("prune_guard_pull_bytes_total",
		"Bytes the pulls the proxy relayed downloaded, as their progress reported them.", nil, nil)
	descGraceJobs = prometheus.NewDesc("prune_guard_jobs_in_grace",
		"CI jobs that ended within the teardown grace at this scrape (image deletes stay refused); absent while the run state is unknown.", nil, nil)
)

// statusCollector turns a Status into the guard's series. Every scrape
// reads a fresh Status: the counters are atomic loads and a short lock, so
// the requests being decided never wait for a scrape, nor pay for one.
type statusCollector struct {
	status func() Status
}

func (statusCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descDecisions, descReads, descLatency, descEngineErrors, descReloads, descRejections,
		descAuditFailures, descStart, descPolicy, descRunStateKnown, descActiveJobs, descGraceJobs, descPulls, descPullLayers, descPullBytes} {
		ch <- d
	}
}

func (c statusCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.status()
	st := s.Stats
	for rule, ds := range st.Decisions {
		for d, n := range ds {
			ch <- prometheus.MustNewConstMetric(descDecisions, prometheus.CounterValue, float64(n), rule, d)
		}
	}
	counter := func(d *prometheus.Desc, n int64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(n))
	}
	counter(descReads, st.Reads)
	counter(descEngineErrors, st.EngineErrors)
	counter(descReloads, st.Reloads)
	counter(descRejections, st.Rejections)
	counter(descAuditFailures, s.AuditWriteFailures)
	ch <- latencyHistogram(st)
	ch <- prometheus.MustNewConstMetric(descStart, prometheus.GaugeValue, float64(st.Started.Unix()))
	if s.Policy.Hash != "" {
		ch <- prometheus.MustNewConstMetric(descPolicy, prometheus.GaugeValue, 1, s.Policy.Hash)
	}
	collectPulls(ch, s)
	collectRuns(ch, s)
}

// collectPulls writes the pull counters. Layers and bytes are written in
// proxy mode only, the one mode that sees a pull's progress: zeros in authz
// mode would read as "nothing downloaded".
func collectPulls(ch chan<- prometheus.Metric, s Status) {
	for reg, results := range s.Stats.Pulls {
		for res, n := range results {
			ch <- prometheus.MustNewConstMetric(descPulls, prometheus.CounterValue, float64(n), reg, res)
		}
	}
	if s.Transport.Mode != ModeProxy {
		return
	}
	ch <- prometheus.MustNewConstMetric(descPullLayers, prometheus.CounterValue, float64(s.Stats.PullLayersDownloaded), "downloaded")
	ch <- prometheus.MustNewConstMetric(descPullLayers, prometheus.CounterValue, float64(s.Stats.PullLayersReused), "reused")
	ch <- prometheus.MustNewConstMetric(descPullBytes, prometheus.CounterValue, float64(s.Stats.PullBytes))
}

// latencyHistogram is the decision latency as a histogram: cumulative
// counts at each of LatencyBuckets' bounds.
func latencyHistogram(st Snapshot) prometheus.Metric {
	buckets := make(map[float64]uint64, len(LatencyBuckets))
	var cum int64
	for i, b := range LatencyBuckets {
		if i < len(st.LatencyCounts) {
			cum += st.LatencyCounts[i]
		}
		buckets[b.Seconds()] = uint64(cum)
	}
	return prometheus.MustNewConstHistogram(descLatency, uint64(st.LatencyN), st.LatencySum.Seconds(), buckets)
}

// collectRuns writes the run state: whether it is known, and the jobs it
// holds, counted once however many containers a job has.
func collectRuns(ch chan<- prometheus.Metric, s Status) {
	r := s.Runs
	if r.Error != "" {
		ch <- prometheus.MustNewConstMetric(descRunStateKnown, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(descRunStateKnown, prometheus.GaugeValue, 1)
	jobs := map[string]map[string]bool{}
	for _, d := range s.Policy.Detectors {
		jobs[d] = map[string]bool{}
	}
	for _, a := range r.Active {
		if jobs[a.Detector] == nil {
			jobs[a.Detector] = map[string]bool{}
		}
		jobs[a.Detector][a.Job] = true
	}
	for d, js := range jobs {
		ch <- prometheus.MustNewConstMetric(descActiveJobs, prometheus.GaugeValue, float64(len(js)), d)
	}
	ended := map[string]bool{}
	for _, e := range r.Ended {
		ended[e.Detector+"\x00"+e.Job] = true
	}
	ch <- prometheus.MustNewConstMetric(descGraceJobs, prometheus.GaugeValue, float64(len(ended)))
}

// Collector returns the guard's series for a registry. Each scrape asks the
// engine once which CI jobs are active, as "prune-guard status" does,
// bounded by the engine timeout; nothing else it reads costs an engine
// query.
func (g *Guard) Collector() prometheus.Collector {
	return statusCollector{status: func() Status { return g.Status(context.Background()) }}
}

// MetricsHandler serves the guard's series with the process and Go runtime
// metrics and prune_guard_build_info.
func (g *Guard) MetricsHandler() http.Handler {
	return metrics.Handler(metrics.NewRegistry(g.Collector()))
}

// WriteMetrics writes s as the guard's series alone, in the text format,
// sorted: what the golden-file test compares.
func WriteMetrics(w io.Writer, s Status) error {
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(statusCollector{status: func() Status { return s }}); err != nil {
		return err
	}
	mfs, err := reg.Gather()
	if err != nil {
		return err
	}
	sort.Slice(mfs, func(i, j int) bool { return mfs[i].GetName() < mfs[j].GetName() })
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(w, mf); err != nil {
			return err
		}
	}
	return nil
}
