package rules

import (
	"encoding/hex"
	"net/url"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

// hx decodes space-separated hex bytes; "" is a non-nil empty message.
func hx(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}

// read is a call whose first message the proxy read.
func read(msg []byte) *GRPCCall { return &GRPCCall{Message: msg} }

func TestClassifyGRPCMethods(t *testing.T) {
	pruneAll := read(hx("0a 00 10 01"))
	tests := []struct {
		name   string
		uri    string
		call   *GRPCCall
		want   Operation
		method string // GRPCMethod; "" means the uri itself
	}{
		// moby.buildkit.v1.Control
		{name: "Control/DiskUsage reads", uri: "/moby.buildkit.v1.Control/DiskUsage", want: OpOther},
		{name: "Control/Solve builds", uri: "/moby.buildkit.v1.Control/Solve", want: OpOther},
		{name: "Control/Status reads", uri: "/moby.buildkit.v1.Control/Status", want: OpOther},
		{name: "Control/ListWorkers reads", uri: "/moby.buildkit.v1.Control/ListWorkers", want: OpOther},
		{name: "Control/Info reads", uri: "/moby.buildkit.v1.Control/Info", want: OpOther},
		{name: "Control/ListenBuildHistory reads", uri: "/moby.buildkit.v1.Control/ListenBuildHistory", want: OpOther},
		{name: "Control/Session is a BuildKit session, as POST /session", uri: "/moby.buildkit.v1.Control/Session", want: OpBuildKitStream},
		{name: "Control/UpdateBuildHistory is buildkit-history", uri: "/moby.buildkit.v1.Control/UpdateBuildHistory", want: OpBuildKitHistory},
		{name: "Control/Prune with all is build-prune-all", uri: "/moby.buildkit.v1.Control/Prune", call: pruneAll, want: OpBuildPruneAll},
		{name: "Control/Prune without all is build-prune", uri: "/moby.buildkit.v1.Control/Prune", call: read(hx("0a 00")), want: OpBuildPrune},
		{name: "an unknown Control method is grpc-unknown", uri: "/moby.buildkit.v1.Control/DeleteCache", want: OpGRPCUnknown},
		{name: "a method name is case-sensitive", uri: "/moby.buildkit.v1.Control/prune", call: pruneAll, want: OpGRPCUnknown},
		// The gateway a frontend calls during a build.
		{name: "LLBBridge/Solve builds", uri: "/moby.buildkit.v1.frontend.LLBBridge/Solve", want: OpOther},
		{name: "LLBBridge/ExecProcess runs in a build container", uri: "/moby.buildkit.v1.frontend.LLBBridge/ExecProcess", want: OpOther},
		{name: "LLBBridge/ReleaseContainer releases a build container", uri: "/moby.buildkit.v1.frontend.LLBBridge/ReleaseContainer", want: OpOther},
		{name: "LLBBridge/StatFileContainer (v0.32+) reads", uri: "/moby.buildkit.v1.frontend.LLBBridge/StatFileContainer", want: OpOther},
		{name: "LLBBridge/Warn reports", uri: "/moby.buildkit.v1.frontend.LLBBridge/Warn", want: OpOther},
		{name: "an unknown LLBBridge method is grpc-unknown", uri: "/moby.buildkit.v1.frontend.LLBBridge/Prune", want: OpGRPCUnknown},
		// Traces, content, health.
		{name: "OTLP trace Export", uri: "/opentelemetry.proto.collector.trace.v1.TraceService/Export", want: OpOther},
		{name: "content Read", uri: "/containerd.services.content.v1.Content/Read", want: OpOther},
		{name: "content Delete (BuildKit's store is read-only)", uri: "/containerd.services.content.v1.Content/Delete", want: OpOther},
		{name: "health Check", uri: "/grpc.health.v1.Health/Check", want: OpOther},
		{name: "health Watch", uri: "/grpc.health.v1.Health/Watch", want: OpOther},
		// Services prune-guard does not know.
		{name: "an extension's service is grpc-unknown", uri: "/moby.extensions.v1.Volumes/Prune", want: OpGRPCUnknown},
		{name: "containerd's images service is not served, so grpc-unknown", uri: "/containerd.services.images.v1.Images/Delete", want: OpGRPCUnknown},
		{name: "server reflection is not served, so grpc-unknown", uri: "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", want: OpGRPCUnknown},
		// The path as grpc-go routes it: decoded, query dropped, one
		// leading slash removed, split at the last slash.
		{name: "a percent-encoded method routes after decoding", uri: "/moby.buildkit.v1.Control/%50rune", call: pruneAll, want: OpBuildPruneAll, method: "/moby.buildkit.v1.Control/Prune"},
		{name: "an encoded slash routes after decoding", uri: "/moby.buildkit.v1.Control%2FPrune", call: pruneAll, want: OpBuildPruneAll, method: "/moby.buildkit.v1.Control/Prune"},
		{name: "a query is not part of the method", uri: "/moby.buildkit.v1.Control/Prune?x=1", call: pruneAll, want: OpBuildPruneAll, method: "/moby.buildkit.v1.Control/Prune"},
		{name: "an absolute-form path routes by its path", uri: "http://docker/moby.buildkit.v1.Control/Prune", call: pruneAll, want: OpBuildPruneAll, method: "/moby.buildkit.v1.Control/Prune"},
		{name: "a double leading slash names another service", uri: "//moby.buildkit.v1.Control/Prune", call: pruneAll, want: OpGRPCUnknown},
		{name: "a trailing slash names an empty method", uri: "/moby.buildkit.v1.Control/Prune/", want: OpGRPCUnknown},
		{name: "a path without a method is grpc-unknown", uri: "/moby.buildkit.v1.Control", want: OpGRPCUnknown},
		{name: "a bare slash is grpc-unknown", uri: "/", want: OpGRPCUnknown},
		// Calls that cannot be classified.
		{name: "no path is unknown", uri: "", want: OpUnknown, method: "-"},
		{name: "a bad escape is unknown", uri: "/moby.buildkit.v1.Control/%zz", want: OpUnknown, method: "-"},
		{name: "a relative path is unknown", uri: "moby.buildkit.v1.Control/Prune", call: pruneAll, want: OpUnknown, method: "-"},
		{name: "a control byte is unknown", uri: "/moby.buildkit.v1.Control/Prune\x00", call: pruneAll, want: OpUnknown, method: "-"},
	}
	c := NewClassifier()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			call := tt.call
			if call == nil {
				call = &GRPCCall{}
			}
			got := c.Classify(Request{Method: "POST", URI: tt.uri, GRPC: call})
			if got.Op != tt.want {
				t.Errorf("Op = %v, want %v (doubt %q)", got.Op, tt.want, got.Doubt)
			}
			want := tt.method
			switch want {
			case "":
				want = tt.uri
			case "-":
				want = ""
			}
			if got.GRPCMethod != want {
				t.Errorf("GRPCMethod = %q, want %q", got.GRPCMethod, want)
			}
			if (got.Op == OpUnknown) != (got.Doubt != "") {
				t.Errorf("Doubt = %q for %v: only an unknown call is doubted", got.Doubt, got.Op)
			}
			if got.Target != "" || got.Scope != nil || got.Force || got.APIVersion != "" {
				t.Errorf("a gRPC call has no REST fields: %+v", got)
			}
		})
	}
}

