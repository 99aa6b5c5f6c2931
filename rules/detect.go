package rules

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// matcher recognises a job's object and returns the job's identifier ("" when
// the object's own name names the job).
type matcher func(o Object) (job string, ok bool)

// Detector recognises the objects of one CI system's jobs.
type Detector struct {
	// Name is the detector's policy name ("gitlab").
	Name string
	// System is how denials name its jobs ("GitLab job").
	System string
	// Looks says what it looks for, for status and the default policy.
	Looks string
	kinds kinds
	env   []string
	match matcher
}

// Match reports whether o belongs to one of the detector's jobs.
func (d Detector) Match(o Object) (Run, bool) {
	if !d.kinds.has(o.Kind) {
		return Run{}, false
	}
	job, ok := d.match(o)
	if !ok {
		return Run{}, false
	}
	return Run{Detector: d.Name, System: d.System, Job: job, Kind: o.Kind, Name: o.Name, ID: o.ID, Labels: o.Labels, Image: o.Image}, true
}

// Selector is an operator's own way of recognising a job. Exactly one of
// Label, KeyPattern and NamePrefix is set.
type Selector struct {
	// Name is the selector's detector name, unique among detectors.
	Name string
	// System is how denials name its jobs; default "CI job".
	System string
	// Label is KEY or KEY=VALUE; the job is named by the label's value.
	Label string
	// KeyPattern and ValuePattern are path.Match patterns on a label's key
	// and value (ValuePattern "" matches any value).
	KeyPattern, ValuePattern string
	// NamePrefix matches container (and service) names.
	NamePrefix string
	// Services also matches swarm services, not only containers.
	Services bool
}

// DetectionSettings is the configuration detectors are built from.
type DetectionSettings struct {
	// Labels are the prune-guard detector's selectors, KEY or KEY=VALUE.
	Labels []string
	// Switches turns built-in detectors on ("on"), off ("off"), or, for
	// opt-in detectors, on with a value pattern. Unnamed detectors keep
	// their default.
	Switches map[string]string
	// Selectors are the operator's own detectors.
	Selectors []Selector
	// Grace is how long a job still counts as active for image deletes
	// and image prunes after its last object is gone.
	Grace time.Duration
}

// DefaultGrace is the teardown grace with no configuration.
const DefaultGrace = 2 * time.Minute

// DefaultDetectionSettings are the settings with no configuration.
func DefaultDetectionSettings() DetectionSettings {
	return DetectionSettings{Labels: []string{DefaultRunLabel}, Grace: DefaultGrace}
}

// Detection is a compiled set of enabled detectors and the teardown grace.
// The zero value detects nothing.
type Detection struct {
	Detectors []Detector
	Grace     time.Duration
	envKeys   []string
	kinds     kinds
}

