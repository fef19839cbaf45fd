package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/ferrydr/ferry/internal/buildinfo"
	"github.com/ferrydr/ferry/internal/fsutil"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/msg"
	"github.com/ferrydr/ferry/protocol/rpc"
)

// UpgradeConfig lets the controller upgrade a running agent. Only an agent
// that a supervisor runs can upgrade: the agent stages the new binary and
// ends; the supervisor swaps the binaries, runs the new one on trial and
// rolls back unless the controller confirms it (msg.MethodUpgrade).
type UpgradeConfig struct {
	// Binary is the executable the supervisor runs and swaps.
	Binary string
	// Restart ends the agent so that its supervisor can swap the binaries.
	// It is called once the upgrade is staged and must not block for long.
	Restart func()
	// MaxSize bounds a download; default 512 MiB.
	MaxSize int64
}

// UpgradeRecordFile is the upgrade record's name in the state directory.
const UpgradeRecordFile = "upgrade.json"

// ErrNoUpgradeRecord means the state directory holds no upgrade record.
var ErrNoUpgradeRecord = errors.New("no upgrade record")

// ReadUpgradeRecord reads the state directory's upgrade record.
func ReadUpgradeRecord(stateDir string) (*msg.UpgradeRecord, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, UpgradeRecordFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNoUpgradeRecord
	}
	if err != nil {
		return nil, err
	}
	var r msg.UpgradeRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("upgrade record %s: %w", filepath.Join(stateDir, UpgradeRecordFile), err)
	}
	return &r, nil
}

// WriteUpgradeRecord replaces the upgrade record atomically: the agent and
// its supervisor hand the upgrade over through it, across crashes.
func WriteUpgradeRecord(stateDir string, r *msg.UpgradeRecord) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(filepath.Join(stateDir, UpgradeRecordFile), append(b, '\n'), 0o600)
}

// Names of dist files are plain: no separators, no dot-dot tricks.
var distFileRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// handleUpgrade registers the controller's upgrade requests on the agent's
// RPC surface. One upgrade at a time per session: a second is busy.
func (a *Agent) handleUpgrade(m *rpc.Mux) {
	var busy sync.Mutex
	m.Handle(msg.MethodUpgrade, func(ctx context.Context, body json.RawMessage) (any, error) {
		req, err := rpc.Decode[msg.UpgradeRequest](body)
		if err != nil {
			return nil, err
		}
		if !busy.TryLock() {
			return nil, protocol.Errorf(protocol.CodeBusy, "an upgrade is already being staged")
		}
		defer busy.Unlock()
		return a.stageUpgrade(ctx, req)
	})
	m.Handle(msg.MethodUpgradeStatus, func(context.Context, json.RawMessage) (any, error) {
		out := msg.UpgradeStatusResponse{Version: buildinfo.Version, Platform: runtime.GOOS + "/" + runtime.GOARCH}
		rec, err := ReadUpgradeRecord(a.cfg.StateDir)
		switch {
		case err == nil:
			out.Last = rec
		case !errors.Is(err, ErrNoUpgradeRecord):
			return nil, err
		}
		return out, nil
	})
	m.Handle(msg.MethodUpgradeCommit, func(_ context.Context, body json.RawMessage) (any, error) {
		req, err := rpc.Decode[msg.UpgradeCommitRequest](body)
		if err != nil {
			return nil, err
		}
		return struct{}{}, a.commitUpgrade(req)
	})
}

// stageUpgrade downloads, checks and stages the new binary, records the
// upgrade and asks the supervisor for a restart. Any failure leaves the
// running binary and the record as they were.
func (a *Agent) stageUpgrade(ctx context.Context, req msg.UpgradeRequest) (msg.UpgradeResponse, error) {
	from := buildinfo.Version
	up := a.cfg.Upgrade
	if up == nil || up.Binary == "" || up.Restart == nil {
		return msg.UpgradeResponse{}, protocol.Errorf(protocol.CodeFailedPrecondition,
			"this agent does not run under the ferry-agent service's supervisor (ferry-agent install, or run --supervise); reinstall it to upgrade")
	}
	if req.Version == "" || !distFileRE.MatchString(req.File) || len(req.SHA256) != sha256.Size*2 {
		return msg.UpgradeResponse{}, protocol.Errorf(protocol.CodeInvalid, "upgrade request needs a version, a plain file name and a hex SHA-256")
	}
	want, err := hex.DecodeString(strings.ToLower(req.SHA256))
	if err != nil {
		return msg.UpgradeResponse{}, protocol.Errorf(protocol.CodeInvalid, "sha256: %v", err)
	}
	if req.Version == from {
		return msg.UpgradeResponse{State: "current", FromVersion: from}, nil
	}
	if rec, err := ReadUpgradeRecord(a.cfg.StateDir); err == nil && (rec.State == msg.UpgradeStaged || rec.State == msg.UpgradeTrial) {
		return msg.UpgradeResponse{}, protocol.Errorf(protocol.CodeBusy, "an upgrade from %s to %s is %s", rec.From, rec.To, rec.State)
	}
	staged := up.Binary + ".new"
	log := a.log.With("component", "upgrade", "from", from, "to", req.Version)
	log.Info("downloading agent upgrade", "file", req.File)
	if err := a.download(ctx, req, want, staged, up.maxSize()); err != nil {
		os.Remove(staged)
		log.Warn("upgrade not staged", "err", err)
		return msg.UpgradeResponse{}, err
	}
	if err := checkRuns(ctx, staged, req.Version); err != nil {
		os.Remove(staged)
		log.Warn("upgrade not staged", "err", err)
		return msg.UpgradeResponse{}, err
	}
	rec := &msg.UpgradeRecord{
		State: msg.UpgradeStaged, From: from, To: req.Version,
		Binary: up.Binary, Staged: staged, Previous: up.Binary + ".prev",
		StagedAt: a.cfg.Now().Unix(),
	}
	if err := WriteUpgradeRecord(a.cfg.StateDir, rec); err != nil {
		os.Remove(staged)
		return msg.UpgradeResponse{}, fmt.Errorf("record the upgrade: %w", err)
	}
	log.Info("upgrade staged; restarting into it")
	// Restart after this response is on its way; the controller tolerates
	// losing it (it reads the record once the agent is back).
	go func() {
		a.stopMachines()
		up.Restart()
	}()
	return msg.UpgradeResponse{State: msg.UpgradeStaged, FromVersion: from}, nil
}

