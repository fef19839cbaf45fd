// Package snapshot makes consistent point-in-time views of a machine's disks
// with the best mechanism the host offers (DESIGN.md "Consistency"): reflink
// clones, btrfs subvolume snapshots, a driver pause around the clones,
// fsfreeze for app consistency, a direct read of a powered-off machine or
// of image files that nobody wrote while they were read (quiet-file) —
// and says honestly which level each view reached. It also finds what
// changed between two reflink views from their extent maps (FIEMAP).
package snapshot
