// Package metrics is what prune-guard's metrics share: a registry with the
// process and Go runtime collectors and prune_guard_build_info, its HTTP
// handler, and the atomic textfile writer for node_exporter's textfile
// collector. The guard's and reclaim's own series come from collectors that
// read their counters at scrape time, so nothing here touches the path of a
// Docker API call.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/prune-guard/prune-guard/buildinfo"
)

// BuildInfo is prune_guard_build_info{version,goversion} 1.
func BuildInfo() prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "prune_guard_build_info",
		Help:        "The running prune-guard's build: version and the Go release it was built with; always 1.",
		ConstLabels: prometheus.Labels{"version": buildinfo.Version(), "goversion": buildinfo.GoVersion()},
	})
	g.Set(1)
	return g
}

// NewRegistry returns a registry holding the process and Go runtime
// collectors, prune_guard_build_info and cs: what a long-running command
// serves on --metrics-addr.
func NewRegistry(cs ...prometheus.Collector) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), collectors.NewGoCollector(), BuildInfo())
	reg.MustRegister(cs...)
	return reg
}

// Handler serves g's metrics, in the text format or OpenMetrics as the
// scraper asks. A collector's error fails the scrape (500), so a broken
// series is noticed rather than silently missing.
func Handler(g prometheus.Gatherer) http.Handler {
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorHandling: promhttp.HTTPErrorOnError})
}
