package track

import "errors"

// ErrUnsupported: this file cannot be tracked here (filesystem, platform,
// privileges).
var ErrUnsupported = errors.New("write tracking not supported")
