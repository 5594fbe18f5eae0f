#!/usr/bin/env bash
# snapinst benchmark: the fixed cost of a transaction (prepare + commit) as the tree grows, against `cp -a` of the
# same tree, and snapinst's peak memory. For each backend and tree size it makes a root of N files of 1 KiB in
# nested directories, syncs, applies a one-file plan with `snapinst apply --json` (once as a warm-up, then REPS
# times round robin over the sizes, a different file each time; the median of prepare + commit from the summary
# event is the overhead), then times `cp -a` of the tree to a sibling directory followed by a sync on the same
# filesystem.
#
#   sudo bash bench/run.sh           # 7 applies per row
#   sudo bash bench/run.sh --quick   # 3 applies per row (scripts/test.sh --full)
#   sudo bash bench/run.sh --smoke   # 1 apply per row, the small package set once: proves the benchmark runs and
#                                    # its checks hold (used by scripts/test.sh); its figures are not a measurement
#   sudo bash bench/run.sh --reps 9  # more applies per row: a steadier median where disk flushes are noisy
#
# btrfs: the root is a subvolume of a scratch btrfs image. overlay: the root is a directory on a scratch ext4 image.
# overlay-top: the root is the top of a scratch ext4 image of its own, as an ext4 `/` is, with /var/lib on it, so its
# state area is inside it and the overlay's upper layer is on a loop-mounted scratch filesystem.
# plain-100 / parts-100: a 100-file plan on the 10k-file overlay-top root, without and with an ext4 /boot and an xfs
# /srv mounted inside it (staged as parts); btrfs-plain-100 / btrfs-parts-100: the same on the 10k-file btrfs
# subvolume mounted on its own by name, as a btrfs `/` is.
# btrfs-live-100: the 100k-file btrfs root while a host step changes 100 of its files live during each transaction,
# which the commit carries into the new tree.
# Targets: overhead at 100k files <= 100 ms and <= 1.5x the 1k value; peak RSS <= 50 MB; the btrfs carry-over at
# 100k files <= 10 ms with no live change and <= 50 ms with 100 files changed live.
# Last, the package section (bench/packages.sh, run with this binary; --quick and --smoke are passed on, --reps is not): real
# Debian packages installed into fresh copies of a debootstrapped root, snapinst on btrfs, overlay and overlay-top
# against live dpkg, dpkg under eatmydata (the floor) and a btrfs snapshot then dpkg, on ext4 and btrfs images; time,
# fsync-family calls, device flushes and peak RSS per row, targets snapinst <= 1.15x the floor and <= 0.8x live
# dpkg on the same filesystem. Quick: the hello and perl sets, 3 runs per row (2 minutes on 2 quiet cores, about 5
# under load); full: also a kernel package, 5 runs per row (about 50 minutes, most of it the initramfs builds).
# The targets are reported as PASS/FAIL and do not change the exit code; the script fails only when it cannot run,
# an apply does not commit, or a package run does not install its packages.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
. scripts/lib.sh

reps=7
run_mode=full
while [ $# -gt 0 ]; do
  case "$1" in
    --quick)
      reps=3
      run_mode=quick
      ;;
    --smoke)
      reps=1
      run_mode=smoke
      ;;
    --reps)
      if [ $# -lt 2 ] || ! [ "$2" -ge 1 ] 2>/dev/null; then die "--reps needs a positive number"; fi
      reps=$2
      shift
      ;;
    *) die "usage: bench/run.sh [--quick | --smoke | --reps N]" ;;
  esac
  shift
done
sizes=(1000 10000 100000)

prepare_release_build "bench/run.sh"

make_scratch snapinst-bench

results=$scratch/results.tsv
: >"$results"
mkdir "$scratch/plans"
apply_failures=0

# make_image NAME FSTYPE: a 4 GiB sparse image, formatted and loop-mounted at $scratch/NAME.
make_image() {
  local name=$1 fstype=$2 img=$scratch/$1.img dev
  truncate -s 4G "$img"
  case "$fstype" in
    btrfs) mkfs.btrfs -q "$img" ;;
    ext4) mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$img" ;;
    xfs) mkfs.xfs -q "$img" ;;
  esac
  # direct I/O: the image's writes reach the disk instead of staying dirty in the host's page cache, where a later
  # flush would land in whichever measurement happens to sync first.
  dev=$(losetup --find --show --direct-io=on "$img")
  scratch_loops+=("$dev")
  mkdir "$scratch/$name"
  mount "$dev" "$scratch/$name"
}

