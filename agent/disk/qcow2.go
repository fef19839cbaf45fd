package disk

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// qcow2 header layout, from QEMU's docs/interop/qcow2.txt. All fields are
// big-endian.
const (
	qcow2V2HeaderLen    = 72
	qcow2V3HeaderLen    = 104
	qcow2MinClusterBits = 9
	qcow2MaxClusterBits = 21
	qcow2MaxBackingName = 1023
	qcow2MaxSize        = 1 << 56 // keeps offset arithmetic far from overflow

	qcow2IncompatDirty       = 1 << 0
	qcow2IncompatCorrupt     = 1 << 1
	qcow2IncompatDataFile    = 1 << 2
	qcow2IncompatCompression = 1 << 3
	qcow2IncompatExtendedL2  = 1 << 4
	qcow2IncompatKnown       = qcow2IncompatDirty | qcow2IncompatCorrupt | qcow2IncompatDataFile |
		qcow2IncompatCompression | qcow2IncompatExtendedL2

	qcow2ExtEnd           = 0x00000000
	qcow2ExtBackingFormat = 0xE2792ACA
	qcow2ExtFeatureNames  = 0x6803f857
	qcow2ExtEncryption    = 0x0537be77
	qcow2ExtDataFile      = 0x44415441

	qcow2CompressionZlib = 0
	qcow2CompressionZstd = 1

	qcow2OffsetMask     = 0x00fffffffffffe00 // bits 9..55 of L1 and standard L2 entries
	qcow2FlagCompressed = 1 << 62
	qcow2FlagZero       = 1 << 0
)

// qcow2Header is the parsed header of a qcow2 image.
type qcow2Header struct {
	version               uint32
	backingOff            uint64
	backingSize           uint32
	clusterBits           uint32
	size                  uint64
	cryptMethod           uint32
	l1Size                uint32
	l1Off                 uint64
	refcountTableOff      uint64
	refcountTableClusters uint32
	nbSnapshots           uint32
	snapshotsOff          uint64
	incompat              uint64
	compat                uint64
	autoclear             uint64
	refcountOrder         uint32
	headerLen             uint32
	compressionType       uint8

	backingName   string
	backingFormat string
	featureNames  map[int]string // incompatible feature bit -> name, from the header extension
}

// qcow2HeaderError is a header problem: the sentinel to wrap and why.
type qcow2HeaderError struct {
	kind   error
	reason string
}

func (e *qcow2HeaderError) Error() string { return e.reason }

func qcow2Bad(kind error, format string, args ...any) error {
	return &qcow2HeaderError{kind: kind, reason: fmt.Sprintf(format, args...)}
}

