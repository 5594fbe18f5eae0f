# Sourced, after scripts/lib.sh, with $repo set: Ansible for the tests. A virtual environment of Debian's python3
# with ansible-core, and the community.general collection (whose chroot connection the playbook step uses)
# unpacked from the wheel of the `ansible` package of the same ansible-core series. Puts ansible-playbook on PATH
# and the collection on ANSIBLE_COLLECTIONS_PATH. Cached in SNAPINST_ANSIBLE_CACHE (default
# /var/cache/snapinst-ansible); made again only when a version below changes.
ansible_core="ansible-core==2.17.14"
ansible_bundle="ansible==10.7.0"
ansible_cache=${SNAPINST_ANSIBLE_CACHE:-/var/cache/snapinst-ansible}
ansible_venv=$ansible_cache/venv-${ansible_core#ansible-core==}
ansible_collections=$ansible_cache/collections-${ansible_bundle#ansible==}
bash "$repo/scripts/deps.sh" python3-venv
if [ ! -x "$ansible_venv/bin/ansible-test" ]; then
  heading "a virtual environment with $ansible_core"
  rm -rf "$ansible_venv"
  /usr/bin/python3 -m venv "$ansible_venv"
  "$ansible_venv/bin/pip" install --quiet --disable-pip-version-check "$ansible_core"
fi
if [ ! -f "$ansible_collections/.done" ]; then
  heading "community.general, from $ansible_bundle"
  rm -rf "$ansible_collections" "$ansible_cache/wheels"
  "$ansible_venv/bin/pip" download --quiet --disable-pip-version-check --no-deps -d "$ansible_cache/wheels" "$ansible_bundle"
  "$ansible_venv/bin/python" - "$ansible_cache"/wheels/ansible-*.whl "$ansible_collections" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith("ansible_collections/community/general/")]
    if not names:
        sys.exit("no community.general in " + wheel)
    z.extractall(out, names)
PY
  touch "$ansible_collections/.done"
fi
export PATH="$ansible_venv/bin:$PATH" ANSIBLE_COLLECTIONS_PATH="$ansible_collections"
