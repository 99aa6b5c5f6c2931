package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/prune-guard/prune-guard/audit"
	"github.com/prune-guard/prune-guard/policy"
	"github.com/prune-guard/prune-guard/rules"
)

type explainOptions struct {
	policyFile      string
	runActive       bool
	imageProtected  bool
	pluginProtected bool
	apiVersion      string
}

func newExplainCmd() *cobra.Command {
	o := explainOptions{}
	cmd := &cobra.Command{
		Use:   "explain [flags] (METHOD URI | -- docker COMMAND...)",
		Short: "Show how a request would be classified and decided",
		Long: `Show the operation prune-guard reads a request as, the rule that matches and the
decision, without asking any engine: state the facts with --run-active,
--image-protected and --plugin-protected.

A request is given as METHOD and raw URI (quote it for the shell), or as a docker
command line after "--" for the common prune and rmi forms; "docker system prune"
explains each request the CLI sends.`,
		Example: `  prune-guard explain POST '/v1.43/images/prune?filters={"dangling":{"false":true}}'
  prune-guard explain --run-active DELETE /v1.43/images/alpine:3.19
  prune-guard explain -- docker image prune -a
  prune-guard explain --policy new.yaml --run-active -- docker system prune -af --volumes`,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg := policy.Default()
			if o.policyFile != "" {
				var err error
				if cfg, err = policy.Load(o.policyFile); err != nil {
					return err
				}
			}
			var reqs []rules.Request
			if cmd.ArgsLenAtDash() >= 0 {
				var err error
				if reqs, err = dockerRequests(args[cmd.ArgsLenAtDash():], o.apiVersion); err != nil {
					return err
				}
			} else {
				if len(args) != 2 {
					return errors.New("want METHOD URI, or -- docker COMMAND...; see --help")
				}
				reqs = []rules.Request{{Method: strings.ToUpper(args[0]), URI: args[1]}}
			}
			facts := rules.FactsFuncs{
				RunsFunc: func() rules.RunState {
					if o.runActive {
						return rules.RunState{Active: []rules.Run{{Detector: rules.PruneGuardDetector, System: "prune-guard run", Job: "example",
							Kind: rules.Container, Name: "(--run-active)"}}}
					}
					return rules.RunState{}
				},
				ImageFunc: func(string) rules.Check {
					return rules.Check{Yes: o.imageProtected, Why: "it is protected (--image-protected)"}
				},
				PluginFunc: func(string) rules.Check {
					return rules.Check{Yes: o.pluginProtected, Why: "it is protected (--plugin-protected)"}
				},
			}
			c := rules.NewClassifier()
			w := cmd.OutOrStdout()
			for i, r := range reqs {
				if i > 0 {
					fmt.Fprintln(w)
				}
				explain(w, c, r, cfg, facts)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.policyFile, "policy", "", "policy file to explain against (default: the built-in policy)")
	f.BoolVar(&o.runActive, "run-active", false, "assume a CI run is active")
	f.BoolVar(&o.imageProtected, "image-protected", false, "assume the image named is protected")
	f.BoolVar(&o.pluginProtected, "plugin-protected", false, "assume the plugin named is protected")
	f.StringVar(&o.apiVersion, "api-version", "1.44", "API version the docker command line is assumed to negotiate")
	return cmd
}

func explain(w io.Writer, c *rules.Classifier, r rules.Request, cfg *policy.Config, facts rules.Facts) {
	cl := c.Classify(r)
	d := rules.Evaluate(cl, cfg.Policy, facts)
	fmt.Fprintf(w, "request:   %s %s\n", r.Method, r.URI)
	fmt.Fprintf(w, "operation: %s", cl.Op)
	if cl.Target != "" {
		fmt.Fprintf(w, " (%s)", cl.Target)
	}
	fmt.Fprintln(w)
	if cl.Doubt != "" {
		fmt.Fprintf(w, "doubt:     %s\n", cl.Doubt)
	}
	rule := "(none matched)"
	if d.Rule != "" {
		rule = d.Rule
		for _, pr := range cfg.Policy.Rules {
			if pr.Name == d.Rule {
				rule = pr.String()
			}
		}
	}
	fmt.Fprintf(w, "rule:      %s\n", rule)
	decision := string(audit.OutcomeOf(d))
	if audit.OutcomeOf(d) == audit.WouldDeny {
		decision = "allow (would-deny: warn)"
	}
	fmt.Fprintf(w, "decision:  %s\n", decision)
	if d.Message != "" {
		fmt.Fprintf(w, "message:   %s\n", d.Message)
	}
}

// dockerRequests translates the common docker prune and rmi command lines
// into the API requests the docker CLI sends for them.
func dockerRequests(args []string, apiVersion string) ([]rules.Request, error) {
	if len(args) > 0 && args[0] == "docker" {
		args = args[1:]
	}
	if len(args) == 0 {
		return nil, errors.New("explain: empty docker command line")
	}
	cl := parseCommandLine(args)
	send, ok := cliRequests[cl.command]
	if !ok {
		return nil, fmt.Errorf("explain: %q is not a docker command explain knows (image/system/container/network/volume/builder prune, rmi, image rm, plugin disable/rm/set/upgrade/enable); give METHOD URI instead", strings.Join(args, " "))
	}
	return send(cl, "/v"+apiVersion)
}

// commandLine is a docker command line as explain reads it.
type commandLine struct {
	command      string // "image prune", "rmi"
	action       string // the second command word ("disable" of "plugin disable")
	all, volumes bool
	filters      []string // --filter values, KEY=VALUE
	names        []string
}

// parseCommandLine splits the command words ("rmi" is one, "image prune"
// two) from the flags and names after them.
func parseCommandLine(args []string) commandLine {
	words := min(2, len(args))
	if args[0] == "rmi" || (len(args) > 1 && strings.HasPrefix(args[1], "-")) {
		words = 1
	}
	cl := commandLine{command: strings.Join(args[:words], " ")}
	if words == 2 {
		cl.action = args[1]
	}
	rest := args[words:]
	for i := 0; i < len(rest); i++ {
		a := rest[i]
		switch {
		case a == "-a" || a == "--all":
			cl.all = true
		case a == "--volumes":
			cl.volumes = true
		case a == "-f" || a == "--force":
		case a == "--filter":
			if i+1 < len(rest) {
				cl.filters = append(cl.filters, rest[i+1])
				i++
			}
		case strings.HasPrefix(a, "--filter="):
			cl.filters = append(cl.filters, strings.TrimPrefix(a, "--filter="))
		case strings.HasPrefix(a, "-") && !strings.HasPrefix(a, "--") && len(a) > 2:
			// Combined short flags such as -af.
			cl.all = cl.all || strings.Contains(a, "a")
		case strings.HasPrefix(a, "-"):
		default:
			cl.names = append(cl.names, a)
		}
	}
	return cl
}

// cliRequests is what the docker CLI sends for each command explain knows
// (docker/cli cli/command/*/prune.go, system/prune.go, image/remove.go).
var cliRequests = map[string]func(cl commandLine, v string) ([]rules.Request, error){
	"image prune":     one(imagePrune),
	"container prune": one(func(cl commandLine, v string) rules.Request { return cl.prune(v+"/containers/prune", "") }),
	"network prune":   one(func(cl commandLine, v string) rules.Request { return cl.prune(v+"/networks/prune", "") }),
	"volume prune":    one(volumePrune),
	"builder prune":   one(buildPrune),
	"buildx prune":    one(buildPrune),
	"system prune": func(cl commandLine, v string) ([]rules.Request, error) {
		reqs := []rules.Request{cl.prune(v+"/containers/prune", ""), cl.prune(v+"/networks/prune", "")}
		if cl.volumes {
			reqs = append(reqs, volumePrune(cl, v))
		}
		return append(reqs, imagePrune(cl, v), buildPrune(cl, v)), nil
	},
	"rmi":            imageRemove,
	"image rm":       imageRemove,
	"image remove":   imageRemove,
	"plugin disable": pluginChange,
	"plugin rm":      pluginChange,
	"plugin remove":  pluginChange,
	"plugin set":     pluginChange,
	"plugin upgrade": pluginChange,
	"plugin enable":  pluginChange,
}

func one(f func(commandLine, string) rules.Request) func(commandLine, string) ([]rules.Request, error) {
	return func(cl commandLine, v string) ([]rules.Request, error) { return []rules.Request{f(cl, v)}, nil }
}

// cliHeaders are the headers the CLI sends with a prune: no body.
func cliHeaders() map[string]string {
	return map[string]string{"Content-Type": "text/plain", "Content-Length": "0"}
}

func imagePrune(cl commandLine, v string) rules.Request {
	return cl.prune(v+"/images/prune", "dangling="+strconv.FormatBool(!cl.all))
}

func volumePrune(cl commandLine, v string) rules.Request {
	extra := ""
	if cl.all {
		extra = "all=true"
	}
	return cl.prune(v+"/volumes/prune", extra)
}

func buildPrune(cl commandLine, v string) rules.Request {
	r := rules.Request{Method: "POST", URI: v + "/build/prune", Headers: cliHeaders()}
	if cl.all {
		r.URI += "?all=1"
	}
	return r
}

func imageRemove(cl commandLine, v string) ([]rules.Request, error) {
	if len(cl.names) == 0 {
		return nil, errors.New("explain: rmi needs an image name")
	}
	reqs := make([]rules.Request, 0, len(cl.names))
	for _, n := range cl.names {
		reqs = append(reqs, rules.Request{Method: "DELETE", URI: v + "/images/" + n})
	}
	return reqs, nil
}

func pluginChange(cl commandLine, v string) ([]rules.Request, error) {
	if len(cl.names) == 0 {
		return nil, errors.New("explain: the plugin command needs a plugin name")
	}
	if cl.action == "rm" || cl.action == "remove" {
		return []rules.Request{{Method: "DELETE", URI: v + "/plugins/" + cl.names[0]}}, nil
	}
	return []rules.Request{{Method: "POST", URI: v + "/plugins/" + cl.names[0] + "/" + cl.action}}, nil
}

// prune is the CLI's prune request: the --filter values and extra (a
// KEY=VALUE the command adds, or "") in the filters' map form.
func (cl commandLine) prune(path, extra string) rules.Request {
	f := map[string]map[string]bool{}
	for _, kv := range append(slices.Clip(cl.filters), extra) {
		if kv == "" {
			continue
		}
		k, val, _ := strings.Cut(kv, "=")
		if f[k] == nil {
			f[k] = map[string]bool{}
		}
		f[k][val] = true
	}
	uri := path
	if len(f) > 0 {
		// encoding/json sorts map keys, so explanations are stable.
		b, _ := json.Marshal(f) // a map of strings always marshals
		uri += "?filters=" + url.QueryEscape(string(b))
	}
	return rules.Request{Method: "POST", URI: uri, Headers: cliHeaders()}
}
