// Command loadgen measures the throughput and latency of one Docker API
// endpoint on one or more dockerd unix sockets.
//
// It is built to compare daemons that differ in one thing (here: which
// authorization plugin they call out to), so it interleaves the targets:
// every round gives each target one turn of the same length, in an order
// that rotates from round to round and reverses every len(targets) rounds.
// Machine noise (another process waking up, a GC in dockerd) then lands on
// all targets alike instead of on whichever happened to run last. Each
// target's req/s is divided by the baseline target's (--baseline, "floor"
// by default) round by round, and the median of those ratios reported;
// --compare adds the same pairing against other targets (dockerd alone, a
// reference proxy) for req/s, MB/s, each round's p50 and p99, and CPU per
// request.
//
// Given the daemon's and plugin's process IDs (--cpu-pids), it also reports
// their CPU time per request, paired the same way, and how much CPU the
// rest of the machine took during each turn. CPU time per request is what
// the overhead is; req/s is what it does to a saturated machine, and moves
// with everything else running on it.
//
// Usage:
//
//	loadgen --socket none=/tmp/a/d.sock,floor=/tmp/b/d.sock,guard=/tmp/c/d.sock
//
// Only unix sockets are dialled, and every run is bounded in time, to
// targets × (warmup + rounds × (pause + duration)) plus one --timeout per
// turn at worst, and in failures, to --max-errors.
package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"
)

// target is one dockerd socket under test.
type target struct {
	label  string
	socket string
	pids   []int // processes whose CPU time serving it is charged to it
	// pluginPIDs are the plugin's processes among pids, whose CPU time
	// is also reported on its own.
	pluginPIDs []int
	client     *http.Client

	rounds  []round
	samples []time.Duration // latency of every successful measured request
	errs    int64
	lastErr string
}

// round is the outcome of running one target for one round.
type round struct {
	OK      int64         `json:"ok"`
	Errors  int64         `json:"errors"`
	Elapsed time.Duration `json:"elapsed_ns"`
	// CPU is the CPU time the target's processes (--cpu-pids) used
	// during the round, and Other the CPU time the rest of the machine
	// used, apart from loadgen; -1 if not known. Other is a disturbance:
	// a round where it is high is a round to distrust.
	CPU time.Duration `json:"cpu_ns"`
	// PluginCPU is the part of CPU the plugin's processes
	// (--plugin-pids) used; -1 if not known.
	PluginCPU time.Duration `json:"plugin_cpu_ns"`
	Other     time.Duration `json:"other_cpu_ns"`
	Cores     int           `json:"cores,omitempty"`
	// Bytes is the length of the successful responses' bodies together.
	Bytes int64 `json:"bytes"`
	// P50 and P99 are the round's own latency percentiles, so that
	// latencies too can be compared round by round.
	P50 time.Duration `json:"p50_ns"`
	P99 time.Duration `json:"p99_ns"`
}

// otherShare returns Other as a fraction of all the cores' time during the
// round, and false if it is not known.
func (r round) otherShare() (float64, bool) {
	if r.Other < 0 || r.Cores == 0 || r.Elapsed <= 0 {
		return 0, false
	}
	return float64(r.Other) / (float64(r.Elapsed) * float64(r.Cores)), true
}

// cpuPerRequest returns the CPU time per successful request, and false if
// it is not known.
func (r round) cpuPerRequest() (time.Duration, bool) {
	if r.CPU < 0 || r.OK == 0 {
		return 0, false
	}
	return r.CPU / time.Duration(r.OK), true
}

func (r round) rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.OK) / r.Elapsed.Seconds()
}

// mbps is the round's throughput in MB (10^6 bytes) of response bodies per
// second.
func (r round) mbps() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Bytes) / 1e6 / r.Elapsed.Seconds()
}

// socketList is a flag.Value that accumulates LABEL=PATH pairs, given
// either as repeated flags or comma-separated in one.
type socketList []*target

func (s *socketList) String() string {
	var parts []string
	for _, t := range *s {
		parts = append(parts, t.label+"="+t.socket)
	}
	return strings.Join(parts, ",")
}

