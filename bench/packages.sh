#!/usr/bin/env bash
# snapinst benchmark, package section: installing real Debian packages with snapinst's `package` step against its
# peers on the same machine in the same run. Package sets (the .debs the debootstrapped root of
# tests/fixtures/debian-root.sh -- bookworm minbase plus systemd -- lacks, the closure computed by `apt-get -s`
# against that root's dpkg status, fetched with `apt-get download` and cached in /var/cache/snapinst-bench):
#   small: hello (1 .deb)   perl: perl (6 .debs here, a newer perl-base among them; ~2,800 files)
#   large: the kernel linux-image-amd64 names (linux-image-6.1.0-N-amd64 with kmod, udev and initramfs-tools:
#          9 .debs, ~5,400 files, 400 MB unpacked, and an initramfs built). Not python3: its Pre-Depends chain
#          (python3 -> python3-minimal -> python3.11-minimal) cannot be installed by one `dpkg --install`, which is
#          what a package step's "debs" run.
# Rows, each run on a fresh copy of that root on a fresh sparse 4 GiB loop-mounted image (losetup --direct-io=on),
# the copy made and synced before the timer starts; every timed command ends with a `sync -f` of the root's
# filesystem, so every row pays for durability once:
#   dpkg-live-ext4/-btrfs   chroot ROOT dpkg --install DEBS (a directory on ext4 / a btrfs subvolume)
#   eatmydata-ext4/-btrfs   the same under eatmydata (libeatmydata.so copied into the root): the floor
#   snapshot-dpkg-btrfs     btrfs subvolume snapshot -r, then dpkg on the live root (apt-btrfs-snapshot's model)
#   snapinst-btrfs          snapinst apply PLAN --backend btrfs (a plan of one package step), root a subvolume
#   snapinst-overlay        --backend overlay, root a directory on ext4
#   snapinst-overlay-top    --backend overlay, root the top of its own ext4 image (state area inside it)
# The peers' chroot gets what snapinst's sandbox gives a step: /proc, /sys and /dev bound, tmpfs /tmp and /run,
# the .debs bound read-only under /run, dpkg --force-confdef --force-confold, DEBIAN_FRONTEND=noninteractive.
# Per row: the median wall time of REPS runs (round robin over the rows), its ratio to the floor on the same
# filesystem (eatmydata-ext4 for ext4 and overlay rows, eatmydata-btrfs for btrfs rows) and to plain dpkg on the
# same filesystem; fsync-family calls (fsync, fdatasync, syncfs, sync, sync_file_range, msync) of the install command
# (whole process tree, not the final sync) counted by `strace -f --seccomp-bpf -c` in a separate untimed run -- a
# call that a seccomp filter of the tree answers itself (snapinst's sync suppression) never reaches strace and
# is not counted; flush requests that reached the root's loop device during a timed run (median, final sync
# included); peak RSS from GNU time (the maximum over the process tree, so dpkg and the maintainer scripts count)
# and, sampled every 10 ms, the peak RSS of the measured process itself (snapinst, or dpkg for the peers).
# Every run is checked: each package of the set installed at its version and `dpkg --audit` empty in the root,
# snapinst exiting 0 with a committed summary; a run that did not install makes the script fail.
# Targets per snapinst row: <= 1.15x the floor and <= 0.8x plain dpkg on the same filesystem, peak RSS <= 50 MB
# (checked on GNU time's figure, which includes dpkg and the maintainer scripts -- mkinitramfs for the kernel --
# and on snapinst's own). They are reported as PASS/FAIL and do not change the exit code.
#
#   sudo bash bench/packages.sh             # all three sets, 5 runs per row (about 50 minutes on 2 cores,
#                                           # most of it the kernel set's initramfs builds)
#   sudo bash bench/packages.sh --quick     # the small and perl sets, 3 runs per row (2 minutes on a quiet
#                                           # 2-core machine, about 5 under load; used by
#                                           # bench/run.sh --quick, so by scripts/test.sh --full)
#   sudo bash bench/packages.sh --smoke     # the small set once per row: the rows run and their checks hold
#                                           # (bench/run.sh --smoke, so scripts/test.sh); not a measurement
#   sudo bash bench/packages.sh --reps 9 --sets perl,large
#
# SNAPINST_BIN=PATH uses that binary instead of building target/release/snapinst (bench/run.sh passes its own).
# SNAPINST_TEST_CACHE: where tests/fixtures/debian-root.sh keeps the root (default /var/cache/snapinst-test).
# SNAPINST_BENCH_CACHE: where the .debs are kept (default /var/cache/snapinst-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
. scripts/lib.sh