# make_tree DIR N: N files of 1 KiB, 100 per directory, 100 directories per top-level directory.
make_tree() {
  python3 - "$1" "$2" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
block = bytes(range(256)) * 4
for i in range(n):
    d = os.path.join(root, "data", "d%03d" % (i // 10000), "d%03d" % (i // 100 % 100))
    if i % 100 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%03d" % (i % 100)), "wb") as f:
        f.write(block)
        f.write(b"%d\n" % i)
PY
}

# Peak RSS: GNU time reports the child's own peak. Without it, RUSAGE_CHILDREN of a fresh python3 process is used;
# on Linux a child also inherits its parent's peak when it is spawned, so that figure is an upper bound that
# cannot go below python3's own footprint (about 10-15 MB).
if [ -x /usr/bin/time ] && /usr/bin/time --version 2>&1 | grep -q GNU; then
  rss_method=gnu-time
else
  rss_method=rusage
fi

# measure_apply PLAN ROOT BACKEND: one `snapinst apply --json` in a fresh python3 process.
# Prints "outcome prepare_ms commit_ms peak_rss_kib wall_ms carry_ms" (carry_ms: the btrfs carry-over, else nan).
measure_apply() { measure_snapinst apply "$1" --root "$2" --backend "$3" --json; }

# measure_snapinst ARGS...: one `snapinst ARGS...` (ending in --json) in a fresh python3 process, printed as
# measure_apply prints it.
measure_snapinst() {
  python3 - "$rss_method" "$snapinst" "$@" <<'PY'
import json, os, resource, subprocess, sys, tempfile, time
method, cmd = sys.argv[1], sys.argv[2:]
if method == "gnu-time":
    fd, rss_file = tempfile.mkstemp()
    os.close(fd)
    cmd = ["/usr/bin/time", "-f", "%M", "-o", rss_file] + cmd
t0 = time.monotonic()
p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
wall_ms = (time.monotonic() - t0) * 1000
if method == "gnu-time":
    with open(rss_file) as f:
        lines = f.read().split()
    os.unlink(rss_file)
    rss_kib = int(lines[-1])
else:
    rss_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
summary, carry_ms = None, "nan"
for line in p.stdout.splitlines():
    try:
        event = json.loads(line)
    except ValueError:
        continue
    if isinstance(event, dict) and event.get("event") == "summary":
        summary = event
    if isinstance(event, dict) and event.get("event") == "carried_over":
        carry_ms = event.get("elapsed_ms", "nan")
outcome = summary.get("outcome") if summary else "no-summary"
if p.returncode != 0 or outcome != "committed":
    sys.stderr.write("snapinst exited %d (outcome %s)\n--- stdout\n%s--- stderr\n%s"
                     % (p.returncode, outcome, p.stdout, p.stderr))
    outcome = outcome if outcome != "committed" else "exit-%d" % p.returncode
t = (summary or {}).get("timings_ms") or {}
print(outcome, t.get("prepare", "nan"), t.get("commit", "nan"), rss_kib, "%.1f" % wall_ms, carry_ms)
PY
}

# write_plan FILE REP [DIR... | live:ROOT]: a plan of one file step (no DIR), or of 100 files spread over the DIRs;
# with live:ROOT, one file step and a host step that appends to 100 files of the live ROOT during the transaction.
write_plan() {
  python3 - "$@" <<'PY'
import json, sys
path, rep, dirs = sys.argv[1], sys.argv[2], sys.argv[3:]
if dirs and dirs[0].startswith("live:"):
    root = dirs[0][len("live:"):]
    script = "for i in $(seq -w 0 99); do echo run %s >> %s/data/d000/d001/f0$i; done" % (rep, root)
    steps = [{"id": "touch", "type": "file", "path": "/bench-%s.txt" % rep, "content": "run %s\n" % rep},
             {"id": "live", "type": "host", "do": ["/bin/sh", "-c", script], "undo": ["true"]}]
elif dirs:
    steps = [{"id": "f%d" % i, "type": "file", "path": "%s/bench-%s/f%03d" % (dirs[i % len(dirs)], rep, i),
              "content": "run %s file %d\n" % (rep, i)} for i in range(100)]
else:
    steps = [{"id": "touch", "type": "file", "path": "/bench-%s.txt" % rep, "content": "run %s\n" % rep}]
json.dump({"name": "bench", "version": rep, "steps": steps}, open(path, "w"))
PY
}

# apply_once LABEL BACKEND N REP ROOT [DIR...]: one measured (or, for REP 0, warm-up) apply to root N of a one-file
# plan, or of a 100-file plan over the DIRs.
apply_once() {
  local label=$1 backend=$2 n=$3 rep=$4 root=$5 plan line
  shift 5
  plan=$scratch/plans/$label-$n-$rep.json
  write_plan "$plan" "$rep" "$@"
  if line=$(measure_apply "$plan" "$root" "$backend"); then :; else die "measuring apply failed"; fi
  echo "$label $n files, apply #$rep$([ "$rep" -eq 0 ] && echo " (warm-up)"): outcome prepare_ms commit_ms peak_rss_kib wall_ms = $line"
  case "$line" in committed\ *) ;; *) apply_failures=$((apply_failures + 1)) ;; esac
  [ "$rep" -eq 0 ] || printf '%s\t%s\tapply\t%s\n' "$label" "$n" "$line" >>"$results"
}

