package failover

import (
	"context"
	"fmt"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/protocol/msg"
	"github.com/ferrydr/ferry/storage"
)

// The round trip through a recovery site whose hypervisor wants another
// format than raw (targets add --format; docs/failover.md "Both
// directions", formats). A failover's start has the target agent write
// the live set's disks in that format (target.convert) and the machine
// runs on those copies; the set's raw files keep the point the set was
// moved to. So:
//   - the recovery agent, as the machine's reverse source, reads the
//     copies (the files the machine runs on) through agent/disk's
//     readers, with the same views as any source: reflink clones where
//     the filesystem has them (changes found in the images' own tables,
//     disk.ChangedRanges), else direct reads compared with its block map
//     (inconsistent while the machine runs: noteReverseConsistency);
//   - a forward re-protect after a failback moves the raw files from
//     their own point to the failback's final point (what the copies held
//     when the machine stopped): the move deletes the copies, and the next
//     failover's start converts afresh.

// reverseFormats are the recovery-site formats whose copies the recovery
// agent reads as a source (raw: the set's own files).
var reverseFormats = map[string]bool{"": true, "raw": true, "qcow2": true, "vhdx": true, "vmdk": true}

// rawTarget reports whether a target's machines run on the sets' own raw
// files.
func rawTarget(t api.Target) bool { return t.Format == "" || t.Format == "raw" }

// checkReverseFormat refuses a recovery site whose disks the recovery
// agent cannot read as a source.
func checkReverseFormat(t api.Target) error {
	if !reverseFormats[t.Format] {
		return refuse("re-protection from a %s recovery site is not built: the recovery agent reads raw, qcow2, VHDX and VMDK disks as a source; protect the machine again for a full copy", t.Format)
	}
	return nil
}

// recoverySourcePaths are the files the machine runs on at the recovery
// site: the live set's raw files, or the copies its start converted them
// to (the paths the target's driver was given).
func recoverySourcePaths(t api.Target, live msg.DiskSetState) []string {
	var paths []string
	for _, d := range live.Disks {
		p := d.Path
		if !rawTarget(t) {
			p = msg.FormatCopyPath(p, t.Format)
		}
		paths = append(paths, p)
	}
	return paths
}

// recoveryRawPoint is the point the recovery site's raw files hold once
// the live set is demoted after a failback: on a raw site the final cycle
// read these very files with the machine stopped (the failback's point),
// or an unplanned failback kept them as a point (keepRecovery); on another
// format's site the machine wrote to the copies only (both were read from
// there, target.ship), and the raw files still hold the set's own point.
func (j *job) recoveryRawPoint(ctx context.Context, md *machineData, staged msg.DiskSetState) (int64, error) {
	t, err := j.target(ctx, md)
	if err != nil {
		return 0, err
	}
	switch {
	case !rawTarget(t):
		return staged.Point, nil
	case md.RecoveryDivergent != 0:
		return md.RecoveryDivergent, nil
	}
	return md.Point, nil
}

// noteReverseConsistency warns, in the job's machine notes, when the
// recovery site gave the reverse point only as `inconsistent`: its disks
// were read while the machine may write them (no reflink or snapshot view
// of them there), as any source in that case.
func (j *job) noteReverseConsistency(ctx context.Context, name string, point int64) {
	p, err := j.e.Repo.Point(ctx, point)
	if err != nil || p.Consistency != storage.Inconsistent {
		return
	}
	j.r.MachineNote(name, fmt.Sprintf("warning: the recovery site can only give inconsistent points of %s (point %d: its disks are read while the machine writes them, with no reflink or snapshot view there); a planned failback stops the machine before its final cycle, so that point is consistent", name, point))
}