reps=5
reps_given=
sets=small,perl,large
sets_given=
quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --smoke) quick=smoke ;;
    --reps)
      if [ $# -lt 2 ] || ! [ "$2" -ge 1 ] 2>/dev/null; then die "--reps needs a positive number"; fi
      reps_given=$2
      shift
      ;;
    --sets)
      [ $# -ge 2 ] || die "--sets needs a list such as small,perl,large"
      sets_given=$2
      shift
      ;;
    *) die "usage: bench/packages.sh [--quick | --smoke] [--reps N] [--sets small,perl,large]" ;;
  esac
  shift
done
if [ "$quick" = 1 ]; then
  reps=3
  sets=small,perl
elif [ "$quick" = smoke ]; then
  reps=1
  sets=small
fi
[ -n "$reps_given" ] && reps=$reps_given
[ -n "$sets_given" ] && sets=$sets_given
IFS=, read -r -a set_names <<<"$sets"
for s in "${set_names[@]}"; do
  case "$s" in small | perl | large) ;; *) die "unknown package set '$s' (small, perl, large)" ;; esac
done
declare -A set_packages=([small]=hello [perl]=perl [large]="")
rows=(dpkg-live-ext4 dpkg-live-btrfs eatmydata-ext4 eatmydata-btrfs snapshot-dpkg-btrfs snapinst-btrfs snapinst-overlay
  snapinst-overlay-top)
started=$(date +%s)

if [ -n "${SNAPINST_BIN:-}" ]; then
  need_root "bench/packages.sh"
  bash scripts/deps.sh
  snapinst=$SNAPINST_BIN
  [ -x "$snapinst" ] || die "SNAPINST_BIN=$snapinst is not an executable"
else
  prepare_release_build "bench/packages.sh"
fi
for tool in eatmydata strace debootstrap chroot; do
  command -v "$tool" >/dev/null || die "$tool is missing (scripts/deps.sh installs it)"
done
/usr/bin/time --version 2>&1 | grep -q GNU || die "GNU time (/usr/bin/time, package time) is missing"

make_scratch snapinst-bench-pkg
cur_dev=
mkdir "$scratch/plans" "$scratch/logs"
results=$scratch/results.tsv
: >"$results"

heading "Package section: the debootstrapped root (tests/fixtures/debian-root.sh)"
debian_fixture_root
base_root=$debian_root
echo "root: $base_root ($(du -sh "$base_root" | cut -f1), $(find "$base_root" | wc -l) entries)"

# closure PACKAGE...: the packages (name=version) that installing PACKAGE... into the base root needs, as apt on
# this host resolves them against the root's dpkg status, without recommends.
closure() {
  apt-get -s -q -o Dir::State::status="$base_root/var/lib/dpkg/status" -o APT::Install-Recommends=false \
    -o APT::Install-Suggests=false install "$@" 2>&1 |
    awk '/^Inst / { v = $3; if (v ~ /^\[/) v = $4; sub(/^\(/, "", v); print $2 "=" v }' | sort
}