func TestClassifyGRPCIgnoresRESTFields(t *testing.T) {
	// A gRPC call is classified by its path and message alone: the
	// REST router's idea of POST /grpc, a form Content-Type or a GET
	// changes nothing.
	c := NewClassifier()
	for _, r := range []Request{
		{Method: "POST", URI: "/grpc", GRPC: &GRPCCall{}},
		{Method: "GET", URI: "/moby.buildkit.v1.Control/Solve", GRPC: &GRPCCall{}},
		{Method: "POST", URI: "/moby.buildkit.v1.Control/Solve", Headers: map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, GRPC: &GRPCCall{}},
	} {
		if got := c.Classify(r); got.Op != OpOther && got.Op != OpGRPCUnknown {
			t.Errorf("%s %s = %v", r.Method, r.URI, got.Op)
		}
	}
	if got := c.Classify(Request{Method: "POST", URI: "/grpc", GRPC: &GRPCCall{}}); got.Op != OpGRPCUnknown {
		t.Errorf("a gRPC call to /grpc = %v, want grpc-unknown (no such service)", got.Op)
	}
}

// TestClassifyPruneRequest reads the PruneRequest as dockerd's decoders do,
// and holds every row to both of them (pruneVerdict): protobuf-go, which
// Docker 28.5 and 29 run, and gogo's generated code, which 20.10 and 26.1
// run.
func TestClassifyPruneRequest(t *testing.T) {
	tests := []struct {
		name string
		msg  string // hex; "nil" for a message that was not read
		want Operation
	}{
		// What buildx v0.29.1 (Debian forky's) sends (research-17 Q4).
		{name: "docker builder prune -af (buildx prune -af) is build-prune-all", msg: "0a 00 10 01", want: OpBuildPruneAll},
		{name: "buildx prune -f is build-prune", msg: "0a 00", want: OpBuildPrune},
		{name: "buildx prune -f --filter until=24h is build-prune", msg: "0a 00 18 80 80 bc 8a c9 d2 13", want: OpBuildPrune},
		{name: "buildx prune -f --filter type=regular is build-prune", msg: "0a 0d 74797065 3d3d 72656775 6c6172", want: OpBuildPrune},
		{name: "buildx prune -af --keep-storage 1gb is build-prune-all: a budget does not lift all", msg: "0a 00 10 01 20 80 80 80 80 04", want: OpBuildPruneAll},
		{name: "buildx prune -f --reserved-space 1gb is build-prune", msg: "0a 00 20 80 80 80 80 04", want: OpBuildPrune},
		{name: "buildx prune -f --max-used-space 1gb --min-free-space 2gb is build-prune", msg: "0a 00 28 80 80 80 80 04 30 80 80 80 80 08", want: OpBuildPrune},
		{name: "an empty PruneRequest (buildctl prune, no filter) is build-prune", msg: "", want: OpBuildPrune},
		{name: "several filters are read past", msg: "0a 03 613d62 0a 00 0a 01 78 10 01", want: OpBuildPruneAll},
		{name: "a filter that is not UTF-8 is read past (gogo never checks)", msg: "0a 02 ff fe 10 01", want: OpBuildPruneAll},
		// all: a bool is a varint != 0, and the last one wins.
		{name: "all=2 is true", msg: "10 02", want: OpBuildPruneAll},
		{name: "all=128 (two bytes) is true", msg: "10 80 01", want: OpBuildPruneAll},
		{name: "all=0 is false", msg: "10 00", want: OpBuildPrune},
		{name: "all true then false: the last wins", msg: "10 01 10 00", want: OpBuildPrune},
		{name: "all false then true: the last wins", msg: "10 00 10 01", want: OpBuildPruneAll},
		{name: "all after the filter or before it alike", msg: "10 01 0a 00", want: OpBuildPruneAll},
		{name: "a non-minimal varint 1 is true", msg: "10 81 80 00", want: OpBuildPruneAll},
		{name: "a non-minimal varint 0 is false", msg: "10 80 80 80 00", want: OpBuildPrune},
		{name: "a ten-byte varint 2^63 is true", msg: "10 80 80 80 80 80 80 80 80 80 01", want: OpBuildPruneAll},
		{name: "a non-minimal tag for all is read", msg: "90 00 01", want: OpBuildPruneAll},
		// The budgets: repeated, last wins, and never decide the operation.
		{name: "keep-storage repeated, the last wins, all decides", msg: "20 01 20 00 10 01", want: OpBuildPruneAll},
		{name: "keep-storage repeated without all is build-prune", msg: "20 80 08 20 01", want: OpBuildPrune},
		{name: "a negative keepDuration is read past", msg: "18 ff ff ff ff ff ff ff ff ff 01", want: OpBuildPrune},
		// Unknown fields are skipped whatever their wire type.
		{name: "an unknown varint field is skipped", msg: "38 05 10 01", want: OpBuildPruneAll},
		{name: "an unknown fixed64 field is skipped", msg: "39 0102030405060708 10 01", want: OpBuildPruneAll},
		{name: "an unknown fixed32 field is skipped", msg: "3d 01020304 10 01", want: OpBuildPruneAll},
		{name: "an all lookalike inside an unknown field's bytes is not all", msg: "3a 02 10 01", want: OpBuildPrune},
		{name: "a large unknown field number is skipped", msg: "f8 ff ff ff 0f 01 10 01", want: OpBuildPruneAll},
		// What the decoders reject or read apart is refused.
		{name: "a message that was not read is unknown", msg: "nil", want: OpUnknown},
		{name: "a truncated tag is unknown", msg: "0a 00 90", want: OpUnknown},
		{name: "a truncated all is unknown", msg: "10", want: OpUnknown},
		{name: "a truncated varint is unknown", msg: "10 80", want: OpUnknown},
		{name: "a truncated filter is unknown", msg: "0a 05 61", want: OpUnknown},
		{name: "a filter length past the end is unknown", msg: "0a ff ff ff ff ff ff ff ff ff 01", want: OpUnknown},
		{name: "an all varint overflowing 64 bits is unknown (gogo reads it false)", msg: "10 80 80 80 80 80 80 80 80 80 02", want: OpUnknown},
		{name: "an eleven-byte varint is unknown", msg: "10 80 80 80 80 80 80 80 80 80 80 01", want: OpUnknown},
		{name: "field number 0 is unknown", msg: "00 01", want: OpUnknown},
		{name: "a field number gogo truncates to all's is unknown", msg: hexTag(2<<3|1<<35) + " 01", want: OpUnknown},
		{name: "a field number over 2^29-1 is unknown", msg: hexTag(uint64(protowire.MaxValidNumber+1)<<3) + " 01", want: OpUnknown},
		{name: "all packed as bytes is unknown (protobuf-go keeps it aside, gogo rejects it)", msg: "12 01 01", want: OpUnknown},
		{name: "all as fixed32 is unknown", msg: "15 01000000", want: OpUnknown},
		{name: "a filter as a varint is unknown", msg: "08 00 10 01", want: OpUnknown},
		{name: "keep-storage packed as bytes is unknown", msg: "22 01 01", want: OpUnknown},
		{name: "max-used-space as fixed64 is unknown (gogo before v0.17 skips it, protobuf-go keeps it aside)", msg: "29 0000000000000000", want: OpUnknown},
		{name: "an unknown field of wire type 6 is unknown", msg: "3e 00", want: OpUnknown},
		{name: "an unknown field of wire type 7 is unknown", msg: "3f 00", want: OpUnknown},
		{name: "an unknown group is unknown (gogo ends it at any end tag)", msg: "3b 10 01 3c", want: OpUnknown},
		{name: "a group closed by another field's end tag is unknown", msg: "3b 44 10 01", want: OpUnknown},
		{name: "a stray end group is unknown", msg: "14", want: OpUnknown},
	}
	c := NewClassifier()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			call := &GRPCCall{}
			if tt.msg != "nil" {
				call.Message = hx(tt.msg)
			}
			got := c.Classify(Request{Method: "POST", URI: "/moby.buildkit.v1.Control/Prune", GRPC: call})
			if got.Op != tt.want {
				t.Fatalf("Op = %v, want %v (doubt %q)", got.Op, tt.want, got.Doubt)
			}
			if (got.Op == OpUnknown) != (got.Doubt != "") {
				t.Errorf("Doubt = %q for %v", got.Doubt, got.Op)
			}
			if call.Message != nil {
				if why := pruneVerdict(call.Message, got.Op != OpUnknown, got.Op == OpBuildPruneAll); why != "" {
					t.Errorf("%s", why)
				}
			}
		})
	}
}

