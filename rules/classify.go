package rules

import (
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"

	"github.com/gorilla/mux"
)

// Request is what dockerd tells an authorization plugin about an API request
// (moby daemon/pkg/authorization/authz.go).
type Request struct {
	// Method is r.Method as the daemon received it.
	Method string
	// URI is the raw r.RequestURI: not decoded, not cleaned, query included,
	// possibly absolute-form (http://host/v1.41/...).
	URI string
	// Headers holds the request's headers. From an authorization plugin
	// call it holds, per header, the LAST value the client sent (the daemon
	// itself reads the first), with Authorization and registry auth
	// stripped; from a proxy (BodyProxied) the first, the daemon's own.
	Headers map[string]string
	// Body says what the caller knows of the request body, which decides
	// whether the daemon could read form values the caller did not see.
	Body BodyView
	// GRPC is set for a gRPC call, which only a proxy sees: an HTTP/2
	// request whose Content-Type starts with application/grpc, which
	// dockerd 29.2+ hands to its gRPC server instead of its REST router,
	// or a call inside the POST /grpc tunnel. URI is then the call's path,
	// /package.Service/Method, and Method is "POST"; Headers and Body are
	// not read.
	GRPC *GRPCCall
}

// ReadHeaders returns the names of the request headers Classify reads; a
// transport may drop every other header.
func ReadHeaders() []string { return []string{"Content-Type", "Content-Length"} }

// BodyView is what the caller of Classify knows of a request's body.
type BodyView uint8

const (
	// BodyHidden: an authorization plugin call without the body. dockerd
	// forwards a body only when its Content-Type is application/json and
	// the body is under its bound (1 MiB; 4 MiB from 29.3.1), so a hidden
	// body may be a form the daemon reads.
	BodyHidden BodyView = iota
	// BodyForwarded: dockerd forwarded the body to the plugin, so the
	// daemon's Content-Type was application/json: it reads no form from
	// it.
	BodyForwarded
	// BodyProxied: a proxy in front of the daemon holds the request, so
	// Headers are the daemon's own (the first value of each) and say
	// exactly whether the daemon reads a form from the body.
	BodyProxied
)

// Classification is what the daemon would do with a request.
type Classification struct {
	Op Operation
	// Target is the decoded image or plugin name the request names.
	Target string
	// Force is an image delete's force parameter.
	Force bool
	// APIVersion is the version in the path, "" for a bare path.
	APIVersion string
	// Scope holds a prune's positive label filters (KEY or KEY=VALUE),
	// sorted: the daemon removes only objects that carry all of them. Nil
	// for an unscoped prune, for build prunes (whose label filter the
	// daemon ignores), and whenever the classification is in doubt.
	Scope []string
	// GRPCMethod is a gRPC call's method as the daemon's gRPC server
	// routes it, /package.Service/Method (the decoded path); "" for a
	// REST request.
	GRPCMethod string
	// Doubt says why the classifier chose the most destructive reading it
	// could not rule out; "" when the classification is certain.
	Doubt string
}

// Classifier classifies requests. It is safe for concurrent use.
type Classifier struct {
	router *mux.Router
}

// NewClassifier returns a classifier with the daemon's route templates.
func NewClassifier() *Classifier {
	return &Classifier{router: newRouter()}
}

