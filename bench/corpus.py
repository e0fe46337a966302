#!/usr/bin/env python3
"""Realistic image corpus for the delta benchmark: OCI layouts and `docker save` archives.

Everything is made from real files: a Debian rootfs from `debootstrap --variant=minbase`, Debian
packages installed with apt-get in a chroot, wheels from PyPI, npm packages, and a small C
program compiled twice (sources in bench/corpus_src/). Nothing is random. Downloads come only
from Debian's archive (debootstrap, apt-get), PyPI (pip download) and the npm registry (npm ci).

Everything is cached under bench/.cache/ (gitignored): a rerun only rebuilds what is missing or
whose recipe changed. Needs root (debootstrap, chroot, mount).

  corpus.py [--cache DIR] [IMAGE...]     build the named images (default: all), print their paths

Layers are tars written here, deterministically from the directory trees: entries in lexical
order (parents first), PAX format, uid/gid/mode/link targets/hard links as on disk, no user or
group names; mtimes as on disk, except that any mtime from the corpus build itself (files
written by debootstrap's scripts, apt, pip, npm, this script) is set to the layer's fixed
"build date". A layer on top of a rootfs is the difference of two trees, the way Docker computes
it (added or changed entries with their parent directories, `.wh.NAME` whiteouts for deleted
ones). Layers are gzip -6 (mtime 0), as a registry stores them.
"""

import argparse
import filecmp
import gzip
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "corpus_src")
MIRROR = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"
SUITE = "bookworm"
VERSION = 1  # bump to rebuild everything

# Fixed build dates (Unix time) per layer: what `docker build` would stamp on the files it writes.
DAY = 86400
T_BASE1 = 1767225600  # 2026-01-01
EPOCH = {
    "base-v1": T_BASE1,
    "pyapp-1.0": T_BASE1 + 14 * DAY,
    "nodeapp-2.3": T_BASE1 + 31 * DAY,
    "large-tools-1": T_BASE1 + 35 * DAY,
    "pyapp-1.1": T_BASE1 + 45 * DAY,
    "base-v2": T_BASE1 + 59 * DAY,
    "pyapp-1.0-rebuilt": T_BASE1 + 60 * DAY,
    "large-tools-2": T_BASE1 + 61 * DAY,
}

# --- what is built ----------------------------------------------------------------------------

# Root filesystems: debootstrap, or a parent plus a shell script run in a chroot.
ROOTFS = {
    # Debian 12 minbase plus python3 and ca-certificates, at the point release's versions.
    "base-v1": dict(debootstrap=["python3", "ca-certificates"]),
    # The same base after the security updates (the parent with bookworm-security and -updates
    # enabled, `apt-get upgrade`): python3.11, libssl3, openssl, perl, apt, tzdata, ...
    "base-v2": dict(parent="base-v1", script=(
        "echo 'deb {sec} {suite}-security main' >> /etc/apt/sources.list && "
        "echo 'deb {mirror} {suite}-updates main' >> /etc/apt/sources.list && "
        "apt-get update -qq && apt-get -y -qq upgrade")),
    # A Node.js app on base-v1: Debian's nodejs plus npm packages (copied in from a staging dir).
    "nodeapp-2.3": dict(parent="base-v1", script=(
        "apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs"),
        app="nodeapp"),
    # A large image: base-v1 plus a JDK, PostgreSQL, gcc/g++ and clang with their libraries.
    "large-1": dict(parent="base-v1", script=(
        "mkdir -p /etc/postgresql-common/createcluster.d && "
        "echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/no-main.conf && "
        "apt-get update -qq && apt-get install -y -qq --no-install-recommends "
        "openjdk-17-jdk-headless postgresql-15 build-essential clang-14 gdb git")),
    # ... and its update: a few packages (JDK, PostgreSQL) at their security-update versions.
    "large-2": dict(parent="large-1", script=(
        "echo 'deb {sec} {suite}-security main' >> /etc/apt/sources.list && "
        "apt-get update -qq && apt-get install -y -qq --no-install-recommends --only-upgrade "
        "openjdk-17-jre-headless openjdk-17-jdk-headless postgresql-15 postgresql-client-15 libpq5")),
}

