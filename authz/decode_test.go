package authz

import (
	"bufio"
	"bytes"
	"encoding/json"
	"maps"
	"reflect"
	"strings"
	"testing"

	"github.com/docker/go-plugins-helpers/authorization"
)

// refRequest is authorization.Request as encoding/json decodes it, except
// that peer certificates stay raw: the helper's PeerCertificate decoder
// panics on malformed input, and no decision reads them.
type refRequest struct {
	User                    string            `json:"User,omitempty"`
	UserAuthNMethod         string            `json:"UserAuthNMethod,omitempty"`
	RequestMethod           string            `json:"RequestMethod,omitempty"`
	RequestURI              string            `json:"RequestUri,omitempty"`
	RequestBody             []byte            `json:"RequestBody,omitempty"`
	RequestHeaders          map[string]string `json:"RequestHeaders,omitempty"`
	RequestPeerCertificates json.RawMessage   `json:"RequestPeerCertificates,omitempty"`
	ResponseStatusCode      int               `json:"ResponseStatusCode,omitempty"`
	ResponseBody            []byte            `json:"ResponseBody,omitempty"`
	ResponseHeaders         map[string]string `json:"ResponseHeaders,omitempty"`
}

// The reference and the decoder's field list must follow the helper's type,
// or a new field there would go unchecked.
func TestReferenceMirrorsTheHelpersRequest(t *testing.T) {
	want, got := reflect.TypeFor[authorization.Request](), reflect.TypeFor[refRequest]()
	if want.NumField() != got.NumField() || len(fieldNames)-1 != want.NumField() {
		t.Fatalf("authorization.Request has %d fields, the reference %d, the decoder %d", want.NumField(), got.NumField(), len(fieldNames)-1)
	}
	for i := range want.NumField() {
		w, g := want.Field(i), got.Field(i)
		if w.Name != g.Name || w.Tag != g.Tag || (w.Type != g.Type && w.Name != "RequestPeerCertificates") {
			t.Errorf("field %d: helper %s %s %s, reference %s %s %s", i, w.Name, w.Type, w.Tag, g.Name, g.Type, g.Tag)
		}
		if name, _, _ := strings.Cut(w.Tag.Get("json"), ","); fieldNames[i+1] != name {
			t.Errorf("decoder field %d is %q, helper's JSON name %q", i+1, fieldNames[i+1], name)
		}
	}
}

// testHeaders are the headers the tests' decoder keeps: the ones
// prune-guard's guard reads.
var testHeaders = []string{"Content-Type", "Content-Length"}

func leanDecode(data []byte) (Request, error) {
	d := decoder{keep: testHeaders}
	return d.decode(bufio.NewReader(bytes.NewReader(data)), int64(len(data)))
}

// readView is what a decision reads of a decoded call.
type readView struct {
	User, Method, URI string
	Body              bool
	Headers           map[string]string
}

func viewOf(user, method, uri string, body bool, h map[string]string) readView {
	v := readView{User: user, Method: method, URI: uri, Body: body, Headers: map[string]string{}}
	d := decoder{keep: testHeaders}
	for k, val := range h {
		if d.keeps([]byte(k)) {
			v.Headers[k] = val
		}
	}
	return v
}

// checkSame fails unless the lean decoder either refuses data or reads from
// it what encoding/json reads. It reports whether the lean decoder accepted.
func checkSame(t *testing.T, data []byte) bool {
	t.Helper()
	got, err := leanDecode(data)
	if err != nil {
		return false
	}
	var ref refRequest
	if rerr := json.Unmarshal(data, &ref); rerr != nil {
		t.Fatalf("lean decoder accepted what encoding/json refuses (%v): %q", rerr, data)
	}
	g := viewOf(got.User, got.Method, got.URI, got.BodyForwarded, got.Headers)
	w := viewOf(ref.User, ref.RequestMethod, ref.RequestURI, len(ref.RequestBody) > 0, ref.RequestHeaders)
	if !reflect.DeepEqual(g, w) {
		t.Fatalf("lean decoder read %+v, encoding/json %+v, from %q", g, w, data)
	}
	return true
}