// hexTag is a tag varint of any value, in hx's form.
func hexTag(v uint64) string {
	return hex.EncodeToString(protowire.AppendVarint(nil, v))
}

func TestClassifyPruneRequestThatWasNotRead(t *testing.T) {
	c := NewClassifier()
	tests := []struct {
		name string
		call GRPCCall
		want string // in the doubt
	}{
		{name: "the proxy says why it could not read it", call: GRPCCall{Unread: "grpc-encoding zstd is not supported"}, want: "could not be read: grpc-encoding zstd is not supported"},
		{name: "a reason wins over a message", call: GRPCCall{Message: hx("0a 00"), Unread: "the stream ended"}, want: "the stream ended"},
		{name: "no message and no reason means not read", call: GRPCCall{}, want: "was not read"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := c.Classify(Request{Method: "POST", URI: "/moby.buildkit.v1.Control/Prune", GRPC: &tt.call})
			if got.Op != OpUnknown || !strings.Contains(got.Doubt, tt.want) {
				t.Errorf("Classify = %v (doubt %q), want unknown with %q", got.Op, got.Doubt, tt.want)
			}
			if d := Evaluate(got, Default(), FactsFuncs{}); d.Allow || d.Rule != FailClosedRule {
				t.Errorf("Evaluate = %+v, want a fail-closed denial", d)
			}
		})
	}
}

