package bdtrack

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
)

// hooks are the tracepoints the program is attached to. The first is
// required; at least one completion hook must exist (see doc.go).
var hooks = []struct {
	name     string
	complete bool
	stat     int16 // offset of its counter in the ctl value
}{
	{"block_bio_queue", false, ctlQueued},
	{"block_rq_complete", true, ctlRqCompleted},
	{"block_bio_complete", true, ctlBioCompleted},
}

// The ctl map's one value: the active half, then counters (u64 each) the
// program increments, then the overflow count the last Cut reported
// (written only by Cut, so that Stats keeps the program's totals).
const (
	ctlActive       = 0
	ctlOverflows    = 8
	ctlQueued       = 16
	ctlBioCompleted = 24
	ctlRqCompleted  = 32
	ctlOverflowsCut = 40
	ctlValueSize    = 48
)

var tracefsRoots = []string{"/sys/kernel/tracing", "/sys/kernel/debug/tracing"}

// fields are the offsets in a block tracepoint's record the program reads.
type fields struct {
	dev, sector, nrSector, rwbs int16
}

// readFormat parses events/block/<name>/format. It returns os.ErrNotExist
// (wrapped) when the tracepoint does not exist.
func readFormat(name string) (fields, error) {
	var lastErr error
	for _, root := range tracefsRoots {
		f, err := os.Open(filepath.Join(root, "events", "block", name, "format"))
		if err != nil {
			lastErr = err
			continue
		}
		defer f.Close()
		return parseFormat(f.Name(), bufio.NewScanner(f))
	}
	return fields{}, lastErr
}

func parseFormat(path string, sc *bufio.Scanner) (fields, error) {
	type field struct{ off, size int }
	got := map[string]field{}
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(line, "field:") {
			continue
		}
		parts := strings.Split(line, ";")
		if len(parts) < 3 {
			continue
		}
		decl := strings.Fields(strings.TrimPrefix(parts[0], "field:"))
		if len(decl) == 0 {
			continue
		}
		name := decl[len(decl)-1]
		if i := strings.IndexByte(name, '['); i >= 0 {
			name = name[:i]
		}
		var fd field
		for _, p := range parts[1:] {
			k, v, ok := strings.Cut(strings.TrimSpace(p), ":")
			if !ok {
				continue
			}
			n, err := strconv.Atoi(v)
			if err != nil {
				continue
			}
			switch k {
			case "offset":
				fd.off = n
			case "size":
				fd.size = n
			}
		}
		got[name] = fd
	}
	if err := sc.Err(); err != nil {
		return fields{}, err
	}
	want := []struct {
		name string
		size int // exact size, or minimum for rwbs
	}{{"dev", 4}, {"sector", 8}, {"nr_sector", 4}, {"rwbs", 2}}
	var out [4]int16
	for i, w := range want {
		fd, ok := got[w.name]
		switch {
		case !ok:
			return fields{}, fmt.Errorf("%s: no field %q", path, w.name)
		case w.name == "rwbs" && fd.size < w.size, w.name != "rwbs" && fd.size != w.size:
			return fields{}, fmt.Errorf("%s: field %q has size %d", path, w.name, fd.size)
		case w.name != "rwbs" && fd.off%w.size != 0:
			// loads from the context must be naturally aligned
			return fields{}, fmt.Errorf("%s: field %q at unaligned offset %d", path, w.name, fd.off)
		case fd.off > 1024:
			return fields{}, fmt.Errorf("%s: field %q at offset %d", path, w.name, fd.off)
		}
		out[i] = int16(fd.off)
	}
	return fields{dev: out[0], sector: out[1], nrSector: out[2], rwbs: out[3]}, nil
}

// progParams are the constants baked into one program.
type progParams struct {
	dev     uint32 // (major<<20)|minor
	shift   int32  // log2(blockSize) - 9
	nbits   int32  // blocks on the device
	words   int32  // words in one half
	bits    *ebpf.Map
	ctl     *ebpf.Map
	statOff int16
}

// atomicOr is `lock *(u64 *)(dst + off) |= src`. cilium/ebpf v0.22.0's
// asm.OrAtomic.Mem marshals with imm 0, which the kernel runs as an atomic
// add (Instruction.Marshal computes the immediate before it moves the
// atomic operation into it). The kernel encoding is the BPF_ATOMIC opcode
// with BPF_OR in the immediate, so emit that opcode with the atomic bits
// clear (an add, to the library) and the immediate set by hand.
// TestAtomicOrEncoding checks the bytes, so an upgrade that changes this
// fails a test rather than turning ORs into adds.
func atomicOr(dst, src asm.Register, off int16) asm.Instruction {
	return asm.Instruction{
		OpCode:   asm.AddAtomic.OpCode(asm.DWord),
		Dst:      dst,
		Src:      src,
		Offset:   off,
		Constant: int64(asm.Or),
	}
}

