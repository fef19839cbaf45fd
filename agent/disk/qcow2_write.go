package disk

import (
	"encoding/binary"
	"os"
)

// qcow2Writer writes a version 3 qcow2 image with 64 KiB clusters and
// 16-bit refcounts. Everything is appended: header, L1 table, then data
// clusters and each L2 table once its range is complete, then the
// refcount table and blocks, which count every cluster of the file once.
type qcow2Writer struct {
	f         *os.File
	size      int64
	l1        []uint64
	l2        []uint64 // the L2 table being filled
	l2Index   int64    // which L1 entry it belongs to, -1 if none
	nextFree  int64    // next free cluster index
	l1Cluster int64
}

const (
	qcow2WClusterBits = 16
	qcow2WCluster     = 1 << qcow2WClusterBits
	qcow2WL2Entries   = qcow2WCluster / 8
	qcow2FlagCopied   = 1 << 63
	qcow2WRefBits     = 16
)

func newQCOW2Writer(f *os.File, size int64) (*qcow2Writer, error) {
	size = roundSector(size)
	l1n := (size + qcow2WCluster*qcow2WL2Entries - 1) / (qcow2WCluster * qcow2WL2Entries)
	l1Clusters := max(1, (l1n*8+qcow2WCluster-1)/qcow2WCluster)
	return &qcow2Writer{f: f, size: size, l1: make([]uint64, l1n), l2Index: -1,
		l1Cluster: 1, nextFree: 1 + l1Clusters}, nil
}

func (w *qcow2Writer) unit() int64 { return qcow2WCluster }

func (w *qcow2Writer) alloc() int64 {
	c := w.nextFree
	w.nextFree++
	return c * qcow2WCluster
}

func (w *qcow2Writer) write(off int64, p []byte) error {
	cl := off / qcow2WCluster
	if idx := cl / qcow2WL2Entries; idx != w.l2Index {
		if err := w.flushL2(); err != nil {
			return err
		}
		w.l2, w.l2Index = make([]uint64, qcow2WL2Entries), idx
	}
	host := w.alloc()
	if _, err := w.f.WriteAt(p, host); err != nil {
		return err
	}
	w.l2[cl%qcow2WL2Entries] = uint64(host) | qcow2FlagCopied
	return nil
}

func (w *qcow2Writer) flushL2() error {
	if w.l2Index < 0 {
		return nil
	}
	buf := make([]byte, qcow2WCluster)
	for i, e := range w.l2 {
		binary.BigEndian.PutUint64(buf[i*8:], e)
	}
	off := w.alloc()
	if _, err := w.f.WriteAt(buf, off); err != nil {
		return err
	}
	w.l1[w.l2Index] = uint64(off) | qcow2FlagCopied
	w.l2Index = -1
	return nil
}

func (w *qcow2Writer) finish() error {
	if err := w.flushL2(); err != nil {
		return err
	}
	be := binary.BigEndian
	l1 := make([]byte, len(w.l1)*8)
	for i, e := range w.l1 {
		be.PutUint64(l1[i*8:], e)
	}
	if _, err := w.f.WriteAt(l1, w.l1Cluster*qcow2WCluster); err != nil {
		return err
	}
	// Refcount structures sized so that they also count themselves.
	perBlock := int64(qcow2WCluster * 8 / qcow2WRefBits)
	used := w.nextFree
	var blocks, tableClusters int64
	for {
		total := used + blocks + tableClusters
		b := (total + perBlock - 1) / perBlock
		tc := max(1, (b*8+qcow2WCluster-1)/qcow2WCluster)
		if b == blocks && tc == tableClusters {
			break
		}
		blocks, tableClusters = b, tc
	}
	total := used + tableClusters + blocks
	tableOff := used * qcow2WCluster
	table := make([]byte, tableClusters*qcow2WCluster)
	block := make([]byte, qcow2WCluster)
	for b := int64(0); b < blocks; b++ {
		clear(block)
		for i := int64(0); i < perBlock; i++ {
			if b*perBlock+i < total {
				be.PutUint16(block[i*2:], 1)
			}
		}
		off := (used + tableClusters + b) * qcow2WCluster
		if _, err := w.f.WriteAt(block, off); err != nil {
			return err
		}
		be.PutUint64(table[b*8:], uint64(off))
	}
	if _, err := w.f.WriteAt(table, tableOff); err != nil {
		return err
	}
	h := make([]byte, qcow2WCluster)
	copy(h, qcow2Magic)
	be.PutUint32(h[4:], 3)
	be.PutUint32(h[20:], qcow2WClusterBits)
	be.PutUint64(h[24:], uint64(w.size))
	be.PutUint32(h[36:], uint32(len(w.l1)))
	be.PutUint64(h[40:], uint64(w.l1Cluster*qcow2WCluster))
	be.PutUint64(h[48:], uint64(tableOff))
	be.PutUint32(h[56:], uint32(tableClusters))
	be.PutUint32(h[96:], 4) // refcount_order: 16-bit refcounts
	be.PutUint32(h[100:], qcow2V3HeaderLen)
	// The header extension area ends with an end marker: zeros at 104.
	if _, err := w.f.WriteAt(h, 0); err != nil {
		return err
	}
	return w.f.Truncate(total * qcow2WCluster)
}