// parseQCOW2Header parses and checks the header from the first bytes of
// the file (at least the first cluster when the file has one). It checks
// the fields against each other and against the file size, never trusting
// an offset or length before bounding it.
func parseQCOW2Header(b []byte, fileSize int64) (*qcow2Header, error) {
	be := binary.BigEndian
	if len(b) < qcow2V2HeaderLen || string(b[:4]) != qcow2Magic {
		return nil, qcow2Bad(ErrCorrupt, "header truncated or bad magic (%d bytes)", len(b))
	}
	h := &qcow2Header{
		version:               be.Uint32(b[4:]),
		backingOff:            be.Uint64(b[8:]),
		backingSize:           be.Uint32(b[16:]),
		clusterBits:           be.Uint32(b[20:]),
		size:                  be.Uint64(b[24:]),
		cryptMethod:           be.Uint32(b[32:]),
		l1Size:                be.Uint32(b[36:]),
		l1Off:                 be.Uint64(b[40:]),
		refcountTableOff:      be.Uint64(b[48:]),
		refcountTableClusters: be.Uint32(b[56:]),
		nbSnapshots:           be.Uint32(b[60:]),
		snapshotsOff:          be.Uint64(b[64:]),
		refcountOrder:         4,
		headerLen:             qcow2V2HeaderLen,
	}
	switch h.version {
	case 2:
	case 3:
		if len(b) < qcow2V3HeaderLen {
			return nil, qcow2Bad(ErrCorrupt, "version 3 header truncated (%d bytes)", len(b))
		}
		h.incompat = be.Uint64(b[72:])
		h.compat = be.Uint64(b[80:])
		h.autoclear = be.Uint64(b[88:])
		h.refcountOrder = be.Uint32(b[96:])
		h.headerLen = be.Uint32(b[100:])
		if h.headerLen < qcow2V3HeaderLen || h.headerLen%8 != 0 {
			return nil, qcow2Bad(ErrCorrupt, "header length %d invalid", h.headerLen)
		}
	case 1:
		return nil, qcow2Bad(ErrUnsupported, "qcow version 1 images are not supported (convert to qcow2)")
	default:
		return nil, qcow2Bad(ErrUnsupported, "unknown qcow2 version %d", h.version)
	}
	if h.clusterBits < qcow2MinClusterBits || h.clusterBits > qcow2MaxClusterBits {
		return nil, qcow2Bad(ErrCorrupt, "cluster_bits %d outside %d..%d", h.clusterBits, qcow2MinClusterBits, qcow2MaxClusterBits)
	}
	cluster := uint64(1) << h.clusterBits
	if uint64(h.headerLen) > cluster {
		return nil, qcow2Bad(ErrCorrupt, "header length %d larger than a cluster", h.headerLen)
	}
	if uint64(len(b)) < min(cluster, uint64(fileSize)) {
		return nil, qcow2Bad(ErrCorrupt, "header cluster truncated (%d bytes)", len(b))
	}
	if h.headerLen > qcow2V3HeaderLen && uint64(len(b)) > qcow2V3HeaderLen {
		h.compressionType = b[qcow2V3HeaderLen]
	}
	if err := h.parseExtensions(b); err != nil {
		return nil, err
	}
	if h.cryptMethod != 0 {
		return nil, qcow2Bad(ErrUnsupported, "encrypted image (crypt_method %d): the agent cannot read guest data without the key", h.cryptMethod)
	}
	if h.incompat&qcow2IncompatCorrupt != 0 {
		return nil, qcow2Bad(ErrCorrupt, "image is marked corrupt by qemu (incompatible feature bit 1); run qemu-img check -r all")
	}
	if unknown := h.incompat &^ qcow2IncompatKnown; unknown != 0 {
		return nil, qcow2Bad(ErrUnsupported, "unknown incompatible features %s", h.describeFeatures(unknown))
	}
	if h.incompat&qcow2IncompatDataFile != 0 {
		return nil, qcow2Bad(ErrUnsupported, "external data file images are not supported")
	}
	if h.incompat&qcow2IncompatExtendedL2 != 0 {
		return nil, qcow2Bad(ErrUnsupported, "extended L2 entries (subclusters) are not supported")
	}
	if h.incompat&qcow2IncompatCompression != 0 || h.compressionType != qcow2CompressionZlib {
		if h.compressionType != qcow2CompressionZlib && h.compressionType != qcow2CompressionZstd {
			return nil, qcow2Bad(ErrUnsupported, "unknown compression type %d", h.compressionType)
		}
	}
	if h.size > qcow2MaxSize {
		return nil, qcow2Bad(ErrCorrupt, "virtual size %d too large", h.size)
	}
	l2Cover := cluster * (cluster / 8) // guest bytes one L2 table maps
	need := (h.size + l2Cover - 1) / l2Cover
	if uint64(h.l1Size) < need {
		return nil, qcow2Bad(ErrCorrupt, "L1 table has %d entries, %d needed for %d bytes", h.l1Size, need, h.size)
	}
	if need > 0 {
		if h.l1Off%cluster != 0 || h.l1Off == 0 {
			return nil, qcow2Bad(ErrCorrupt, "L1 table offset %#x not cluster aligned", h.l1Off)
		}
		if h.l1Off > uint64(fileSize) || need*8 > uint64(fileSize)-h.l1Off {
			return nil, qcow2Bad(ErrCorrupt, "L1 table at %#x (%d entries) extends beyond the end of the file (%d bytes)", h.l1Off, need, fileSize)
		}
	}
	if h.backingOff != 0 {
		if h.backingSize == 0 || h.backingSize > qcow2MaxBackingName {
			return nil, qcow2Bad(ErrCorrupt, "backing file name length %d invalid", h.backingSize)
		}
		end := h.backingOff + uint64(h.backingSize)
		if h.backingOff >= cluster || end > cluster || end > uint64(len(b)) {
			return nil, qcow2Bad(ErrCorrupt, "backing file name at %#x+%d outside the header cluster", h.backingOff, h.backingSize)
		}
		h.backingName = string(b[h.backingOff:end])
	}
	return h, nil
}

// parseExtensions reads the header extensions that follow the header.
func (h *qcow2Header) parseExtensions(b []byte) error {
	be := binary.BigEndian
	end := uint64(1) << h.clusterBits
	if uint64(len(b)) < end {
		end = uint64(len(b))
	}
	off := uint64(h.headerLen)
	for off+8 <= end {
		typ, n := be.Uint32(b[off:]), uint64(be.Uint32(b[off+4:]))
		off += 8
		if typ == qcow2ExtEnd {
			return nil
		}
		if n > end-off {
			return qcow2Bad(ErrCorrupt, "header extension %#x of %d bytes runs past the header cluster", typ, n)
		}
		data := b[off : off+n]
		switch typ {
		case qcow2ExtBackingFormat:
			h.backingFormat = string(data)
		case qcow2ExtFeatureNames:
			h.featureNames = map[int]string{}
			for i := 0; i+48 <= len(data); i += 48 {
				if data[i] == 0 { // incompatible features
					h.featureNames[int(data[i+1])] = strings.TrimRight(string(data[i+2:i+48]), "\x00")
				}
			}
		case qcow2ExtEncryption:
			return qcow2Bad(ErrUnsupported, "encrypted image (LUKS header extension)")
		case qcow2ExtDataFile:
			return qcow2Bad(ErrUnsupported, "external data file %q is not supported", string(data))
		}
		off += (n + 7) &^ 7
	}
	return nil
}

func (h *qcow2Header) describeFeatures(bits uint64) string {
	var names []string
	for i := 0; i < 64; i++ {
		if bits&(1<<i) == 0 {
			continue
		}
		if n, ok := h.featureNames[i]; ok && n != "" {
			names = append(names, fmt.Sprintf("%d (%s)", i, n))
		} else {
			names = append(names, fmt.Sprint(i))
		}
	}
	return "bits " + strings.Join(names, ", ")
}

// qemuFormat maps a qemu block driver name to our Format.
func qemuFormat(name string) Format {
	switch name {
	case "raw", "file":
		return FormatRaw
	case "qcow2":
		return FormatQCOW2
	case "vpc":
		return FormatVHD
	case "vhdx":
		return FormatVHDX
	case "vmdk":
		return FormatVMDK
	}
	return ""
}
