package pullprogress

import (
	"bytes"
	"strings"
	"testing"
)

// Streams as the engines write them (moby pkg/streamformatter: one JSON
// message and "\r\n" each).
const (
	// A graph-driver pull (20.10, 26.1, 28.5 overlay2) of an image with
	// one layer present and two downloaded.
	graphDriverMiss = `{"status":"Pulling from pg/app","id":"1"}
{"status":"Already exists","progressDetail":{},"id":"aaaaaaaaaaaa"}
{"status":"Pulling fs layer","progressDetail":{},"id":"bbbbbbbbbbbb"}
{"status":"Pulling fs layer","progressDetail":{},"id":"cccccccccccc"}
{"status":"Downloading","progressDetail":{"current":512,"total":2048},"progress":"[====\u003e  ]     512B/2.048kB","id":"bbbbbbbbbbbb"}
{"status":"Downloading","progressDetail":{"current":2048,"total":2048},"progress":"[======\u003e]  2.048kB/2.048kB","id":"bbbbbbbbbbbb"}
{"status":"Verifying Checksum","progressDetail":{},"id":"bbbbbbbbbbbb"}
{"status":"Download complete","progressDetail":{},"id":"bbbbbbbbbbbb"}
{"status":"Downloading","progressDetail":{"current":100,"total":300},"id":"cccccccccccc"}
{"status":"Download complete","progressDetail":{},"id":"cccccccccccc"}
{"status":"Extracting","progressDetail":{"current":2048,"total":2048},"id":"bbbbbbbbbbbb"}
{"status":"Pull complete","progressDetail":{},"id":"bbbbbbbbbbbb"}
{"status":"Extracting","progressDetail":{"current":300,"total":300},"id":"cccccccccccc"}
{"status":"Pull complete","progressDetail":{},"id":"cccccccccccc"}
{"status":"Digest: sha256:4f53e2564790c8e7856ec08e384732aa38dc43c52f02952483e3f003afbf23db"}
{"status":"Status: Downloaded newer image for 127.0.0.1:5000/pg/app:1"}
`
	// The same engine pulling an image whose layers it has, under another
	// image (an image it has itself says nothing per layer: the hit
	// below).
	graphDriverLayersLocal = `{"status":"Pulling from pg/app","id":"1"}
{"status":"Already exists","progressDetail":{},"id":"aaaaaaaaaaaa"}
{"status":"Already exists","progressDetail":{},"id":"bbbbbbbbbbbb"}
{"status":"Digest: sha256:4f53e2564790c8e7856ec08e384732aa38dc43c52f02952483e3f003afbf23db"}
{"status":"Status: Image is up to date for 127.0.0.1:5000/pg/app:1"}
`
	// The containerd image store (28.5-containerd, 29): a blob it had says
	// "Already exists" and later "Pull complete" once its snapshot is
	// found; a downloaded one "Download complete" (without counts), the
	// last one without any "Downloading" (it arrived between two polls).
	containerdMiss = `{"status":"Pulling from pg/app","id":"1"}
{"status":"Pulling fs layer","progressDetail":{},"id":"aaaaaaaaaaaa"}
{"status":"Pulling fs layer","progressDetail":{},"id":"bbbbbbbbbbbb"}
{"status":"Pulling fs layer","progressDetail":{},"id":"cccccccccccc"}
{"status":"Already exists","progressDetail":{},"id":"aaaaaaaaaaaa"}
{"status":"Downloading","progressDetail":{"current":1048576,"total":4194304},"id":"bbbbbbbbbbbb"}
{"status":"Download complete","progressDetail":{"hidecounts":true},"id":"bbbbbbbbbbbb"}
{"status":"Download complete","progressDetail":{"hidecounts":true},"id":"cccccccccccc"}
{"status":"Extracting","progressDetail":{"current":1,"units":"s"},"id":"bbbbbbbbbbbb"}
{"status":"Pull complete","progressDetail":{"hidecounts":true},"id":"aaaaaaaaaaaa"}
{"status":"Pull complete","progressDetail":{"hidecounts":true},"id":"bbbbbbbbbbbb"}
{"status":"Pull complete","progressDetail":{"hidecounts":true},"id":"cccccccccccc"}
{"status":"Digest: sha256:4f53e2564790c8e7856ec08e384732aa38dc43c52f02952483e3f003afbf23db"}
{"status":"Status: Downloaded newer image for 127.0.0.1:5000/pg/app:1"}
`
	// Either store pulling an image it wholly has: no layer is mentioned
	// (graph drivers: pullSchema2Layers; containerd: hideLayers).
	wholeHit = `{"status":"Pulling from pg/app","id":"1"}
{"status":"Digest: sha256:4f53e2564790c8e7856ec08e384732aa38dc43c52f02952483e3f003afbf23db"}
{"status":"Status: Image is up to date for 127.0.0.1:5000/pg/app:1"}
`
	// A pull that fails once the stream began.
	failed = `{"status":"Pulling from pg/app","id":"1"}
{"status":"Pulling fs layer","progressDetail":{},"id":"bbbbbbbbbbbb"}
{"status":"Downloading","progressDetail":{"current":700,"total":2048},"id":"bbbbbbbbbbbb"}
{"errorDetail":{"message":"unexpected EOF"},"error":"unexpected EOF"}
`
)

func crlf(s string) string { return strings.ReplaceAll(s, "\n", "\r\n") }

