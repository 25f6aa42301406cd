"""The workloads: the rows of issue 6's table (WORKLOADS) and the runners that measure them
(GROUPS). A runner takes one mount kind, makes one fresh mount with a fresh upper layer,
and measures every row of its group on it: a cold row first, then its warm twin, which the
cold pass has warmed.

Each timed part runs inside `ctx.measure(...)`, which settles the machine first (nothing
dirty, memory prefaulted, caches dropped for the cold rows) and counts the FUSE requests
the timed part sent (and, with --strace, the daemon's syscalls).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

from .fixture import Fixture, Sizes
from .mounts import FUSE_KINDS, Mount, Mounter, peak_rss_kib
from .system import BenchError, rmtree, run, settle, timed, wait_no_cpu_latency_request
from .trace import RequestCounter

MIB = 1 << 20
# Times each warm step that leaves its mount unchanged runs per repetition (median kept).
WARM_REPEATS = 3
# Cold random reads run this many times per repetition, caches dropped before each: the
# kernel's own figure moved between 8k and 13k IOPS from one run to the next.
COLD_READ_REPEATS = 3
# `rm -rf` runs this many times per repetition, each on a fresh mount (median kept): per
# repetition its ratio to the kernel swung 1.0-2.8x across five full runs, around a 2x target.
RM_REPEATS = 3
T = TypeVar("T")


@dataclass
class Sample:
    value: float  # in the workload's unit
    requests: Counter | None = None
    syscalls: Counter | None = None  # the daemon's, with --strace


def median_sample(runs: list[Sample]) -> Sample:
    """The median value of several runs of one step, with the first run's counts."""
    return Sample(statistics.median(r.value for r in runs), runs[0].requests, runs[0].syscalls)


