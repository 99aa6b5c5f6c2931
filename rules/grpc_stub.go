package rules

// Temporary: replaced by the gRPC classification (branch grpcrules).

// GRPCCall is what a proxy read of a gRPC call.
type GRPCCall struct {
	Message []byte
	Unread  string
}

// GRPCReadsMessage reports whether classifying a call to method needs its
// first request message.
func GRPCReadsMessage(method string) bool { return method == "/moby.buildkit.v1.Control/Prune" }
