package rules

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"mime"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distribution/reference"
	"github.com/gorilla/mux"
	"github.com/opencontainers/go-digest"
)

// This file holds an independent reference of dockerd for the classifier to
// be checked against: a real net/http server with a gorilla/mux router wired
// the way dockerd's createMux wires it (moby api/server/server.go), every
// route of the daemon (v20.10 route tables, in initRouter's order)
// registered versioned and bare, fed raw request bytes over a unix socket.
// For each request that reaches a route it records two things:
//
//   - what dockerd's authorization middleware would send the plugin
//     (moby pkg/authorization/authz.go: RequestUri is r.RequestURI, headers
//     flattened to the LAST value of each, Authorization and registry auth
//     dropped, the body only when the FIRST Content-Type parses as
//     application/json and 0 < Content-Length < 1 MiB), and
//   - what the daemon's handler would do with it, parsed the way the
//     handlers parse it (r.ParseForm with httputils.ParseForm's "mime:"
//     leniency, filters.FromJSON, ExactMatch or GetBoolOrDefault for
//     dangling, BoolValue, the volume "all" filter and the < 1.42 rule),
//     under every daemon generation the plugin may sit in front of.
//
// The property: whenever the reference would prune or delete, the
// classifier's verdict is that operation or a more destructive reading of
// the same route (or unknown, which is always refused), and names the same
// image or plugin. Nothing here calls the classifier's own helpers: the
// reference must be able to disagree with them.

// refMaxBody is the largest body dockerd forwards to authorization plugins
// (moby pkg/authorization/authz.go maxBodySize).
const refMaxBody = 1 << 20

// daemonModel is one generation of dockerd whose parsing differs.
type daemonModel struct {
	name string
	// minAPI is the lowest API version the daemon serves. 25.0 raised the
	// default to 1.24 but DOCKER_MIN_API_VERSION lowers it to 1.12 again,
	// so 1.12 is what any daemon may accept.
	minAPI string
	// maxAPI is the daemon's own (and default) API version; "" for daemons
	// newer than any version a request can name.
	maxAPI string
	// defaultAPI is what a bare path gets.
	defaultAPI string
	// danglingExact: image prune reads dangling with ExactMatch (up to
	// 24.0) rather than GetBoolOrDefault (25.0 on).
	danglingExact bool
	// volumeAllFilter: volume prune has the "all" filter and adds
	// all=true itself below API 1.42 (23.0 on); before, every volume prune
	// removed named volumes and "all" was an invalid filter.
	volumeAllFilter bool
}

var daemonModels = []daemonModel{
	{name: "20.10", minAPI: "1.12", maxAPI: "1.41", defaultAPI: "1.41", danglingExact: true},
	{name: "23.0-24.0", minAPI: "1.12", maxAPI: "1.43", defaultAPI: "1.42", danglingExact: true, volumeAllFilter: true},
	{name: "25.0+", minAPI: "1.12", maxAPI: "", defaultAPI: "1.44", volumeAllFilter: true},
}

// refRoute is one route of the daemon's route table. kind names the handler;
// only the handlers that can remove what prune-guard guards are modelled,
// the others record that they ran and destroy nothing guarded.
type refRoute struct {
	method, path, kind string
}