// dockerdCall encodes a call the way dockerd's plugin client does
// (json.NewEncoder, so &, < and > come out as \u0026 and so on).
func dockerdCall(t testing.TB, r authorization.Request) []byte {
	var b bytes.Buffer
	if err := json.NewEncoder(&b).Encode(r); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// decodeSeeds are calls the lean decoder must accept, and read as
// encoding/json does.
func decodeSeeds(t testing.TB) [][]byte {
	return [][]byte{
		dockerdCall(t, authorization.Request{RequestMethod: "GET", RequestURI: "/v1.41/containers/json?all=1&limit=<5>",
			RequestHeaders: map[string]string{"User-Agent": "Docker-Client/28.2.2 (linux)", "Accept": "*/*"}}),
		dockerdCall(t, authorization.Request{User: "ci", UserAuthNMethod: "TLS", RequestMethod: "POST", RequestURI: "/v1.41/images/prune?filters=%7B%22dangling%22%3A%7B%22false%22%3Atrue%7D%7D",
			RequestHeaders: map[string]string{"Content-Type": "application/json", "Content-Length": "2"}, RequestBody: []byte("{}")}),
		dockerdCall(t, authorization.Request{RequestMethod: "DELETE", RequestURI: "/v1.41/images/\xff\xfeé😀", ResponseStatusCode: 200,
			ResponseBody: []byte("[]"), ResponseHeaders: map[string]string{"Api-Version": "1.41"}}),
		[]byte(`{"RequestMethod":"POST","RequestUri":"/images/x\ud83d\ude00\ud800\u0041\udc00\ud800\ud800","RequestBody":""}`),
		[]byte(` {"Request\u004dethod":"DELETE","RequestUri":null,"Other":1,"Other":2} `),
		[]byte(`{"RequestHeaders":{"content-type":"a","Content-Type":null,"X":"y","Content-Length":"1","Content-Length":"0"},"RequestMethod":"POST","RequestUri":"/v1.41/images/prune"}`),
		[]byte(`{"RequestHeaders":null,"RequestMethod":"POST","RequestUri":"/x"}`),
		[]byte(`{"RequestBody":null,"RequestPeerCertificates":[{"x":[1,-2.5e+3,true,false,null]}],"Other":{"a":[[]]},"RequestMethod":"POST","RequestUri":"/p"}`),
		[]byte(`{"RequestBody":"QQ==","ResponseBody":"QUI=","RequestMethod":"POST","RequestUri":"/p","User":"\"\\\/\b\f\n\r\t"}`),
		[]byte("{\"RequestMethod\":\"GET\",\"RequestUri\":\"/\u2028\"}\n\t\r "),
	}
}

func TestDecodeCallMatchesEncodingJSON(t *testing.T) {
	for _, data := range decodeSeeds(t) {
		if !checkSame(t, data) {
			_, err := leanDecode(data)
			t.Errorf("refused a call encoding/json reads (%v): %q", err, data)
		}
	}
}

// dockerd encodes its own struct: each field once, named exactly. A call
// that names a field otherwise is refused, though encoding/json would read
// it.
func TestDecodeCallRefusesFieldNamesDockerdNeverSends(t *testing.T) {
	for _, data := range []string{
		`{"requestmethod":"DELETE","RequestUri":"/a"}`,
		`{"RequestMethod":"DELETE","REQUESTURI":"/a"}`,
		`{"RequestMethod":"DELETE","Requeſturi":"/a"}`,
		`{"RequestMethod":"DELETE","RequestUri":"/a","\u212aey":1}`,
		`{"RequestMethod":"DELETE","RequestUri":"/a","RequestUri":"/b"}`,
		`{"RequestHeaders":{"Content-Type":"a"},"RequestHeaders":null,"RequestMethod":"POST","RequestUri":"/x"}`,
		`{"RequestBody":"QUJD","RequestBody":null,"RequestMethod":"POST","RequestUri":"/p"}`,
		`{"User":"a","User":"b","RequestMethod":"GET","RequestUri":"/p"}`,
	} {
		if !json.Valid([]byte(data)) {
			t.Fatalf("not JSON: %s", data)
		}
		if _, err := leanDecode([]byte(data)); err == nil {
			t.Errorf("accepted %s", data)
		}
	}
}

func TestDecodeCallRefusesWhatIsNotACall(t *testing.T) {
	for _, data := range []string{
		``, ` `, `null`, `[]`, `"x"`, `{`, `{"RequestMethod":"GET"`, `{"RequestMethod":7}`, `{"RequestMethod":"GET"} {}`,
		`{"RequestBody":"!!"}`, `{"RequestBody":"QQ="}`, `{"RequestBody":"QQ"}`, `{"RequestBody":"Q"}`, `{"RequestBody":"QQ==QQ=="}`,
		`{"RequestBody":[1]}`, `{"RequestHeaders":{"a":1}}`, `{"RequestHeaders":[]}`, `{"ResponseStatusCode":1.5}`,
		`{"ResponseStatusCode":"1"}`, `{"ResponseStatusCode":99999999999999999999}`, `{"RequestUri":"a` + "\x01" + `"}`,
		`{"RequestUri":"\x"}`, `{"RequestUri":"\u12"}`, `{"a":01}`, `{"a":-}`, `{"a":1.}`, `{"a":1e}`, `{"a":tru}`, `{"a":1,}`,
		`{,}`, `{"a" 1}`, `{"a":[1,]}`, `{"x":` + strings.Repeat("[", maxDepth+5) + strings.Repeat("]", maxDepth+5) + `}`,
		`{"RequestUri":"` + strings.Repeat("x", maxString+1) + `"}`,
	} {
		if _, err := leanDecode([]byte(data)); err == nil {
			t.Errorf("accepted %.80q", data)
		}
	}
	if _, err := leanDecode(nil); err == nil || err.Error() != "EOF" {
		// e2e/faults_test.go recognises dockerd's empty retry by this.
		t.Errorf("an empty call: %v, want EOF", err)
	}
}

// A 4 MiB body (what dockerd 29.3.1 forwards at most) streams through: the
// decoder keeps none of it.
func TestDecodeCallStreamsALargeBody(t *testing.T) {
	data := dockerdCall(t, authorization.Request{RequestMethod: "POST", RequestURI: "/v1.41/containers/create",
		RequestBody: bytes.Repeat([]byte("x"), 4<<20), RequestHeaders: map[string]string{"Content-Type": "application/json"}})
	if !checkSame(t, data) {
		t.Fatal("refused a 4 MiB body")
	}
}

func FuzzDecodeCall(f *testing.F) {
	for _, s := range decodeSeeds(f) {
		f.Add(s)
	}
	f.Add([]byte(`{"RequestBody":"QQ=\n="}`))
	f.Add([]byte(`{"ReſponseStatusCode":-0,"RequestMethod":"\uDBFF\uDFFF"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkSame(t, data)
	})
}

// The lean decoder keeps exactly the headers the decider reads.
func TestDecoderKeepsOnlyTheHeadersTheDeciderReads(t *testing.T) {
	req, err := leanDecode([]byte(`{"RequestMethod":"POST","RequestUri":"/x","RequestHeaders":{"Content-Type":"a","CONTENT-LENGTH":"1","Cookie":"secret"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"Content-Type": "a", "CONTENT-LENGTH": "1"}; !maps.Equal(req.Headers, want) {
		t.Errorf("headers %v, want %v", req.Headers, want)
	}
}
