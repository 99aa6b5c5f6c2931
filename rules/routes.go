package rules

import (
	"net/http"
	"path"
	"slices"
	"strings"

	"github.com/gorilla/mux"
)

// routeKind says which handler a matched route belongs to, and therefore which
// parameters decide its Operation.
type routeKind uint8

const (
	kindImagePrune routeKind = iota + 1
	kindImageDelete
	kindBuildPrune
	kindContainerPrune
	kindNetworkPrune
	kindVolumePrune
	kindPluginNamed // the plugin's name is the {name} path variable
	kindPluginQuery // the plugin's name is the "name" query parameter
	kindBuildKitStream
	kindImageCreate // a pull (fromImage) or an import (fromSrc)
)

// ServeHTTP exists only so a routeKind can be stored as a mux route's handler
// and read back from RouteMatch.Handler; the classifier never serves.
func (routeKind) ServeHTTP(http.ResponseWriter, *http.Request) {}

// versionMatcher is the prefix dockerd registers every route under, besides
// the bare path (moby api/server/server.go, createMux).
const versionMatcher = "/v{version:[0-9.]+}"

// guardedRoutes are the daemon's own route templates for every handler that
// can delete what prune-guard guards, copied from moby's api/server/router/*
// (image, build, container, network, volume, plugin, session, grpc), and the
// one handler prune-guard counts: POST /images/create, the pull.
//
// Only guarded routes are registered. dockerd registers more routes, and
// registration order decides which of two matching routes wins; none of the
// daemon's other routes can match a path one of these templates matches
// (checked against moby v20.10 to v29), and if one ever did, the result here
// would be a needless deny, never a missed one.
var guardedRoutes = []struct {
	method, path string
	kind         routeKind
}{
	{"POST", "/images/prune", kindImagePrune},
	{"DELETE", "/images/{name:.*}", kindImageDelete},
	{"POST", "/build/prune", kindBuildPrune},
	{"POST", "/containers/prune", kindContainerPrune},
	{"POST", "/networks/prune", kindNetworkPrune},
	{"POST", "/volumes/prune", kindVolumePrune},
	{"DELETE", "/plugins/{name:.*}", kindPluginNamed},
	{"POST", "/plugins/{name:.*}/enable", kindPluginNamed},
	{"POST", "/plugins/{name:.*}/disable", kindPluginNamed},
	{"POST", "/plugins/pull", kindPluginQuery},
	{"POST", "/plugins/{name:.*}/upgrade", kindPluginNamed},
	{"POST", "/plugins/{name:.*}/set", kindPluginNamed},
	{"POST", "/plugins/create", kindPluginQuery},
	{"POST", "/session", kindBuildKitStream},
	{"POST", "/grpc", kindBuildKitStream},
	// Not guarded: counted. It classifies as a pull or as nothing.
	{"POST", "/images/create", kindImageCreate},
}

// guardedFragments holds the literal prefix of every guarded template,
// derived from guardedRoutes so that a new route can never be forgotten
// here. A path a template matches contains the template's literal prefix (a
// version prefix only comes before it), so a decoded path that contains none
// of them cannot match any guarded route, which lets the common POSTs
// (create, start, exec, ...) skip the router entirely.
var guardedFragments = fragments()

// fragments returns the literal prefix of each guarded template (the text
// before its first variable), leaving out one that contains another: the
// shorter one already lets every such path through.
func fragments() []string {
	var prefixes []string
	for _, r := range guardedRoutes {
		p, _, _ := strings.Cut(r.path, "{")
		prefixes = append(prefixes, p)
	}
	var out []string
	for _, p := range prefixes {
		covered := false
		for _, q := range prefixes {
			covered = covered || (q != p && strings.Contains(p, q))
		}
		if !covered && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

func mayBeGuarded(path string) bool {
	for _, f := range guardedFragments {
		if strings.Contains(path, f) {
			return true
		}
	}
	return false
}

// newRouter registers the guarded routes the way dockerd's createMux does:
// the versioned template first, then the bare one, on a default mux router.
func newRouter() *mux.Router {
	m := mux.NewRouter()
	for _, r := range guardedRoutes {
		m.Path(versionMatcher + r.path).Methods(r.method).Handler(r.kind)
		m.Path(r.path).Methods(r.method).Handler(r.kind)
	}
	return m
}

// cleanPath is gorilla/mux's cleanPath (mux.go, v1.8): dockerd's router
// answers 301 without running any handler when the path is not already
// clean, so such a request deletes nothing.
func cleanPath(p string) string {
	if p == "" {
		return "/"
	}
	if p[0] != '/' {
		p = "/" + p
	}
	np := path.Clean(p)
	if p[len(p)-1] == '/' && np != "/" {
		np += "/"
	}
	return np
}
