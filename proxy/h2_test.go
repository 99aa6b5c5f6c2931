package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// rawCodec passes messages as the bytes they are.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	b, ok := v.([]byte)
	if !ok {
		return nil, fmt.Errorf("rawCodec: %T", v)
	}
	return b, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

// controlServer stands for BuildKit's control API: DiskUsage answers, and
// Prune, were it ever reached, would record that it ran.
type controlServer struct{ pruned chan []byte }

func newControlServer() (*grpc.Server, *controlServer) {
	cs := &controlServer{pruned: make(chan []byte, 10)}
	s := grpc.NewServer(grpc.ForceServerCodec(rawCodec{}))
	s.RegisterService(&grpc.ServiceDesc{
		ServiceName: "moby.buildkit.v1.Control",
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{MethodName: "DiskUsage", Handler: func(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			var in []byte
			if err := dec(&in); err != nil {
				return nil, err
			}
			return []byte{0x0a, 0x00}, nil
		}}},
		Streams: []grpc.StreamDesc{{StreamName: "Prune", ServerStreams: true, Handler: func(_ any, st grpc.ServerStream) error {
			var in []byte
			if err := st.RecvMsg(&in); err != nil {
				return err
			}
			cs.pruned <- in
			return nil
		}}},
	}, cs)
	return s, cs
}

// h2Engine is a fake Docker 29: HTTP/1.1 and h2c with prior knowledge on
// one socket, gRPC to the control server, REST to the mux, and the legacy
// POST /grpc tunnel.
func h2Engine(t *testing.T) (sock string, cs *controlServer) {
	t.Helper()
	gs, cs := newControlServer()
	mux := engineMux()
	mux.HandleFunc("POST /grpc", func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
		(&http2.Server{}).ServeConn(conn, &http2.ServeConnOpts{Handler: gs})
	})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			gs.ServeHTTP(w, r)
			return
		}
		mux.ServeHTTP(w, r)
	})
	sock = filepath.Join(t.TempDir(), "engine.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, Protocols: new(http.Protocols)}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close(); gs.Stop() })
	return sock, cs
}

func grpcClient(t *testing.T, dial func(context.Context, string) (net.Conn, error)) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///docker", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(dial), grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// pruneAll is Control/Prune with all=true.
func pruneAll(cc *grpc.ClientConn) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/moby.buildkit.v1.Control/Prune")
	if err != nil {
		return err
	}
	if err := s.SendMsg([]byte{0x10, 0x01}); err != nil {
		return err
	}
	s.CloseSend()
	var rec []byte
	for {
		if err := s.RecvMsg(&rec); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

func diskUsage(cc *grpc.ClientConn) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []byte
	return cc.Invoke(ctx, "/moby.buildkit.v1.Control/DiskUsage", []byte{}, &out)
}

// checkGRPC shows that reads pass and a refused call fails with
// PERMISSION_DENIED and the reason, never reaching the engine.
func checkGRPC(t *testing.T, cc *grpc.ClientConn, cs *controlServer, d *policyDecider) {
	t.Helper()
	if err := diskUsage(cc); err != nil {
		t.Errorf("DiskUsage through the proxy: %v", err)
	}
	err := pruneAll(cc)
	if st, _ := status.FromError(err); st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), "gRPC prune refused by the test") {
		t.Errorf("Prune through the proxy: %v; want PERMISSION_DENIED with the reason", err)
	}
	select {
	case m := <-cs.pruned:
		t.Errorf("the engine ran a refused prune (%x)", m)
	default:
	}
	var prune *Request
	for _, r := range d.requests() {
		if r.GRPC != nil && strings.HasSuffix(r.URI, "/Prune") {
			prune = &r
		}
	}
	if prune == nil || string(prune.GRPC.Message) != "\x10\x01" || !prune.HTTP2 {
		t.Errorf("the decider was not shown the prune's first message: %+v", prune)
	}
}

func readsPrune(method string) bool { return strings.HasSuffix(method, "/Prune") }