// refRoutes is dockerd v20.10's route table in registration order
// (cmd/dockerd/daemon.go initRouter: checkpoint, container, image, system,
// volume, build, session, swarm, plugin, distribution, grpc, network).
// Registration order decides which of two matching routes runs, so a route
// of another router that could shadow a guarded one would show up here.
var refRoutes = []refRoute{
	// checkpoint
	{"GET", "/containers/{name:.*}/checkpoints", "other"},
	{"POST", "/containers/{name:.*}/checkpoints", "other"},
	{"DELETE", "/containers/{name}/checkpoints/{checkpoint}", "other"},
	// container
	{"HEAD", "/containers/{name:.*}/archive", "other"},
	{"GET", "/containers/json", "other"},
	{"GET", "/containers/{name:.*}/export", "other"},
	{"GET", "/containers/{name:.*}/changes", "other"},
	{"GET", "/containers/{name:.*}/json", "other"},
	{"GET", "/containers/{name:.*}/top", "other"},
	{"GET", "/containers/{name:.*}/logs", "other"},
	{"GET", "/containers/{name:.*}/stats", "other"},
	{"GET", "/containers/{name:.*}/attach/ws", "other"},
	{"GET", "/exec/{id:.*}/json", "other"},
	{"GET", "/containers/{name:.*}/archive", "other"},
	{"POST", "/containers/create", "other"},
	{"POST", "/containers/{name:.*}/kill", "other"},
	{"POST", "/containers/{name:.*}/pause", "other"},
	{"POST", "/containers/{name:.*}/unpause", "other"},
	{"POST", "/containers/{name:.*}/restart", "other"},
	{"POST", "/containers/{name:.*}/start", "other"},
	{"POST", "/containers/{name:.*}/stop", "other"},
	{"POST", "/containers/{name:.*}/wait", "other"},
	{"POST", "/containers/{name:.*}/resize", "other"},
	{"POST", "/containers/{name:.*}/attach", "other"},
	{"POST", "/containers/{name:.*}/copy", "other"},
	{"POST", "/containers/{name:.*}/exec", "other"},
	{"POST", "/exec/{name:.*}/start", "other"},
	{"POST", "/exec/{name:.*}/resize", "other"},
	{"POST", "/containers/{name:.*}/rename", "other"},
	{"POST", "/containers/{name:.*}/update", "other"},
	{"POST", "/containers/prune", "container-prune"},
	{"POST", "/commit", "other"},
	{"PUT", "/containers/{name:.*}/archive", "other"},
	{"DELETE", "/containers/{name:.*}", "other"},
	// image
	{"GET", "/images/json", "other"},
	{"GET", "/images/search", "other"},
	{"GET", "/images/get", "other"},
	{"GET", "/images/{name:.*}/get", "other"},
	{"GET", "/images/{name:.*}/history", "other"},
	{"GET", "/images/{name:.*}/json", "other"},
	{"POST", "/images/load", "other"},
	{"POST", "/images/create", "image-create"},
	{"POST", "/images/{name:.*}/push", "other"},
	{"POST", "/images/{name:.*}/tag", "other"},
	{"POST", "/images/prune", "image-prune"},
	{"DELETE", "/images/{name:.*}", "image-delete"},
	// system
	{"OPTIONS", "/{anyroute:.*}", "other"},
	{"GET", "/_ping", "other"},
	{"HEAD", "/_ping", "other"},
	{"GET", "/events", "other"},
	{"GET", "/info", "other"},
	{"GET", "/version", "other"},
	{"GET", "/system/df", "other"},
	{"POST", "/auth", "other"},
	// volume
	{"GET", "/volumes", "other"},
	{"GET", "/volumes/{name:.*}", "other"},
	{"POST", "/volumes/create", "other"},
	{"POST", "/volumes/prune", "volume-prune"},
	{"DELETE", "/volumes/{name:.*}", "other"},
	// build
	{"POST", "/build", "other"},
	{"POST", "/build/prune", "build-prune"},
	{"POST", "/build/cancel", "other"},
	// session
	{"POST", "/session", "buildkit-stream"},
	// swarm
	{"GET", "/swarm", "other"},
	{"GET", "/swarm/unlockkey", "other"},
	{"POST", "/swarm/init", "other"},
	{"POST", "/swarm/join", "other"},
	{"POST", "/swarm/leave", "other"},
	{"POST", "/swarm/update", "other"},
	{"POST", "/swarm/unlock", "other"},
	{"GET", "/services", "other"},
	{"GET", "/services/{id}", "other"},
	{"POST", "/services/create", "other"},
	{"POST", "/services/{id}/update", "other"},
	{"DELETE", "/services/{id}", "other"},
	{"GET", "/services/{id}/logs", "other"},
	{"GET", "/nodes", "other"},
	{"GET", "/nodes/{id}", "other"},
	{"DELETE", "/nodes/{id}", "other"},
	{"POST", "/nodes/{id}/update", "other"},
	{"GET", "/tasks", "other"},
	{"GET", "/tasks/{id}", "other"},
	{"GET", "/tasks/{id}/logs", "other"},
	{"GET", "/secrets", "other"},
	{"POST", "/secrets/create", "other"},
	{"DELETE", "/secrets/{id}", "other"},
	{"GET", "/secrets/{id}", "other"},
	{"POST", "/secrets/{id}/update", "other"},
	{"GET", "/configs", "other"},
	{"POST", "/configs/create", "other"},
	{"DELETE", "/configs/{id}", "other"},
	{"GET", "/configs/{id}", "other"},
	{"POST", "/configs/{id}/update", "other"},
	// plugin
	{"GET", "/plugins", "other"},
	{"GET", "/plugins/{name:.*}/json", "other"},
	{"GET", "/plugins/privileges", "other"},
	{"DELETE", "/plugins/{name:.*}", "plugin-named"},
	{"POST", "/plugins/{name:.*}/enable", "plugin-named"},
	{"POST", "/plugins/{name:.*}/disable", "plugin-named"},
	{"POST", "/plugins/pull", "plugin-query"},
	{"POST", "/plugins/{name:.*}/push", "other"},
	{"POST", "/plugins/{name:.*}/upgrade", "plugin-named"},
	{"POST", "/plugins/{name:.*}/set", "plugin-named"},
	{"POST", "/plugins/create", "plugin-query"},
	// distribution
	{"GET", "/distribution/{name:.*}/json", "other"},
	// grpc
	{"POST", "/grpc", "buildkit-stream"},
	// network
	{"GET", "/networks", "other"},
	{"GET", "/networks/", "other"},
	{"GET", "/networks/{id:.+}", "other"},
	{"POST", "/networks/create", "other"},
	{"POST", "/networks/{id:.*}/connect", "other"},
	{"POST", "/networks/{id:.*}/disconnect", "other"},
	{"POST", "/networks/prune", "network-prune"},
	{"DELETE", "/networks/{id:.*}", "other"},
}

