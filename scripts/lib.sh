# shellcheck shell=bash
# Shared helpers for scripts/demo.sh, scripts/test.sh and bench/run.sh. Source it; it does nothing by itself.
# It never touches anything outside the scratch directories its callers make, except /var/lib/snapinst/roots/
# entries that name such a scratch directory (unregister_under).

# heading TEXT: a section's title, after the time the section before it took (since the previous heading).
heading() {
  local now
  now=$(date +%s)
  [ -n "${_heading_at:-}" ] && printf '(%s s)\n' "$((now - _heading_at))"
  _heading_at=$now
  printf '\n==== %s ====\n' "$*"
}

die() {
  echo "error: $*" >&2
  exit 1
}

need_root() {
  [ "$(id -u)" -eq 0 ] || die "${1:-this script} needs root (it mounts filesystems); run it with sudo"
}

# Puts cargo on PATH. Under sudo, secure_path usually hides a rustup install, so look in root's and in the
# invoking user's ~/.cargo/bin too. With the user's toolchain, RUSTUP_HOME points at the user's toolchains while
# downloads and builds stay in root's own CARGO_HOME, so nothing root-owned lands in the user's home.
find_cargo() {
  command -v cargo >/dev/null 2>&1 && return 0
  if [ -n "${HOME:-}" ] && [ -x "$HOME/.cargo/bin/cargo" ]; then
    PATH="$HOME/.cargo/bin:$PATH"
    export PATH
    return 0
  fi
  if [ -n "${SUDO_USER:-}" ]; then
    local home
    home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
    if [ -n "$home" ] && [ -x "$home/.cargo/bin/cargo" ]; then
      PATH="$home/.cargo/bin:$PATH"
      export PATH
      if [ -z "${RUSTUP_HOME:-}" ] && [ -d "$home/.rustup" ]; then
        export RUSTUP_HOME="$home/.rustup"
      fi
      return 0
    fi
  fi
  die "cargo not found: install Rust with rustup (https://rustup.rs) first"
}

# Fills DIR with the smallest root that the sandbox's run and verify steps need: a static busybox as /bin/sh and a
# few applets, root in /etc/passwd and /etc/group, and the directories the sandbox mounts on.
make_base_root() {
  local root=$1 applet
  [ -x /bin/busybox ] || die "/bin/busybox is missing (package busybox-static)"
  mkdir -p "$root"/{bin,etc,proc,sys,dev,tmp,run,root,var/lib,usr/local/bin,opt}
  chmod 1777 "$root/tmp"
  chmod 0700 "$root/root"
  install -m 0755 /bin/busybox "$root/bin/busybox"
  for applet in sh cat echo ls grep sed head tail wc mkdir rm cp mv ln chmod chown id env printf sleep test '[' true false; do
    ln -sf busybox "$root/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
  printf 'root:x:0:\n' >"$root/etc/group"
}

# Unmounts everything mounted under DIR, deepest first. Falls back to a lazy unmount for a busy mount.
unmount_under() {
  local dir=$1 target
  findmnt -rn -o TARGET | awk -v d="$dir" 'index($0, d "/") == 1 || $0 == d' | sort -r |
    while IFS= read -r target; do
      umount "$target" 2>/dev/null || umount -l "$target" || echo "warning: could not unmount $target" >&2
    done
}

# Removes the registrations in /var/lib/snapinst/roots/ of roots that lie under DIR (a scratch directory that is
# about to be deleted), so that a later `snapinst recover --all` does not look for them.
unregister_under() {
  local dir=$1 reg
  [ -d /var/lib/snapinst/roots ] || return 0
  for reg in /var/lib/snapinst/roots/* /var/lib/snapinst/roots/.[!.]*; do
    [ -e "$reg" ] || [ -L "$reg" ] || continue
    if { [ -L "$reg" ] && readlink "$reg" | grep -qF -- "$dir"; } ||
      { [ -f "$reg" ] && grep -qF -- "$dir" "$reg"; } ||
      { [ -d "$reg" ] && grep -rqF -- "$dir" "$reg"; }; then
      rm -rf -- "$reg"
    fi
  done
}

# debian_fixture_root: the debootstrapped Debian root of the tests (tests/fixtures/debian-root.sh, cached in
# $SNAPINST_TEST_CACHE, default /var/cache/snapinst-test), its path in $debian_root.
debian_fixture_root() {
  local out
  out=$(bash "$repo/tests/fixtures/debian-root.sh" "${SNAPINST_TEST_CACHE:-/var/cache/snapinst-test}") ||
    die "tests/fixtures/debian-root.sh failed"
  debian_root=$(sed -n 's/^root=//p' <<<"$out")
  [ -x "$debian_root/usr/bin/dpkg" ] || die "the fixture printed no usable root ($debian_root)"
}

# make_scratch NAME: a scratch directory $scratch under $TMPDIR (default /var/tmp), removed on exit (also on
# failure, SIGINT and SIGTERM) with everything mounted under it, the loop devices listed in $scratch_loops (a
# script adds each it attaches, and takes out each it detaches itself) and the roots registered under it. The
# processes listed in $scratch_pids (servers a script started) are stopped first.
scratch_loops=()
scratch_pids=()
make_scratch() {
  scratch=$(mktemp -d "${TMPDIR:-/var/tmp}/$1.XXXXXX")
  trap remove_scratch EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

remove_scratch() {
  local rc=$? l
  set +e
  for l in "${scratch_pids[@]}"; do kill "$l" 2>/dev/null && wait "$l" 2>/dev/null; done
  unmount_under "$scratch"
  for l in "${scratch_loops[@]}"; do losetup -d "$l"; done
  unregister_under "$scratch"
  rm -rf -- "$scratch"
  exit "$rc"
}

# Set up for a script that runs snapinst: root, packages, cargo, a release build. Sets $snapinst.
prepare_release_build() {
  need_root "$1"
  bash scripts/deps.sh
  find_cargo
  heading "Building snapinst (cargo build --release)"
  cargo build --release
  snapinst=$repo/target/release/snapinst
  [ -x "$snapinst" ] || die "cargo build did not produce $snapinst"
}