bench_cache=${SNAPINST_BENCH_CACHE:-/var/cache/snapinst-bench}
mkdir -p "$bench_cache"
# held until the script ends: a second run waits rather than replace the .debs this one installs
exec 8>"$bench_cache/lock"
flock 8
declare -A set_dir=() set_want=()
heading "Package section: the .debs (cached in $bench_cache)"
# The kernel image package that linux-image-amd64 names in this host's package lists.
kernel_package() { apt-cache depends linux-image-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }'; }
for s in "${set_names[@]}"; do
  if [ "$s" = large ]; then
    set_packages[large]=$(kernel_package)
    if [ -z "${set_packages[large]}" ]; then
      apt-get update -q >/dev/null || die "apt-get update failed"
      set_packages[large]=$(kernel_package)
    fi
    [ -n "${set_packages[large]}" ] || die "apt knows no linux-image-amd64 here"
  fi
  # shellcheck disable=SC2086 # a set is a list of package names
  want=$(closure ${set_packages[$s]})
  if [ -z "$want" ]; then
    # no package lists (or stale ones): update them once
    apt-get update -q >/dev/null || die "apt-get update failed"
    # shellcheck disable=SC2086
    want=$(closure ${set_packages[$s]})
  fi
  [ -n "$want" ] || die "apt cannot resolve ${set_packages[$s]} against $base_root"
  dir=$bench_cache/$s
  if [ ! -f "$dir/closure" ] || [ "$(cat "$dir/closure")" != "$want" ]; then
    rm -rf -- "$dir" "$dir.tmp"
    mkdir -p "$dir.tmp"
    # shellcheck disable=SC2086 # one name=version a line
    (cd "$dir.tmp" && apt-get download -q $want >"$scratch/logs/download-$s.log" 2>&1) ||
      { cat "$scratch/logs/download-$s.log" >&2; die "apt-get download failed for set $s"; }
    printf '%s\n' "$want" >"$dir.tmp/closure"
    mv "$dir.tmp" "$dir"
  fi
  set_dir[$s]=$dir
  set_want[$s]=$want
  n_debs=$(find "$dir" -name '*.deb' | wc -l)
  [ "$n_debs" -eq "$(wc -l <<<"$want")" ] || die "$dir holds $n_debs .debs, expected $(wc -l <<<"$want")"
  n_files=0
  for deb in "$dir"/*.deb; do n_files=$((n_files + $(dpkg-deb -c "$deb" | wc -l))); done
  echo "$s: ${set_packages[$s]} -> $n_debs .debs, $(du -sh "$dir" | cut -f1), $n_files entries: $(tr '\n' ' ' <<<"$want")"
  printf '%s\tdebs\t%s\t%s\n' "$s" "$n_debs" "$n_files" >>"$results"
  # The plan: one package step; the .debs relative to the plan's directory.
  mkdir "$scratch/plans/$s"
  ln -s "$dir" "$scratch/plans/$s/debs"
  python3 - "$scratch/plans/$s/plan.json" "$dir" <<'PY'
import json, os, sys
path, d = sys.argv[1], sys.argv[2]
debs = sorted("debs/" + n for n in os.listdir(d) if n.endswith(".deb"))
json.dump({"name": "bench-packages", "version": "1",
           "steps": [{"id": "install", "type": "package", "debs": debs}]}, open(path, "w"))
PY
done

eatmydata_libs=$(dpkg-query -L libeatmydata1 | grep '/libeatmydata\.so') || die "libeatmydata1 lists no library"

# setup ROW SET: a fresh image for ROW with a fresh copy of the base root, synced. Sets mnt, root, cur_dev, fs.
mnt=$scratch/mnt
setup() {
  local row=$1 set=$2 img=$scratch/img f
  case "$row" in *btrfs) fs=btrfs ;; *) fs=ext4 ;; esac
  truncate -s 4G "$img"
  if [ "$fs" = btrfs ]; then
    mkfs.btrfs -q "$img" >"$scratch/logs/mkfs.log" 2>&1 || { cat "$scratch/logs/mkfs.log" >&2; die "mkfs.btrfs failed"; }
  else
    mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$img"
  fi
  cur_dev=$(losetup --find --show --direct-io=on "$img")
  scratch_loops=("$cur_dev")
  mkdir -p "$mnt"
  mount "$cur_dev" "$mnt"
  case "$row" in
    *btrfs) btrfs -q subvolume create "$mnt/root" >/dev/null && root=$mnt/root ;;
    snapinst-overlay-top) root=$mnt ;;
    *) mkdir "$mnt/root" && root=$mnt/root ;;
  esac
  cp -a "$base_root/." "$root/"
  case "$row" in
    eatmydata-*) for f in $eatmydata_libs; do cp -a "$f" "$root$f"; done ;;
  esac
  case "$row" in
    snapinst-*) ;;
    *)
      # what snapinst's sandbox gives a step
      for f in proc sys dev; do mount --bind "/$f" "$root/$f"; done
      mount -t tmpfs tmpfs "$root/tmp"
      mount -t tmpfs tmpfs "$root/run"
      mkdir "$root/run/snapinst-bench-debs"
      mount --bind -o ro "${set_dir[$set]}" "$root/run/snapinst-bench-debs"
      ;;
  esac
  sync
}

teardown() {
  unmount_under "$mnt"
  losetup -d "$cur_dev"
  cur_dev=
  scratch_loops=()
  rm -f -- "$scratch/img"
  unregister_under "$scratch"
}

# command_for ROW SET: the install command of ROW, in the array cmd.
command_for() {
  local row=$1 set=$2 debs=() deb
  for deb in "${set_dir[$set]}"/*.deb; do debs+=("/run/snapinst-bench-debs/${deb##*/}"); done
  local env=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
    DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true)
  local dpkg=(chroot "$root" dpkg --force-confdef --force-confold --install "${debs[@]}")
  case "$row" in
    dpkg-live-*) cmd=("${env[@]}" "${dpkg[@]}") ;;
    eatmydata-*) cmd=("${env[@]}" LD_PRELOAD=libeatmydata.so "${dpkg[@]}") ;;
    snapshot-dpkg-btrfs)
      # exec: the measured process becomes dpkg after the snapshot
      # shellcheck disable=SC2016 # expanded by that shell
      cmd=("${env[@]}" /bin/sh -c 'btrfs -q subvolume snapshot -r "$1" "$2" >/dev/null && shift 2 && exec "$@"' sh
        "$root" "$mnt/before-install" "${dpkg[@]}")
      ;;
    snapinst-btrfs) cmd=("$snapinst" apply "$scratch/plans/$set/plan.json" --root "$root" --backend btrfs --json) ;;
    snapinst-overlay*) cmd=("$snapinst" apply "$scratch/plans/$set/plan.json" --root "$root" --backend overlay --json) ;;
  esac
}

