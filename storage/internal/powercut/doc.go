// Package powercut is a test-only in-memory FUSE filesystem that models
// what survives a power cut: file contents become durable only when the
// file is fsync'd or fdatasync'd, directory entries (create, unlink,
// rename, mkdir) only when their directory is fsync'd. Cut freezes the
// filesystem (every later operation fails with EIO) and returns the durable
// state, from which a fresh filesystem is mounted: every unsynced write is
// gone, as after a real power loss with the strictest POSIX reading.
package powercut
