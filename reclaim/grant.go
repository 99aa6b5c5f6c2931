package reclaim

import (
	"context"
	"fmt"
	"slices"

	"github.com/prune-guard/prune-guard/rules"
)

// Granter gets the guard's leave for the deletes of one step while CI jobs
// hold image deletes: it returns the context the step's removals are sent
// with (carrying the grant), or why there is none. The reclaimer never sees
// the grant itself. cmd/prune-guard's is the control socket's client.
type Granter interface {
	Grant(ctx context.Context, g Grant) (context.Context, error)
}

// Grant is what a step asks leave for, and why.
type Grant struct {
	// Images are the full IDs the step deletes: the image and the
	// intermediate images only it was built on.
	Images []string
	// Untag are the image's extra names, removed first, each with the ID
	// it must still name.
	Untag []GrantName
	// Usage is the data root now; StartedPercent its usage when the pass
	// started, at or above Critical.
	Usage          Usage
	StartedPercent float64
	Critical       float64
	// Runs name the jobs that hold image deletes, as the audit shows them.
	Runs []string
}

// GrantName is a name to untag and the image it must name.
type GrantName struct{ Ref, Image string }

// grantFor builds the request for step s of a critical plan, taken at
// usage u while held hold image deletes.
func (r *Reclaimer) grantFor(p *Plan, s Step, u Usage, held rules.RunState) Grant {
	g := Grant{Images: append([]string{s.Image.ID}, s.Intermediates...), Usage: u,
		StartedPercent: p.startedPercent, Critical: p.opts.Critical}
	for _, ref := range extraNames(s.Image.Refs()) {
		g.Untag = append(g.Untag, GrantName{Ref: ref, Image: s.Image.ID})
	}
	for _, run := range held.Active {
		g.Runs = append(g.Runs, run.String())
	}
	for _, run := range held.Ended {
		g.Runs = append(g.Runs, fmt.Sprintf("%s (ended %s, in its teardown grace)", run.String(), run.Ended.UTC().Format("15:04:05 UTC")))
	}
	if b := held.Blind; b != nil {
		g.Runs = append(g.Runs, fmt.Sprintf("unseen: whether a job ended before %s (%s)", b.Since.UTC().Format("15:04:05 UTC"), b.Why))
	}
	return g
}

// extraNames are the names of an image that must go before the engine
// deletes it by ID: every name but its first tag, and but digest
// references in that tag's repository (sameRepoDigest).
func extraNames(refs []string) []string {
	if len(refs) < 2 {
		return nil
	}
	keep := refs[0]
	var out []string
	for _, ref := range refs[1:] {
		if ref == keep || sameRepoDigest(keep, ref) || slices.Contains(out, ref) {
			continue
		}
		out = append(out, ref)
	}
	return out
}

// heldImage reports which of the jobs that hold image deletes uses im, by
// the image their container was listed or created with: a job that ended
// after the plan was made has removed its containers, so no container
// guards its image any more.
func heldImage(held rules.RunState, im Image) (rules.Run, bool) {
	refs := map[string]bool{}
	for _, r := range im.Refs() {
		if n, ok := normalize(r); ok {
			refs[n] = true
		}
	}
	for _, run := range slices.Concat(held.Active, held.Ended) {
		if run.Image == "" {
			continue
		}
		if run.Image == im.ID {
			return run, true
		}
		if n, ok := normalize(run.Image); ok && refs[n] {
			return run, true
		}
	}
	return rules.Run{}, false
}