# check ROW SET LOG: every package of the set installed at its version, dpkg --audit empty, and for snapinst a
# committed summary in LOG (its stdout).
check() {
  local row=$1 set=$2 log=$3 want got audit
  if [[ $row == snapinst-* ]]; then
    python3 - "$log" <<'PY' || return 1
import json, sys
outcome = "no-summary"
for line in open(sys.argv[1]):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if isinstance(e, dict) and e.get("event") == "summary":
        outcome = e.get("outcome")
if outcome != "committed":
    sys.stderr.write("snapinst summary outcome: %s\n" % outcome)
    sys.exit(1)
PY
  fi
  want=${set_want[$set]}
  # shellcheck disable=SC2016,SC2046,SC2001 # a dpkg-query format; the package names
  got=$(chroot "$root" dpkg-query -W -f='${Package}=${Version} ${db:Status-Status}\n' $(sed 's/=.*//' <<<"$want") 2>&1 |
    sort) || true
  # shellcheck disable=SC2001
  if [ "$got" != "$(sed 's/$/ installed/' <<<"$want" | sort)" ]; then
    printf 'expected installed:\n%s\ngot:\n%s\n' "$want" "$got" >&2
    return 1
  fi
  audit=$(chroot "$root" dpkg --audit 2>&1) || true
  [ -z "$audit" ] || { printf 'dpkg --audit:\n%s\n' "$audit" >&2; return 1; }
}