# Layers: a whole tree (`tree`), or the difference between two root filesystems (`lower` → `upper`).
LAYERS = {
    "base-v1": dict(tree=("rootfs", "base-v1")),
    "base-v2": dict(tree=("rootfs", "base-v2")),
    "pyapp-1.0": dict(tree=("staging", "pyapp-1.0")),
    "pyapp-1.1": dict(tree=("staging", "pyapp-1.1")),
    # The same app files, rebuilt later on the new base: same content, new build date.
    "pyapp-1.0-rebuilt": dict(tree=("staging", "pyapp-1.0")),
    "nodeapp-2.3": dict(lower="base-v1", upper="nodeapp-2.3"),
    "large-tools-1": dict(lower="base-v1", upper="large-1"),
    "large-tools-2": dict(lower="base-v1", upper="large-2"),
}

PY_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
          "PYTHONPATH=/app/lib:/app/src", "PYTHONDONTWRITEBYTECODE=1"]
IMAGES = {
    "gateway-1.0": dict(repo="edge/gateway", tag="1.0", layers=["base-v1", "pyapp-1.0"],
                        env=PY_ENV, cmd=["python3", "-m", "gateway"]),
    "gateway-1.1": dict(repo="edge/gateway", tag="1.1", layers=["base-v1", "pyapp-1.1"],
                        env=PY_ENV, cmd=["python3", "-m", "gateway"]),
    "gateway-1.0-base2": dict(repo="edge/gateway", tag="1.0-base2",
                              layers=["base-v2", "pyapp-1.0-rebuilt"],
                              env=PY_ENV, cmd=["python3", "-m", "gateway"]),
    "dashboard-2.3": dict(repo="edge/dashboard", tag="2.3", layers=["base-v1", "nodeapp-2.3"],
                          env=[PY_ENV[0], "NODE_ENV=production"], cmd=["node", "/app/server.js"]),
    "devbox-1": dict(repo="edge/devbox", tag="1", layers=["base-v1", "large-tools-1"],
                     env=[PY_ENV[0]], cmd=["/bin/bash"]),
    "devbox-2": dict(repo="edge/devbox", tag="2", layers=["base-v1", "large-tools-2"],
                     env=[PY_ENV[0]], cmd=["/bin/bash"]),
}

# name -> (image on the device or None, target image, description)
SCENARIOS = {
    "first-image": (None, "gateway-1.0",
                    "device holds nothing; target edge/gateway:1.0 = Debian minbase+python3 base "
                    "layer + Python app layer (PyPI wheels incl. numpy, sources, static C binary)"),
    "new-app-same-base": ("gateway-1.0", "dashboard-2.3",
                          "device holds edge/gateway:1.0; target edge/dashboard:2.3 = same base "
                          "layer + Node app layer (Debian nodejs, npm packages)"),
    "app-update": ("gateway-1.0", "gateway-1.1",
                   "device holds edge/gateway:1.0; target 1.1: 3 .py files changed + version "
                   "bump, the C binary recompiled with a code change"),
    "base-update": ("gateway-1.0", "gateway-1.0-base2",
                    "device holds edge/gateway:1.0; target: the same app rebuilt on the base "
                    "after Debian security updates (apt-get upgrade)"),
    "large": ("devbox-1", "devbox-2",
              "device holds edge/devbox:1 (base + JDK 17, PostgreSQL 15, gcc, clang 14, gdb, "
              "git); target devbox:2: JDK and PostgreSQL packages at their security updates"),
}


# --- helpers ----------------------------------------------------------------------------------

def log(msg):
    print(f"   corpus: {msg}", file=sys.stderr, flush=True)


