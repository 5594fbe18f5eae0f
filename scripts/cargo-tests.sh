#!/usr/bin/env bash
# The cargo tests with the failpoints feature: the unit tests, every integration test binary and the doc tests.
# The test binaries run two at a time (SNAPINST_TEST_JOBS), the longest first: most of their time is spent waiting
# on loop devices, syncs, dpkg and copies rather than on the CPU, and each binary already runs its own tests two at a
# time. Every binary's output is printed whole when it ends, under its name. All run even when one fails (as with
# `cargo test --no-fail-fast`); then the script fails, naming the binaries that failed.
#
#   sudo bash scripts/cargo-tests.sh [TEST-ARGS...]     (TEST-ARGS go to every test binary, e.g. a name filter)
#
# Needs what `cargo test` needs (scripts/deps.sh, cargo on PATH); the privileged tests need root.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
find_cargo
jobs=${SNAPINST_TEST_JOBS:-2}
case "$jobs" in '' | *[!0-9]* | 0) die "SNAPINST_TEST_JOBS must be a number of at least 1 (it is '$jobs')" ;; esac

# Started first: the binaries that take longest (minutes each), so that the short ones fill in around them.
longest=(privileged_debian privileged_failpoints privileged_any_names privileged_resume privileged_playbook)

heading "cargo test --features failpoints --no-run"
binaries=$(cargo test --features failpoints --no-run --message-format=json-render-diagnostics |
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print("%s\t%s" % (m["target"]["name"] + ("" if m["target"]["kind"] == ["test"] else "-" + m["target"]["kind"][0]),
                          m["executable"]))')
[ -n "$binaries" ] || die "cargo test --no-run listed no test binaries"
ordered=$( (
  for name in "${longest[@]}"; do grep -P "^$name\t" <<<"$binaries" || die "no test binary $name (rename it here too)"; done
  grep -v -P "^($(IFS='|'; echo "${longest[*]}"))\t" <<<"$binaries" | sort
))

logs=$(mktemp -d "${TMPDIR:-/var/tmp}/snapinst-cargo-tests.XXXXXX")
trap 'rm -rf -- "$logs"' EXIT
run_binary() { # run_binary NAME EXECUTABLE ARGS...: runs it, then prints its output whole (one at a time)
  local name=$1 exe=$2 rc=0
  shift 2
  "$exe" "$@" </dev/null >"$logs/$name.log" 2>&1 || rc=$?
  echo "$rc" >"$logs/$name.rc"
  {
    flock 9
    echo "---- $name ($exe): exit $rc"
    cat "$logs/$name.log"
  } 9>"$logs/print.lock"
}

heading "the test binaries, $jobs at a time"
while IFS=$'\t' read -r -u 3 name exe; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
  run_binary "$name" "$exe" "$@" &
done 3<<<"$ordered"
wait
count=$(wc -l <<<"$ordered")

heading "cargo test --features failpoints --doc"
doc_rc=0
cargo test --features failpoints --doc -- "$@" || doc_rc=$?

failed=()
for rc in "$logs"/*.rc; do
  [ "$(cat "$rc")" = 0 ] || failed+=("$(basename "$rc" .rc)")
done
[ "$(ls "$logs"/*.rc | wc -l)" = "$count" ] || die "only $(ls "$logs"/*.rc | wc -l) of $count test binaries reported"
[ "$doc_rc" = 0 ] || failed+=("doc tests")
[ "${#failed[@]}" = 0 ] || die "cargo tests failed: ${failed[*]}"
echo "cargo tests: $count test binaries and the doc tests passed"