# measure LOG CMD...: one timed run of CMD (stdout and stderr to LOG, then sync -f of the root's filesystem).
# Prints "rc wall_ms tree_rss_kib own_rss_kib flushes".
measure() {
  python3 - "$1" "$mnt" "${cur_dev#/dev/}" "${@:2}" <<'PY'
import os, subprocess, sys, tempfile, time
log, mnt, dev, cmd = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
def flushes():
    with open("/sys/block/%s/stat" % dev) as f:
        return int(f.read().split()[15])  # field 16: flush requests completed
def hwm(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
fd, rss_file = tempfile.mkstemp()
os.close(fd)
f0 = flushes()
with open(log, "w") as out:
    t0 = time.monotonic()
    p = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", rss_file] + cmd, stdout=out, stderr=out,
                         stdin=subprocess.DEVNULL)
    own, child = 0, None
    while p.poll() is None:
        if child is None:
            try:
                with open("/proc/%d/task/%d/children" % (p.pid, p.pid)) as c:
                    kids = c.read().split()
                child = int(kids[0]) if kids else None
            except OSError:
                pass
        if child is not None:
            own = max(own, hwm(child))
        time.sleep(0.01)
    subprocess.run(["sync", "-f", mnt], check=True)
    wall_ms = (time.monotonic() - t0) * 1000
f1 = flushes()
with open(rss_file) as f:
    words = f.read().split()
os.unlink(rss_file)
tree = int(words[-1]) if words and words[-1].isdigit() else 0
print(p.returncode, "%.0f" % wall_ms, tree, own, f1 - f0)
PY
}

# count_syncs LOG CMD...: CMD under strace; prints the number of fsync-family calls that reached the kernel.
count_syncs() {
  local log=$1 trace=$scratch/strace.out rc=0
  shift
  strace -f --seccomp-bpf -c -o "$trace" -e trace=fsync,fdatasync,syncfs,sync,sync_file_range,msync "$@" \
    >"$log" 2>&1 || rc=$?
  [ "$rc" -eq 0 ] || return "$rc"
  # "% time seconds usecs/call calls [errors] syscall" rows, then "total"
  awk 'NF >= 5 && $4 ~ /^[0-9]+$/ && $NF != "total" { n += $4 } END { print n + 0 }' "$trace"
}

# run_one ROW SET KIND N: KIND trace (the untimed strace run) or time (timed run N). A run that does not install
# the packages stops the script.
run_one() {
  local row=$1 set=$2 kind=$3 n=$4 log line rc
  log=$scratch/logs/$set-$row-$kind-$n.log
  setup "$row" "$set"
  command_for "$row" "$set"
  if [ "$kind" = trace ]; then
    if line=$(count_syncs "$log" "${cmd[@]}"); then rc=0; else rc=$?; fi
  else
    line=$(measure "$log" "${cmd[@]}") || die "measuring $row failed"
    rc=${line%% *}
  fi
  if [ "$rc" -ne 0 ] || ! check "$row" "$set" "$log" 2>>"$log.check"; then
    echo "FAILED: $set $row ($kind $n) exit $rc; last lines of its output:" >&2
    tail -n 25 "$log" >&2
    [ -f "$log.check" ] && cat "$log.check" >&2
    die "$set $row did not install the packages"
  fi
  teardown
  if [ "$kind" = trace ]; then
    echo "$set $row: $line fsync-family calls (strace, untimed)"
    printf '%s\t%s\ttrace\t%s\n' "$set" "$row" "$line" >>"$results"
  else
    echo "$set $row #$n: rc wall_ms tree_rss_kib own_rss_kib flushes = $line"
    printf '%s\t%s\ttime\t%s\n' "$set" "$row" "$line" >>"$results"
  fi
}

for s in "${set_names[@]}"; do
  heading "Package set $s (${set_packages[$s]}): strace runs (untimed, also the warm-up)"
  for row in "${rows[@]}"; do run_one "$row" "$s" trace 0; done
  heading "Package set $s (${set_packages[$s]}): $reps timed runs per row, round robin"
  for n in $(seq 1 "$reps"); do
    for row in "${rows[@]}"; do run_one "$row" "$s" time "$n"; done
  done
done

heading "Package section: results"
echo "sets: $sets; $reps timed runs per row, each on a fresh copy of the root on a fresh image, ending with a sync;"
echo "floor = eatmydata on the same filesystem; fsyncs: strace -f --seccomp-bpf -c of the install command (untimed);"
echo "flushes: flush requests at the root's loop device (median); peak RSS: GNU time, whole tree / the process itself"
python3 - "$results" "$(($(date +%s) - started))" "${set_names[@]}" <<'PY'
import statistics, sys
path, elapsed, sets = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
rows = ["dpkg-live-ext4", "dpkg-live-btrfs", "eatmydata-ext4", "eatmydata-btrfs", "snapshot-dpkg-btrfs",
        "snapinst-btrfs", "snapinst-overlay", "snapinst-overlay-top"]
