// Package libvirtd starts a private libvirtd for tests: its own mount
// namespace (over /run/libvirt, /var/lib/libvirt, /var/cache/libvirt,
// /var/log/libvirt and /etc/libvirt, bound to a temporary directory) and its
// own network namespace (bridges of its networks stay private), listening on
// a unix socket under the temporary directory. Parallel tests and other
// users of the machine do not collide with it. No systemd is needed.
package libvirtd
