#!/usr/bin/env bash
# Builds a bootable Debian raw disk for the drill test (bootdisk_test.go):
# an MBR partition table, one ext4 partition at 1 MiB with a minimal Debian
# (systemd, the stock kernel), booted by extlinux on a serial console. A
# marker service prints "FERRY-MARKER <sha256 of /ferry/marker>" on ttyS0;
# the test writes /ferry/marker before it protects the disk.
# Usage: bootdisk.sh WORKDIR IMAGE MIRROR SIZE_MIB
set -euo pipefail
work=$1 img=$2 mirror=$3 size=$4
root=$work/root
# A debootstrap that completed is kept in WORKDIR (the slow part).
if [ ! -e "$root/.ferry-debootstrapped" ]; then
  rm -rf "$root"
  debootstrap --variant=minbase --include=systemd-sysv,linux-image-amd64,initramfs-tools,udev \
    bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1
  touch "$root/.ferry-debootstrapped"
fi
kver=$(ls "$root/lib/modules" | head -1)
echo drill > "$root/etc/hostname"
echo 'LABEL=root / ext4 defaults 0 1' > "$root/etc/fstab"
mkdir -p "$root/ferry"
cat > "$root/etc/systemd/system/ferry-marker.service" <<'UNIT'
[Unit]
Description=Ferry drill marker: the hash of /ferry/marker on the serial console
After=local-fs.target
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "FERRY-MARKER $(sha256sum /ferry/marker | cut -d" " -f1)" > /dev/ttyS0'
[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/ferry-marker.service "$root/etc/systemd/system/multi-user.target.wants/ferry-marker.service"
# Why: the disk is replicated and booted under TCG; what the guest never
# loads only costs time (apt caches, docs, drivers for absent hardware).
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc "$root"/usr/share/man "$root"/usr/share/locale
for d in sound drivers/gpu drivers/net/wireless drivers/media drivers/infiniband drivers/staging drivers/bluetooth drivers/isdn net/wireless net/bluetooth drivers/net/ethernet drivers/scsi drivers/usb drivers/hid; do
  rm -rf "$root/lib/modules/$kver/kernel/$d"
done
chroot "$root" depmod "$kver" || true
# The kernel and initramfs (built by the kernel's postinst in the chroot,
# with every storage module) stay in /boot.
mkdir -p "$root/boot/extlinux"
cat > "$root/boot/extlinux/extlinux.conf" <<CONF
SERIAL 0 115200
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL /boot/vmlinuz-$kver
  APPEND initrd=/boot/initrd.img-$kver root=LABEL=root rw console=ttyS0,115200 quiet systemd.show_status=false
CONF
fs=$work/fs.img
rm -f "$fs" "$img"
truncate -s $((size - 1))M "$fs"
# extlinux reads ext4 without 64bit/metadata_csum/orphan_file.
mkfs.ext4 -q -F -L root -O ^64bit,^metadata_csum,^orphan_file -d "$root" "$fs" 2>/dev/null ||
  mkfs.ext4 -q -F -L root -O ^64bit,^metadata_csum -d "$root" "$fs"
truncate -s ${size}M "$img"
echo 'start=2048, type=83, bootable' | sfdisk -q "$img"
dd if="$fs" of="$img" bs=1M seek=1 conv=notrunc,sparse status=none
rm -f "$fs"
mnt=$work/mnt
mkdir -p "$mnt"
mount -o loop,offset=1048576 "$img" "$mnt"
trap 'umount "$mnt" 2>/dev/null || true' EXIT
extlinux --install "$mnt/boot/extlinux" >/dev/null 2>&1
umount "$mnt"
trap - EXIT
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$img" bs=440 count=1 conv=notrunc status=none
