package admin

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/ferrydr/ferry/controller/api"
)

// ErrUnreachable means no controller answered at the admin address.
var ErrUnreachable = errors.New("controller unreachable")

// ClientConfig says how to reach the admin API.
type ClientConfig struct {
	// Address is a Unix socket path or an https:// URL.
	Address string
	// Token is the bearer token for TCP access.
	Token string
	// CAFile verifies the controller's TLS certificate (https only); empty
	// means the system roots.
	CAFile string
}

// Client is the admin API's Go client.
type Client struct {
	base  string
	token string
	http  *http.Client
	addr  string
}

// NewClient builds a client; it does not connect yet.
func NewClient(cfg ClientConfig) (*Client, error) {
	c := &Client{token: cfg.Token, addr: cfg.Address}
	if strings.HasPrefix(cfg.Address, "https://") || strings.HasPrefix(cfg.Address, "http://") {
		u, err := url.Parse(cfg.Address)
		if err != nil {
			return nil, fmt.Errorf("admin address %q: %w", cfg.Address, err)
		}
		tlsConf := &tls.Config{MinVersion: tls.VersionTLS13}
		if cfg.CAFile != "" {
			pem, err := os.ReadFile(cfg.CAFile)
			if err != nil {
				return nil, err
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("%s: no certificate", cfg.CAFile)
			}
			tlsConf.RootCAs = pool
		}
		c.base = strings.TrimSuffix(u.String(), "/")
		c.http = &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConf}}
		return c, nil
	}
	sock := cfg.Address
	c.base = "http://ferry"
	c.http = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	return c, nil
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	resp, err := c.send(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// send issues a request and turns non-2xx answers into *api.Error.
func (c *Client) send(ctx context.Context, method, path string, in any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if isUnreachable(err) {
			return nil, fmt.Errorf("%w at %s: %v", ErrUnreachable, c.addr, err)
		}
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		var ae api.Error
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		if json.Unmarshal(b, &ae) != nil || ae.Code == "" {
			ae = api.Error{Code: api.CodeInternal, Message: fmt.Sprintf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))}
		}
		return nil, &ae
	}
	return resp, nil
}

func isUnreachable(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) ||
		errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.ENOTSOCK) || errors.Is(err, syscall.EHOSTUNREACH)
}

// CreateToken mints an enrolment token.
func (c *Client) CreateToken(ctx context.Context, req api.CreateTokenRequest) (api.Token, error) {
	var t api.Token
	return t, c.do(ctx, "POST", "/v1/tokens", req, &t)
}

// Tokens lists tokens.
func (c *Client) Tokens(ctx context.Context) ([]api.Token, error) {
	var t []api.Token
	return t, c.do(ctx, "GET", "/v1/tokens", nil, &t)
}

// RevokeToken revokes a token.
func (c *Client) RevokeToken(ctx context.Context, id string) error {
	return c.do(ctx, "DELETE", "/v1/tokens/"+url.PathEscape(id), nil, nil)
}

// Agents lists agents.
func (c *Client) Agents(ctx context.Context) ([]api.Agent, error) {
	var a []api.Agent
	return a, c.do(ctx, "GET", "/v1/agents", nil, &a)
}

// RevokeAgent revokes an agent's certificates and ends its session.
func (c *Client) RevokeAgent(ctx context.Context, agent string) error {
	return c.do(ctx, "POST", "/v1/agents/"+url.PathEscape(agent)+"/revoke", nil, nil)
}

// RemoveAgent forgets an agent.
func (c *Client) RemoveAgent(ctx context.Context, agent string) error {
	return c.do(ctx, "DELETE", "/v1/agents/"+url.PathEscape(agent), nil, nil)
}

// UpgradeAgents pushes the controller's agent version to connected agents.
func (c *Client) UpgradeAgents(ctx context.Context, req api.UpgradeRequest) ([]api.UpgradeResult, error) {
	var out []api.UpgradeResult
	return out, c.do(ctx, "POST", "/v1/agents/upgrade", req, &out)
}

// Inventory asks a connected agent what it can protect.
func (c *Client) Inventory(ctx context.Context, agent string) ([]api.InventoryItem, error) {
	var items []api.InventoryItem
	return items, c.do(ctx, "GET", "/v1/agents/"+url.PathEscape(agent)+"/inventory", nil, &items)
}

// Policies lists policies.
func (c *Client) Policies(ctx context.Context) ([]api.Policy, error) {
	var p []api.Policy
	return p, c.do(ctx, "GET", "/v1/policies", nil, &p)
}

// CreatePolicy creates a policy.
func (c *Client) CreatePolicy(ctx context.Context, p api.Policy) (api.Policy, error) {
	var out api.Policy
	return out, c.do(ctx, "POST", "/v1/policies", p, &out)
}

