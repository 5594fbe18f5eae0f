#!/usr/bin/env bash
# Runs every test of snapinst: the Rust unit and integration tests (with the crash points compiled in), the man
# pages and completions (built and checked), the demo as a smoke test, the Debian package (built, then installed,
# removed and purged on a Debian 12 tree), the Ansible collection (sanity, units, its modules driven by
# ansible-playbook on real roots, and the rollout role over a fleet of 20 roots), the benchmark once through (its
# rows run and its checks hold), and the VM tests (power cuts and every crash point under QEMU, a real Debian boot
# with the hooks).
#
#   sudo bash scripts/test.sh [--full] [--stock]
#
#   --full    the long runs: the quick benchmark (3 runs per row, the perl set too: figures worth reading) and the
#             whole VM campaign (vm-tests/run.sh --full: twice the power cuts, and every crash point on the layouts
#             with parts too; about 25 minutes more), and the rollout role over SSH to three Debian VMs that
#             reboot (vm-tests/fleet/run.sh)
#   --stock   also run vm-tests/stock/run.sh: the stock Debian layouts (ext4 /, and btrfs / with /boot and /home)
#             booted through OVMF and GRUB, a kernel package installed, rolled back, power cuts and every
#             crash point (about 80 minutes more under software emulation)
set -euo pipefail
stock=0
full=0
for a in "$@"; do
    case "$a" in
        --stock) stock=1 ;;
        --full) full=1 ;;
        -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "scripts/test.sh: unknown argument $a (see --help)" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
. scripts/lib.sh

need_root "scripts/test.sh (the integration tests make and mount btrfs and overlay filesystems)"
bash scripts/deps.sh
find_cargo

heading "Ansible for the playbook step's tests: scripts/ansible-env.sh"
repo=$PWD
. scripts/ansible-env.sh

heading "cargo tests: scripts/cargo-tests.sh"
bash scripts/cargo-tests.sh

heading "man pages and completions: scripts/docs.sh"
bash scripts/docs.sh

heading "demo (smoke test): scripts/demo.sh"
bash scripts/demo.sh

# Right after the demo's release build, which it packages as it is; installed and purged by the Debian VM test.
heading "the Debian package: scripts/deb.sh"
bash scripts/deb.sh | tee target/deb.log
deb=$(sed -n 's/^deb: //p' target/deb.log | tail -n 1)

heading "the Ansible collection: ansible/tests/run.sh (sanity, units, the modules on real roots)"
SNAPINST_BIN=target/release/snapinst bash ansible/tests/run.sh

bench=--smoke vm=()
[ "$full" = 1 ] && bench=--quick vm=(--full)
heading "benchmark: bench/run.sh $bench"
bash bench/run.sh "$bench"

heading "VM tests: power cuts and crash points under QEMU (vm-tests/run.sh ${vm[*]})"
bash vm-tests/run.sh "${vm[@]}"

heading "VM tests: a real Debian boot with the hooks installed (vm-tests/debian/run.sh)"
bash vm-tests/debian/run.sh --deb "$deb"

if [ "$full" = 1 ]; then
    heading "VM tests: the rollout role over SSH to three VMs (vm-tests/fleet/run.sh)"
    bash vm-tests/fleet/run.sh
fi

if [ "$stock" = 1 ]; then
    heading "VM tests: the stock Debian layouts through OVMF and GRUB (vm-tests/stock/run.sh)"
    bash vm-tests/stock/run.sh
fi

heading "all tests passed"
