"""The benchmark's fixture: every layer stack and input file, built once under the scratch
directory from a fixed seed, so two runs with the same sizes see byte-identical trees.

Layout (short names keep the 100-layer lowerdir= option well under a page):

    fx/t/1..5     5-layer stack (1 = top) of about `tree_files` merged entries: shared
                  directories, shadowed files, 0/0 whiteouts, an opaque directory, symlinks
    fx/b/1        b.bin (`big_mib`) for reads, c.bin (`copyup_mib`) for the copy-up
    fx/m/1..3     directory d/ with `dir_entries` names merged from 3 layers
    fx/r/1        rm/: `rm_files` files in 100 directories, to be removed through a mount
    fx/s/0..N-1   `deep_layers` layers, each with d/; the bottom one holds the present names
    fx/e          an empty layer (below an upper given to a commit)
    fx/untar.tar  `untar_files` small files
    fx/du         an upper layer of `diff_entries` entries over fx/t (for `ufsd diff`)
    fx/cu         an upper layer of `commit_mib` MiB in `commit_files` files (for commit)
    fx/lists/     NUL-separated path lists for the lookups
    fx/STAMP      the sizes it was built with (a different request rebuilds)
"""

from __future__ import annotations

import json
import os
import random
import stat
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

from .system import log, rmtree

FIXTURE_VERSION = 2
SEED = 20261124


@dataclass
class Sizes:
    tree_files: int = 98_000
    big_mib: int = 1024
    copyup_mib: int = 256
    dir_entries: int = 10_000
    deep_layers: int = 100
    lookup_names: int = 2_000
    lookup_rounds: int = 100
    untar_files: int = 20_000
    rm_files: int = 10_000
    diff_entries: int = 100_000
    commit_mib: int = 1024
    commit_files: int = 10_000
    rand_warm_ios: int = 65_536
    rand_cold_ios: int = 8_192

    @classmethod
    def quick(cls) -> "Sizes":
        return cls(
            tree_files=5_000, big_mib=64, copyup_mib=16, dir_entries=2_000, deep_layers=100,
            lookup_names=300, lookup_rounds=5, untar_files=2_000, rm_files=1_000,
            diff_entries=5_000, commit_mib=32, commit_files=500, rand_warm_ios=8_192,
            rand_cold_ios=1_024,
        )