// refCall is one request that reached a route: what the plugin is told, and
// what the daemon does.
type refCall struct {
	view    Request
	verdict refVerdict
}

// refVerdict is what the daemon's handler does with a request, under the
// most destructive of the daemon generations.
type refVerdict struct {
	// route is the handler kind that ran.
	route string
	// op is the guarded operation the daemon performs; OpOther when it
	// performs none (another handler, or every generation refuses the
	// parameters).
	op Operation
	// target is the image or plugin name the handler acts on.
	target string
	// labelFilters holds, for each daemon generation that performs op on
	// a label-filtered prune, the label filter values it selects objects
	// by (every one must be on an object for it to go); a generation that
	// removes objects whatever their labels contributes an empty set.
	labelFilters [][]string
	// why explains op, for failure messages.
	why string
	// versionRefused is set when only the version middleware, which runs
	// after the authorization middleware, kept the handler from acting:
	// the plugin is asked all the same and cannot know the daemon's range.
	versionRefused bool
}

type collectorKey struct{}

// collector gathers the calls made on one client connection.
type collector struct {
	mu    sync.Mutex
	calls []refCall
}

func (c *collector) add(call refCall) {
	c.mu.Lock()
	c.calls = append(c.calls, call)
	c.mu.Unlock()
}

// refDaemon is the running reference daemon.
type refDaemon struct {
	sock    string
	current atomic.Pointer[collector]
	mu      sync.Mutex // one request at a time: current names its collector
}

// startReference serves the reference router on a unix socket until tb ends.
func startReference(tb testing.TB) *refDaemon {
	tb.Helper()
	// Not tb.TempDir(): a unix socket path holds at most 107 bytes, and
	// the test's name is in TempDir's.
	dir, err := os.MkdirTemp("", "pgref")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	ref := &refDaemon{sock: filepath.Join(dir, "d.sock")}
	l, err := net.Listen("unix", ref.sock)
	if err != nil {
		tb.Fatal(err)
	}
	srv := &http.Server{
		Handler:           ref.router(),
		ReadHeaderTimeout: 5 * time.Second,
		// Connections are accepted one at a time, after the client has set
		// the collector, so the collector current at accept time is the
		// connection's.
		ConnContext: func(ctx context.Context, _ net.Conn) context.Context {
			return context.WithValue(ctx, collectorKey{}, ref.current.Load())
		},
		// The server's own complaints (a ';' in a query) are expected.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	go srv.Serve(l)
	tb.Cleanup(func() { srv.Close() })
	return ref
}

// router builds the daemon's mux as createMux does.
func (ref *refDaemon) router() *mux.Router {
	m := mux.NewRouter()
	for _, r := range refRoutes {
		h := ref.handler(r.kind)
		m.Path("/v{version:[0-9.]+}" + r.path).Methods(r.method).Handler(h)
		m.Path(r.path).Methods(r.method).Handler(h)
	}
	// Unmatched requests get a 404 without the authorization middleware,
	// so the plugin is never asked about them.
	notFound := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "page not found", http.StatusNotFound)
	})
	m.HandleFunc("/v{version:[0-9.]+}/{path:.*}", notFound)
	m.NotFoundHandler = notFound
	m.MethodNotAllowedHandler = notFound
	return m
}

