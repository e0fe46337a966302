#!/usr/bin/env python3
"""Delta benchmark: sideload against the general tools, on the same inputs.

Called by bench/run.sh after the installs and the release build; stdlib only (HDiffPatch runs
in its own `python3 -c` process so that its time and memory are measured apart from this one).
The realistic scenarios' images come from corpus.py (cached in bench/.cache/).

  bench.py --bin target/release --work TMPDIR --out bench/results/latest.md [--scenario NAME]...
           [--only METHOD,...] [--no-peer-cache] [--no-exact] [--exact-writers zlib,go,pgzip]
           [--exact-apply-runs N]
           [--plugin [--plugin-pull-rounds N]]
           [--link | --link-only] [--link-seed N] [--link-up-s LO,HI] [--link-down-s LO,HI]
           [--link-budget-s S]

Wherever sideload runs, its bundle is also built from the images' gzip OCI layouts (`--exact
where-possible`), applied to an `oci:` layout whose manifest digest must be the source's, and
with `--exact never` from the same layouts: the bytes and time exactness costs (issues 7 and 19;
--no-exact skips it). That once per gzip writer of the layers (--exact-writers): as the corpus
writes them (zlib), written again by Go's compress/gzip (Docker, containerd) and by skopeo
(pgzip).

--plugin also delivers each scenario's bundle to sideload-registry-plugin in front of a
docker-registry on loopback (see "registry plugin" below and bench/README.md). --link (root)
delivers it over a 1 Mbit/s link with drops between two network namespaces, with `sideload push`
and with plain curl that starts over (see "shaped link with drops" below and bench/README.md).

The peers' rows (bsdiff, xdelta3, zstd, rdiff, HDiffPatch) are cached in
bench/.cache/peer-results/SCENARIO/METHOD.json and reused while their key matches: the tool's
version and binary, its options, the code of its method here, the machine (CPU, nproc) and the
identity of the files it reads. See "Peer result cache" below and bench/README.md.

Exit status: 0 when every tool that ran reproduced the target (a peer that was skipped, ran out
of its time limit or out of memory is reported, not a failure), 1 otherwise.
"""

import argparse
import datetime
import hashlib
import http.client
import inspect
import json
import os
import platform
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus  # noqa: E402

# ---------------------------------------------------------------------------------------------
# helpers


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run(cmd, **kw):
    """Runs a helper command (not measured); raises with its stderr on failure."""
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    if p.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, cmd))}: exit {p.returncode}\n{p.stderr.decode(errors='replace')}"
        )
    return p.stdout


class Measured:
    """Wall time (s) and peak RSS (KiB) of one command, as GNU time reports them."""

    def __init__(self, seconds, rss_kib, stdout):
        self.seconds = seconds
        self.rss_kib = rss_kib
        self.stdout = stdout


class ToolTimeout(Exception):
    pass


class ToolOutOfMemory(Exception):
    pass


# Set by main(): seconds one measured command may run, address-space limit (bytes) for it.
LIMITS = dict(timeout=1200, mem=16 << 30)

OOM_MARKS = ("MemoryError", "Cannot allocate memory", "bad_alloc", "out of memory", "Out of memory",
             "memory allocation failed", "not enough memory", "allocation error")


def timed(cmd, workdir, stdout_path=None):
    """Runs cmd under /usr/bin/time -f '%e %M', within LIMITS; raises on failure."""
    tf = os.path.join(workdir, ".time")
    out = open(stdout_path, "wb") if stdout_path else subprocess.PIPE
    mem = LIMITS["mem"]

    def limit():
        if mem:
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))

    try:
        p = subprocess.Popen(
            ["/usr/bin/time", "-f", "%e %M", "-o", tf] + [str(c) for c in cmd],
            stdout=out, stderr=subprocess.PIPE, start_new_session=True, preexec_fn=limit,
        )
        try:
            stdout, stderr = p.communicate(timeout=LIMITS["timeout"])
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            raise ToolTimeout(f"{os.path.basename(str(cmd[0]))}: over {LIMITS['timeout']} s")
    finally:
        if stdout_path:
            out.close()
    if p.returncode != 0:
        err = stderr.decode(errors="replace")
        if any(m in err for m in OOM_MARKS):
            raise ToolOutOfMemory(f"{os.path.basename(str(cmd[0]))}: out of memory "
                                  f"(limit {mem >> 30} GiB address space)")
        raise RuntimeError(
            f"{' '.join(map(str, cmd))}: exit {p.returncode}\n{err[-2000:]}"
        )

    with open(tf) as f:
        last = f.read().strip().splitlines()[-1]
    secs, rss = last.split()
    return Measured(float(secs), int(rss), stdout if not stdout_path else b"")


def combine(*ms):
    """Several steps of one side: times add up, memory is the largest peak."""
    return Measured(sum(m.seconds for m in ms), max(m.rss_kib for m in ms), b"")


# ---------------------------------------------------------------------------------------------
# peer result cache
#
# The peers' outputs do not change while their inputs and versions stay the same, and they take
# almost all of a full run (~1 h), so their rows are kept in bench/.cache/peer-results/SCENARIO/
# METHOD.json and reused while the key stored there equals the one computed now:
#   - versions: the Debian packages' versions (hdiffpatch: its PyPI version and python's), and
#     binaries: the resolved path, size and mtime of each command the method runs;
#   - options: --tool-timeout, --mem-limit-gib, and the tool's own (--zstd-level,
#     --bsdiff-max-bytes, ZSTD_* environment variables);
#   - code_sha256: the source of the tool's method below (command lines, fixed flags) and, for
#     HDiffPatch, its two scripts; PEER_CACHE_FORMAT: bump it when something else that shapes a
#     row changes (timed(), _check(), the row's fields);
#   - machine: CPU model and nproc (the times and RSS are the machine's);
#   - inputs: for each file the tool reads (old, new) its size, st_mtime_ns and the sha256 of its
#     first and last MiB; a file under --work (the demo archives, remade every run, and the
#     empty / one-byte old files) by its size and whole sha256 instead of its mtime.
# Only rows with status yes or skipped are stored; a failure, timeout or oom is run again next
# time. --no-peer-cache runs every peer and rewrites its file.

PEER_CACHE_FORMAT = 1

# method -> (Debian packages / PyPI names whose versions count, commands it runs)
PEER_TOOLS = {
    "bsdiff": (["bsdiff"], ["bsdiff", "bspatch"]),
    "xdelta3": (["xdelta3"], ["xdelta3"]),
    "zstd": (["zstd"], ["zstd"]),
    "rdiff": (["rdiff", "librsync2", "zstd"], ["rdiff", "zstd"]),
    "hdiffpatch": (["hdiffpatch", "python"], [sys.executable]),
}

DEB_PACKAGES = ("bsdiff", "xdelta3", "zstd", "rdiff", "librsync2", "skopeo", "golang-go")


def sh_out(cmd):
    try:
        return subprocess.run(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True).stdout.strip()
    except OSError:
        return "?"


def tool_versions():
    """Ordered dict: Debian package -> version (as dpkg-query lists them), then hdiffpatch (PyPI),
    python, cpu."""
    v = {}
    for line in sh_out("dpkg-query -W -f='${Package} ${Version}\\n' " + " ".join(DEB_PACKAGES)
                       + " 2>/dev/null").splitlines():
        if " " in line:
            p, ver = line.split(" ", 1)
            v[p] = ver
    v["hdiffpatch"] = sh_out(f"{sys.executable} -m pip show hdiffpatch 2>/dev/null | sed -n 's/^Version: //p'")
    v["python"] = platform.python_version()
    v["cpu"] = sh_out("sed -n 's/^model name\\s*: //p' /proc/cpuinfo | head -1") or platform.processor()
    return v


def binary_identity(cmd):
    path = shutil.which(cmd)
    if path is None:
        return None
    path = os.path.realpath(path)
    st = os.stat(path)
    return dict(path=path, size=st.st_size, mtime_ns=st.st_mtime_ns)


def measured_to_json(m):
    return None if m is None else dict(seconds=m.seconds, rss_kib=m.rss_kib)


def measured_from_json(j):
    return None if j is None else Measured(j["seconds"], j["rss_kib"], b"")


class PeerCache:
    KEEP = ("yes", "skipped")

    def __init__(self, root, enabled=True):
        self.root, self.enabled = root, enabled
        self.idents = {}
        self.hits = self.misses = 0

    def path(self, scenario, method):
        return os.path.join(self.root, scenario, method + ".json")

    def identity(self, path, work):
        """Size plus mtime and the sha256 of the first and last MiB; under `work` (remade every
        run) the whole sha256 instead of the mtime."""
        if path not in self.idents:
            st = os.stat(path)
            ident = dict(size=st.st_size)
            real, w = os.path.realpath(path), os.path.realpath(work)
            if os.path.commonpath([real, w]) == w:
                ident["sha256"] = sha256_file(path)
            else:
                ident["mtime_ns"] = st.st_mtime_ns
                with open(path, "rb") as f:
                    ident["head_sha256"] = hashlib.sha256(f.read(1 << 20)).hexdigest()
                    f.seek(max(0, st.st_size - (1 << 20)))
                    ident["tail_sha256"] = hashlib.sha256(f.read(1 << 20)).hexdigest()
            self.idents[path] = ident
        return self.idents[path]

    def load(self, scenario, method, key):
        """(row, None) when the stored key equals `key`, else (None, why not)."""
        if not self.enabled:
            self.misses += 1
            return None, "--no-peer-cache"
        try:
            with open(self.path(scenario, method)) as f:
                data = json.load(f)
        except FileNotFoundError:
            self.misses += 1
            return None, "no cached result"
        except (OSError, ValueError) as e:
            self.misses += 1
            return None, f"unreadable cache file ({e})"
        old = data.get("key") if isinstance(data, dict) else None
        if old != key:
            self.misses += 1
            if not isinstance(old, dict):
                return None, "cache key differs"
            diff = sorted(k for k in set(old) | set(key) if old.get(k) != key.get(k))
            return None, "cache key differs in " + ", ".join(diff)
        r = data["row"]
        note = r.get("note") or ""
        row = dict(bytes=r["bytes"], enc=measured_from_json(r["enc"]), dec=measured_from_json(r["dec"]),
                   status=r["status"], measured=data["measured"],
                   note=(note + " " if note else "") + f"(cached result of {data['measured']})")
        self.hits += 1
        return row, None

    def store(self, scenario, method, key, row, measured):
        """Writes the row (atomically); returns a remark for the progress line."""
        p = self.path(scenario, method)
        data = dict(key=key, measured=measured,
                    row=dict(tool=row["tool"], bytes=row["bytes"], enc=measured_to_json(row["enc"]),
                             dec=measured_to_json(row["dec"]), status=row["status"], note=row["note"]))
        try:
            os.makedirs(os.path.dirname(p), exist_ok=True)
            tmp = p + f".tmp{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.write("\n")
            os.replace(tmp, p)
        except OSError as e:
            return f"; could not write the peer cache: {e}"
        return "; stored in the peer cache"


# ---------------------------------------------------------------------------------------------
# images


def oci_manifest(layout_dir):
    with open(os.path.join(layout_dir, "index.json")) as f:
        index = json.load(f)
    digest = index["manifests"][0]["digest"]
    with open(os.path.join(layout_dir, "blobs", *digest.split(":"))) as f:
        manifest = json.load(f)
    cdig = manifest["config"]["digest"]
    with open(os.path.join(layout_dir, "blobs", *cdig.split(":"))) as f:
        config = json.load(f)
    return manifest, config


def archive_facts(path):
    """diff_ids of the image in a docker-archive (docker save) file, and its uncompressed size
    (layer tars plus config)."""
    with tarfile.open(path) as t:
        manifest = json.load(t.extractfile("manifest.json"))[0]
        config = json.load(t.extractfile(manifest["Config"]))
        raw = t.getmember(manifest["Config"]).size + sum(t.getmember(l).size for l in manifest["Layers"])
    return config["rootfs"]["diff_ids"], raw


def archive_diff_ids(path):
    return archive_facts(path)[0]


def check_rebuilt_archive(path, want_config_sha, want_diff_ids):
    """The rebuilt docker-archive has the target's config and exactly its layer tars."""
    cfg = run(["skopeo", "inspect", "--config", "--raw", f"docker-archive:{path}"])
    if hashlib.sha256(cfg).hexdigest() != want_config_sha:
        return "config digest differs"
    with tarfile.open(path) as t:
        manifest = json.load(t.extractfile("manifest.json"))[0]
        if len(manifest["Layers"]) != len(want_diff_ids):
            return "layer count differs"
        for name, want in zip(manifest["Layers"], want_diff_ids):
            h = hashlib.sha256()
            f = t.extractfile(name)
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
            if "sha256:" + h.hexdigest() != want:
                return f"layer {name} differs"
    return None


def layout_manifest(layout_dir, tag=None):
    """(manifest digest, manifest) of the image tagged `tag` in an OCI layout (the first one
    without a tag)."""
    with open(os.path.join(layout_dir, "index.json")) as f:
        entries = json.load(f)["manifests"]
    entry = next((m for m in entries
                  if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") == tag), None)
    if entry is None:
        if tag is not None:
            raise RuntimeError(f"{layout_dir}: no image tagged {tag}")
        entry = entries[0]
    with open(os.path.join(layout_dir, "blobs", *entry["digest"].split(":"))) as f:
        return entry["digest"], json.load(f)


def delta_stats(report):
    """What a `sideload build --json` report says of its deltas, to tell two builds' deltas apart:
    payload bytes without the recipes, files patched with bsdiff and zstd, patch bytes."""
    layers = report.get("layers", [])
    return dict(payload=(report.get("payload_size") or 0) - (report.get("recipe_bytes") or 0),
                bsdiff=sum(l.get("bsdiff_patched_files", 0) for l in layers),
                zstd=sum(l.get("zstd_patched_files", 0) for l in layers),
                patch=sum(l.get("patch_bytes", 0) for l in layers))


def link_tree(src, dst):
    """A copy of directory `src` at `dst` made of hard links (plain copies across filesystems):
    a device's own copy of an OCI layout, which `sideload apply --base-dir` takes only as a real
    directory, not a symlink."""
    for root, dirs, files in os.walk(src):
        out = os.path.join(dst, os.path.relpath(root, src))
        os.makedirs(out, exist_ok=True)
        for n in files:
            try:
                os.link(os.path.join(root, n), os.path.join(out, n))
            except OSError:
                shutil.copyfile(os.path.join(root, n), os.path.join(out, n))


def link_or_copy(src, dst):
    """Hard-links `src` to `dst` (a copy across filesystems); `dst` already there is kept."""
    if os.path.exists(dst):
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def write_manifest(layout, manifest, src_layout, src_digest):
    """Stores `manifest` (a dict) as a blob of the OCI layout `layout` and writes its
    index.json: the source layout's index with the entry for `src_digest` pointing at it
    (annotations such as the tag kept), every other entry dropped."""
    raw = json.dumps(manifest, separators=(",", ":")).encode()
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    with open(os.path.join(layout, "blobs", *digest.split(":")), "wb") as f:
        f.write(raw)
    with open(os.path.join(src_layout, "index.json")) as f:
        index = json.load(f)
    entry = next(m for m in index["manifests"] if m["digest"] == src_digest)
    entry.update(digest=digest, size=len(raw))
    index["manifests"] = [entry]
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(index, f, separators=(",", ":"))
    return digest


# Go's compress/gzip as Docker, BuildKit and containerd use it (containerd's
# archive/compression.CompressStream: gzip.NewWriter, the default level): stdin to stdout.
# Standard library only; built by Bench.go_gzip_binary() with Debian's `go` in GOPATH mode.
GO_GZIP = """\
package main

import (
\t"bufio"
\t"compress/gzip"
\t"io"
\t"os"
)

func main() {
\tout := bufio.NewWriterSize(os.Stdout, 1<<20)
\tw := gzip.NewWriter(out)
\tif _, err := io.Copy(w, bufio.NewReaderSize(os.Stdin, 1<<20)); err != nil {
\t\tpanic(err)
\t}
\tif err := w.Close(); err != nil {
\t\tpanic(err)
\t}
\tif err := out.Flush(); err != nil {
\t\tpanic(err)
\t}
}
"""


def check_rebuilt_oci(out, tag, want_manifest, want_config, sc, exact):
    """The OCI layout apply wrote: its manifest (`skopeo inspect --raw`) has the digest
    `want_manifest`; the config and every layer blob in it hash to their descriptors; the config
    is `want_config` (the source layout's); not exact, the layers are the uncompressed tars of
    the target's diff_ids. Returns (error or None, the rebuilt manifest's digest)."""
    raw = run(["skopeo", "inspect", "--raw", f"oci:{out}:{tag}"])
    got = "sha256:" + hashlib.sha256(raw).hexdigest()
    if got != want_manifest:
        return f"manifest {got} is not {want_manifest}", got
    manifest = json.loads(raw)
    if manifest["config"]["digest"] != want_config:
        return f"config digest {manifest['config']['digest']} is not the source's {want_config}", got
    for desc in [manifest["config"]] + manifest["layers"]:
        path = os.path.join(out, "blobs", *desc["digest"].split(":"))
        if not os.path.exists(path):
            return f"blob {desc['digest']} missing", got
        if os.path.getsize(path) != desc["size"] or "sha256:" + sha256_file(path) != desc["digest"]:
            return f"blob {desc['digest']} does not hash to its digest", got
    if len(manifest["layers"]) != len(sc["diff_ids"]):
        return "layer count differs", got
    if not exact:
        for i, (desc, want) in enumerate(zip(manifest["layers"], sc["diff_ids"])):
            if desc["digest"] != want:
                return f"layer {i} is not the target's diff_id {want}", got
    return None, got


class ScratchWatch:
    """Samples, while `sideload apply` runs, the size of its scratch store (the file `scratch`
    in the `.sideload-apply-*` staging directory it makes next to its output): the largest size
    seen, in bytes actually allocated on disk."""

    def __init__(self, d):
        self.d, self.peak, self.stop = d, 0, threading.Event()
        self.t = threading.Thread(target=self.loop, daemon=True)

    def loop(self):
        while not self.stop.wait(0.05):
            try:
                for n in os.listdir(self.d):
                    if n.startswith(".sideload-apply-"):
                        st = os.stat(os.path.join(self.d, n, "scratch"))
                        self.peak = max(self.peak, min(st.st_size, st.st_blocks * 512))
            except OSError:
                pass

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *a):
        self.stop.set()
        self.t.join()


# ---------------------------------------------------------------------------------------------
# registry plugin (--plugin): the device daemon in front of a local distribution registry
#
# For a scenario, with the bundle sideload just built and signed: a docker-registry on a free
# loopback port (storage in the work directory) seeded with the old image, the daemon in front
# of it trusting the bench key, one upload of the bundle; measured: the upload request, upload
# complete -> the tag answers with the statement's manifest digest through the plugin, the
# daemon's peak RSS (VmHWM), and the same image pulled with skopeo through the plugin and
# straight from the registry, PLUGIN_PULL_ROUNDS times each, alternating.

PLUGIN_PULL_ROUNDS = 2  # --plugin-pull-rounds
PLUGIN_POLL_S = 0.05
MANIFEST_ACCEPT = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def proc_status_kib(pid, field):
    """VmRSS / VmHWM of a process, KiB (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def proc_cpu_seconds(pid):
    """User + system CPU seconds a process used so far (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def tree_bytes(root, part=None):
    """Bytes of the files under root (only in directories named `part`, when given)."""
    total = 0
    for dirpath, _, files in os.walk(root):
        if part and part not in dirpath.split(os.sep):
            continue
        for n in files:
            try:
                total += os.lstat(os.path.join(dirpath, n)).st_size
            except OSError:
                pass
    return total


def http_request(port, method, path, body=None, headers=None, timeout=30, host="127.0.0.1"):
    """(status, headers dict with lower-case names, body bytes) of one request to host:port."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout, blocksize=1 << 20)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def wait_http(port, path, proc, log, timeout=60, host="127.0.0.1"):
    """Waits until GET path answers 200; raises with the log's tail if proc died or time ran out."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"exited ({proc.returncode}) before answering on {port}: {tail(log)}")
        try:
            if http_request(port, "GET", path, timeout=5, host=host)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"no answer on {host}:{port}{path} after {timeout} s: {tail(log)}")


def tail(path, lines=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:]).strip()
    except OSError:
        return ""