def sh(cmd, **kw):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))}: exit {p.returncode}\n"
                           f"{p.stdout.decode(errors='replace')[-4000:]}")
    return p.stdout


def digest_of(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def mounts_under(path):
    path = os.path.realpath(path)
    out = []
    with open("/proc/mounts") as f:
        for line in f:
            mp = line.split()[1].encode().decode("unicode_escape")
            if mp == path or mp.startswith(path + "/"):
                out.append(mp)
    return sorted(out, key=len, reverse=True)


def unmount_under(path):
    for mp in mounts_under(path):
        subprocess.run(["umount", "-l", mp])


def remove_tree(path):
    """Removes a directory that may have mounts left from an interrupted build."""
    if os.path.lexists(path):
        unmount_under(path)
        if mounts_under(path):
            raise RuntimeError(f"cannot unmount everything under {path}")
        shutil.rmtree(path)


class Cache:
    def __init__(self, root):
        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)
        t0 = os.path.join(self.root, "t0")
        if not os.path.exists(t0):
            with open(t0, "w") as f:
                f.write(str(int(time.time()) - 5))
        with open(t0) as f:
            # mtimes at or after this are from the corpus build, not from a package or source.
            self.t0 = int(f.read().strip())
        self.recipes = {}

    def path(self, *parts):
        p = os.path.join(self.root, *parts)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        return p

    def dir(self, *parts):
        p = os.path.join(self.root, *parts)
        os.makedirs(p, exist_ok=True)
        return p

    def done(self, path, recipe):
        m = path + ".done"
        if not os.path.exists(m):
            return False
        with open(m) as f:
            return f.read() == recipe

    def mark(self, path, recipe):
        with open(path + ".done", "w") as f:
            f.write(recipe)

    def unmark(self, path):
        if os.path.exists(path + ".done"):
            os.unlink(path + ".done")


# --- root filesystems -------------------------------------------------------------------------

def rootfs_recipe(name):
    spec = ROOTFS[name]
    r = dict(v=VERSION, spec=spec)
    if "parent" in spec:
        r["parent"] = rootfs_recipe(spec["parent"])
    if "app" in spec:
        r["app"] = staging_recipe(spec["app"])
    return digest_of(r)


def build_rootfs(cache, name):
    d = cache.path("rootfs", name)
    recipe = rootfs_recipe(name)
    if cache.done(d, recipe):
        return d
    spec = ROOTFS[name]
    parent = build_rootfs(cache, spec["parent"]) if "parent" in spec else None
    app = build_staging(cache, spec["app"]) if "app" in spec else None
    cache.unmark(d)
    remove_tree(d)
    debs = cache.dir("debs")
    t = time.time()
    if parent is None:
        log(f"rootfs {name}: debootstrap --variant=minbase {SUITE} (+{','.join(spec['debootstrap'])})")
        try:
            sh(["debootstrap", "--variant=minbase", f"--include={','.join(spec['debootstrap'])}",
                f"--cache-dir={debs}", SUITE, d, MIRROR])
        finally:
            unmount_under(d)
    else:
        log(f"rootfs {name}: copy of {spec['parent']} + chroot: {spec['script'][:90]}...")
        sh(["cp", "-a", "--reflink=auto", parent, d])
        script = spec["script"].format(mirror=MIRROR, sec=SECURITY, suite=SUITE)
        in_chroot(d, script, debs)
        if app:
            sh(["cp", "-a", os.path.join(app, "app"), os.path.join(d, "app")])
    # As Debian's container images do: no package lists, no downloaded packages.
    lists = os.path.join(d, "var/lib/apt/lists")
    for n in os.listdir(lists):
        p = os.path.join(lists, n)
        shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)
    for sub, suffix in (("var/cache/apt", ".bin"), ("var/cache/apt/archives", ".deb")):
        for n in os.listdir(os.path.join(d, sub)):
            if n.endswith(suffix):
                os.unlink(os.path.join(d, sub, n))
    log(f"rootfs {name}: done in {time.time() - t:.0f} s")
    cache.mark(d, recipe)
    return d


