package controller

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/pki"
	"github.com/ferrydr/ferry/protocol/msg"
	"github.com/ferrydr/ferry/scripts"
)

// installServer is a Server with just what the install endpoints use: a
// real CA in a temporary directory, the embedded scripts and a dist dir.
func installServer(t *testing.T, dist string) *Server {
	t.Helper()
	ca, err := pki.Load(pki.Config{Dir: filepath.Join(t.TempDir(), "pki")})
	require.NoError(t, err)
	return &Server{
		cfg: Config{Dist: dist, Scripts: scripts.Files(), Advertise: "ctl.example:7443"},
		log: slog.New(slog.DiscardHandler), ca: ca, agentAddr: "127.0.0.1:7443",
	}
}

// serveTLS serves the install handler over real TLS on loopback with the
// controller's own server certificate, as the agent port's http/1.1 side.
func serveTLS(t *testing.T, s *Server) *httptest.Server {
	t.Helper()
	hs := httptest.NewUnstartedServer(s.installHandler())
	cert, key := s.ca.ServerCertificate()
	hs.TLS = &tls.Config{MinVersion: tls.VersionTLS13,
		Certificates: []tls.Certificate{{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}}}
	hs.StartTLS()
	t.Cleanup(hs.Close)
	return hs
}

func get(t *testing.T, hs *httptest.Server, path string) (int, string, http.Header) {
	t.Helper()
	resp, err := hs.Client().Get(hs.URL + path)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b), resp.Header
}

// psByteRE reads back the PowerShell byte list the controller templates.
var psByteRE = regexp.MustCompile(`0x([0-9a-f]{2})`)

func parsePSBytes(t *testing.T, s string) []byte {
	t.Helper()
	var out []byte
	for _, m := range psByteRE.FindAllStringSubmatch(s, -1) {
		b, err := strconv.ParseUint(m[1], 16, 8)
		require.NoError(t, err)
		out = append(out, byte(b))
	}
	return out
}

// keyBits is what Windows' X509Certificate.GetPublicKey returns: the
// content of the SPKI's BIT STRING.
func keyBits(t *testing.T, raw []byte) []byte {
	t.Helper()
	var spki struct {
		Algorithm asn1.RawValue
		PublicKey asn1.BitString
	}
	_, err := asn1.Unmarshal(raw, &spki)
	require.NoError(t, err)
	return spki.PublicKey.Bytes
}

// TestInstallPS1Templating checks the parts of install.ps1 (and of the
// Windows one-liner) that the controller fills in: the pin is this
// controller's, and the SPKI prefix plus what GetPublicKey returns hashes to
// exactly that pin — the computation the PowerShell callback does.
func TestInstallPS1Templating(t *testing.T) {
	s := installServer(t, "")
	hs := serveTLS(t, s)
	code, body, hdr := get(t, hs, "/install.ps1")
	require.Equal(t, http.StatusOK, code, body)
	require.Contains(t, hdr.Get("Content-Type"), "text/plain")
	require.NotContains(t, body, "@@FERRY_", "a placeholder was left unfilled")

	cert, _ := s.ca.ServerCertificate()
	pin := s.ca.Pin()
	require.Contains(t, body, "$FerryPin = '"+pin+"'")
	host := strings.TrimPrefix(hs.URL, "https://")
	require.Contains(t, body, "[string]$Controller = '"+host+"'", "the script defaults to the address the client used")

	m := regexp.MustCompile(`\$FerrySpkiPrefix = \[byte\[\]\]\(@\(([^)]*)\)\)`).FindStringSubmatch(body)
	require.NotNil(t, m, "install.ps1 has no SPKI prefix line")
	prefix := parsePSBytes(t, m[1])
	spki := append(append([]byte{}, prefix...), keyBits(t, cert.RawSubjectPublicKeyInfo)...)
	require.Equal(t, cert.RawSubjectPublicKeyInfo, spki)
	sum := sha256.Sum256(spki)
	require.Equal(t, pin, base64.StdEncoding.EncodeToString(sum[:]))

	// The Windows one-liner computes the same thing inline.
	tok, err := msg.NewToken(pin, time.Now().Add(time.Hour))
	require.NoError(t, err)
	cmds := s.installCommands("", tok)
	require.Len(t, cmds, 2)
	win := cmds[1]
	m = regexp.MustCompile(`ComputeHash\(\[byte\[\]\]\(@\(([^)]*)\) \+ \$c\.GetPublicKey\(\)\)\)\) -eq '([^']+)'`).FindStringSubmatch(win)
	require.NotNil(t, m, "Windows one-liner: %s", win)
	require.Equal(t, prefix, parsePSBytes(t, m[1]))
	require.Equal(t, pin, m[2])
	require.Contains(t, win, "DownloadString('https://ctl.example:7443/install.ps1')")
	require.Contains(t, win, "-Controller 'ctl.example:7443' -Token '"+tok.String()+"'")
	// The pin the one-liner checks is the one the token carries.
	back, err := msg.ParseToken(tok.String())
	require.NoError(t, err)
	require.Equal(t, pin, back.Pin)
}

