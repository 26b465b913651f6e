#!/usr/bin/env bash
# Builds (or finds in the cache) a minimal Debian 12 machine for the QEMU system tests:
#
#   tests/vm/build-image.sh ARCH [CACHE_DIR]      ARCH: one of toolchains/arches.env (arm64, armhf, amd64)
#
# Prints three lines, kernel=PATH, initrd=PATH (busybox + the virtio and ext4 modules) and
# root=PATH (an ext4 image labelled "root": systemd as PID 1, udev, kmod, iproute2 and what the
# agent's .deb needs; no apt). Everything comes from Debian's archive: the root by mmdebstrap, the kernel and
# busybox-static of ARCH by `apt-get download`. CACHE_DIR defaults to $VANTAGE_VM_CACHE or
# build/vm-cache. The kernel and initramfs are cached under a key of this script, the kernel's
# and busybox's versions; the root image under a key of the package list, the mmdebstrap command
# and tests/vm/guest-setup.sh: each is reused while its key is unchanged.
#
# A foreign root needs qemu-user through binfmt_misc while mmdebstrap runs its maintainer
# scripts: the script registers the interpreter only if none handles ARCH yet (mounting
# binfmt_misc if needed) and removes exactly what it added when it ends. Needs root.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../.." && pwd)
arch=${1:?usage: build-image.sh ARCH [CACHE_DIR]}
cache=${2:-${VANTAGE_VM_CACHE:-$top/build/vm-cache}}
suite=bookworm
mirror=http://deb.debian.org/debian

# The kernel metapackage and QEMU's name for ARCH from toolchains/arches.env; the build host's own
# architecture needs no qemu-user.
# shellcheck source=toolchains/arches.env
source "$top/toolchains/arches.env"
case " $cross_arches $native_arch " in
  *" $arch "*) ;;
  *) echo "build-image: unknown architecture '$arch' ($cross_arches $native_arch)" >&2; exit 2 ;;
esac
kernel_meta=${arch}_vm_kernel qemu_user=${arch}_qemu
kernel_meta=${!kernel_meta} qemu_user=${!qemu_user}
[ "$arch" != "$native_arch" ] || qemu_user=
# The root: systemd as init, and the agent package's Depends (the collector is not installed).
# No procps: the units' ExecReload uses the shell's kill, and the reload check proves it.
packages=systemd-sysv,udev,kmod,iproute2,libc6,libstdc++6,libgcc-s1
# The initramfs loads these (and what they depend on), then mounts LABEL=root.
modules=(virtio_pci virtio_blk virtio_net ext4)

log() { echo "build-image[$arch]: $*" >&2; }

