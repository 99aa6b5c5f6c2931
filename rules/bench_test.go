package rules

import "testing"

func BenchmarkClassifyRead(b *testing.B) {
	c := NewClassifier()
	r := Request{Method: "GET", URI: "/v1.41/containers/json?all=1", Headers: map[string]string{"User-Agent": "Docker-Client/28.2.2 (linux)"}}
	b.ReportAllocs()
	for b.Loop() {
		c.Classify(r)
	}
}

func BenchmarkClassifyContainerStart(b *testing.B) {
	c := NewClassifier()
	r := Request{Method: "POST", URI: "/v1.41/containers/0123456789ab/start", Headers: map[string]string{"Content-Type": "text/plain", "Content-Length": "0"}}
	b.ReportAllocs()
	for b.Loop() {
		c.Classify(r)
	}
}

func BenchmarkClassifyPruneAll(b *testing.B) {
	c := NewClassifier()
	r := Request{Method: "POST", URI: "/v1.41/images/prune?filters=%7B%22dangling%22%3A%7B%22false%22%3Atrue%7D%7D",
		Headers: map[string]string{"Content-Type": "text/plain", "Content-Length": "0"}}
	b.ReportAllocs()
	for b.Loop() {
		c.Classify(r)
	}
}

func BenchmarkEvaluateDeny(b *testing.B) {
	c := NewClassifier()
	p := Default()
	cl := c.Classify(Request{Method: "POST", URI: "/v1.41/images/prune?filters=%7B%22dangling%22%3A%7B%22false%22%3Atrue%7D%7D"})
	facts := FactsFuncs{RunsFunc: func() RunState { return RunState{} }}
	b.ReportAllocs()
	for b.Loop() {
		Evaluate(cl, p, facts)
	}
}

func BenchmarkClassifyGRPCSolve(b *testing.B) {
	c := NewClassifier()
	r := Request{Method: "POST", URI: "/moby.buildkit.v1.Control/Solve", GRPC: &GRPCCall{}}
	b.ReportAllocs()
	for b.Loop() {
		c.Classify(r)
	}
}

func BenchmarkClassifyGRPCPrune(b *testing.B) {
	c := NewClassifier()
	r := Request{Method: "POST", URI: "/moby.buildkit.v1.Control/Prune", GRPC: &GRPCCall{Message: []byte{0x0a, 0x00, 0x10, 0x01}}}
	b.ReportAllocs()
	for b.Loop() {
		c.Classify(r)
	}
}