// Classify returns what the daemon would do with r. It never fails: what it
// cannot establish it reports as the most destructive possibility, with a
// Doubt that says why.
func (c *Classifier) Classify(r Request) Classification {
	if r.GRPC != nil {
		return classifyGRPC(r.URI, r.GRPC)
	}
	// Every guarded route is a POST or a DELETE, and mux matches methods
	// exactly, so reads (the bulk of all traffic) stop here without
	// allocating.
	switch {
	case r.Method == "":
		return Classification{Op: OpUnknown, Doubt: "the plugin call carried no request method"}
	case r.URI == "":
		return Classification{Op: OpUnknown, Doubt: "the plugin call carried no request URI"}
	case r.Method != http.MethodPost && r.Method != http.MethodDelete:
		return Classification{}
	}
	// Go's server builds r.URL with ParseRequestURI (net/http, readRequest).
	// A target it rejects never reaches dockerd's handlers, so a plugin call
	// carrying one did not come from dockerd: refuse to guess.
	u, err := url.ParseRequestURI(r.URI)
	if err != nil {
		return Classification{Op: OpUnknown, Doubt: "the request URI does not parse: " + err.Error()}
	}
	kind, vars, ok := c.route(r.Method, u)
	if !ok {
		return Classification{}
	}
	if kind == 0 {
		return Classification{Op: OpUnknown, Doubt: "internal: route without a kind"}
	}
	cl := Classification{APIVersion: vars["version"]}
	form := parseForm(u.RawQuery)
	switch kind {
	case kindImageDelete:
		cl.Op = OpImageDelete
		cl.Target = vars["name"]
		// DELETE bodies are never form-parsed (net/http ParseForm reads
		// bodies of POST, PUT and PATCH only).
		cl.Force = boolValue(form.values.Get("force"))
	case kindPluginNamed:
		cl.Op, cl.Target = OpPluginChange, vars["name"]
	case kindPluginQuery:
		cl.Op, cl.Target = OpPluginChange, form.values.Get("name")
	case kindBuildKitStream:
		cl.Op = OpBuildKitStream
	case kindImageCreate:
		classifyCreate(&cl, r, form)
	default:
		classifyPrune(&cl, kind, r, form)
	}
	return cl
}

// route returns the guarded route dockerd's router would run for a POST or
// DELETE of u, and its path variables; ok is false when no guarded route
// would run. kind is 0 for a route registered without one (a bug).
func (c *Classifier) route(method string, u *url.URL) (kind routeKind, vars map[string]string, ok bool) {
	if !mayBeGuarded(u.Path) {
		return 0, nil, false
	}
	// dockerd's mux redirects unclean paths (//x, /a/../x) and runs nothing.
	if cleanPath(u.Path) != u.Path {
		return 0, nil, false
	}
	var m mux.RouteMatch
	if !c.router.Match(&http.Request{Method: method, URL: u}, &m) || m.MatchErr != nil {
		return 0, nil, false
	}
	kind, _ = m.Handler.(routeKind)
	return kind, m.Vars, true
}

// classifyPrune reads a prune route's parameters, which decide how much it
// removes and which objects it may touch. What the daemon may read from a
// place the plugin cannot see makes the reading the worst one, unscoped.
func classifyPrune(cl *Classification, kind routeKind, r Request, form form) {
	worst := worstReading(kind)
	if why := hiddenForm(r); why != "" {
		cl.Op, cl.Doubt = worst, why
		return
	}
	if form.err != nil {
		// A query that does not parse cleanly is read differently by
		// daemons built with different Go versions: before Go 1.17 ';'
		// separated pairs, since Go 1.26 more than 10000 pairs are refused
		// whole. The plugin cannot know which reading is live.
		cl.Op, cl.Doubt = worst, "the query does not parse cleanly ("+form.err.Error()+"), and daemons built with other Go versions read it differently"
		return
	}
	// Every prune handler parses filters first and rejects the request
	// when they do not parse.
	f, err := parseFilters(form.values.Get("filters"))
	if err != nil {
		cl.Op, cl.Doubt = worst, "the filters parameter is not valid filter JSON"
		return
	}
	if kind != kindBuildPrune {
		// moby builder-next's Prune ignores label filters ("TODO: handle
		// label"), so only the other prunes are scoped by them.
		cl.Scope = labelScope(f)
	}
	switch kind {
	case kindContainerPrune:
		cl.Op = OpContainerPrune
	case kindNetworkPrune:
		cl.Op = OpNetworkPrune
	case kindImagePrune:
		cl.Op = OpImagePrune
		if !danglingOnly(f) {
			cl.Op = OpImagePruneAll
		}
	case kindBuildPrune:
		cl.Op = OpBuildPrune
		if boolValue(form.values.Get("all")) {
			cl.Op = OpBuildPruneAll
		}
	case kindVolumePrune:
		cl.Op, cl.Doubt = volumePrune(cl.APIVersion, f)
	}
}

