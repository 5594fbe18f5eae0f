#!/usr/bin/env bash
# Runs every test of snapinst: the Rust unit and integration tests (with the crash points compiled in), the man
# pages and completions (built and checked), the demo
# as a smoke test, the quick benchmark, and the VM tests (power cuts under QEMU, a real Debian boot with the hooks).
#
#   sudo bash scripts/test.sh [--stock]
#
#   --stock   also run vm-tests/stock/run.sh: the stock Debian layouts (ext4 /, and btrfs / with /boot and /home)
#             booted through OVMF and GRUB, a kernel package installed, rolled back, power cuts and every
#             crash point (about 80 minutes more under software emulation)
set -euo pipefail
stock=0
for a in "$@"; do
    case "$a" in
        --stock) stock=1 ;;
        -h | --help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "scripts/test.sh: unknown argument $a (see --help)" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
. scripts/lib.sh

need_root "scripts/test.sh (the integration tests make and mount btrfs and overlay filesystems)"
bash scripts/deps.sh
find_cargo

heading "cargo test --features failpoints"
cargo test --features failpoints --no-fail-fast

heading "man pages and completions: scripts/docs.sh"
bash scripts/docs.sh

heading "demo (smoke test): scripts/demo.sh"
bash scripts/demo.sh

heading "benchmark: bench/run.sh --quick"
bash bench/run.sh --quick

heading "VM tests: power cuts and crash points under QEMU (vm-tests/run.sh)"
bash vm-tests/run.sh

heading "VM tests: a real Debian boot with the hooks installed (vm-tests/debian/run.sh)"
bash vm-tests/debian/run.sh

if [ "$stock" = 1 ]; then
    heading "VM tests: the stock Debian layouts through OVMF and GRUB (vm-tests/stock/run.sh)"
    bash vm-tests/stock/run.sh
fi

heading "all tests passed"