def stop_process(p, log=None):
    """Stops one process this bench started, by its pid: SIGTERM, then SIGKILL after 15 s."""
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if log:
        log.close()


def start_logged(cmd, log_path, started, env=None):
    """Starts a server process in its own session, output to log_path; appends (proc, log file)
    to `started`, which the caller stops with stop_all() whatever happens."""
    lf = open(log_path, "wb")
    try:
        p = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, env=env)
    except BaseException:
        lf.close()
        raise
    started.append((p, lf))
    return p


def stop_all(started):
    """Stops what start_logged() started, last first."""
    for p, lf in reversed(started):
        stop_process(p, lf)
    started.clear()


# ---------------------------------------------------------------------------------------------
# shaped link with drops (--link)
#
# A scenario's bundle delivered over a 1 Mbit/s link that drops (issue 6): once by `sideload
# push` (resumes where the device stopped) and once by plain curl (starts over after every
# failure), each to a fresh device, each meeting the same drop schedule from its own start.
#
# The link is a veth pair. The device end (LINK_DEV_IF, DEVICE_IP) stays in the root namespace,
# where the daemon listens on DEVICE_IP and docker-registry on loopback; the client end
# (LINK_CLI_IF, CLIENT_IP) is alone in the namespace LINK_NS, where only the client runs (`ip
# netns exec`). Both ends' egress go through tbf (LINK_TBF; this kernel has no netem). A drop sets
# the device end down: the client's end loses carrier and its packets vanish without an error on
# its side, so TCP retransmits until the link is back (checked: a sender's writes just stall). The
# client's ARP entry for the device is permanent: losing carrier flushes learned entries, and a
# failed ARP would answer new connections with EHOSTUNREACH ("No route to host") after ~3 s,
# which a real link does not do; with it a connect during a drop times out, as over a real link.
# While the device end is down the kernel removes its connected route, so a blackhole route for
# the link's /30 (metric 4000, used only then) keeps the device's replies off the default route.
# IPv6 is off on both ends, so the device end's counters see the transfer and a few ARP packets.
#
# Bytes on the wire: the device end's rx_bytes / rx_packets (what reached the device; the
# Ethernet header is counted, no FCS). TCP payload ~ rx_bytes - rx_packets * TCP_HEADERS, exact
# per skb whatever GSO merged; each run checks it on the clean link first (the calibration).

LINK_NS = "sl-bench-cli"
LINK_DEV_IF, LINK_CLI_IF = "sl-bench-dev", "sl-bench-cli"
LINK_NET, DEVICE_IP, CLIENT_IP = "10.213.0.0/30", "10.213.0.1", "10.213.0.2"
LINK_TBF = ["tbf", "rate", "1mbit", "burst", "32kbit", "latency", "400ms"]
LINK_UP_S, LINK_DOWN_S = (30.0, 90.0), (3.0, 15.0)  # uniform ranges, seconds
LINK_SEED = 6  # --link-seed
# No progress for this long means a dead link, for both clients: `sideload push --stall-timeout`
# and curl's `--speed-limit 1 --speed-time`.
LINK_STALL_S = 20
LINK_CURL_PAUSE_S = 2  # curl: pause before starting over
LINK_BUDGET_FACTOR, LINK_BUDGET_MIN_S = 3, 1200  # curl's budget: 3 x push's wall time, >= 20 min
LINK_PUSH_CAP_S = 3600  # sideload push --deadline
LINK_CALIBRATION_BYTES = 2 << 20
TCP_HEADERS = 66  # Ethernet 14 + IPv4 20 + TCP 20 + timestamps option 12
LINK_POLL_S = 0.25
# The clients talk to DEVICE_IP directly, whatever proxy the caller's environment names.
CLIENT_ENV = {k: v for k, v in os.environ.items()
              if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}


def link_preflight():
    """What --link lacks on this machine (empty when nothing)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (network namespaces, veth, tc)")
    for cmd, pkg in (("ip", "iproute2"), ("tc", "iproute2"), ("curl", "curl")):
        if shutil.which(cmd) is None:
            missing.append(f"`{cmd}` (Debian package {pkg})")
    return missing


class LinkError(Exception):
    pass


class Link:
    """The namespace, the veth pair, the shaping and the blackhole route; as a context manager
    it removes all of them on the way out, whatever happened."""

    def __init__(self):
        self.undo = []

    def __enter__(self):
        try:
            self.setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def setup(self):
        names = run(["ip", "netns", "list"]).decode().split()
        if LINK_NS in names or os.path.exists(f"/sys/class/net/{LINK_DEV_IF}"):
            raise LinkError(f"network namespace {LINK_NS} or interface {LINK_DEV_IF} exists already (another "
                            f"bench run, or one that was killed): remove them with `ip netns del {LINK_NS}; "
                            f"ip link del {LINK_DEV_IF}; ip route del blackhole {LINK_NET} metric 4000`")
        run(["ip", "netns", "add", LINK_NS])
        self.undo.append(["ip", "netns", "del", LINK_NS])
        run(["ip", "link", "add", LINK_DEV_IF, "type", "veth", "peer", "name", LINK_CLI_IF, "netns", LINK_NS])
        self.undo.append(["ip", "link", "del", LINK_DEV_IF])  # takes its peer with it
        run(["ip", "route", "add", "blackhole", LINK_NET, "metric", "4000"])
        self.undo.append(["ip", "route", "del", "blackhole", LINK_NET, "metric", "4000"])
        try:
            with open(f"/proc/sys/net/ipv6/conf/{LINK_DEV_IF}/disable_ipv6", "w") as f:
                f.write("1")
        except OSError:
            pass  # no IPv6 in this kernel
        subprocess.run(self.client(["sh", "-c", f"echo 1 > /proc/sys/net/ipv6/conf/{LINK_CLI_IF}/disable_ipv6"]),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        run(["ip", "addr", "add", DEVICE_IP + "/30", "dev", LINK_DEV_IF])
        run(["ip", "-n", LINK_NS, "addr", "add", CLIENT_IP + "/30", "dev", LINK_CLI_IF])
        run(["ip", "-n", LINK_NS, "link", "set", "lo", "up"])
        run(["ip", "-n", LINK_NS, "link", "set", LINK_CLI_IF, "up"])
        run(["ip", "link", "set", LINK_DEV_IF, "up"])
        with open(f"/sys/class/net/{LINK_DEV_IF}/address") as f:
            mac = f.read().strip()
        run(["ip", "-n", LINK_NS, "neigh", "replace", DEVICE_IP, "lladdr", mac, "dev", LINK_CLI_IF, "nud", "permanent"])
        run(["tc", "qdisc", "add", "dev", LINK_DEV_IF, "root", *LINK_TBF])
        run(["tc", "-n", LINK_NS, "qdisc", "add", "dev", LINK_CLI_IF, "root", *LINK_TBF])
        self.qdisc = run(["tc", "qdisc", "show", "dev", LINK_DEV_IF]).decode().strip()

    def close(self):
        for cmd in reversed(self.undo):
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            if p.returncode != 0:
                print(f"   warning: cleanup `{' '.join(cmd)}` failed: {p.stderr.decode(errors='replace').strip()}",
                      flush=True)
        self.undo = []

    @staticmethod
    def client(cmd):
        """cmd, run in the client's namespace."""
        return ["ip", "netns", "exec", LINK_NS] + [str(c) for c in cmd]

    @staticmethod
    def set_up(up):
        run(["ip", "link", "set", LINK_DEV_IF, "up" if up else "down"])

    @staticmethod
    def counters():
        """The device end's counters (rx: client -> device)."""
        out = {}
        for k in ("rx_bytes", "rx_packets", "tx_bytes", "tx_packets"):
            with open(f"/sys/class/net/{LINK_DEV_IF}/statistics/{k}") as f:
                out[k] = int(f.read())
        return out


def link_plan(seed, n, up_s=LINK_UP_S, down_s=LINK_DOWN_S):
    """The first n (up s, down s) pairs of the schedule for `seed`."""
    rng = random.Random(seed)
    return [(rng.uniform(*up_s), rng.uniform(*down_s)) for _ in range(n)]


class DropSchedule:
    """From its start: the link up for U ~ uniform(up_s) s, down for D ~ uniform(down_s) s,
    repeating, drawn from random.Random(seed) as link_plan() draws them, so every transfer meets
    the same drops at the same moments from its own start. Records the drops it applied (seconds
    from its start) and leaves the link up when it stops."""

    def __init__(self, link, seed, label, t0, up_s=LINK_UP_S, down_s=LINK_DOWN_S):
        self.link, self.seed, self.label, self.t0 = link, seed, label, t0
        self.up_s, self.down_s = up_s, down_s
        self.drops, self.error = [], None
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.loop, daemon=True)

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.t.join()
        self.link.set_up(True)

    def now(self):
        return time.monotonic() - self.t0

    def loop(self):
        rng, at = random.Random(self.seed), 0.0
        try:
            while True:
                up, down = rng.uniform(*self.up_s), rng.uniform(*self.down_s)
                at += up
                if self.stop.wait(max(0.0, self.t0 + at - time.monotonic())):
                    return
                self.link.set_up(False)
                drop = dict(planned_at=round(at, 2), planned_s=round(down, 2), down_at=round(self.now(), 2))
                self.drops.append(drop)
                print(f"      [{self.label} {drop['down_at']:7.1f} s] link down for {down:.1f} s", flush=True)
                at += down
                self.stop.wait(max(0.0, self.t0 + at - time.monotonic()))
                self.link.set_up(True)
                drop["up_at"] = round(self.now(), 2)
                print(f"      [{self.label} {drop['up_at']:7.1f} s] link up", flush=True)
                if self.stop.is_set():
                    return
        except Exception as e:  # reported with the transfer; __exit__ still sets the link up
            self.error = str(e).strip()


class DeviceWatch:
    """While a transfer runs, every LINK_POLL_S: the bundle's state on the device (asked on the
    device's own address, which does not cross the link), the bytes of unfinished uploads
    (`.part` files) in its data directory, and the device end's rx_bytes (to see when data flows
    again after a drop)."""

    def __init__(self, port, bundle_id, uploads_dir, t0):
        self.port, self.bundle_id, self.uploads_dir, self.t0 = port, bundle_id, uploads_dir, t0
        self.queued = self.applied = self.ended = None
        self.state = self.reason = None
        self.part_peak, self.samples = 0, []
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.loop, daemon=True)

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.t.join()

    def part_bytes(self):
        total = 0
        try:
            for n in os.listdir(self.uploads_dir):
                if n.endswith(".part"):
                    total += os.path.getsize(os.path.join(self.uploads_dir, n))
        except OSError:
            pass
        return total

    def loop(self):
        while True:
            now = time.monotonic() - self.t0
            self.samples.append((now, Link.counters()["rx_bytes"]))
            self.part_peak = max(self.part_peak, self.part_bytes())
            if self.ended is None:
                try:
                    st, _, body = http_request(self.port, "GET", f"/sideload/v1/bundles/{self.bundle_id}",
                                               timeout=5, host=DEVICE_IP)
                except OSError:
                    st = None
                if st == 200:
                    b = json.loads(body)["bundle"]
                    self.state, self.reason = b["state"], b.get("reason")
                    if self.queued is None:
                        self.queued = now
                    if self.state == "applied":
                        self.applied = self.ended = now
                    elif self.state in ("failed", "refused"):
                        self.ended = now
            if self.stop.wait(LINK_POLL_S):
                return

    def wait_end(self, timeout):
        end = time.monotonic() + timeout
        while self.ended is None and time.monotonic() < end:
            time.sleep(LINK_POLL_S)

    def data_again(self, after, until):
        """Seconds from `after` until the device received data (> 2000 B in one sample) again,
        None if not before `until`."""
        prev = None
        for t, rx in self.samples:
            if prev is not None and t > after and t <= until and rx - prev > 2000:
                return round(t - after, 2)
            prev = rx
        return None


class StampedLines:
    """Copies a process's stderr to a log, each line prefixed with the seconds since t0; keeps
    the (seconds, line) pairs."""

    def __init__(self, stream, log_path, t0):
        self.stream, self.log_path, self.t0, self.lines = stream, log_path, t0, []
        self.t = threading.Thread(target=self.loop, daemon=True)
        self.t.start()

    def loop(self):
        with open(self.log_path, "a") as log:
            for raw in iter(self.stream.readline, b""):
                t = time.monotonic() - self.t0
                line = raw.decode(errors="replace").rstrip()
                self.lines.append((t, line))
                log.write(f"[{t:8.2f} s] {line}\n")
                log.flush()

    def join(self):
        self.t.join()


def metric(port, name):
    """One counter from the daemon's /metrics (asked on the device's own address)."""
    st, _, body = http_request(port, "GET", "/metrics", host=DEVICE_IP)
    if st != 200:
        raise RuntimeError(f"GET /metrics: {st}")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))
    raise RuntimeError(f"/metrics has no {name}")


def curl_in(link, args, body_path, timeout):
    """One curl in the client's namespace: a dict with its exit code, the HTTP status, bytes of
    the body it sent (size_upload), of its request headers (size_request), seconds, its error."""
    p = subprocess.run(
        link.client(["curl", "-sS", "--noproxy", "*", "-o", body_path,
                     "-w", "%{http_code} %{size_upload} %{size_request} %{time_total}", *args]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=CLIENT_ENV, timeout=timeout)
    parts = p.stdout.decode().split()
    code, up, req, secs = (parts + ["0", "0", "0", "0"])[:4]
    return dict(exit=p.returncode, code=int(code), size_upload=int(float(up)), size_request=int(float(req)),
                secs=float(secs), error=p.stderr.decode(errors="replace").strip())


def read_json(path):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read() or b"null")
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# tools: each returns a row dict: bytes, enc (Measured|None), dec (Measured|None), status, note;
# status is "yes" (reproduced), "NO" (did not), "FAILED", "timeout", "oom" or "skipped".

HDIFF_ENCODE = r"""
import sys, hdiffpatch
old = open(sys.argv[1], 'rb').read()
new = open(sys.argv[2], 'rb').read()
cfg = hdiffpatch.LzmaConfig(level=9, window=int(sys.argv[4]), threads=1)
patch = hdiffpatch.diff(old, new, cfg, validate=False)
open(sys.argv[3], 'wb').write(patch)
"""

HDIFF_DECODE = r"""
import sys, hdiffpatch
old = open(sys.argv[1], 'rb').read()
patch = open(sys.argv[2], 'rb').read()
open(sys.argv[3], 'wb').write(hdiffpatch.apply(old, patch))
"""


