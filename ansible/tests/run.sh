#!/usr/bin/env bash
# The tests of the Ansible collection snapinst.snapinst (this directory's parent):
#   1. ansible-test sanity and ansible-test units, with ansible-core 2.17 in a virtual environment made here;
#   2. the collection built with `ansible-galaxy collection build` and installed from the tarball;
#   3. tests/local/roots.yml run by ansible-playbook against real roots on this machine, one inventory host per root
#      (a btrfs subvolume on a scratch btrfs image, and a directory on a scratch ext4 image, staged by overlay):
#      check mode, diff mode, commit, unchanged, a failing plan rolled back, an inline plan, info, rollback, each
#      "the tree as it was" a whole-tree manifest compared.
#
#   sudo bash ansible/tests/run.sh
#
# SNAPINST_BIN=PATH tests that binary (default: target/release/snapinst, built first). SNAPINST_ANSIBLE_CACHE (default
# /var/cache/snapinst-ansible) keeps the virtual environment and ansible-test's own environments between runs.
# Needs root (loop mounts) and the package index (pip).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
collection="$(cd "$here/.." && pwd)"
cd "$collection/.."
repo=$PWD
. scripts/lib.sh

need_root "ansible/tests/run.sh"
if [ -n "${SNAPINST_BIN:-}" ]; then
  snapinst=$(realpath "$SNAPINST_BIN")
else
  prepare_release_build "ansible/tests/run.sh"
fi

. scripts/ansible-env.sh
# The tests below name the collections they use.
unset ANSIBLE_COLLECTIONS_PATH
venv=$ansible_venv
export HOME=$ansible_cache/home
pip_version=$(sed -n "s/^ *pip='\([0-9.]*\)',$/\1/p" "$venv"/lib/python3*/site-packages/ansible_test/_internal/python_requirements.py)
[ -n "$pip_version" ] || die "cannot tell which pip this ansible-test bootstraps"
mkdir -p "$HOME/.ansible/test/cache"
install -m 0644 "$collection/tests/support/get_pip.py" "$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"

make_scratch snapinst-ansible
tree=$scratch/ansible_collections/snapinst/snapinst
mkdir -p "$tree"
cp -a "$collection/." "$tree/"
rm -rf "$tree/tests/output"

heading "ansible-test sanity"
(cd "$tree" && ansible-test sanity --python 3.11 --requirements)
heading "ansible-test units"
(cd "$tree" && ansible-test units --python 3.11 --requirements)

heading "ansible-galaxy collection build, and install from the tarball"
ansible-galaxy collection build "$tree" --output-path "$scratch"
tarball=$(ls "$scratch"/snapinst-snapinst-*.tar.gz)
ansible-galaxy collection install -p "$scratch/installed" "$tarball"
[ -f "$scratch/installed/ansible_collections/snapinst/snapinst/plugins/modules/apply.py" ] ||
  die "the installed collection has no apply module"

heading "the modules on real roots (tests/local/roots.yml)"
make_image() { # make_image NAME FSTYPE: a 2 GiB image, formatted and loop-mounted at $scratch/NAME
  local img=$scratch/$1.img dev
  truncate -s 2G "$img"
  case "$2" in
    btrfs) mkfs.btrfs -q "$img" ;;
    ext4) mkfs.ext4 -q -F "$img" ;;
  esac
  dev=$(losetup -f --show "$img")
  scratch_loops+=("$dev")
  mkdir -p "$scratch/$1"
  mount "$dev" "$scratch/$1"
}
make_image btrfs btrfs
btrfs -q subvolume create "$scratch/btrfs/root"
make_base_root "$scratch/btrfs/root"
make_image ext4 ext4
make_base_root "$scratch/ext4/root"
mkdir -p "$scratch/manifests"
cat >"$scratch/inventory.ini" <<INV
[roots]
btrfs-root root=$scratch/btrfs/root backend=btrfs
overlay-root root=$scratch/ext4/root backend=overlay

[roots:vars]
ansible_python_interpreter=/usr/bin/python3
INV
ANSIBLE_COLLECTIONS_PATH="$scratch/installed" ANSIBLE_NOCOLOR=1 ansible-playbook -i "$scratch/inventory.ini" \
  "$collection/tests/local/roots.yml" -e snapinst="$snapinst" -e work="$scratch/manifests" \
  -e "{\"manifest\": \"/usr/bin/python3 $repo/vm-tests/manifest.py\"}"