func (s *socketList) Set(v string) error {
	for _, item := range strings.Split(v, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		label, path, ok := strings.Cut(item, "=")
		if !ok {
			// No label given: name the target after its socket's
			// directory, which for the benchmark's daemons says which
			// one it is; fall back to a position.
			path = item
			label = filepath.Base(filepath.Dir(path))
			if label == "." || label == "/" {
				label = fmt.Sprintf("t%d", len(*s)+1)
			}
		}
		if label == "" || path == "" {
			return fmt.Errorf("bad target %q: want LABEL=PATH", item)
		}
		for _, t := range *s {
			if t.label == label {
				return fmt.Errorf("duplicate target label %q", label)
			}
		}
		*s = append(*s, &target{label: label, socket: path})
	}
	return nil
}

// pidFlag is a flag.Value mapping target labels to the processes whose
// CPU time is charged to them, given as LABEL=PID[+PID...].
type pidFlag map[string][]int

func (f pidFlag) String() string {
	var parts []string
	for label, pids := range f {
		var ps []string
		for _, p := range pids {
			ps = append(ps, strconv.Itoa(p))
		}
		parts = append(parts, label+"="+strings.Join(ps, "+"))
	}
	slices.Sort(parts)
	return strings.Join(parts, ",")
}

func (f pidFlag) Set(v string) error {
	for _, item := range strings.Split(v, ",") {
		label, list, ok := strings.Cut(strings.TrimSpace(item), "=")
		if !ok || label == "" || list == "" {
			return fmt.Errorf("bad --cpu-pids %q: want LABEL=PID[+PID...]", item)
		}
		for _, p := range strings.Split(list, "+") {
			pid, err := strconv.Atoi(p)
			if err != nil || pid <= 0 {
				return fmt.Errorf("bad pid %q in --cpu-pids %q", p, item)
			}
			f[label] = append(f[label], pid)
		}
	}
	return nil
}

// attach gives each target its processes; every label must name a target,
// or a typo would silently drop a column.
func (f pidFlag) attach(targets []*target) error {
	for label, pids := range f {
		i := slices.IndexFunc(targets, func(t *target) bool { return t.label == label })
		if i < 0 {
			return fmt.Errorf("--cpu-pids: no target labelled %q", label)
		}
		targets[i].pids = pids
	}
	return nil
}

type config struct {
	concurrency int
	duration    time.Duration
	rounds      int
	warmup      time.Duration
	path        string
	baseline    string
	timeout     time.Duration
	maxErrors   int64
	pause       time.Duration
	compare     []string // labels the other targets are also compared to
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("loadgen: ")

	targets, cfg, asJSON := parseFlags()
	for _, t := range targets {
		t.client = newClient(t.socket, cfg)
	}

	// A target that fails does so fast, so without a budget a dead
	// daemon would be hammered in a tight loop for the rest of the run.
	// Spending it cancels ctx, which ends the run where it is.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := &bench{cfg: cfg, cancel: cancel}
	b.budget.Store(cfg.maxErrors)
	b.run(ctx, targets)
	if ctx.Err() != nil {
		log.Printf("more than %d failed requests: stopped early", cfg.maxErrors)
	}

	if err := write(os.Stdout, report(targets, cfg), asJSON); err != nil {
		log.Fatalf("writing results: %v", err)
	}
	// Failed requests are cheap and fast, so a target that errors looks
	// better or worse than it is; refuse to let such a run pass silently.
	if failures(targets) {
		os.Exit(1)
	}
}

