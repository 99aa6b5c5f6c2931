package guard

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/distribution/reference"

	"github.com/prune-guard/prune-guard/rules"
)

// A reclaim grant lets "prune-guard reclaim" remove images while a CI job
// holds image deletes, when the disk is at or above its critical mark: the
// reclaimer asks for one over the root-only control socket, naming each
// image it is about to remove (and each extra name it must untag first),
// and sends each of those deletes with the grant's token in GrantHeader.
// The guard then decides that delete as if no job were active (protection
// still applies), once per target, until the grant expires. Nothing else
// passes: a delete without a token, with a token the guard did not issue,
// one that expired or was used, or one naming another image, is decided as
// any client's. DECISIONS.md (2026-12-04) has the design.

// GrantHeader carries a grant's token on the reclaimer's deletes. dockerd
// forwards it to authorization plugins (pkg/authorization strips only
// Authorization, X-Registry-Auth and X-Registry-Config), and a proxy reads
// it directly.
const GrantHeader = "X-Prune-Guard-Grant"

// GrantTTL is how long a grant may be used: long enough for the removals of
// one image, short enough that a token that leaked is soon worthless.
const GrantTTL = 2 * time.Minute

// Bounds on what a grant request may ask for and how many grants live.
const (
	maxGrantTargets = 256
	maxLiveGrants   = 1024
)

// tokenPrefix marks a grant token, so that redact finds one anywhere.
const tokenPrefix = "pgg_"

// ReadHeaders returns the request headers the guard reads: the
// classifier's, and GrantHeader. Transports may drop every other header.
func ReadHeaders() []string { return append(rules.ReadHeaders(), GrantHeader) }

// GrantRequest is what the reclaimer asks the control socket for: the
// images it is about to remove and why. The disk figures are its own
// measurement, written to the audit record of each removal.
type GrantRequest struct {
	// Images are the full IDs (sha256:…) of the images to remove.
	Images []string `json:"images"`
	// Untag are extra names of those images that must go first (an image
	// tagged more than once is deleted by ID only without them), each
	// with the ID it must still name when it is removed.
	Untag []GrantName `json:"untag,omitempty"`
	// Why the removal cannot wait for the jobs.
	Usage    GrantUsage `json:"usage"`
	Critical float64    `json:"critical"`
	// Runs are the jobs that hold image deletes, as the reclaimer saw
	// them; the audit record lists them.
	Runs []string `json:"runs,omitempty"`
}

// GrantName is a name to untag and the image it must name.
type GrantName struct {
	Ref   string `json:"ref"`
	Image string `json:"image"`
}

// GrantUsage is the reclaimer's measurement of the engine's data root:
// now, and when its pass started (at or above the critical mark; a pass
// that started there frees down to its low mark during the jobs).
type GrantUsage struct {
	DataRoot       string  `json:"data_root"`
	Percent        float64 `json:"percent"`
	StartedPercent float64 `json:"started_percent"`
	TotalBytes     uint64  `json:"total_bytes"`
	AvailBytes     uint64  `json:"avail_bytes"`
}

// GrantAnswer is what the control socket answers: the token and when it
// expires.
type GrantAnswer struct {
	Token   string    `json:"token"`
	Expires time.Time `json:"expires"`
}

var fullID = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// validate checks a request: full IDs only, names that parse, and a pass
// that started at or above its critical mark. The figures are root's own
// word: checking them is for a mistaken caller, not a lying one.
func (r GrantRequest) validate() error {
	n := len(r.Images) + len(r.Untag)
	switch {
	case len(r.Images) == 0:
		return errors.New("a grant names at least one image")
	case n > maxGrantTargets:
		return fmt.Errorf("a grant names at most %d images and names, not %d", maxGrantTargets, n)
	case !(r.Critical > 0 && r.Critical <= 100):
		return fmt.Errorf("critical mark %g: want a percentage above 0", r.Critical)
	case max(r.Usage.StartedPercent, r.Usage.Percent) < r.Critical:
		return fmt.Errorf("usage %.1f%% is below the critical mark %g%%: deletes wait for the jobs", max(r.Usage.StartedPercent, r.Usage.Percent), r.Critical)
	}
	for _, id := range r.Images {
		if !fullID.MatchString(id) {
			return fmt.Errorf("image %q: a grant names images by full ID (sha256: and 64 hex digits)", id)
		}
	}
	for _, u := range r.Untag {
		if !fullID.MatchString(u.Image) {
			return fmt.Errorf("name %q: its image %q is not a full ID", u.Ref, u.Image)
		}
		if _, err := reference.ParseNormalizedNamed(u.Ref); err != nil {
			return fmt.Errorf("name %q: %v", u.Ref, err)
		}
	}
	return nil
}