def in_chroot(root, script, debs):
    """Runs a shell script in the chroot with /proc mounted, no services started, and
    downloaded packages kept in the cache's debs directory (bind-mounted over apt's)."""
    policy = os.path.join(root, "usr/sbin/policy-rc.d")
    with open(policy, "w") as f:
        f.write("#!/bin/sh\nexit 101\n")
    os.chmod(policy, 0o755)
    archives = os.path.join(root, "var/cache/apt/archives")
    os.makedirs(os.path.join(debs, "partial"), exist_ok=True)
    env = dict(PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               DEBIAN_FRONTEND="noninteractive", LC_ALL="C", HOME="/root")
    try:
        sh(["mount", "-t", "proc", "proc", os.path.join(root, "proc")])
        sh(["mount", "--bind", debs, archives])
        sh(["chroot", root, "/bin/sh", "-ec", script], env=env)
    finally:
        unmount_under(root)
        os.unlink(policy)


# --- staging directories (app files built on this machine) -----------------------------------

def staging_recipe(name):
    files = []
    for top in ("pyapp", "agent") if name.startswith("pyapp") else ("nodeapp",):
        for dp, dns, fns in os.walk(os.path.join(SRC, top)):
            dns.sort()
            for fn in sorted(fns):
                p = os.path.join(dp, fn)
                with open(p, "rb") as f:
                    files.append((os.path.relpath(p, SRC), hashlib.sha256(f.read()).hexdigest()))
    return digest_of(dict(v=VERSION, rev=2, name=name, files=files))


def build_staging(cache, name):
    d = cache.path("staging", name)
    recipe = staging_recipe(name)
    if cache.done(d, recipe):
        return d
    cache.unmark(d)
    remove_tree(d)
    app = os.path.join(d, "app")
    os.makedirs(app)
    if name.startswith("pyapp"):
        ver = name.split("-")[1]  # 1.0 or 1.1
        log(f"staging {name}: PyPI wheels, gateway sources {ver}, sensor-agent {ver}")
        wheels = cache.dir("pypi")
        req = os.path.join(SRC, "pyapp", "requirements.txt")
        sh([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
            "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
            "--platform", "manylinux2014_x86_64", "-d", wheels, "-r", req])
        lib = os.path.join(app, "lib")
        os.makedirs(lib)
        wanted = {}
        with open(req) as f:
            for line in f:
                line = line.split("#")[0].strip()
                if line:
                    n, v = line.split("==")
                    wanted[n.lower().replace("-", "_")] = v
        for whl in sorted(os.listdir(wheels)):
            n, v = whl.split("-")[:2]
            if wanted.get(n.lower().replace("-", "_")) == v:
                unpack_wheel(os.path.join(wheels, whl), lib)
                del wanted[n.lower().replace("-", "_")]
        if wanted:
            raise RuntimeError(f"wheels missing from {wheels}: {wanted}")
        src = os.path.join(app, "src")
        shutil.copytree(os.path.join(SRC, "pyapp", "v1"), src, copy_function=shutil.copyfile)
        if ver == "1.1":
            for fn in sorted(os.listdir(os.path.join(SRC, "pyapp", "v2", "gateway"))):
                shutil.copyfile(os.path.join(SRC, "pyapp", "v2", "gateway", fn),
                                os.path.join(src, "gateway", fn))
        shutil.copyfile(req, os.path.join(app, "requirements.txt"))
        os.makedirs(os.path.join(app, "bin"))
        agent_c = os.path.join(SRC, "agent", "agent-v1.c" if ver == "1.0" else "agent-v2.c")
        sh(["gcc", "-O2", "-static", "-o", os.path.join(app, "bin", "sensor-agent"), agent_c, "-lm"])
    else:
        log(f"staging {name}: npm ci (package-lock.json from bench/corpus_src/nodeapp)")
        for fn in ("package.json", "package-lock.json", "server.js"):
            shutil.copyfile(os.path.join(SRC, "nodeapp", fn), os.path.join(app, fn))
        shutil.copytree(os.path.join(SRC, "nodeapp", "lib"), os.path.join(app, "lib"),
                        copy_function=shutil.copyfile)
        sh(["npm", "ci", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund",
            "--cache", cache.dir("npm")], cwd=app)
    # Directories copied from corpus_src keep their checkout mtime (copytree copies it): give
    # them the build's, like every other file written here, so the layer does not depend on when
    # the repository was checked out. npm's files keep npm's fixed date.
    now = time.time()
    for dp, dns, fns in os.walk(app):
        if "node_modules" in dns:
            dns.remove("node_modules")
        os.utime(dp, (now, now))
    cache.mark(d, recipe)
    return d


