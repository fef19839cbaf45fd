-- Schema version 2 (docs/storage-format.md "Size changes"): whether a disk's
-- rows are known to hold no data at or beyond the size of its newest point.
-- Disks an older build wrote start at 0 and get one full check at their next
-- commit; new disks are checked at their first commit (nothing to find).
ALTER TABLE disks ADD COLUMN truncation_checked INTEGER NOT NULL DEFAULT 0;
-- A commit looks up the disk's size in its newest earlier point.
CREATE INDEX point_disks_disk ON point_disks (disk_id, point_id);