// parseFlags reads the command line, and exits with a usage error if it
// does not describe a run.
func parseFlags() (socketList, config, bool) {
	var (
		targets socketList
		cfg     config
		asJSON  bool
	)
	flag.Var(&targets, "socket", "dockerd unix socket as `LABEL=PATH`; repeatable or comma-separated")
	cpuPIDs := make(pidFlag)
	flag.Var(cpuPIDs, "cpu-pids", "`LABEL=PID[+PID...]`: processes (dockerd, its plugin) whose CPU time per request to report for a target; repeatable")
	pluginPIDs := make(pidFlag)
	flag.Var(pluginPIDs, "plugin-pids", "`LABEL=PID[+PID...]`: the plugin's (or the proxy's) processes, whose CPU time per request is also reported on its own; repeatable")
	flag.IntVar(&cfg.concurrency, "concurrency", 8, "concurrent keep-alive connections per target")
	flag.DurationVar(&cfg.duration, "duration", 5*time.Second, "length of one target's turn in a round")
	flag.IntVar(&cfg.rounds, "rounds", 6, "number of interleaved rounds; a multiple of twice the targets balances the order")
	flag.DurationVar(&cfg.warmup, "warmup", time.Second, "unmeasured load per target before the first round (0 to skip)")
	flag.StringVar(&cfg.path, "path", "/v1.41/containers/json", "API `path` to GET")
	flag.StringVar(&cfg.baseline, "baseline", "floor", "`label` of the target the others' req/s is divided by")
	flag.Func("compare", "`LABEL[,LABEL...]`: also compare every target to these, round by round (req/s, MB/s, p50, p99, CPU per request); repeatable", func(v string) error {
		for _, l := range strings.Split(v, ",") {
			if l = strings.TrimSpace(l); l != "" {
				cfg.compare = append(cfg.compare, l)
			}
		}
		return nil
	})
	flag.DurationVar(&cfg.timeout, "timeout", 10*time.Second, "per-request timeout")
	flag.DurationVar(&cfg.pause, "pause", time.Second, "idle time before each turn, so one target's aftermath does not slow the next")
	flag.Int64Var(&cfg.maxErrors, "max-errors", 100, "stop the run early after this many failed requests")
	flag.BoolVar(&asJSON, "json", false, "print the results as JSON instead of a table")
	flag.Parse()

	if err := validate(targets, cfg); err != nil {
		log.Print(err)
		flag.Usage()
		os.Exit(2)
	}
	if err := cpuPIDs.attach(targets); err != nil {
		log.Print(err)
		os.Exit(2)
	}
	for label, pids := range pluginPIDs {
		i := slices.IndexFunc(targets, func(t *target) bool { return t.label == label })
		if i < 0 {
			log.Printf("--plugin-pids: no target labelled %q", label)
			os.Exit(2)
		}
		targets[i].pluginPIDs = pids
	}
	return targets, cfg, asJSON
}

// run gives every target its warmup, then runs the interleaved rounds,
// until they are done or ctx ends.
func (b *bench) run(ctx context.Context, targets []*target) {
	if b.cfg.warmup > 0 {
		for _, t := range targets {
			// Warmup opens the connections and pages in both dockerd's
			// and the plugin's hot paths; its numbers are thrown away,
			// but its errors count against the budget.
			res := b.runRound(ctx, t, b.cfg.warmup)
			t.errs += res.Errors
			t.lastErr = cmp.Or(res.lastErr, t.lastErr)
		}
	}
	for r := 0; r < b.cfg.rounds && ctx.Err() == nil; r++ {
		for _, i := range turnOrder(len(targets), r) {
			t := targets[i]
			// Let the previous turn's daemon and plugin finish what a
			// burst of requests leaves behind (GC, mostly) before this
			// one starts, or it is charged to whichever target follows.
			time.Sleep(b.cfg.pause)
			res := b.runRound(ctx, t, b.cfg.duration)
			t.errs += res.Errors
			t.lastErr = cmp.Or(res.lastErr, t.lastErr)
			if ctx.Err() != nil {
				return // a round cut short is not comparable to the others
			}
			t.rounds = append(t.rounds, res.round)
			t.samples = append(t.samples, res.samples...)
		}
	}
}

