// Package track follows the writes to a protected image file as they
// happen, from the filesystem's write tracepoints in a private tracefs
// instance, so that a cycle can read just the changed pages of a frozen
// file instead of cloning the whole file (a reflink clone walks every
// extent, and random writes leave one extent per write: seconds per view).
//
// Tracking is only ever a shortcut: whenever it cannot vouch for a window
// (events lost, the file truncated, space punched or preallocated, extents
// remapped into it, the tracker restarted) the window is marked lost and
// the caller must find the changes another way. Writes through a shared
// mapping (mmap) fire none of these events; the agent only tracks files
// when the admin turns tracking on (docs/replication.md).
package track