// UpdatePolicy changes a policy's set fields.
func (c *Client) UpdatePolicy(ctx context.Context, name string, u api.PolicyUpdate) (api.Policy, error) {
	var out api.Policy
	return out, c.do(ctx, "PATCH", "/v1/policies/"+url.PathEscape(name), u, &out)
}

// DeletePolicy deletes a policy.
func (c *Client) DeletePolicy(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", "/v1/policies/"+url.PathEscape(name), nil, nil)
}

// Protect starts protecting a machine.
func (c *Client) Protect(ctx context.Context, req api.ProtectRequest) (api.Machine, error) {
	var m api.Machine
	return m, c.do(ctx, "POST", "/v1/machines", req, &m)
}

// Unprotect stops protecting a machine.
func (c *Client) Unprotect(ctx context.Context, machine string, deletePoints bool) error {
	q := ""
	if deletePoints {
		q = "?delete_points=true"
	}
	return c.do(ctx, "DELETE", "/v1/machines/"+url.PathEscape(machine)+q, nil, nil)
}

// UpdateMachine changes a machine's settings.
func (c *Client) UpdateMachine(ctx context.Context, machine string, req api.UpdateMachineRequest) (api.UpdateMachineResult, error) {
	var out api.UpdateMachineResult
	return out, c.do(ctx, "PATCH", "/v1/machines/"+url.PathEscape(machine), req, &out)
}

// CommitPreview says what `ferry commit` would delete.
func (c *Client) CommitPreview(ctx context.Context, machine string) (api.CommitPreview, error) {
	var out api.CommitPreview
	return out, c.do(ctx, "GET", "/v1/machines/"+url.PathEscape(machine)+"/commit-preview", nil, &out)
}

// Machines lists machines.
func (c *Client) Machines(ctx context.Context) ([]api.Machine, error) {
	var m []api.Machine
	return m, c.do(ctx, "GET", "/v1/machines", nil, &m)
}

// Machine shows one machine.
func (c *Client) Machine(ctx context.Context, machine string) (api.Machine, error) {
	var m api.Machine
	return m, c.do(ctx, "GET", "/v1/machines/"+url.PathEscape(machine), nil, &m)
}

// Points lists a machine's recovery points.
func (c *Client) Points(ctx context.Context, machine string) ([]api.Point, error) {
	var p []api.Point
	return p, c.do(ctx, "GET", "/v1/machines/"+url.PathEscape(machine)+"/points", nil, &p)
}

// LabelPoint names a point.
func (c *Client) LabelPoint(ctx context.Context, machine string, req api.LabelRequest) (api.Point, error) {
	var p api.Point
	return p, c.do(ctx, "POST", "/v1/machines/"+url.PathEscape(machine)+"/points/label", req, &p)
}

// ExportManifest resolves a point spec for export.
func (c *Client) ExportManifest(ctx context.Context, machine, spec string, key []byte) (api.ExportManifest, error) {
	var m api.ExportManifest
	return m, c.do(ctx, "POST", "/v1/machines/"+url.PathEscape(machine)+"/export", api.ExportRequest{Point: spec, Key: key}, &m)
}

// ExportDisk streams one disk of a point into dst (sparse) and returns its size.
func (c *Client) ExportDisk(ctx context.Context, machine string, point int64, disk string, key []byte, dst SparseTarget) (int64, error) {
	resp, err := c.send(ctx, "POST", fmt.Sprintf("/v1/machines/%s/export/%d/%s", url.PathEscape(machine), point, url.PathEscape(disk)),
		api.ExportRequest{Key: key})
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	return ReadSparse(resp.Body, dst)
}

// AuditPoints runs one point-audit pass now and waits for it.
func (c *Client) AuditPoints(ctx context.Context, req api.AuditRequest) (api.AuditReport, error) {
	var r api.AuditReport
	return r, c.do(ctx, "POST", "/v1/points/audit", req, &r)
}

// Verify re-reads and re-hashes stored data.
func (c *Client) Verify(ctx context.Context, machine string) (api.VerifyReport, error) {
	var r api.VerifyReport
	return r, c.do(ctx, "POST", "/v1/verify", api.VerifyRequest{Machine: machine}, &r)
}

// GC drops unreferenced data.
func (c *Client) GC(ctx context.Context) (api.GCReport, error) {
	var r api.GCReport
	return r, c.do(ctx, "POST", "/v1/gc", nil, &r)
}

// AddTarget binds a recovery site.
func (c *Client) AddTarget(ctx context.Context, t api.Target) (api.Target, error) {
	var out api.Target
	return out, c.do(ctx, "POST", "/v1/targets", t, &out)
}

// Targets lists targets.
func (c *Client) Targets(ctx context.Context) ([]api.Target, error) {
	var out []api.Target
	return out, c.do(ctx, "GET", "/v1/targets", nil, &out)
}

