package failover

import (
	"context"

	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/protocol/msg"
)

// startAtHome runs the home driver's start naming the home disk set as the
// set the machine runs on: the home agent records it written and stops
// holding the home disks (they are the machine's own again, not a
// replica), before the driver starts anything on them.
func (j *job) startAtHome(ctx context.Context, m catalog.Machine, md *machineData) (msg.DriverResponse, error) {
	if md.HomeDir == "" {
		return j.homeDriver(ctx, m, md.SourceAgent, "start")
	}
	ref := md.homeRef(m.Name)
	return j.homeDriverRef(ctx, m, md.SourceAgent, "start", &ref)
}
