package rules

import (
	"fmt"
	"net/url"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"
)

// GRPCCall is what a proxy read of a gRPC call before deciding it.
type GRPCCall struct {
	// Message is the call's first request message, without gRPC's
	// five-byte prefix and decompressed, when GRPCReadsMessage(URI) and it
	// could be read. A zero-length message is a non-nil empty slice; nil
	// means it was not read, and a call whose classification needs it is
	// then refused.
	Message []byte
	// Unread says why the first message could not be read (compressed
	// with an encoding the proxy does not know, larger than its bound,
	// the stream ended first); "" when it was read or not needed.
	Unread string
}

// GRPCReadsMessage reports whether classifying a gRPC call to method (its
// path, as Request.URI holds it) needs the call's first request message.
// Only Control/Prune does: its message says how much it removes. A proxy
// reads the message only then, because a bidirectional stream
// (Control/Session, LLBBridge/ExecProcess) may wait for the server to
// speak first, and holding it for a message would hang it.
func GRPCReadsMessage(method string) bool {
	p, err := grpcPath(method)
	return err == nil && grpcMethods[grpcRoute(p)] == grpcPrune
}

// grpcKind is what a known gRPC method does, as far as the policy cares.
type grpcKind uint8

const (
	grpcUnknown grpcKind = iota // not served by any engine prune-guard knows
	grpcRead                    // reads, builds, traces: removes nothing
	grpcSession                 // the BuildKit session, as POST /session
	grpcHistory                 // deletes or pins build history records
	grpcPrune                   // removes build cache; its message says how much
)

// grpcServices are the gRPC services dockerd serves, natively from 29.2
// (daemon/command/httphandler.go routes HTTP/2 application/grpc* requests
// to them) and inside POST /grpc on every engine with BuildKit. moby's
// builder registers them through BuildKit's Controller.Register
// (control/control.go: eeb7b65ab7d6, vendored by moby v20.10.24, l.75-79,
// Control and LLBBridge only; v0.13.2 (v26.1.5) l.142-149, v0.25.2
// (v28.5.2) l.159-166, v0.32.2 (docker-v29.7.2) and v0.33.0 (v2.0.0-beta.24)
// l.188-195, all four). Each list is the union over those versions: a
// method an engine does not serve fails there with Unimplemented.
var grpcServices = []struct {
	service string
	kind    grpcKind
	methods []string
}{
	// api/services/control/control.proto, service Control (eeb7b65 and
	// v0.13.2 l.17; v0.25.2, v0.32.2 and v0.33.0 l.14). Prune streams one
	// UsageRecord per removed record; the reads list or watch the cache,
	// the workers and the build history.
	{"moby.buildkit.v1.Control", grpcRead, []string{"DiskUsage", "Solve", "Status", "ListWorkers", "Info", "ListenBuildHistory"}},
	{"moby.buildkit.v1.Control", grpcPrune, []string{"Prune"}},
	// Session is the client's session (file sync, auth, secrets, ssh)
	// tunnelled in a bidirectional stream of BytesMessage: what POST
	// /session carries (BuildKit client/solve.go falls back to it through
	// grpchijack when no session dialer is set).
	{"moby.buildkit.v1.Control", grpcSession, []string{"Session"}},
	// UpdateBuildHistory deletes, pins or finalizes a build history record
	// (message UpdateBuildHistoryRequest: Ref, Pinned, Delete at v0.13.2
	// l.218; Finalize too at v0.33.0 l.227), never build cache.
	{"moby.buildkit.v1.Control", grpcHistory, []string{"UpdateBuildHistory"}},
	// frontend/gateway/pb/gateway.proto, service LLBBridge (eeb7b65 l.16,
	// v0.13.2 l.17, v0.25.2 l.14, v0.32.2 and v0.33.0 l.15): what a
	// frontend calls during a build.
	{"moby.buildkit.v1.frontend.LLBBridge", grpcRead, []string{"ResolveImageConfig", "ResolveSourceMeta", "Solve",
		"ReadFile", "ReadDir", "StatFile", "Evaluate", "Ping", "Return", "Inputs", "NewContainer", "ReleaseContainer",
		"ExecProcess", "ReadFileContainer", "ReadDirContainer", "StatFileContainer", "Warn"}},
	// tracev1.RegisterTraceServiceServer: clients send build traces.
	{"opentelemetry.proto.collector.trace.v1.TraceService", grpcRead, []string{"Export"}},
	// containerd's content service over BuildKit's roContentStore, whose
	// Writer, Delete, Update and Abort return "read-only content store"
	// (control/control.go: v0.13.2 l.684-702, v0.25.2 l.769-787, v0.32.2
	// and v0.33.0 l.826-844), so none of its methods removes anything.
	// Names from containerd api content_grpc.pb.go, Content_ServiceDesc.
	{"containerd.services.content.v1.Content", grpcRead, []string{"Info", "Update", "Delete", "Status", "ListStatuses",
		"Abort", "List", "Read", "Write"}},
	// The standard health service (grpc health/grpc_health_v1). dockerd
	// registers none, but BuildKit sessions serve it, and it only reads.
	{"grpc.health.v1.Health", grpcRead, []string{"Check", "Watch", "List"}},
}

