#!/bin/sh
# mmdebstrap customize hook of tests/vm/build-image.sh: makes the root at $1 boot quickly under
# QEMU with a static address on user-mode networking, and run the test payload once it is up.
set -eu
root=$1

echo vantage-vm >"$root/etc/hostname"
echo "LABEL=root / ext4 defaults 0 0" >"$root/etc/fstab"

# QEMU user-mode networking: the guest is 10.0.2.15, the host 10.0.2.2, DNS 10.0.2.3.
mkdir -p "$root/etc/systemd/network"
cat >"$root/etc/systemd/network/10-qemu.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
Address=10.0.2.15/24
Gateway=10.0.2.2
DNS=10.0.2.3
LinkLocalAddressing=no
IPv6AcceptRA=no
EOF
chroot "$root" systemctl enable systemd-networkd.service >/dev/null 2>&1
# Nothing that a test boot does not need: no waiting for the network (the agent reconnects on its
# own), no timers, no login prompt on the console that carries the test's markers.
for u in systemd-networkd-wait-online.service e2scrub_all.timer e2scrub_reap.service fstrim.timer \
  apt-daily.timer apt-daily-upgrade.timer systemd-tmpfiles-clean.timer serial-getty@ttyAMA0.service \
  serial-getty@ttyS0.service getty@tty1.service; do
  ln -sf /dev/null "$root/etc/systemd/system/$u"
done
mkdir -p "$root/etc/systemd/system.conf.d"
printf '[Manager]\nDefaultTimeoutStopSec=15s\n' >"$root/etc/systemd/system.conf.d/10-vantage-vm.conf"

# The payload: a tar on the second disk (whichever virtio disk is not the root), unpacked into
# /run/payload; its run.sh reports on the console, then the machine powers off whatever happened.
cat >"$root/usr/local/sbin/vantage-vm-payload" <<'EOF'
#!/bin/sh
rootdev=$(findmnt -no SOURCE /)
for d in /dev/vd?; do
  [ "$d" = "$rootdev" ] && continue
  mkdir -p /run/payload && tar -xf "$d" -C /run/payload && break
done
if [ -x /run/payload/run.sh ]; then
  /run/payload/run.sh
else
  echo "VANTAGE-CHECK name=payload fail no payload disk with run.sh"
fi
echo "VANTAGE-DONE"
systemctl poweroff --no-block
EOF
chmod 755 "$root/usr/local/sbin/vantage-vm-payload"
cat >"$root/etc/systemd/system/vantage-vm-payload.service" <<'EOF'
[Unit]
Description=Vantage system test payload
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/vantage-vm-payload
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
EOF
mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
ln -sf /etc/systemd/system/vantage-vm-payload.service \
  "$root/etc/systemd/system/multi-user.target.wants/vantage-vm-payload.service"
