// Package bdtrack keeps a dirty bitmap of a block device in the kernel: an
// eBPF program on the block layer's tracepoints sets one bit per block for
// every write, discard or other data-changing request to the device, with
// no kernel module, so that a cycle can read just the blocks that changed
// since the last cut instead of hashing the whole disk.
//
// # Hooks
//
// The same program is attached to block:block_bio_queue (a bio is
// submitted) and to the completion tracepoints block:block_rq_complete
// (request-based devices: loop, nvme, scsi, virtio) and
// block:block_bio_complete (bios remapped by stacking drivers: dm, md).
// Field offsets are read at run time from
// /sys/kernel/tracing/events/block/<tp>/format, so the program needs no
// clang. It keeps events whose dev_t (kernel encoding (major<<20)|minor)
// is the tracked disk's and whose rwbs operation letter (after an optional
// 'F' for a preflush) is neither 'R' (read) nor 'F' (flush): 'W' (write),
// 'D' (discard, secure erase), 'N' (any other operation: write-zeroes,
// zone resets) and letters a later kernel may add are all marked. It sets
// the bits of every block in [sector*512, (sector+nr_sector)*512) with
// atomic ORs on 64-bit words: the first and last word with a mask, the
// words between with the bpf_loop helper, at most MaxWordsPerEvent of them.
// A larger request counts an overflow, and the next Cut reports Overflow:
// the caller must resync.
//
// # Swapping without losing writes
//
// There are two bitmaps, A and B, halves of one BPF array, and a control
// word saying which one is active. Cut flips the control word, then reads
// and clears the inactive half word by word with an atomic exchange, and
// returns what it found. A write is marked when it is queued and again when
// it completes, each time in the half active at that moment. So:
//
//   - a write that completed before the flip was marked in the half Cut
//     returns, and its data is on the device when the caller reads it after
//     Cut;
//   - a write still in flight at the flip (queued before, completed after)
//     was marked in the old half by its submission and is marked in the new
//     half by its completion: the caller may read the block before the write
//     lands, but the next Cut returns it again;
//   - a program that read the control word just before the flip and sets its
//     bit in the old half while Cut is clearing it either lands before the
//     exchange of that word (returned now) or after it (left in the half and
//     returned by the cut after next); the atomic exchange never drops it.
//
// A block can be returned more often than needed, never less.
//
// # Pinning
//
// The maps and links are pinned under bpffs at <BPFFS>/ferry/<major>_<minor>/
// (bits, ctl, meta, link_<tracepoint>), with meta holding a magic, a format
// version, the dev_t, the block size, the device size and the bitmap size.
// Open reuses a pinned tracker when meta matches and every link is still
// pinned, so an agent restart or upgrade loses no bits; Close leaves the
// tracker pinned and running, Remove unpins it. After a reboot bpffs is
// empty: Open creates a new tracker and reports Fresh, and the caller must
// resync. One process at a time may Cut a device's tracker: two would each
// drain part of the bits.
//
// # Tracking lost
//
// Open fails with ErrUnsupported (not Linux, no bpf() for this process, a
// partition rather than a whole disk), ErrTooLarge (the bitmap would exceed
// Options.MaxBitmapBytes), ErrResized (the device size differs from the
// pinned tracker's) or ErrMismatch (a pinned tracker of another format,
// device or block size). It succeeds with Fresh set and FreshReason
// ErrNotPinned (no pinned tracker: first use or a reboot) or ErrDetached
// (maps pinned but a link gone: writes may have been missed). Cut reports
// Overflow, and fails with ErrResized if the device changed size. In each
// case the caller must resync the whole device.
//
// The agent's tracked freezes of block devices use it (agent/bdtracked.go,
// docs/replication.md §5.2c).
package bdtrack