def start_strace(pid: int, out: Path) -> subprocess.Popen:
    proc = subprocess.Popen(["strace", "-c", "-f", "-qq", "-o", str(out), "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # attached to every thread by then
    return proc


def stop_strace(proc: subprocess.Popen, out: Path) -> Counter:
    """Stops strace and reads its summary: calls per syscall."""
    proc.send_signal(signal.SIGINT)
    proc.wait()
    calls: Counter = Counter()
    for line in out.read_text().splitlines():
        cols = line.split()
        # "% time  seconds  usecs/call  calls  [errors]  syscall"
        if len(cols) >= 5 and cols[3].isdigit() and cols[-1] != "total":
            calls[cols[-1]] = int(cols[3])
    out.unlink()
    return calls


@dataclass
class Ctx:
    fx: Fixture
    mounter: Mounter
    counter: RequestCounter
    run_dir: Path
    probe: Path
    prefault_mib: int
    strace: bool = False  # also count the daemon's syscalls (slows the daemon down)
    warnings: list[str] = field(default_factory=list)

    def measure(self, m: Mount, cold: bool, fn: Callable[[], float], repeat: int = 1) -> Sample:
        """Settles the machine, then runs `fn` (which returns its own measure) while the
        FUSE requests to `m` are counted (and, with --strace, the daemon's syscalls).

        With `repeat` > 1 (warm steps that leave the mount as they found it) the step runs
        that many times and the sample is the median value with the first run's counts: a
        step of 1-250 ms swings with the host more than the gaps it is meant to show. A
        warm step prefaults memory (1-2.5 s each here) before its first run only: the runs
        after it follow within a second or two, before the VM hands that memory back. A
        cold step is settled in full (caches dropped, memory prefaulted) before every run."""
        runs = [self._measure_once(m, cold, fn, self.prefault_mib if i == 0 or cold else 0)
                for i in range(repeat)]
        return median_sample(runs)

    def _measure_once(self, m: Mount, cold: bool, fn: Callable[[], float], prefault_mib: int) -> Sample:
        settle(cold, prefault_mib)
        # Idle CPUs that poll would speed up any kind's step: every step starts without.
        if not wait_no_cpu_latency_request():
            self.warn(f"{m.kind}: idle CPUs were still kept polling when a step began")
        counting = m.kind in FUSE_KINDS
        out = self.run_dir / "strace.txt"
        tracer = start_strace(m.pid, out) if self.strace and m.pid else None
        if counting:
            self.counter.start(m.mnt)
        try:
            value = fn()
        finally:
            counts = self.counter.stop() if counting else None
            syscalls = stop_strace(tracer, out) if tracer else None
        return Sample(value, counts, syscalls)

    def mounted(self, kind: str, lowers: list[Path], fn: Callable[[Mount], T], upper: Path | None = None) -> T:
        """Runs `fn` on a fresh mount of `lowers` with a fresh upper, then takes it all down."""
        base = self.run_dir / kind
        up, work, mnt = upper or base / "u", base / "w", base / "m"
        for d in ([work] if upper else [up, work]):
            self.discard(d)
        m = self.mounter.mount(kind, lowers, up, work, mnt)
        try:
            return fn(m)
        finally:
            self.mounter.unmount(m)
            for d in ([work] if upper else [up, work]):
                self.discard(d)

    def discard(self, d: Path) -> None:
        """Moves `d` aside; the run deletes it all at the end. On ext4 without a journal
        (these machines' root filesystem) inode allocation skips inodes freed in the last
        30 s one by one, so deleting a step's 20k files just before the next step would
        slow that step's creates by whoever came after: a 2-7x swing between kinds."""
        if os.path.lexists(d):
            trash = self.run_dir / "trash"
            trash.mkdir(parents=True, exist_ok=True)
            d.rename(trash / f"{len(os.listdir(trash))}")

    def probe_lstat(self, base: Path, listname: str, rounds: int = 1) -> tuple[float, int, int]:
        out = run([str(self.probe), "lstat", str(base), str(self.fx.list_file(listname)), str(rounds)],
                  capture=True).stdout.split()
        return int(out[0]) / 1e9, int(out[1]), int(out[2])

    def probe_list(self, path: Path) -> tuple[float, int]:
        out = run([str(self.probe), "list", str(path)], capture=True).stdout.split()
        return int(out[0]) / 1e9, int(out[1])

    def expect(self, what: str, got: int, want: int, kind: str) -> None:
        if got != want:
            self.warn(f"{kind}: {what}: got {got}, expected {want}")

    def warn(self, msg: str) -> None:
        """A warning printed once and listed with the results."""
        if msg not in self.warnings:
            self.warnings.append(msg)
            print(f"bench: WARNING {msg}")


def _count(n: int) -> str:
    return f"{n / 1000:.0f}k" if n >= 1000 else str(n)


def _mib(n: int) -> str:
    return f"{n >> 10} GiB" if n >= 1024 and n % 1024 == 0 else f"{n} MiB"


def size_words(s: Sizes) -> dict[str, str]:
    """The fixture sizes as the row labels name them."""
    return {"tree": _count(s.tree_files), "big": _mib(s.big_mib), "copyup": _mib(s.copyup_mib),
            "dir": _count(s.dir_entries), "untar": _count(s.untar_files), "rm": _count(s.rm_files),
            "layers": str(s.deep_layers), "diff": _count(s.diff_entries),
            "commit": f"{_mib(s.commit_mib)} in {_count(s.commit_files)} files"}


@dataclass
class Workload:
    key: str
    label: str
    unit: str  # "MiB/s", "IOPS", "s", "us/lookup", "MiB"
    higher_is_better: bool
    target: str  # as the issue states it, e.g. ">= 0.95x", "<= 20 MiB"
    kernel_baseline: bool = True  # False: no kernel value (daemon memory)

    def target_ok(self, ratio: float | None, value: float | None) -> bool | None:
        op, num = self.target.split()[:2]
        x = float(num.rstrip("x"))
        v = ratio if self.target.endswith("x") else value
        if v is None:
            return None
        return v >= x if op == ">=" else v <= x


# --- data path ----------------------------------------------------------------------------

def _read_all(path: Path) -> int:
    buf = bytearray(MIB)
    view = memoryview(buf)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            total += n
    return total


def _throughput(path: Path) -> float:
    t0 = time.perf_counter()
    n = _read_all(path)
    return n / MIB / (time.perf_counter() - t0)


def data_reads(ctx: Ctx, kind: str) -> dict[str, Sample]:
    """One mount: random reads cold, then (after one read of the whole file) a sequential
    read and random reads, both warm."""
    out = {}

    def body(m: Mount) -> None:
        f = m.mnt / "b.bin"
        out["randcold"] = ctx.measure(m, True, lambda: _fio(f, ctx.fx.sizes.rand_cold_ios), COLD_READ_REPEATS)
        ctx.expect("read bytes", _read_all(f), ctx.fx.sizes.big_mib * MIB, kind)
        out["seqread"] = ctx.measure(m, False, lambda: _throughput(f), WARM_REPEATS)
        out["randwarm"] = ctx.measure(m, False, lambda: _fio(f, ctx.fx.sizes.rand_warm_ios), WARM_REPEATS)
    ctx.mounted(kind, ctx.fx.big(), body)
    return out


def seq_write(ctx: Ctx, kind: str) -> dict[str, Sample]:
    mib = ctx.fx.sizes.big_mib
    block = bytes(range(256)) * (MIB // 256)

    def body(m: Mount) -> Sample:
        def timed_write() -> float:
            t0 = time.perf_counter()
            fd = os.open(m.mnt / "w.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                for _ in range(mib):
                    os.write(fd, block)
                os.fsync(fd)
            finally:
                os.close(fd)
            return mib / (time.perf_counter() - t0)
        return ctx.measure(m, False, timed_write)
    return {"seqwrite": ctx.mounted(kind, ctx.fx.big(), body)}


def _fio(path: Path, ios: int) -> float:
    out = run(["fio", "--name=rand", f"--filename={path}", "--rw=randread", "--bs=4k",
               "--ioengine=psync", "--readonly", "--invalidate=0", "--randrepeat=1",
               f"--number_ios={ios}", "--time_based=0", "--output-format=json"], capture=True).stdout
    job = json.loads(out[out.index("{"):])["jobs"][0]["read"]
    if job["total_ios"] < ios:
        raise BenchError(f"fio did {job['total_ios']} reads, asked for {ios}")
    return float(job["iops"])


def copy_up(ctx: Ctx, kind: str) -> dict[str, Sample]:
    _read_all(ctx.fx.big()[0] / "c.bin")  # the lower file warm, for every kind alike

    def body(m: Mount) -> Sample:
        def first_write() -> float:
            t0 = time.perf_counter()
            fd = os.open(m.mnt / "c.bin", os.O_WRONLY)
            try:
                os.pwrite(fd, b"x" * 4096, 0)
            finally:
                os.close(fd)
            return time.perf_counter() - t0
        sample = ctx.measure(m, False, first_write)
        size = os.stat(ctx.run_dir / kind / "u" / "c.bin").st_size
        ctx.expect("copied-up size", size, ctx.fx.sizes.copyup_mib * MIB, kind)
        return sample
    return {"copyup": ctx.mounted(kind, ctx.fx.big(), body)}


# --- metadata -----------------------------------------------------------------------------

def find(ctx: Ctx, kind: str) -> dict[str, Sample]:
    """One mount: `find` with every cache dropped, then again with what the first left."""
    out = {}

    def body(m: Mount) -> None:
        out["findcold"] = ctx.measure(m, True, lambda: timed(["find", str(m.mnt)]))
        out["findwarm"] = ctx.measure(m, False, lambda: timed(["find", str(m.mnt)]))
        found = run(["find", str(m.mnt)], capture=True).stdout.count("\n")
        ctx.expect("find entries", found, ctx.fx.merged_entries + 1, kind)
    ctx.mounted(kind, ctx.fx.tree(), body)
    return out


def lstat_all(ctx: Ctx, kind: str) -> dict[str, Sample]:
    """One mount: lstat of every path cold, then warm; then `find` and the daemon's peak RSS."""
    out = {}

    def body(m: Mount) -> None:
        for key, cold in (("lstatcold", True), ("lstatwarm", False)):
            found = [0]

            def go() -> float:
                secs, found[0], _ = ctx.probe_lstat(m.mnt, "all")
                return secs
            out[key] = ctx.measure(m, cold, go, 1 if cold else WARM_REPEATS)
            ctx.expect("lstat found", found[0], ctx.fx.merged_entries, kind)
        if m.pid:
            run(["find", str(m.mnt)])
            out["rss"] = Sample(peak_rss_kib(m.pid) / 1024)
    ctx.mounted(kind, ctx.fx.tree(), body)
    return out


def list_dir(ctx: Ctx, kind: str) -> dict[str, Sample]:
    """One mount: the merged directory listed cold, then warm."""
    out = {}

    def body(m: Mount) -> None:
        for key, cold in (("listcold", True), ("listwarm", False)):
            entries = [0]

            def go() -> float:
                secs, entries[0] = ctx.probe_list(m.mnt / "d")
                return secs
            out[key] = ctx.measure(m, cold, go, 1 if cold else WARM_REPEATS)
            ctx.expect("listed entries", entries[0], ctx.fx.sizes.dir_entries + 2, kind)
    ctx.mounted(kind, ctx.fx.merged_dir(), body)
    return out


def untar(ctx: Ctx, kind: str) -> dict[str, Sample]:
    tar = str(ctx.fx.root / "untar.tar")

    def body(m: Mount) -> Sample:
        return ctx.measure(m, False, lambda: timed(["tar", "-xf", tar, "-C", str(m.mnt)]))
    return {"untar": ctx.mounted(kind, ctx.fx.tree(), body)}


def rm_rf(ctx: Ctx, kind: str) -> dict[str, Sample]:
    for _ in os.walk(ctx.fx.rm_tree()[0]):  # the lower's dentries warm, for every kind alike
        pass

    def body(m: Mount) -> Sample:
        sample = ctx.measure(m, False, lambda: timed(["rm", "-rf", str(m.mnt / "rm")]))
        ctx.expect("rm left the tree", int(os.path.lexists(m.mnt / "rm")), 0, kind)
        return sample
    # Each on a fresh mount (the tree is gone after one); see RM_REPEATS.
    runs = [ctx.mounted(kind, ctx.fx.rm_tree(), body) for _ in range(RM_REPEATS)]
    return {"rmrf": median_sample(runs)}


def lookups(present: bool) -> Callable[[Ctx, str], dict[str, Sample]]:
    """One mount: each name looked up once (first lookups), then `lookup_rounds` more times."""
    listname, sign = ("present", "+") if present else ("absent", "-")

    def work(ctx: Ctx, kind: str) -> dict[str, Sample]:
        n = ctx.fx.sizes.lookup_names
        for _ in os.walk(ctx.fx.root / "s"):  # the layers' own dentries warm
            pass
        out = {}

        def body(m: Mount) -> None:
            for key, rounds in (("look1" + sign, 1), ("lookrep" + sign, ctx.fx.sizes.lookup_rounds)):
                res = [0, 0]

                def go() -> float:
                    secs, res[0], res[1] = ctx.probe_lstat(m.mnt, listname, rounds)
                    return secs
                sample = ctx.measure(m, False, go, 1 if rounds == 1 else WARM_REPEATS)
                sample.value = sample.value / (n * rounds) * 1e6  # µs per lookup
                ctx.expect(f"{listname} lookups found", res[0], n * rounds if present else 0, kind)
                out[key] = sample
        ctx.mounted(kind, ctx.fx.deep(), body)
        return out
    return work


WORKLOADS = [
    Workload("seqread", "sequential read, {big} lower file, warm", "MiB/s", True, ">= 0.95x"),
    Workload("seqwrite", "sequential write {big} + fsync", "MiB/s", True, ">= 0.9x"),
    Workload("randwarm", "random 4k reads, warm", "IOPS", True, ">= 0.9x"),
    Workload("randcold", "random 4k reads, cold", "IOPS", True, ">= 0.9x"),
    Workload("findcold", "find over {tree} files, cold", "s", False, "<= 1.5x"),
    Workload("findwarm", "find over {tree} files, warm", "s", False, "<= 1.2x"),
    Workload("lstatcold", "lstat of every file ({tree}), cold", "s", False, "<= 1.5x"),
    Workload("lstatwarm", "lstat of every file ({tree}), warm", "s", False, "<= 1.05x"),
    Workload("listcold", "list a {dir}-entry dir merged from 3 layers, cold", "s", False, "<= 2x"),
    Workload("listwarm", "list a {dir}-entry dir merged from 3 layers, warm", "s", False, "<= 0.15x"),
    Workload("untar", "untar {untar} small files into the mount", "s", False, "<= 3x"),
    Workload("rmrf", "rm -rf of a {rm}-file lower tree", "s", False, "<= 2x"),
    Workload("copyup", "first write to a {copyup} lower file (copy-up)", "s", False, "<= 1x"),
    Workload("lookrep+", "repeated lookups, bottom of {layers} layers, present", "us/lookup", False, "<= 0.6x"),
    Workload("lookrep-", "repeated lookups, bottom of {layers} layers, absent", "us/lookup", False, "<= 0.8x"),
    Workload("look1+", "first lookups, bottom of {layers} layers, present", "us/lookup", False, "<= 0.3x"),
    Workload("look1-", "first lookups, bottom of {layers} layers, absent", "us/lookup", False, "<= 0.1x"),
    Workload("rss", "daemon peak RSS after walking {tree} files", "MiB", False, "<= 20 MiB", kernel_baseline=False),
]

# Each runner mounts once per kind and fills the rows named here.
GROUPS: list[tuple[tuple[str, ...], Callable[[Ctx, str], dict[str, Sample]]]] = [
    (("randcold", "seqread", "randwarm"), data_reads),
    (("seqwrite",), seq_write),
    (("findcold", "findwarm"), find),
    (("lstatcold", "lstatwarm", "rss"), lstat_all),
    (("listcold", "listwarm"), list_dir),
    (("untar",), untar),
    (("rmrf",), rm_rf),
    (("copyup",), copy_up),
    (("look1+", "lookrep+"), lookups(True)),
    (("look1-", "lookrep-"), lookups(False)),
]
