// Package scrub is the point audit (issue 17): a background job of the
// controller that re-reads every retained point of every machine at a
// bounded rate, so damage to stored data is found while the source still
// has the content, not during an outage.
//
// A pass is one storage.Repo.Verify: every chunk any point reads is read
// once (however many points share it) and checked — its record's CRC and
// index row; decompressed and re-hashed when the repository is not
// encrypted or a key is at hand; for an encrypted repository without the
// key, the ciphertext record checksum — every referenced chunk id must
// resolve (a point's index is complete), and every point's commit record
// is read. Pace holds the read rate; Plan gives the progress.
//
// What a pass finds damaged is handed to OnDamage (the controller marks
// the chunks damaged and sets the machines to resync, so the next cycle
// sends content the source still has), logged and recorded per point,
// disk and block in the catalog (point_audits) with the time each point
// was last audited. This package is not the admin audit trail
// (`ferry audit`): it audits stored points, not people. docs/audit.md.
package scrub