// handler is makeHTTPHandler plus the authorization middleware plus the
// route's handler: it records the plugin's view, then what the handler
// does.
func (ref *refDaemon) handler(kind string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		col, _ := r.Context().Value(collectorKey{}).(*collector)
		view, ok := authzView(r)
		if !ok {
			// dockerd fails the request before asking the plugin.
			http.Error(w, "reading the body for authorization failed", http.StatusInternalServerError)
			return
		}
		v := runHandler(kind, r)
		if col != nil {
			col.add(refCall{view: view, verdict: v})
		}
		w.WriteHeader(http.StatusOK)
	})
}

// authzView is what dockerd's authorization middleware sends the plugin
// (moby pkg/authorization/authz.go AuthZRequest). ok is false when dockerd
// would fail the request before asking the plugin (a short body). It leaves
// r.Body readable for the handler, as drainBody does.
func authzView(r *http.Request) (Request, bool) {
	view := Request{Method: r.Method, URI: r.RequestURI, Headers: map[string]string{}}
	for k, vs := range r.Header {
		if k == "Authorization" || k == "X-Registry-Auth" || k == "X-Registry-Config" {
			continue
		}
		for _, v := range vs {
			view.Headers[k] = v
		}
	}
	if refSendBody(r.RequestURI, r.Header) && r.ContentLength > 0 && r.ContentLength < refMaxBody {
		br := bufio.NewReaderSize(r.Body, refMaxBody)
		_, err := br.Peek(refMaxBody)
		r.Body = io.NopCloser(br)
		switch {
		case err == nil:
			// Larger than the limit: not forwarded.
		case errors.Is(err, io.EOF):
			view.Body = BodyForwarded
		default:
			return view, false
		}
	}
	return view, true
}

// refSendBody is authz.go's sendBody: not for /auth, and only when the
// daemon's own (first) Content-Type parses as application/json.
func refSendBody(uri string, h http.Header) bool {
	if strings.HasSuffix(uri, "/auth") {
		return false
	}
	ct, _, err := mime.ParseMediaType(h.Get("Content-Type"))
	return err == nil && ct == "application/json"
}

// runHandler computes what the route's handler does under each daemon
// generation and returns the most destructive outcome.
func runHandler(kind string, r *http.Request) refVerdict {
	v := refVerdict{route: kind}
	switch kind {
	case "other":
		return v
	case "buildkit-stream":
		v.op = OpBuildKitStream
		return v
	case "plugin-named":
		v.op, v.target = OpPluginChange, mux.Vars(r)["name"]
		return v
	case "plugin-query":
		v.op = OpPluginChange
		return v
	}

	// Every remaining handler starts with httputils.ParseForm: net/http's
	// ParseForm (form body values first, then the query), failing the
	// request on any error except one prefixed "mime:" (a malformed
	// Content-Type parameter), after which the values that parsed are
	// used.
	if err := r.ParseForm(); err != nil && !strings.HasPrefix(err.Error(), "mime:") {
		v.why = "ParseForm fails: " + err.Error()
		return v
	}
	form := r.Form
	version := mux.Vars(r)["version"]

	if kind == "image-create" {
		return refCreate(v, version, form)
	}
	if kind == "image-delete" {
		name := mux.Vars(r)["name"]
		if strings.TrimSpace(name) == "" {
			v.why = "blank image name"
			return v
		}
		// Only the version middleware can still refuse it.
		for _, m := range daemonModels {
			if m.serves(version) {
				v.op, v.target, v.why = OpImageDelete, name, "daemon "+m.name+" deletes "+name
				return v
			}
		}
		v.why = "no daemon serves API version " + version
		return v
	}

	var whys []string
	for _, m := range daemonModels {
		if !m.serves(version) {
			whys = append(whys, m.name+": API version "+version+" refused")
			continue
		}
		op, labels, why := m.run(kind, version, form)
		whys = append(whys, m.name+": "+why)
		if rank(op) > rank(v.op) {
			v.op = op
		}
		if op != OpOther && kind != "build-prune" {
			v.labelFilters = append(v.labelFilters, labels)
		}
	}
	v.why = strings.Join(whys, "; ")
	return v
}

