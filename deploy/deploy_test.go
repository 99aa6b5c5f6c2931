// Package deploy holds no code: its test checks the Grafana dashboard and
// the Prometheus alerts in deploy/ against the series prune-guard exports,
// and the rules with promtool.
package deploy

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/prune-guard/prune-guard/internal/promtool"
	"github.com/prune-guard/prune-guard/metrics"
)

// exported is every metric name prune-guard exports: the guard's series as
// its golden files hold them (every series, in both modes), and reclaim's,
// the process and Go runtime metrics and the build info as the registry
// gathers them with every reclaim series present.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	add := func(name, typ string) {
		names[name] = true
		if typ == "histogram" || typ == "summary" {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				names[name+s] = true
			}
		}
	}
	goldens, err := filepath.Glob(filepath.Join("..", "guard", "testdata", "metrics*.golden"))
	if err != nil || len(goldens) == 0 {
		t.Fatalf("no golden metrics files: %v", err)
	}
	typeLine := regexp.MustCompile(`(?m)^# TYPE (\S+) (\S+)$`)
	for _, g := range goldens {
		data, err := os.ReadFile(g)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range typeLine.FindAllStringSubmatch(string(data), -1) {
			add(m[1], m[2])
		}
	}
	last := &metrics.ReclaimPass{Started: time.Now(), Duration: time.Second,
		After: metrics.ReclaimUsage{Percent: 80, TotalBytes: 1, AvailBytes: 1, Inodes: 1, FreeInodes: 1}}
	totals := metrics.ReclaimTotals{Passes: map[string]int64{"acted": 1}, Skipped: map[string]int64{"conflict": 1}, Last: last}
	e := metrics.NewReclaimExporter(func() metrics.ReclaimTotals { return totals }, metrics.ReclaimMarks{High: 85, Low: 80, Critical: 95}, time.Minute)
	mfs, err := metrics.NewRegistry(e).Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		add(mf.GetName(), strings.ToLower(mf.GetType().String()))
	}
	return names
}

// promqlWords are PromQL's functions, aggregations and keywords: a word in
// an expression that is none of these and no label is a metric name.
var promqlWords = map[string]bool{}

func init() {
	for _, w := range strings.Fields(`sum avg min max count stddev stdvar topk bottomk quantile count_values group
		by without on ignoring group_left group_right bool and or unless offset
		rate irate increase delta idelta deriv predict_linear resets changes time vector scalar absent absent_over_time
		abs ceil floor round clamp clamp_min clamp_max histogram_quantile label_replace label_join sort sort_desc
		avg_over_time min_over_time max_over_time sum_over_time count_over_time last_over_time present_over_time
		timestamp day_of_month day_of_week hour minute month year inf nan`) {
		promqlWords[w] = true
	}
}

var (
	stringLit  = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	matchers   = regexp.MustCompile(`\{[^}]*\}`)
	ranges     = regexp.MustCompile(`\[[^\]]*\]`)
	labelLists = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	variables  = regexp.MustCompile(`\$\{?\w+\}?`)
	durations  = regexp.MustCompile(`\b\d+(ms|s|m|h|d|w|y)\b`)
	words      = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`)
)

// metricNames are the metric names expr queries.
func metricNames(expr string) []string {
	e := stringLit.ReplaceAllString(expr, `""`)
	e = matchers.ReplaceAllString(e, " ")
	e = ranges.ReplaceAllString(e, " ")
	e = labelLists.ReplaceAllString(e, " ")
	e = variables.ReplaceAllString(e, " ")
	e = durations.ReplaceAllString(e, " ")
	var out []string
	for _, w := range words.FindAllString(e, -1) {
		if !promqlWords[w] {
			out = append(out, w)
		}
	}
	return out
}

// exprs walks a decoded dashboard and returns every "expr" string in it.
func exprs(v any) []string {
	var out []string
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			if s, ok := x.(string); ok && k == "expr" {
				out = append(out, s)
				continue
			}
			out = append(out, exprs(x)...)
		}
	case []any:
		for _, x := range v {
			out = append(out, exprs(x)...)
		}
	}
	return out
}

// Every metric the dashboard's panels query is one prune-guard exports.
func TestDashboardQueriesExportedMetrics(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("grafana", "prune-guard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash map[string]any
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("prune-guard.json: %v", err)
	}
	have := exported(t)
	es := exprs(dash["panels"])
	if len(es) < 10 {
		t.Fatalf("the dashboard has %d queries", len(es))
	}
	used := map[string]bool{}
	for _, e := range es {
		names := metricNames(e)
		if len(names) == 0 && !strings.Contains(e, "$hub_limit") {
			t.Errorf("query %q names no metric", e)
		}
		for _, n := range names {
			if used[n] {
				continue
			}
			used[n] = true
			if !have[n] {
				t.Errorf("the dashboard queries %s, which prune-guard does not export (query %q)", n, e)
			}
		}
	}
	t.Logf("the dashboard queries %s", strings.Join(sortedKeys(used), ", "))
}

// The alerts pass promtool's rule checks and unit tests, and query only
// metrics prune-guard exports (and Prometheus's own up).
func TestAlertsCheckAndQueryExportedMetrics(t *testing.T) {
	rules := filepath.Join("prometheus", "alerts.yaml")
	promtool.CheckRules(t, rules)
	promtool.TestRules(t, filepath.Join("prometheus", "alerts_test.yaml"))
	data, err := os.ReadFile(rules)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	have := exported(t)
	have["up"] = true
	for _, g := range doc.Groups {
		for _, r := range g.Rules {
			for _, n := range dedupe(metricNames(r.Expr)) {
				if !have[n] {
					t.Errorf("alert %s queries %s, which prune-guard does not export", r.Alert, n)
				}
			}
		}
	}
}

// The word scanner finds metric names and only them.
func TestMetricNames(t *testing.T) {
	for expr, want := range map[string]string{
		`sum by (rule, decision) (rate(prune_guard_decisions_total{instance=~"$host(:[0-9]+)?"}[$__rate_interval]))`: "prune_guard_decisions_total",
		`max by (instance) (a{at="end"}) >= on (instance) max by (instance) (b{mark="critical"})`:                    "a b",
		`(time() - x) > on (instance, job) (3 * y) or (time() - x unless on (instance, job) y) > 2 * 3600`:           "x y x y",
		`vector($hub_limit)`:                                         "",
		`increase(z[1h] offset 15m) > 0`:                             "z",
		`count(count by (sha256) (p)) > 1`:                           "p",
		`histogram_quantile(0.99, sum by (le) (rate(h_bucket[5m])))`: "h_bucket",
	} {
		if got := strings.Join(metricNames(expr), " "); got != want {
			t.Errorf("metricNames(%q) = %q, want %q", expr, got, want)
		}
	}
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func dedupe(names []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, n := range names {
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	return out
}
