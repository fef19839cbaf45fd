// Package storage is Ferry's repository: content-addressed chunks in
// append-only pack files, indexed in SQLite, and the recovery points built
// from them. Its on-disk format is specified in docs/storage-format.md.
package storage