# bench_backend LABEL BACKEND MAKE_ROOT: `MAKE_ROOT N` creates the empty root for the tree of N files and prints its
# path. All trees are made first; the measured applies then go round the sizes, so that a change of load on a shared
# machine hits every size alike. The peer, cp -a of the tree followed by a sync, copies on the root's filesystem.
bench_backend() {
  local label=$1 backend=$2 make_root=$3 n root rep t0 t1 cp_ms
  local -A roots=()
  for n in "${sizes[@]}"; do
    heading "$label: tree of $n files"
    root=$("$make_root" "$n")
    roots[$n]=$root
    make_tree "$root" "$n"
    sync
    # Apply #0 is a warm-up, not counted: a root's first transaction also creates its state directory and
    # records generation 0.
    apply_once "$label" "$backend" "$n" 0 "$root"
  done
  heading "$label: $reps measured applies per size, round robin"
  for rep in $(seq 1 "$reps"); do
    for n in "${sizes[@]}"; do
      apply_once "$label" "$backend" "$n" "$rep" "${roots[$n]}"
    done
  done
  for n in "${sizes[@]}"; do
    root=${roots[$n]}
    sync
    t0=$(date +%s%N)
    cp -a "$root/data" "$root/copy-of-data"
    sync -f "$root"
    t1=$(date +%s%N)
    cp_ms=$(((t1 - t0) / 1000000))
    echo "$label $n files: cp -a + sync: $cp_ms ms"
    printf '%s\t%s\tcp\t%s\n' "$label" "$n" "$cp_ms" >>"$results"
  done
}

make_btrfs_root() { btrfs -q subvolume create "$scratch/btrfs/root$1" && echo "$scratch/btrfs/root$1"; }
make_dir_root() { mkdir "$scratch/ext4/root$1" && echo "$scratch/ext4/root$1"; }
# A filesystem of its own per tree, whose top is the root (with a /var/lib, as a Debian root has).
make_top_root() { mkdir -p "$scratch/top$1/var/lib" && echo "$scratch/top$1"; }

heading "Scratch images in $scratch"
make_image btrfs btrfs
make_image ext4 ext4
for n in "${sizes[@]}"; do make_image "top$n" ext4; done
bench_backend btrfs btrfs make_btrfs_root
# The carry-over at a btrfs commit: with no live change it is part of every btrfs apply above; here the running
# system changes 100 files of the 100k-file root during each transaction (a host step appends to them).
heading "btrfs: 100k-file root, 100 files changed live during each transaction"
rm -rf "$scratch/btrfs/root100000/copy-of-data"
for rep in 0 $(seq 1 "$reps"); do
  apply_once btrfs-live-100 btrfs 100000 "$rep" "$scratch/btrfs/root100000" "live:$scratch/btrfs/root100000"
