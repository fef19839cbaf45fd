package disk

// AdviseRandom tells the OS that src will be read at scattered offsets (the
// changed blocks an extent diff found), so that each small read does not
// pull in the device's readahead window with it: on a loop device with a
// 2.5 MiB window, 4 KiB reads of a churning disk read three times the
// bytes they asked for. A Source that is not one of this package's images
// is left alone; the advice is best effort.
func AdviseRandom(src Source) {
	im, ok := src.(*image)
	if !ok {
		return
	}
	for _, c := range im.closers {
		if ct, ok := c.(*container); ok {
			adviseRandom(ct.f)
		}
	}
	if im.parent != nil {
		AdviseRandom(im.parent)
	}
}
