"""The image tools against the plain tools doing the same work on the same data: `ufsd diff`
against a walk of the upper, `ufsd commit` against `tar -c | sha256sum`, the extraction of
an image's layer (its first `ufsd mount`) against `tar -x`. A command this ufsd does not
have yet is reported as not available.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .mounts import Mount
from .system import settle, timed
from .workloads import Ctx


@dataclass
class Tool:
    key: str
    label: str
    baseline: str
    target: str  # "< 1 s" (absolute) or "<= 1.3x" (against the baseline)
    needs: str  # the ufsd subcommand it needs
    run: Callable[[Ctx, Path], float]  # seconds for ufsd
    base: Callable[[Ctx], float]  # seconds for the baseline
    # ufsd/baseline pairs per repetition: a cheap row whose time swings with the
    # filesystem's state gets more samples for its median
    pairs: int = 1

    def target_ok(self, secs: float, ratio: float) -> bool:
        op, num = self.target.split()[:2]
        v = ratio if self.target.endswith("x") else secs
        x = float(num.rstrip("x"))
        return v < x if op == "<" else v <= x


def has_command(ufsd: Path, name: str) -> bool:
    return subprocess.run([str(ufsd), name, "--help"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


def _store(ctx: Ctx) -> dict[str, str]:
    store = ctx.run_dir / "store"
    ctx.discard(store)
    return dict(os.environ, UFSD_ROOT=str(store))


def _warm_diff_trees(ctx: Ctx) -> None:
    """Reads the upper and the layers once, as a live container's are: the cold steps
    before this one dropped every cache."""
    for root in [ctx.fx.root / "du", *ctx.fx.tree()]:
        for _ in os.walk(root):
            pass


def diff_run(ctx: Ctx, ufsd: Path) -> float:
    lowers = ":".join(str(p) for p in ctx.fx.tree())
    _warm_diff_trees(ctx)
    settle(False, ctx.prefault_mib)
    return timed([str(ufsd), "diff", "--upper", str(ctx.fx.root / "du"), "--lower", lowers])


def diff_base(ctx: Ctx) -> float:
    _warm_diff_trees(ctx)
    settle(False, ctx.prefault_mib)
    return timed(["find", str(ctx.fx.root / "du")])


def commit_run(ctx: Ctx, ufsd: Path) -> float:
    env = _store(ctx)

    def body(m: Mount) -> float:
        settle(False, ctx.prefault_mib)
        return timed([str(ufsd), "commit", str(m.mnt), "bench-commit:latest"], env=env)
    secs = ctx.mounted("ufsd", ctx.fx.empty(), body, upper=ctx.fx.root / "cu")
    ctx.discard(ctx.run_dir / "store")
    return secs


def commit_base(ctx: Ctx) -> float:
    settle(False, ctx.prefault_mib)
    return timed(["bash", "-o", "pipefail", "-c", 'tar -cf - -C "$1" . | sha256sum >/dev/null', "-",
                  str(ctx.fx.root / "cu")])


def _untar_layout(ctx: Ctx) -> Path:
    """An OCI layout holding one image whose one layer is the untar tar, uncompressed (so
    that `tar -x` of the same file is the baseline), made once next to the fixture."""
    layout = ctx.fx.root / "untar-oci"
    if (layout / "index.json").exists():
        return layout
    tmp = ctx.fx.root / "untar-oci.tmp"
    subprocess.run(["rm", "-rf", str(tmp)], check=True)
    blobs = tmp / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes, media_type: str) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    layer = put((ctx.fx.root / "untar.tar").read_bytes(), "application/vnd.oci.image.layer.v1.tar")
    config = put(json.dumps({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
        "history": [{"created_by": "scripts/bench"}],
    }).encode(), "application/vnd.oci.image.config.v1+json")
    manifest = put(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config, "layers": [layer],
    }).encode(), "application/vnd.oci.image.manifest.v1+json")
    manifest["annotations"] = {"org.opencontainers.image.ref.name": "bench-extract:latest"}
    (tmp / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (tmp / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest]}))
    tmp.rename(layout)
    return layout


def extract_run(ctx: Ctx, ufsd: Path) -> float:
    """The first mount of an image whose layer is not extracted yet: the layer is read
    from its blob (its digest checked), extracted and synced before the mount starts.

    The image is loaded once per run from an OCI layout beside the fixture (no files are
    created or deleted by that), into a store kept for this row. Each repetition mounts
    it with no extracted layer in the store (the previous one moved aside, not deleted:
    see `Ctx.discard`)."""
    store = ctx.run_dir / "extract-store"
    env = dict(os.environ, UFSD_ROOT=str(store))
    if not store.exists():
        subprocess.run([str(ufsd), "load", str(_untar_layout(ctx))], env=env, check=True,
                       stdout=subprocess.DEVNULL)
    layers = store / "layers"
    for d in os.listdir(layers) if layers.exists() else []:
        ctx.discard(layers / d)
    mnt = ctx.run_dir / "extract-mnt"
    mnt.mkdir(parents=True, exist_ok=True)
    settle(False, ctx.prefault_mib)
    try:
        secs = timed([str(ufsd), "mount", "--name", "bench-extract", "bench-extract:latest", str(mnt)],
                     env=env)
    finally:
        subprocess.run(["umount", str(mnt)], stderr=subprocess.DEVNULL)
        subprocess.run([str(ufsd), "rm", "-f", "bench-extract"], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ctx.expect("files in the extracted layer", _count_files(layers), _count_files_tar(ctx), "ufsd")
    return secs


def _count_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def _count_files_tar(ctx: Ctx) -> int:
    out = subprocess.run(["tar", "-tvf", str(ctx.fx.root / "untar.tar")], check=True,
                         capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if line.startswith("-"))


def tar_x_base(ctx: Ctx) -> float:
    dest = ctx.run_dir / "x"
    ctx.discard(dest)
    dest.mkdir(parents=True)
    settle(False, ctx.prefault_mib)
    secs = timed(["tar", "-xf", str(ctx.fx.root / "untar.tar"), "-C", str(dest)])
    ctx.discard(dest)
    return secs


TOOLS = [
    Tool("diff", "`ufsd diff` of a {diff}-entry upper (offline)", "`find UPPER`", "< 1 s", "diff",
         diff_run, diff_base),
    Tool("commit", "`ufsd commit` of {commit}", "`tar -c DIR | sha256sum`", "<= 1.3x", "commit",
         commit_run, commit_base),
    Tool("extract", "layer extraction: first `ufsd mount` of an image of the {untar}-file tar", "`tar -x`",
         "<= 1x", "load", extract_run, tar_x_base, pairs=3),

]

