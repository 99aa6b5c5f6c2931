package e2e

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prune-guard/prune-guard/internal/enginetest"
)

// Credentials sent with requests through a real dockerd, in every place a
// client can put them, never reach prune-guard's audit file or its log,
// whatever the decision. cmd/prune-guard/secrets_test.go checks the same property on
// the handler for calls that did not come through dockerd.
func TestCredentialsSentThroughDockerdNeverReachTheAuditOrPluginLog(t *testing.T) {
	t.Parallel()
	g := startGuard(t)
	secret := "S3cr3tPw" + enginetest.Nonce(t)
	authJSON, _ := json.Marshal(map[string]string{"username": "ci", "password": secret, "serveraddress": "127.0.0.1:1"})
	blob := base64.URLEncoding.EncodeToString(authJSON)
	secretHeaders := []string{
		"Authorization: Bearer " + secret,
		"Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte("ci:"+secret)),
		"X-Registry-Auth: " + blob,
		"X-Auth-Token: " + secret,
		"Cookie: session=" + secret,
	}
	for _, tc := range []struct {
		name string
		req  wireReq
	}{
		{"repeated auth headers on prune -a (denied)", post("/v1.41/images/prune?"+pruneAll, secretHeaders...)},
		{"password and token parameters on prune -a (denied)", post("/v1.41/images/prune?password=" + secret + "&access_token=" + secret + "&" + pruneAll)},
		{"registry auth parameter on an image delete (allowed, audited)", del("/v1.41/images/pg-no-such-image:1?X-Registry-Auth=" + blob)},
		{"userinfo in an absolute-form target (denied)", post("http://ci:" + secret + "@docker/v1.41/images/prune?" + pruneAll)},
		{"JSON body on a dangling prune (forwarded to the plugin, allowed, audited)", withBody(post("/v1.41/images/prune", jsonCT), string(authJSON))},
		{"/auth body (never forwarded)", withBody(post("/v1.41/auth", jsonCT), string(authJSON))},
		{"password after a ';' on a prune (denied as unparsable)", post("/v1.41/images/prune?x=1;password=" + secret)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := send(t, g.Engine, tc.req)
			t.Logf("%s %.60s... => %d", tc.req.method, tc.req.target, rs[0].status)
			// Read after every request, so a failure names the request. The
			// plugin writes the audit line before it answers dockerd.
			for where, text := range map[string]string{"audit log": readFile(t, g.plugin.AuditPath()), "plugin log": g.plugin.LogTail()} {
				for _, s := range []string{secret, blob} {
					if strings.Contains(text, s) {
						t.Errorf("the %s holds the credential %.20s... sent as %s:\n%s", where, s, tc.name, matchingLines(text, s))
					}
				}
			}
		})
	}
}

// The plugin's own log never shows a password from its --docker-host
// either (tcp://user:password@host behind an authenticating proxy).
func TestServeLogsNoPasswordFromItsDockerHost(t *testing.T) {
	t.Parallel()
	secret := "S3cr3tPw" + enginetest.Nonce(t)
	audit := filepath.Join(t.TempDir(), "audit.jsonl")
	p := newServedPlugin(t, false, "--docker-host", "tcp://ci:"+secret+"@127.0.0.1:9", "--audit-log", audit)
	p.start()
	for where, text := range map[string]string{"plugin log": readFile(t, p.log), "audit log": readFile(t, audit)} {
		if strings.Contains(text, secret) {
			t.Errorf("the %s holds the engine address's password:\n%s", where, matchingLines(text, secret))
		}
	}
}

func readFile(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return string(b)
}

func matchingLines(text, s string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