def log2_ceil(n, lo, hi):
    b = lo
    while (1 << b) < n and b < hi:
        b += 1
    return b


def mib(n):
    return f"{n / (1 << 20):.1f} MiB"


class Skip(Exception):
    pass


class Bench:
    def __init__(self, args):
        self.bin = os.path.abspath(args.bin)
        self.work = os.path.abspath(args.work)
        self.zstd_level = args.zstd_level
        self.bsdiff_max = args.bsdiff_max_bytes
        self.cache = args.cache
        self.plugin = args.plugin
        self.plugin_pull_rounds = args.plugin_pull_rounds
        self.link = args.link or args.link_only
        self.link_seed, self.link_budget = args.link_seed, args.link_budget_s
        self.link_up_s, self.link_down_s = args.link_up_s, args.link_down_s
        # The daemon's log of each --plugin run is kept next to the markdown report.
        self.log_dir = os.path.dirname(os.path.abspath(args.out))
        self.peer_cache = PeerCache(os.path.join(self.cache, "peer-results"), enabled=not args.no_peer_cache)
        self.exact = not args.no_exact
        self.exact_writers = args.exact_writers
        self.exact_apply_runs = args.exact_apply_runs
        self.gzip_layouts = {}  # docker-archive -> a gzip OCI layout skopeo wrote of it (exact_layouts)
        self.writer_layout_memo = {}  # (writer, layout, tag) -> that image's layout with writer's blobs
        self.go_blob_memo = {}  # source blob digest -> (Go's blob digest, size, path)
        self.go_gzip = None  # the Go gzip filter, once built
        self.versions = tool_versions()
        # Read now: the file may be edited while a long run goes on.
        self.code_sha256 = {}
        for m in self.PEERS:
            code = inspect.getsource(getattr(Bench, m)) + (HDIFF_ENCODE + HDIFF_DECODE if m == "hdiffpatch" else "")
            self.code_sha256[m] = hashlib.sha256(code.encode()).hexdigest()

    def sideload(self, sc, d):
        sl, sign = os.path.join(self.bin, "sideload"), os.path.join(self.bin, "sideload-sign")
        device = os.path.join(d, "device")
        os.makedirs(device)
        bases = []
        if sc["old"] is not None:
            dst = os.path.join(device, "held.tar")
            try:
                os.link(sc["old"], dst)
            except OSError:
                os.symlink(sc["old"], dst)
            bases = ["--base", f"docker-archive:{dst}"]
        bundle = os.path.join(d, "app.bundle")
        stmt = os.path.join(d, "statement.json")
        enc = timed(
            [sl, "build", f"docker-archive:{sc['new']}", *bases, "-o", bundle,
             "--repository", sc["repo"], "--tag", sc["tag"], "--statement-out", stmt, "--json"],
            d,
        )
        report = json.loads(enc.stdout)
        sig = os.path.join(d, "bench.sig")
        # Signing is a separate offline step (a few ms): run, not timed.
        run([sign, "sign", "--key", self.key, stmt, "-o", sig])
        run([sl, "attach", bundle, sig, "--policy", self.policy])
        size = os.path.getsize(bundle)
        info = json.loads(run([sl, "inspect", bundle, "--json"]))
        scratch = info.get("statement", {}).get("payload", {}).get("scratch_bytes")
        out = os.path.join(d, "rebuilt.tar")
        with ScratchWatch(d) as watch:
            dec = timed(
                [sl, "apply", bundle, "--policy", self.policy, "--base-dir", device,
                 "--output", f"docker-archive:{out}"],
                d,
            )
        err = check_rebuilt_archive(out, sc["config_sha"], sc["diff_ids"])
        enc_kinds = {}
        for layer in report.get("layers", []):
            k = layer.get("encoding", "?")
            k = k if isinstance(k, str) else next(iter(k), "?")
            enc_kinds[k] = enc_kinds.get(k, 0) + 1
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(enc_kinds.items()))
        note = f"layers: {kinds}; payload {report.get('payload_size', '?')} B"
        note += f"; apply scratch: declared {scratch} B, seen {watch.peak} B"
        if err:
            note += f"; MISMATCH: {err}"
        else:
            note += "; config digest + every layer diff_id match"
        sc["sideload_apply"] = dict(rss_kib=dec.rss_kib, scratch=scratch, scratch_seen=watch.peak,
                                    seconds=dec.seconds)
        sc["sideload_delta"] = delta_stats(report)  # for the exact measurement's notes
        return dict(bytes=size, enc=enc, dec=dec, status="NO" if err else "yes", note=note)

    # -----------------------------------------------------------------------------------------
    # exact manifest digest (issue 7, issue 19): the same scenario from gzip OCI layouts, so that
    # the device can serve the source's own manifest; what that costs over `--exact never` from
    # the same layouts. Once per gzip writer (--exact-writers): the layers as the corpus and the
    # demo write them (zlib), as Go's compress/gzip writes them (Docker, BuildKit, containerd),
    # and as pgzip writes them (skopeo, podman, buildah through containers/image).

    def exact_layouts(self, sc):
        """(target layout, tag, old layout or None, its tag) with gzip layers for the exact
        measurement: the scenario's own OCI layouts (corpus.py and make-demo-images write gzip
        ones). Should a layout hold other layers, both images are written again from their
        docker-save archives with `skopeo copy --dest-compress-format gzip` (the same gzip
        writer for both, so the layers they share stay byte-identical), once per run."""
        want = [(sc["layout"], sc["layout_tag"], sc["new"])]
        if sc["old_layout"]:
            want.append((sc["old_layout"], sc["old_layout_tag"], sc["old"]))
        if all(l["mediaType"].endswith("gzip") for lay, tag, _ in want for l in layout_manifest(lay, tag)[1]["layers"]):
            return sc["layout"], sc["layout_tag"], sc["old_layout"], sc["old_layout_tag"]
        out = []
        for lay, tag, archive in want:
            if archive not in self.gzip_layouts:
                dst = os.path.join(self.work, "gzip-layouts", f"{len(self.gzip_layouts)}")
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                run(["skopeo", "copy", "--quiet", "--dest-compress", "--dest-compress-format", "gzip",
                     f"docker-archive:{archive}", f"oci:{dst}:{tag}"])
                self.gzip_layouts[archive] = dst
            out += [self.gzip_layouts[archive], tag]
        return tuple(out + [None, None])[:4]

    def writer_layouts(self, sc, writer):
        """exact_layouts(sc) with every gzip layer blob written again by `writer`, target and
        base alike (a device that got the base from such a registry holds such blobs): (target
        layout, tag, old layout or None, its tag). Each image is converted once per run."""
        layout, tag, old_layout, old_tag = self.exact_layouts(sc)
        if writer == "zlib":
            return layout, tag, old_layout, old_tag
        convert = self.go_layout if writer == "go" else self.pgzip_layout
        out = []
        for lay, t in ((layout, tag), (old_layout, old_tag)):
            if lay is None:
                out += [None, None]
                continue
            key = (writer, os.path.realpath(lay), t)
            if key not in self.writer_layout_memo:
                dst = os.path.join(self.work, "writer-layouts", writer, str(len(self.writer_layout_memo)))
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                convert(lay, t, dst)
                self.writer_layout_memo[key] = dst
            out += [self.writer_layout_memo[key], t]
        return tuple(out)

    def go_gzip_binary(self):
        """GO_GZIP (stdin -> gzip.NewWriter -> stdout) built once per run with Debian's `go`,
        GOPATH mode (no modules, nothing downloaded), its caches in the work directory."""
        if self.go_gzip is None:
            d = os.path.join(self.work, "go-gzip")
            os.makedirs(d, exist_ok=True)
            src = os.path.join(d, "gogzip.go")
            with open(src, "w") as f:
                f.write(GO_GZIP)
            exe = os.path.join(d, "gogzip")
            env = dict(os.environ, GO111MODULE="off", GOCACHE=os.path.join(d, "gocache"),
                       GOPATH=os.path.join(d, "gopath"), GOFLAGS="")
            run(["go", "build", "-o", exe, src], env=env)
            self.go_gzip = exe
        return self.go_gzip

    def go_layout(self, src, tag, dst):
        """A copy of the OCI layout `src` (image `tag`) at `dst` whose gzip layer blobs are
        decompressed (`gzip -dc`) and compressed again by Go's compress/gzip at its default
        level, as Docker and containerd write layers; the manifest's layer digests and sizes and
        the index follow. The config (and so the diff_ids) is untouched. A blob already converted
        this run (a layer two images share) is reused, so shared layers stay shared."""
        gogz = self.go_gzip_binary()
        digest, manifest = layout_manifest(src, tag)
        blobs = os.path.join(dst, "blobs", "sha256")
        os.makedirs(blobs)
        shutil.copyfile(os.path.join(src, "oci-layout"), os.path.join(dst, "oci-layout"))
        cfg = manifest["config"]["digest"]
        link_or_copy(os.path.join(src, "blobs", *cfg.split(":")), os.path.join(dst, "blobs", *cfg.split(":")))
        for layer in manifest["layers"]:
            if not layer["mediaType"].endswith("gzip"):
                p = os.path.join("blobs", *layer["digest"].split(":"))
                link_or_copy(os.path.join(src, p), os.path.join(dst, p))
                continue
            done = self.go_blob_memo.get(layer["digest"])
            if done is None:
                tmp = os.path.join(blobs, "tmp")
                with open(tmp, "wb") as out:
                    gunzip = subprocess.Popen(["gzip", "-dc", os.path.join(src, "blobs", *layer["digest"].split(":"))],
                                              stdout=subprocess.PIPE)
                    go = subprocess.run([gogz], stdin=gunzip.stdout, stdout=out, stderr=subprocess.PIPE)
                    gunzip.stdout.close()
                    if gunzip.wait() != 0 or go.returncode != 0:
                        raise RuntimeError(f"recompressing {layer['digest']} with Go's gzip: gzip exit "
                                           f"{gunzip.returncode}, gogzip exit {go.returncode}: {go.stderr.decode()[-500:]}")
                new = "sha256:" + sha256_file(tmp)
                path = os.path.join(blobs, new.split(":")[1])
                os.replace(tmp, path)
                done = (new, os.path.getsize(path), path)
                self.go_blob_memo[layer["digest"]] = done
            else:
                link_or_copy(done[2], os.path.join(blobs, done[0].split(":")[1]))
            if done[0] == layer["digest"]:
                raise RuntimeError(f"Go's gzip wrote the same blob as the source's {layer['digest']}")
            layer["digest"], layer["size"] = done[0], done[1]
        write_manifest(dst, manifest, src, digest)

    def pgzip_layout(self, src, tag, dst):
        """A copy of the OCI layout `src` (image `tag`) at `dst` with its layers compressed again
        by skopeo (pgzip, as containers/image writes them): `skopeo copy --dest-decompress
        oci:SRC dir:RAW`, then `skopeo copy --dest-compress --dest-compress-format gzip dir:RAW
        oci:DST` (skopeo 1.9 copies a gzip blob into oci: unchanged, even with --dest-compress,
        and does not decompress into oci:, so the layers go through dir: uncompressed). Checked:
        the config is the source's and no layer blob is."""
        raw = dst + ".raw"
        try:
            run(["skopeo", "copy", "--quiet", "--dest-decompress", f"oci:{src}:{tag}", f"dir:{raw}"])
            run(["skopeo", "copy", "--quiet", "--dest-compress", "--dest-compress-format", "gzip",
                 f"dir:{raw}", f"oci:{dst}:{tag}"])
        finally:
            shutil.rmtree(raw, ignore_errors=True)
        _, before = layout_manifest(src, tag)
        _, after = layout_manifest(dst, tag)
        if after["config"]["digest"] != before["config"]["digest"]:
            raise RuntimeError(f"skopeo changed the config of {src}:{tag}")
        if len(after["layers"]) != len(before["layers"]):
            raise RuntimeError(f"skopeo changed the layer count of {src}:{tag}")
        old = {l["digest"] for l in before["layers"]}
        for l in after["layers"]:
            if l["digest"] in old or not l["mediaType"].endswith("gzip"):
                raise RuntimeError(f"skopeo did not compress {src}:{tag} again: layer {l['digest']} ({l['mediaType']})")

    def exact_build(self, sc, d, base, layouts, mode):
        """`sideload build oci:TARGET --base oci:OLD --exact MODE` (where-possible or never),
        signed and applied as the sideload row is, to an OCI layout. Exact: its manifest must be
        the source's; not exact (never, or where-possible fell back): the statement's, with the
        source's config and the target's diff_ids. `base`: the sideload row (docker-archive)."""
        sl, sign = os.path.join(self.bin, "sideload"), os.path.join(self.bin, "sideload-sign")
        layout, tag, old_layout, old_tag = layouts
        src_digest, src_manifest = layout_manifest(layout, tag)
        device = os.path.join(d, "device")
        os.makedirs(device)
        bases = []
        if sc["old"] is not None:
            # The device holds the old image as the registry sent it: its OCI layout, gzip blobs.
            held = os.path.join(device, "held")
            link_tree(old_layout, held)
            bases = ["--base", f"oci:{held}:{old_tag}"]
        bundle = os.path.join(d, "exact.bundle")
        stmt = os.path.join(d, "statement.json")
        enc = timed(
            [sl, "build", f"oci:{layout}:{tag}", *bases, "-o", bundle, "--exact", mode,
             "--repository", sc["repo"], "--tag", sc["tag"], "--statement-out", stmt, "--json"],
            d,
        )
        report = json.loads(enc.stdout)
        sig = os.path.join(d, "bench.sig")
        run([sign, "sign", "--key", self.key, stmt, "-o", sig])
        run([sl, "attach", bundle, sig, "--policy", self.policy])
        size = os.path.getsize(bundle)
        with open(bundle, "rb") as f:
            head = f.read(32)  # container header: stored statement length at 12, slot length at 16
        info = json.loads(run([sl, "inspect", bundle, "--json"]))
        scratch = info.get("statement", {}).get("payload", {}).get("scratch_bytes")
        out = os.path.join(d, "rebuilt-oci")
        # Applied --exact-apply-runs times, each to a fresh output (apply keeps no state without
        # --state): the median run's time and the largest RSS and scratch are reported.
        decs = []
        with ScratchWatch(d) as watch:
            for _ in range(self.exact_apply_runs):
                shutil.rmtree(out, ignore_errors=True)
                decs.append(timed(
                    [sl, "apply", bundle, "--policy", self.policy, "--base-dir", device,
                     "--output", f"oci:{out}"],
                    d,
                ))
        dec = sorted(decs, key=lambda x: x.seconds)[len(decs) // 2]
        dec_rss = max(x.rss_kib for x in decs)
        dec = Measured(dec.seconds, dec_rss, b"")
        exact = report.get("exact") is True
        storage = {}
        for layer in report.get("layers", []):
            k = str(layer.get("storage", "?"))
            storage[k] = storage.get(k, 0) + 1
        gz_size = src_manifest["config"]["size"] + sum(l["size"] for l in src_manifest["layers"])
        res = dict(bytes=size, enc=enc, dec=dec, dec_runs=[x.seconds for x in decs], exact=exact, reason=report.get("not_exact_reason"),
                   mode=mode, recipe_bytes=report.get("recipe_bytes"), storage=storage, gz_size=gz_size,
                   statement_bytes=int.from_bytes(head[12:16], "big"), slot_bytes=int.from_bytes(head[16:20], "big"),
                   payload_bytes=report.get("payload_size"),
                   layer_recipes=[l.get("recipe_bytes") for l in report.get("layers", [])],
                   layer_recipe_kinds=[l.get("recipe") for l in report.get("layers", [])],
                   source_manifest=src_digest, build_source_manifest=report.get("source_manifest_digest"),
                   build_manifest=report.get("manifest_digest"), scratch=scratch, scratch_seen=watch.peak,
                   delta=delta_stats(report), base_delta=sc.get("sideload_delta"),
                   base_bytes=base["bytes"] if base and base["status"] == "yes" else None,
                   base_enc=base["enc"] if base and base["status"] == "yes" else None,
                   base_apply=sc.get("sideload_apply") if base and base["status"] == "yes" else None)
        if report.get("source_manifest_digest") != src_digest:
            res.update(status="NO", error=f"the build names the source manifest {report.get('source_manifest_digest')}, "
                                          f"the layout's is {src_digest}")
            return res
        if exact and mode == "never":
            res.update(status="NO", error="`--exact never` built an exact bundle")
            return res
        if exact and report.get("manifest_digest") != src_digest:
            res.update(status="NO", error=f"the build says exact but its statement's manifest is "
                                          f"{report.get('manifest_digest')}, not the source's {src_digest}")
            return res
        err, got = check_rebuilt_oci(out, sc["tag"], src_digest if exact else report.get("manifest_digest"),
                                     src_manifest["config"]["digest"], sc, exact)
        res["rebuilt_manifest"] = got
        if err:
            res.update(status="NO", error=err)
        else:
            res["status"] = "yes" if exact or mode == "never" else "not exact"
        return res

    def exact_step(self, sc, writer, what, fn):
        """Runs fn() -> result dict for one part of the exact measurement, turning a timeout,
        an out-of-memory or a failure into a result; prints its progress line."""
        print(f"   sideload exact, {writer} gzip: {what} ...", end=" ", flush=True)
        t = time.time()
        d = os.path.join(self.work, "runs", sc["name"], f"sideload-exact-{writer}-{what.split()[0]}")
        os.makedirs(d)
        try:
            res = fn(d)
        except (ToolTimeout, ToolOutOfMemory) as e:
            res = dict(status="timeout" if isinstance(e, ToolTimeout) else "oom", error=str(e))
        except Exception as e:  # recorded and reported; the run exits non-zero
            msg = str(e).strip()
            res = dict(status="FAILED", error=msg.splitlines()[-1][:300] if msg else type(e).__name__)
            print(f"FAILED ({time.time() - t:.0f} s)\n--- error ---\n{msg[-3000:]}\n---", flush=True)
            return res
        finally:
            shutil.rmtree(d, ignore_errors=True)
        res["wall_s"] = time.time() - t
        if "bytes" not in res:
            print(f"{res['status']} ({res['wall_s']:.0f} s): {res.get('error', '')}", flush=True)
        else:
            print(f"{res['status']} ({res['wall_s']:.0f} s): {exact_line(res)}", flush=True)
        return res

    def run_exact(self, sc, base):
        """The exact measurement of one scenario (after its sideload row), per gzip writer:
        sc["exact"][writer] = dict(exact=..., never=..., layouts_s=seconds to write its layouts)."""
        sc["exact"] = {}
        for writer in self.exact_writers:
            w = sc["exact"][writer] = {}
            t = time.time()
            try:
                layouts = self.writer_layouts(sc, writer)
            except Exception as e:  # recorded and reported; the run exits non-zero
                msg = str(e).strip()
                print(f"   sideload exact, {writer} gzip: writing the layouts FAILED\n--- error ---\n{msg[-3000:]}\n---",
                      flush=True)
                w["exact"] = w["never"] = dict(status="FAILED", error="layouts: " + (msg.splitlines() or ["?"])[-1][:300])
                continue
            w["layouts_s"] = time.time() - t
            if writer != "zlib":
                print(f"   ({writer} gzip layouts written in {w['layouts_s']:.0f} s)", flush=True)
            w["exact"] = self.exact_step(sc, writer, "where-possible",
                                         lambda d: self.exact_build(sc, d, base, layouts, "where-possible"))
            w["never"] = self.exact_step(sc, writer, "never (same layouts)",
                                         lambda d: self.exact_build(sc, d, base, layouts, "never"))
            for k in ("exact", "never"):
                w[k]["layout_tag"] = layouts[1]

    def bundle_target(self, bundle):
        """What the device will make of the bundle (from `sideload inspect`): a dict with the
        statement digest (the device's id for the bundle), repository, tag, manifest digest, and
        the sizes of the bundle and of the image as its manifest lists it."""
        info = json.loads(run([os.path.join(self.bin, "sideload"), "inspect", bundle, "--json"]))
        target = info["statement"]["target"]
        repo, tag, want = target["repository"], target["tags"][0], target["manifest_digest"]
        manifest = json.loads(target["manifest"])
        image_bytes = manifest["config"]["size"] + sum(l["size"] for l in manifest["layers"])
        return dict(bundle_bytes=os.path.getsize(bundle), image_bytes=image_bytes, ref=f"{repo}:{tag}",
                    repo=repo, tag=tag, statement_digest=info["statement_digest"], manifest_digest=want,
                    layer_media_types=sorted({l["mediaType"] for l in manifest["layers"]}))

    def start_registry(self, pd, storage, started):
        """`docker-registry serve` on a free loopback port with its storage in `storage` (config
        and log in `pd`); returns the port once /v2/ answers."""
        os.makedirs(storage, exist_ok=True)
        port = free_port()
        cfg = os.path.join(pd, "registry.yml")
        with open(cfg, "w") as f:
            f.write("version: 0.1\n"
                    "log: {level: warn, accesslog: {disabled: true}}\n"
                    f"storage: {{filesystem: {{rootdirectory: {storage}}}, delete: {{enabled: true}}}}\n"
                    f"http: {{addr: 127.0.0.1:{port}, secret: sideload-bench}}\n")
        log = os.path.join(pd, "registry.log")
        reg = start_logged(["docker-registry", "serve", cfg], log, started)
        wait_http(port, "/v2/", reg, log)
        return port

    def seed_registry(self, sc, reg_port, res):
        """The device already holds the scenario's old image: copies it into the registry
        (skopeo stores its layers gzip-compressed, as a pull would); sets res["seed"] (the
        reference, None without an old image) and res["seed_s"]."""
        seed = None
        if sc["old"] is not None:
            seed = sc["old_ref"] if sc["old_ref"] and sc["old_ref"] != res["ref"] else f"{res['repo']}:held"
            t = time.monotonic()
            run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"docker-archive:{sc['old']}",
                 f"docker://127.0.0.1:{reg_port}/{seed}"])
            res["seed_s"] = time.monotonic() - t
        res["seed"] = seed

    def start_daemon(self, pd, reg_port, started, host="127.0.0.1", policy=None):
        """sideload-registry-plugin on a free port of `host` in front of the registry, data
        directory `pd`/data, trusting `policy` (default: the bench key), everything else default.
        Returns (process, port, log path) once /sideload/v1/health answers."""
        port = free_port(host)
        cfg = os.path.join(pd, "registry-plugin.toml")
        with open(cfg, "w") as f:
            f.write(f'listen = "{host}:{port}"\n'
                    'device_id = "bench-device"\n'
                    f'data_dir = "{os.path.join(pd, "data")}"\n'
                    f'trust_policy = "{policy or self.policy}"\n'
                    "[registry]\n"
                    f'url = "http://127.0.0.1:{reg_port}"\n')
        log = os.path.join(pd, "plugin.log")
        plug = start_logged([os.path.join(self.bin, "sideload-registry-plugin"), "--config", cfg], log, started,
                            env=dict(os.environ, NO_COLOR="1"))
        wait_http(port, "/sideload/v1/health", plug, log, host=host)
        return plug, port, log

    def registry_plugin(self, sc, d):
        """The device daemon with the bundle `sideload` left in `d` (see "registry plugin" above).
        Returns a dict for sc["plugin"]; raises on failure (the caller records it)."""
        bundle = os.path.join(d, "app.bundle")
        # sideload's rebuilt archive is checked already; free its space for the registry.
        for n in ("rebuilt.tar",):
            if os.path.exists(os.path.join(d, n)):
                os.remove(os.path.join(d, n))
        res = self.bundle_target(bundle)
        stmt_digest, repo, tag, want = res["statement_digest"], res["repo"], res["tag"], res["manifest_digest"]

        pd = os.path.join(d, "plugin")
        os.makedirs(pd)
        res["log"] = os.path.join(pd, "plugin.log")
        started = []
        try:
            reg_port = self.start_registry(pd, os.path.join(pd, "registry"), started)
            self.seed_registry(sc, reg_port, res)
            plug, plug_port, plug_log = self.start_daemon(pd, reg_port, started)
            res["rss_idle_kib"] = proc_status_kib(plug.pid, "VmRSS")

            st, h, body = http_request(plug_port, "POST", "/sideload/v1/uploads",
                                       headers={"Bundle-Name": "app.bundle"})
            if st not in (200, 201):
                raise RuntimeError(f"POST /sideload/v1/uploads: {st} {body[:300]!r}")
            location = json.loads(body)["location"] if body.strip() else h["location"]
            location = urllib.parse.urlsplit(location).path or location
            t0 = time.monotonic()
            with open(bundle, "rb") as f:
                st, h, body = http_request(plug_port, "PATCH", location, body=f,
                                           headers={"Upload-Offset": "0",
                                                    "Content-Length": str(res["bundle_bytes"]),
                                                    "Content-Type": "application/octet-stream"},
                                           timeout=LIMITS["timeout"])
            t_done = time.monotonic()
            cpu0 = proc_cpu_seconds(plug.pid)
            res["upload_s"] = t_done - t0
            if st != 202:
                raise RuntimeError(f"PATCH {location}: {st} {body[:300]!r}")
            got = json.loads(body).get("bundle")
            if got != stmt_digest:
                raise RuntimeError(f"upload answered bundle {got}, the statement digest is {stmt_digest}")

            # Poll the tag through the plugin and the bundle's state until both say done.
            t_tag = t_state = t_push = None
            state, reason = None, None
            # When the daemon starts pushing (the first bytes in the registry's upload area):
            # upload -> t_push is the decode into staging, t_push -> tag the push into the registry.
            uploads_area = os.path.join(pd, "registry", "docker", "registry", "v2", "repositories")
            deadline = t_done + LIMITS["timeout"]
            while t_tag is None or t_state is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"tag not visible / bundle not applied after {LIMITS['timeout']} s "
                                       f"(state {state}): {tail(plug_log)}")
                if plug.poll() is not None:
                    raise RuntimeError(f"the daemon exited ({plug.returncode}): {tail(plug_log)}")
                if t_push is None and tree_bytes(uploads_area, "_uploads") > 0:
                    t_push = time.monotonic()
                if t_tag is None:
                    st, h, _ = http_request(plug_port, "HEAD", f"/v2/{repo}/manifests/{tag}",
                                            headers={"Accept": MANIFEST_ACCEPT})
                    if st == 200 and h.get("docker-content-digest") == want:
                        t_tag = time.monotonic()
                if t_state is None:
                    st, _, body = http_request(plug_port, "GET", f"/sideload/v1/bundles/{stmt_digest}")
                    if st == 200:
                        b = json.loads(body)["bundle"]
                        state, reason = b["state"], b.get("reason")
                        if state == "applied":
                            t_state = time.monotonic()
                        elif state in ("failed", "refused"):
                            raise RuntimeError(f"bundle {state}: {reason}")
                if t_tag is None or t_state is None:
                    time.sleep(PLUGIN_POLL_S)
            res["tag_s"] = t_tag - t_done
            res["applied_s"] = t_state - t_done
            res["hwm_apply_kib"] = proc_status_kib(plug.pid, "VmHWM")
            res["apply_cpu_s"] = proc_cpu_seconds(plug.pid) - cpu0
            res["decode_s"] = None if t_push is None else t_push - t_done

            # Pulls: the same image through the plugin and straight from the registry.
            pulls = {"plugin": [], "direct": []}
            cpu1 = proc_cpu_seconds(plug.pid)
            for i in range(self.plugin_pull_rounds):
                for way, port in (("direct", reg_port), ("plugin", plug_port)):
                    out = os.path.join(pd, f"pull-{way}")
                    m = timed(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                               f"docker://127.0.0.1:{port}/{repo}:{tag}", f"dir:{out}"], pd)
                    pulls[way].append(m.seconds)
                    with open(os.path.join(out, "manifest.json"), "rb") as f:
                        mbytes = f.read()
                    if "sha256:" + hashlib.sha256(mbytes).hexdigest() != want:
                        raise RuntimeError(f"pull {way}: manifest is not the statement's {want}")
                    cfg = json.loads(mbytes)["config"]["digest"]
                    if cfg != "sha256:" + sc["config_sha"]:
                        raise RuntimeError(f"pull {way}: config {cfg} is not the target's")
                    shutil.rmtree(out)
            res["pull_plugin_s"], res["pull_direct_s"] = pulls["plugin"], pulls["direct"]
            res["hwm_end_kib"] = proc_status_kib(plug.pid, "VmHWM")
            res["pull_cpu_s"] = (proc_cpu_seconds(plug.pid) - cpu1) / self.plugin_pull_rounds
        finally:
            stop_all(started)
        return res

    # --- --link: the bundle over a shaped link with drops (see "shaped link with drops") ------

    def link_calibrate(self, link, port, bundle, ld):
        """On the clean link (no drops yet): a new upload, the bundle's first
        LINK_CALIBRATION_BYTES in one PATCH, DELETE, all with curl; the device end's TCP payload
        estimate against the bytes curl sent (request headers + body)."""
        part = os.path.join(ld, "calibration.bin")
        with open(bundle, "rb") as f, open(part, "wb") as o:
            o.write(f.read(LINK_CALIBRATION_BYTES))
        base, answer = f"http://{DEVICE_IP}:{port}", os.path.join(ld, "calibration-answer")
        c0 = link.counters()
        post = curl_in(link, ["-X", "POST", "-H", "Bundle-Name: calibration", base + "/sideload/v1/uploads"],
                       answer, 120)
        loc = (read_json(answer) or {}).get("location") if post["code"] == 201 else None
        if not loc:
            raise RuntimeError(f"calibration POST: exit {post['exit']}, HTTP {post['code']}: {post['error']}")
        loc = urllib.parse.urlsplit(loc).path or loc
        patch = curl_in(link, ["-X", "PATCH", "-H", "Upload-Offset: 0", "-H", "Content-Type: application/octet-stream",
                               "-T", part, base + loc], answer, 600)
        if patch["code"] != 204:
            raise RuntimeError(f"calibration PATCH: exit {patch['exit']}, HTTP {patch['code']}: {patch['error']}")
        delete = curl_in(link, ["-X", "DELETE", base + loc], answer, 120)
        c1 = link.counters()
        sent = sum(r["size_request"] + r["size_upload"] for r in (post, patch, delete))
        rx, pk = c1["rx_bytes"] - c0["rx_bytes"], c1["rx_packets"] - c0["rx_packets"]
        est = rx - pk * TCP_HEADERS
        os.remove(part)
        return dict(body_bytes=patch["size_upload"], patch_s=patch["secs"], curl_sent=sent, rx_bytes=rx,
                    rx_packets=pk, payload_est=est, error=(est - sent) / sent,
                    payload_mbit_s=patch["size_upload"] * 8 / patch["secs"] / 1e6)

    def link_result(self, link, c0, m0, port, watch, sch, end_s, bundle_bytes):
        """The measures both transfers share, from the counters at their start (c0, m0)."""
        c1 = link.counters()
        rx, pk = c1["rx_bytes"] - c0["rx_bytes"], c1["rx_packets"] - c0["rx_packets"]
        est = rx - pk * TCP_HEADERS
        return dict(rx_bytes=rx, rx_packets=pk, tx_bytes=c1["tx_bytes"] - c0["tx_bytes"],
                    tx_packets=c1["tx_packets"] - c0["tx_packets"], payload_est=est,
                    payload_ratio=est / bundle_bytes,
                    device_received=metric(port, "sideload_upload_bytes_total") - m0,
                    part_left=watch.part_bytes(), part_peak=watch.part_peak,
                    schedule_error=sch.error, end_s=round(end_s, 2))

    @staticmethod
    def drop_effects(drops, watch, lost, end_s):
        """Per drop: how long after it began the client gave up on its connection (the first
        time in `lost` within the drop's window, None if it rode it out), and how long after the
        link came back data reached the device again."""
        out = []
        for i, dr in enumerate(drops):
            nxt = drops[i + 1]["down_at"] if i + 1 < len(drops) else end_s
            up = dr.get("up_at", end_s)
            gave_up = next((t for t in lost if dr["down_at"] <= t < nxt), None)
            out.append(dict(dr, client_gave_up_after=None if gave_up is None else round(gave_up - dr["down_at"], 2),
                            data_again_after_up=watch.data_again(up, nxt)))
        return out

    def link_push(self, link, port, res, bundle, uploads, ld):
        """Transfer A: `sideload push --json --wait` from the client's namespace."""
        sl = os.path.join(self.bin, "sideload")
        opts = ["--stall-timeout", f"{LINK_STALL_S}s", "--deadline", f"{LINK_PUSH_CAP_S}s"]
        cmd = link.client([sl, "push", bundle, "--to", f"http://{DEVICE_IP}:{port}", "--json", "--wait", *opts])
        out_json, log = os.path.join(ld, "push.json"), os.path.join(ld, "push.log")
        with open(log, "w") as f:
            f.write(f"# {' '.join(cmd)}\n# [seconds since the start] stderr of sideload push\n")
        m0, c0 = metric(port, "sideload_upload_bytes_total"), link.counters()
        t0 = time.monotonic()
        with DeviceWatch(port, res["statement_digest"], uploads, t0) as watch:
            with DropSchedule(link, self.link_seed, "push", t0, self.link_up_s, self.link_down_s) as sch, open(out_json, "wb") as jf:
                p = subprocess.Popen(cmd, stdout=jf, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=CLIENT_ENV)
                killed = False  # by the bench, after the cap (else a signal came from elsewhere)
                try:
                    lines = StampedLines(p.stderr, log, t0)
                    try:
                        p.wait(LINK_PUSH_CAP_S + 120)
                    except subprocess.TimeoutExpired:
                        pass
                finally:
                    killed = p.poll() is None
                    stop_process(p)
                lines.join()
                end_s = sch.now()
                r = self.link_result(link, c0, m0, port, watch, sch, end_s, res["bundle_bytes"])
            # The client saw `applied` (--wait), or gave up: the device's view, off the link.
            watch.wait_end(LIMITS["timeout"] if p.returncode == 0 else 5)
        report = ((read_json(out_json) or {}).get("bundles") or [{}])[0]
        lost = [t for t, line in lines.lines if "link lost" in line or "cannot reach" in line]
        r.update(
            command="sideload push BUNDLE --to http://DEVICE:PORT --json --wait " + " ".join(opts),
            exit=p.returncode, killed_by_bench=killed, report=report, client_s=round(end_s, 2),
            finished=p.returncode == 0 and watch.applied is not None,
            queued_s=watch.queued, applied_s=watch.applied, state=watch.state, reason=watch.reason,
            client_sent=report.get("bytes_sent"), requests=report.get("requests"), retries=report.get("retries"),
            uploads=1, drops=self.drop_effects(sch.drops, watch, lost, end_s),
            notes=[f"{end_s:.1f} s {line}" for t, line in lines.lines
                   if "retrying" in line or "resuming" in line or "error" in line][:200])
        return r

    def link_curl(self, link, port, res, bundle, uploads, budget, ld):
        """Transfer B: plain curl, no resume: POST a new upload (no Bundle-Digest), PATCH the
        whole file from offset 0; after any failure start over, until the device takes it or the
        budget passes."""
        base, answer = f"http://{DEVICE_IP}:{port}", os.path.join(ld, "curl-answer")
        log = os.path.join(ld, "curl.log")
        common = ["--connect-timeout", str(LINK_STALL_S), "--speed-limit", "1", "--speed-time", str(LINK_STALL_S)]
        attempts, abandoned, lost, calls = [], [], [], []
        deletes, finished, t_client = 0, False, None
        m0, c0 = metric(port, "sideload_upload_bytes_total"), link.counters()
        t0 = time.monotonic()
        end = t0 + budget
        with open(log, "w") as lf, DeviceWatch(port, res["statement_digest"], uploads, t0) as watch:
            lf.write(f"# curl {' '.join(common)} --max-time BUDGET-LEFT ...: POST, then PATCH -T BUNDLE "
                     f"(Upload-Offset: 0); start over after any failure; budget {budget:.0f} s\n")

            def call(args, what):
                left = end - time.monotonic()
                at = time.monotonic() - t0
                r = curl_in(link, common + ["--max-time", str(max(1, int(left)))] + args, answer, left + 60)
                r.update(at=round(at, 2), what=what)
                calls.append(r)
                lf.write(f"[{at:8.2f} s] {what}: exit {r['exit']}, HTTP {r['code']}, body sent "
                         f"{r['size_upload']} B, {r['secs']:.1f} s {r['error']}\n")
                lf.flush()
                return r

            with DropSchedule(link, self.link_seed, "curl", t0, self.link_up_s, self.link_down_s) as sch:
                while end - time.monotonic() > 1:
                    post = call(["-X", "POST", "-H", "Bundle-Name: app.bundle", base + "/sideload/v1/uploads"], "POST")
                    if post["code"] == 429 and abandoned:
                        # The device's advice: "finish or delete one". The oldest abandoned goes.
                        call(["-X", "DELETE", base + abandoned.pop(0)], "DELETE (after 429)")
                        deletes += 1
                        continue
                    attempt = dict(n=len(attempts) + 1, post=post)
                    attempts.append(attempt)
                    loc = (read_json(answer) or {}).get("location") if post["code"] == 201 else None
                    if loc:
                        loc = urllib.parse.urlsplit(loc).path or loc
                        patch = call(["-X", "PATCH", "-H", "Upload-Offset: 0", "-H",
                                      "Content-Type: application/octet-stream", "-T", bundle, base + loc], "PATCH")
                        attempt["patch"] = patch
                        got = read_json(answer) if patch["code"] in (200, 202) else None
                        if isinstance(got, dict) and got.get("outcome") in ("queued", "duplicate"):
                            finished, t_client = True, time.monotonic() - t0
                            break
                        abandoned.append(loc)
                    lost.append(time.monotonic() - t0)
                    time.sleep(max(0.0, min(LINK_CURL_PAUSE_S, end - time.monotonic())))
                end_s = sch.now()
                r = self.link_result(link, c0, m0, port, watch, sch, end_s, res["bundle_bytes"])
            if finished:
                watch.wait_end(LIMITS["timeout"])
        exits = {}
        for a in attempts:
            last = a.get("patch", a["post"])
            if last["code"] not in (200, 202):
                # (HTTP 100: only the `Expect: 100-continue` answer came before it failed)
                k = f"{'PATCH' if 'patch' in a else 'POST'} exit {last['exit']}" + (
                    f" HTTP {last['code']}" if last["code"] >= 200 else "")
                exits[k] = exits.get(k, 0) + 1
        r.update(
            command="curl " + " ".join(common) + " -X PATCH -H 'Upload-Offset: 0' -T BUNDLE URL (after a POST)",
            budget_s=round(budget), finished=finished, client_s=None if t_client is None else round(t_client, 2),
            queued_s=watch.queued, applied_s=watch.applied, state=watch.state, reason=watch.reason,
            client_sent=sum(c["size_upload"] for c in calls), requests=len(calls), uploads=len(attempts),
            patches=sum(1 for a in attempts if "patch" in a), deleted_after_429=deletes, failures=exits,
            attempts=[dict(n=a["n"], at=a["post"]["at"], post=a["post"]["code"],
                           **({} if "patch" not in a else dict(
                               patch=a["patch"]["code"], exit=a["patch"]["exit"], sent=a["patch"]["size_upload"],
                               secs=a["patch"]["secs"], error=a["patch"]["error"][-160:])))
                      for a in attempts],
            drops=self.drop_effects(sch.drops, watch, lost, end_s))
        return r

    def link_measure(self, sc, bundle, policy, ld):
        """Both transfers of `bundle`, each to a fresh device (registry seeded with the old
        image, new data directory) on the shaped link; returns the dict for sc["link"]."""
        res = self.bundle_target(bundle)
        out = dict(scenario=sc["name"], bundle=res, git=self.git_state(), seed=self.link_seed,
                   plan=link_plan(self.link_seed, 40, self.link_up_s, self.link_down_s),
                   link=dict(tbf=" ".join(LINK_TBF), up_s=self.link_up_s, down_s=self.link_down_s, device_ip=DEVICE_IP,
                             client_ip=CLIENT_IP, namespace=LINK_NS, stall_s=LINK_STALL_S))
        with Link() as link:
            out["link"]["qdisc"] = link.qdisc
            started = []
            pa = os.path.join(ld, "device-push")
            os.makedirs(pa)
            try:
                reg = self.start_registry(pa, os.path.join(pa, "registry"), started)
                self.seed_registry(sc, reg, res)
                # The second device starts from the same seeded registry.
                seeded = os.path.join(ld, "registry-seeded")
                shutil.copytree(os.path.join(pa, "registry"), seeded, symlinks=True)
                _, port, _ = self.start_daemon(pa, reg, started, host=DEVICE_IP, policy=policy)
                print("      calibration on the clean link ...", end=" ", flush=True)
                cal = out["calibration"] = self.link_calibrate(link, port, bundle, ld)
                print(f"{cal['payload_mbit_s']:.3f} Mbit/s payload; TCP payload estimate {cal['payload_est']:,} B "
                      f"vs {cal['curl_sent']:,} B curl sent ({100 * cal['error']:+.3f} %)", flush=True)
                print("      sideload push ...", flush=True)
                a = out["push"] = self.link_push(link, port, res, bundle, os.path.join(pa, "data", "uploads"), ld)
                print(f"      sideload push: {'applied' if a['finished'] else 'NOT applied (' + str(a['state']) + ')'}"
                      f", client done at {a['client_s']:.1f} s", flush=True)
            finally:
                stop_all(started)
                if os.path.exists(os.path.join(pa, "plugin.log")):
                    shutil.copyfile(os.path.join(pa, "plugin.log"), os.path.join(ld, "device-push.log"))
                shutil.rmtree(pa, ignore_errors=True)
            budget = self.link_budget or max(LINK_BUDGET_FACTOR * a["client_s"], LINK_BUDGET_MIN_S)
            pb = os.path.join(ld, "device-curl")
            os.makedirs(pb)
            try:
                reg = self.start_registry(pb, seeded, started)
                _, port, _ = self.start_daemon(pb, reg, started, host=DEVICE_IP, policy=policy)
                print(f"      curl, no resume (budget {budget:.0f} s) ...", flush=True)
                b = out["curl"] = self.link_curl(link, port, res, bundle, os.path.join(pb, "data", "uploads"), budget, ld)
                print(f"      curl: {'applied' if b['applied_s'] else 'did not finish'} after {b['uploads']} "
                      f"upload(s), {b['end_s']:.1f} s", flush=True)
            finally:
                stop_all(started)
                if os.path.exists(os.path.join(pb, "plugin.log")):
                    shutil.copyfile(os.path.join(pb, "plugin.log"), os.path.join(ld, "device-curl.log"))
        return out

    def keep_link_bundle(self, sc, d):
        """Keeps the bundle sideload just built and its trust policy in bench/.cache/link/SCENARIO,
        for --link-only; returns (bundle, policy) there."""
        kd = os.path.join(self.cache, "link", sc["name"])
        os.makedirs(kd, exist_ok=True)
        bundle, policy = os.path.join(kd, "app.bundle"), os.path.join(kd, "trust.toml")
        shutil.copyfile(os.path.join(d, "app.bundle"), bundle)
        shutil.copyfile(self.policy, policy)
        with open(os.path.join(kd, "meta.json"), "w") as f:
            json.dump(dict(old=self.old_identity(sc), built=datetime.datetime.now().astimezone().isoformat(
                timespec="minutes")), f, indent=1)
        return bundle, policy

    def git_state(self):
        """The tree the binaries were built from: its commit, and the files that differ from it,
        each marked when it changed after the binaries were built (so not in them)."""
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        built = max(os.path.getmtime(os.path.join(self.bin, b)) for b in ("sideload", "sideload-registry-plugin"))
        dirty = []
        for line in sh_out(f"git -C {repo} status --porcelain").splitlines():
            path = line[3:].strip()
            try:
                later = os.path.getmtime(os.path.join(repo, path)) > built
            except OSError:
                later = False
            dirty.append(line.strip() + (" (changed after the binaries were built)" if later else ""))
        return dict(head=sh_out(f"git -C {repo} rev-parse --short HEAD"),
                    binaries_built=datetime.datetime.fromtimestamp(built).astimezone().isoformat(timespec="seconds"),
                    dirty=dirty)

    @staticmethod
    def old_identity(sc):
        if sc["old"] is None:
            return None
        st = os.stat(sc["old"])
        return dict(path=os.path.realpath(sc["old"]), size=st.st_size, mtime_ns=st.st_mtime_ns)

    def run_link(self, sc, bundle, policy):
        """--link: both transfers; the results go into sc["link"], a JSON file and the logs
        next to the report (bench/results/link-SCENARIO*)."""
        print("   shaped link with drops: sideload push, then curl without resume", flush=True)
        t = time.time()
        ld = os.path.join(self.work, "link", sc["name"])
        os.makedirs(ld)
        try:
            sc["link"] = self.link_measure(sc, bundle, policy, ld)
            sc["link"]["status"] = "yes" if sc["link"]["push"]["finished"] else "FAILED"
            if sc["link"]["status"] != "yes":
                sc["link"]["error"] = (f"sideload push did not get the bundle applied (exit "
                                       f"{sc['link']['push']['exit']}, state {sc['link']['push']['state']})")
        except Exception as e:  # recorded and reported; the run exits non-zero
            sc["link"] = dict(status="FAILED", error=str(e).strip())
            print(f"   shaped link: FAILED ({time.time() - t:.0f} s): {sc['link']['error']}", flush=True)
        finally:
            kept = []
            for src, name in (("push.log", "push"), ("curl.log", "curl"), ("device-push.log", "device-push"),
                              ("device-curl.log", "device-curl")):
                if os.path.exists(os.path.join(ld, src)):
                    dst = os.path.join(self.log_dir, f"link-{sc['name']}-{name}.log")
                    shutil.copyfile(os.path.join(ld, src), dst)
                    kept.append(dst)
            if "link" in sc:
                sc["link"].update(kept_logs=kept, seconds=round(time.time() - t),
                                  date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"))
                path = os.path.join(self.log_dir, f"link-{sc['name']}.json")
                with open(path, "w") as f:
                    json.dump(sc["link"], f, indent=1)
                    f.write("\n")
                print(f"   (link results: {path}; logs: {', '.join(kept)})", flush=True)
            shutil.rmtree(ld, ignore_errors=True)

    def run_link_only(self):
        """--link-only: the --link measurement with the bundle an earlier --link run kept."""
        for sc in self.scenarios:
            print(f"== scenario {sc['name']}: {sc['desc']}", flush=True)
            kd = os.path.join(self.cache, "link", sc["name"])
            meta = read_json(os.path.join(kd, "meta.json"))
            if not meta or not os.path.exists(os.path.join(kd, "app.bundle")):
                sc["link"] = dict(status="FAILED", error=f"no bundle kept in {kd}: run bench/run.sh --scenario "
                                                         f"{sc['name']} --only sideload --link first")
            elif meta.get("old") != self.old_identity(sc):
                sc["link"] = dict(status="FAILED", error=f"the bundle in {kd} was built against another old "
                                                         "image (the corpus changed): run with --link again")
            else:
                print(f"   (bundle kept by the --link run of {meta.get('built')})", flush=True)
                self.run_link(sc, os.path.join(kd, "app.bundle"), os.path.join(kd, "trust.toml"))
                continue
            print(f"   shaped link: FAILED: {sc['link']['error']}", flush=True)
        return {}

    def plain(self, sc, d):
        held = set(archive_diff_ids(sc["old"])) if sc["old"] else set()
        total, sent = sc["config_size"], 0
        for blob, diff_id in zip(sc["layers"], sc["diff_ids"]):
            if diff_id not in held:
                total += blob["size"]
                sent += 1
        note = f"{sent} of {len(sc['layers'])} layer blobs + config; no tool runs"
        return dict(bytes=total, enc=None, dec=None, status="yes", note=note)

    def _check(self, out, sc):
        return "yes" if sha256_file(out) == sc["new_sha"] else "NO"

    def bsdiff(self, sc, d):
        old, new = sc["old"] or self.one_byte, sc["new"]
        biggest = max(os.path.getsize(old), os.path.getsize(new))
        if biggest > self.bsdiff_max:
            raise Skip(f"skipped: bsdiff needs ~17x the old file in memory ({biggest / 1e9:.2f} GB "
                       f"file > {self.bsdiff_max / 1e9:.1f} GB limit)")
        patch, out = os.path.join(d, "p.bsdiff"), os.path.join(d, "out")
        enc = timed(["bsdiff", old, new, patch], d)
        dec = timed(["bspatch", old, out, patch], d)
        note = "" if sc["old"] else "old = 1 NUL byte (bsdiff cannot mmap an empty file)"
        return dict(bytes=os.path.getsize(patch), enc=enc, dec=dec, status=self._check(out, sc), note=note)

    def xdelta3(self, sc, d):
        old, new = sc["old_or_empty"], sc["new"]
        patch, out = os.path.join(d, "p.vcdiff"), os.path.join(d, "out")
        # -B: source window as large as the old file (default 64 MiB), so the whole old file is
        # searchable, as the whole-image case study intends.
        bsize = max(1 << 24, 1 << log2_ceil(os.path.getsize(old), 24, 31))
        enc = timed(["xdelta3", "-e", "-9", "-S", "djw", "-f", "-B", bsize, "-s", old, new, patch], d)
        dec = timed(["xdelta3", "-d", "-f", "-B", bsize, "-s", old, patch, out], d)
        return dict(bytes=os.path.getsize(patch), enc=enc, dec=dec, status=self._check(out, sc),
                    note=f"-B {bsize}")

    def zstd(self, sc, d):
        new = sc["new"]
        patch, out = os.path.join(d, "p.zst"), os.path.join(d, "out")
        lvl = self.zstd_level
        lvl_args = ["--ultra", f"-{lvl}"] if lvl > 19 else [f"-{lvl}"]
        if sc["old"] is None:
            # Nothing to patch from: plain compression with the same settings.
            enc = timed(["zstd", "-q", "-f", *lvl_args, "--long=31", new, "-o", patch], d)
            dec = timed(["zstd", "-q", "-f", "-d", "--long=31", "--memory=2048MB", patch, "-o", out], d)
            note = " ".join(lvl_args) + "; no old file: plain compression"
        else:
            old = sc["old"]
            enc = timed(["zstd", "-q", "-f", *lvl_args, "--long=31", f"--patch-from={old}", new, "-o", patch], d)
            dec = timed(["zstd", "-q", "-f", "-d", "--long=31", "--memory=2048MB", f"--patch-from={old}",
                         patch, "-o", out], d)
            note = " ".join(lvl_args)
        return dict(bytes=os.path.getsize(patch), enc=enc, dec=dec, status=self._check(out, sc), note=note)

    def rdiff(self, sc, d):
        old, new = sc["old_or_empty"], sc["new"]
        sig, delta, out = (os.path.join(d, n) for n in ("sig", "delta", "out"))
        s = timed(["rdiff", "signature", old, sig], d)
        e = timed(["rdiff", "delta", sig, new, delta], d)
        dec = timed(["rdiff", "patch", old, delta, out], d)
        # The delta is not compressed; say what zstd would make of it (not counted).
        zl = "-19" if os.path.getsize(delta) < (256 << 20) else "-9"
        z = run(["zstd", "-q", zl, "-T2", "-c", delta])
        note = (f"+ signature {os.path.getsize(sig)} B device->cloud ({s.seconds:.2f} s); "
                f"delta is uncompressed (zstd {zl}: {len(z)} B)")
        return dict(bytes=os.path.getsize(delta), enc=combine(s, e), dec=dec, status=self._check(out, sc),
                    note=note)

    def hdiffpatch(self, sc, d):
        old, new = sc["old_or_empty"], sc["new"]
        patch, out = os.path.join(d, "p.hdiff"), os.path.join(d, "out")
        window = log2_ceil(os.path.getsize(new), 16, 30)
        enc = timed([sys.executable, "-c", HDIFF_ENCODE, old, new, patch, window], d)
        dec = timed([sys.executable, "-c", HDIFF_DECODE, old, patch, out], d)
        return dict(bytes=os.path.getsize(patch), enc=enc, dec=dec, status=self._check(out, sc),
                    note=f"lzma level 9, window 2^{window}; RSS includes python")

    TOOLS = [
        ("sideload", "sideload"),
        ("plain layer transfer", "plain"),
        ("bsdiff", "bsdiff"),
        ("xdelta3 -9 -S djw", "xdelta3"),
        ("zstd --patch-from --long=31", "zstd"),
        ("rdiff (librsync)", "rdiff"),
        ("HDiffPatch (py, lzma)", "hdiffpatch"),
    ]

    # -----------------------------------------------------------------------------------------

    def setup(self, names):
        w = self.work
        arch = os.path.join(w, "archives")
        os.makedirs(arch)
        self.empty = os.path.join(arch, "empty")
        open(self.empty, "wb").close()
        # bsdiff 4.3 cannot mmap an empty file: it gets a one-byte old file instead.
        self.one_byte = os.path.join(arch, "one-byte")
        with open(self.one_byte, "wb") as f:
            f.write(b"\0")

        # One throwaway signing key and a 1-of-1 policy.
        keys = os.path.join(w, "keys")
        os.makedirs(keys)
        sign = os.path.join(self.bin, "sideload-sign")
        run([sign, "keygen", "--name", "bench", "--dir", keys])
        self.key = os.path.join(keys, "bench.key")
        entry = run([sign, "pubkey", os.path.join(keys, "bench.pub")]).decode()
        self.policy = os.path.join(keys, "trust.toml")
        with open(self.policy, "w") as f:
            f.write("threshold = 1\n" + entry)

        self.scenarios = []
        demo = [n for n in names if n in DEMO_SCENARIOS]
        if demo:
            self.setup_demo(arch, demo)
        wanted = [n for n in names if n in corpus.SCENARIOS]
        if wanted:
            print("== building the corpus (cached in bench/.cache)", flush=True)
            corpus.ensure_tools()
            cache = corpus.Cache(self.cache)
            for n in wanted:
                old, new, desc = corpus.SCENARIOS[n]
                layout, tag, new_tar = corpus.build_image(cache, new)
                old_layout, old_tag, old_tar = corpus.build_image(cache, old) if old else (None, None, None)
                spec = corpus.IMAGES[new]
                self.add_scenario(n, desc, old_tar, new_tar, layout, tag, spec["repo"], spec["tag"],
                                  f"{spec['repo']}:{spec['tag']}", old and corpus.IMAGES[old]["repo"] + ":" + corpus.IMAGES[old]["tag"],
                                  old_layout=old_layout, old_tag=old_tag)
        order = {n: i for i, n in enumerate(names)}
        self.scenarios.sort(key=lambda sc: order[sc["name"]])

    def setup_demo(self, arch, names):
        images = os.path.join(self.work, "images")
        print("== making the demo images", flush=True)
        run([os.path.join(self.bin, "examples", "make-demo-images"), images])
        v1_oci, v2_oci = os.path.join(images, "app-v1"), os.path.join(images, "app-v2")
        v1_tar, v2_tar = os.path.join(arch, "app-v1.tar"), os.path.join(arch, "app-v2.tar")
        print("== writing docker-save archives with skopeo", flush=True)
        run(["skopeo", "copy", "--quiet", f"oci:{v1_oci}:v1", f"docker-archive:{v1_tar}:edge/app:v1"])
        run(["skopeo", "copy", "--quiet", f"oci:{v2_oci}:v2", f"docker-archive:{v2_tar}:edge/app:v2"])
        # The device's own copy of v2 (zstd refuses an input that is also its dictionary).
        v2_copy = os.path.join(arch, "device-app-v2.tar")
        shutil.copyfile(v2_tar, v2_copy)
        # name -> (old archive, its ref, its OCI layout and tag: the device's image for the exact
        # measurement; make-demo-images writes gzip layouts, see exact_layout()).
        olds = {"demo-app-update": (v1_tar, "edge/app:v1", v1_oci, "v1"),
                "demo-same-image": (v2_copy, "edge/app:v2", v2_oci, "v2"),
                "demo-no-base": (None, None, None, None)}
        for n in names:
            self.add_scenario(n, DEMO_SCENARIOS[n], olds[n][0], v2_tar, v2_oci, "v2", "edge/app", "v2",
                              "edge/app:v2", olds[n][1], old_layout=olds[n][2], old_tag=olds[n][3])

    def add_scenario(self, name, desc, old, new, layout, tag, repo, dtag, target_ref, old_ref,
                     old_layout=None, old_tag=None):
        manifest, config = oci_manifest(layout)
        diff_ids, raw = archive_facts(new)
        if config["rootfs"]["diff_ids"] != diff_ids:
            raise RuntimeError(f"docker-archive {new} has other diff_ids than its OCI layout")
        sc = dict(name=name, desc=desc, old=old, new=new, repo=repo, tag=dtag,
                  target_ref=target_ref, old_ref=old_ref,
                  layers=manifest["layers"], diff_ids=diff_ids,
                  config_size=manifest["config"]["size"],
                  config_sha=manifest["config"]["digest"].split(":")[1],
                  raw_size=raw, new_sha=sha256_file(new),
                  old_size=os.path.getsize(old) if old else 0, new_size=os.path.getsize(new))
        sc["gz_size"] = sc["config_size"] + sum(l["size"] for l in sc["layers"])
        sc["old_or_empty"] = old or self.empty
        # The same images as OCI layouts (gzip layers, a manifest): the exact measurement's inputs.
        sc["layout"], sc["layout_tag"] = layout, tag
        sc["old_layout"], sc["old_layout_tag"] = old_layout, old_tag
        self.scenarios.append(sc)

    # Methods whose rows go through the peer result cache (not sideload, not the computed plain row).
    PEERS = ("bsdiff", "xdelta3", "zstd", "rdiff", "hdiffpatch")

    def peer_key(self, method, sc):
        """Everything that can change a peer's row: see PeerCache."""
        if method == "bsdiff":
            old = sc["old"] or self.one_byte
        elif method == "zstd":
            old = sc["old"]
        else:
            old = sc["old_or_empty"]
        inputs = {"old": None if old is None else self.peer_cache.identity(old, self.work),
                  "new": self.peer_cache.identity(sc["new"], self.work)}
        packages, commands = PEER_TOOLS[method]
        options = dict(tool_timeout_s=LIMITS["timeout"], mem_limit_bytes=LIMITS["mem"])
        if method == "zstd":
            options["zstd_level"] = self.zstd_level
        if method == "bsdiff":
            options["bsdiff_max_bytes"] = self.bsdiff_max
        if method in ("zstd", "rdiff"):  # rdiff's note has a zstd size
            options["env"] = {k: os.environ[k] for k in ("ZSTD_CLEVEL", "ZSTD_NBTHREADS") if k in os.environ}
        return dict(
            format=PEER_CACHE_FORMAT,
            scenario=sc["name"],
            tool=method,
            versions={p: self.versions.get(p) for p in packages},
            binaries={c: binary_identity(c) for c in commands},
            options=options,
            code_sha256=self.code_sha256[method],
            machine=dict(cpu=self.versions.get("cpu"), nproc=os.cpu_count()),
            inputs=inputs,
        )

    def run_plugin(self, sc, d, row):
        """--plugin: the registry plugin measurement with the bundle sideload just built."""
        print("   registry plugin (upload, apply, pulls) ...", end=" ", flush=True)
        t = time.time()
        try:
            self._run_plugin(sc, d, row, t)
        finally:
            log = os.path.join(d, "plugin", "plugin.log")
            if os.path.exists(log):
                keep = os.path.join(self.log_dir, f"plugin-{sc['name']}.log")
                shutil.copyfile(log, keep)
                if "plugin" in sc:
                    sc["plugin"]["kept_log"] = keep
                print(f"   (daemon log: {keep})", flush=True)

    def _run_plugin(self, sc, d, row, t):
        if row["status"] != "yes" or not os.path.exists(os.path.join(d, "app.bundle")):
            sc["plugin"] = dict(status="FAILED", error="no bundle: sideload did not reproduce the target")
        else:
            try:
                sc["plugin"] = self.registry_plugin(sc, d)
                sc["plugin"]["status"] = "yes"
            except Exception as e:  # recorded and reported; the run exits non-zero
                msg = str(e).strip()
                sc["plugin"] = dict(status="FAILED", error=msg)
                log = os.path.join(d, "plugin", "plugin.log")
                print(f"FAILED ({time.time() - t:.0f} s): {msg}\n--- daemon log (tail) ---\n{tail(log, 40)}",
                      flush=True)
                return
        p = sc["plugin"]
        if p["status"] != "yes":
            print(f"FAILED: {p['error']}", flush=True)
            return
        print(f"yes ({time.time() - t:.0f} s): upload {p['upload_s']:.2f} s, upload->tag {p['tag_s']:.2f} s, "
              f"daemon peak RSS {p['hwm_apply_kib'] / 1024:.1f} MiB, pull via plugin "
              f"{min(p['pull_plugin_s']):.2f} s, direct {min(p['pull_direct_s']):.2f} s", flush=True)

    def run_all(self, only=None):
        results = {}
        for sc in self.scenarios:
            print(f"== scenario {sc['name']}: {sc['desc']}", flush=True)
            rows = []
            for label, method in self.TOOLS:
                if only and method not in only:
                    continue
                print(f"   {label} ...", end=" ", flush=True)
                t = time.time()
                key = None
                if method in self.PEERS:
                    key = self.peer_key(method, sc)
                    row, why = self.peer_cache.load(sc["name"], method, key)
                    if row is not None:
                        row["tool"] = label
                        rows.append(row)
                        print(f"{row['status']} (cached, measured {row['measured']})", flush=True)
                        continue
                d = os.path.join(self.work, "runs", sc["name"], method)
                os.makedirs(d)
                measured = datetime.datetime.now().astimezone().isoformat(timespec="minutes")
                try:
                    row = getattr(self, method)(sc, d)
                except Skip as e:
                    row = dict(bytes=None, enc=None, dec=None, status="skipped", note=str(e))
                except ToolTimeout as e:
                    row = dict(bytes=None, enc=None, dec=None, status="timeout", note=f"timeout: {e}")
                except ToolOutOfMemory as e:
                    row = dict(bytes=None, enc=None, dec=None, status="oom", note=str(e))
                except Exception as e:  # a tool that fails counts as not reproducing
                    row = dict(bytes=None, enc=None, dec=None, status="FAILED",
                               note="FAILED: " + str(e).strip().splitlines()[-1][:200])
                row["tool"] = label
                rows.append(row)
                extra = ""
                if key is not None:
                    extra = f"; {why}"
                    if row["status"] in PeerCache.KEEP:
                        extra += self.peer_cache.store(sc["name"], method, key, row, measured)
                    else:
                        extra += "; not stored in the peer cache"
                print(f"{row['status']} ({time.time() - t:.0f} s{extra})", flush=True)
                if method == "sideload" and self.plugin:
                    self.run_plugin(sc, d, row)
                if method == "sideload" and self.link:
                    if row["status"] == "yes" and os.path.exists(os.path.join(d, "app.bundle")):
                        rebuilt = os.path.join(d, "rebuilt.tar")  # checked already; its space is needed
                        if os.path.exists(rebuilt):
                            os.remove(rebuilt)
                        self.run_link(sc, *self.keep_link_bundle(sc, d))
                    else:
                        sc["link"] = dict(status="FAILED", error="no bundle: sideload did not reproduce the target")
                shutil.rmtree(d, ignore_errors=True)
                if method == "sideload" and self.exact:
                    self.run_exact(sc, row)
            results[sc["name"]] = rows
        return results


DEMO_SCENARIOS = {
    "demo-app-update": "demo images (make-demo-images): device holds edge/app:v1, target v2",
    "demo-same-image": "demo images: device holds edge/app:v2, target v2",
    "demo-no-base": "demo images: device holds nothing, target edge/app:v2",
}
ALL_SCENARIOS = list(DEMO_SCENARIOS) + list(corpus.SCENARIOS)


# ---------------------------------------------------------------------------------------------
# output

HEAD = ["tool", "bytes", "% gz image", "% raw image", "enc s", "dec s", "enc RSS MiB", "dec RSS MiB",
        "ok", "notes"]
NUMERIC = {1, 2, 3, 4, 5, 6, 7}


def pct(b, whole):
    p = 100.0 * b / whole
    return f"{p:.3f}" if p < 1 else f"{p:.2f}"


def cells(row, sc):
    def t(m):
        return "n/a" if m is None else f"{m.seconds:.2f}"

    def r(m):
        return "n/a" if m is None else f"{m.rss_kib / 1024:.1f}"

    b = row["bytes"]
    return [
        row["tool"],
        "-" if b is None else f"{b:,}",
        "-" if b is None else pct(b, sc["gz_size"]),
        "-" if b is None else pct(b, sc["raw_size"]),
        t(row["enc"]), t(row["dec"]), r(row["enc"]), r(row["dec"]),
        row["status"],
        row["note"],
    ]


def text_table(rows):
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEAD))]
    lines = []
    for k, r in enumerate(rows):
        parts = [(c.rjust(widths[i]) if i in NUMERIC else c.ljust(widths[i])) for i, c in enumerate(r)]
        lines.append("  ".join(parts).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def md_table(rows, head=HEAD, numeric=NUMERIC):
    out = ["| " + " | ".join(rows[0]) + " |",
           "|" + "|".join("---:" if i in numeric else "---" for i in range(len(head))) + "|"]
    for r in rows[1:]:
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
    return "\n".join(out)


def build_info(bin_dir):
    """The tree the sideload binary was built from: commit, and the files that differ from it."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        built = datetime.datetime.fromtimestamp(os.path.getmtime(os.path.join(bin_dir, "sideload")))
    except OSError:
        return "?"
    dirty = [l.split(None, 1)[-1] for l in sh_out(f"git -C {repo} status --porcelain").splitlines() if l.strip()]
    return (f"built {built.astimezone().strftime('%Y-%m-%d %H:%M:%S %z')} from commit "
            f"{sh_out(f'git -C {repo} rev-parse --short HEAD')}"
            + (f", files differing from it now: {', '.join(dirty)}" if dirty else ", clean tree"))


def machine_info(versions, bin_dir=None):
    deb = ", ".join(f"{p} {v}" for p, v in versions.items() if p in DEB_PACKAGES)
    return [
        ("date", datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %z")),
        ("nproc", sh_out("nproc")),
        ("memory (free -g total)", sh_out("free -g | awk '/^Mem:/ {print $2}'") + " GiB"),
        ("cpu", versions.get("cpu")),
        ("kernel", platform.release()),
        ("tools", deb + f", hdiffpatch (PyPI) {versions.get('hdiffpatch')}"),
    ] + ([("sideload binary", build_info(bin_dir))] if bin_dir else [])


SUMMARY_HEAD = ["scenario", "sideload bytes", "smallest other (bytes)", "sideload ÷ smallest other",
                "plain layer transfer", "sideload apply s", "apply peak RSS MiB",
                "apply scratch declared", "scratch seen"]


def summary_rows(bench, results):
    rows = [SUMMARY_HEAD]
    for sc in bench.scenarios:
        res = results.get(sc["name"], [])
        sl = next((r for r in res if r["tool"] == "sideload"), None)
        plain = next((r for r in res if r["tool"] == "plain layer transfer"), None)
        others = [r for r in res if r["tool"] != "sideload" and r["bytes"] is not None and r["status"] == "yes"]
        best = min(others, key=lambda r: r["bytes"]) if others else None
        ap = sc.get("sideload_apply")
        slb = sl["bytes"] if sl and sl["bytes"] is not None else None
        rows.append([
            sc["name"],
            "-" if slb is None else f"{slb:,}",
            "-" if best is None else f"{best['tool']} ({best['bytes']:,})",
            "-" if (slb is None or best is None) else f"{slb / best['bytes']:.2f}",
            "-" if plain is None or plain["bytes"] is None else f"{plain['bytes']:,}",
            "-" if not ap else f"{ap['seconds']:.2f}",
            "-" if not ap else f"{ap['rss_kib'] / 1024:.1f}",
            "-" if not ap or ap["scratch"] is None else f"{ap['scratch']:,} B",
            "-" if not ap else f"{ap['scratch_seen']:,} B",
        ])
    return rows


def storage_text(storage):
    return ", ".join(f"{n} {k}" for k, n in sorted(storage.items()))


def exact_line(e, never=None):
    """One sentence on one build of the exact measurement (progress line; `never`: the `--exact
    never` build from the same layouts, for the exact one's extra)."""
    if "bytes" not in e:
        return f"{e['status']}: {e.get('error', '')}"
    parts = [f"bundle {e['bytes']:,} B"]
    if never and "bytes" in never:
        extra = e["bytes"] - never["bytes"]
        parts[0] += f" ({extra:+,} B, {100.0 * extra / never['bytes']:+.4f} % over `--exact never`"
        x = exact_extra(e, never)
        if x:
            parts[0] += f": statement {x['statement']:+,}, recipes {x['recipes']:+,}, deltas {x['deltas']:+,}"
        parts[0] += ")"
    if e.get("statement_bytes") is not None:
        parts.append(f"stored statement {e['statement_bytes']:,} B, payload {e['payload_bytes']:,} B")
    if e["mode"] != "never":
        parts.append(f"recipes {e['recipe_bytes']:,} B" if e["recipe_bytes"] is not None else "recipes ?")
        kinds = recipe_kinds(e)
        if kinds:
            parts.append(f"recipe kinds: {kinds}")
    parts.append(f"layers: {storage_text(e['storage'])}")
    parts.append(f"build {e['enc'].seconds:.2f} s")
    parts.append(f"apply {e['dec'].seconds:.2f} s, peak RSS {e['dec'].rss_kib / 1024:.1f} MiB")
    if e["status"] == "yes" and e["exact"]:
        parts.append(f"rebuilt manifest {e['rebuilt_manifest']} = the source's, every blob checked")
    elif e["status"] == "yes":
        parts.append(f"rebuilt manifest {e.get('rebuilt_manifest')} (sideload's own), config + every layer "
                     "diff_id checked")
    elif e["status"] == "not exact":
        parts.append(f"NOT EXACT: {e['reason']}; rebuilt manifest {e.get('rebuilt_manifest')} (sideload's own), "
                     "config + every layer diff_id checked")
    else:
        parts.append(f"MISMATCH: {e.get('error')}")
    return "; ".join(parts)


def recipe_kinds(e):
    """The kinds of an exact build's recipes (`zlib level 6 ×2`), layers without one left out."""
    kinds = {}
    for k in e.get("layer_recipe_kinds") or []:
        if k:
            kinds[k] = kinds.get(k, 0) + 1
    return ", ".join(k + (f" ×{n}" if n > 1 else "") for k, n in kinds.items())


EXACT_HEAD = ["scenario", "gzip writer", "exact", "`never` bundle B", "exact bundle B", "extra B",
              "extra %", "≤ 0.1 %", "extra = statement + recipes + deltas B", "recipe kinds", "layers (storage)",
              "build s exact / never", "apply s exact / never", "apply ÷ zlib's", "apply RSS MiB exact / never",
              "manifest digest", "notes"]
EXACT_NUMERIC = {3, 4, 5, 6, 11, 12, 13, 14}


def exact_extra(e, nv):
    """Where the exact bundle's extra bytes over the `--exact never` one are: (statement, the
    stored (compressed) statement's difference; recipes, the recipe bytes in the payload;
    deltas, the rest of the payload's difference, i.e. the two builds' deltas; slot, the
    signature slots' difference, 0). None when either lacks the figures."""
    if any(x.get(k) is None for x in (e, nv) for k in ("statement_bytes", "payload_bytes", "slot_bytes")):
        return None
    recipes = e.get("recipe_bytes") or 0
    return dict(statement=e["statement_bytes"] - nv["statement_bytes"], recipes=recipes,
                deltas=e["payload_bytes"] - recipes - nv["payload_bytes"], slot=e["slot_bytes"] - nv["slot_bytes"])


def exact_changed(e):
    """Whether the target has a layer the device does not hold (issue 19's targets are for
    scenarios with a changed layer): any layer of the exact build not `held`."""
    return any(k != "held" for k in (e.get("storage") or {}))


WRITER_TEXT = {
    "zlib": "as the corpus and demo write them (zlib -6: Python's gzip, Rust's flate2)",
    "go": "Go's compress/gzip, default level (Docker, BuildKit, containerd)",
    "pgzip": "pgzip as Debian's skopeo writes it (containers/image: skopeo, podman, buildah)",
}


def exact_rows(bench):
    """The exact-digest table: a row per scenario and gzip writer measured; `never` = the
    `--exact never` build from the same layouts, `d-a` = the sideload row (docker-archive)."""
    rows = [EXACT_HEAD]
    for sc in bench.scenarios:
        for writer, w in (sc.get("exact") or {}).items():
            e, nv = w.get("exact") or {}, w.get("never") or {}
            if "bytes" not in e:
                rows.append([sc["name"], writer, "-"] + ["-"] * 13
                            + [f"{e.get('status')}: {e.get('error', '')}"[:300]])
                continue
            nb = nv.get("bytes")
            extra = None if nb is None else e["bytes"] - nb
            if e["status"] == "yes":
                check = f"= source {e['source_manifest'][:19]}…"
                notes = "rebuilt manifest = the source's (`skopeo inspect --raw`), every blob hashed"
            elif e["status"] == "not exact":
                check = f"sideload's own {str(e.get('rebuilt_manifest'))[:19]}…"
                notes = f"not exact: {e['reason']}; config + layer diff_ids checked"
            else:
                check = "MISMATCH"
                notes = f"MISMATCH: {e.get('error')}"
            if nb is None:
                notes += f"; `--exact never`: {nv.get('status')}: {nv.get('error', '')}"
            elif nv["status"] != "yes":
                notes += f"; `--exact never` rebuilt image: {nv.get('status')}: {nv.get('error', '')}"
            x, y = e.get("delta"), nv.get("delta")
            if x and y:
                notes += (f"; payload without recipes {x['payload']:,} / never {y['payload']:,} B, files patched with "
                          f"bsdiff {x['bsdiff']} / {y['bsdiff']}, zstd {x['zstd']} / {y['zstd']}")
            if e["base_bytes"] is not None:
                dx = e["bytes"] - e["base_bytes"]
                notes += f"; docker-archive bundle {e['base_bytes']:,} B (exact {dx:+,} B, {100.0 * dx / e['base_bytes']:+.3f} %)"
            parts = None if nb is None else exact_extra(e, nv)
            if parts:
                notes += (f"; stored statement {e['statement_bytes']:,} / never {nv['statement_bytes']:,} B, payload "
                          f"{e['payload_bytes']:,} / never {nv['payload_bytes']:,} B")
                if parts["slot"]:
                    notes += f", signature slots differ by {parts['slot']:+,} B"
                fixed = parts["statement"] + parts["recipes"]
                if fixed > 0:
                    notes += (f"; statement + recipes {fixed:,} B are 0.1 % of a {1000 * fixed:,} B `never` bundle")
            kinds = e.get("layer_recipe_kinds") or [None] * len(e["layer_recipes"])
            per_layer = ", ".join(f"{r}" + (f" ({k})" if k else "") for r, k in zip(e["layer_recipes"], kinds))
            notes += (f"; recipes per layer: {per_layer} B; apply scratch: declared {e['scratch']} B, seen "
                      f"{e['scratch_seen']} B; gz image {e['gz_size']:,} B, exact bundle {pct(e['bytes'], e['gz_size'])} % of it")
            if len(e.get("dec_runs") or []) > 1:
                notes += (f"; exact apply runs {', '.join(f'{x:.2f}' for x in e['dec_runs'])} s, never "
                          f"{', '.join(f'{x:.2f}' for x in nv.get('dec_runs') or [])} s (median reported)")
            if w.get("layouts_s") and writer != "zlib":
                notes += f"; layouts written in {w['layouts_s']:.0f} s"
            z = (sc["exact"].get("zlib") or {}).get("exact") or {}
            ratio = "-"
            if writer != "zlib" and z.get("dec") and z["dec"].seconds > 0:
                r = e["dec"].seconds / z["dec"].seconds
                ratio = f"{r:.2f}" + ("" if r <= 1.5 else " (> 1.5)")
            target = "-" if extra is None else ("yes" if 100.0 * extra / nb <= 0.1 else "NO")
            if not exact_changed(e):
                target += " (no changed layer)"
            rows.append([
                sc["name"], writer, "yes" if e["exact"] else "no",
                "-" if nb is None else f"{nb:,}", f"{e['bytes']:,}",
                "-" if extra is None else f"{extra:+,}",
                "-" if extra is None else f"{100.0 * extra / nb:+.4f}",
                target,
                "-" if not parts else (f"{parts['statement']:+,} + {parts['recipes']:,} "
                                       + ("− " if parts["deltas"] < 0 else "+ ") + f"{abs(parts['deltas']):,}"),
                recipe_kinds(e) or "-",
                storage_text(e["storage"]),
                f"{e['enc'].seconds:.2f} / " + ("-" if nb is None else f"{nv['enc'].seconds:.2f}"),
                f"{e['dec'].seconds:.2f} / " + ("-" if nb is None else f"{nv['dec'].seconds:.2f}"),
                ratio,
                f"{e['dec'].rss_kib / 1024:.1f} / " + ("-" if nb is None else f"{nv['dec'].rss_kib / 1024:.1f}"),
                check, notes,
            ])
    return rows


PLUGIN_HEAD = ["scenario", "bundle bytes", "upload s", "upload→tag s", "upload→applied s",
               "daemon peak RSS MiB", "pull via plugin s", "pull direct s", "plugin ÷ direct", "ok", "notes"]


def plugin_line(p):
    """One sentence on a scenario's registry plugin measurement (under its table)."""
    if p["status"] != "yes":
        return "registry plugin: FAILED: " + p["error"].splitlines()[0][:300]
    pp, pd = min(p["pull_plugin_s"]), min(p["pull_direct_s"])
    return (f"registry plugin: upload {p['upload_s']:.2f} s, upload complete → tag {p['ref']} answers "
            f"{p['manifest_digest'][:19]}… {p['tag_s']:.2f} s (bundle applied {p['applied_s']:.2f} s); "
            f"daemon peak RSS {p['hwm_apply_kib'] / 1024:.1f} MiB (idle {p['rss_idle_kib'] / 1024:.1f}); "
            f"pull of {p['image_bytes']:,} B via plugin {pp:.2f} s, direct {pd:.2f} s (ratio {pp / pd:.2f})")


def plugin_rows(bench):
    rows = [PLUGIN_HEAD]
    for sc in bench.scenarios:
        p = sc.get("plugin")
        if not p:
            continue
        if p["status"] != "yes":
            rows.append([sc["name"]] + ["-"] * 8 + ["FAILED", p["error"].splitlines()[0][:200]])
            continue
        pp, pd = min(p["pull_plugin_s"]), min(p["pull_direct_s"])
        rate = lambda secs: f"{p['image_bytes'] / secs / 1e6:.0f} MB/s"
        notes = (f"image {p['image_bytes']:,} B ({', '.join(m.rsplit('.', 1)[-1] for m in p['layer_media_types'])} "
                 f"layers); pulls (min of {len(p['pull_plugin_s'])}, skopeo to dir:): plugin "
                 + " / ".join(f"{x:.2f}" for x in p["pull_plugin_s"]) + f" s ({rate(pp)}), direct "
                 + " / ".join(f"{x:.2f}" for x in p["pull_direct_s"]) + f" s ({rate(pd)}); "
                 + (f"apply: decode into staging {p['decode_s']:.2f} s, push into the registry "
                    f"{p['tag_s'] - p['decode_s']:.2f} s; " if p.get("decode_s") is not None else "")
                 + f"daemon CPU: apply {p['apply_cpu_s']:.2f} s, per pull through it {p['pull_cpu_s']:.2f} s; "
                 f"daemon RSS idle {p['rss_idle_kib'] / 1024:.1f} MiB, VmHWM after the pulls "
                 f"{p['hwm_end_kib'] / 1024:.1f} MiB; registry seeded with "
                 + (f"{p['seed']} ({p['seed_s']:.0f} s, not timed)" if p["seed"] else "nothing"))
        rows.append([
            sc["name"], f"{p['bundle_bytes']:,}", f"{p['upload_s']:.2f}", f"{p['tag_s']:.2f}",
            f"{p['applied_s']:.2f}", f"{p['hwm_apply_kib'] / 1024:.1f}", f"{pp:.2f}", f"{pd:.2f}",
            f"{pp / pd:.2f}", "yes", notes,
        ])
    return rows


LINK_HEAD = ["transfer", "finished", "to queued s", "to applied s", "client sent B", "device received B",
             "wire rx B", "TCP payload est. B", "payload ÷ bundle", "uploads / retries", "requests", "drops",
             "notes"]
LINK_NUMERIC = {2, 3, 4, 5, 6, 7, 8, 10, 11}


def fmt_s(x):
    return "-" if x is None else f"{x:.1f}"


def drops_before_queued(t):
    """The drops a transfer met before the device had the whole bundle (push, with --wait, goes
    on asking for the state over the link after that)."""
    until = t["queued_s"] if t["queued_s"] is not None else t["end_s"]
    return [d for d in t["drops"] if d["down_at"] < until]


def link_rows(bench):
    """The --link table: a row per transfer (per scenario measured), or a FAILED row."""
    rows = [LINK_HEAD]
    for sc in bench.scenarios:
        lk = sc.get("link")
        if not lk:
            continue
        if "push" not in lk:
            rows.append([f"{sc['name']}: FAILED"] + ["-"] * 11 + [lk.get("error", "").splitlines()[0][:200]])
            continue
        for name, t in (("sideload push", lk["push"]), ("curl, no resume", lk.get("curl"))):
            if t is None:
                rows.append([name, "-"] + ["-"] * 10 + ["not run"])
                continue
            label = name if len(bench.scenarios) == 1 else f"{sc['name']}: {name}"
            if name == "sideload push":
                fin = "yes" if t["finished"] else f"NO ({t['state']})"
                tries = f"1 / {t['retries']}"
                sig = ""
                if t["exit"] is not None and t["exit"] < 0:
                    sig = f" (killed by signal {-t['exit']}, " + ("by the bench: over its time cap)" if t["killed_by_bench"]
                                                                  else "not by the bench)")
                notes = (f"{t['command']}; exit {t['exit']}{sig}; client done at {fmt_s(t['client_s'])} s "
                         f"(with --wait: after it saw applied); partial upload left on the device {t['part_left']:,} B")
            else:
                fin = "yes" if t["finished"] else f"no (budget {t['budget_s']} s)"
                tries = f"{t['uploads']} from byte 0"
                fails = ", ".join(f"{k} ×{n}" for k, n in sorted(t["failures"].items())) or "none"
                notes = (f"{t['command']}; budget {t['budget_s']} s; failed attempts: {fails}; "
                         f"{t['deleted_after_429']} abandoned upload(s) deleted after 429 too_many_uploads; "
                         f"partial uploads (.part) left on the device {t['part_left']:,} B (peak {t['part_peak']:,} B)")
            rows.append([
                label, fin, fmt_s(t["queued_s"]), fmt_s(t["applied_s"]),
                "-" if t["client_sent"] is None else f"{t['client_sent']:,}", f"{t['device_received']:,}",
                f"{t['rx_bytes']:,}", f"{t['payload_est']:,}", f"{t['payload_ratio']:.3f}", tries,
                "-" if t["requests"] is None else str(t["requests"]), str(len(drops_before_queued(t))), notes,
            ])
    return rows


def link_lines(bench):
    """Sentences under the --link table: link, schedule, calibration, and what each drop did."""
    out = []
    for sc in bench.scenarios:
        lk = sc.get("link")
        if not lk or "push" not in lk:
            continue
        b, cal = lk["bundle"], lk["calibration"]
        plan = ", ".join(f"{u:.1f}/{d:.1f}" for u, d in lk["plan"][:10])
        out.append(f"{sc['name']}: bundle {b['bundle_bytes']:,} B ({b['ref']}); link: veth, tbf `{lk['link']['tbf']}` on "
                   f"both ends' egress, drops = device end set down; seed {lk['seed']}, up ~ uniform"
                   f"{tuple(lk['link']['up_s'])} s, down ~ uniform{tuple(lk['link']['down_s'])} s; its first "
                   f"10 periods (up s / down s, from each transfer's start): {plan}")
        out.append(f"clean-link calibration: {cal['body_bytes']:,} B PATCH in {cal['patch_s']:.1f} s = "
                   f"{cal['payload_mbit_s']:.3f} Mbit/s of payload (the bundle alone: "
                   f"{b['bundle_bytes'] * 8 / cal['payload_mbit_s'] / 1e6:.0f} s without drops); TCP payload estimate "
                   f"(rx_bytes - {TCP_HEADERS} × rx_packets) {cal['payload_est']:,} B against {cal['curl_sent']:,} B "
                   f"curl sent (headers + body): {100 * cal['error']:+.3f} %")
        for name, key in (("sideload push", "push"), ("curl", "curl")):
            t = lk.get(key)
            if not t:
                continue
            parts = []
            before = drops_before_queued(t)
            for dr in t["drops"]:
                up = dr.get("up_at")
                span = f"{dr['down_at']:.0f}–{'?' if up is None else f'{up:.0f}'} s"
                what = []
                if dr["client_gave_up_after"] is not None:
                    what.append(f"gave up after {dr['client_gave_up_after']:.0f} s")
                if dr["data_again_after_up"] is not None:
                    what.append(f"data {dr['data_again_after_up']:.1f} s after up")
                if dr not in before:
                    what.append("after the device had the bundle")
                parts.append(span + (f" ({', '.join(what)})" if what else ""))
            out.append(f"{name}: drops met: " + ("; ".join(parts) if parts else "none")
                       + (f"; schedule error: {t['schedule_error']}" if t.get("schedule_error") else ""))
    return out


def report(bench, results, out_path, total_seconds):
    text, md = [], []
    md.append("# sideload delta benchmark\n")
    md.append("Generated by `bench/run.sh`; see `bench/README.md`. Compare ratios within one run: the "
              "machine is small and shared, times and memory are noisy. `% gz image`: bytes ÷ the "
              "target as a registry sends it (gzip layer blobs + config); `% raw image`: bytes ÷ its "
              "uncompressed layer tars + config.\n")
    for sc in bench.scenarios:
        rows = results.get(sc["name"])
        if rows is None:
            continue
        intro = (f"target {sc['target_ref']}: {sc['gz_size']:,} B as a registry sends it (gzip), "
                 f"{sc['raw_size']:,} B uncompressed; docker-save archives: "
                 + (f"old ({sc['old_ref']}) {sc['old_size']:,} B, " if sc["old"] else "no old image, ")
                 + f"new {sc['new_size']:,} B")
        table = [HEAD] + [cells(r, sc) for r in rows]
        text.append(f"\n[{sc['name']}] {sc['desc']}")
        text.append(intro)
        text.append(text_table(table))
        ap = sc.get("sideload_apply")
        if ap:
            line = (f"sideload apply: peak RSS {ap['rss_kib'] / 1024:.1f} MiB; scratch declared in the "
                    f"statement {ap['scratch']:,} B ({mib(ap['scratch'] or 0)}), largest seen "
                    f"{ap['scratch_seen']:,} B")
            text.append(line)
        md.append(f"## {sc['name']}\n")
        md.append(sc["desc"] + ".\n")
        md.append(intro + ".\n")
        md.append(md_table(table) + "\n")
        if ap:
            md.append(line + ".\n")
        for writer, w in (sc.get("exact") or {}).items():
            el = (f"exact manifest digest (oci: layouts, {writer} gzip): " + exact_line(w["exact"], w["never"])
                  + f"; `--exact never` from the same layouts: " + exact_line(w["never"]))
            text.append(el)
            md.append(el + ".\n")
        if sc.get("plugin"):
            pl = plugin_line(sc["plugin"])
            text.append(pl)
            md.append(pl + ".\n")
    if any(results.values()):
        summ = summary_rows(bench, results)
        text.append("\n[summary] sideload against the smallest output of any other tool that reproduced the target")
        text.append("\n".join("  |  ".join(r) for r in summ))
        md.append("## Summary\n")
        md.append("sideload against the smallest output of any other tool that reproduced the target "
                  "(ratio < 1: sideload is smaller).\n")
        md.append(md_table(summ, SUMMARY_HEAD, {1, 3, 4, 5, 6, 7, 8}) + "\n")
    erow = exact_rows(bench)
    if len(erow) > 1:
        text.append("\n[exact manifest digest] sideload build from gzip OCI layouts (--exact where-possible) "
                    "against `--exact never` from the same layouts, per gzip writer")
        text.append("\n".join("  |  ".join(r) for r in erow))
        md.append("## Exact manifest digest\n")
        md.append("The same scenario built from gzip OCI layouts (target and base as `oci:`, `sideload build "
                  "--exact where-possible`), signed and applied like the sideload row but to an `oci:` output, "
                  "which the device can serve under the source's own manifest digest; and built again from the "
                  "same layouts with `--exact never` (uncompressed layers, a manifest of sideload's own), applied "
                  "the same way. Once per gzip writer of the layers, target and base alike: "
                  + "; ".join(f"`{k}`: {v}" for k, v in WRITER_TEXT.items()) + ". `extra B` / `extra %`: exact "
                  "bundle − the `never` bundle, and ÷ it; `≤ 0.1 %`: issue 19's target, for scenarios with a changed "
                  "layer (a layer the device does not hold). `extra = statement + recipes + deltas`: the stored "
                  "(zstd) statements' difference (the exact statement carries the source's manifest, as a template "
                  "without the digests and sizes of the blobs the device recreates or holds), the build's `recipe_bytes` "
                  "(a zlib, Go or pgzip level, or preflate corrections, that recreate each gzip blob; `recipe kinds`: "
                  "the build's descriptions, notes: per layer), and the rest of the payloads' difference, the two "
                  "builds' deltas (`sideload build` gives bsdiff a time budget, so under load two builds of the "
                  "same delta differ). `layers (storage)`: the build's per-layer `storage`. `apply ÷ zlib's`: this "
                  "writer's exact apply time ÷ the zlib layers' (issue 19's target: at most 1.5). `manifest "
                  "digest`: `skopeo inspect --raw oci:OUT:TAG | sha256sum` of the rebuilt layout against the "
                  "source layout's manifest digest (and every blob hashed). The notes compare with the sideload "
                  "row's docker-archive bundle too. See `bench/README.md`.\n")
        md.append(md_table(erow, EXACT_HEAD, EXACT_NUMERIC) + "\n")
    prow = plugin_rows(bench)
    if len(prow) > 1:
        text.append("\n[registry plugin] sideload-registry-plugin in front of docker-registry (loopback): "
                    "the bundle uploaded, applied into the registry, the image pulled both ways")
        text.append("\n".join("  |  ".join(r) for r in prow))
        md.append("## Registry plugin\n")
        md.append("`--plugin`: the same bundle uploaded to `sideload-registry-plugin` (one `PATCH`), which "
                  "applies it into a `docker-registry` on loopback seeded with the old image. `upload s`: the "
                  "`PATCH` request (body over loopback plus the daemon's intake check); `upload→tag s`: from its "
                  "answer until `HEAD /v2/REPO/manifests/TAG` through the plugin answers the statement's "
                  "manifest digest (polled every 50 ms); `upload→applied s`: until the bundle's state is "
                  "`applied`; daemon peak RSS: `VmHWM` of the daemon after the apply (since its start); pulls: "
                  "`skopeo copy docker://… dir:` of the rebuilt image through the plugin and straight from the "
                  "registry, the faster of the rounds; ratio > 1: the plugin is slower. See `bench/README.md`.\n")
        md.append(md_table(prow, PLUGIN_HEAD, {1, 2, 3, 4, 5, 6, 7, 8}) + "\n")
    lrow = link_rows(bench)
    if len(lrow) > 1:
        text.append("\n[shaped link] the bundle over 1 Mbit/s with drops: sideload push against curl without resume, "
                    "each to a fresh device, same drop schedule")
        text.append("\n".join("  |  ".join(r) for r in lrow))
        text.extend(link_lines(bench))
        md.append("## Shaped link with drops\n")
        md.append("`--link`: the bundle sent from a network namespace to the device daemon over a veth pair shaped "
                  "to 1 Mbit/s each way (tc tbf), dropped on a seeded schedule (device end set down: silent loss), "
                  "once with `sideload push` and once with plain `curl` starting over after every failure, each to a "
                  "fresh device (registry seeded with the old image, new data directory). `to queued s` / `to "
                  "applied s`: from the transfer's start until the device's journal says so (polled every "
                  f"{LINK_POLL_S} s on the device, not over the link). `client sent B`: body bytes the client handed "
                  "to its connections (push's `bytes_sent`, the sum of curl's `size_upload`); `device received B`: "
                  "the daemon's `sideload_upload_bytes_total`; `wire rx B`: the device end's rx_bytes (Ethernet "
                  f"frames reaching the device); `TCP payload est. B`: rx_bytes - {TCP_HEADERS} × rx_packets, checked "
                  "on the clean link first (below); `payload ÷ bundle`: that ÷ the bundle size (1 = nothing sent "
                  "twice). `drops`: down periods that began before the device had the whole bundle. See `bench/README.md`.\n")
        md.append(md_table(lrow, LINK_HEAD, LINK_NUMERIC) + "\n")
        for line in link_lines(bench):
            md.append(line + ".\n")
    for sc in bench.scenarios:
        lk = sc.get("link")
        if lk and lk.get("status") != "yes":
            text.append(f"shaped link ({sc['name']}): FAILED: {lk.get('error', '')}")
    md.append("## Machine\n")
    for k, v in bench.machine:
        md.append(f"- {k}: {v}")
    md.append(f"- per-command limits: {LIMITS['timeout']} s, {LIMITS['mem'] >> 30} GiB address space")
    md.append(f"- benchmark wall time: {total_seconds:.0f} s (corpus build included when not cached)")
    pc = bench.peer_cache
    if pc.hits or pc.misses:
        md.append(f"- peer rows: {pc.hits} reused from the peer result cache (`{pc.root}`; measured at the "
                  f"date in their notes), {pc.misses} run now" + ("" if pc.enabled else " (--no-peer-cache)"))
    md.append("")
    text.append("\n" + "; ".join(f"{k}: {v}" for k, v in bench.machine if k in ("date", "nproc", "memory (free -g total)")))
    print("\n".join(text))
    with open(out_path, "w") as f:
        f.write("\n".join(md))
    print(f"\nwrote {out_path}")


EXACT_WRITERS = ("zlib", "go", "pgzip")


def exact_writers(text):
    """`zlib,go,pgzip`: some of EXACT_WRITERS, each once (argparse type)."""
    out = []
    for w in (x.strip() for x in text.split(",")):
        if w not in EXACT_WRITERS:
            raise argparse.ArgumentTypeError(f"{w!r}: the writers are {', '.join(EXACT_WRITERS)}")
        if w not in out:
            out.append(w)
    if not out:
        raise argparse.ArgumentTypeError("name at least one writer")
    return out


def seconds_range(text):
    """`LO,HI` seconds, 0 < LO <= HI (argparse type)."""
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write LO,HI in seconds, e.g. 30,90")
    if not 0 < lo <= hi:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 < LO <= HI")
    return (lo, hi)


def on_sigterm(signum, frame):
    """A SIGTERM unwinds like Ctrl-C, so the finally blocks stop the servers and remove the link."""
    raise KeyboardInterrupt()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="directory with sideload, sideload-sign, examples/")
    ap.add_argument("--work", required=True, help="empty scratch directory")
    ap.add_argument("--out", required=True, help="markdown file to write")
    ap.add_argument("--scenario", action="append", choices=ALL_SCENARIOS + ["demo"],
                    help="run this scenario (repeatable; `demo` = the three demo ones); default: all")
    ap.add_argument("--quick", action="store_true", help="only the demo scenarios (no corpus)")
    ap.add_argument("--cache", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache"),
                    help="corpus cache directory (default bench/.cache)")
    ap.add_argument("--zstd-level", type=int, default=22, help="zstd --patch-from level (20-22 adds --ultra)")
    ap.add_argument("--tool-timeout", type=int, default=1200,
                    help="seconds one measured command (an encode or a decode) may take (default 1200)")
    ap.add_argument("--mem-limit-gib", type=int, default=16,
                    help="address-space limit for each measured command, GiB (0: none; default 16)")
    ap.add_argument("--bsdiff-max-bytes", type=float, default=1e9,
                    help="skip bsdiff when the old or new file is larger (default 1e9)")
    methods = [m for _, m in Bench.TOOLS]
    ap.add_argument("--only", metavar="METHOD,...",
                    help="run only these tools, comma-separated, from: " + ", ".join(methods))
    ap.add_argument("--no-peer-cache", action="store_true",
                    help="run every peer tool even when bench/.cache/peer-results holds its row for the "
                         "same key (the rows are rewritten)")
    ap.add_argument("--no-exact", action="store_true",
                    help="skip the exact-digest measurement (by default, wherever sideload runs, its bundle is "
                         "also built from the gzip OCI layouts with --exact where-possible, applied to an oci: "
                         "layout and its manifest digest checked against the source's; and with --exact never "
                         "from the same layouts)")
    ap.add_argument("--exact-writers", type=exact_writers, default=list(EXACT_WRITERS), metavar="W,...",
                    help="the exact measurement once per gzip writer of the layers, target and base alike: zlib "
                         "(the layouts as corpus.py and make-demo-images write them), go (every gzip blob written "
                         "again by Go's compress/gzip at its default level, built here with Debian's go), pgzip "
                         "(written again by skopeo: klauspost's pgzip); default: all three, in that order")
    ap.add_argument("--exact-apply-runs", type=int, default=1, metavar="N",
                    help="apply each bundle of the exact measurement N times (each to a fresh output) and "
                         "report the median time: the apply times are compared across writers (default 1)")
    ap.add_argument("--plugin", action="store_true",
                    help="also measure the registry plugin for each scenario: upload sideload's bundle to "
                         "sideload-registry-plugin (from --bin) in front of docker-registry on loopback, time "
                         "upload -> tag visible, the daemon's peak RSS, and skopeo pulls through the plugin "
                         "and straight from the registry (needs sideload in --only)")
    ap.add_argument("--plugin-pull-rounds", type=int, default=PLUGIN_PULL_ROUNDS, metavar="N",
                    help=f"--plugin: pulls each way, alternating (default {PLUGIN_PULL_ROUNDS}); the fastest counts")
    ap.add_argument("--link", action="store_true",
                    help="also deliver each scenario's bundle over a 1 Mbit/s link with drops (network namespace, "
                         "veth, tc tbf; needs root): sideload push, then plain curl without resume, each to a fresh "
                         "device daemon, same drop schedule; wall time, bytes sent, bytes on the wire (needs "
                         "sideload in --only; meant for --scenario large)")
    ap.add_argument("--link-only", action="store_true",
                    help="only the --link measurement, with the bundle an earlier --link run kept in "
                         "bench/.cache/link/SCENARIO (no build, no other tool)")
    ap.add_argument("--link-seed", type=int, default=LINK_SEED, metavar="N",
                    help=f"--link: seed of the drop schedule (default {LINK_SEED})")
    ap.add_argument("--link-up-s", type=seconds_range, default=LINK_UP_S, metavar="LO,HI",
                    help="--link: the link stays up uniform(LO, HI) seconds between drops (default %s,%s)" % LINK_UP_S)
    ap.add_argument("--link-down-s", type=seconds_range, default=LINK_DOWN_S, metavar="LO,HI",
                    help="--link: each drop lasts uniform(LO, HI) seconds (default %s,%s)" % LINK_DOWN_S)
    ap.add_argument("--link-budget-s", type=float, metavar="S",
                    help=f"--link: how long curl may keep starting over (default {LINK_BUDGET_FACTOR} x sideload "
                         f"push's wall time, at least {LINK_BUDGET_MIN_S} s)")
    args = ap.parse_args()
    only = None
    if args.only:
        only = {m.strip() for m in args.only.split(",") if m.strip()}
        unknown = sorted(only - set(methods))
        if unknown:
            ap.error(f"--only: unknown method(s) {', '.join(unknown)}; known: {', '.join(methods)}")
    if args.plugin_pull_rounds < 1:
        ap.error("--plugin-pull-rounds must be at least 1")
    if args.plugin:
        if only is not None and "sideload" not in only:
            ap.error("--plugin uploads the bundle sideload builds: add sideload to --only")
        missing = [c for c in ("docker-registry", "skopeo") if shutil.which(c) is None]
        if not os.access(os.path.join(args.bin, "sideload-registry-plugin"), os.X_OK):
            missing.append(os.path.join(args.bin, "sideload-registry-plugin"))
        if missing:
            ap.error("--plugin needs: " + ", ".join(missing))
    if args.link or args.link_only:
        if args.link and only is not None and "sideload" not in only:
            ap.error("--link sends the bundle sideload builds: add sideload to --only (or use --link-only)")
        missing = link_preflight() + [c for c in ("docker-registry", "skopeo") if shutil.which(c) is None]
        for b in ("sideload", "sideload-registry-plugin"):
            if not os.access(os.path.join(args.bin, b), os.X_OK):
                missing.append(os.path.join(args.bin, b))
        if missing:
            ap.error("--link needs: " + ", ".join(missing))
    if not args.no_exact and "go" in args.exact_writers and shutil.which("go") is None:
        ap.error("--exact-writers go builds a Go program: install Debian's golang-go (or leave go out)")
    if args.exact_apply_runs < 1:
        ap.error("--exact-apply-runs must be at least 1")
    if args.link_budget_s is not None and args.link_budget_s <= 0:
        ap.error("--link-budget-s must be positive")
    LIMITS["timeout"] = args.tool_timeout
    LIMITS["mem"] = args.mem_limit_gib << 30
    if args.scenario:
        names = []
        for n in args.scenario:
            for m in (list(DEMO_SCENARIOS) if n == "demo" else [n]):
                if m not in names:
                    names.append(m)
    elif args.quick:
        names = list(DEMO_SCENARIOS)
    else:
        names = ALL_SCENARIOS
    start = datetime.datetime.now()
    bench = Bench(args)
    bench.machine = machine_info(bench.versions, args.bin)
    signal.signal(signal.SIGTERM, on_sigterm)
    bench.setup(names)
    results = bench.run_link_only() if args.link_only else bench.run_all(only)
    report(bench, results, args.out, (datetime.datetime.now() - start).total_seconds())
    failed = [(n, r["tool"], r["status"]) for n, rows in results.items() for r in rows
              if r["status"] in ("NO", "FAILED")]
    failed += [(sc["name"], f"sideload exact ({writer} gzip, {k})", w[k]["status"]) for sc in bench.scenarios
               for writer, w in (sc.get("exact") or {}).items() for k in ("exact", "never")
               if w[k]["status"] in ("NO", "FAILED")]
    failed += [(sc["name"], "registry plugin", "FAILED") for sc in bench.scenarios
               if sc.get("plugin") and sc["plugin"]["status"] != "yes"]
    failed += [(sc["name"], "shaped link", "FAILED") for sc in bench.scenarios
               if sc.get("link") and sc["link"]["status"] != "yes"]
    if failed:
        print("NOT REPRODUCED: " + ", ".join(f"{t} in {n} ({s})" for n, t, s in failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the finally blocks have stopped what the bench started
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
