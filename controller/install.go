package controller

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/protocol/msg"
)

// Names in the dist directory (scripts/dist.sh writes them).
const (
	distSums    = "SHA256SUMS"
	distVersion = "VERSION"
)

// Placeholders the install scripts carry for the serving controller to fill.
const (
	tmplController = "@@FERRY_CONTROLLER@@"
	tmplPin        = "@@FERRY_PIN@@"
	tmplSPKIPrefix = "@@FERRY_SPKI_PREFIX@@"
)

var (
	// distNameRE admits plain file names only: no separators, no dot-dot.
	distNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	// hostPortRE is what a Host header may put into a script: a DNS name,
	// an IPv4 or a bracketed IPv6 address, and a port.
	hostPortRE = regexp.MustCompile(`^([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?$`)
)

// installHandler serves the HTTPS side of the agent port: what answers
// without a client certificate besides enrolment — the install scripts
// and the agent binaries of --dist.
func (s *Server) installHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /install.sh", func(w http.ResponseWriter, r *http.Request) {
		s.serveScript(w, r, "install.sh", "text/x-shellscript; charset=utf-8")
	})
	mux.HandleFunc("GET /install.ps1", func(w http.ResponseWriter, r *http.Request) {
		s.serveScript(w, r, "install.ps1", "text/plain; charset=utf-8")
	})
	mux.HandleFunc("GET /dist/{file}", s.serveDist)
	return mux
}