def unpack_wheel(whl, dest):
    """Installs a wheel the way pip does, minus scripts: unzip into site-packages."""
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            if info.filename.split("/", 1)[0].endswith(".data"):
                continue  # scripts and headers: not installed here
            path = z.extract(info, dest)
            mode = (info.external_attr >> 16) & 0o777
            if mode and not info.is_dir():
                os.chmod(path, 0o755 if mode & 0o111 else 0o644)


# --- layers -----------------------------------------------------------------------------------

SKIP_CONTENTS = {"dev", "proc", "sys"}  # kept as empty directories, as in container images


class HashWriter:
    def __init__(self, inner):
        self.inner, self.h, self.n = inner, hashlib.sha256(), 0

    def write(self, b):
        self.h.update(b)
        self.n += len(b)
        return self.inner.write(b)

    def tell(self):
        return self.n

    def flush(self):
        self.inner.flush()


def listdir_sorted(path, rel):
    if rel in SKIP_CONTENTS:
        return []
    return sorted(os.listdir(path), key=os.fsencode)


def same_entry(a_path, a, b_path, b):
    if stat.S_IFMT(a.st_mode) != stat.S_IFMT(b.st_mode) or a.st_mode != b.st_mode:
        return False
    if (a.st_uid, a.st_gid, a.st_mtime_ns) != (b.st_uid, b.st_gid, b.st_mtime_ns):
        return False
    if stat.S_ISREG(a.st_mode):
        return a.st_size == b.st_size and filecmp.cmp(a_path, b_path, shallow=False)
    if stat.S_ISLNK(a.st_mode):
        return os.readlink(a_path) == os.readlink(b_path)
    if stat.S_ISCHR(a.st_mode) or stat.S_ISBLK(a.st_mode):
        return a.st_rdev == b.st_rdev
    return True


def changes(lower, upper, rel=""):
    """Entries of the layer that turns tree `lower` into tree `upper` (lower None: all of
    upper), as (rel, kind) in tar order; kind is "entry" or "whiteout"."""
    up = os.path.join(upper, rel) if rel else upper
    names = listdir_sorted(up, rel)
    low_dir = os.path.join(lower, rel) if (lower and rel) else lower
    low_names = set()
    if low_dir is not None and os.path.isdir(low_dir) and not os.path.islink(low_dir):
        low_names = set(listdir_sorted(low_dir, rel))
    out = []
    items = [(n, "entry") for n in names] + [(n, "whiteout") for n in low_names - set(names)]
    items.sort(key=lambda x: os.fsencode(".wh." + x[0] if x[1] == "whiteout" else x[0]))
    for n, kind in items:
        r = f"{rel}/{n}" if rel else n
        if kind == "whiteout":
            out.append((f"{rel}/.wh.{n}" if rel else f".wh.{n}", "whiteout"))
            continue
        p = os.path.join(upper, r)
        st = os.lstat(p)
        lp = os.path.join(lower, r) if lower and n in low_names else None
        lst = os.lstat(lp) if lp else None
        is_dir = stat.S_ISDIR(st.st_mode)
        if lst is not None and is_dir and stat.S_ISDIR(lst.st_mode):
            sub = changes(lower, upper, r)
            if sub or not same_entry(lp, lst, p, st):
                out.append((r, "entry"))
                out.extend(sub)
        elif lst is not None and same_entry(lp, lst, p, st):
            continue
        else:
            out.append((r, "entry"))
            if is_dir:
                out.extend(changes(None, upper, r))
    return out