// reason is the audit reason of a removal under this grant.
func (r GrantRequest) reason() string {
	u := r.Usage
	return fmt.Sprintf("allowed while a CI job holds image deletes by a reclaim grant: %s reached %.1f%% used, at or above the critical mark %g%% (now %.1f%%, %s of %s available); reclaim spares the jobs' images",
		u.DataRoot, max(u.StartedPercent, u.Percent), r.Critical, u.Percent, sizeText(u.AvailBytes), sizeText(u.TotalBytes))
}

// grant is an issued grant: what it may still remove, until when, and why.
type grant struct {
	expires time.Time
	// targets maps each target a delete may name to the image ID it must
	// name: itself for an ID.
	targets map[string]string
	why     string
	runs    []string
}

// grantUse is a target taken from a grant.
type grantUse struct {
	image string // the ID the target must name
	why   string
	runs  []string
}

// grants holds the live grants, by the SHA-256 of their token: the token
// itself is kept nowhere.
type grants struct {
	mu  sync.Mutex
	m   map[[32]byte]*grant
	now func() time.Time
}

func newGrants() *grants { return &grants{m: map[[32]byte]*grant{}, now: time.Now} }

// issue records a grant for r and returns its token.
func (gs *grants) issue(r GrantRequest) (GrantAnswer, error) {
	if err := r.validate(); err != nil {
		return GrantAnswer{}, err
	}
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return GrantAnswer{}, fmt.Errorf("draw a token: %w", err)
	}
	token := tokenPrefix + hex.EncodeToString(raw[:])
	g := &grant{targets: make(map[string]string, len(r.Images)+len(r.Untag)), why: r.reason(), runs: r.Runs}
	for _, id := range r.Images {
		g.targets[id] = id
	}
	for _, u := range r.Untag {
		g.targets[u.Ref] = u.Image
	}
	gs.mu.Lock()
	defer gs.mu.Unlock()
	now := gs.now()
	gs.sweepLocked(now)
	if len(gs.m) >= maxLiveGrants {
		return GrantAnswer{}, fmt.Errorf("%d grants are live; refusing more until they are used or expire", len(gs.m))
	}
	g.expires = now.Add(GrantTTL)
	gs.m[sha256.Sum256([]byte(token))] = g
	return GrantAnswer{Token: token, Expires: g.expires}, nil
}

// consume takes target from the grant token names, if that grant is live
// and lists it: each target can be taken once.
func (gs *grants) consume(token, target string) (grantUse, bool) {
	if !strings.HasPrefix(token, tokenPrefix) || target == "" {
		return grantUse{}, false
	}
	key := sha256.Sum256([]byte(token))
	gs.mu.Lock()
	defer gs.mu.Unlock()
	g, ok := gs.m[key]
	if !ok {
		return grantUse{}, false
	}
	if !gs.now().Before(g.expires) {
		delete(gs.m, key)
		return grantUse{}, false
	}
	image, ok := g.targets[target]
	if !ok {
		return grantUse{}, false
	}
	delete(g.targets, target)
	if len(g.targets) == 0 {
		delete(gs.m, key)
	}
	return grantUse{image: image, why: g.why, runs: g.runs}, true
}

// live counts the grants not yet used up or expired.
func (gs *grants) live() int {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	gs.sweepLocked(gs.now())
	return len(gs.m)
}

func (gs *grants) sweepLocked(now time.Time) {
	for k, g := range gs.m {
		if !now.Before(g.expires) {
			delete(gs.m, k)
		}
	}
}

// sizeText prints a size in binary units, as reclaim does.
func sizeText(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	f, i := float64(n)/unit, 0
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	for ; f >= unit && i < len(units)-1; i++ {
		f /= unit
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}
