// Package pack encodes and decodes Ferry pack files: a header, self-describing
// CRC-protected records (chunks, data keys, point records) and, once sealed, a
// footer that lists every record. It does no I/O beyond io.ReaderAt scans;
// the byte layouts are specified in docs/storage-format.md.
package pack
