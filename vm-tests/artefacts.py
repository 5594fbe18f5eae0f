"""Cached artefacts of the VM tests: the Debian kernel and its modules, the initramfs, the disk images.

Each artefact lives in the cache directory under a name that carries a hash of its inputs (the kernel package and
version; the snapinst binary, its libraries, busybox, the init script and the module set; the tree generator and
the filesystem tools), so it is rebuilt exactly when one of them changes and reused otherwise. Artefacts are
written under a temporary name and renamed into place when complete, so an interrupted build is never reused.
"""

import glob
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import zlib

import manifest as manifest_mod
import tree

HERE = os.path.dirname(os.path.abspath(__file__))
IMAGE_SIZE = 512 << 20

# Modules the VM needs (by name) when they are not built in: the virtio disk, crc32c, btrfs (with the checksum
# algorithms it asks for), ext4, xfs and vfat with its code page and character sets (parts), overlayfs and loop (the
# scratch layer of a filesystem's top), and device-mapper's log-writes target (the crash-state logs). Their
# dependencies and soft dependencies are added from modules.dep, modules.softdep and modules.alias.
WANTED_MODULES = ["virtio_pci", "virtio_blk", "crc32c_generic", "crc32c_intel", "libcrc32c", "btrfs",
                  "xxhash_generic", "blake2b_generic", "sha256_generic", "ext4", "xfs", "vfat", "nls_cp437", "nls_utf8", "nls_ascii", "overlay", "loop",
                  "dm_mod", "dm_log_writes"]

# The programs snapinst runs besides itself, for a root that is a filesystem's top (its scratch layer): mkfs.ext4
# and GNU cp (busybox's cp does not keep the trusted.overlay.* attributes); mkfs.vfat for the scratch filesystem of
# the ESP's copy stage; and fsck.vfat, which the guest's init runs on the ESP before mounting it, as a Debian
# machine's boot does (fstab pass 1); dmsetup, which sets up the log-writes target. Copied with their libraries; the
# busybox applet of the same name is replaced.
GUEST_TOOLS = {"sbin/mkfs.ext4": "/sbin/mke2fs", "bin/cp": "/bin/cp", "sbin/mkfs.vfat": "/sbin/mkfs.fat",
               "sbin/fsck.vfat": "/sbin/fsck.fat", "sbin/dmsetup": "/sbin/dmsetup"}
GUEST_FILES = ["/etc/mke2fs.conf"]

# How a test disk set is laid out, per campaign: the backend, the filesystem of the first disk (vda), where the
# managed root is, and whether the PARTS (an ext4 /boot, an xfs /srv, a vfat ESP at /boot/efi) are mounted inside it
# and staged as parts.
#   dir:  the root is the directory /root on vda (state area /.snapinst-root beside it)
#   subvol: the root is the btrfs subvolume /root on vda, used as a directory (state area beside it)
#   top:  the root is the top of vda, as an ext4 / is (state area /var/lib/snapinst/state inside it)
#   live: the btrfs subvolume /root mounted on its own by name, as a btrfs / is (state area beside it on the top)
LAYOUTS = {
    "btrfs": {"backend": "btrfs", "fs": "btrfs", "root": "subvol", "parts": False},
    "overlay": {"backend": "overlay", "fs": "ext4", "root": "dir", "parts": False},
    "ext4-top": {"backend": "overlay", "fs": "ext4", "root": "top", "parts": True},
    "btrfs-live": {"backend": "btrfs", "fs": "btrfs", "root": "live", "parts": True},
    # Only for the crash-state logs by default (`--layout journal` runs the power cuts on it too).
    "journal": {"backend": "journal", "fs": "ext4", "root": "dir", "parts": False, "cuts": False},
}
# Mounted in this order at /boot (vdb), /srv (vdc) and /boot/efi (vdd, inside /boot, as on a UEFI machine).
PARTS = [("boot", "ext4", 128 << 20), ("srv", "xfs", 320 << 20), ("boot/efi", "vfat", 64 << 20)]
# In the root's tree but not the transaction's: the registry and plans of the test, and the root's state area.
TOP_EXCLUDED = ("/vmtest", "/var/lib/snapinst/state")
PART_STATE = ".snapinst"


def log(msg):
    print("vm-tests: " + msg, flush=True)


def run(cmd, **kw):
    kw.setdefault("check", True)
    return subprocess.run(cmd, **kw)