// write prints the report as a table, or as JSON.
func write(w io.Writer, rep Report, asJSON bool) error {
	if !asJSON {
		return printTable(w, rep)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// failures logs the targets that had failed requests, and reports whether
// any did.
func failures(targets []*target) bool {
	failed := false
	for _, t := range targets {
		if t.errs > 0 {
			log.Printf("%s: %d failed requests (last: %s)", t.label, t.errs, t.lastErr)
			failed = true
		}
	}
	return failed
}

func validate(targets socketList, cfg config) error {
	switch {
	case len(targets) == 0:
		return errors.New("at least one --socket is required")
	// The upper limits keep a typo from turning a benchmark into a
	// half-day load test of a shared machine.
	case cfg.concurrency < 1 || cfg.concurrency > 256:
		return errors.New("--concurrency must be 1 to 256")
	case cfg.duration <= 0 || cfg.duration > 10*time.Minute:
		return errors.New("--duration must be positive and at most 10m")
	case cfg.rounds < 1 || cfg.rounds > 100:
		return errors.New("--rounds must be 1 to 100")
	case cfg.warmup < 0:
		return errors.New("--warmup must not be negative")
	case cfg.timeout <= 0:
		return errors.New("--timeout must be positive")
	case cfg.pause < 0:
		return errors.New("--pause must not be negative")
	case cfg.maxErrors < 0:
		return errors.New("--max-errors must not be negative")
	case !strings.HasPrefix(cfg.path, "/"):
		return errors.New("--path must start with /")
	}
	for _, l := range cfg.compare {
		if !slices.ContainsFunc(targets, func(t *target) bool { return t.label == l }) {
			return fmt.Errorf("--compare: no target labelled %q", l)
		}
	}
	return nil
}

// turnOrder returns the order in which round r visits n targets. It
// rotates by one each round, and every n rounds the direction flips:
// for three targets, 012 120 201 210 021 102. Over 2n rounds each target
// then takes each position equally often and, for any two targets, either
// goes first as often and as far ahead as the other, so effects of
// position and slow drift cancel in the paired ratios instead of favouring
// one target.
func turnOrder(n, r int) []int {
	order := make([]int, n)
	for i := range order {
		order[i] = (i + r) % n
	}
	if (r/n)%2 == 1 {
		slices.Reverse(order)
	}
	return order
}

// newClient returns a client whose every connection goes to socket, and
// which keeps up to concurrency of them open between requests, so the
// benchmark measures requests rather than connection setup.
func newClient(socket string, cfg config) *http.Client {
	var d net.Dialer
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns:        cfg.concurrency,
		MaxIdleConnsPerHost: cfg.concurrency,
		MaxConnsPerHost:     cfg.concurrency,
		// Other targets run for a whole round between this target's
		// turns; keep the connections across that gap.
		IdleConnTimeout:    0,
		DisableCompression: true,
	}
	return &http.Client{Transport: tr, Timeout: cfg.timeout}
}

type roundResult struct {
	round
	samples []time.Duration
	lastErr string
}

// bench holds what the rounds of one run share.
type bench struct {
	cfg    config
	budget atomic.Int64 // failed requests still tolerated
	cancel context.CancelFunc
}

// runRound keeps cfg.concurrency requests in flight against t for d and
// returns what completed. A request still in flight at the deadline is
// waited for and counted, and the elapsed time includes it.
func (b *bench) runRound(ctx context.Context, t *target, d time.Duration) roundResult {
	url := "http://docker" + b.cfg.path
	concurrency := b.cfg.concurrency
	type workerResult struct {
		samples []time.Duration
		bytes   int64
		errs    int64
		lastErr string
	}
	results := make([]workerResult, concurrency)

	before, beforeErr := takeCPUSnapshot(t.pids)
	pluginBefore, pluginBeforeErr := cpuTime(t.pluginPIDs)
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for w := range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := &results[w]
			for ctx.Err() == nil && time.Now().Before(deadline) {
				lat, n, err := get(ctx, t.client, url)
				if err != nil {
					if ctx.Err() != nil {
						return // cancelled by another worker, not a failure
					}
					res.errs++
					res.lastErr = err.Error()
					if b.budget.Add(-1) < 0 {
						b.cancel()
					}
					continue
				}
				res.samples = append(res.samples, lat)
				res.bytes += n
			}
		}()
	}
	wg.Wait()

	out := roundResult{round: round{Elapsed: time.Since(start), CPU: -1, Other: -1, PluginCPU: -1}}
	after, afterErr := takeCPUSnapshot(t.pids)
	pluginAfter, pluginAfterErr := cpuTime(t.pluginPIDs)
	if cmp.Or(pluginBeforeErr, pluginAfterErr) == nil && len(t.pluginPIDs) > 0 {
		out.PluginCPU = pluginAfter - pluginBefore
	}
	if err := cmp.Or(beforeErr, afterErr); err != nil {
		// The request errors, if any, say more; this only costs
		// the round its CPU figures.
		log.Printf("%s: %v", t.label, err)
	} else if len(t.pids) > 0 {
		out.CPU = after.target - before.target
		// The cores' busy time that neither this target nor loadgen
		// used went to something else: the other targets idling, and
		// whatever else runs on the machine, which it is here to show.
		out.Other = max(0, (after.machine-before.machine)-out.CPU-(after.self-before.self))
		out.Cores = runtime.NumCPU()
	}
	for _, r := range results {
		out.samples = append(out.samples, r.samples...)
		out.Bytes += r.bytes
		out.Errors += r.errs
		if r.lastErr != "" {
			out.lastErr = r.lastErr
		}
	}
	out.OK = int64(len(out.samples))
	slices.Sort(out.samples)
	out.P50 = percentile(out.samples, 50)
	out.P99 = percentile(out.samples, 99)
	return out
}