// BTF for the two functions: the kernel wants func_info once a program
// has a callback (bpf_loop's).
var (
	btfInt   = &btf.Int{Name: "int", Size: 4, Encoding: btf.Signed}
	btfLong  = &btf.Int{Name: "long", Size: 8, Encoding: btf.Signed}
	btfU64   = &btf.Int{Name: "u64", Size: 8}
	btfVoidP = &btf.Pointer{Target: &btf.Void{}}
	markFunc = &btf.Func{Name: "ferry_mark", Linkage: btf.GlobalFunc, Type: &btf.FuncProto{Return: btfInt, Params: []btf.FuncParam{{Name: "ctx", Type: btfVoidP}}}}
	fillFunc = &btf.Func{Name: "ferry_fill", Linkage: btf.StaticFunc, Type: &btf.FuncProto{Return: btfLong, Params: []btf.FuncParam{{Name: "index", Type: btfU64}, {Name: "ctx", Type: btfVoidP}}}}
)

// Stack slots of the program.
const (
	fpKey      = -4 // u32 map key
	fpFirstBit = -16
	fpLastBit  = -24
	fpLoopCtx  = -32 // bpf_loop's context: the first full word
)

// program builds the marking program for one tracepoint (see doc.go). In
// registers: R6 the context; R7 the first word
// (absolute index in the bits map), R8 the last word; R9 the active half's
// base index.
func program(f fields, p progParams) asm.Instructions {
	lookup := func(bits *ebpf.Map, keyReg asm.Register) asm.Instructions {
		return asm.Instructions{
			asm.StoreMem(asm.RFP, fpKey, keyReg, asm.Word),
			asm.LoadMapPtr(asm.R1, bits.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, fpKey),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "exit"),
		}
	}
	ins := asm.Instructions{
		btf.WithFuncMetadata(asm.Mov.Reg(asm.R6, asm.R1), markFunc),
		asm.LoadMem(asm.R2, asm.R6, f.dev, asm.Word),
		asm.JNE.Imm32(asm.R2, int32(p.dev), "exit"),
		// rwbs (blk_fill_rwbs): an optional 'F' (preflush), the operation
		// letter (W write, D discard, F flush, R read, N any other), then
		// flags (F fua, A, S, M). Skip reads and flushes; mark the rest,
		// letters unknown to this code included.
		asm.LoadMem(asm.R2, asm.R6, f.rwbs, asm.Byte),
		asm.JNE.Imm(asm.R2, 'F', "op"),
		asm.LoadMem(asm.R2, asm.R6, f.rwbs+1, asm.Byte),
		asm.JEq.Imm(asm.R2, 0, "exit"), // "F": a flush
		asm.JEq.Imm(asm.R2, 'F', "exit"),
		asm.JEq.Imm(asm.R2, 'A', "exit"),
		asm.JEq.Imm(asm.R2, 'S', "exit"),
		asm.JEq.Imm(asm.R2, 'M', "exit"),
		asm.JEq.Imm(asm.R2, 'R', "exit").WithSymbol("op"),
		asm.JEq.Imm(asm.R2, 0, "exit"),

		// R7 = first block, R8 = last block.
		asm.LoadMem(asm.R7, asm.R6, f.sector, asm.DWord).WithSymbol("mark"),
		asm.LoadMem(asm.R8, asm.R6, f.nrSector, asm.Word),
		asm.JEq.Imm(asm.R8, 0, "exit"),
		asm.Add.Reg(asm.R8, asm.R7),
		asm.Sub.Imm(asm.R8, 1),
		asm.RSh.Imm(asm.R7, p.shift),
		asm.RSh.Imm(asm.R8, p.shift),
		asm.JGE.Imm(asm.R7, p.nbits, "exit"),
		asm.JLT.Imm(asm.R8, p.nbits, "clamped"),
		asm.Mov.Imm(asm.R8, p.nbits-1),
		asm.Mov.Reg(asm.R2, asm.R7).WithSymbol("clamped"),
		asm.And.Imm(asm.R2, 63),
		asm.StoreMem(asm.RFP, fpFirstBit, asm.R2, asm.DWord),
		asm.Mov.Reg(asm.R2, asm.R8),
		asm.And.Imm(asm.R2, 63),
		asm.StoreMem(asm.RFP, fpLastBit, asm.R2, asm.DWord),
		asm.RSh.Imm(asm.R7, 6),
		asm.RSh.Imm(asm.R8, 6),

		// R9 = base of the active half; count the event.
		asm.StoreImm(asm.RFP, fpKey, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, p.ctl.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, fpKey),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "exit"),
		asm.LoadMem(asm.R9, asm.R0, ctlActive, asm.DWord),
		asm.And.Imm(asm.R9, 1),
		asm.Mul.Imm(asm.R9, p.words),
		asm.Mov.Imm(asm.R2, 1),
		asm.AddAtomic.Mem(asm.R0, asm.R2, asm.DWord, p.statOff),
		asm.Add.Reg(asm.R7, asm.R9),
		asm.Add.Reg(asm.R8, asm.R9),
		// More full words than the loop may mark: count an overflow.
		asm.Mov.Reg(asm.R3, asm.R8),
		asm.Sub.Reg(asm.R3, asm.R7),
		asm.JLE.Imm(asm.R3, MaxWordsPerEvent+1, "fits"),
		asm.Mov.Imm(asm.R2, 1),
		asm.AddAtomic.Mem(asm.R0, asm.R2, asm.DWord, ctlOverflows),

		// R3 = ~0 << firstBit, R4 = ~0 >> (63 - lastBit).
		asm.LoadMem(asm.R2, asm.RFP, fpFirstBit, asm.DWord).WithSymbol("fits"),
		asm.Mov.Imm(asm.R3, -1),
		asm.LSh.Reg(asm.R3, asm.R2),
		asm.LoadMem(asm.R2, asm.RFP, fpLastBit, asm.DWord),
		asm.Mov.Imm(asm.R4, 63),
		asm.Sub.Reg(asm.R4, asm.R2),
		asm.Mov.Imm(asm.R2, -1),
		asm.RSh.Reg(asm.R2, asm.R4),
		asm.JNE.Reg(asm.R7, asm.R8, "multi"),
		// One word: both masks.
		asm.And.Reg(asm.R3, asm.R2),
		asm.StoreMem(asm.RFP, fpFirstBit, asm.R3, asm.DWord),
	}
	ins = append(ins, lookup(p.bits, asm.R7)...)
	ins = append(ins,
		asm.LoadMem(asm.R3, asm.RFP, fpFirstBit, asm.DWord),
		atomicOr(asm.R0, asm.R3, 0),
		asm.Ja.Label("exit"),
	)
	// Several words: first and last with their masks, the rest full.
	multi := asm.Instructions{
		asm.StoreMem(asm.RFP, fpFirstBit, asm.R3, asm.DWord),
		asm.StoreMem(asm.RFP, fpLastBit, asm.R2, asm.DWord),
	}
	multi[0] = multi[0].WithSymbol("multi")
	ins = append(ins, multi...)
	ins = append(ins, lookup(p.bits, asm.R7)...)
	ins = append(ins,
		asm.LoadMem(asm.R3, asm.RFP, fpFirstBit, asm.DWord),
		atomicOr(asm.R0, asm.R3, 0),
	)
	ins = append(ins, lookup(p.bits, asm.R8)...)
	ins = append(ins,
		asm.LoadMem(asm.R3, asm.RFP, fpLastBit, asm.DWord),
		atomicOr(asm.R0, asm.R3, 0),
		// The full words between, with bpf_loop: the verifier checks the
		// callback once, where an open-coded loop costs it a state per
		// iteration and stops at a few thousand.
		asm.Mov.Reg(asm.R1, asm.R8),
		asm.Sub.Reg(asm.R1, asm.R7),
		asm.Sub.Imm(asm.R1, 1),
		asm.JEq.Imm(asm.R1, 0, "exit"),
		asm.JLE.Imm(asm.R1, MaxWordsPerEvent, "loop"),
		asm.Mov.Imm(asm.R1, MaxWordsPerEvent), // overflow, counted above
		asm.Add.Imm(asm.R7, 1).WithSymbol("loop"),
		asm.StoreMem(asm.RFP, fpLoopCtx, asm.R7, asm.DWord),
		asm.Instruction{OpCode: asm.LoadImmOp(asm.DWord), Dst: asm.R2, Src: asm.PseudoFunc, Constant: -1}.WithReference("fill"),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, fpLoopCtx),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnLoop.Call(),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("exit"),
		asm.Return(),

		// fill(index, ctx): sets word *ctx + index of the bits map to ~0.
		btf.WithFuncMetadata(asm.LoadMem(asm.R3, asm.R2, 0, asm.DWord).WithSymbol("fill"), fillFunc),
		asm.Add.Reg(asm.R3, asm.R1),
		asm.StoreMem(asm.RFP, fpKey, asm.R3, asm.Word),
		asm.LoadMapPtr(asm.R1, p.bits.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, fpKey),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "stop"),
		asm.Mov.Imm(asm.R2, -1),
		atomicOr(asm.R0, asm.R2, 0),
		asm.Mov.Imm(asm.R0, 0),
		asm.Return(),
		asm.Mov.Imm(asm.R0, 1).WithSymbol("stop"),
		asm.Return(),
	)
	return ins
}