func (u *UpgradeConfig) maxSize() int64 {
	if u.MaxSize > 0 {
		return u.MaxSize
	}
	return 512 << 20
}

// download fetches /dist/<file> from the controller's HTTPS side with the
// agent's own credentials, into dst, checking size and SHA-256.
func (a *Agent) download(ctx context.Context, req msg.UpgradeRequest, want []byte, dst string, maxSize int64) error {
	conf := a.state.TLSConfig()
	conf.NextProtos = []string{"http/1.1"}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: conf, ForceAttemptHTTP2: false}}
	defer client.CloseIdleConnections()
	u := "https://" + a.state.Identity.Controller + "/dist/" + url.PathEscape(req.File)
	hreq, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(hreq)
	if err != nil {
		return protocol.Errorf(protocol.CodeUnavailable, "download %s: %v", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return protocol.Errorf(protocol.CodeNotFound, "download %s: %s: %s", u, resp.Status, strings.TrimSpace(string(body)))
	}
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		return fmt.Errorf("stage %s: %w", dst, err)
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(resp.Body, maxSize+1))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("download %s: %w", u, err)
	}
	if n > maxSize {
		return protocol.Errorf(protocol.CodeTooLarge, "download %s: larger than %d bytes", u, maxSize)
	}
	if req.Size > 0 && n != req.Size {
		return protocol.Errorf(protocol.CodeInvalid, "download %s: got %d bytes, the controller announced %d", u, n, req.Size)
	}
	if got := h.Sum(nil); string(got) != string(want) {
		return protocol.Errorf(protocol.CodeInvalid, "checksum mismatch for %s: SHA256SUMS says %x, the download hashes to %x; nothing was changed", req.File, want, got)
	}
	return nil
}

// checkRuns runs `BINARY version` and requires it to print version: the
// file is an executable for this host and the build the controller meant.
func checkRuns(ctx context.Context, bin, version string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "version").Output()
	if err != nil {
		return protocol.Errorf(protocol.CodeFailedPrecondition, "the new binary does not run here (%s version): %v", bin, err)
	}
	if got := strings.TrimSpace(string(out)); got != version {
		return protocol.Errorf(protocol.CodeFailedPrecondition, "the new binary reports version %q, the controller announced %q", got, version)
	}
	return nil
}

// commitUpgrade records that the controller confirmed the running version;
// the supervisor sees it and ends the trial.
func (a *Agent) commitUpgrade(req msg.UpgradeCommitRequest) error {
	if req.Version != buildinfo.Version {
		return protocol.Errorf(protocol.CodeFailedPrecondition, "this agent runs %s, not %s", buildinfo.Version, req.Version)
	}
	rec, err := ReadUpgradeRecord(a.cfg.StateDir)
	if errors.Is(err, ErrNoUpgradeRecord) {
		return protocol.Errorf(protocol.CodeFailedPrecondition, "no upgrade to commit")
	}
	if err != nil {
		return err
	}
	switch {
	case rec.State == msg.UpgradeCommitted && rec.To == req.Version:
		return nil
	case rec.State != msg.UpgradeTrial || rec.To != req.Version:
		return protocol.Errorf(protocol.CodeFailedPrecondition, "the last upgrade (%s to %s) is %s, not on trial", rec.From, rec.To, rec.State)
	}
	rec.State = msg.UpgradeCommitted
	rec.TrialUntil = 0
	if err := WriteUpgradeRecord(a.cfg.StateDir, rec); err != nil {
		return err
	}
	a.log.Info("upgrade committed", "component", "upgrade", "from", rec.From, "to", rec.To)
	return nil
}