func TestParserCountsLayersAndBytesAsEachEngineReportsThem(t *testing.T) {
	tests := []struct {
		name   string
		stream string
		want   Result
	}{
		{"graph driver, two layers downloaded", graphDriverMiss, Result{LayersReused: 1, LayersDownloaded: 2, BytesDownloaded: 2048 + 300}},
		{"graph driver, every layer local under another image", graphDriverLayersLocal, Result{LayersReused: 2}},
		{"containerd store, one reused and a size only where a poll saw it", containerdMiss, Result{LayersReused: 1, LayersDownloaded: 2, BytesDownloaded: 4194304}},
		{"an image wholly local: nothing per layer", wholeHit, Result{}},
		{"a failure keeps the engine's message and the bytes that came", failed, Result{BytesDownloaded: 700, Error: "unexpected EOF"}},
		{"the last line without its newline counts", strings.TrimSuffix(graphDriverLayersLocal, "\n"), Result{LayersReused: 2}},
		{"a message that is not JSON is passed over", "garbage\n{\"status\":\"Already exists\",\"id\":\"x\"}\n{\"status\":\"Download complete\",\"id\":", Result{LayersReused: 1}},
		{"negative and absurd sizes do not underflow or overflow", `{"status":"Downloading","progressDetail":{"current":-5,"total":-9},"id":"a"}
{"status":"Downloading","progressDetail":{"current":9223372036854775807,"total":9223372036854775807},"id":"b"}
{"status":"Download complete","id":"b"}
{"status":"Downloading","progressDetail":{"current":10},"id":"c"}
`, Result{LayersDownloaded: 1, BytesDownloaded: 1<<63 - 1}},
		{"a Pull complete without Already exists was downloaded", `{"status":"Pull complete","id":"a"}` + "\n", Result{LayersDownloaded: 1}},
		{"the first error is kept", `{"error":"first"}` + "\n" + `{"errorDetail":{"message":"second"}}` + "\n", Result{Error: "first"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, form := range []string{tt.stream, crlf(tt.stream)} {
				var p Parser
				p.Write([]byte(form))
				if got := p.Result(); got != tt.want {
					t.Errorf("Result = %+v, want %+v", got, tt.want)
				}
			}
		})
	}
}

func TestParserReadsAStreamInAnySplit(t *testing.T) {
	stream := []byte(crlf(graphDriverMiss + containerdMiss))
	var whole Parser
	whole.Write(stream)
	want := whole.Result()
	for _, size := range []int{1, 2, 3, 7, 64, 1000} {
		var p Parser
		for b := stream; len(b) > 0; {
			n := min(size, len(b))
			p.Write(b[:n])
			b = b[n:]
		}
		if got := p.Result(); got != want {
			t.Errorf("in %d-byte writes: %+v, want %+v", size, got, want)
		}
	}
}

func TestParserMemoryIsBounded(t *testing.T) {
	var p Parser
	long := bytes.Repeat([]byte("x"), 3*MaxLine)
	p.Write([]byte(`{"status":"Already exists","id":"`))
	p.Write(long)
	p.Write([]byte("\"}\n"))
	if cap(p.line) > MaxLine+len(`{"status":"Already exists","id":"`) {
		t.Errorf("a long line is held: %d bytes", cap(p.line))
	}
	for i := range 2 * MaxLayers {
		p.Write([]byte(`{"status":"Already exists","id":"` + strings.Repeat("a", i%7) + string(rune('A'+i%26)) + itoa(i) + `"}` + "\n"))
	}
	if len(p.layers) > MaxLayers {
		t.Errorf("%d layers followed, more than %d", len(p.layers), MaxLayers)
	}
	if r := p.Result(); r.LayersReused != MaxLayers {
		t.Errorf("LayersReused = %d, want %d", r.LayersReused, MaxLayers)
	}
}

func itoa(i int) string {
	var b []byte
	for {
		b = append([]byte{byte('0' + i%10)}, b...)
		if i /= 10; i == 0 {
			return string(b)
		}
	}
}

// FuzzParser: any stream, in any split, gives the same counts without
// panicking, within the bounds; counts are never negative and a layer is
// counted once.
func FuzzParser(f *testing.F) {
	for _, s := range []string{graphDriverMiss, graphDriverLayersLocal, containerdMiss, wholeHit, failed} {
		f.Add([]byte(s), uint8(3))
		f.Add([]byte(crlf(s)), uint8(1))
	}
	f.Add([]byte("{\"status\":\"Downloading\",\"progressDetail\":{\"current\":1e30},\"id\":\"a\"}\n"), uint8(0))
	f.Fuzz(func(t *testing.T, stream []byte, split uint8) {
		var whole, parts Parser
		whole.Write(stream)
		size := int(split) + 1
		for b := stream; len(b) > 0; {
			n := min(size, len(b))
			parts.Write(b[:n])
			b = b[n:]
		}
		want, got := whole.Result(), parts.Result()
		if got != want {
			t.Fatalf("in %d-byte writes %+v, whole %+v", size, got, want)
		}
		if got.LayersReused < 0 || got.LayersDownloaded < 0 || got.BytesDownloaded < 0 {
			t.Fatalf("negative counts: %+v", got)
		}
		if n := got.LayersReused + got.LayersDownloaded; n > int64(len(whole.layers)) || len(whole.layers) > MaxLayers {
			t.Fatalf("%d layers counted of %d followed", n, len(whole.layers))
		}
		if len(got.Error) > maxError || len(whole.line) > MaxLine {
			t.Fatalf("bounds exceeded: error %d bytes, line %d bytes", len(got.Error), len(whole.line))
		}
	})
}
