package bdtrack

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/cilium/ebpf/asm"
)

// TestAtomicOrEncoding: atomicOr marshals to BPF_STX|BPF_ATOMIC|BPF_DW
// (0xdb) with imm BPF_OR (0x40), the kernel's atomic OR.
func TestAtomicOrEncoding(t *testing.T) {
	var b bytes.Buffer
	if err := (asm.Instructions{atomicOr(asm.R0, asm.R3, 8)}).Marshal(&b, binary.LittleEndian); err != nil {
		t.Fatal(err)
	}
	got := b.Bytes()
	if len(got) != 8 || got[0] != 0xdb || got[1] != 0x30 || binary.LittleEndian.Uint16(got[2:]) != 8 || binary.LittleEndian.Uint32(got[4:]) != 0x40 {
		t.Fatalf("atomicOr marshals to % x, want db 30 08 00 40 00 00 00", got)
	}
}

// TestParseFormat reads block_rq_complete's format as kernel 6.18 prints it.
func TestParseFormat(t *testing.T) {
	const format = `name: block_rq_complete
ID: 2107
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:dev_t dev;	offset:8;	size:4;	signed:0;
	field:sector_t sector;	offset:16;	size:8;	signed:0;
	field:unsigned int nr_sector;	offset:24;	size:4;	signed:0;
	field:int error;	offset:28;	size:4;	signed:1;
	field:unsigned short ioprio;	offset:32;	size:2;	signed:0;
	field:char rwbs[10];	offset:34;	size:10;	signed:0;
	field:__data_loc char[] cmd;	offset:44;	size:4;	signed:0;
`
	f, err := parseFormat("t", bufio.NewScanner(strings.NewReader(format)))
	if err != nil {
		t.Fatal(err)
	}
	if f != (fields{dev: 8, sector: 16, nrSector: 24, rwbs: 34}) {
		t.Fatalf("got %+v", f)
	}
	bad := strings.Replace(format, "offset:16;", "offset:20;", 1)
	if _, err := parseFormat("t", bufio.NewScanner(strings.NewReader(bad))); err == nil {
		t.Fatal("an unaligned sector field was accepted")
	}
	missing := strings.Replace(format, "rwbs[10]", "other[10]", 1)
	if _, err := parseFormat("t", bufio.NewScanner(strings.NewReader(missing))); err == nil {
		t.Fatal("a format without rwbs was accepted")
	}
}