func TestGRPCReadsMessageOnlyForPrune(t *testing.T) {
	tests := []struct {
		method string
		want   bool
	}{
		{"/moby.buildkit.v1.Control/Prune", true},
		{"/moby.buildkit.v1.Control/%50rune", true},
		{"/moby.buildkit.v1.Control/Prune?x", true},
		{"http://docker/moby.buildkit.v1.Control/Prune", true},
		{"/moby.buildkit.v1.Control/Session", false},
		{"/moby.buildkit.v1.Control/Solve", false},
		{"/moby.buildkit.v1.Control/UpdateBuildHistory", false},
		{"/moby.buildkit.v1.frontend.LLBBridge/ExecProcess", false},
		{"/moby.extensions.v1.Volumes/Prune", false},
		{"//moby.buildkit.v1.Control/Prune", false},
		{"/moby.buildkit.v1.Control/%zz", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := GRPCReadsMessage(tt.method); got != tt.want {
			t.Errorf("GRPCReadsMessage(%q) = %v, want %v", tt.method, got, tt.want)
		}
	}
	// Classify and the proxy agree on which calls need a message.
	c := NewClassifier()
	for method, kind := range grpcMethods {
		got := c.Classify(Request{Method: "POST", URI: "/" + method, GRPC: &GRPCCall{}})
		if needs := got.Op == OpUnknown; needs != GRPCReadsMessage("/"+method) || needs != (kind == grpcPrune) {
			t.Errorf("/%s: classified %v without its message, but GRPCReadsMessage = %v", method, got.Op, GRPCReadsMessage("/"+method))
		}
	}
}

func TestClassifyGRPCPassThroughAllocatesNothing(t *testing.T) {
	c := NewClassifier()
	for _, m := range []string{"/moby.buildkit.v1.Control/Solve", "/moby.buildkit.v1.Control/Status",
		"/moby.buildkit.v1.Control/Session", "/moby.buildkit.v1.frontend.LLBBridge/ReadFile"} {
		r := Request{Method: "POST", URI: m, GRPC: &GRPCCall{}}
		if n := testing.AllocsPerRun(100, func() { c.Classify(r) }); n != 0 {
			t.Errorf("Classify(%s) allocates %v times, want 0", m, n)
		}
		if n := testing.AllocsPerRun(100, func() { GRPCReadsMessage(m) }); n != 0 {
			t.Errorf("GRPCReadsMessage(%s) allocates %v times, want 0", m, n)
		}
	}
	prune := Request{Method: "POST", URI: "/moby.buildkit.v1.Control/Prune", GRPC: read(hx("0a 00 10 01"))}
	if n := testing.AllocsPerRun(100, func() { c.Classify(prune) }); n != 0 {
		t.Errorf("Classify(Control/Prune) allocates %v times, want 0", n)
	}
}

func TestPlainPathIsWhatParseRequestURIReturns(t *testing.T) {
	for _, s := range []string{"/a.B/C", "/", "//x", "/a#b", "/a b", "/\u00e9", "/a/./b", "/a;b", "/a+b"} {
		if !plainPath(s) {
			t.Errorf("plainPath(%q) = false", s)
			continue
		}
		u, err := url.ParseRequestURI(s)
		if err != nil || u.Path != s {
			t.Errorf("ParseRequestURI(%q) = %v, %v; plainPath says the path is itself", s, u, err)
		}
	}
	for _, s := range []string{"", "a/b", "/a?b", "/a%41", "/a\x7f", "/a\tb", "http://h/a", "*"} {
		if plainPath(s) {
			t.Errorf("plainPath(%q) = true", s)
		}
	}
}

func TestPruneVerdictCatchesWrongReadings(t *testing.T) {
	// The references must be able to fail a wrong reading, or the rows
	// above and FuzzClassifyGRPC prove nothing.
	tests := []struct {
		name     string
		msg      string
		accepted bool
		all      bool
	}{
		{name: "all read as false", msg: "10 01", accepted: true, all: false},
		{name: "all read as true", msg: "10 00", accepted: true, all: true},
		{name: "a truncated message accepted", msg: "10", accepted: true},
		{name: "a wrong wire type accepted (gogo rejects it)", msg: "12 01 01", accepted: true},
		{name: "an overflowing varint accepted (protobuf-go rejects it)", msg: "10 80 80 80 80 80 80 80 80 80 02", accepted: true},
		{name: "a plain message refused", msg: "0a 00 10 01", accepted: false},
	}
	for _, tt := range tests {
		if why := pruneVerdict(hx(tt.msg), tt.accepted, tt.all); why == "" {
			t.Errorf("%s: pruneVerdict passed it", tt.name)
		}
	}
}

// The two transports of a build-cache prune get the same decisions: REST
// POST /build/prune (docker system prune, the CLI without buildx) and gRPC
// Control/Prune (docker builder prune through buildx, any BuildKit client).
func TestGRPCAndRESTBuildPrunesAreDecidedAlike(t *testing.T) {
	idle := FactsFuncs{RunsFunc: func() RunState { return RunState{} }}
	busy := FactsFuncs{RunsFunc: func() RunState {
		return RunState{Active: []Run{{Detector: "prune-guard", System: "prune-guard run", Job: "7", Kind: Container, Name: "job"}}}
	}}
	tests := []struct {
		name  string
		rest  string // URI
		grpc  string // PruneRequest, hex
		facts Facts
		rule  string // "" for allowed
	}{
		{name: "prune -af is refused", rest: "/v1.51/build/prune?all=1", grpc: "0a 00 10 01", facts: idle, rule: "no-build-prune-all"},
		{name: "prune -af with a budget is refused", rest: "/v1.51/build/prune?all=1&reserved-space=1073741824", grpc: "0a 00 10 01 20 80 80 80 80 04", facts: idle, rule: "no-build-prune-all"},
		{name: "prune -f passes with no job", rest: "/v1.51/build/prune", grpc: "0a 00", facts: idle},
		{name: "prune -f with a budget passes with no job", rest: "/v1.51/build/prune?reserved-space=1073741824", grpc: "0a 00 20 80 80 80 80 04", facts: idle},
		{name: "prune -f is refused during a job", rest: "/v1.51/build/prune", grpc: "0a 00", facts: busy, rule: "no-prune-during-run"},
		{name: "prune -f with a budget is refused during a job", rest: "/v1.51/build/prune?max-used-space=1073741824", grpc: "28 80 80 80 80 04", facts: busy, rule: "no-prune-during-run"},
	}
	c, p := NewClassifier(), Default()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rest := Evaluate(c.Classify(Request{Method: "POST", URI: tt.rest}), p, tt.facts)
			grpc := Evaluate(c.Classify(Request{Method: "POST", URI: "/moby.buildkit.v1.Control/Prune", GRPC: read(hx(tt.grpc))}), p, tt.facts)
			if rest.Allow != (tt.rule == "") || rest.Rule != tt.rule {
				t.Errorf("REST %s: allow %v rule %q, want rule %q", tt.rest, rest.Allow, rest.Rule, tt.rule)
			}
			if grpc.Allow != rest.Allow || grpc.Rule != rest.Rule || grpc.Message != rest.Message {
				t.Errorf("gRPC Control/Prune %s: allow %v rule %q %q; REST: allow %v rule %q %q", tt.grpc, grpc.Allow, grpc.Rule, grpc.Message, rest.Allow, rest.Rule, rest.Message)
			}
		})
	}
}