def out(cmd):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def key_of(*parts):
    h = hashlib.sha256()
    for p in parts:
        h.update(str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _prune(pattern, keep):
    """Remove cached artefacts matching `pattern` except `keep` (older builds of the same artefact)."""
    for p in glob.glob(pattern):
        if os.path.abspath(p) != os.path.abspath(keep):
            if os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.unlink(p)


# ----------------------------------------------------------------------------------------------------------------
# Kernel


def resolve_kernel_package():
    """(package, version) of the linux-image-*-amd64 package that linux-image-amd64 depends on."""
    for attempt in range(2):
        r = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
        pkgs = re.findall(r"^\s*Depends:\s*(linux-image-[0-9][^\s]*-amd64)\s*$", r.stdout, re.M)
        if pkgs:
            pkg = pkgs[0]
            pol = out(["apt-cache", "policy", pkg])
            m = re.search(r"Candidate:\s*(\S+)", pol)
            if m and m.group(1) != "(none)":
                return pkg, m.group(1)
        if attempt == 0:
            log("apt-cache cannot resolve linux-image-amd64: running apt-get update")
            run(["apt-get", "update", "-q"], stdout=subprocess.DEVNULL)
    raise SystemExit("vm-tests: cannot resolve the kernel package linux-image-amd64 depends on (apt-cache)")


def _extract_vmlinux(vmlinuz, dest):
    """Decompress the ELF vmlinux out of a bzImage (booted through PVH it skips the slow in-guest decompression).
    Returns False when the compression is not one handled here (the bzImage is booted then)."""
    data = open(vmlinuz, "rb").read()
    cands = []
    off = data.find(b"\xfd7zXZ\x00")
    if off >= 0:
        cands.append(("xz", off))
    off = data.find(b"\x1f\x8b\x08")
    if off >= 0:
        cands.append(("gzip", off))
    for kind, off in sorted(cands, key=lambda c: c[1]):
        try:
            if kind == "xz":
                raw = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[off:])
            else:
                raw = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[off:])
        except (lzma.LZMAError, zlib.error):
            continue
        if raw[:4] == b"\x7fELF":
            with open(dest, "wb") as f:
                f.write(raw)
            return True
    return False


def _module_index(moddir):
    """name -> relative path, deps, softdeps, aliases from depmod's files in `moddir`."""
    norm = lambda n: n.replace("-", "_")
    paths, deps = {}, {}
    with open(os.path.join(moddir, "modules.dep")) as f:
        for line in f:
            mod, _, rest = line.partition(":")
            name = norm(os.path.basename(mod).split(".ko")[0])
            paths[name] = mod
            deps[name] = [norm(os.path.basename(d).split(".ko")[0]) for d in rest.split()]
    aliases = {}
    p = os.path.join(moddir, "modules.alias")
    if os.path.exists(p):
        for line in open(p):
            w = line.split()
            if len(w) == 3 and w[0] == "alias":
                aliases.setdefault(w[1], []).append(norm(w[2]))
    soft = {}
    p = os.path.join(moddir, "modules.softdep")
    if os.path.exists(p):
        for line in open(p):
            w = line.split()
            if len(w) >= 3 and w[0] == "softdep":
                soft.setdefault(norm(w[1]), []).extend(x for x in w[2:] if not x.endswith(":"))
    builtin = set()
    p = os.path.join(moddir, "modules.builtin")
    if os.path.exists(p):
        builtin = {norm(os.path.basename(l.strip()).split(".ko")[0]) for l in open(p) if l.strip()}
    return paths, deps, soft, aliases, builtin


def module_closure(moddir, wanted):
    """Relative paths of the modules in `wanted` and everything they (soft-)depend on, builtins left out."""
    paths, deps, soft, aliases, builtin = _module_index(moddir)

    def resolve(name):
        n = name.replace("-", "_")
        if n in paths or n in builtin:
            return [n]
        for a in (name, "crypto-" + name):
            if a in aliases:
                return aliases[a]
        return []

    todo = [n for w in wanted for n in resolve(w)]
    seen = set()
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        todo += deps.get(n, [])
        for s in soft.get(n, []):
            todo += resolve(s)
    missing = [w for w in wanted if not resolve(w)]
    return sorted(paths[n] for n in seen if n in paths), missing


