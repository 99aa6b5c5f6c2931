package main

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protowire"

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
	grpcMessage     string
}

func newExplainCmd() *cobra.Command {
	o := explainOptions{}
	cmd := &cobra.Command{
		Use:   "explain [flags] (METHOD URI | GRPC /package.Service/Method | -- docker COMMAND...)",
		Short: "Show how a request would be classified and decided",
		Long: `Show the operation prune-guard reads a request as, the rule that matches and the
decision, without asking any engine: state the facts with --run-active,
--image-protected and --plugin-protected.

A request is given as METHOD and raw URI (quote it for the shell), as GRPC and a
gRPC method's path (a call only proxy mode sees; --grpc-message gives its first
message, which Control/Prune needs), or as a docker command line after "--" for
the common prune and rmi forms; "docker system prune" explains each request the
CLI sends (its build-cache prune is REST, buildx or not).

"docker builder prune" is explained both ways the CLI sends it. With buildx
(Docker's packages install it, and a CLI from 23.0 on runs "docker builder" as
"docker buildx") it opens POST /grpc and calls BuildKit's Control/Prune inside:
an authorization plugin (authz mode) sees only POST /grpc, and only
"prune-guard proxy" (proxy mode) decides the call. Without buildx it is the REST
request POST /build/prune, which both modes decide alike.`,
		Example: `  prune-guard explain POST '/v1.43/images/prune?filters={"dangling":{"false":true}}'
  prune-guard explain --run-active DELETE /v1.43/images/alpine:3.19
  prune-guard explain -- docker image prune -a
  prune-guard explain -- docker builder prune -af
  prune-guard explain GRPC /moby.buildkit.v1.Control/Prune --grpc-message 0a001001
  prune-guard explain --policy new.yaml --run-active -- docker system prune -af --volumes`,
		RunE: func(cmd *cobra.Command, args []string) error { return runExplain(cmd, args, o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.policyFile, "policy", "", "policy file to explain against (default: the built-in policy)")
	f.BoolVar(&o.runActive, "run-active", false, "assume a CI run is active")
	f.BoolVar(&o.imageProtected, "image-protected", false, "assume the image named is protected")
	f.BoolVar(&o.pluginProtected, "plugin-protected", false, "assume the plugin named is protected")
	f.StringVar(&o.apiVersion, "api-version", "1.44", "API version the docker command line is assumed to negotiate")
	f.StringVar(&o.grpcMessage, "grpc-message", "", "with GRPC: the call's first request message, in hex, without gRPC's 5-byte prefix (Control/Prune's PruneRequest: 0a001001 is all=true, 0a00 all=false)")
	return cmd
}

// runExplain explains the request or command line args name.
func runExplain(cmd *cobra.Command, args []string, o explainOptions) error {
	cfg := policy.Default()
	if o.policyFile != "" {
		var err error
		if cfg, err = policy.Load(o.policyFile); err != nil {
			return err
		}
	}
	ways, err := explainWays(cmd, args, o)
	if err != nil {
		return err
	}
	writeWays(cmd.OutOrStdout(), ways, cfg, explainFacts(o))
	return nil
}

// explainWays reads what args name: a docker command line after "--", a
// gRPC call, or METHOD and URI.
func explainWays(cmd *cobra.Command, args []string, o explainOptions) ([]way, error) {
	switch {
	case cmd.ArgsLenAtDash() >= 0:
		return dockerWays(args[cmd.ArgsLenAtDash():], o.apiVersion)
	case len(args) != 2:
		return nil, errors.New("want METHOD URI, GRPC /package.Service/Method, or -- docker COMMAND...; see --help")
	case strings.EqualFold(args[0], "GRPC"):
		r, err := grpcRequest(args[1], o.grpcMessage, cmd.Flags().Changed("grpc-message"))
		if err != nil {
			return nil, err
		}
		return []way{{reqs: []sent{{r: r, proxyOnly: true}}}}, nil
	case o.grpcMessage != "":
		return nil, errors.New("--grpc-message is for GRPC /package.Service/Method")
	}
	return []way{{reqs: []sent{{r: rules.Request{Method: strings.ToUpper(args[0]), URI: args[1]}}}}}, nil
}

// explainFacts are the facts the flags state, in place of an engine.
func explainFacts(o explainOptions) rules.Facts {
	return rules.FactsFuncs{
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
}

// writeWays explains each request of each way, and which mode sees it.
func writeWays(w io.Writer, ways []way, cfg *policy.Config, facts rules.Facts) {
	c := rules.NewClassifier()
	first := true
	for _, wy := range ways {
		if wy.title != "" {
			if !first {
				fmt.Fprintln(w)
			}
			fmt.Fprintf(w, "%s\n", wy.title)
			first = false
		}
		tunnel := audit.Allow
		for _, s := range wy.reqs {
			if !first {
				fmt.Fprintln(w)
			}
			first = false
			d := explain(w, c, s.r, cfg, facts)
			switch {
			case s.tunnel:
				tunnel = audit.OutcomeOf(d)
				fmt.Fprintln(w, "seen by:   both modes: an authorization plugin is asked about POST /grpc, and the proxy sees it")
			case s.proxyOnly && wy.title == "":
				fmt.Fprintln(w, "seen by:   proxy mode only: an authorization plugin never sees a gRPC call")
			case s.proxyOnly && tunnel == audit.Deny:
				fmt.Fprintln(w, "seen by:   proxy mode only; in authz mode the tunnel is refused, and the call never runs")
			case s.proxyOnly:
				fmt.Fprintln(w, "seen by:   proxy mode only; in authz mode the plugin allows the tunnel and never sees this call, which runs")
			}
		}
	}
}

// way is one way a command line reaches the engine: what sends it that way
// ("" when there is one way), and the requests.
type way struct {
	title string
	reqs  []sent
}

// sent is a request as a transport sees it: tunnel for POST /grpc, which
// carries gRPC calls; proxyOnly for a gRPC call, which only the proxy sees.
type sent struct {
	r         rules.Request
	tunnel    bool
	proxyOnly bool
}

func explain(w io.Writer, c *rules.Classifier, r rules.Request, cfg *policy.Config, facts rules.Facts) rules.Decision {
	cl := c.Classify(r)
	d := rules.Evaluate(cl, cfg.Policy, facts)
	if r.GRPC != nil {
		fmt.Fprintf(w, "request:   gRPC %s%s\n", r.URI, grpcMessageText(r, cl))
	} else {
		fmt.Fprintf(w, "request:   %s %s\n", r.Method, r.URI)
	}
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
	return d
}

// grpcMessageText shows a Control/Prune call's message and what the
// classifier read in it.
func grpcMessageText(r rules.Request, cl rules.Classification) string {
	if r.GRPC.Message == nil || !rules.GRPCReadsMessage(r.URI) {
		return ""
	}
	shown := "(empty)"
	if len(r.GRPC.Message) > 0 {
		shown = hex.EncodeToString(r.GRPC.Message)
	}
	switch cl.Op {
	case rules.OpBuildPruneAll:
		return fmt.Sprintf(" (PruneRequest %s: all=true)", shown)
	case rules.OpBuildPrune:
		return fmt.Sprintf(" (PruneRequest %s: all=false)", shown)
	}
	return fmt.Sprintf(" (PruneRequest %s)", shown)
}

// grpcRequest is the gRPC call "explain GRPC PATH" names, with the first
// message in hex when given.
func grpcRequest(path, hexMsg string, given bool) (rules.Request, error) {
	if !strings.HasPrefix(path, "/") {
		return rules.Request{}, fmt.Errorf("explain: a gRPC method is a path, /package.Service/Method, not %q", path)
	}
	call := &rules.GRPCCall{}
	if given {
		msg, err := hex.DecodeString(strings.ReplaceAll(hexMsg, " ", ""))
		if err != nil {
			return rules.Request{}, fmt.Errorf("--grpc-message: %w", err)
		}
		call.Message = append([]byte{}, msg...) // empty, not nil: a message of no bytes
	} else if rules.GRPCReadsMessage(path) {
		return rules.Request{}, fmt.Errorf("explain: %s is decided by its first message; give it with --grpc-message HEX (for Control/Prune: 0a001001 is all=true, 0a00 all=false)", path)
	}
	return rules.Request{Method: "POST", URI: path, GRPC: call}, nil
}

// dockerWays translates a docker command line into the ways the CLI sends
// it: build-cache prunes with buildx as BuildKit gRPC calls in POST /grpc,
// everything else (and build-cache prunes without buildx) as the REST
// requests dockerRequests returns.
func dockerWays(args []string, apiVersion string) ([]way, error) {
	reqs, err := dockerRequests(args, apiVersion)
	if err != nil {
		return nil, err
	}
	if len(args) > 0 && args[0] == "docker" {
		args = args[1:]
	}
	cl := parseCommandLine(args)
	rest := way{reqs: make([]sent, 0, len(reqs))}
	for _, r := range reqs {
		rest.reqs = append(rest.reqs, sent{r: r})
	}
	v := "/v" + apiVersion
	switch cl.command {
	case "buildx prune":
		bx := buildxPrune(cl, v)
		bx.title = "docker buildx prune opens POST /grpc, BuildKit's gRPC tunnel, and calls Control/Prune inside it:"
		return []way{bx}, nil
	case "builder prune":
		bx := buildxPrune(cl, v)
		bx.title = "With buildx (Docker's packages install it; a CLI from 23.0 on runs 'docker builder' as 'docker buildx'),\n" +
			"the CLI opens POST /grpc, BuildKit's gRPC tunnel, and calls Control/Prune inside it:"
		rest.title = "Without buildx (BuildKit off, or a CLI before 23.0 without 'docker buildx install'), it sends one REST\n" +
			"request, which an authorization plugin and the proxy decide alike:"
		return []way{bx, rest}, nil
	}
	return []way{rest}, nil
}

// buildxPrune is what buildx's docker driver sends for a build-cache prune:
// POST /grpc, then Control/Prune with a PruneRequest as BuildKit's client
// builds it (client/prune.go: the filters joined into one string, field 1;
// all, field 2). A keep budget is left out: only all decides.
func buildxPrune(cl commandLine, v string) way {
	msg := protowire.AppendTag(nil, 1, protowire.BytesType)
	msg = protowire.AppendString(msg, strings.Join(cl.filters, ","))
	if cl.all {
		msg = protowire.AppendTag(msg, 2, protowire.VarintType)
		msg = protowire.AppendVarint(msg, 1)
	}
	return way{reqs: []sent{
		{r: rules.Request{Method: "POST", URI: v + "/grpc"}, tunnel: true},
		{r: rules.Request{Method: "POST", URI: "/moby.buildkit.v1.Control/Prune", GRPC: &rules.GRPCCall{Message: msg}}, proxyOnly: true},
	}}
}

// dockerRequests translates the common docker prune and rmi command lines
// into the REST requests the docker CLI sends for them (build-cache prunes
// as the CLI sends them without buildx).
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
	"buildx prune":    one(buildPrune), // dockerWays shows the gRPC call it really sends
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
