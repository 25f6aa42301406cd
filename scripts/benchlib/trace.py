"""Counting the FUSE requests a workload sends, per opcode, from the kernel's own
`fuse:fuse_request_send` tracepoint (Linux 6.14 and later).

The tracepoint sits in the kernel, so it counts the same thing for every FUSE daemon
(fuse-overlayfs has no counter of its own) and costs well under a microsecond per request,
against tens of microseconds for the request itself. A private tracing instance keeps the
benchmark's events apart from anyone else's; the filter keeps only the mount under test.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

from .system import log, run

EVENT = "events/fuse/fuse_request_send"
LINE = re.compile(rb"opcode \d+ \((\w+)\)")


class RequestCounter:
    def __init__(self, tracefs: Path, buffer_kib: int = 65536):
        self.instance: Path | None = None
        tracefs.mkdir(parents=True, exist_ok=True)
        if not (tracefs / "instances").is_dir():
            if run(["mount", "-t", "tracefs", "nodev", str(tracefs)], check=False).returncode != 0:
                log("tracefs cannot be mounted: no FUSE request counts")
                return
        if not (tracefs / EVENT).is_dir():
            log("the kernel has no fuse_request_send tracepoint (Linux < 6.14): no FUSE request counts")
            return
        inst = tracefs / "instances" / f"ufsd-bench-{os.getpid()}"
        inst.mkdir(exist_ok=True)
        (inst / "buffer_size_kb").write_text(f"{buffer_kib}\n")
        self.instance = inst

    @property
    def available(self) -> bool:
        return self.instance is not None

    def start(self, mnt: Path) -> None:
        if not self.instance:
            return
        dev = os.stat(mnt).st_dev
        kdev = (os.major(dev) << 20) | os.minor(dev)  # the kernel's dev_t layout
        ev = self.instance / EVENT
        (ev / "enable").write_text("0\n")
        (self.instance / "trace").write_text("")
        (ev / "filter").write_text(f"connection == {kdev}\n")
        (ev / "enable").write_text("1\n")

    def stop(self) -> Counter | None:
        """The requests since start() by opcode name (FUSE_ prefix dropped); None if unavailable
        or if the ring buffer overflowed."""
        if not self.instance:
            return None
        (self.instance / EVENT / "enable").write_text("0\n")
        for stats in (self.instance / "per_cpu").glob("cpu*/stats"):
            for line in stats.read_text().splitlines():
                if line.startswith("overrun:") and int(line.split()[1]) > 0:
                    log("trace buffer overran: request counts dropped for this step")
                    return None
        counts: Counter = Counter()
        with open(self.instance / "trace", "rb") as f:
            for line in f:
                m = LINE.search(line)
                if m:
                    counts[m.group(1).decode().removeprefix("FUSE_")] += 1
        (self.instance / "trace").write_text("")
        return counts

    def close(self) -> None:
        if self.instance:
            try:
                (self.instance / EVENT / "enable").write_text("0\n")
                self.instance.rmdir()
            except OSError as e:
                log(f"could not remove tracing instance {self.instance}: {e}")
            self.instance = None
