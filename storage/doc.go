// Package storage is Ferry's repository: content-addressed chunks in
// append-only pack files, indexed in SQLite, and the recovery points built
// from them. Its on-disk format is specified in docs/storage-format.md and
// what holds after a crash in docs/crash-semantics.md.
//
// Use:
//
//	storage.Create(ctx, dir, storage.CreateOptions{PublicKey: pub}) // once
//	r, err := storage.Open(ctx, dir, storage.OpenOptions{Logger: log})
//	p, err := r.BeginPoint(ctx, "web1", disks)  // or resumes the pending point
//	err = p.Write(ctx, blocks)                   // durable on return
//	pt, err := p.Commit(ctx, storage.CommitInfo{Instant: t, Consistency: storage.CrashConsistent})
//	d, err := r.OpenDisk(ctx, pt.ID, "sda")      // io.ReaderAt, WriteTo, ReadBlock, Blocks
//
// Blocks are always whole (BlockSize bytes; pad the last block of a disk
// with zeros). A repository with a public key stores ciphertext; a handle
// without the private key writes, dedups, verifies (CRC) and collects
// garbage, and fails plaintext reads with ErrKeyRequired. Give a key for
// one operation with Repo.WithPrivateKey.
package storage