// volumePrune reads a volume prune: whether it removes named volumes.
func volumePrune(apiVersion string, f filterArgs) (Operation, string) {
	switch {
	case apiVersion == "":
		// A bare path gets the daemon's own maximum API version, which
		// is below 1.42 on daemons before 23.0.
		return OpVolumePruneAll, "a bare /volumes/prune path gets the daemon's default API version, which prunes named volumes on daemons before 23.0"
	case versionLess(apiVersion, "1.42"):
		// moby api/server/router/volume: the route itself adds all=true
		// for API < 1.42 (and daemons before 23.0 only serve those).
		return OpVolumePruneAll, ""
	case pruneAllVolumes(f):
		return OpVolumePruneAll, ""
	}
	return OpVolumePrune, ""
}

// worstReading is the most destructive operation a prune route's parameters
// can select.
func worstReading(kind routeKind) Operation {
	switch kind {
	case kindImagePrune:
		return OpImagePruneAll
	case kindBuildPrune:
		return OpBuildPruneAll
	case kindVolumePrune:
		return OpVolumePruneAll
	case kindContainerPrune:
		return OpContainerPrune
	case kindNetworkPrune:
		return OpNetworkPrune
	}
	return OpUnknown
}

// form is a request's query as net/http's ParseForm reads it.
type form struct {
	values url.Values
	err    error
}

// parseForm parses a raw query with url.ParseQuery, as Request.ParseForm
// does, keeping the pairs that parsed even when others did not: dockerd's
// httputils.ParseForm ignores errors prefixed "mime:", and after such an
// error ParseForm drops the query's error but uses its values.
func parseForm(rawQuery string) form {
	v, err := url.ParseQuery(rawQuery)
	return form{values: v, err: err}
}

// hiddenForm reports why the daemon might read form values from a POST body
// the plugin cannot see, or "" when it cannot.
//
// net/http's ParseForm puts body values before query values, and handlers
// take the first value, so a form body overrides the query. The daemon reads
// a form body when its (first) Content-Type is
// application/x-www-form-urlencoded; the plugin sees only the last
// Content-Type, and a body only when that first one was application/json.
func hiddenForm(r Request) string {
	if r.Body == BodyForwarded {
		// Forwarded, so the daemon's Content-Type was application/json:
		// ParseForm leaves such a body alone.
		return ""
	}
	ct, hasCT := header(r.Headers, "Content-Type")
	if !hasCT {
		// No Content-Type at all: ParseForm treats the body as
		// application/octet-stream and does not read it.
		return ""
	}
	if cl, _ := header(r.Headers, "Content-Length"); strings.TrimSpace(cl) == "0" {
		// Go's server drops Content-Length from chunked requests, so a
		// visible zero means an empty body.
		return ""
	}
	if mt, _, err := mime.ParseMediaType(ct); err == nil && mt == "application/x-www-form-urlencoded" {
		return "the request carries a form body, which the daemon reads before the query but prune-guard does not; send the parameters in the query"
	}
	if r.Body == BodyProxied {
		// The daemon's own Content-Type, and not a form: ParseForm
		// leaves the body alone.
		return ""
	}
	return "the request may carry a body the plugin cannot see (the daemon reads form values from it when its first Content-Type is a form); send the parameters in the query with no body"
}

// header looks a flattened header up by its canonical key, falling back to a
// case-insensitive scan for callers other than dockerd.
func header(h map[string]string, key string) (string, bool) {
	if v, ok := h[key]; ok {
		return v, true
	}
	for k, v := range h {
		if strings.EqualFold(k, key) {
			return v, true
		}
	}
	return "", false
}

// filterArgs is moby's filters.Args as JSON: field -> value -> bool.
type filterArgs map[string]map[string]bool