candidate() { apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p'; }

# The versioned kernel package the metapackage points at, e.g. linux-image-6.1.0-50-cloud-arm64.
kernel_pkg=$(apt-cache depends "$kernel_meta:$arch" 2>/dev/null |
  sed -n "s/^ *Depends: \(linux-image-[0-9][^:]*\).*/\1/p" | head -n 1)
if [ -z "$kernel_pkg" ]; then
  log "no $kernel_meta:$arch in the package lists (is $arch added with dpkg --add-architecture, and apt-get update run?)"
  exit 1
fi
kernel_version=$(candidate "$kernel_pkg:$arch")
busybox_version=$(candidate "busybox-static:$arch")
boot_key=$( {
  cat "${BASH_SOURCE[0]}"
  echo "${modules[*]} $kernel_pkg=$kernel_version busybox-static=$busybox_version"
} | sha256sum | cut -c1-16)
rootfs_opts=(--variant=essential --arch="$arch" --include="$packages"
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/doc/*/copyright')
rootfs_sources=("deb $mirror $suite main" "deb $mirror $suite-updates main"
  "deb http://deb.debian.org/debian-security $suite-security main")
root_key=$( {
  cat "$here/guest-setup.sh"
  printf '%s\n' "${rootfs_opts[@]}" "$suite" "${rootfs_sources[@]}" "root.ext4 1G"
} | sha256sum | cut -c1-16)
boot=$cache/$arch-boot-$boot_key
rootimg=$cache/$arch-root-$root_key
report() { printf 'kernel=%s\ninitrd=%s\nroot=%s\n' "$boot/vmlinuz" "$boot/initrd.img" "$rootimg/root.ext4"; }
# One build per architecture at a time: a second caller waits, then finds it cached.
mkdir -p "$cache"
exec 9>"$cache/.lock-$arch"
flock 9
if [ -f "$boot/ok" ] && [ -f "$rootimg/ok" ]; then
  log "cached: $boot $rootimg"
  report
  exit 0
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/.work-$arch.XXXXXX")
registered=
mounted_binfmt=0
cleanup() {
  unregister_binfmt
  rm -rf "$work" "$boot.tmp" "$rootimg.tmp"
}
trap cleanup EXIT
start=$SECONDS

# --- kernel and initramfs: busybox, the modules in dependency order, an init that mounts the root
build_boot() {
  mkdir -p "$work/debs" "$work/kernel" "$work/busybox"
  (cd "$work/debs" && apt-get -q -o APT::Sandbox::User=root download \
    "$kernel_pkg:$arch=$kernel_version" "busybox-static:$arch=$busybox_version" >/dev/null)
  dpkg-deb -x "$work"/debs/linux-image-*.deb "$work/kernel"
  dpkg-deb -x "$work"/debs/busybox-static_*.deb "$work/busybox"
  local kver ird verb path name
  kver=$(ls "$work/kernel/lib/modules")
  depmod -b "$work/kernel" "$kver"
  ird=$work/initramfs
  mkdir -p "$ird"/{bin,dev,proc,sys,newroot,lib/modules}
  cp "$work/busybox/bin/busybox" "$ird/bin/busybox"
  : >"$ird/modules"
  while read -r verb path _; do
    [ "$verb" = insmod ] || continue
    name=$(basename "$path")
    grep -qx "$name" "$ird/modules" && continue
    cp "$path" "$ird/lib/modules/$name"
    echo "$name" >>"$ird/modules"
  done < <(modprobe -d "$work/kernel" -S "$kver" -a --show-depends "${modules[@]}")
  cat >"$ird/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /modules); do insmod /lib/modules/$m || echo "initramfs: insmod $m failed"; done
root=
for i in $(seq 1 50); do
  root=$(findfs LABEL=root 2>/dev/null) && break
  sleep 0.1
done
if [ -z "$root" ] || ! mount -t ext4 -o rw "$root" /newroot; then
  echo "initramfs: no root file system (LABEL=root)"; cat /proc/partitions; poweroff -f
fi
umount /proc /sys; mount --move /dev /newroot/dev 2>/dev/null || umount /dev
exec switch_root /newroot /sbin/init
EOF
  chmod 755 "$ird/init"
  rm -rf "$boot.tmp" && mkdir -p "$boot.tmp"
  (cd "$ird" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -1 >"$boot.tmp/initrd.img")
  cp "$work"/kernel/boot/vmlinuz-* "$boot.tmp/vmlinuz"
  echo "$kver" >"$boot.tmp/kernel-version"
  echo "$boot_key" >"$boot.tmp/ok"
  rm -rf "$boot" && mv "$boot.tmp" "$boot"
  log "kernel $kver, initramfs with $(wc -l <"$ird/modules") modules ($((SECONDS - start))s)"
}

# --- binfmt_misc for a foreign root: register qemu-user only if nothing runs ARCH yet
register_binfmt() {
  [ -n "$qemu_user" ] || return 0
  arch-test "$arch" >/dev/null 2>&1 && return 0
  if ! mountpoint -q /proc/sys/fs/binfmt_misc; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    mounted_binfmt=1
  fi
  arch-test "$arch" >/dev/null 2>&1 && return 0
  local magic mask name
  case "$qemu_user" in
    aarch64) magic='\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
             mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff' ;;
    arm) magic='\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x28\x00'
         mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff' ;;
  esac
  name=vantage-vm-$qemu_user-$$
  # F: the interpreter is opened now, so it works inside the chroot too.
  echo ":$name:M::$magic:$mask:/usr/bin/qemu-$qemu_user-static:F" >/proc/sys/fs/binfmt_misc/register
  registered=$name
}

unregister_binfmt() {
  if [ -n "$registered" ] && [ -e "/proc/sys/fs/binfmt_misc/$registered" ]; then
    echo -1 >"/proc/sys/fs/binfmt_misc/$registered" || true
  fi
  registered=
  # Unmount only what this script mounted, and only when no other entry lives there.
  if [ "$mounted_binfmt" = 1 ] && [ -z "$(ls /proc/sys/fs/binfmt_misc | grep -vx -e register -e status)" ]; then
    umount /proc/sys/fs/binfmt_misc || true
  fi
  mounted_binfmt=0
}

# --- the root file system: mmdebstrap, then mkfs.ext4 -d (no loop mount)
build_root() {
  local rootfs=$work/rootfs d
  register_binfmt
  # A mirror caught mid-sync fails apt-get update ("File has unexpected size"). On these machines
  # bookworm-security's armhf index stays that way, so after one failure the image is made from
  # bookworm and bookworm-updates only (a test machine: no security updates needed to boot it).
  local try sources=("${rootfs_sources[@]}")
  for try in 1 2 3; do
    rm -rf "$rootfs"
    mmdebstrap --quiet "${rootfs_opts[@]}" --customize-hook="$here/guest-setup.sh \"\$1\"" \
      "$suite" "$rootfs" "${sources[@]}" >&2 && break
    ((try < 3)) || { log "mmdebstrap failed"; return 1; }
    log "mmdebstrap failed (try $try/3); trying again without $suite-security"
    sources=("${rootfs_sources[@]:0:2}")
    sleep $((try * 5))
  done
  unregister_binfmt
  # Some container runtimes leave /proc a symlink; the guest's systemd needs a directory.
  for d in proc sys dev run tmp; do
    if [ -L "$rootfs/$d" ]; then rm "$rootfs/$d"; mkdir "$rootfs/$d"; fi
  done
  rm -rf "$rootimg.tmp" && mkdir -p "$rootimg.tmp"
  mkfs.ext4 -q -L root -d "$rootfs" "$rootimg.tmp/root.ext4" 1G >&2
  echo "$root_key" >"$rootimg.tmp/ok"
  rm -rf "$rootimg" && mv "$rootimg.tmp" "$rootimg"
  log "root file system $(du -sm "$rootfs" | cut -f1) MiB ($((SECONDS - start))s)"
}

[ -f "$boot/ok" ] || build_boot
[ -f "$rootimg/ok" ] || build_root
# Older images of this architecture are dead weight.
for old in "$cache/$arch"-boot-* "$cache/$arch"-root-*; do
  [ "$old" = "$boot" ] || [ "$old" = "$rootimg" ] || rm -rf "$old"
done
log "ready in $((SECONDS - start))s"
report
