package rules

import (
	"fmt"
	"path"
	"strings"

	"github.com/distribution/reference"
)

// Protection says which images and plugins must never be deleted or changed.
// Matching is pure; the caller resolves a request's name to the image's
// references and labels through the engine.
type Protection struct {
	// Images are reference patterns (path.Match syntax), matched against
	// both the normalized ("docker.io/library/alpine:3.19") and the
	// familiar ("alpine:3.19") form of every tag and digest reference.
	Images []string
	// Labels are image labels that protect an image: KEY (any value) or
	// KEY=VALUE.
	Labels []string
	// Plugins are plugin name patterns; a name without a tag also matches
	// its ":latest" form.
	Plugins []string
}

// Validate reports the first pattern or label that cannot work.
func (p Protection) Validate() error {
	for _, pat := range p.Images {
		if err := validPattern(pat); err != nil {
			return fmt.Errorf("protected image pattern %q: %w", pat, err)
		}
	}
	for _, l := range p.Labels {
		if k, _, _ := strings.Cut(l, "="); strings.TrimSpace(k) == "" {
			return fmt.Errorf("protected image label %q: want KEY or KEY=VALUE", l)
		}
	}
	for _, pat := range p.Plugins {
		if err := validPattern(pat); err != nil {
			return fmt.Errorf("protected plugin pattern %q: %w", pat, err)
		}
	}
	return nil
}

func validPattern(pat string) error {
	if strings.TrimSpace(pat) == "" {
		return fmt.Errorf("empty pattern")
	}
	if _, err := path.Match(pat, ""); err != nil {
		return fmt.Errorf("%w (patterns use *, ? and [...] as in path.Match)", err)
	}
	return nil
}

// ProtectsImages reports whether any image protection is configured, so a
// caller can skip resolving names when none is.
func (p Protection) ProtectsImages() bool { return len(p.Images) > 0 || len(p.Labels) > 0 }

// Image reports whether an image with these references (its RepoTags and
// RepoDigests as the engine reports them) and labels is protected, and why.
// Pass the engine's references, not the name a request used: a short image
// ID such as "3f57d9401f8d" also parses as the reference
// docker.io/library/3f57d9401f8d:latest.
func (p Protection) Image(refs []string, labels map[string]string) (bool, string) {
	for _, l := range p.Labels {
		k, v, hasValue := strings.Cut(l, "=")
		if got, ok := labels[k]; ok && (!hasValue || got == v) {
			return true, fmt.Sprintf("it carries the protecting label %s", l)
		}
	}
	for _, ref := range refs {
		for _, form := range refForms(ref) {
			for _, pat := range p.Images {
				if ok, _ := path.Match(pat, form); ok {
					return true, fmt.Sprintf("%s matches the protected pattern %s", form, pat)
				}
			}
		}
	}
	return false, ""
}

// refForms returns ref as written, normalized and familiar, so a pattern
// written in either form matches.
func refForms(ref string) []string {
	forms := []string{ref}
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return forms
	}
	if n := named.String(); n != ref {
		forms = append(forms, n)
	}
	if f := reference.FamiliarString(named); f != ref {
		forms = append(forms, f)
	}
	if reference.IsNameOnly(named) {
		// "alpine" as a request target means alpine:latest.
		tagged := reference.TagNameOnly(named)
		forms = append(forms, tagged.String(), reference.FamiliarString(tagged))
	}
	return forms
}

// Plugin reports whether any of a plugin's names is protected, and why.
func (p Protection) Plugin(names ...string) (bool, string) {
	for _, n := range names {
		forms := []string{n}
		if base, ok := strings.CutSuffix(n, ":latest"); ok {
			forms = append(forms, base)
		} else if !strings.Contains(n[strings.LastIndex(n, "/")+1:], ":") {
			forms = append(forms, n+":latest")
		}
		for _, f := range forms {
			for _, pat := range p.Plugins {
				if ok, _ := path.Match(pat, f); ok {
					return true, fmt.Sprintf("plugin %s is protected (pattern %s)", n, pat)
				}
			}
		}
	}
	return false, ""
}
