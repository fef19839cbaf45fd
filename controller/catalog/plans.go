package catalog

import (
	"context"

	"github.com/ferrydr/ferry/controller/api"
)

// PutPlan creates (create=true; ErrExists if present) or replaces a plan.
// Groups are renumbered from 1 in order.
func (c *Catalog) PutPlan(ctx context.Context, p api.Plan, create bool) error {
	for i := range p.Groups {
		p.Groups[i].Number = i + 1
	}
	return planTable.put(ctx, c, p.Name, p, create)
}

// Plan reads one plan.
func (c *Catalog) Plan(ctx context.Context, name string) (api.Plan, error) {
	var p api.Plan
	err := planTable.get(ctx, c, name, &p)
	return p, err
}

// Plans lists every plan by name.
func (c *Catalog) Plans(ctx context.Context) ([]api.Plan, error) {
	return listSpecs[api.Plan](ctx, c, `SELECT spec FROM plans ORDER BY name`)
}

// DeletePlan removes a plan (its machines stay protected).
func (c *Catalog) DeletePlan(ctx context.Context, name string) error {
	return planTable.delete(ctx, c, name)
}