// refCreate is postImagesCreate (moby api/server/router/image at v20.10.24,
// v26.1.5, v28.5.2; daemon/server/router/image at v2.0.0-beta.24, the same
// at every generation): r.Form.Get("fromImage") non-empty pulls, the
// reference parsed with reference.ParseNormalizedNamed after dropping a
// trailing ":", then tagged, or pinned when the tag parameter parses as a
// digest; a reference that does not parse, or is "scratch", is refused.
func refCreate(v refVerdict, version string, form url.Values) refVerdict {
	img := form.Get("fromImage")
	if img == "" {
		v.why = "import (no fromImage)"
		return v
	}
	named, err := reference.ParseNormalizedNamed(strings.TrimSuffix(img, ":"))
	if err != nil {
		v.why = "fromImage refused: " + err.Error()
		return v
	}
	if tag := form.Get("tag"); tag != "" {
		if d, derr := digest.Parse(tag); derr == nil {
			named, err = reference.WithDigest(reference.TrimNamed(named), d)
		} else {
			named, err = reference.WithTag(named, tag)
		}
		if err != nil {
			v.why = "tag refused: " + err.Error()
			return v
		}
	}
	if reference.FamiliarName(named) == "scratch" {
		v.why = "'scratch' is a reserved name"
		return v
	}
	for _, m := range daemonModels {
		if m.serves(version) {
			v.op, v.target, v.why = OpImagePull, named.String(), "daemon "+m.name+" pulls "+named.String()
			return v
		}
	}
	v.why, v.versionRefused = "no daemon serves API version "+version, true
	return v
}

// rank orders one route's outcomes by how much they remove.
func rank(op Operation) int {
	switch op {
	case OpOther:
		return 0
	case OpImagePruneAll, OpBuildPruneAll, OpVolumePruneAll:
		return 2
	}
	return 1
}

// serves is the version middleware (moby api/server/middleware/version.go),
// which runs after the authorization middleware: a bare path gets the
// daemon's default version.
func (m daemonModel) serves(version string) bool {
	if version == "" {
		version = m.defaultAPI
	}
	if mobyCompare(version, m.minAPI) < 0 {
		return false
	}
	return m.maxAPI == "" || mobyCompare(version, m.maxAPI) <= 0
}

// run is one generation's prune handler and backend: what it removes, and the
// positive label filters every removed object must carry.
func (m daemonModel) run(kind, version string, form map[string][]string) (Operation, []string, string) {
	get := func(k string) string {
		if vs := form[k]; len(vs) > 0 {
			return vs[0]
		}
		return ""
	}
	f, err := mobyFromJSON(get("filters"))
	if err != nil {
		return OpOther, nil, "invalid filters: " + err.Error()
	}
	op, why := m.backend(kind, version, f, get)
	return op, f.positiveLabels(), why
}

// positiveLabels is what MatchKVList("label", …) demands of an object (every
// key of the value set, whatever its bool). The containerd image store
// reads a "KEY!" key as a negation (setupLabelFilter), which demands nothing.
func (a mobyArgs) positiveLabels() []string {
	var out []string
	for v := range a["label"] {
		if k, _, _ := strings.Cut(v, "="); strings.HasSuffix(k, "!") {
			continue
		}
		out = append(out, v)
	}
	return out
}

