package disk

// CheckInPlace reports whether OpenInPlace takes the image's format,
// without opening it for writing or taking its lock (a machine may still
// run on it): nil, or the *FormatError wrapping ErrUnsupported that
// OpenInPlace would return, with the reason and what to do instead.
// forced, when set, is the format to take it in ("" detects it).
func CheckInPlace(path string, forced Format) error {
	c, err := openContainer(path, nil)
	if err != nil {
		return err
	}
	format := forced
	if format == "" {
		format, err = detect(c)
	}
	c.Close()
	if err != nil {
		return ioError(FormatRaw, path, "detect format", err)
	}
	return inPlaceFormat(format, path)
}

// inPlaceFormat refuses the formats that cannot be written in place
// safely, saying why and what to do instead.
func inPlaceFormat(format Format, path string) error {
	switch format {
	case FormatRaw, FormatQCOW2, FormatVHDX:
		return nil
	case FormatVMDK:
		return unsupportedf(format, path, "in-place writing of VMDK is refused: a VMDK on VMFS is held by ESXi and "+
			"cannot be written from outside it, and a hosted sparse VMDK has no crash-safe metadata update "+
			"(grain tables are rewritten without a journal); reprotect with --target to a new raw, qcow2 or VHDX disk, or a full copy")
	case FormatVHD:
		return unsupportedf(format, path, "in-place writing of VHD is refused: a dynamic VHD's block allocation table "+
			"and footer have no journal, so a crash mid-update can corrupt it (fixed VHD is not written in place "+
			"either yet); convert the home disk to VHDX (Convert-VHD) or reprotect with --target to a new disk")
	default:
		return unsupportedf(format, path, "unknown format %q", format)
	}
}
