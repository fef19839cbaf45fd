package disk

import (
	"bufio"
	"fmt"
	"strconv"
	"strings"
)

// VMDK descriptor, from VMware's "Virtual Disk Format 5.0" technical note.

// vmdkDescriptor is a parsed text descriptor.
type vmdkDescriptor struct {
	createType string
	cid        uint32
	parentCID  uint32
	parentHint string
	extents    []vmdkExtentDesc
}

// vmdkExtentDesc is one extent line: RW 131072 SPARSE "disk.vmdk" [offset].
type vmdkExtentDesc struct {
	access  string
	sectors int64
	typ     string
	file    string
	offset  int64 // sectors into a flat file
}

const vmdkNoParent = 0xffffffff

// vmdkMaxExtents bounds the extent lines of one descriptor.
const vmdkMaxExtents = 4096

func parseVMDKDescriptor(text string) (*vmdkDescriptor, error) {
	d := &vmdkDescriptor{cid: vmdkNoParent, parentCID: vmdkNoParent}
	sc := bufio.NewScanner(strings.NewReader(strings.TrimRight(text, "\x00")))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(strings.TrimRight(sc.Text(), "\r"))
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		switch f := strings.Fields(line); f[0] {
		case "RW", "RDONLY", "NOACCESS":
			e, err := parseVMDKExtentLine(line)
			if err != nil {
				return nil, err
			}
			if len(d.extents) >= vmdkMaxExtents {
				return nil, fmt.Errorf("more than %d extents", vmdkMaxExtents)
			}
			d.extents = append(d.extents, e)
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue // ddb lines and others we do not need are key = value too; anything else is ignored
		}
		k, v = strings.TrimSpace(k), strings.Trim(strings.TrimSpace(v), `"`)
		switch k {
		case "createType":
			d.createType = v
		case "CID", "parentCID":
			n, err := strconv.ParseUint(v, 16, 32)
			if err != nil {
				return nil, fmt.Errorf("%s %q is not hexadecimal", k, v)
			}
			if k == "CID" {
				d.cid = uint32(n)
			} else {
				d.parentCID = uint32(n)
			}
		case "parentFileNameHint":
			d.parentHint = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(d.extents) == 0 {
		return nil, fmt.Errorf("no extents")
	}
	return d, nil
}

func parseVMDKExtentLine(line string) (vmdkExtentDesc, error) {
	var e vmdkExtentDesc
	q1 := strings.IndexByte(line, '"')
	q2 := strings.LastIndexByte(line, '"')
	if q1 < 0 || q2 <= q1 {
		// A ZERO extent has no file.
		f := strings.Fields(line)
		if len(f) == 3 && f[2] == "ZERO" {
			n, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil || n <= 0 {
				return e, fmt.Errorf("extent line %q: bad size", line)
			}
			return vmdkExtentDesc{access: f[0], sectors: n, typ: "ZERO"}, nil
		}
		return e, fmt.Errorf("extent line %q: no quoted file name", line)
	}
	head := strings.Fields(line[:q1])
	if len(head) != 3 {
		return e, fmt.Errorf("extent line %q: want access, size and type", line)
	}
	n, err := strconv.ParseInt(head[1], 10, 64)
	if err != nil || n <= 0 || n > 1<<47 {
		return e, fmt.Errorf("extent line %q: bad size", line)
	}
	e = vmdkExtentDesc{access: head[0], sectors: n, typ: head[2], file: line[q1+1 : q2]}
	if tail := strings.Fields(line[q2+1:]); len(tail) > 0 {
		off, err := strconv.ParseInt(tail[0], 10, 64)
		if err != nil || off < 0 || off > 1<<47 {
			return e, fmt.Errorf("extent line %q: bad offset", line)
		}
		e.offset = off
	}
	if e.file == "" {
		return e, fmt.Errorf("extent line %q: empty file name", line)
	}
	return e, nil
}