// backend is the handler's own parameter handling and the backend's filter
// validation.
func (m daemonModel) backend(kind, version string, f mobyArgs, get func(string) string) (Operation, string) {
	switch kind {
	case "image-prune":
		if bad := f.invalidKey("dangling", "label", "label!", "until"); bad != "" {
			return OpOther, "invalid filter " + bad
		}
		if m.danglingExact {
			// daemon/images/image_prune.go up to 24.0.
			if f.contains("dangling") {
				if f.exactMatch("dangling", "false") || f.exactMatch("dangling", "0") {
					return OpImagePruneAll, "dangling ExactMatch false"
				}
				if !f.exactMatch("dangling", "true") && !f.exactMatch("dangling", "1") {
					return OpOther, "invalid dangling value"
				}
			}
			return OpImagePrune, "dangling only"
		}
		danglingOnly, err := f.getBoolOrDefault("dangling", true)
		if err != nil {
			return OpOther, err.Error()
		}
		if !danglingOnly {
			return OpImagePruneAll, "GetBoolOrDefault dangling false"
		}
		return OpImagePrune, "dangling only"

	case "build-prune":
		if ks := get("keep-storage"); ks != "" {
			if _, err := strconv.Atoi(ks); err != nil {
				return OpOther, "invalid keep-storage"
			}
		}
		if mobyBoolValue(get("all")) {
			return OpBuildPruneAll, fmt.Sprintf("all=%q is true", get("all"))
		}
		return OpBuildPrune, fmt.Sprintf("all=%q is false", get("all"))

	case "volume-prune":
		if !m.volumeAllFilter {
			// Every 20.10 volume prune removes named volumes too; "all"
			// is not an accepted filter there.
			if bad := f.invalidKey("label", "label!"); bad != "" {
				return OpOther, "invalid filter " + bad
			}
			return OpVolumePruneAll, "every volume prune removes named volumes"
		}
		if version == "" {
			version = m.defaultAPI
		}
		if mobyCompare(version, "1.42") < 0 {
			// api/server/router/volume: pruneFilters.Add("all", "true").
			if vals, ok := f["all"]; ok && vals == nil {
				return OpOther, "Add to a null all filter panics"
			}
			f.add("all", "true")
		}
		// volume/service/convert.go withPrune, then filtersToBy's Validate.
		var all []string
		for k := range f["all"] {
			all = append(all, k)
		}
		named := false
		switch {
		case len(all) > 1:
			return OpOther, "more than one all value"
		case len(all) == 1:
			b, err := strconv.ParseBool(all[0])
			if err != nil {
				return OpOther, "all is not a bool"
			}
			named = b
		}
		if bad := f.invalidKey("label", "label!", "all"); bad != "" {
			return OpOther, "invalid filter " + bad
		}
		if named {
			return OpVolumePruneAll, "named volumes too (API " + version + ")"
		}
		return OpVolumePrune, "anonymous volumes only (API " + version + ")"

	case "container-prune", "network-prune":
		if bad := f.invalidKey("until", "label", "label!"); bad != "" {
			return OpOther, "invalid filter " + bad
		}
		if kind == "container-prune" {
			return OpContainerPrune, "prunes stopped containers"
		}
		return OpNetworkPrune, "prunes unused networks"
	}
	return OpOther, "unmodelled route " + kind
}

// mobyArgs is moby's filters.Args.
type mobyArgs map[string]map[string]bool

// mobyFromJSON is filters.FromJSON: the map form, else the legacy map of
// lists.
func mobyFromJSON(p string) (mobyArgs, error) {
	args := mobyArgs{}
	if p == "" {
		return args, nil
	}
	var fields map[string]map[string]bool
	if err := json.Unmarshal([]byte(p), &fields); err == nil {
		for k, v := range fields {
			args[k] = v
		}
		return args, nil
	}
	var legacy map[string][]string
	if err := json.Unmarshal([]byte(p), &legacy); err != nil {
		return nil, errors.New("invalid filter JSON")
	}
	for k, vs := range legacy {
		m := map[string]bool{}
		for _, v := range vs {
			m[v] = true
		}
		args[k] = m
	}
	return args, nil
}

func (a mobyArgs) contains(k string) bool { _, ok := a[k]; return ok }

// exactMatch is Args.ExactMatch: true when the key is absent or has no
// values, else the value's bool.
func (a mobyArgs) exactMatch(k, v string) bool {
	vals, ok := a[k]
	if !ok || len(vals) == 0 {
		return true
	}
	return vals[v]
}

// getBoolOrDefault is Args.GetBoolOrDefault (25.0 on).
func (a mobyArgs) getBoolOrDefault(k string, def bool) (bool, error) {
	vals, ok := a[k]
	if !ok {
		return def, nil
	}
	if len(vals) == 0 {
		return def, errors.New("invalid filter " + k + ": no value")
	}
	isFalse := vals["0"] || vals["false"]
	isTrue := vals["1"] || vals["true"]
	if isFalse == isTrue {
		return def, errors.New("invalid filter " + k + ": not one bool")
	}
	return isTrue, nil
}

func (a mobyArgs) add(k, v string) {
	if _, ok := a[k]; ok {
		a[k][v] = true
		return
	}
	a[k] = map[string]bool{v: true}
}

