#!/usr/bin/env python3
"""Delta benchmark: sideload against the general tools, on the same inputs.

Called by bench/run.sh after the installs and the release build; stdlib only (HDiffPatch runs
in its own `python3 -c` process so that its time and memory are measured apart from this one).

  bench.py --bin target/release --work TMPDIR --out bench/results/latest.md

Exit status: 0 when every tool's decode reproduced its input, 1 otherwise.
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile

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


def timed(cmd, workdir, stdout_path=None):
    """Runs cmd under /usr/bin/time -f '%e %M'; raises on failure."""
    tf = os.path.join(workdir, ".time")
    out = open(stdout_path, "wb") if stdout_path else subprocess.PIPE
    try:
        p = subprocess.run(
            ["/usr/bin/time", "-f", "%e %M", "-o", tf] + [str(c) for c in cmd],
            stdout=out,
            stderr=subprocess.PIPE,
        )
    finally:
        if stdout_path:
            out.close()
    if p.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, cmd))}: exit {p.returncode}\n{p.stderr.decode(errors='replace')[-2000:]}"
        )
    with open(tf) as f:
        last = f.read().strip().splitlines()[-1]
    secs, rss = last.split()
    return Measured(float(secs), int(rss), p.stdout if not stdout_path else b"")


def combine(*ms):
    """Several steps of one side: times add up, memory is the largest peak."""
    return Measured(sum(m.seconds for m in ms), max(m.rss_kib for m in ms), b"")


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


def archive_diff_ids(path):
    """diff_ids of the image in a docker-archive (docker save) file."""
    with tarfile.open(path) as t:
        manifest = json.load(t.extractfile("manifest.json"))[0]
        config = json.load(t.extractfile(manifest["Config"]))
    return config["rootfs"]["diff_ids"]


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


# ---------------------------------------------------------------------------------------------
# tools: each returns a row dict: bytes, enc (Measured|None), dec (Measured|None), ok, note

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


class Bench:
    def __init__(self, args):
        self.bin = os.path.abspath(args.bin)
        self.work = os.path.abspath(args.work)
        self.zstd_level = args.zstd_level

    def sideload(self, sc, d):
        sl, sign = os.path.join(self.bin, "sideload"), os.path.join(self.bin, "sideload-sign")
        device = os.path.join(d, "device")
        os.makedirs(device)
        bases = []
        if sc["old"] is not None:
            dst = os.path.join(device, "held.tar")
            os.link(sc["old"], dst)
            bases = ["--base", f"docker-archive:{dst}"]
        bundle = os.path.join(d, "app.bundle")
        stmt = os.path.join(d, "statement.json")
        enc = timed(
            [sl, "build", f"docker-archive:{sc['new']}", *bases, "-o", bundle,
             "--repository", "edge/app", "--tag", "v2", "--statement-out", stmt, "--json"],
            d,
        )
        report = json.loads(enc.stdout)
        sig = os.path.join(d, "bench.sig")
        # Signing is a separate offline step (a few ms): run, not timed.
        run([sign, "sign", "--key", self.key, stmt, "-o", sig])
        run([sl, "attach", bundle, sig])
        size = os.path.getsize(bundle)
        out = os.path.join(d, "rebuilt.tar")
        dec = timed(
            [sl, "apply", bundle, "--policy", self.policy, "--base-dir", device,
             "--output", f"docker-archive:{out}"],
            d,
        )
        err = check_rebuilt_archive(out, self.target_config_sha, self.target_diff_ids)
        enc_kinds = {}
        for layer in report.get("layers", []):
            enc_kinds[layer["encoding"]] = enc_kinds.get(layer["encoding"], 0) + 1
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(enc_kinds.items()))
        note = f"layers: {kinds}; payload {report['payload_size']} B"
        if err:
            note += f"; MISMATCH: {err}"
        else:
            note += "; config digest + every layer diff_id match"
        return dict(bytes=size, enc=enc, dec=dec, ok=err is None, note=note)

    def plain(self, sc, d):
        held = set(archive_diff_ids(sc["old"])) if sc["old"] else set()
        total, sent = self.config_size, 0
        for blob, diff_id in zip(self.target_layers, self.target_diff_ids):
            if diff_id not in held:
                total += blob["size"]
                sent += 1
        note = f"{sent} of {len(self.target_layers)} layer blobs + config; no tool runs"
        return dict(bytes=total, enc=None, dec=None, ok=True, note=note)

    def _check(self, out, new):
        return sha256_file(out) == sha256_file(new)

    def bsdiff(self, sc, d):
        old, new = sc["old"] or self.one_byte, sc["new"]
        patch, out = os.path.join(d, "p.bsdiff"), os.path.join(d, "out")
        enc = timed(["bsdiff", old, new, patch], d)
        dec = timed(["bspatch", old, out, patch], d)
        note = "" if sc["old"] else "old = 1 NUL byte (bsdiff cannot mmap an empty file)"
        return dict(bytes=os.path.getsize(patch), enc=enc, dec=dec, ok=self._check(out, new), note=note)

    def xdelta3(self, sc, d):
        old, new = sc["old_or_empty"], sc["new"]
        patch, out = os.path.join(d, "p.vcdiff"), os.path.join(d, "out")
        # -B: source window as large as the old file (default 64 MiB), so the whole old file is
        # searchable, as the whole-image case study intends.
        bsize = max(1 << 24, 1 << log2_ceil(os.path.getsize(old), 24, 31))
        enc = timed(["xdelta3", "-e", "-9", "-S", "djw", "-f", "-B", bsize, "-s", old, new, patch], d)
        dec = timed(["xdelta3", "-d", "-f", "-B", bsize, "-s", old, patch, out], d)
        return dict(bytes=os.path.getsize(patch), enc=enc, dec=dec, ok=self._check(out, new),
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
        return dict(bytes=os.path.getsize(patch), enc=enc, dec=dec, ok=self._check(out, new), note=note)

    def rdiff(self, sc, d):
        old, new = sc["old_or_empty"], sc["new"]
        sig, delta, out = (os.path.join(d, n) for n in ("sig", "delta", "out"))
        s = timed(["rdiff", "signature", old, sig], d)
        e = timed(["rdiff", "delta", sig, new, delta], d)
        dec = timed(["rdiff", "patch", old, delta, out], d)
        # The delta is not compressed; say what zstd -19 would make of it (not counted).
        z = run(["zstd", "-q", "-19", "-c", delta])
        note = (f"+ signature {os.path.getsize(sig)} B device->cloud ({s.seconds:.2f} s); "
                f"delta is uncompressed (zstd -19: {len(z)} B)")
        return dict(bytes=os.path.getsize(delta), enc=combine(s, e), dec=dec, ok=self._check(out, new),
                    note=note)

    def hdiffpatch(self, sc, d):
        old, new = sc["old_or_empty"], sc["new"]
        patch, out = os.path.join(d, "p.hdiff"), os.path.join(d, "out")
        window = log2_ceil(os.path.getsize(new), 16, 30)
        enc = timed([sys.executable, "-c", HDIFF_ENCODE, old, new, patch, window], d)
        dec = timed([sys.executable, "-c", HDIFF_DECODE, old, patch, out], d)
        return dict(bytes=os.path.getsize(patch), enc=enc, dec=dec, ok=self._check(out, new),
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

    def setup(self):
        w = self.work
        images, arch = os.path.join(w, "images"), os.path.join(w, "archives")
        os.makedirs(arch)
        print("== making the demo images", flush=True)
        run([os.path.join(self.bin, "examples", "make-demo-images"), images])
        self.v1_oci, self.v2_oci = os.path.join(images, "app-v1"), os.path.join(images, "app-v2")
        self.v1_tar, self.v2_tar = os.path.join(arch, "app-v1.tar"), os.path.join(arch, "app-v2.tar")
        self.empty = os.path.join(arch, "empty")
        open(self.empty, "wb").close()
        print("== writing docker-save archives with skopeo", flush=True)
        run(["skopeo", "copy", "--quiet", f"oci:{self.v1_oci}:v1", f"docker-archive:{self.v1_tar}:edge/app:v1"])
        run(["skopeo", "copy", "--quiet", f"oci:{self.v2_oci}:v2", f"docker-archive:{self.v2_tar}:edge/app:v2"])
        self.new_sha = sha256_file(self.v2_tar)
        self.v2_copy = os.path.join(arch, "device-app-v2.tar")
        shutil.copyfile(self.v2_tar, self.v2_copy)
        # bsdiff 4.3 cannot mmap an empty file: it gets a one-byte old file instead.
        self.one_byte = os.path.join(arch, "one-byte")
        with open(self.one_byte, "wb") as f:
            f.write(b"\0")

        manifest, config = oci_manifest(self.v2_oci)
        self.target_layers = manifest["layers"]
        self.target_diff_ids = config["rootfs"]["diff_ids"]
        self.config_size = manifest["config"]["size"]
        self.image_size = self.config_size + sum(l["size"] for l in self.target_layers)
        cfg = run(["skopeo", "inspect", "--config", "--raw", f"oci:{self.v2_oci}:v2"])
        self.target_config_sha = hashlib.sha256(cfg).hexdigest()
        if self.target_diff_ids != archive_diff_ids(self.v2_tar):
            raise RuntimeError("docker-archive of v2 has other diff_ids than its OCI layout")

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

        self.scenarios = [
            dict(name="app-update", desc="device holds v1, target v2", old=self.v1_tar),
            # The device's own copy of v2 (zstd refuses an input that is also its dictionary).
            dict(name="same-image", desc="device holds v2, target v2", old=self.v2_copy),
            dict(name="no-base", desc="device holds nothing, target v2", old=None),
        ]
        for sc in self.scenarios:
            sc["new"] = self.v2_tar
            sc["old_or_empty"] = sc["old"] or self.empty
        self.sizes = dict(v1_tar=os.path.getsize(self.v1_tar), v2_tar=os.path.getsize(self.v2_tar))

    def run_all(self, only=None):
        results = {}
        for sc in self.scenarios:
            print(f"== scenario {sc['name']}: {sc['desc']}", flush=True)
            rows = []
            for label, method in self.TOOLS:
                if only and method not in only:
                    continue
                d = os.path.join(self.work, "runs", sc["name"], method)
                os.makedirs(d)
                print(f"   {label} ...", end=" ", flush=True)
                try:
                    row = getattr(self, method)(sc, d)
                except Exception as e:  # a tool that fails counts as not reproducing
                    row = dict(bytes=None, enc=None, dec=None, ok=False,
                               note="FAILED: " + str(e).strip().splitlines()[-1][:200])
                row["tool"] = label
                rows.append(row)
                print("ok" if row["ok"] else "FAILED", flush=True)
                shutil.rmtree(d, ignore_errors=True)
            results[sc["name"]] = rows
        return results


# ---------------------------------------------------------------------------------------------
# output

HEAD = ["tool", "bytes", "% image", "enc s", "dec s", "enc RSS MiB", "dec RSS MiB", "ok", "notes"]


def cells(row, image_size):
    def t(m):
        return "n/a" if m is None else f"{m.seconds:.2f}"

    def r(m):
        return "n/a" if m is None else f"{m.rss_kib / 1024:.1f}"

    b = row["bytes"]
    return [
        row["tool"],
        "-" if b is None else f"{b:,}",
        "-" if b is None else f"{100.0 * b / image_size:.2f}",
        t(row["enc"]), t(row["dec"]), r(row["enc"]), r(row["dec"]),
        "yes" if row["ok"] else "NO",
        row["note"],
    ]


def text_table(rows):
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEAD))]
    right = {1, 2, 3, 4, 5, 6}
    lines = []
    for k, r in enumerate(rows):
        parts = [(c.rjust(widths[i]) if i in right else c.ljust(widths[i])) for i, c in enumerate(r)]
        lines.append("  ".join(parts).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def md_table(rows):
    out = ["| " + " | ".join(rows[0]) + " |",
           "|" + "|".join("---:" if i in {1, 2, 3, 4, 5, 6} else "---" for i in range(len(HEAD))) + "|"]
    for r in rows[1:]:
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
    return "\n".join(out)


def machine_info():
    def sh(cmd):
        try:
            return subprocess.run(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  text=True).stdout.strip()
        except OSError:
            return "?"

    versions = sh("dpkg-query -W -f='${Package} ${Version}, ' bsdiff xdelta3 zstd rdiff librsync2 2>/dev/null")
    hdp = sh(f"{sys.executable} -m pip show hdiffpatch 2>/dev/null | sed -n 's/^Version: //p'")
    return [
        ("date", datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %z")),
        ("nproc", sh("nproc")),
        ("memory (free -g total)", sh("free -g | awk '/^Mem:/ {print $2}'") + " GiB"),
        ("cpu", sh("sed -n 's/^model name\\s*: //p' /proc/cpuinfo | head -1") or platform.processor()),
        ("kernel", platform.release()),
        ("tools", versions.rstrip(", ") + f", hdiffpatch (PyPI) {hdp}"),
    ]


def report(bench, results, out_path, total_seconds):
    text, md = [], []
    intro = (f"target image edge/app:v2 as a registry sends it (compressed layer blobs + config): "
             f"{bench.image_size:,} B; docker-save archives: v1 {bench.sizes['v1_tar']:,} B, "
             f"v2 {bench.sizes['v2_tar']:,} B")
    md.append("# sideload delta benchmark\n")
    md.append("Generated by `bench/run.sh`; see `bench/README.md`. Compare ratios within one run: the "
              "machine is small and shared, times and memory are noisy.\n")
    md.append(intro + ".\n")
    text.append(intro)
    descs = {sc["name"]: sc["desc"] for sc in bench.scenarios}
    for name, rows in results.items():
        table = [HEAD] + [cells(r, bench.image_size) for r in rows]
        text.append(f"\n[{name}] {descs[name]}")
        text.append(text_table(table))
        md.append(f"## {name}: {descs[name]}\n")
        md.append(md_table(table) + "\n")
    md.append("## Machine\n")
    for k, v in bench.machine:
        md.append(f"- {k}: {v}")
    md.append(f"- benchmark wall time: {total_seconds:.0f} s")
    md.append("")
    text.append("\n" + "; ".join(f"{k}: {v}" for k, v in bench.machine if k in ("date", "nproc", "memory (free -g total)")))
    print("\n".join(text))
    with open(out_path, "w") as f:
        f.write("\n".join(md))
    print(f"\nwrote {out_path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="directory with sideload, sideload-sign, examples/")
    ap.add_argument("--work", required=True, help="empty scratch directory")
    ap.add_argument("--out", required=True, help="markdown file to write")
    ap.add_argument("--zstd-level", type=int, default=22, help="zstd --patch-from level (20-22 adds --ultra)")
    ap.add_argument("--only", help="comma-separated tool methods to run (debugging)")
    args = ap.parse_args()
    start = datetime.datetime.now()
    bench = Bench(args)
    bench.machine = machine_info()
    bench.setup()
    results = bench.run_all(set(args.only.split(",")) if args.only else None)
    report(bench, results, args.out, (datetime.datetime.now() - start).total_seconds())
    failed = [(n, r["tool"]) for n, rows in results.items() for r in rows if not r["ok"]]
    if failed:
        print("NOT REPRODUCED: " + ", ".join(f"{t} in {n}" for n, t in failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