done
# Rolling back a one-file generation of the 100k-file root: keeping the data (the default) and --exact.
heading "btrfs: 100k-file root, rollback of a one-file generation, keeping the data and --exact"
for rep in $(seq 1 "$reps"); do
  for mode in keep exact; do
    # (a plan number of its own each time: 100 + rep before a keeping rollback, 200 + rep before an exact one)
    offset=100
    [ "$mode" = exact ] && offset=200
    apply_once "btrfs-apply-before-rollback" btrfs 100000 "$((offset + rep))" "$scratch/btrfs/root100000"
    args=(rollback --root "$scratch/btrfs/root100000" --json)
    [ "$mode" = exact ] && args+=(--exact)
    if line=$(measure_snapinst "${args[@]}"); then :; else die "measuring rollback failed"; fi
    echo "btrfs rollback ($mode) at 100000 files, #$rep: outcome prepare_ms commit_ms peak_rss_kib wall_ms carry_ms = $line"
    case "$line" in committed\ *) ;; *) apply_failures=$((apply_failures + 1)) ;; esac
    printf '%s\t%s\tapply\t%s\n' "btrfs-rollback-$mode" 100000 "$line" >>"$results"
  done
done
bench_backend overlay overlay make_dir_root
bench_backend overlay-top overlay make_top_root

# bench_parts TITLE PREFIX BACKEND ROOT: a 100-file plan over /etc, /opt and /var in ROOT (a root of 10k files), then over
# /etc, an ext4 /boot and an xfs /srv, fresh filesystems mounted inside ROOT and staged as parts.
bench_parts() {
  local title=$1 prefix=$2 backend=$3 root=$4 rep
  heading "$title: 100-file plans, with and without an ext4 /boot and an xfs /srv mounted inside"
  mkdir -p "$root/boot" "$root/srv"
  for rep in 0 $(seq 1 "$reps"); do
    apply_once "${prefix}plain-100" "$backend" 10000 "$rep" "$root" /etc /opt /var
  done
  make_image "${prefix}boot" ext4
  make_image "${prefix}srv" xfs
  umount "$scratch/${prefix}boot" "$scratch/${prefix}srv"
  mount "${scratch_loops[-2]}" "$root/boot"
  mount "${scratch_loops[-1]}" "$root/srv"
  for rep in 0 $(seq 1 "$reps"); do
    apply_once "${prefix}parts-100" "$backend" 10000 "$rep" "$root" /etc /boot /srv
  done
  umount "$root/srv" "$root/boot"
}

# The ext4 root as an ext4 `/` is, and the 10k-file btrfs subvolume mounted on its own by name, as a btrfs `/` is.
bench_parts overlay-top "" overlay "$scratch/top10000"
mkdir "$scratch/btrfs-live"
mount -o subvol=root10000 "$(findmnt -nvo SOURCE "$scratch/btrfs")" "$scratch/btrfs-live"
bench_parts "btrfs (mounted by name)" btrfs- btrfs "$scratch/btrfs-live"
umount "$scratch/btrfs-live"

heading "Results"
echo "$reps apply per row after a warm-up; overhead = median of timings_ms.prepare + timings_ms.commit;"
echo "cp -a ms = cp -a of the tree to a sibling directory, then sync; peak RSS: $rss_method"
[ "$rss_method" = rusage ] && echo "(RUSAGE_CHILDREN of python3: an upper bound; install the 'time' package for exact figures)"
python3 - "$results" <<'PY'
import math, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("\t")
    key = (f[0], int(f[1]))
    r = rows.setdefault(key, {"overhead": [], "rss": [], "cp": None, "ok": True, "carry": []})
    if f[2] == "apply":
        outcome, prepare, commit, rss_kib, _wall, carry = f[3].split()
        r["ok"] &= outcome == "committed"
        if carry != "nan":
            r["carry"].append(float(carry))
        r["overhead"].append(float(prepare) + float(commit))
        r["rss"].append(int(rss_kib) / 1024)
    else:
        r["cp"] = float(f[3])

def fmt(x, nd=1):
    return "n/a" if x is None or math.isnan(x) else "%.*f" % (nd, x)