func TestRuleMethodsLimitARuleToGRPCMethods(t *testing.T) {
	p := &Policy{Rules: append([]Rule{
		{Name: "allow-volumes-extension", Match: Ops(OpGRPCUnknown), Methods: []string{"/moby.extensions.v1.*/List", "/com.example.Volumes/*"}, Action: Allow},
		{Name: "no-grpc-prune", Match: Ops(OpBuildPrune, OpBuildPruneAll), Methods: []string{"/moby.buildkit.v1.Control/Prune"}, Action: Deny, Message: "use docker system prune"},
	}, DefaultRules()...)}
	tests := []struct {
		name string
		req  Request
		rule string
	}{
		{name: "a method a pattern names is allowed", req: Request{Method: "POST", URI: "/moby.extensions.v1.Volumes/List", GRPC: &GRPCCall{}}, rule: "allow-volumes-extension"},
		{name: "another service's methods all match its wildcard", req: Request{Method: "POST", URI: "/com.example.Volumes/Remove", GRPC: &GRPCCall{}}, rule: "allow-volumes-extension"},
		{name: "a method no pattern names falls through to no-unknown-grpc", req: Request{Method: "POST", URI: "/moby.extensions.v1.Volumes/Prune", GRPC: &GRPCCall{}}, rule: "no-unknown-grpc"},
		{name: "a wildcard does not cross a slash", req: Request{Method: "POST", URI: "/com.example.Volumes/a/b", GRPC: &GRPCCall{}}, rule: "no-unknown-grpc"},
		{name: "a gRPC prune matches a rule limited to its method", req: Request{Method: "POST", URI: "/moby.buildkit.v1.Control/Prune", GRPC: read(hx("0a 00"))}, rule: "no-grpc-prune"},
		{name: "a REST prune never matches a rule limited to gRPC methods", req: Request{Method: "POST", URI: "/v1.51/build/prune"}},
		{name: "nor does a REST prune -a, which the next rule refuses", req: Request{Method: "POST", URI: "/v1.51/build/prune?all=1"}, rule: "no-build-prune-all"},
	}
	c := NewClassifier()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Evaluate(c.Classify(tt.req), p, FactsFuncs{})
			if d.Rule != tt.rule {
				t.Errorf("rule %q (%s), want %q", d.Rule, d.Message, tt.rule)
			}
		})
	}
}

