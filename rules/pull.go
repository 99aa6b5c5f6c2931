package rules

import (
	"strings"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

// classifyCreate reads POST /images/create as dockerd's postImagesCreate
// does (moby api/server/router/image/image_routes.go at v20.10.24, v26.1.5
// and v28.5.2; daemon/server/router/image/image_routes.go at
// v2.0.0-beta.24, Docker 29; the same at every tag):
//
//   - httputils.ParseForm, then r.Form.Get("fromImage"): the first value,
//     form body values before the query's; a query that does not parse
//     fails the request ("mime:" errors aside);
//   - a non-empty fromImage pulls; an empty one imports (fromSrc), which
//     pulls nothing;
//   - fromImage without a trailing ":" ("pull -a" may send one), parsed
//     with reference.ParseNormalizedNamed; then tag, when given, pins the
//     reference to a digest if it parses as one (digest.Parse) and tags it
//     otherwise (reference.WithTag replaces a tag fromImage carried);
//   - a reference that does not parse, or whose familiar name is
//     "scratch" (validateRepoName; 20.10's distribution.Pull refuses it
//     too), is refused before anything is pulled.
//
// Without tag or digest the daemon pulls every tag of the repository
// (docker pull -a); Target is then the repository alone.
//
// The reading is for accounting, not for a decision: where the daemon may
// read fromImage from a form body the caller cannot see, the request is a
// pull whose reference is unknown (Target "", Doubt says why).
func classifyCreate(cl *Classification, r Request, f form) {
	if why := hiddenForm(r); why != "" {
		cl.Op, cl.Doubt = OpImagePull, why
		return
	}
	img := f.values.Get("fromImage")
	if img == "" {
		return // an import
	}
	if f.err != nil {
		// dockerd refuses the request, unless it was built with a Go
		// that reads the query differently (before Go 1.17 ';' separated
		// pairs; since Go 1.26 more than 10000 pairs are refused whole).
		cl.Op, cl.Doubt = OpImagePull, "the query does not parse cleanly ("+f.err.Error()+"), and daemons built with other Go versions read it differently"
		return
	}
	if ref, ok := PullReference(img, f.values.Get("tag")); ok {
		cl.Op, cl.Target = OpImagePull, ref
	}
}

// PullReference returns the reference dockerd pulls for the fromImage and
// tag parameters of POST /images/create, fully qualified
// ("docker.io/library/alpine:3.20"), or false when the daemon refuses them
// before pulling anything (see classifyCreate).
func PullReference(fromImage, tag string) (string, bool) {
	named, err := reference.ParseNormalizedNamed(strings.TrimSuffix(fromImage, ":"))
	if err != nil {
		return "", false
	}
	if tag != "" {
		// "The tag could actually be a digest."
		if dgst, derr := digest.Parse(tag); derr == nil {
			named, err = reference.WithDigest(reference.TrimNamed(named), dgst)
		} else {
			named, err = reference.WithTag(named, tag)
		}
		if err != nil {
			return "", false
		}
	}
	if reference.FamiliarName(named) == "scratch" {
		return "", false
	}
	return named.String(), true
}