// grpcMethods maps each known method, keyed as grpcRoute returns it, to
// what it does.
var grpcMethods = func() map[string]grpcKind {
	m := make(map[string]grpcKind)
	for _, s := range grpcServices {
		for _, name := range s.methods {
			m[s.service+"/"+name] = s.kind
		}
	}
	return m
}()

// classifyGRPC classifies a gRPC call to the method at uri.
func classifyGRPC(uri string, call *GRPCCall) Classification {
	if uri == "" {
		return Classification{Op: OpUnknown, Doubt: "the gRPC call carried no path"}
	}
	p, err := grpcPath(uri)
	if err != nil {
		return Classification{Op: OpUnknown, Doubt: "the gRPC call's path does not parse: " + err.Error()}
	}
	cl := Classification{GRPCMethod: p}
	switch grpcMethods[grpcRoute(p)] {
	case grpcRead:
	case grpcSession:
		cl.Op = OpBuildKitStream
	case grpcHistory:
		cl.Op = OpBuildKitHistory
	case grpcPrune:
		cl.Op, cl.Doubt = classifyPruneRequest(call)
	default:
		cl.Op = OpGRPCUnknown
	}
	return cl
}

// grpcPath returns the path grpc-go routes a call by: the request's
// URL.Path (internal/transport/handler_server.go, HandleStreams, "method:
// req.URL.Path", from v1.27.1, which moby v20.10.24 vendors, to v1.83.2,
// which v2.0.0-beta.24 requires), decoded from :path by url.ParseRequestURI
// in Go's HTTP/2 servers (net/http h2_bundle.go and x/net/http2
// server.go, newWriterAndRequest). dockerd hands its gRPC server every
// call that way: grpc.Server.ServeHTTP, natively (daemon/command/
// httphandler.go) and inside POST /grpc (grpc_routes.go, http2.Server.
// ServeConn with the gRPC server as handler).
func grpcPath(uri string) (string, error) {
	if plainPath(uri) {
		// What url.ParseRequestURI would return, without allocating
		// for the calls every build makes.
		return uri, nil
	}
	u, err := url.ParseRequestURI(uri)
	if err != nil {
		return "", err
	}
	return u.Path, nil
}

