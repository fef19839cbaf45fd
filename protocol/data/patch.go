package data

import "fmt"

// PatchRun is a run of bytes to write at Offset within a block.
type PatchRun struct {
	Offset uint32
	Data   []byte
}

const patchRunHeader = 4 + 4

// A patch is the plain payload of a FlagPatch block: runs in increasing,
// non-overlapping offset order, each [u32 offset][u32 length][bytes], with
// length ≥ 1 and offset+length ≤ MaxBlockSize. Senders use a patch when it
// is smaller than the block (a few 4 KiB writes in a 64 KiB block).

// AppendPatch appends the encoding of runs to dst. The runs must be valid
// (ValidatePatch).
func AppendPatch(dst []byte, runs ...PatchRun) []byte {
	for _, r := range runs {
		dst = appendU32(dst, r.Offset)
		dst = appendU32(dst, uint32(len(r.Data)))
		dst = append(dst, r.Data...)
	}
	return dst
}

// EncodePatch returns the encoding of runs.
func EncodePatch(runs ...PatchRun) []byte {
	n := 0
	for _, r := range runs {
		n += patchRunHeader + len(r.Data)
	}
	return AppendPatch(make([]byte, 0, n), runs...)
}

// PatchSize is the length of the encoding of runs.
func PatchSize(runs []PatchRun) int {
	n := 0
	for _, r := range runs {
		n += patchRunHeader + len(r.Data)
	}
	return n
}

// ValidatePatch checks the order, overlap and bounds rules.
func ValidatePatch(runs []PatchRun) error {
	if PatchSize(runs) > MaxBlockSize {
		return tooLarge("patch", "encoding of %d bytes over %d", PatchSize(runs), MaxBlockSize)
	}
	var next uint64
	for i, r := range runs {
		if len(r.Data) == 0 {
			return invalid("patch", "run %d is empty", i)
		}
		if uint64(r.Offset) < next {
			return invalid("patch", "run %d at %d overlaps or precedes the run before (ends at %d)", i, r.Offset, next)
		}
		next = uint64(r.Offset) + uint64(len(r.Data))
		if next > MaxBlockSize {
			return invalid("patch", "run %d ends at %d, past the largest block", i, next)
		}
	}
	return nil
}

// DecodePatch parses a patch. The runs' Data alias b.
func DecodePatch(b []byte) ([]PatchRun, error) {
	if len(b) > MaxBlockSize {
		return nil, tooLarge("patch", "encoding of %d bytes over %d", len(b), MaxBlockSize)
	}
	if len(b) == 0 {
		return nil, invalid("patch", "no runs")
	}
	r := reader{b: b, frame: "patch"}
	var runs []PatchRun
	var next uint64
	for len(r.b) > 0 {
		off := r.u32()
		n := r.u32()
		if r.err != nil {
			return nil, r.err
		}
		if n == 0 {
			return nil, invalid("patch", "run %d is empty", len(runs))
		}
		if uint64(off) < next {
			return nil, invalid("patch", "run %d at %d overlaps or precedes the run before (ends at %d)", len(runs), off, next)
		}
		next = uint64(off) + uint64(n)
		if next > MaxBlockSize {
			return nil, invalid("patch", "run %d ends at %d, past the largest block", len(runs), next)
		}
		data := r.bytes(int(n))
		if r.err != nil {
			return nil, r.err
		}
		runs = append(runs, PatchRun{Offset: off, Data: data})
	}
	return runs, nil
}

// ApplyPatch writes runs over block, which holds the receiver's current
// content. Runs past len(block) are an error and leave block untouched.
func ApplyPatch(block []byte, runs []PatchRun) error {
	for i, r := range runs {
		if uint64(r.Offset)+uint64(len(r.Data)) > uint64(len(block)) {
			return &FormatError{Frame: "patch", Reason: fmt.Sprintf("run %d ends at %d, past the block of %d bytes", i, uint64(r.Offset)+uint64(len(r.Data)), len(block))}
		}
	}
	for _, r := range runs {
		copy(block[r.Offset:], r.Data)
	}
	return nil
}