// get performs one request and returns its latency, measured until the
// body has been read in full so that a streaming response is not
// flattered, and the body's length.
func get(ctx context.Context, c *http.Client, url string) (time.Duration, int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, 0, fmt.Errorf("building request: %w", err)
	}
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return 0, 0, err
	}
	// Drain the body even on a failure status so the connection can be
	// reused; otherwise errors would also cost a reconnect.
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	lat := time.Since(start)
	if err != nil {
		return 0, 0, fmt.Errorf("reading body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return 0, 0, fmt.Errorf("status %s", resp.Status)
	}
	return lat, n, nil
}

// clockTick is the unit of utime and stime in /proc/PID/stat. It is
// USER_HZ, which Linux fixes at 100 on every architecture Go supports.
const clockTick = 10 * time.Millisecond

// cpuSnapshot is the CPU time used so far by a target's processes, by
// loadgen itself, and by the whole machine.
type cpuSnapshot struct {
	target, self, machine time.Duration
}

func takeCPUSnapshot(pids []int) (cpuSnapshot, error) {
	var s cpuSnapshot
	var err1, err2, err3 error
	s.target, err1 = cpuTime(pids)
	s.self, err2 = cpuTime([]int{os.Getpid()})
	s.machine, err3 = machineBusy()
	return s, errors.Join(err1, err2, err3)
}

// machineBusy returns the time all cores together have spent on anything
// but idling since boot, counting time stolen by the hypervisor as busy:
// for this benchmark it is as much a disturbance as another process.
func machineBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, fmt.Errorf("reading machine CPU time: %w", err)
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	// cpu user nice system idle iowait irq softirq steal [guest ...];
	// guest time is already counted in user.
	fields := strings.Fields(string(line))
	if len(fields) < 9 || fields[0] != "cpu" {
		return 0, errors.New("parsing /proc/stat: unexpected format")
	}
	var busy time.Duration
	for i, f := range fields[1:9] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		ticks, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parsing /proc/stat: %w", err)
		}
		busy += time.Duration(ticks) * clockTick
	}
	return busy, nil
}

// cpuTime returns the user plus system CPU time that the processes have
// used so far, all their threads included.
func cpuTime(pids []int) (time.Duration, error) {
	var total time.Duration
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return 0, fmt.Errorf("reading CPU time: %w", err)
		}
		// The command name (field 2) is in parentheses and may hold
		// spaces and parentheses; the fields after the last ')' start
		// with the state (field 3),
		// so utime and stime (fields 14 and 15) are the 12th and 13th.
		i := bytes.LastIndexByte(b, ')')
		fields := strings.Fields(string(b[i+1:]))
		if i < 0 || len(fields) < 13 {
			return 0, fmt.Errorf("parsing /proc/%d/stat: unexpected format", pid)
		}
		for _, f := range fields[11:13] {
			ticks, err := strconv.ParseInt(f, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parsing /proc/%d/stat: %w", pid, err)
			}
			total += time.Duration(ticks) * clockTick
		}
	}
	return total, nil
}

// Report is the machine-readable result of a run.
type Report struct {
	Path        string         `json:"path"`
	Concurrency int            `json:"concurrency"`
	Duration    time.Duration  `json:"round_duration_ns"`
	Rounds      int            `json:"rounds"`
	Baseline    string         `json:"baseline,omitempty"`
	Targets     []TargetReport `json:"targets"`
}