// plainPath reports whether url.ParseRequestURI returns s itself as the
// path: an absolute path with no query, no escape and no control byte.
func plainPath(s string) bool {
	if s == "" || s[0] != '/' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '?' || c == '%' || c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

// grpcRoute returns the key grpc-go's server looks a call's path up by
// (server.go, handleStream): one leading '/' removed, the service before the
// last '/', the method after it. Registered service names contain no '/',
// so that key names a known method exactly when grpc-go would run it.
func grpcRoute(path string) string {
	return strings.TrimPrefix(path, "/")
}

// classifyPruneRequest reads a Control/Prune call's first message, the
// PruneRequest, which alone says how much it removes: with all, every
// unused cache record; without, those no image shares, internal and
// frontend records kept (BuildKit cache/manager.go, prune: "if !opt.all",
// eeb7b65 l.687, v0.13.2 l.1104, v0.25.2 l.1159). That is what REST POST
// /build/prune removes with and without all=1: moby's builder passes the
// same PruneRequest to the same Controller.Prune (builder-next/builder.go,
// Builder.Prune: v20.10.24 l.178, v28.5.2 l.214), so the two transports
// get the same operations.
func classifyPruneRequest(call *GRPCCall) (Operation, string) {
	switch {
	case call.Unread != "":
		return OpUnknown, "the first message of a Control/Prune call, which says how much it removes, could not be read: " + call.Unread
	case call.Message == nil:
		return OpUnknown, "the first message of a Control/Prune call, which says how much it removes, was not read"
	}
	all, err := readPruneAll(call.Message)
	if err != nil {
		return OpUnknown, "the Control/Prune call's PruneRequest is malformed (" + err.Error() + "), and BuildKit versions reject or read such a message differently"
	}
	if all {
		return OpBuildPruneAll, ""
	}
	return OpBuildPrune, ""
}

// PruneRequest's fields (BuildKit api/services/control/control.proto,
// message PruneRequest: eeb7b65 l.27 and v0.13.2 l.30 with keepBytes as
// field 4; v0.25.2, v0.32.2 and v0.33.0 l.27 with reservedSpace as field 4,
// maxUsedSpace and minFreeSpace). Only all decides the
// operation; the others must still have their own wire types.
var pruneWireTypes = [...]protowire.Type{
	1: protowire.BytesType,  // repeated string filter
	2: protowire.VarintType, // bool all
	3: protowire.VarintType, // int64 keepDuration (nanoseconds)
	4: protowire.VarintType, // int64 keepBytes, reservedSpace from v0.17.0
	5: protowire.VarintType, // int64 maxUsedSpace (v0.17.0+)
	6: protowire.VarintType, // int64 minFreeSpace (v0.17.0+)
}

const pruneAllField protowire.Number = 2

// readPruneAll returns a PruneRequest's all as every engine's decoder reads
// it, or an error where the decoders part ways. Engines up to v26.1
// decode PruneRequest with gogo-generated code (control.pb.go,
// PruneRequest.Unmarshal: eeb7b65 l.3111, v0.13.2 l.5335); later ones with
// protobuf-go's proto.Unmarshal (grpc's default codec; moby imports no
// other). Both let the last occurrence of a scalar win, read a bool as
// varint != 0, and skip unknown fields. Where they differ, this refuses:
//   - a known field with another wire type: gogo fails the call, protobuf-go
//     keeps the field as unknown and the value it had;
//   - a varint whose tenth byte is over 1: protobuf-go fails, gogo drops the
//     overflow (a 2^64 all is false there);
//   - a field number over 2^29-1: protobuf-go fails, gogo truncates it to
//     int32 and may read it as a known field;
//   - groups: gogo's skipControl ends one at any end-group tag, protobuf-go
//     only at its own.
//
// Strings are not checked for UTF-8: gogo never does, and protobuf-go's
// check only fails the call.
func readPruneAll(b []byte) (bool, error) {
	all := false
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false, fmt.Errorf("a field tag: %v", protowire.ParseError(n))
		}
		b = b[n:]
		switch {
		case num > protowire.MaxValidNumber:
			return false, fmt.Errorf("field number %d is over protobuf's maximum", num)
		case typ == protowire.StartGroupType || typ == protowire.EndGroupType:
			return false, fmt.Errorf("field %d is a group", num)
		case int(num) < len(pruneWireTypes) && typ != pruneWireTypes[num]:
			return false, fmt.Errorf("field %d has wire type %d, not %d", num, typ, pruneWireTypes[num])
		}
		if num == pruneAllField {
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return false, fmt.Errorf("field all: %v", protowire.ParseError(n))
			}
			all = protowire.DecodeBool(v)
			b = b[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return false, fmt.Errorf("field %d: %v", num, protowire.ParseError(n))
		}
		b = b[n:]
	}
	return all, nil
}
