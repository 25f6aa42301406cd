"""Turning the samples of every repetition into the results table: medians per mount kind,
the median of the per-repetition ratios to kernel overlayfs, and whether each row meets the
issue's target and beats fuse-overlayfs. Also the FUSE request counts and docs/benchmarks.md.
"""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path

from .tools import Tool
from .workloads import Sample, Workload

BEGIN = "<!-- scripts/bench results: begin (generated; a re-run replaces this part) -->"
END = "<!-- scripts/bench results: end -->"


def fmt_value(v: float | None, unit: str) -> str:
    if v is None:
        return "—"
    if unit == "s":
        return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"
    if unit == "IOPS":
        return f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}"
    if unit == "MiB/s":
        return f"{v:.0f} MiB/s"
    if unit == "us/lookup":
        return f"{v:.2f} µs"
    if unit == "MiB":
        return f"{v:.1f} MiB"
    return f"{v:.3g}"


def fmt_ratio(r: float | None) -> str:
    return "—" if r is None else f"{r:.2f}x"


def yes_no(b: bool | None) -> str:
    return "—" if b is None else ("yes" if b else "**no**")


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def ratios(samples: dict[str, list[Sample]], kind: str, base: str = "kernel") -> list[float]:
    """kind / base, one per repetition in which both ran."""
    return [s.value / b.value for s, b in zip(samples.get(kind, []), samples.get(base, [])) if b.value > 0]


def workload_rows(results: dict[str, dict[str, list[Sample]]], workloads: list[Workload],
                  words: dict[str, str]) -> list[list[str]]:
    rows = [["workload", "kernel", "ufsd", "fuse-overlayfs", "ufsd / kernel", "f-o / kernel", "target",
             "target met", "ufsd ahead of f-o (ufsd / f-o)"]]
    for w in workloads:
        samples = results.get(w.key)
        if not samples:
            continue
        med = {k: median([s.value for s in v]) for k, v in samples.items()}
        r_u = median(ratios(samples, "ufsd")) if w.kernel_baseline else None
        r_f = median(ratios(samples, "fuse-overlayfs")) if w.kernel_baseline else None
        met = w.target_ok(r_u, med.get("ufsd"))
        # ufsd against fuse-overlayfs as against the kernel: within each repetition, so that a
        # slow spell of the machine hits both sides of the ratio.
        r_uf = median(ratios(samples, "ufsd", "fuse-overlayfs"))
        ahead_cell = "—"
        if r_uf is not None and w.key != "copyup":
            ahead = r_uf >= 1 if w.higher_is_better else r_uf <= 1
            ahead_cell = f"{yes_no(ahead)} ({fmt_ratio(r_uf)})"
        rows.append([w.label.format(**words), fmt_value(med.get("kernel"), w.unit), fmt_value(med.get("ufsd"), w.unit),
                     fmt_value(med.get("fuse-overlayfs"), w.unit), fmt_ratio(r_u), fmt_ratio(r_f), w.target,
                     yes_no(met), ahead_cell])
    return rows


def tool_rows(tool_results: dict[str, list[tuple[float | str, float]]], tools: list[Tool],
              words: dict[str, str]) -> list[list[str]]:
    rows = [["operation", "ufsd", "baseline", "baseline time", "ratio", "target", "target met"]]
    for t in tools:
        res = tool_results.get(t.key)
        if res is None:
            continue
        base = median([b for _, b in res if b > 0])
        errors = [u for u, _ in res if isinstance(u, str)]
        if errors:
            rows.append([t.label.format(**words), errors[0], t.baseline, fmt_value(base, "s"), "—", t.target, "—"])
            continue
        secs = median([u for u, _ in res])
        r = median([u / b for u, b in res if b > 0])
        rows.append([t.label.format(**words), fmt_value(secs, "s"), t.baseline, fmt_value(base, "s"), fmt_ratio(r), t.target,
                     yes_no(t.target_ok(secs, r))])
    return rows


def top_ops(c: Counter | None, n: int = 4) -> str:
    if c is None:
        return "—"
    total = sum(c.values())
    parts = [f"{op} {_count(n)}" for op, n in c.most_common(n) if n]
    return f"{_count(total)}" + (f" ({', '.join(parts)})" if parts else "")


def _count(n: int) -> str:
    return f"{n / 1000:.1f}k" if n >= 10_000 else str(n)


def request_rows(results: dict[str, dict[str, list[Sample]]], workloads: list[Workload],
                 words: dict[str, str]) -> list[list[str]]:
    rows = [["workload", "ufsd requests (top opcodes)", "fuse-overlayfs requests (top opcodes)"]]
    for w in workloads:
        samples = results.get(w.key)
        if not samples or w.key == "rss":
            continue
        last = {k: (v[-1].requests if v else None) for k, v in samples.items()}
        rows.append([w.label.format(**words), top_ops(last.get("ufsd")), top_ops(last.get("fuse-overlayfs"))])
    return rows


def syscall_rows(results: dict[str, dict[str, list[Sample]]], workloads: list[Workload],
                 words: dict[str, str]) -> list[list[str]]:
    rows = [["workload", "ufsd syscalls (top)", "fuse-overlayfs syscalls (top)"]]
    for w in workloads:
        samples = results.get(w.key)
        if not samples or w.key == "rss":
            continue
        last = {k: (v[-1].syscalls if v else None) for k, v in samples.items()}
        rows.append([w.label.format(**words), top_ops(last.get("ufsd"), 6), top_ops(last.get("fuse-overlayfs"), 6)])
    return rows


def markdown(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(widths[i]) for i, c in enumerate(r)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def write_docs(path: Path, section: str) -> None:
    """Replaces the generated part of docs/benchmarks.md (between the markers)."""
    text = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n\n{section.strip()}\n\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