// RemoveTarget deletes a target.
func (c *Client) RemoveTarget(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", "/v1/targets/"+url.PathEscape(name), nil, nil)
}

// Failover starts a failover job.
func (c *Client) Failover(ctx context.Context, req api.FailoverRequest) (api.Job, error) {
	var j api.Job
	return j, c.do(ctx, "POST", "/v1/failover", req, &j)
}

// MachineAction starts commit, change-point, cleanup, reprotect or
// failback (verb is the route).
func (c *Client) MachineAction(ctx context.Context, verb string, req api.MachineActionRequest) (api.Job, error) {
	var j api.Job
	return j, c.do(ctx, "POST", "/v1/"+verb, req, &j)
}

// Jobs lists jobs.
func (c *Client) Jobs(ctx context.Context) ([]api.Job, error) {
	var out []api.Job
	return out, c.do(ctx, "GET", "/v1/jobs", nil, &out)
}

// Job shows a job.
func (c *Client) Job(ctx context.Context, id string) (api.Job, error) {
	var j api.Job
	return j, c.do(ctx, "GET", "/v1/jobs/"+url.PathEscape(id), nil, &j)
}

// CancelJob cancels a job.
func (c *Client) CancelJob(ctx context.Context, id string) (api.Job, error) {
	var j api.Job
	return j, c.do(ctx, "POST", "/v1/jobs/"+url.PathEscape(id)+"/cancel", nil, &j)
}

// ResumeJob resumes a job waiting on a manual action.
func (c *Client) ResumeJob(ctx context.Context, id string) (api.Job, error) {
	var j api.Job
	return j, c.do(ctx, "POST", "/v1/jobs/"+url.PathEscape(id)+"/resume", nil, &j)
}

// WatchJob calls fn for every snapshot of the job until it ends.
func (c *Client) WatchJob(ctx context.Context, id string, fn func(api.Job) error) error {
	resp, err := c.send(ctx, "GET", "/v1/jobs/"+url.PathEscape(id)+"/watch", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var j api.Job
		if err := dec.Decode(&j); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if err := fn(j); err != nil {
			return err
		}
	}
}

// AuditLog lists the newest limit audit entries (all when 0), oldest first.
func (c *Client) AuditLog(ctx context.Context, limit int) ([]api.AuditEntry, error) {
	var out []api.AuditEntry
	return out, c.do(ctx, "GET", "/v1/audit?limit="+strconv.Itoa(limit), nil, &out)
}

// CreateAlert adds a webhook alert rule.
func (c *Client) CreateAlert(ctx context.Context, r api.AlertRule) (api.Alert, error) {
	var out api.Alert
	return out, c.do(ctx, "POST", "/v1/alerts", r, &out)
}

// Alerts lists alert rules with their delivery status.
func (c *Client) Alerts(ctx context.Context) ([]api.Alert, error) {
	var out []api.Alert
	return out, c.do(ctx, "GET", "/v1/alerts", nil, &out)
}

// Alert shows one alert rule.
func (c *Client) Alert(ctx context.Context, name string) (api.Alert, error) {
	var out api.Alert
	return out, c.do(ctx, "GET", "/v1/alerts/"+url.PathEscape(name), nil, &out)
}

// RemoveAlert deletes an alert rule.
func (c *Client) RemoveAlert(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", "/v1/alerts/"+url.PathEscape(name), nil, nil)
}

// TestAlert sends a test notification and waits for the webhook's answer.
func (c *Client) TestAlert(ctx context.Context, name string) (api.Alert, error) {
	var out api.Alert
	return out, c.do(ctx, "POST", "/v1/alerts/"+url.PathEscape(name)+"/test", nil, &out)
}

// CreateDrill creates a drill.
func (c *Client) CreateDrill(ctx context.Context, d api.Drill) (api.Drill, error) {
	var out api.Drill
	return out, c.do(ctx, "POST", "/v1/drills", d, &out)
}

// Drills lists drills.
func (c *Client) Drills(ctx context.Context) ([]api.Drill, error) {
	var out []api.Drill
	return out, c.do(ctx, "GET", "/v1/drills", nil, &out)
}

// Drill shows a drill and its newest runs.
func (c *Client) Drill(ctx context.Context, name string) (api.DrillDetail, error) {
	var out api.DrillDetail
	return out, c.do(ctx, "GET", "/v1/drills/"+url.PathEscape(name), nil, &out)
}

// RunDrill starts a drill now.
func (c *Client) RunDrill(ctx context.Context, name string) (api.DrillRun, error) {
	var out api.DrillRun
	return out, c.do(ctx, "POST", "/v1/drills/"+url.PathEscape(name)+"/run", nil, &out)
}

// DeleteDrill deletes a drill and its reports.
func (c *Client) DeleteDrill(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", "/v1/drills/"+url.PathEscape(name), nil, nil)
}
