package admin

import (
	"context"
	"net/url"

	"github.com/ferrydr/ferry/controller/api"
)

// Plans lists recovery plans.
func (c *Client) Plans(ctx context.Context) ([]api.Plan, error) {
	var ps []api.Plan
	return ps, c.do(ctx, "GET", "/v1/plans", nil, &ps)
}

// Plan reads one plan.
func (c *Client) Plan(ctx context.Context, name string) (api.Plan, error) {
	var p api.Plan
	return p, c.do(ctx, "GET", "/v1/plans/"+url.PathEscape(name), nil, &p)
}

// CreatePlan creates a plan.
func (c *Client) CreatePlan(ctx context.Context, p api.Plan) (api.Plan, error) {
	var out api.Plan
	return out, c.do(ctx, "POST", "/v1/plans", p, &out)
}

// DeletePlan deletes a plan.
func (c *Client) DeletePlan(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", "/v1/plans/"+url.PathEscape(name), nil, nil)
}

// EditPlan applies one editing verb (api.PlanAddGroup …) to a plan.
func (c *Client) EditPlan(ctx context.Context, name string, e api.PlanEdit) (api.Plan, error) {
	var out api.Plan
	return out, c.do(ctx, "POST", "/v1/plans/"+url.PathEscape(name)+"/edit", e, &out)
}

// ApplyPlan creates or replaces a plan whole.
func (c *Client) ApplyPlan(ctx context.Context, p api.Plan) (api.PlanApplyResult, error) {
	var out api.PlanApplyResult
	return out, c.do(ctx, "PUT", "/v1/plans/"+url.PathEscape(p.Name), p, &out)
}