// invalidKey is Args.Validate: the first key not accepted, or "".
func (a mobyArgs) invalidKey(accepted ...string) string {
	for k := range a {
		ok := false
		for _, acc := range accepted {
			ok = ok || k == acc
		}
		if !ok {
			return strconv.Quote(k)
		}
	}
	return ""
}

// mobyBoolValue is httputils.BoolValue.
func mobyBoolValue(s string) bool {
	s = strings.ToLower(strings.TrimSpace(s))
	return !(s == "" || s == "0" || s == "no" || s == "false" || s == "none")
}

// mobyCompare is api/types/versions.compare: dot-separated components
// compared as integers, one that does not parse counting as 0.
func mobyCompare(v1, v2 string) int {
	p1, p2 := strings.Split(v1, "."), strings.Split(v2, ".")
	for i := 0; i < len(p1) || i < len(p2); i++ {
		var a, b int
		if i < len(p1) {
			a, _ = strconv.Atoi(p1[i])
		}
		if i < len(p2) {
			b, _ = strconv.Atoi(p2[i])
		}
		if a != b {
			if a > b {
				return 1
			}
			return -1
		}
	}
	return 0
}

// refTimeout bounds one exchange with the reference server.
const refTimeout = 10 * time.Second

// do sends raw to the reference and returns the calls it made, once the
// server has answered every request on the connection and closed it.
func (ref *refDaemon) do(t testing.TB, raw []byte) []refCall {
	t.Helper()
	ref.mu.Lock()
	defer ref.mu.Unlock()
	col := &collector{}
	ref.current.Store(col)
	c, err := net.DialTimeout("unix", ref.sock, refTimeout)
	if err != nil {
		t.Fatalf("dial reference: %v", err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(refTimeout)); err != nil {
		t.Fatal(err)
	}
	// Written from a goroutine: the server may answer (and close) before it
	// has read everything.
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(raw)
		c.(*net.UnixConn).CloseWrite()
		werr <- err
	}()
	if _, err := io.Copy(io.Discard, c); err != nil && !isConnReset(err) {
		t.Fatalf("reading the reference's answers: %v (request %q)", err, truncate(raw, 300))
	}
	<-werr
	col.mu.Lock()
	defer col.mu.Unlock()
	return append([]refCall(nil), col.calls...)
}

func isConnReset(err error) bool {
	return errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "connection reset")
}

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}

// rawRequest assembles one HTTP/1.1 request. headers is one "Key: value"
// per line and may repeat keys; framing 0 adds a Content-Length (unless the
// headers hold one), 1 sends the body chunked, 2 sends it with no framing
// header at all.
func rawRequest(method, target, headers string, body []byte, framing byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\n", method, target)
	hasHost, hasLength := false, false
	for _, line := range strings.Split(headers, "\n") {
		line = strings.TrimSuffix(line, "\r")
		if line == "" {
			continue
		}
		k, _, _ := strings.Cut(line, ":")
		switch textproto.CanonicalMIMEHeaderKey(strings.TrimSpace(k)) {
		case "Host":
			hasHost = true
		case "Content-Length":
			hasLength = true
		}
		b.WriteString(line + "\r\n")
	}
	if !hasHost {
		b.WriteString("Host: docker\r\n")
	}
	switch framing % 3 {
	case 0:
		if !hasLength {
			fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
		}
		b.WriteString("\r\n")
		b.Write(body)
	case 1:
		b.WriteString("Transfer-Encoding: chunked\r\n\r\n")
		if len(body) > 0 {
			fmt.Fprintf(&b, "%x\r\n", len(body))
			b.Write(body)
			b.WriteString("\r\n")
		}
		b.WriteString("0\r\n\r\n")
	default:
		b.WriteString("\r\n")
		b.Write(body)
	}
	return b.Bytes()
}

// acceptable lists, for what the daemon does, the classifications that
// deny at least as much: the same operation or a more destructive reading
// of the same route. OpUnknown is always acceptable (always refused).
var acceptable = map[Operation][]Operation{
	OpImagePrune:     {OpImagePrune, OpImagePruneAll},
	OpImagePruneAll:  {OpImagePruneAll},
	OpImageDelete:    {OpImageDelete},
	OpBuildPrune:     {OpBuildPrune, OpBuildPruneAll},
	OpBuildPruneAll:  {OpBuildPruneAll},
	OpContainerPrune: {OpContainerPrune},
	OpNetworkPrune:   {OpNetworkPrune},
	OpVolumePrune:    {OpVolumePrune, OpVolumePruneAll},
	OpVolumePruneAll: {OpVolumePruneAll},
	OpPluginChange:   {OpPluginChange},
	OpBuildKitStream: {OpBuildKitStream},
}