// TargetReport summarises one target over all measured rounds.
type TargetReport struct {
	Label      string        `json:"label"`
	Socket     string        `json:"socket"`
	PIDs       []int         `json:"cpu_pids,omitempty"`
	Requests   int64         `json:"requests"` // successful ones
	Errors     int64         `json:"errors"`
	MedianRPS  float64       `json:"median_rps"`
	OverallRPS float64       `json:"overall_rps"`
	RoundRPS   []float64     `json:"round_rps"`
	P50        time.Duration `json:"p50_ns"`
	P90        time.Duration `json:"p90_ns"`
	P99        time.Duration `json:"p99_ns"`
	Max        time.Duration `json:"max_ns"`
	Rounds     []round       `json:"rounds"`
	LastError  string        `json:"last_error,omitempty"`

	// Bytes is the length of all successful responses' bodies, and
	// MedianMBps the median over rounds of the MB (10^6 bytes) of them
	// per second.
	Bytes      int64     `json:"bytes"`
	MedianMBps float64   `json:"median_mb_per_s"`
	RoundMBps  []float64 `json:"round_mb_per_s"`
	// RoundP50 and RoundP99 are each round's own percentiles, in µs.
	RoundP50 []float64 `json:"round_p50_us"`
	RoundP99 []float64 `json:"round_p99_us"`
	// Compared holds the target's ratios to each --compare target.
	Compared []Comparison `json:"compared,omitempty"`

	// VsBaseline is the median over rounds of this target's req/s
	// divided by the baseline's in the same round; RoundVsBaseline holds
	// the per-round ratios. Pairing within a round cancels drift that is
	// slower than a round (another build on the machine, say), which
	// dividing the two medians would not.
	VsBaseline      float64   `json:"vs_baseline,omitempty"`
	RoundVsBaseline []float64 `json:"round_vs_baseline,omitempty"`

	// CPUPerRequest is the CPU time the target's processes spent per
	// successful request, over the rounds where it is known, and
	// CPUVsBaseline the median of its per-round ratios to the
	// baseline's. Unlike req/s, CPU time hardly changes when something
	// else competes for the cores, so it tells overheads apart on a busy
	// machine too.
	CPUPerRequest      time.Duration `json:"cpu_per_request_ns,omitempty"`
	RoundCPUPerRequest []float64     `json:"round_cpu_per_request_us,omitempty"` // NaN-free: 0 where unknown
	CPUVsBaseline      float64       `json:"cpu_vs_baseline,omitempty"`
	RoundCPUVsBaseline []float64     `json:"round_cpu_vs_baseline,omitempty"`

	// The same for the plugin's processes alone (--plugin-pids).
	PluginCPUPerRequest      time.Duration `json:"plugin_cpu_per_request_ns,omitempty"`
	RoundPluginCPUPerRequest []float64     `json:"round_plugin_cpu_per_request_us,omitempty"`
	PluginCPUVsBaseline      float64       `json:"plugin_cpu_vs_baseline,omitempty"`
	RoundPluginCPUVsBaseline []float64     `json:"round_plugin_cpu_vs_baseline,omitempty"`

	// RoundOtherShare is, per round, the fraction of the machine's CPU
	// time that went neither to this target nor to loadgen.
	RoundOtherShare []float64 `json:"round_other_cpu_share,omitempty"`
}

func report(targets []*target, cfg config) Report {
	rep := Report{
		Path:        cfg.path,
		Concurrency: cfg.concurrency,
		Duration:    cfg.duration,
		Rounds:      cfg.rounds,
	}
	for _, t := range targets {
		rep.Targets = append(rep.Targets, summarize(t))
	}
	compareAll(&rep, cfg.compare)

	i := slices.IndexFunc(rep.Targets, func(t TargetReport) bool { return t.Label == cfg.baseline })
	if i < 0 {
		return rep
	}
	rep.Baseline = cfg.baseline
	base := rep.Targets[i]
	for i := range rep.Targets {
		t := &rep.Targets[i]
		t.RoundVsBaseline = pairedRatios(t.RoundRPS, base.RoundRPS)
		t.VsBaseline = median(t.RoundVsBaseline)
		t.RoundCPUVsBaseline = pairedRatios(t.RoundCPUPerRequest, base.RoundCPUPerRequest)
		t.CPUVsBaseline = median(t.RoundCPUVsBaseline)
		t.RoundPluginCPUVsBaseline = pairedRatios(t.RoundPluginCPUPerRequest, base.RoundPluginCPUPerRequest)
		t.PluginCPUVsBaseline = median(t.RoundPluginCPUVsBaseline)
	}
	return rep
}