func serveProxyReading(t *testing.T, d Decider, engine string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "proxy.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := New(d, Options{Engine: engine, ReadsMessage: readsPrune, Drain: time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	t.Cleanup(func() { cancel(); <-done })
	return sock
}

// Native gRPC: HTTP/2 with prior knowledge on the socket, each call
// decided.
func TestNativeGRPCCallsAreDecidedOneByOne(t *testing.T) {
	engine, cs := h2Engine(t)
	d := &policyDecider{}
	sock := serveProxyReading(t, d, engine)
	cc := grpcClient(t, func(ctx context.Context, _ string) (net.Conn, error) {
		var nd net.Dialer
		return nd.DialContext(ctx, "unix", sock)
	})
	checkGRPC(t, cc, cs, d)
}

// BuildKit's legacy control tunnel: POST /grpc upgraded to h2c, then each
// call inside it decided.
func TestCallsInTheGRPCTunnelAreDecidedOneByOne(t *testing.T) {
	engine, cs := h2Engine(t)
	d := &policyDecider{}
	sock := serveProxyReading(t, d, engine)
	cc := grpcClient(t, func(ctx context.Context, _ string) (net.Conn, error) {
		var nd net.Dialer
		c, err := nd.DialContext(ctx, "unix", sock)
		if err != nil {
			return nil, err
		}
		io.WriteString(c, "POST /grpc HTTP/1.1\r\nHost: \r\nContent-Length: 0\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			c.Close()
			return nil, fmt.Errorf("upgrade: %v %v", resp, err)
		}
		return &readerConn{Conn: c, r: br}, nil
	})
	checkGRPC(t, cc, cs, d)
}

// REST over HTTP/2 is decided like REST over HTTP/1.1.
func TestRESTOverHTTP2IsDecidedLikeHTTP1(t *testing.T) {
	engine, _ := h2Engine(t)
	sock := serveProxyReading(t, &policyDecider{}, engine)
	c := &http.Client{Transport: &http2.Transport{AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, _, _ string, _ *tls.Config) (net.Conn, error) {
			var nd net.Dialer
			return nd.DialContext(ctx, "unix", sock)
		}}}
	resp, err := c.Get("http://docker/containers/json")
	if err != nil || resp.StatusCode != 200 || resp.ProtoMajor != 2 {
		t.Fatalf("GET over h2: %v %v", resp, err)
	}
	resp.Body.Close()
	resp, err = c.Post("http://docker/images/prune", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(b), "authorization denied by plugin prune-guard: ") {
		t.Errorf("prune over h2: %d %q", resp.StatusCode, b)
	}
}

// readFirstMessage reads a call's first message and loses nothing of the
// body: what it read goes back in front of the rest.
func FuzzReadFirstMessage(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 2, 0x10, 0x01, 0xff}, "")
	f.Add([]byte{1, 0, 0, 0, 3, 1, 2, 3}, "gzip")
	f.Add([]byte{0, 0x7f, 0xff, 0xff, 0xff}, "")
	f.Add([]byte{0, 0, 0}, "")
	f.Fuzz(func(t *testing.T, body []byte, encoding string) {
		r, err := http.NewRequest("POST", "http://docker/moby.buildkit.v1.Control/Prune", strings.NewReader(string(body)))
		if err != nil {
			t.Skip()
		}
		r.Header.Set("Grpc-Encoding", encoding)
		msg, unread := readFirstMessage(r)
		if (msg != nil) == (unread != "") {
			t.Fatalf("message %x and reason %q for %x: want exactly one", msg, unread, body)
		}
		if msg != nil && body[0] == 0 && string(msg) != string(body[5:5+len(msg)]) {
			t.Fatalf("message %x is not the body's %x", msg, body)
		}
		rest, _ := io.ReadAll(r.Body)
		if string(rest) != string(body) {
			t.Fatalf("the body after reading is %x, want %x", rest, body)
		}
	})
}
