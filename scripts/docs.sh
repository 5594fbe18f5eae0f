#!/usr/bin/env bash
# Builds snapinst's man pages and shell completions into OUTDIR (default target/docs) and checks them:
#   man8/snapinst.8, man8/snapinst-<command>.8   generated from the command line (clap_mangen)
#   man5/snapinst-plan.5                          hand-written (docs/man/)
#   completions/snapinst.bash, _snapinst, snapinst.fish   generated (clap_complete)
# Every page must render with `man --warnings` without a warning, name its EXIT STATUS (section 8) and have a
# NAME line; the bash completion must load and register `snapinst`, and complete its commands.
#
#   bash scripts/docs.sh [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
out=${1:-target/docs}
find_cargo

rm -rf -- "$out"
cargo run --quiet --features docs --bin snapinst-docs -- "$out" || die "snapinst-docs failed"
mkdir -p "$out/man5"
cp docs/man/*.5 "$out/man5/"

command -v man >/dev/null || die "man is missing (Debian package man-db)"
pages=0
for page in "$out"/man5/*.5 "$out"/man8/*.8; do
  warnings=$(MANWIDTH=100 LC_ALL=C.UTF-8 man --warnings=w -l "$page" 2>&1 >/dev/null) ||
    die "man -l $page failed: $warnings"
  [ -z "$warnings" ] || die "man -l $page warns: $warnings"
  text=$(MANWIDTH=100 man -l "$page" 2>/dev/null)
  grep -q '^NAME' <<<"$text" || die "$page renders no NAME section"
  case "$page" in
    *.8) grep -q '^EXIT STATUS' <<<"$text" || die "$page has no EXIT STATUS section" ;;
    *.5) for s in 'EXIT STATUS' FILES EXAMPLES; do grep -q "^$s" <<<"$text" || die "$page has no $s section"; done ;;
  esac
  pages=$((pages + 1))
done
[ "$pages" -ge 10 ] || die "only $pages man pages were made"

for f in snapinst.bash _snapinst snapinst.fish; do
  [ -s "$out/completions/$f" ] || die "the completion file $f is missing or empty"
done
# The bash completion loads, registers snapinst, and completes its commands and an option.
words=$(bash -c '
  source "$1" || exit 1
  complete -p snapinst >/dev/null || exit 2
  fn=$(complete -p snapinst | sed -n "s/.*-F \([^ ]*\) .*/\1/p")
  COMP_WORDS=(snapinst ro); COMP_CWORD=1; COMP_LINE="snapinst ro"; COMP_POINT=${#COMP_LINE}
  "$fn" snapinst ro snapinst; echo "${COMPREPLY[*]}"
  COMP_WORDS=(snapinst apply --dry); COMP_CWORD=2; COMP_LINE="snapinst apply --dry"; COMP_POINT=${#COMP_LINE}
  "$fn" snapinst --dry apply; echo "${COMPREPLY[*]}"
' sh "$out/completions/snapinst.bash") || die "the bash completion does not load"
grep -qw rollback <<<"$words" || die "the bash completion does not complete \`snapinst ro\` to rollback (got: $words)"
grep -q -- '--dry-run' <<<"$words" || die "the bash completion does not complete \`snapinst apply --dry\` (got: $words)"
echo "docs: $pages man pages render without a warning; the bash completion loads and completes (in $out)"