data, debs = {}, {}
for line in open(path):
    f = line.rstrip("\n").split("\t")
    if f[1] == "debs":
        debs[f[0]] = (int(f[2]), int(f[3]))
        continue
    r = data.setdefault((f[0], f[1]), {"wall": [], "tree": [], "own": [], "flush": [], "syncs": None})
    if f[2] == "trace":
        r["syncs"] = int(f[3])
    else:
        _rc, wall, tree, own, flush = f[3].split()
        r["wall"].append(float(wall) / 1000)
        r["tree"].append(int(tree) / 1024)
        r["own"].append(int(own) / 1024)
        r["flush"].append(int(flush))
def fs(row):
    return "btrfs" if row.endswith("btrfs") else "ext4"
def med(s, row, key="wall"):
    r = data.get((s, row))
    return statistics.median(r[key]) if r and r[key] else None
def fmt(x, spec):
    return "n/a" if x is None else spec % x
header = ("set", "row", "fs", "median s", "x floor", "x dpkg", "fsyncs", "flushes", "RSS MB tree/own")
table, checks = [], []
for s in sets:
    for row in rows:
        r = data.get((s, row))
        t = med(s, row)
        floor = med(s, "eatmydata-" + fs(row))
        live = med(s, "dpkg-live-" + fs(row))
        xf = t / floor if t is not None and floor else None
        xd = t / live if t is not None and live else None
        tree = max(r["tree"]) if r and r["tree"] else None
        own = max(r["own"]) if r and r["own"] else None
        table.append((s if row == rows[0] else "", row, fs(row), fmt(t, "%.2f"), fmt(xf, "%.2f"), fmt(xd, "%.2f"),
                      fmt(r["syncs"] if r else None, "%d"), fmt(med(s, row, "flush"), "%.0f"),
                      "%s / %s" % (fmt(tree, "%.1f"), fmt(own, "%.1f"))))
        if row.startswith("snapinst-"):
            checks.append(("%s %s: <= 1.15x the eatmydata-%s floor" % (s, row, fs(row)), xf is not None and xf <= 1.15,
                           "%s x" % fmt(xf, "%.2f")))
            checks.append(("%s %s: <= 0.8x dpkg-live-%s" % (s, row, fs(row)), xd is not None and xd <= 0.8,
                           "%s x" % fmt(xd, "%.2f")))
            checks.append(("%s %s: peak RSS <= 50 MB (GNU time: the whole tree)" % (s, row),
                           tree is not None and tree <= 50, "%s MB; dpkg-live-%s: %s MB" % (
                               fmt(tree, "%.1f"), fs(row), fmt(max(data[(s, "dpkg-live-" + fs(row))]["tree"]), "%.1f"))))
            checks.append(("%s %s: peak RSS of snapinst itself <= 50 MB" % (s, row), own is not None and own <= 50,
                           "%s MB" % fmt(own, "%.1f")))
for s in sets:
    if s in debs:
        print("%s: %d .debs, %d entries" % (s, debs[s][0], debs[s][1]))
print()
widths = [max(len(str(row[i])) for row in [header] + table) for i in range(len(header))]
line = lambda row: "| " + " | ".join(str(c).ljust(w) if i < 3 else str(c).rjust(w)
                                      for i, (c, w) in enumerate(zip(row, widths))) + " |"
print(line(header))
print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
for row in table:
    print(line(row))
print()
print("Targets per snapinst row: <= 1.15x the eatmydata floor and <= 0.8x live dpkg on the same filesystem; "
      "peak RSS <= 50 MB")
for name, ok, detail in checks:
    print("%s  %s (%s)" % ("PASS" if ok else "FAIL", name, detail))
for s in sets:
    for row in ("eatmydata-ext4", "eatmydata-btrfs"):
        r = data.get((s, row))
        if r and r["syncs"]:
            print("note: %s %s: %d fsync-family calls reached the kernel under eatmydata "
                  "(ldconfig, run by libc-bin's trigger, is static: LD_PRELOAD cannot reach it)" % (s, row, r["syncs"]))
print("\npackage section: %d s" % elapsed)
PY
