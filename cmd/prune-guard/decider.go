package main

import (
	"context"

	"github.com/docker/go-plugins-helpers/authorization"
	"github.com/prune-guard/prune-guard/authz"
	"github.com/prune-guard/prune-guard/guard"
	"github.com/prune-guard/prune-guard/proxy"
	"github.com/prune-guard/prune-guard/rules"
)

// authzDecider answers the plugin protocol's calls with the guard's
// decisions: the one place the transport's view of a request becomes the
// guard's.
type authzDecider struct{ g *guard.Guard }

func (d authzDecider) Decide(ctx context.Context, r authz.Request) authorization.Response {
	body := rules.BodyHidden
	if r.BodyForwarded {
		body = rules.BodyForwarded
	}
	v := d.g.Decide(ctx, guard.Request{Method: r.Method, URI: r.URI, User: r.User, Headers: r.Headers, Body: body})
	return authorization.Response{Allow: v.Allow, Msg: v.Message}
}

// A pull the proxy relays is told its response (guard.Pull is a
// proxy.Observer).
var _ proxy.Observer = (*guard.Pull)(nil)

// proxyDecider answers the proxy's questions with the guard's decisions: the
// one place the proxy's view of a request becomes the guard's.
type proxyDecider struct{ g *guard.Guard }

func (d proxyDecider) Decide(ctx context.Context, r proxy.Request) proxy.Verdict {
	req := guard.Request{Method: r.Method, URI: r.URI, Headers: r.Headers, Body: rules.BodyProxied, RelaysResponse: true}
	if r.GRPC != nil {
		req.GRPC = &rules.GRPCCall{Message: r.GRPC.Message, Unread: r.GRPC.Unread}
	}
	v := d.g.Decide(ctx, req)
	pv := proxy.Verdict{Allow: v.Allow, Message: v.Message}
	if v.Pull != nil {
		// The proxy tells the pull its response: its progress counts
		// layers and bytes, and its end writes the record.
		pv.Observe = v.Pull
	}
	return pv
}
