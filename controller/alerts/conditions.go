package alerts

import (
	"fmt"
	"strings"
	"time"

	"github.com/ferrydr/ferry/controller/api"
)

// Condition is an incident that is open now.
type Condition struct {
	Key     string // event/subject: stable while the incident lasts
	Event   string
	Subject string
	Summary string
	Detail  string
}

// Input is the state incidents are judged on.
type Input struct {
	Now      time.Time
	Started  time.Time // the controller's start: agents get AgentLostAfter from it to reconnect
	Machines []api.Machine
	Agents   []api.Agent
	// AgentLostAfter is how long an agent may be disconnected before
	// agent-lost opens.
	AgentLostAfter time.Duration
	// DiskFree and DiskReserve are the data directory's free bytes and
	// reserve; disk-low opens below DiskLowFactor times the reserve (the
	// reserve itself pauses ingest: the alert comes before). Reserve 0:
	// not judged.
	DiskFree, DiskReserve int64
}

// DiskLowFactor times the reserve is the free space under which disk-low
// opens.
const DiskLowFactor = 2

// Healths that open rpo-breach: points.Health makes a machine critical
// when, and only when, its RPO is past its policy's threshold.
const criticalHealth = "critical"

// Open returns the incidents open in in, by the rules of each event.
func Open(in Input) []Condition {
	var out []Condition
	for _, m := range in.Machines {
		if m.Health == criticalHealth {
			out = append(out, Condition{Key: api.EventRPOBreach + "/" + m.Name, Event: api.EventRPOBreach, Subject: m.Name,
				Summary: Summary(api.EventRPOBreach, m.Name), Detail: m.HealthReason})
		}
	}
	for _, a := range in.Agents {
		if a.Connected || a.Revoked {
			continue
		}
		since := a.LastSeen
		if since.Before(in.Started) {
			since = in.Started // a restarted controller gives agents time to come back
		}
		if gone := in.Now.Sub(since); gone > in.AgentLostAfter {
			out = append(out, Condition{Key: api.EventAgentLost + "/" + a.Name, Event: api.EventAgentLost, Subject: a.Name,
				Summary: Summary(api.EventAgentLost, a.Name),
				Detail:  fmt.Sprintf("not connected since %s", a.LastSeen.UTC().Format(time.RFC3339))})
		}
	}
	if in.DiskReserve > 0 && in.DiskFree < DiskLowFactor*in.DiskReserve {
		out = append(out, Condition{Key: api.EventDiskLow + "/controller", Event: api.EventDiskLow, Subject: "controller",
			Summary: Summary(api.EventDiskLow, "controller"),
			Detail: fmt.Sprintf("%s free, reserve %s (ingest pauses below the reserve)",
				api.FormatSize(in.DiskFree), api.FormatSize(in.DiskReserve))})
	}
	return out
}

// summaries of the incident events, by event.
var summaries = map[string]string{
	api.EventRPOBreach: "machine %s: RPO breach",
	api.EventAgentLost: "agent %s lost",
	api.EventDiskLow:   "%s disk low",
}

// Summary is the one-line summary of an incident of event about subject.
func Summary(event, subject string) string {
	if f, ok := summaries[event]; ok {
		return fmt.Sprintf(f, subject)
	}
	return event + " " + subject
}

// DrillEvent is the drill-failed event of a drill run that failed (a
// cancelled run, preempted by a real recovery, raises nothing).
func DrillEvent(r api.DrillRun) (Condition, bool) {
	if r.Result != api.DrillFailed {
		return Condition{}, false
	}
	subject := fmt.Sprintf("%s/%d", r.Drill, r.ID)
	return Condition{Key: api.EventDrillFailed + "/" + subject, Event: api.EventDrillFailed, Subject: subject,
		Summary: fmt.Sprintf("drill %s of %s failed on point %d", r.Drill, r.Machine, r.Point),
		Detail:  r.Error}, true
}

// JobEvent is the event an ended job raises, if any: a failed or partial
// job raises job-failed (a drill is not a job: DrillEvent).
// A cancelled job was the operator's choice and raises nothing.
func JobEvent(j api.Job) (Condition, bool) {
	if j.State != api.JobFailed && j.State != api.JobPartial {
		return Condition{}, false
	}
	ev := api.EventJobFailed
	var names []string
	for _, m := range j.Machines {
		names = append(names, m.Name)
	}
	return Condition{Key: ev + "/" + j.ID, Event: ev, Subject: j.ID,
		Summary: fmt.Sprintf("job %s (%s of %s) ended %s", j.ID, j.Kind, strings.Join(names, ", "), j.State),
		Detail:  j.Error}, true
}
