"""The machine around the benchmark: commands, caches, memory, packages, what to record.

Everything here runs as root inside the benchmark's own mount namespace (see scripts/bench).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path


class BenchError(Exception):
    """A problem that ends the run with one clear line."""


_T0 = time.monotonic()


def log(msg: str) -> None:
    secs = int(time.monotonic() - _T0)
    print(f"bench [{secs // 60:02d}:{secs % 60:02d}]: {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], *, check: bool = True, capture: bool = False, **kw) -> subprocess.CompletedProcess:
    """Runs a command; on failure raises BenchError naming the command and its stderr."""
    proc = subprocess.run(
        cmd,
        stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )
    if check and proc.returncode != 0:
        err = (proc.stderr or "").strip().splitlines()
        raise BenchError(f"`{' '.join(map(str, cmd))}` failed ({proc.returncode}): {err[-1] if err else ''}")
    return proc


def timed(cmd: list[str], **kw) -> float:
    """Seconds a command takes from start to exit (its output discarded)."""
    t0 = time.perf_counter()
    run(cmd, **kw)
    return time.perf_counter() - t0


def drop_caches() -> None:
    """Writes back dirty data, then drops the page, dentry and inode caches."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def prefault(mib: int) -> None:
    """Touches `mib` MiB of fresh memory and frees it again.

    The VM hands memory idle for a couple of seconds back to the host and faults it in
    again slowly; touching it just before a timed step means the step's page cache and
    buffers come from memory the host has already backed.
    """
    if mib <= 0:
        return
    buf = bytearray(mib << 20)
    buf[::4096] = bytes(len(range(0, len(buf), 4096)))
    del buf


def settle(cold: bool, prefault_mib: int) -> None:
    """The state before every timed step: nothing dirty, memory touched; caches dropped if cold."""
    if cold:
        drop_caches()
    else:
        os.sync()
    prefault(prefault_mib)


def cpu_latency_limit() -> int | None:
    """The CPU wake-up latency (µs) that PM QoS requests together ask for; None if unknown."""
    try:
        with open("/dev/cpu_dma_latency", "rb") as f:
            return int.from_bytes(f.read(4), sys.byteorder, signed=True)
    except OSError:
        return None


def wait_no_cpu_latency_request(timeout: float = 3.0) -> bool:
    """Waits until no PM QoS request keeps idle CPUs polling (a ufsd daemon of an earlier
    step may still be winding down); False if one still does after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while cpu_latency_limit() == 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def ensure_packages(packages: dict[str, str]) -> None:
    """Installs the Debian packages of missing commands ({command: package})."""
    missing = sorted({pkg for cmd, pkg in packages.items() if shutil.which(cmd) is None})
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise BenchError(f"missing {' '.join(missing)} and no apt-get to install them")
    log(f"installing {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)


def version_line(cmd: list[str], contains: str = "") -> str:
    """The first output line of a version command that contains `contains`."""
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout.splitlines():
        if contains in line:
            return line.strip()
    return "unknown"


def machine(scratch: Path) -> dict[str, str]:
    """What the results depend on: CPU, memory, kernel, the scratch filesystem, load."""
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    fs = run(["findmnt", "-n", "-o", "FSTYPE,SOURCE,OPTIONS", "-T", str(scratch)], capture=True, check=False)
    return {
        "cpu": f"{cpu}, {os.cpu_count()} CPUs",
        "memory": f"{mem_kib / (1 << 20):.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "scratch": f"{scratch} ({' '.join(fs.stdout.split()) or 'unknown'})",
    }


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def git_commit(repo: Path) -> str:
    """The repository's commit, with `-dirty` when the work tree differs from it."""
    head = run(["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"], capture=True, check=False)
    if head.returncode != 0:
        return "unknown"
    dirty = run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"], capture=True, check=False)
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def rmtree(path: Path) -> None:
    """Removes a tree that may hold read-only directories; fine if it is absent."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        run(["rm", "-rf", "--one-file-system", str(path)])
