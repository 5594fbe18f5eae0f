#!/usr/bin/env bash
# Runs every test of snapinst: the Rust unit and integration tests (with the crash points compiled in), the demo
# as a smoke test, the quick benchmark, and the VM tests (power cuts under QEMU, a real Debian boot with the hooks).
#
#   sudo bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

need_root "scripts/test.sh (the integration tests make and mount btrfs and overlay filesystems)"
bash scripts/deps.sh
find_cargo

heading "cargo test --features failpoints"
cargo test --features failpoints --no-fail-fast

heading "demo (smoke test): scripts/demo.sh"
bash scripts/demo.sh

heading "benchmark: bench/run.sh --quick"
bash bench/run.sh --quick

heading "VM tests: power cuts and crash points under QEMU (vm-tests/run.sh)"
bash vm-tests/run.sh

heading "VM tests: a real Debian boot with the hooks installed (vm-tests/debian/run.sh)"
bash vm-tests/debian/run.sh

heading "all tests passed"
