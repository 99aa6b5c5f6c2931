package main

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/prune-guard/prune-guard/audit"
	"github.com/prune-guard/prune-guard/policy"
	"github.com/prune-guard/prune-guard/rules"
)

func newPolicyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Work with policy files",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "default",
		Short: "Print the built-in policy as a file to start from",
		Example: `  prune-guard policy default > /etc/prune-guard/policy.yaml
  prune-guard check /etc/prune-guard/policy.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := io.WriteString(cmd.OutOrStdout(), policy.DefaultYAML())
			return err
		},
	})
	return cmd
}

func newCheckCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "check FILE",
		Short: "Validate a policy file",
		Long: `Validate a policy file the way "serve" loads it. On success it prints a summary and
exits 0; otherwise it prints every error with its file and line and exits 1.`,
		Example: `  prune-guard check /etc/prune-guard/policy.yaml`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := policy.Load(args[0])
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "%s: ok (policy %s, mode %s, audit %s, run labels %s, grace %s)\n", args[0], c.ShortHash(), c.Policy.Mode, c.Audit,
				strings.Join(c.Run.Labels, ","), c.Detection.Grace)
			fmt.Fprintf(w, "  detectors: %s\n", strings.Join(c.Detection.Names(), ", "))
			for i, r := range c.Policy.Rules {
				fmt.Fprintf(w, "  %d. %s\n", i+1, r)
			}
			return nil
		},
	}
}

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
	v := "/v" + apiVersion
	var flags struct{ all, volumes bool }
	var names []string
	var filters []string
	cmd := args
	// The command words come first ("rmi" is one, "image prune" two);
	// everything after them is flags or names.
	words := min(2, len(cmd))
	if cmd[0] == "rmi" || (len(cmd) > 1 && strings.HasPrefix(cmd[1], "-")) {
		words = 1
	}
	rest := cmd[words:]
	for i := 0; i < len(rest); i++ {
		a := rest[i]
		switch {
		case a == "-a" || a == "--all":
			flags.all = true
		case a == "--volumes":
			flags.volumes = true
		case a == "-f" || a == "--force":
		case a == "--filter":
			if i+1 < len(rest) {
				filters = append(filters, rest[i+1])
				i++
			}
		case strings.HasPrefix(a, "--filter="):
			filters = append(filters, strings.TrimPrefix(a, "--filter="))
		case strings.HasPrefix(a, "-") && !strings.HasPrefix(a, "--") && len(a) > 2:
			// Combined short flags such as -af.
			flags.all = flags.all || strings.Contains(a, "a")
		case strings.HasPrefix(a, "-"):
		default:
			names = append(names, a)
		}
	}
	prune := func(path string, extra map[string]bool) rules.Request {
		f := map[string]map[string]bool{}
		for _, kv := range filters {
			k, val, _ := strings.Cut(kv, "=")
			if f[k] == nil {
				f[k] = map[string]bool{}
			}
			f[k][val] = true
		}
		for k, on := range extra {
			if on {
				k, val, _ := strings.Cut(k, "=")
				if f[k] == nil {
					f[k] = map[string]bool{}
				}
				f[k][val] = true
			}
		}
		uri := v + path
		if len(f) > 0 {
			uri += "?filters=" + url.QueryEscape(jsonFilters(f))
		}
		return rules.Request{Method: "POST", URI: uri, Headers: map[string]string{"Content-Type": "text/plain", "Content-Length": "0"}}
	}
	imagePrune := func() rules.Request {
		return prune("/images/prune", map[string]bool{"dangling=false": flags.all, "dangling=true": !flags.all})
	}
	buildPrune := func() rules.Request {
		r := rules.Request{Method: "POST", URI: v + "/build/prune", Headers: map[string]string{"Content-Type": "text/plain", "Content-Length": "0"}}
		if flags.all {
			r.URI += "?all=1"
		}
		return r
	}
	switch strings.Join(cmd[:words], " ") {
	case "image prune":
		return []rules.Request{imagePrune()}, nil
	case "system prune":
		reqs := []rules.Request{prune("/containers/prune", nil), prune("/networks/prune", nil)}
		if flags.volumes {
			reqs = append(reqs, prune("/volumes/prune", map[string]bool{"all=true": flags.all}))
		}
		return append(reqs, imagePrune(), buildPrune()), nil
	case "container prune":
		return []rules.Request{prune("/containers/prune", nil)}, nil
	case "network prune":
		return []rules.Request{prune("/networks/prune", nil)}, nil
	case "volume prune":
		return []rules.Request{prune("/volumes/prune", map[string]bool{"all=true": flags.all})}, nil
	case "builder prune", "buildx prune":
		return []rules.Request{buildPrune()}, nil
	case "rmi", "image rm", "image remove":
		if len(names) == 0 {
			return nil, errors.New("explain: rmi needs an image name")
		}
		var reqs []rules.Request
		for _, n := range names {
			reqs = append(reqs, rules.Request{Method: "DELETE", URI: v + "/images/" + n})
		}
		return reqs, nil
	case "plugin disable", "plugin rm", "plugin remove", "plugin set", "plugin upgrade", "plugin enable":
		if len(names) == 0 {
			return nil, errors.New("explain: the plugin command needs a plugin name")
		}
		action := cmd[1]
		if action == "rm" || action == "remove" {
			return []rules.Request{{Method: "DELETE", URI: v + "/plugins/" + names[0]}}, nil
		}
		return []rules.Request{{Method: "POST", URI: v + "/plugins/" + names[0] + "/" + action}}, nil
	}
	return nil, fmt.Errorf("explain: %q is not a docker command explain knows (image/system/container/network/volume/builder prune, rmi, image rm, plugin disable/rm/set/upgrade/enable); give METHOD URI instead", strings.Join(args, " "))
}

// jsonFilters renders filters in the map form the CLI sends, keys sorted so
// explanations are stable.
func jsonFilters(f map[string]map[string]bool) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, k := range sortedKeys(f) {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%q:{", k)
		for j, v := range sortedKeys(f[k]) {
			if j > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, "%q:true", v)
		}
		b.WriteByte('}')
	}
	b.WriteByte('}')
	return b.String()
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
