package admin

import (
	"context"
	"io"

	"github.com/ferrydr/ferry/controller/api"
)

// Tokens is what the token routes need.
type Tokens interface {
	CreateToken(ctx context.Context, req api.CreateTokenRequest) (api.Token, error)
	Tokens(ctx context.Context) ([]api.Token, error)
	RevokeToken(ctx context.Context, id string) error
}

// Agents is what the agent routes need.
type Agents interface {
	Agents(ctx context.Context) ([]api.Agent, error)
	RevokeAgent(ctx context.Context, agent string) error
	RemoveAgent(ctx context.Context, agent string) error
	Inventory(ctx context.Context, agent string) ([]api.InventoryItem, error)
	UpgradeAgents(ctx context.Context, req api.UpgradeRequest) ([]api.UpgradeResult, error)
}

// Policies is what the policy routes need.
type Policies interface {
	Policies(ctx context.Context) ([]api.Policy, error)
	CreatePolicy(ctx context.Context, p api.Policy) (api.Policy, error)
	UpdatePolicy(ctx context.Context, name string, u api.PolicyUpdate) (api.Policy, error)
	DeletePolicy(ctx context.Context, name string) error
}

// Plans is what the recovery plan routes need.
type Plans interface {
	Plans(ctx context.Context) ([]api.Plan, error)
	Plan(ctx context.Context, name string) (api.Plan, error)
	CreatePlan(ctx context.Context, p api.Plan) (api.Plan, error)
	DeletePlan(ctx context.Context, name string) error
	EditPlan(ctx context.Context, name string, e api.PlanEdit) (api.Plan, error)
	ApplyPlan(ctx context.Context, p api.Plan) (api.PlanApplyResult, error)
}

// Machines is what the machine and point routes need.
type Machines interface {
	Protect(ctx context.Context, req api.ProtectRequest) (api.Machine, error)
	Unprotect(ctx context.Context, machine string, deletePoints bool) error
	// UpdateMachine changes a machine's settings (machines update).
	UpdateMachine(ctx context.Context, machine string, req api.UpdateMachineRequest) (api.UpdateMachineResult, error)
	Machines(ctx context.Context) ([]api.Machine, error)
	Machine(ctx context.Context, machine string) (api.Machine, error)
	Points(ctx context.Context, machine string) ([]api.Point, error)
	LabelPoint(ctx context.Context, machine string, req api.LabelRequest) (api.Point, error)
	// ExportManifest resolves a point spec; key is a private key file's
	// content (PEM) for an encrypted repository, or nil.
	ExportManifest(ctx context.Context, machine, spec string, key []byte) (api.ExportManifest, error)
	// ExportDisk writes the disk's non-zero blocks as a sparse stream.
	ExportDisk(ctx context.Context, machine string, point int64, disk string, key []byte, w io.Writer) error
}

// Repository is what the maintenance routes need.
type Repository interface {
	Verify(ctx context.Context, machine string) (api.VerifyReport, error)
	GC(ctx context.Context) (api.GCReport, error)
	// AuditPoints runs one point-audit pass now (controller/scrub).
	AuditPoints(ctx context.Context, req api.AuditRequest) (api.AuditReport, error)
}

// Failover is what the target, failover and job routes need.
type Failover interface {
	AddTarget(ctx context.Context, t api.Target) (api.Target, error)
	Targets(ctx context.Context) ([]api.Target, error)
	RemoveTarget(ctx context.Context, name string) error
	Failover(ctx context.Context, req api.FailoverRequest) (api.Job, error)
	Commit(ctx context.Context, req api.MachineActionRequest) (api.Job, error)
	// CommitPreview says what a commit would delete; it changes nothing.
	CommitPreview(ctx context.Context, machine string) (api.CommitPreview, error)
	ChangePoint(ctx context.Context, req api.MachineActionRequest) (api.Job, error)
	Cleanup(ctx context.Context, req api.MachineActionRequest) (api.Job, error)
	Reprotect(ctx context.Context, req api.MachineActionRequest) (api.Job, error)
	Failback(ctx context.Context, req api.MachineActionRequest) (api.Job, error)
	Revert(ctx context.Context, req api.MachineActionRequest) (api.Job, error)
	Jobs(ctx context.Context) ([]api.Job, error)
	Job(ctx context.Context, id string) (api.Job, error)
	WatchJob(ctx context.Context, id string) (<-chan api.Job, error)
	CancelJob(ctx context.Context, id string) (api.Job, error)
	ResumeJob(ctx context.Context, id string) (api.Job, error)
}

// Drills is what the drill routes need.
type Drills interface {
	CreateDrill(ctx context.Context, d api.Drill) (api.Drill, error)
	Drills(ctx context.Context) ([]api.Drill, error)
	Drill(ctx context.Context, name string) (api.DrillDetail, error)
	RunDrill(ctx context.Context, name string) (api.DrillRun, error)
	DeleteDrill(ctx context.Context, name string) error
}

// Backend is everything the admin server serves.
type Backend interface {
	Tokens
	Agents
	Policies
	Plans
	Machines
	Repository
	Failover
	Audit
	Alerts
	Drills
}
