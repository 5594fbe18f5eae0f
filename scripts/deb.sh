#!/usr/bin/env bash
# Builds the Debian package of snapinst, target/debian/snapinst_<version>_amd64.deb, with debhelper (debian/), and
# checks what it holds: the program, the units (enabled by the postinst, not started), the initramfs-tools hook and
# boot script with the update-initramfs trigger, the dracut module, the GRUB and dpkg drop-ins, the man pages, the
# completions and the default configuration as a conffile. Prints the package's path last.
#
#   sudo bash scripts/deb.sh
#
# Installing, removing and purging it on a Debian 12 root is tested by vm-tests/debian/package.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

bash scripts/deps.sh debhelper
find_cargo

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
changelog=$(dpkg-parsechangelog -S Version)
[ "$version" = "$changelog" ] ||
  die "Cargo.toml says version $version, debian/changelog $changelog: add a changelog entry (dch -v $version)"
deb=target/debian/snapinst_${version}_amd64.deb

heading "debian/rules binary"
rm -f "$deb"
mkdir -p target/debian
debian/rules clean
debian/rules binary
[ -f "$deb" ] || die "debian/rules binary made no $deb"
debian/rules clean

heading "checking $deb"
contents=$(dpkg-deb --contents "$deb" | awk '{print $6}' | sed 's|^\./|/|')
for f in /usr/sbin/snapinst /lib/systemd/system/snapinst-recover.service /lib/systemd/system/snapinst-bless.service \
  /usr/share/initramfs-tools/hooks/snapinst /usr/share/initramfs-tools/scripts/local-premount/snapinst \
  /usr/lib/dracut/modules.d/90snapinst/module-setup.sh /usr/lib/dracut/modules.d/90snapinst/snapinst-boot.sh \
  /etc/default/grub.d/snapinst.cfg /etc/dpkg/dpkg.cfg.d/snapinst /etc/snapinst/snapinst.toml \
  /usr/share/man/man8/snapinst.8.gz /usr/share/man/man8/snapinst-apply.8.gz /usr/share/man/man5/snapinst-plan.5.gz \
  /usr/share/man/man5/snapinst.toml.5.gz /usr/share/bash-completion/completions/snapinst \
  /usr/share/zsh/vendor-completions/_snapinst /usr/share/fish/vendor_completions.d/snapinst.fish \
  /usr/share/doc/snapinst/copyright; do
  grep -qx "$f" <<<"$contents" || die "$deb has no $f"
done
control=$(mktemp -d)
trap 'rm -rf "$control"' EXIT
dpkg-deb --control "$deb" "$control"
grep -qx /etc/snapinst/snapinst.toml "$control/conffiles" || die "/etc/snapinst/snapinst.toml is not a conffile"
grep -q 'deb-systemd-helper.*enable.*snapinst-recover.service' "$control/postinst" ||
  die "the postinst does not enable snapinst-recover.service"
if grep -q 'deb-systemd-invoke.*start' "$control/postinst"; then die "the postinst starts a unit"; fi
grep -qx 'activate-noawait update-initramfs' "$control/triggers" || die "no update-initramfs trigger"
dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/sbin/snapinst >"$control/snapinst"
chmod +x "$control/snapinst"
packaged=$("$control/snapinst" --version) built=$(target/release/snapinst --version)
[ "$packaged" = "$built" ] || die "the package's snapinst says '$packaged', target/release/snapinst '$built'"
dpkg-deb --field "$deb" Package Version Architecture Depends
echo "deb: $(readlink -f "$deb")"