// parseFilters follows moby's filters.FromJSON: the map form first, then the
// legacy map of lists with every listed value true. encoding/json's rules
// (last duplicate key wins, \u escapes, case-sensitive map keys) apply on
// both sides because both sides are encoding/json.
func parseFilters(raw string) (filterArgs, error) {
	if raw == "" {
		return nil, nil
	}
	var f filterArgs
	if err := json.Unmarshal([]byte(raw), &f); err == nil {
		return f, nil
	}
	var legacy map[string][]string
	if err := json.Unmarshal([]byte(raw), &legacy); err != nil {
		return nil, err
	}
	f = make(filterArgs, len(legacy))
	for k, vs := range legacy {
		m := make(map[string]bool, len(vs))
		for _, v := range vs {
			m[v] = true
		}
		f[k] = m
	}
	return f, nil
}

// danglingOnly reports whether every daemon version prunes dangling images
// only. Current daemons use GetBoolOrDefault("dangling", true); daemons up to
// 24.0 used ExactMatch, under which a present but empty value, or both true
// and false, prunes tagged images too. Only an unambiguous true is safe.
func danglingOnly(f filterArgs) bool {
	v, ok := f["dangling"]
	if !ok {
		return true
	}
	isTrue := v["true"] || v["1"]
	isFalse := v["false"] || v["0"]
	return isTrue && !isFalse
}

// labelScope returns the positive label filters, sorted. The daemon's
// filters.Args.MatchKVList ignores the filter map's bool values and treats
// an empty value set as no filter, so every key counts and an empty set is
// no scope. The containerd image store reads "KEY!=VALUE" under "label" as
// a negation (daemon/containerd/image_list.go, setupLabelFilter), which
// selects objects without the label: a filter holding one scopes nothing.
func labelScope(f filterArgs) []string {
	m := f["label"]
	if len(m) == 0 {
		return nil
	}
	scope := make([]string, 0, len(m))
	for sel := range m {
		if k, _, _ := strings.Cut(sel, "="); strings.HasSuffix(k, "!") {
			return nil
		}
		scope = append(scope, sel)
	}
	sort.Strings(scope)
	return scope
}

// pruneAllVolumes follows moby's volume service withPrune: the keys of the
// "all" filter (whatever their bool values) must be exactly one, and
// strconv.ParseBool of it true. Anything else either prunes anonymous
// volumes only or is rejected by the daemon.
func pruneAllVolumes(f filterArgs) bool {
	all := f["all"]
	if len(all) != 1 {
		return false
	}
	for k := range all {
		b, err := strconv.ParseBool(k)
		return err == nil && b
	}
	return false
}

// boolValue is moby's httputils.BoolValue: only "", 0, no, false and none
// (trimmed, any case) are false; anything else, "maybe" included, is true.
func boolValue(s string) bool {
	s = strings.ToLower(strings.TrimSpace(s))
	return !(s == "" || s == "0" || s == "no" || s == "false" || s == "none")
}

// versionLess is moby's api/types/versions.LessThan: dot-separated
// components compared numerically, a component that does not parse as an int
// counting as 0, missing components as 0.
func versionLess(v, other string) bool {
	return CompareVersions(v, other) < 0
}

// CompareVersions is moby's api/types/versions compare: dot-separated
// components numerically ("1.041" equals "1.41"), a component that does not
// parse counting as 0, missing components as 0; -1, 0 or 1.
func CompareVersions(v1, v2 string) int {
	if v1 == v2 {
		return 0
	}
	a, b := strings.Split(v1, "."), strings.Split(v2, ".")
	n := max(len(a), len(b))
	for i := 0; i < n; i++ {
		var x, y int
		if i < len(a) {
			x, _ = strconv.Atoi(a[i])
		}
		if i < len(b) {
			y, _ = strconv.Atoi(b[i])
		}
		switch {
		case x > y:
			return 1
		case x < y:
			return -1
		}
	}
	return 0
}

func (b BodyView) String() string {
	switch b {
	case BodyHidden:
		return "hidden"
	case BodyForwarded:
		return "forwarded"
	case BodyProxied:
		return "proxied"
	}
	return fmt.Sprintf("BodyView(%d)", uint8(b))
}
