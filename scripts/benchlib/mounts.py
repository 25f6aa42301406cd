"""Mounting one layer stack three ways (ufsd, kernel overlayfs, fuse-overlayfs) and
taking every mount and daemon down again, including after an error or Ctrl-C.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .system import BenchError, run

KINDS = ("ufsd", "kernel", "fuse-overlayfs")
FUSE_KINDS = ("ufsd", "fuse-overlayfs")


def is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def find_daemon(comm: str, mnt: Path) -> int | None:
    """The pid of the `comm` process whose command line names `mnt`."""
    target = str(mnt).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if Path(f"/proc/{entry}/comm").read_text().strip() != comm:
                continue
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a == target or a.endswith(b"/" + target.lstrip(b"/")) for a in args):
            return int(entry)
    return None


def peak_rss_kib(pid: int) -> int:
    """VmHWM, the process's peak resident set, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise BenchError(f"no VmHWM for pid {pid}")


def wait_gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.02)
    return False


@dataclass
class Mount:
    kind: str
    mnt: Path
    pid: int | None = None  # the FUSE daemon, if any


@dataclass
class Mounter:
    """Makes mounts of every kind and remembers them until they are taken down."""

    ufsd: Path
    ufsd_opts: str = ""
    live: list[Mount] = field(default_factory=list)

    def mount(self, kind: str, lowers: list[Path], upper: Path, work: Path, mnt: Path) -> Mount:
        for d in (upper, work, mnt):
            d.mkdir(parents=True, exist_ok=True)
        lowerdir = ":".join(str(p) for p in lowers)
        if kind == "ufsd":
            cmd = [str(self.ufsd), "mount", "--lower", lowerdir, "--upper", str(upper), "--work", str(work)]
            if self.ufsd_opts:
                cmd += ["-o", self.ufsd_opts]
            run([*cmd, str(mnt)])
            comm = "ufsd"
        elif kind == "kernel":
            opts = f"lowerdir={lowerdir},upperdir={upper},workdir={work}"
            if len(opts) >= 4096:
                raise BenchError(f"overlayfs options are {len(opts)} bytes, over a page: use a shorter --scratch")
            run(["mount", "-t", "overlay", "overlay", "-o", opts, str(mnt)])
            comm = ""
        elif kind == "fuse-overlayfs":
            run(["fuse-overlayfs", "-o", f"lowerdir={lowerdir},upperdir={upper},workdir={work}", str(mnt)])
            comm = "fuse-overlayfs"
        else:
            raise BenchError(f"unknown kind {kind}")
        m = Mount(kind, mnt, find_daemon(comm, mnt) if comm else None)
        self.live.append(m)
        if comm and m.pid is None:
            self.unmount(m)
            raise BenchError(f"{kind} mounted {mnt} but its daemon was not found")
        return m

    def unmount(self, m: Mount) -> None:
        """Unmounts and waits for the daemon to exit (killing it if it does not)."""
        if m in self.live:
            self.live.remove(m)
        if is_mounted(m.mnt):
            proc = run(["umount", str(m.mnt)], check=False)
            if proc.returncode != 0:
                run(["umount", "-l", str(m.mnt)], check=False)
        if m.pid is not None and not wait_gone(m.pid):
            os.kill(m.pid, 9)
            wait_gone(m.pid, 5)

    def unmount_all(self) -> None:
        for m in list(reversed(self.live)):
            try:
                self.unmount(m)
            except Exception as e:  # noqa: BLE001 - cleanup goes on with the next mount
                print(f"bench: cleanup of {m.mnt}: {e}")