// summarize sums up one target's rounds and samples.
func summarize(t *target) TargetReport {
	tr := TargetReport{
		Label:     t.label,
		Socket:    t.socket,
		PIDs:      t.pids,
		Errors:    t.errs,
		Rounds:    t.rounds,
		LastError: t.lastErr,
	}
	var elapsed, cpu, pluginCPU time.Duration
	var cpuOK, pluginOK int64
	for _, r := range t.rounds {
		tr.Requests += r.OK
		tr.Bytes += r.Bytes
		elapsed += r.Elapsed
		tr.RoundRPS = append(tr.RoundRPS, r.rate())
		tr.RoundMBps = append(tr.RoundMBps, r.mbps())
		tr.RoundP50 = append(tr.RoundP50, float64(r.P50)/float64(time.Microsecond))
		tr.RoundP99 = append(tr.RoundP99, float64(r.P99)/float64(time.Microsecond))
		perReq, ok := r.cpuPerRequest()
		if ok {
			cpu += r.CPU
			cpuOK += r.OK
		}
		if len(t.pluginPIDs) > 0 {
			us := 0.0
			if r.PluginCPU >= 0 && r.OK > 0 {
				pluginCPU += r.PluginCPU
				pluginOK += r.OK
				us = float64(r.PluginCPU) / float64(r.OK) / float64(time.Microsecond)
			}
			tr.RoundPluginCPUPerRequest = append(tr.RoundPluginCPUPerRequest, us)
		}
		if len(t.pids) > 0 {
			tr.RoundCPUPerRequest = append(tr.RoundCPUPerRequest, float64(perReq)/float64(time.Microsecond))
			share, _ := r.otherShare()
			tr.RoundOtherShare = append(tr.RoundOtherShare, share)
		}
	}
	if elapsed > 0 {
		tr.OverallRPS = float64(tr.Requests) / elapsed.Seconds()
	}
	if cpuOK > 0 {
		tr.CPUPerRequest = cpu / time.Duration(cpuOK)
	}
	if pluginOK > 0 {
		tr.PluginCPUPerRequest = pluginCPU / time.Duration(pluginOK)
	}
	tr.MedianRPS = median(tr.RoundRPS)
	tr.MedianMBps = median(tr.RoundMBps)
	slices.Sort(t.samples)
	tr.P50 = percentile(t.samples, 50)
	tr.P90 = percentile(t.samples, 90)
	tr.P99 = percentile(t.samples, 99)
	tr.Max = percentile(t.samples, 100)
	return tr
}

// pairedRatios returns xs[r]/ys[r] for every round r where both are known
// (positive). The lists differ in length only if the run stopped early.
func pairedRatios(xs, ys []float64) []float64 {
	var out []float64
	for r := range min(len(xs), len(ys)) {
		if xs[r] > 0 && ys[r] > 0 {
			out = append(out, xs[r]/ys[r])
		}
	}
	return out
}

// median returns the median of xs, or 0 for none. The median rather than
// the mean so that one round disturbed by something else on the machine
// does not move the result.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// percentile returns the nearest-rank p-th percentile of the sorted
// samples, or 0 for none.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(p/100*float64(len(sorted))+0.5) - 1
	rank = max(0, min(rank, len(sorted)-1))
	return sorted[rank]
}