def ensure_kernel(cache):
    pkg, ver = resolve_kernel_package()
    kdir = os.path.join(cache, "kernel-%s_%s-%s" % (pkg, ver.replace(":", "_"), key_of(*WANTED_MODULES)[:8]))
    stamp = os.path.join(kdir, "kernel.json")
    if os.path.exists(stamp):
        info = json.load(open(stamp))
        info["dir"] = kdir
        return info
    log("kernel: fetching %s %s" % (pkg, ver))
    tmp = tempfile.mkdtemp(prefix="kernel.", dir=cache)
    try:
        os.chmod(tmp, 0o755)
        try:  # apt-get download runs as _apt when it can write the directory (no warning then)
            shutil.chown(tmp, "_apt")
        except (LookupError, OSError):
            pass
        if subprocess.run(["apt-get", "download", "-q", "%s=%s" % (pkg, ver)], cwd=tmp,
                          stdout=subprocess.DEVNULL).returncode != 0:
            # Stale package lists name a version the mirror no longer has: update, resolve again, retry once.
            run(["apt-get", "update", "-q"], stdout=subprocess.DEVNULL)
            pkg2, ver2 = resolve_kernel_package()
            if (pkg2, ver2) != (pkg, ver):
                shutil.rmtree(tmp, ignore_errors=True)
                return ensure_kernel(cache)
            run(["apt-get", "download", "-q", "%s=%s" % (pkg, ver)], cwd=tmp, stdout=subprocess.DEVNULL)
        debs = glob.glob(os.path.join(tmp, "*.deb"))
        if len(debs) != 1:
            raise SystemExit("vm-tests: apt-get download %s gave %r" % (pkg, debs))
        x = os.path.join(tmp, "x")
        run(["dpkg-deb", "-x", debs[0], x])
        kvers = os.listdir(os.path.join(x, "lib/modules"))
        if len(kvers) != 1:
            raise SystemExit("vm-tests: %s holds modules for %r" % (pkg, kvers))
        kver = kvers[0]
        vmlinuz = os.path.join(x, "boot", "vmlinuz-" + kver)
        moddir = os.path.join(x, "lib/modules", kver)
        run(["depmod", "-b", x, kver])
        mods, missing = module_closure(moddir, WANTED_MODULES)
        paths, _, _, _, builtin = _module_index(moddir)
        really_missing = [m for m in missing if m not in builtin]
        # crc32c_intel only exists on x86 builds with it; the rest must be there (or built in).
        if [m for m in really_missing if m != "crc32c_intel"]:
            raise SystemExit("vm-tests: kernel %s lacks modules %r" % (kver, really_missing))
        stage = tmp + "/out"
        os.makedirs(os.path.join(stage, "lib/modules", kver))
        for m in mods:
            d = os.path.join(stage, "lib/modules", kver, os.path.dirname(m))
            os.makedirs(d, exist_ok=True)
            src = os.path.join(moddir, m)
            if m.endswith(".ko.xz"):
                with open(os.path.join(d, os.path.basename(m)[:-3]), "wb") as f:
                    f.write(lzma.decompress(open(src, "rb").read()))
            else:
                shutil.copy2(src, d)
        for f in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
            if os.path.exists(os.path.join(moddir, f)):
                shutil.copy2(os.path.join(moddir, f), os.path.join(stage, "lib/modules", kver))
        shutil.copy2(vmlinuz, os.path.join(stage, "vmlinuz"))
        shutil.copy2(os.path.join(x, "boot", "config-" + kver), os.path.join(stage, "config"))
        pvh = _extract_vmlinux(vmlinuz, os.path.join(stage, "vmlinux"))
        info = {"package": pkg, "version": ver, "kver": kver, "modules": [m.replace(".ko.xz", ".ko") for m in mods],
                "boot": "vmlinux" if pvh else "vmlinuz"}
        with open(os.path.join(stage, "kernel.json"), "w") as f:
            json.dump(info, f, indent=1)
        _prune(os.path.join(cache, "kernel-*"), kdir)
        os.rename(stage, kdir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info["dir"] = kdir
    log("kernel: %s (%d modules, booting %s)" % (info["kver"], len(info["modules"]), info["boot"]))
    return info


# ----------------------------------------------------------------------------------------------------------------
# Initramfs


def _libs(binary):
    """Absolute paths of the shared libraries `binary` loads (ldd), the dynamic loader included."""
    r = subprocess.run(["ldd", binary], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0 and "not a dynamic executable" in r.stdout:
        return []
    libs = []
    for line in r.stdout.splitlines():
        m = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)", line)
        if m:
            libs.append(m.group(1))
        elif "not found" in line:
            raise SystemExit("vm-tests: ldd %s: %s" % (binary, line.strip()))
    return sorted(set(libs))


def busybox_path():
    for p in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(p):
            if _libs(p):
                raise SystemExit("vm-tests: %s is not a static binary (install busybox-static)" % p)
            return os.path.realpath(p)
    raise SystemExit("vm-tests: busybox (busybox-static) is not installed")


def ensure_initrd(cache, kernel, snapinst):
    busybox = busybox_path()
    tools = {dest: os.path.realpath(src) for dest, src in GUEST_TOOLS.items()}
    missing = [src for src in list(tools.values()) + GUEST_FILES if not os.path.exists(src)]
    if missing:
        raise SystemExit("vm-tests: missing on the host, needed in the guest: %s" % " ".join(missing))
    libs = sorted(set(_libs(snapinst)).union(*[_libs(t) for t in tools.values()]))
    init = os.path.join(HERE, "init.sh")
    key = key_of("initrd-v2", kernel["package"], kernel["version"], json.dumps(kernel["modules"]),
                 sha256_file(init), sha256_file(busybox), sha256_file(snapinst), sha256_file(__file__),
                 *[l + ":" + sha256_file(l) for l in libs + sorted(tools.values()) + GUEST_FILES])
    path = os.path.join(cache, "initrd-%s.cpio.gz" % key)
    if os.path.exists(path):
        return path, key
    log("initramfs: building (%s)" % key)
    tmp = tempfile.mkdtemp(prefix="initrd.", dir=cache)
    try:
        r = os.path.join(tmp, "root")
        for d in ("bin", "sbin", "proc", "sys", "dev", "mnt", "tmp", "run", "etc", "lib/modules"):
            os.makedirs(os.path.join(r, d))
        shutil.copy2(busybox, os.path.join(r, "bin/busybox"))
        applets = out([busybox, "--list"]).split()
        for a in applets:
            if a != "busybox" and not os.path.lexists(os.path.join(r, "bin", a)):
                os.symlink("busybox", os.path.join(r, "bin", a))
        for a in ("modprobe", "insmod", "poweroff", "reboot"):
            os.symlink("../bin/busybox", os.path.join(r, "sbin", a))
        shutil.copy2(snapinst, os.path.join(r, "bin/snapinst"))
        for dest, src in tools.items():
            if os.path.lexists(os.path.join(r, dest)):
                os.unlink(os.path.join(r, dest))
            shutil.copy2(src, os.path.join(r, dest))
        for f in GUEST_FILES:
            shutil.copy2(f, os.path.join(r, f.lstrip("/")))
        for lib in libs:
            dest = os.path.join(r, lib.lstrip("/"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copy2(os.path.realpath(lib), dest)
        kver = kernel["kver"]
        shutil.copytree(os.path.join(kernel["dir"], "lib/modules", kver), os.path.join(r, "lib/modules", kver))
        run(["depmod", "-b", r, kver])
        shutil.copy2(init, os.path.join(r, "init"))
        os.chmod(os.path.join(r, "init"), 0o755)
        with open(os.path.join(r, "etc/passwd"), "w") as f:
            f.write("root:x:0:0:root:/:/bin/sh\n")
        with open(os.path.join(r, "etc/group"), "w") as f:
            f.write("root:x:0:\n")
        files = sorted(os.path.relpath(os.path.join(dp, n), r)
                       for dp, dns, fns in os.walk(r) for n in dns + fns)
        with open(tmp + "/initrd", "wb") as f:
            cp = subprocess.Popen(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"], cwd=r,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            gz = subprocess.Popen(["gzip", "-6", "-n"], stdin=cp.stdout, stdout=f)
            cp.stdout.close()
            cp.stdin.write(("\n".join(files) + "\n").encode())
            cp.stdin.close()
            if cp.wait() != 0 or gz.wait() != 0:
                raise SystemExit("vm-tests: building the initramfs failed")
        _prune(os.path.join(cache, "initrd-*.cpio.gz"), path)
        os.rename(tmp + "/initrd", path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path, key


# ----------------------------------------------------------------------------------------------------------------
# Disk images


class Mounted:
    """`with Mounted(image, ro=True) as mnt:` a loop mount of a raw image on a private temporary directory."""

    def __init__(self, image, ro=True):
        self.image, self.ro = image, ro

    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix="snapinst-vm-mnt.")
        opts = "ro,loop" if self.ro else "loop"
        run(["mount", "-o", opts, self.image, self.dir])
        return self.dir

    def __exit__(self, *exc):
        r = subprocess.run(["umount", self.dir])
        if r.returncode != 0:
            subprocess.run(["umount", "-l", self.dir])
        os.rmdir(self.dir)
        forget_btrfs_devices()
        return False


def forget_btrfs_devices():
    """Let btrfs forget the devices it scanned, so the next image with the same filesystem UUID is scanned afresh."""
    if shutil.which("btrfs"):
        subprocess.run(["btrfs", "device", "scan", "--forget"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def mount_points_in(name):
    """The parts mounted directly inside the filesystem mounted at `name` ("" for the root), relative to it."""
    out = []
    for other, _, _ in PARTS:
        holder = max((p for p, _, _ in PARTS if other.startswith(p + "/")), key=len, default="")
        if holder == name:
            out.append(other[len(name) + 1:] if name else other)
    return out


class DamagedFat(Exception):
    pass


def fat_extract(image, dest):
    """Copy the whole tree of the FAT image `image` into the new directory `dest` (mtools: this host's kernel may
    have no vfat), keeping the modification times. A FAT that `fsck.vfat -n` finds damaged raises DamagedFat."""
    check = subprocess.run(["fsck.vfat", "-n", image], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check.returncode != 0:
        raise DamagedFat("fsck.vfat -n %s: exit %d: %s" % (image, check.returncode, check.stdout.strip()[-2000:]))
    os.makedirs(dest)
    if out(["mdir", "-b", "-i", image, "::/"]).strip():
        run(["mcopy", "-s", "-m", "-n", "-i", image, "::/*", dest + "/"])


def fat_fill(image, src):
    """Copy the tree in `src` into the top of the FAT image `image` (mtools), keeping the modification times."""
    names = sorted(os.listdir(src))
    if names:
        run(["mcopy", "-s", "-m", "-i", image] + [os.path.join(src, n) for n in names] + ["::/"])


def disks(layout):
    """The disk files of a set of `layout`, in drive order (vda, vdb, ...)."""
    return ["vda.img"] + (["vd%s.img" % chr(ord("b") + i) for i in range(len(PARTS))] if LAYOUTS[layout]["parts"]
                          else [])


class MountedSet:
    """`with MountedSet(disk_dir, layout) as m:` the disks of a set loop-mounted on the host the way the guest mounts
    them: `m.root` (the managed root, with the parts mounted in it), `m.state` (the root's state area) and
    `m.part_states` (each part's). A FAT part is a read-only copy of its tree bound at its place (see
    fat_extract)."""

    def __init__(self, disk_dir, layout, ro=True):
        self.dir, self.layout, self.ro = disk_dir, layout, ro

    def _mount(self, dev, at, opts=""):
        o = ",".join(x for x in ("ro" if self.ro else "", opts) if x)
        run(["mount"] + (["-o", o] if o else []) + [dev, at])
        self.points.append(at)

    def __enter__(self):
        lay = LAYOUTS[self.layout]
        self.tmp = tempfile.mkdtemp(prefix="snapinst-vm-set.")
        self.points, self.loops = [], []
        try:
            self.loops.append(out(["losetup", "--find", "--show"] + (["-r"] if self.ro else []) +
                                  [os.path.join(self.dir, "vda.img")]).strip())
            top = os.path.join(self.tmp, "top")
            os.mkdir(top)
            self._mount(self.loops[0], top)
            self.top = top
            if lay["root"] == "live":
                self.root = os.path.join(self.tmp, "live")
                os.mkdir(self.root)
                self._mount(self.loops[0], self.root, "subvol=root")
            else:
                self.root = top if lay["root"] == "top" else os.path.join(top, "root")
            self.state = os.path.join(self.root, TOP_EXCLUDED[1].lstrip("/")) if lay["root"] == "top" else \
                os.path.join(top, ".snapinst-root")
            self.part_states = []
            if lay["parts"]:
                for (name, fs, _), disk in zip(PARTS, disks(self.layout)[1:]):
                    at = os.path.join(self.root, name)
                    if fs == "vfat":
                        copy = os.path.join(self.tmp, "fat-" + disk)
                        fat_extract(os.path.join(self.dir, disk), copy)
                        self._mount(copy, at, "bind")
                    else:
                        self._mount(os.path.join(self.dir, disk), at, "loop")
                    self.part_states.append(os.path.join(at, PART_STATE))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for p in reversed(self.points):
            if subprocess.run(["umount", p]).returncode != 0:
                subprocess.run(["umount", "-l", p])
        for l in self.loops:
            subprocess.run(["losetup", "-d", l])
        shutil.rmtree(self.tmp, ignore_errors=True)
        forget_btrfs_devices()
        return False

    def manifest(self):
        """The manifest of the managed root as a transaction sees it: the parts' trees in it, the test's own files
        (a filesystem's top holds them) and every state area left out."""
        lay = LAYOUTS[self.layout]
        m = manifest_mod.manifest(self.root)
        if lay["root"] == "top":
            m = {k: v for k, v in m.items() if not any(k == x or k.startswith(x + "/") for x in TOP_EXCLUDED)}
        if lay["parts"]:
            for name, _, _ in PARTS:
                for k, v in manifest_mod.manifest(os.path.join(self.root, name)).items():
                    if k == "/" + PART_STATE or k.startswith("/%s/" % PART_STATE):
                        continue
                    m["/" + name + (k if k != "/" else "")] = v
        return dict(sorted(m.items()))


def tool_version(cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return r.stdout.strip().splitlines()[0] if r.stdout.strip() else ""


MKFS = {"btrfs": ["mkfs.btrfs", "-q", "-f"], "ext4": ["mkfs.ext4", "-q", "-F", "-I", "256"], "xfs": ["mkfs.xfs", "-q", "-f"],
        "vfat": ["mkfs.vfat"]}


def mkfs_version(fs):
    if fs == "vfat":  # mkfs.fat has no version option
        return out(["dpkg-query", "-W", "-f=${Version}", "dosfstools"]).strip()
    return tool_version([MKFS[fs][0], "-V"])


def ensure_image(cache, layout):
    """The pristine disk set of `layout` (see LAYOUTS): a directory holding its disks (`disks(layout)`), and the
    manifest of its root. Returns (directory, manifest)."""
    busybox = busybox_path()
    lay = LAYOUTS[layout]
    fss = [lay["fs"]] + ([fs for _, fs, _ in PARTS] if lay["parts"] else [])
    key = key_of("image-v2", layout, json.dumps(lay), json.dumps(PARTS), IMAGE_SIZE,
                 sha256_file(os.path.join(HERE, "tree.py")), sha256_file(busybox),
                 *[mkfs_version(fs) + " ".join(MKFS[fs]) for fs in fss])
    base = os.path.join(cache, "image-%s-%s" % (layout, key))
    man = os.path.join(base, "before.json")
    if os.path.exists(man):
        return base, manifest_mod.load(man)
    log("image: building the %s disk set (%s)" % (layout, key))
    _prune(os.path.join(cache, "image-%s-[0-9a-f]*" % layout), "")
    tmp = base + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    sizes = [IMAGE_SIZE] + [size for _, _, size in PARTS]
    for disk, fs, size in zip(disks(layout), fss, sizes):
        with open(os.path.join(tmp, disk), "wb") as f:
            f.truncate(size)
        run(MKFS[fs] + [os.path.join(tmp, disk)], stdout=subprocess.DEVNULL)
    with Mounted(os.path.join(tmp, "vda.img"), ro=False) as mnt:
        root = mnt if lay["root"] == "top" else os.path.join(mnt, "root")
        if lay["fs"] == "btrfs":
            run(["btrfs", "-q", "subvolume", "create", root])
        elif root != mnt:
            os.mkdir(root)
        os.chmod(root, 0o755)
        tree.build_tree(root, busybox)
        if lay["parts"]:
            for name in mount_points_in(""):
                os.mkdir(os.path.join(root, name))
        if lay["root"] == "top":
            os.makedirs(os.path.join(root, "var/lib/snapinst"))  # as a package would ship it
        tree.write_plans(root, os.path.join(mnt, "vmtest"), parts=[(n, fs) for n, fs, _ in PARTS] if lay["parts"] else [])
        os.makedirs(os.path.join(mnt, "vmtest", "registry"))
        os.sync()
    if lay["parts"]:
        for (name, fs, _), disk in zip(PARTS, disks(layout)[1:]):
            if fs == "vfat":
                src = os.path.join(tmp, "fat-tree")
                os.mkdir(src)
                tree.build_part_tree(src, name, fs, mount_points_in(name))
                fat_fill(os.path.join(tmp, disk), src)
                shutil.rmtree(src)
                continue
            with Mounted(os.path.join(tmp, disk), ro=False) as mnt:
                tree.build_part_tree(mnt, name, fs, mount_points_in(name))
                os.sync()
    with MountedSet(tmp, layout) as m:
        before = m.manifest()
    manifest_mod.save(before, os.path.join(tmp, "before.json"))
    os.rename(tmp, base)
    return base, before