header = ("backend", "files", "overhead ms", "ratio to 1k", "cp -a ms", "peak RSS MB")
table, checks = [], []
for backend in ("btrfs", "btrfs-live-100", "btrfs-rollback-keep", "btrfs-rollback-exact", "overlay", "overlay-top", "plain-100", "parts-100", "btrfs-plain-100", "btrfs-parts-100"):
    base = None
    for (b, n), r in sorted(rows.items()):
        if b != backend:
            continue
        ov = statistics.median(r["overhead"]) if r["overhead"] else float("nan")
        rss = max(r["rss"]) if r["rss"] else float("nan")
        if n == 1000:
            base = ov
        ratio = ov / base if base and not math.isnan(ov) else float("nan")
        table.append((backend, str(n), fmt(ov) + ("" if r["ok"] else " (failed)"), fmt(ratio, 2), fmt(r["cp"], 0), fmt(rss)))
        if n == 100000 and backend in ("btrfs", "overlay", "overlay-top"):
            checks.append(("%s: overhead at 100k files <= 100 ms" % backend, ov <= 100, "%s ms" % fmt(ov)))
            checks.append(("%s: overhead at 100k <= 1.5x the 1k value" % backend,
                           base is not None and ov <= 1.5 * base, "%s ms vs 1.5 x %s ms" % (fmt(ov), fmt(base))))
    rss_all = [x for (b, _), r in rows.items() if b == backend for x in r["rss"]]
    peak = max(rss_all) if rss_all else float("nan")
    checks.append(("%s: peak RSS <= 50 MB" % backend, peak <= 50, "%s MB" % fmt(peak)))

def overhead(label, n):
    r = rows.get((label, n))
    return statistics.median(r["overhead"]) if r and r["overhead"] else float("nan")
def carry(label, n):
    r = rows.get((label, n))
    return statistics.median(r["carry"]) if r and r["carry"] else float("nan")
quiet, busy = carry("btrfs", 100000), carry("btrfs-live-100", 100000)
print("carry-over at a btrfs commit, 100k-file root: %s ms with no live change, %s ms with 100 files changed live"
      % (fmt(quiet), fmt(busy)))
checks.append(("btrfs: carry-over with no live change at 100k files <= 10 ms", quiet <= 10, "%s ms" % fmt(quiet)))
checks.append(("btrfs: carry-over of 100 live-changed files at 100k files <= 50 ms", busy <= 50, "%s ms" % fmt(busy)))
keep, exact = overhead("btrfs-rollback-keep", 100000), overhead("btrfs-rollback-exact", 100000)
print("rollback of a one-file generation of the 100k-file btrfs root: %s ms keeping the data, %s ms --exact"
      % (fmt(keep), fmt(exact)))
checks.append(("btrfs: a keeping rollback <= 2x an --exact one at 100k files", keep <= 2 * exact,
               "%s ms vs 2 x %s ms" % (fmt(keep), fmt(exact))))
for prefix, what in (("", "ext4 root"), ("btrfs-", "btrfs root mounted on its own")):
    plain, parts = overhead(prefix + "plain-100", 10000), overhead(prefix + "parts-100", 10000)
    print("100-file plan on the 10k-file %s: %s ms without mounts inside, %s ms with an ext4 /boot and an xfs /srv "
          "staged as parts (%s ms per part)" % (what, fmt(plain), fmt(parts), fmt((parts - plain) / 2)))
print()

widths = [max(len(str(row[i])) for row in [header] + table) for i in range(len(header))]
line = lambda row: "| " + " | ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))) + " |"
print(line(header))
print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
for row in table:
    print(line(row))
print()
for name, ok, detail in checks:
    print("%s  %s (%s)" % ("PASS" if ok else "FAIL", name, detail))
PY

# The package section: its own scratch images, this binary, the same mode.
pkg_args=()
[ "$run_mode" != full ] && pkg_args=(--"$run_mode")
pkg_rc=0
SNAPINST_BIN=$snapinst bash bench/packages.sh "${pkg_args[@]}" || pkg_rc=$?

if [ "$apply_failures" -gt 0 ]; then
  echo "bench: $apply_failures apply run(s) did not commit" >&2
  exit 1
fi
if [ "$pkg_rc" -ne 0 ]; then
  echo "bench: the package section (bench/packages.sh) failed (exit $pkg_rc)" >&2
  exit 1
fi