func TestValidateMethods(t *testing.T) {
	tests := []struct {
		name    string
		match   OpSet
		methods []string
		err     string // "" for valid
	}{
		{name: "no methods is every method", match: Ops(OpImagePruneAll)},
		{name: "a service wildcard", match: Ops(OpGRPCUnknown), methods: []string{"/moby.extensions.v1.*/*"}},
		{name: "one method of a known operation", match: Ops(OpBuildPrune, OpBuildPruneAll, OpBuildKitHistory, OpBuildKitStream), methods: []string{"/moby.buildkit.v1.Control/Prune"}},
		{name: "an empty list", match: Ops(OpGRPCUnknown), methods: []string{}, err: "lists no pattern"},
		{name: "no leading slash", match: Ops(OpGRPCUnknown), methods: []string{"moby.extensions.v1.X/Y"}, err: "write /package.Service/Method"},
		{name: "no method part", match: Ops(OpGRPCUnknown), methods: []string{"/moby.extensions.v1.*"}, err: "write /package.Service/Method"},
		{name: "a bad pattern", match: Ops(OpGRPCUnknown), methods: []string{"/x.Y/[a-"}, err: "syntax error in pattern"},
		{name: "an operation no gRPC call is", match: Ops(OpGRPCUnknown, OpImagePruneAll), methods: []string{"/x.Y/*"}, err: "no gRPC call is image-prune-all"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateMethods(tt.match, tt.methods)
			switch {
			case tt.err == "" && err != nil:
				t.Errorf("ValidateMethods = %v", err)
			case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
				t.Errorf("ValidateMethods = %v, want %q", err, tt.err)
			}
		})
	}
}
