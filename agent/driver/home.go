package driver

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

// PowerDriver is what a hypervisor driver does at a machine's home site,
// where the machine already exists and Ferry only powers it: PowerOn starts
// (or resumes) the existing machine and never defines, creates, registers or
// reconfigures one; a machine that is not there is KindNotFound.
type PowerDriver interface {
	PowerOn(ctx context.Context, spec Spec) error
	Stop(ctx context.Context, spec Spec) error
	Pause(ctx context.Context, spec Spec) error
	Resume(ctx context.Context, spec Spec) error
	Status(ctx context.Context, spec Spec) (string, error)
}

// Home is a driver at a machine's home site: the Hypervisor interface over
// a PowerDriver. Start powers the existing machine on; Remove is refused,
// since the home machine is the user's and never Ferry's to delete. The spec
// keeps only the machine's names: no disks, NICs or hardware reach the
// driver, so nothing of the home machine is changed.
type Home struct {
	Driver string // the driver's name, for errors
	D      PowerDriver
}

var _ Hypervisor = Home{}

func homeSpec(spec Spec) Spec {
	return Spec{Name: spec.Name, Machine: spec.Machine, Env: spec.Env}
}

// Start powers the existing home machine on.
func (h Home) Start(ctx context.Context, spec Spec) error { return h.D.PowerOn(ctx, homeSpec(spec)) }

// Stop shuts the home machine down (guest first, then forcibly after the
// driver's shutdown timeout).
func (h Home) Stop(ctx context.Context, spec Spec) error { return h.D.Stop(ctx, homeSpec(spec)) }

// Pause freezes the home machine where the platform can.
func (h Home) Pause(ctx context.Context, spec Spec) error { return h.D.Pause(ctx, homeSpec(spec)) }

// Resume thaws it.
func (h Home) Resume(ctx context.Context, spec Spec) error { return h.D.Resume(ctx, homeSpec(spec)) }

// Status reports the home machine's power state.
func (h Home) Status(ctx context.Context, spec Spec) (string, error) {
	return h.D.Status(ctx, homeSpec(spec))
}

// Remove is refused at the home site.
func (h Home) Remove(context.Context, Spec) error {
	return &Error{Driver: h.Driver, Op: "remove", Kind: KindInvalid,
		Err: fmt.Errorf("the machine at its home site is never removed by Ferry")}
}

// HomeOptions are opts without the options a driver knows (known) but does
// not use at the home site (home): a machine whose home is a former
// target (after a round trip) carries that target's options, of which
// only the connection and timeouts apply. Keys the driver does not know
// stay, for its own parsing to refuse.
func HomeOptions(opts map[string]string, home, known []string) map[string]string {
	out := make(map[string]string, len(opts))
	for k, v := range opts {
		if slices.Contains(home, k) || !slices.Contains(known, k) {
			out[k] = v
		}
	}
	return out
}

// CheckHomeOptions refuses option keys that a driver does not take at the
// home site (where it only powers an existing machine), naming the first.
func CheckHomeOptions(name string, opts map[string]string, allowed []string) error {
	keys := make([]string, 0, len(opts))
	for k := range opts {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if !slices.Contains(allowed, k) {
			return &Error{Driver: name, Op: "options", Kind: KindInvalid,
				Err: fmt.Errorf("%s is not an option of the %s driver at the home site (there it takes %s)", k, name, strings.Join(allowed, ", "))}
		}
	}
	return nil
}