def write_layer(cache, name):
    """Writes the layer's gzip blob into the blob store; returns its facts (cached)."""
    spec = LAYERS[name]
    if "tree" in spec:
        kind, src = spec["tree"]
        sub = rootfs_recipe(src) if kind == "rootfs" else staging_recipe(src)
        recipe = digest_of(dict(v=VERSION, tree=spec["tree"], sub=sub, epoch=EPOCH[name], t0=cache.t0))
    else:
        recipe = digest_of(dict(v=VERSION, lower=rootfs_recipe(spec["lower"]),
                                upper=rootfs_recipe(spec["upper"]), epoch=EPOCH[name], t0=cache.t0))
    facts_path = cache.path("layers", name + ".json")
    if cache.done(facts_path, recipe):
        with open(facts_path) as f:
            return json.load(f)
    if "tree" in spec:
        kind, src = spec["tree"]
        lower, upper = None, (build_rootfs(cache, src) if kind == "rootfs" else build_staging(cache, src))
    else:
        lower, upper = build_rootfs(cache, spec["lower"]), build_rootfs(cache, spec["upper"])
    t = time.time()
    entries = changes(lower, upper)
    epoch = EPOCH[name]
    tmp = cache.path("blobs", "tmp-" + name)
    with open(tmp, "wb") as raw:
        gzhash = HashWriter(raw)
        with gzip.GzipFile(filename="", mode="wb", compresslevel=6, fileobj=gzhash, mtime=0) as gz:
            tarhash = HashWriter(gz)
            with tarfile.open(fileobj=tarhash, mode="w", format=tarfile.PAX_FORMAT) as tar:
                links = {}
                for rel, kind in entries:
                    ti = tarfile.TarInfo(rel)
                    ti.uname = ti.gname = ""
                    if kind == "whiteout":
                        ti.type, ti.mode, ti.mtime, ti.size = tarfile.REGTYPE, 0, epoch, 0
                        tar.addfile(ti)
                        continue
                    p = os.path.join(upper, rel)
                    st = os.lstat(p)
                    ti.mode = stat.S_IMODE(st.st_mode)
                    ti.uid, ti.gid = st.st_uid, st.st_gid
                    mt = st.st_mtime_ns // 10**9
                    ti.mtime = epoch if mt >= cache.t0 else mt
                    fmt = stat.S_IFMT(st.st_mode)
                    if fmt == stat.S_IFREG:
                        key = (st.st_dev, st.st_ino)
                        if st.st_nlink > 1 and key in links:
                            ti.type, ti.linkname = tarfile.LNKTYPE, links[key]
                            tar.addfile(ti)
                            continue
                        if st.st_nlink > 1:
                            links[key] = rel
                        ti.type, ti.size = tarfile.REGTYPE, st.st_size
                        with open(p, "rb") as f:
                            tar.addfile(ti, f)
                        continue
                    if fmt == stat.S_IFDIR:
                        ti.type = tarfile.DIRTYPE
                    elif fmt == stat.S_IFLNK:
                        ti.type, ti.linkname = tarfile.SYMTYPE, os.readlink(p)
                    elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
                        ti.type = tarfile.CHRTYPE if fmt == stat.S_IFCHR else tarfile.BLKTYPE
                        ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
                    elif fmt == stat.S_IFIFO:
                        ti.type = tarfile.FIFOTYPE
                    else:
                        continue  # sockets: not in images
                    tar.addfile(ti)
    facts = dict(diff_id="sha256:" + tarhash.h.hexdigest(), digest="sha256:" + gzhash.h.hexdigest(),
                 size=gzhash.n, tar_size=tarhash.n, entries=len(entries))
    os.replace(tmp, cache.path("blobs", "sha256", gzhash.h.hexdigest()))
    with open(facts_path, "w") as f:
        json.dump(facts, f)
    cache.mark(facts_path, recipe)
    log(f"layer {name}: {len(entries)} entries, tar {tarhash.n / 1e6:.1f} MB, gzip {gzhash.n / 1e6:.1f} MB "
        f"({time.time() - t:.0f} s)")
    return facts