func TestInstallShTemplating(t *testing.T) {
	s := installServer(t, "")
	hs := serveTLS(t, s)
	code, body, _ := get(t, hs, "/install.sh")
	require.Equal(t, http.StatusOK, code)
	require.NotContains(t, body, "@@FERRY_")
	require.Contains(t, body, "FERRY_PIN='"+s.ca.Pin()+"'")
	require.Contains(t, body, "FERRY_CONTROLLER_DEFAULT='"+strings.TrimPrefix(hs.URL, "https://")+"'")

	tok, err := msg.NewToken(s.ca.Pin(), time.Now().Add(time.Hour))
	require.NoError(t, err)
	lin := s.installCommands("other.example:9000", tok)[0]
	require.Equal(t, "curl -fsS --proto =https --pinnedpubkey 'sha256//"+s.ca.Pin()+"' -k 'https://other.example:9000/install.sh'"+
		" | sh -s -- --controller 'other.example:9000' --token '"+tok.String()+"'", lin)
}

func TestScriptControllerRefusesOddHosts(t *testing.T) {
	s := installServer(t, "")
	require.Equal(t, "a.example:1", s.scriptController("a.example:1"))
	require.Equal(t, "[::1]:7443", s.scriptController("[::1]:7443"))
	require.Equal(t, "a.example:443", s.scriptController("a.example"))
	for _, bad := range []string{"", "x'; rm -rf /; '", "a b:1", "$(id):1", "a.example:1/x"} {
		require.Equal(t, "ctl.example:7443", s.scriptController(bad), "host %q", bad)
	}
}

func TestServeDist(t *testing.T) {
	dist := t.TempDir()
	bin := []byte("\x7fELF not really, but bytes")
	require.NoError(t, os.WriteFile(filepath.Join(dist, "ferry-agent-linux-amd64"), bin, 0o755))
	sum := sha256.Sum256(bin)
	require.NoError(t, os.WriteFile(filepath.Join(dist, "SHA256SUMS"), []byte(hex.EncodeToString(sum[:])+"  ferry-agent-linux-amd64\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dist, "VERSION"), []byte("v9.9.9\n"), 0o644))
	require.NoError(t, os.Mkdir(filepath.Join(dist, "sub"), 0o755))
	s := installServer(t, dist)
	hs := serveTLS(t, s)

	code, body, hdr := get(t, hs, "/dist/ferry-agent-linux-amd64")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, string(bin), body)
	require.Equal(t, "application/octet-stream", hdr.Get("Content-Type"))
	code, _, _ = get(t, hs, "/dist/SHA256SUMS")
	require.Equal(t, http.StatusOK, code)
	for _, p := range []string{"/dist/missing", "/dist/sub", "/dist/..%2fVERSION", "/dist/.hidden", "/dist/"} {
		code, _, _ = get(t, hs, p)
		require.Equal(t, http.StatusNotFound, code, p)
	}

	rel, err := s.loadDist()
	require.NoError(t, err)
	require.Equal(t, "v9.9.9", rel.version)
	require.Equal(t, hex.EncodeToString(sum[:]), rel.sums["ferry-agent-linux-amd64"])

	// Without --dist: a message that says what to do.
	s2 := installServer(t, "")
	hs2 := serveTLS(t, s2)
	code, body, _ = get(t, hs2, "/dist/SHA256SUMS")
	require.Equal(t, http.StatusNotFound, code)
	require.Contains(t, body, "--dist")
	_, err = s2.loadDist()
	require.Error(t, err)
}

func TestParseSums(t *testing.T) {
	h := strings.Repeat("ab", 32)
	got, err := parseSums(strings.NewReader(h + "  ferry-agent-linux-amd64\n" + strings.ToUpper(h) + " *ferry-agent-windows-amd64.exe\n\n"))
	require.NoError(t, err)
	require.Equal(t, map[string]string{"ferry-agent-linux-amd64": h, "ferry-agent-windows-amd64.exe": h}, got)
	for _, bad := range []string{"zz  f\n", h + "\n", h[:10] + "  f\n", h + "  ../f\n"} {
		_, err := parseSums(strings.NewReader(bad))
		require.Error(t, err, "%q", bad)
	}
}

func TestDistFile(t *testing.T) {
	require.Equal(t, "ferry-agent-linux-amd64", distFile("linux/amd64"))
	require.Equal(t, "ferry-agent-linux-arm64", distFile("linux/arm64"))
	require.Equal(t, "ferry-agent-windows-amd64.exe", distFile("windows/amd64"))
}

// FuzzParseSums: any SHA256SUMS parses or is refused, never panics, and what
// it accepts are plain file names with 64-digit lower-case hex sums.
func FuzzParseSums(f *testing.F) {
	h := strings.Repeat("0f", 32)
	f.Add(h + "  ferry-agent-linux-amd64\n")
	f.Add(h + " *ferry-agent-windows-amd64.exe\r\n\n")
	f.Add(strings.ToUpper(h) + "  a\n" + h + "  b\n")
	f.Add(h + "  ../../etc/passwd\n")
	f.Add("not a sums file")
	f.Fuzz(func(t *testing.T, in string) {
		sums, err := parseSums(strings.NewReader(in))
		if err != nil {
			return
		}
		for name, sum := range sums {
			require.Regexp(t, distNameRE, name)
			require.Regexp(t, `^[0-9a-f]{64}$`, sum)
		}
	})
}
