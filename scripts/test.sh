#!/usr/bin/env bash
# Runs every test of snapinst: the Rust unit and integration tests (with the crash points compiled in), the demo
# as a smoke test, the quick benchmark, and the VM tests when vm-tests/run.sh is present.
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

if [ -x vm-tests/run.sh ]; then
  heading "VM tests: vm-tests/run.sh"
  vm-tests/run.sh
elif [ -e vm-tests/run.sh ]; then
  heading "VM tests: vm-tests/run.sh is not executable, skipped"
else
  heading "VM tests: vm-tests/run.sh not present, skipped"
fi

heading "all tests passed"