# --- images -----------------------------------------------------------------------------------

def put_blob(layout, data):
    hexd = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", hexd), "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + hexd, "size": len(data)}


def build_image(cache, name):
    """OCI layout and docker-archive of an image; returns (layout, tag, archive)."""
    spec = IMAGES[name]
    facts = [write_layer(cache, l) for l in spec["layers"]]
    recipe = digest_of(dict(v=VERSION, spec=spec, layers=[f["diff_id"] for f in facts]))
    layout = cache.path("oci", name)
    archive = cache.path("archives", name + ".tar")
    if cache.done(layout, recipe) and os.path.exists(archive):
        return layout, spec["tag"], archive
    cache.unmark(layout)
    remove_tree(layout)
    if os.path.exists(archive):
        os.unlink(archive)
    os.makedirs(os.path.join(layout, "blobs", "sha256"))
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(EPOCH[spec["layers"][-1]]))
    history = [{"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(EPOCH[l])),
                "created_by": f"sideload bench corpus: layer {l}"} for l in spec["layers"]]
    config = {
        "architecture": "amd64", "os": "linux", "created": created,
        "config": {"Env": spec["env"], "Cmd": spec["cmd"], "WorkingDir": "/app"},
        "rootfs": {"type": "layers", "diff_ids": [f["diff_id"] for f in facts]},
        "history": history,
    }
    cdesc = put_blob(layout, json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    layers = []
    for f in facts:
        src = cache.path("blobs", "sha256", f["digest"].split(":")[1])
        dst = os.path.join(layout, "blobs", "sha256", f["digest"].split(":")[1])
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                       "digest": f["digest"], "size": f["size"]})
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cdesc},
                "layers": layers}
    mdesc = put_blob(layout, json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **mdesc,
        "annotations": {"org.opencontainers.image.ref.name": spec["tag"]}}]}
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(index, f, sort_keys=True, separators=(",", ":"))
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    log(f"image {name}: docker-archive with skopeo")
    sh(["skopeo", "copy", "--quiet", f"oci:{layout}:{spec['tag']}",
        f"docker-archive:{archive}:{spec['repo']}:{spec['tag']}"])
    cache.mark(layout, recipe)
    return layout, spec["tag"], archive


def ensure_tools():
    need = [p for p, c in (("debootstrap", "debootstrap"), ("skopeo", "skopeo"), ("gcc", "gcc"),
                           ("libc6-dev", "/usr/lib/x86_64-linux-gnu/libc.a"), ("npm", "npm"))
            if not (os.path.exists(c) if c.startswith("/") else shutil.which(c))]
    if need:
        if os.geteuid() != 0:
            raise RuntimeError(f"corpus needs root and: {need}")
        log(f"installing from Debian: {' '.join(need)}")
        sh(["apt-get", "update", "-qq"])
        sh(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *need],
           env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    if os.geteuid() != 0:
        raise RuntimeError("building the corpus needs root (debootstrap, chroot, mount)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=os.path.join(HERE, ".cache"))
    ap.add_argument("images", nargs="*", help=f"default: all of {', '.join(IMAGES)}")
    args = ap.parse_args()
    ensure_tools()
    cache = Cache(args.cache)
    for name in args.images or IMAGES:
        layout, tag, archive = build_image(cache, name)
        print(f"{name}\toci:{layout}:{tag}\tdocker-archive:{archive}")


if __name__ == "__main__":
    main()