class Fixture:
    def __init__(self, root: Path, sizes: Sizes):
        self.root = root
        self.sizes = sizes
        self.merged_entries = 0  # entries of the 5-layer merged view, root excluded

    # --- paths -----------------------------------------------------------------------
    def tree(self) -> list[Path]:
        return [self.root / "t" / str(i) for i in range(1, 6)]

    def big(self) -> list[Path]:
        return [self.root / "b" / "1"]

    def merged_dir(self) -> list[Path]:
        return [self.root / "m" / str(i) for i in range(1, 4)]

    def rm_tree(self) -> list[Path]:
        return [self.root / "r" / "1"]

    def deep(self) -> list[Path]:
        return [self.root / "s" / str(i) for i in range(self.sizes.deep_layers)]

    def empty(self) -> list[Path]:
        return [self.root / "e"]

    def list_file(self, name: str) -> Path:
        return self.root / "lists" / name

    # --- building --------------------------------------------------------------------
    def stamp(self) -> str:
        return json.dumps({"version": FIXTURE_VERSION, "seed": SEED, **asdict(self.sizes)}, sort_keys=True)

    def ensure(self, rebuild: bool) -> None:
        stamp = self.root / "STAMP"
        if not rebuild and stamp.exists() and stamp.read_text() == self.stamp():
            self.merged_entries = int((self.root / "lists" / "count").read_text())
            log(f"reusing the fixture in {self.root}")
            return
        log(f"building the fixture in {self.root}")
        rmtree(self.root)
        self.root.mkdir(parents=True)
        rng = random.Random(SEED)
        self.blob = rng.randbytes(1 << 20)
        self._tree(rng)
        self._big()
        self._merged_dir()
        self._rm_tree()
        self._deep()
        (self.root / "e").mkdir()
        self._untar(rng)
        self._diff_upper(rng)
        self._commit_upper()
        os.sync()
        stamp.write_text(self.stamp())

    def _write(self, path: Path, size: int, salt: int) -> None:
        off = (salt * 7919) % (len(self.blob) - size) if size < len(self.blob) else 0
        with open(path, "wb") as f:
            f.write(self.blob[off:off + size])

    def _tree(self, rng: random.Random) -> None:
        """Five layers sharing one directory skeleton, bottom layer the largest, as a
        distribution image with a few package layers on top would be."""
        n = self.sizes.tree_files
        dirs = [f"a{i:02d}/b{j:02d}/c{k}" for i in range(max(1, n // 4000)) for j in range(20) for k in range(2)]
        share = [0.08, 0.12, 0.15, 0.20, 0.45]  # top .. bottom
        merged: dict[str, str] = {}  # path -> kind, as the merged view shows it
        layers = self.tree()
        # bottom-up, so upper layers can shadow and white out what is below
        for idx in range(4, -1, -1):
            layer = layers[idx]
            layer.mkdir(parents=True)
            count = int(n * share[idx] * 1.04)  # shadowing and whiteouts take back about 4%
            below = sorted(p for p, k in merged.items() if k != "d")
            for i in range(count):
                d = dirs[rng.randrange(len(dirs))]
                if below and idx < 4 and rng.random() < 0.05:
                    rel = below[rng.randrange(len(below))]  # shadow a lower file
                else:
                    rel = f"{d}/f{idx}_{i}"
                p = layer / rel
                if os.path.lexists(p):
                    continue
                p.parent.mkdir(parents=True, exist_ok=True)
                if rng.random() < 0.02:
                    os.symlink(f"../target{i}", p)
                else:
                    self._write(p, rng.randrange(0, 4096), i + idx)
                merged[rel] = "f"
            for part in dirs:
                pieces = part.split("/")
                for k in range(1, len(pieces) + 1):
                    sub = "/".join(pieces[:k])
                    if (layer / sub).is_dir():
                        merged[sub] = "d"
            if idx < 4:
                # whiteouts of about 1% of the files below (overlayfs format: a 0/0 device)
                for rel in rng.sample(below, max(1, len(below) // 100)):
                    if merged.get(rel) == "f" and not os.path.lexists(layer / rel):
                        (layer / rel).parent.mkdir(parents=True, exist_ok=True)
                        os.mknod(layer / rel, stat.S_IFCHR | 0o000, os.makedev(0, 0))
                        del merged[rel]
        # one opaque directory in layer 2 hides what layers 3..5 hold there
        opaque = "a00/b00/c0"
        (layers[1] / opaque).mkdir(parents=True, exist_ok=True)
        os.setxattr(layers[1] / opaque, "trusted.overlay.opaque", b"y")
        for rel in [p for p in merged if p.startswith(opaque + "/")]:
            if not any(os.path.lexists(top / rel) for top in layers[:2]):
                del merged[rel]
        lists = self.root / "lists"
        lists.mkdir()
        paths = sorted(merged)
        (lists / "all").write_bytes(b"".join(p.encode() + b"\0" for p in paths))
        (lists / "count").write_text(f"{len(paths)}\n")
        self.merged_entries = len(paths)

    def _big(self) -> None:
        layer = self.big()[0]
        layer.mkdir(parents=True)
        for name, mib in (("b.bin", self.sizes.big_mib), ("c.bin", self.sizes.copyup_mib)):
            with open(layer / name, "wb") as f:
                for i in range(mib):
                    f.write(i.to_bytes(8, "little") + self.blob[8:])

    def _merged_dir(self) -> None:
        n = self.sizes.dir_entries
        # bottom has [0, 0.6n), middle [0.3n, 0.8n), top [0.6n, n): overlapping ranges
        ranges = [(int(0.6 * n), n), (int(0.3 * n), int(0.8 * n)), (0, int(0.6 * n))]
        for layer, (lo, hi) in zip(self.merged_dir(), ranges):
            d = layer / "d"
            d.mkdir(parents=True)
            for i in range(lo, hi):
                (d / f"entry{i:06d}").touch()

    def _rm_tree(self) -> None:
        top = self.rm_tree()[0] / "rm"
        for i in range(self.sizes.rm_files):
            d = top / f"d{i % 100:02d}"
            if i < 100:
                d.mkdir(parents=True)
            self._write(d / f"f{i}", 512, i)

    def _deep(self) -> None:
        layers = self.deep()
        for i, layer in enumerate(layers):
            (layer / "d").mkdir(parents=True)
            (layer / "d" / f"own{i}").touch()
        n = self.sizes.lookup_names
        for i in range(n):
            (layers[-1] / "d" / f"p{i}").touch()
        lists = self.root / "lists"
        (lists / "present").write_bytes(b"".join(f"d/p{i}\0".encode() for i in range(n)))
        (lists / "absent").write_bytes(b"".join(f"d/q{i}\0".encode() for i in range(n)))

    def _untar(self, rng: random.Random) -> None:
        src = self.root / "untar-src"
        for i in range(self.sizes.untar_files):
            p = src / "x" / f"p{i % 200:03d}" / f"f{i}"
            p.parent.mkdir(parents=True, exist_ok=True)
            self._write(p, rng.randrange(0, 2048), i)
        with tarfile.open(self.root / "untar.tar", "w", format=tarfile.PAX_FORMAT) as tar:
            tar.add(src / "x", arcname="x", filter=_normalise)
        rmtree(src)

    def _diff_upper(self, rng: random.Random) -> None:
        """New files and directories, plus whiteouts and rewrites of lower files."""
        up = self.root / "du"
        up.mkdir()
        merged = (self.root / "lists" / "all").read_bytes().split(b"\0")[:-1]
        dirs = {os.path.dirname(p) for p in merged}
        lower = [p for p in merged if p not in dirs]
        total = self.sizes.diff_entries
        for rel in rng.sample(lower, min(len(lower), total // 50)):
            p = up / rel.decode()
            p.parent.mkdir(parents=True, exist_ok=True)
            if os.path.lexists(p):
                continue
            if rng.random() < 0.5:
                os.mknod(p, stat.S_IFCHR | 0o000, os.makedev(0, 0))
            elif rng.random() < 0.5:
                p.write_bytes(b"changed")
        made = sum(1 for _ in up.rglob("*"))  # the directories made above count too
        i = 0
        while made < total:
            d = up / "new" / f"n{i // 100:04d}"
            if i % 100 == 0:
                d.mkdir(parents=True)
                made += 1
            (d / f"f{i}").touch()
            made += 1
            i += 1

    def _commit_upper(self) -> None:
        up = self.root / "cu"
        per = max(1, (self.sizes.commit_mib << 20) // self.sizes.commit_files)
        for i in range(self.sizes.commit_files):
            d = up / f"d{i % 100:02d}"
            d.mkdir(parents=True, exist_ok=True)
            with open(d / f"f{i}", "wb") as f:
                left = per
                while left > 0:
                    chunk = self.blob[(i * 4099) % 4096:][:left]
                    f.write(chunk)
                    left -= len(chunk)

    # --- warming -----------------------------------------------------------------------
    def read_all(self) -> None:
        """Reads every fixture file once, so that later cold steps find the data in the
        host's cache and "cold" measures the guest's page cache, not the host's disk."""
        log("reading the fixture once")
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                p = os.path.join(dirpath, name)
                if not stat.S_ISREG(os.lstat(p).st_mode):
                    continue  # whiteout devices, symlinks
                with open(p, "rb", buffering=0) as f:
                    while f.read(1 << 20):
                        pass


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime = 1_700_000_000
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info