// NewDetection compiles settings, reporting every problem at once.
func NewDetection(s DetectionSettings) (Detection, error) {
	var errs []error
	if s.Grace < 0 {
		errs = append(errs, fmt.Errorf("grace %v is negative", s.Grace))
	}
	d := Detection{Grace: s.Grace}
	if sw, ok := s.Switches[PruneGuardDetector]; !ok || sw == "on" {
		if err := ValidateRunLabels(s.Labels); err != nil {
			errs = append(errs, err)
		}
		d.add(Detector{Name: PruneGuardDetector, System: "prune-guard run", Looks: "run labels " + strings.Join(s.Labels, ", "),
			kinds: kindSet(Container, Service), match: runLabels(s.Labels)})
	} else if sw != "off" {
		errs = append(errs, fmt.Errorf("detector %s: %q is not on or off", PruneGuardDetector, sw))
	}
	known := map[string]bool{PruneGuardDetector: true}
	for _, b := range builtins {
		known[b.name] = true
		det, on, err := b.compile(s.Switches[b.name])
		if err != nil {
			errs = append(errs, err)
		}
		if on {
			d.add(det)
		}
	}
	for name := range s.Switches {
		if !known[name] {
			errs = append(errs, fmt.Errorf("unknown detector %q (built-in: %s)", name, strings.Join(detectorNames(), ", ")))
		}
	}
	for _, sel := range s.Selectors {
		det, err := sel.compile()
		switch {
		case err != nil:
			errs = append(errs, err)
		case known[sel.Name]:
			errs = append(errs, fmt.Errorf("selector name %q is already a detector's name", sel.Name))
		default:
			known[sel.Name] = true
			d.add(det)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return Detection{}, err
	}
	return d, nil
}

// MustDetection is NewDetection for settings known to be valid, such as the
// defaults.
func MustDetection(s DetectionSettings) Detection {
	d, err := NewDetection(s)
	if err != nil {
		panic("rules: invalid built-in detection settings: " + err.Error())
	}
	return d
}

func (d *Detection) add(det Detector) {
	d.Detectors = append(d.Detectors, det)
	d.kinds |= det.kinds
	d.envKeys = append(d.envKeys, det.env...)
}

// Looks reports whether any enabled detector looks at objects of kind k, so
// that a caller can skip listing services or scanning processes.
func (d Detection) Looks(k ObjectKind) bool { return d.kinds.has(k) }

// EnvKeys are the environment variables process detectors read.
func (d Detection) EnvKeys() []string { return d.envKeys }

// Match returns the run o marks, from the first detector that recognises it.
func (d Detection) Match(o Object) (Run, bool) {
	for _, det := range d.Detectors {
		if r, ok := det.Match(o); ok {
			return r, true
		}
	}
	return Run{}, false
}

// Names lists the enabled detectors.
func (d Detection) Names() []string {
	out := make([]string, len(d.Detectors))
	for i, det := range d.Detectors {
		out[i] = det.Name
	}
	return out
}

func detectorNames() []string {
	names := []string{PruneGuardDetector}
	for _, b := range builtins {
		names = append(names, b.name)
	}
	return names
}

// compile turns a switch value into the detector and whether it is on.
func (b builtin) compile(sw string) (Detector, bool, error) {
	det := Detector{Name: b.name, System: b.system, Looks: b.looks, kinds: b.kinds, env: b.env}
	switch {
	case sw == "":
		if b.on {
			det.match = b.make("*")
		}
		return det, b.on, nil
	case sw == "off":
		return det, false, nil
	case sw == "on":
		det.match = b.make("*")
		return det, true, nil
	case b.optIn:
		if err := validPattern(sw); err != nil {
			return det, false, fmt.Errorf("detector %s: value pattern %q: %w", b.name, sw, err)
		}
		det.match = b.make(sw)
		det.Looks += " (" + sw + ")"
		return det, true, nil
	}
	return det, false, fmt.Errorf("detector %s: %q is not on or off", b.name, sw)
}

func (s Selector) compile() (Detector, error) {
	if s.Name == "" {
		return Detector{}, errors.New("a selector needs a name")
	}
	det := Detector{Name: s.Name, System: s.System, kinds: kindSet(Container)}
	if det.System == "" {
		det.System = "CI job"
	}
	if s.Services {
		det.kinds |= kindSet(Service)
	}
	set := 0
	for _, v := range []string{s.Label, s.KeyPattern, s.NamePrefix} {
		if v != "" {
			set++
		}
	}
	if set != 1 {
		return Detector{}, fmt.Errorf("selector %s: give exactly one of label, label-key, name-prefix", s.Name)
	}
	if s.ValuePattern != "" && s.KeyPattern == "" {
		return Detector{}, fmt.Errorf("selector %s: label-value goes with label-key", s.Name)
	}
	switch {
	case s.Label != "":
		if err := ValidateRunLabels([]string{s.Label}); err != nil {
			return Detector{}, fmt.Errorf("selector %s: %w", s.Name, err)
		}
		det.match, det.Looks = runLabels([]string{s.Label}), "label "+s.Label
	case s.KeyPattern != "":
		vp := s.ValuePattern
		if vp == "" {
			vp = "*"
		}
		for _, p := range []string{s.KeyPattern, vp} {
			if err := validPattern(p); err != nil {
				return Detector{}, fmt.Errorf("selector %s: pattern %q: %w", s.Name, p, err)
			}
		}
		det.match, det.Looks = keyValuePattern(s.KeyPattern, vp), fmt.Sprintf("a label whose key matches %s and value %s", s.KeyPattern, vp)
	default:
		det.match, det.Looks = namePrefix(s.NamePrefix), "name starting "+s.NamePrefix
	}
	return det, nil
}

// ValidateRunLabels reports the first run label selector that is not KEY or
// KEY=VALUE, or that there is none.
func ValidateRunLabels(labels []string) error {
	if len(labels) == 0 {
		return errors.New("no run labels configured")
	}
	for _, l := range labels {
		if strings.TrimSpace(l) == "" || strings.HasPrefix(l, "=") {
			return fmt.Errorf("invalid run label %q: want KEY or KEY=VALUE", l)
		}
	}
	return nil
}

// ValidateSwitch reports whether value can switch the detector called name:
// "on", "off", or a value pattern for an opt-in detector.
func ValidateSwitch(name, value string) error {
	if name == PruneGuardDetector {
		if value != "on" && value != "off" {
			return fmt.Errorf("detector %s: %q is not on or off", name, value)
		}
		return nil
	}
	for _, b := range builtins {
		if b.name == name {
			_, _, err := b.compile(value)
			return err
		}
	}
	return fmt.Errorf("unknown detector %q (built-in: %s)", name, strings.Join(detectorNames(), ", "))
}

// Validate reports what is wrong with the selector on its own.
func (s Selector) Validate() error {
	_, err := s.compile()
	return err
}
