package disk

// Magic numbers and fixed sizes used for format detection.
const (
	qcow2Magic            = "QFI\xfb"
	vhdxSignature         = "vhdxfile"
	vmdkSparseMagic       = "KDMV"
	vmdkCOWDMagic         = "COWD" // ESX vmfsSparse: refused
	vhdCookie             = "conectix"
	vhdFooterSize         = 512
	vmdkMaxDescriptorFile = 1 << 20
)

// vhdChecksum is the VHD footer/header checksum: the one's complement of
// the byte sum, with the 4-byte checksum field at at counted as zero.
func vhdChecksum(b []byte, at int) uint32 {
	var sum uint32
	for i, c := range b {
		if i >= at && i < at+4 {
			continue
		}
		sum += uint32(c)
	}
	return ^sum
}