heading "a fleet of 20 roots rolled out by the role (playbooks/rollout.yml, tests/fleet/check.py)"
# 15 btrfs roots, snapshots of one debootstrapped Debian root, and 5 overlay roots on ext4; the canary, then batches
# of 1, 1, 9, 8. Each host's health is checked three ways: a command, a URL (the page the plan makes, served by an
# HTTP server on 127.0.0.1) and a systemd unit (enabled in the root). A fault on three hosts of the third batch, one
# for each check: they are rolled back, and the fourth batch is not reached.
fleet=$scratch/fleet
mkdir -p "$fleet"
debian_fixture_root
btrfs -q subvolume create "$scratch/btrfs/fleet-base"
cp -a "$debian_root/." "$scratch/btrfs/fleet-base/"
make_base_root "$scratch/ext4/fleet-base"
python3 - "$scratch" "$fleet/http.port" <<'PY' &
import functools, http.server, os, sys
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=sys.argv[1]))
with open(sys.argv[2] + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(sys.argv[2] + ".tmp", sys.argv[2])
server.serve_forever()
PY
scratch_pids+=($!)
for _ in $(seq 100); do [ -s "$fleet/http.port" ] && break; sleep 0.1; done
[ -s "$fleet/http.port" ] || die "the test's HTTP server did not start"
http="http://127.0.0.1:$(cat "$fleet/http.port")"
{
  echo "[fleet]"
  for i in $(seq -w 1 20); do
    if [ "$i" -le 15 ]; then
      btrfs -q subvolume snapshot "$scratch/btrfs/fleet-base" "$scratch/btrfs/fleet$i"
      echo "fleet$i snapinst_rollout_root=$scratch/btrfs/fleet$i snapinst_rollout_backend=btrfs fleet_site=$http/btrfs/fleet$i/opt/web/"
    else
      cp -a "$scratch/ext4/fleet-base" "$scratch/ext4/fleet$i"
      echo "fleet$i snapinst_rollout_root=$scratch/ext4/fleet$i snapinst_rollout_backend=overlay fleet_site=$http/ext4/fleet$i/opt/web/"
    fi
  done
  echo "[fleet:vars]"
  echo "ansible_connection=local"
  echo "ansible_python_interpreter=/usr/bin/python3"
} >"$fleet/inventory.ini"
python3 - "$fleet" <<'PY'
import json, re, sys
hosts = dict(re.findall(r"^(fleet\d+) snapinst_rollout_root=(\S+)", open(sys.argv[1] + "/inventory.ini").read(), re.M))
json.dump(hosts, open(sys.argv[1] + "/hosts.json", "w"))
PY
echo '{"fleet05": "command", "fleet07": "url", "fleet10": "unit"}' >"$fleet/faults.json"
fleet_run() { # fleet_run EXTRA-ARGS...: the collection's rollout playbook over the fleet
  ANSIBLE_COLLECTIONS_PATH="$scratch/installed" ANSIBLE_NOCOLOR=1 ANSIBLE_FORKS=10 ANSIBLE_SHOW_CUSTOM_STATS=1 \
    ansible-playbook -i "$fleet/inventory.ini" snapinst.snapinst.rollout \
    -e snapinst_rollout_plan="$collection/tests/fleet/plan/plan.yaml" -e snapinst_rollout_executable="$snapinst" \
    -e snapinst_rollout_summary_file="$fleet/summary.json" -e snapinst_rollout_health_delay=0 \
    -e '{"snapinst_rollout_health_command": "{{ \"/bin/false\" if fleet_faults.get(inventory_hostname) == \"command\" else \"grep -q port=8080 \" ~ snapinst_rollout_root ~ \"/etc/web.conf\" }}"}' \
    -e '{"snapinst_rollout_health_url": "{{ fleet_site ~ (\"missing.html\" if fleet_faults.get(inventory_hostname) == \"url\" else \"index.html\") }}"}' \
    -e '{"snapinst_rollout_health_unit": "{{ \"fleet-missing.service\" if fleet_faults.get(inventory_hostname) == \"unit\" else \"fleet-web.service\" }}"}' \
    "$@"
}
check_fleet() { python3 "$collection/tests/fleet/check.py" "$repo/vm-tests" "$fleet" "$1"; }
check_fleet before
heading "fleet: the rollout in check mode"
fleet_run --check -e '{"fleet_faults": {}}'
check_fleet check
heading "fleet: the rollout, with a failing health check on fleet05, fleet07 and fleet10"
rc=0
fleet_run -e "{\"fleet_faults\": $(cat "$fleet/faults.json")}" || rc=$?
[ "$rc" != 0 ] || die "the rollout with failing hosts succeeded"
check_fleet rollout
heading "fleet: the same rollout again, without the faults"
fleet_run -e '{"fleet_faults": {}}'
check_fleet again

heading "ansible: all passed"