func printTable(w io.Writer, rep Report) error {
	fmt.Fprintf(w, "GET %s  concurrency=%d  rounds=%d×%s (interleaved, order rotated and reversed)\n\n",
		rep.Path, rep.Concurrency, rep.Rounds, rep.Duration)
	withCPU := slices.ContainsFunc(rep.Targets, func(t TargetReport) bool { return len(t.PIDs) > 0 })
	withPlugin := slices.ContainsFunc(rep.Targets, func(t TargetReport) bool { return t.PluginCPUPerRequest > 0 })
	// Throughput is worth a column when responses are large (an image).
	withMBps := slices.ContainsFunc(rep.Targets, func(t TargetReport) bool {
		return t.Requests > 0 && t.Bytes/t.Requests >= 64<<10
	})
	base := cmp.Or(rep.Baseline, "baseline")

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "target\trequests\terrors\treq/s median\treq/s overall\t")
	if withMBps {
		fmt.Fprint(tw, "MB/s median\t")
	}
	fmt.Fprintf(tw, "p50\tp99\tvs %s\tper-round range\t", base)
	if withCPU {
		fmt.Fprintf(tw, "cpu/req\tcpu/req vs %s\tper-round range\t", base)
	}
	if withPlugin {
		fmt.Fprintf(tw, "plugin/proxy cpu/req\tvs %s\tper-round range\t", base)
	}
	fmt.Fprintln(tw)
	for _, t := range rep.Targets {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.0f\t%.0f\t", t.Label, t.Requests, t.Errors, t.MedianRPS, t.OverallRPS)
		if withMBps {
			fmt.Fprintf(tw, "%.1f\t", t.MedianMBps)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t", ms(t.P50), ms(t.P99), ratio(t.VsBaseline), spread(t.RoundVsBaseline))
		if withCPU {
			fmt.Fprintf(tw, "%s\t%s\t%s\t", us(t.CPUPerRequest), ratio(t.CPUVsBaseline), spread(t.RoundCPUVsBaseline))
		}
		if withPlugin {
			fmt.Fprintf(tw, "%s\t%s\t%s\t", us(t.PluginCPUPerRequest), ratio(t.PluginCPUVsBaseline), spread(t.RoundPluginCPUVsBaseline))
		}
		fmt.Fprintln(tw)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if err := printComparisons(w, rep, withMBps); err != nil {
		return err
	}
	printRounds(w, rep, withCPU, withPlugin)
	_, err := fmt.Fprintf(w, "\np50/p99: latency of every successful request; vs %s: median of per-round ratios\n", base)
	return err
}

// printRounds prints the per-round figures the medians come from.
func printRounds(w io.Writer, rep Report, withCPU, withPlugin bool) {
	width := 8
	for _, t := range rep.Targets {
		width = max(width, len(t.Label))
	}
	fmt.Fprintln(w, "\nreq/s per round:")
	for _, t := range rep.Targets {
		fmt.Fprintf(w, "  %-*s %s\n", width, t.Label, join(t.RoundRPS))
	}
	fmt.Fprintln(w, "\np99 µs per round:")
	for _, t := range rep.Targets {
		fmt.Fprintf(w, "  %-*s %s\n", width, t.Label, join(t.RoundP99))
	}
	if !withCPU {
		return
	}
	fmt.Fprintln(w, "\nCPU µs per request per round (the target's dockerd and plugin or proxy):")
	for _, t := range rep.Targets {
		fmt.Fprintf(w, "  %-*s %s\n", width, t.Label, join(t.RoundCPUPerRequest))
	}
	if withPlugin {
		fmt.Fprintln(w, "\nplugin/proxy CPU µs per request per round (that process alone):")
		for _, t := range rep.Targets {
			if len(t.RoundPluginCPUPerRequest) > 0 {
				fmt.Fprintf(w, "  %-*s %s\n", width, t.Label, join(t.RoundPluginCPUPerRequest))
			}
		}
	}
	fmt.Fprintln(w, "\nother processes' CPU per round, % of the machine (high: that turn was disturbed):")
	for _, t := range rep.Targets {
		pct := make([]float64, len(t.RoundOtherShare))
		for i, x := range t.RoundOtherShare {
			pct[i] = 100 * x
		}
		fmt.Fprintf(w, "  %-*s %s\n", width, t.Label, join(pct))
	}
}

// us formats a CPU time per request, "-" if unknown.
func us(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
}

func ratio(x float64) string {
	if x == 0 {
		return "-"
	}
	return fmt.Sprintf("%.3f", x)
}

func spread(xs []float64) string {
	if len(xs) == 0 {
		return "-"
	}
	return fmt.Sprintf("%.3f-%.3f", slices.Min(xs), slices.Max(xs))
}

func join(xs []float64) string {
	var parts []string
	for _, x := range xs {
		parts = append(parts, fmt.Sprintf("%.0f", x))
	}
	return strings.Join(parts, " ")
}

// ms formats d in milliseconds with enough digits for sub-millisecond
// latencies, which is what a local unix socket mostly gives.
func ms(d time.Duration) string {
	return fmt.Sprintf("%.3fms", float64(d)/float64(time.Millisecond))
}