// violation says how the classification falls short of what the daemon
// does, or "" when it does not.
func violation(got Classification, want refVerdict) string {
	if want.route == "image-create" {
		return pullViolation(got, want)
	}
	if want.op == OpOther || got.Op == OpUnknown {
		return ""
	}
	ok := false
	for _, op := range acceptable[want.op] {
		ok = ok || got.Op == op
	}
	if !ok {
		return fmt.Sprintf("the daemon performs %s but the classifier says %s", want.op, got.Op)
	}
	if (want.op == OpImageDelete || (want.op == OpPluginChange && want.route == "plugin-named")) && got.Target != want.target {
		return fmt.Sprintf("the daemon acts on %q but the classifier names %q", want.target, got.Target)
	}
	// A scope the classifier claims must be demanded by the daemon of every
	// object it removes, under every generation; otherwise a scoped prune
	// could take a job's objects that lack the label.
	for _, daemon := range want.labelFilters {
		for _, sel := range got.Scope {
			if !impliedBy(sel, daemon) {
				return fmt.Sprintf("the classifier scopes the prune to %s, but the daemon removes objects by label filter %q, which does not demand it", sel, daemon)
			}
		}
	}
	return ""
}

// pullViolation holds the count of pulls to the daemon: a pull is counted
// exactly when the daemon pulls, naming what it pulls, unless the
// classifier says it cannot tell which image (a doubt), or only the
// version middleware refused it.
func pullViolation(got Classification, want refVerdict) string {
	switch {
	case got.Op == OpUnknown:
		return ""
	case want.op == OpImagePull && got.Op != OpImagePull:
		return fmt.Sprintf("the daemon pulls %s but the classifier says %s", want.target, got.Op)
	case want.op == OpImagePull && got.Doubt == "" && got.Target != want.target:
		return fmt.Sprintf("the daemon pulls %q but the classifier counts %q", want.target, got.Target)
	case want.op == OpOther && got.Op == OpImagePull && got.Doubt == "" && !want.versionRefused:
		return fmt.Sprintf("the daemon pulls nothing (%s) but the classifier counts a pull of %q", want.why, got.Target)
	case got.Op != OpImagePull && got.Op != OpOther:
		return fmt.Sprintf("POST /images/create classified %s", got.Op)
	}
	return ""
}

// impliedBy reports whether every object carrying all of filters carries
// sel: "k" follows from "k" or "k=v", "k=v" only from "k=v".
func impliedBy(sel string, filters []string) bool {
	k, _, hasValue := strings.Cut(sel, "=")
	for _, f := range filters {
		fk, _, fHasValue := strings.Cut(f, "=")
		if f == sel || (!hasValue && fk == k && fHasValue) {
			return true
		}
	}
	return false
}

// FuzzClassifyAgainstReference checks the classifier against the reference
// daemon: for any raw request, when the daemon would prune or delete, the
// classifier must say so (or something more destructive on the same route),
// never "harmless". The seed corpus is testdata/fuzz/FuzzClassifyAgainstReference
// (see TestReferenceCorpusIsCurrent); plain "go test" runs it.
func FuzzClassifyAgainstReference(f *testing.F) {
	ref := startReference(f)
	c := NewClassifier()
	f.Fuzz(func(t *testing.T, method, target, headers string, body []byte, framing byte) {
		if len(body) > 256<<10 || len(target) > 64<<10 || len(headers) > 64<<10 {
			t.Skip("larger than the inputs worth a round trip")
		}
		raw := rawRequest(method, target, headers, body, framing)
		for _, call := range ref.do(t, raw) {
			got := c.Classify(call.view)
			if msg := violation(got, call.verdict); msg != "" {
				t.Errorf("%s\nrequest:  %q\nplugin sees: %s %q headers %q body %v\ndaemon:   %s (%s)\nclassifier: %+v",
					msg, truncate(raw, 600), call.view.Method, call.view.URI, call.view.Headers, call.view.Body,
					call.verdict.op, call.verdict.why, got)
			}
		}
	})
}