// serveScript serves an embedded install script with this controller's
// address (as the client reached it) and public-key pin filled in.
func (s *Server) serveScript(w http.ResponseWriter, r *http.Request, name, ctype string) {
	if s.cfg.Scripts == nil {
		http.Error(w, "this controller binary carries no install scripts", http.StatusNotFound)
		return
	}
	b, err := fs.ReadFile(s.cfg.Scripts, name)
	if err != nil {
		http.Error(w, name+" is not available", http.StatusNotFound)
		return
	}
	out, err := s.renderScript(b, s.scriptController(r.Host))
	if err != nil {
		s.log.Error("install script", "script", name, "err", err)
		http.Error(w, "cannot render "+name, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", ctype)
	w.Header().Set("Cache-Control", "no-store")
	w.Write(out)
}

// scriptController is the address a script defaults to: the one the
// client used, when it is a plain HOST[:PORT], else the advertised one.
func (s *Server) scriptController(host string) string {
	if !hostPortRE.MatchString(host) {
		return s.advertised("")
	}
	if _, _, err := net.SplitHostPort(host); err != nil {
		return net.JoinHostPort(strings.Trim(host, "[]"), "443")
	}
	return host
}

// renderScript fills a script's placeholders.
func (s *Server) renderScript(script []byte, controller string) ([]byte, error) {
	cert, _ := s.ca.ServerCertificate()
	prefix, err := spkiPrefix(cert)
	if err != nil {
		return nil, err
	}
	return []byte(strings.NewReplacer(
		tmplController, controller,
		tmplPin, s.ca.Pin(),
		tmplSPKIPrefix, psBytes(prefix),
	).Replace(string(script))), nil
}

// spkiPrefix is the DER of a certificate's SubjectPublicKeyInfo before the
// key bits: what Windows' X509Certificate.GetPublicKey leaves out. prefix +
// GetPublicKey() is the SPKI whose SHA-256 is the pin.
func spkiPrefix(c *x509.Certificate) ([]byte, error) {
	var spki struct {
		Algorithm asn1.RawValue
		PublicKey asn1.BitString
	}
	rest, err := asn1.Unmarshal(c.RawSubjectPublicKeyInfo, &spki)
	if err != nil || len(rest) != 0 {
		return nil, fmt.Errorf("server certificate SPKI: %v", err)
	}
	raw, key := c.RawSubjectPublicKeyInfo, spki.PublicKey.Bytes
	if spki.PublicKey.BitLength%8 != 0 || !bytes.HasSuffix(raw, key) {
		return nil, errors.New("server certificate SPKI does not end with its key bits")
	}
	return raw[:len(raw)-len(key)], nil
}

// psBytes writes bytes as a PowerShell array body: 0x30,0x59,...
func psBytes(b []byte) string {
	var sb strings.Builder
	for i, c := range b {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, "0x%02x", c)
	}
	return sb.String()
}

// serveDist serves a file of --dist (agent binaries, SHA256SUMS, VERSION).
func (s *Server) serveDist(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("file")
	if s.cfg.Dist == "" {
		http.Error(w, "this controller serves no agent binaries: start it with ferry serve --dist DIR (make dist builds them)", http.StatusNotFound)
		return
	}
	if !distNameRE.MatchString(name) {
		http.Error(w, "no such file", http.StatusNotFound)
		return
	}
	f, err := os.Open(filepath.Join(s.cfg.Dist, name))
	if err != nil {
		http.Error(w, name+" is not in this controller's dist directory", http.StatusNotFound)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		http.Error(w, "no such file", http.StatusNotFound)
		return
	}
	ctype := "application/octet-stream"
	if name == distSums || name == distVersion {
		ctype = "text/plain; charset=utf-8"
	}
	w.Header().Set("Content-Type", ctype)
	w.Header().Set("Cache-Control", "no-store")
	http.ServeContent(w, r, name, st.ModTime(), f)
}

// installCommands are the one-liners of `tokens create --install-command`:
// Linux (any shell; root or a sudoer) and Windows (an elevated PowerShell).
// Both authenticate the controller by the token's public-key pin before
// anything is run, so the CA need not be trusted yet.
func (s *Server) installCommands(controller string, tok msg.Token) []string {
	addr := s.advertised(controller)
	cert, _ := s.ca.ServerCertificate()
	prefix, err := spkiPrefix(cert)
	if err != nil {
		s.log.Error("install commands", "err", err)
		return nil
	}
	return []string{
		fmt.Sprintf("curl -fsS --proto =https --pinnedpubkey 'sha256//%s' -k 'https://%s/install.sh' | sh -s -- --controller '%s' --token '%s'",
			tok.Pin, addr, addr, tok.String()),
		fmt.Sprintf("[Net.ServicePointManager]::SecurityProtocol = [Net.ServicePointManager]::SecurityProtocol -bor 12288; "+
			"[Net.ServicePointManager]::ServerCertificateValidationCallback = { param($s, $c) "+
			"[Convert]::ToBase64String([Security.Cryptography.SHA256]::Create().ComputeHash([byte[]](@(%s) + $c.GetPublicKey()))) -eq '%s' }; "+
			"& ([scriptblock]::Create((New-Object Net.WebClient).DownloadString('https://%s/install.ps1'))) -Controller '%s' -Token '%s'",
			psBytes(prefix), tok.Pin, addr, addr, tok.String()),
	}
}

// distRelease is what --dist holds: the agent version it offers and the
// SHA-256 of each file, as SHA256SUMS lists them.
type distRelease struct {
	dir     string
	version string
	sums    map[string]string // file name → lower-case hex
}

// loadDist reads VERSION and SHA256SUMS of --dist.
func (s *Server) loadDist() (distRelease, error) {
	if s.cfg.Dist == "" {
		return distRelease{}, api.Errorf(api.CodeFailedPrecondition, "this controller has no agent binaries to push: start ferry serve with --dist DIR (make dist builds it)")
	}
	rel := distRelease{dir: s.cfg.Dist, sums: map[string]string{}}
	v, err := os.ReadFile(filepath.Join(s.cfg.Dist, distVersion))
	if err != nil {
		return distRelease{}, api.Errorf(api.CodeFailedPrecondition, "dist directory %s: %v (make dist writes VERSION)", s.cfg.Dist, err)
	}
	if rel.version = strings.TrimSpace(string(v)); rel.version == "" {
		return distRelease{}, api.Errorf(api.CodeFailedPrecondition, "dist directory %s: VERSION is empty", s.cfg.Dist)
	}
	f, err := os.Open(filepath.Join(s.cfg.Dist, distSums))
	if err != nil {
		return distRelease{}, api.Errorf(api.CodeFailedPrecondition, "dist directory %s: %v (make dist writes SHA256SUMS)", s.cfg.Dist, err)
	}
	defer f.Close()
	if rel.sums, err = parseSums(f); err != nil {
		return distRelease{}, api.Errorf(api.CodeFailedPrecondition, "dist directory %s: %v", s.cfg.Dist, err)
	}
	return rel, nil
}

// parseSums reads sha256sum output: "<hex>  <name>" or "<hex> *<name>".
func parseSums(r io.Reader) (map[string]string, error) {
	out := map[string]string{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		sum, name, ok := strings.Cut(line, " ")
		name = strings.TrimPrefix(strings.TrimSpace(name), "*")
		if b, err := hex.DecodeString(sum); !ok || err != nil || len(b) != 32 || !distNameRE.MatchString(name) {
			return nil, fmt.Errorf("%s line %d is not \"<sha256>  <file>\"", distSums, n)
		}
		out[name] = strings.ToLower(sum)
	}
	return out, sc.Err()
}

// distFile names the agent build for a platform ("linux/amd64").
func distFile(platform string) string {
	name := "ferry-agent-" + strings.ReplaceAll(platform, "/", "-")
	if strings.HasPrefix(platform, "windows/") {
		name += ".exe"
	}
	return name
}
