"""The image tools against the plain tools doing the same work on the same data: `ufsd diff`
against a walk of the upper, `ufsd commit` against `tar -c | sha256sum`, the extraction of
an image's layer (its first `ufsd mount`) against `tar -x`, and `ufsd import` against
`tar -x` for information (the issue sets it no target). A command this ufsd does not have
yet is reported as not available.
"""

from __future__ import annotations

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
    target: str  # "< 1 s" (absolute), "<= 1.3x" (against the baseline) or "—" (none)
    needs: str  # the ufsd subcommand it needs
    run: Callable[[Ctx, Path], float]  # seconds for ufsd
    base: Callable[[Ctx], float]  # seconds for the baseline

    def target_ok(self, secs: float, ratio: float) -> bool | None:
        if self.target == "—":
            return None
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


def diff_run(ctx: Ctx, ufsd: Path) -> float:
    lowers = ":".join(str(p) for p in ctx.fx.tree())
    settle(False, ctx.prefault_mib)
    return timed([str(ufsd), "diff", "--upper", str(ctx.fx.root / "du"), "--lower", lowers])


def diff_base(ctx: Ctx) -> float:
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


def import_run(ctx: Ctx, ufsd: Path) -> float:
    env = _store(ctx)
    settle(False, ctx.prefault_mib)
    secs = timed([str(ufsd), "import", str(ctx.fx.root / "untar.tar"), "bench-import:latest"], env=env)
    ctx.discard(ctx.run_dir / "store")
    return secs


def extract_run(ctx: Ctx, ufsd: Path) -> float:
    """The first mount of an image made by `ufsd import`: its layer is extracted from the
    stored blob (decompressed, both digests checked, synced) before the mount starts."""
    env = _store(ctx)
    subprocess.run([str(ufsd), "import", str(ctx.fx.root / "untar.tar"), "bench-extract:latest"],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    mnt = ctx.run_dir / "extract-mnt"
    mnt.mkdir(parents=True, exist_ok=True)
    settle(False, ctx.prefault_mib)
    try:
        secs = timed([str(ufsd), "mount", "bench-extract:latest", str(mnt)], env=env)
    finally:
        subprocess.run(["umount", str(mnt)], stderr=subprocess.DEVNULL)
    ctx.expect("files in the extracted layer", _count_files(ctx.run_dir / "store" / "layers"),
               _count_files_tar(ctx), "ufsd")
    ctx.discard(ctx.run_dir / "store")
    return secs


def _count_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def _count_files_tar(ctx: Ctx) -> int:
    out = subprocess.run(["tar", "-tvf", str(ctx.fx.root / "untar.tar")], check=True,
                         capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if line.startswith("-"))


def import_base(ctx: Ctx) -> float:
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
         "<= 1x", "import", extract_run, import_base),
    Tool("import", "`ufsd import` of the {untar}-file tar (no target: for information)", "`tar -x`", "—",
         "import", import_run, import_base),
]

