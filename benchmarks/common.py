"""What every benchmark shares: timing, peak memory, the machine's description, result files.

Timing: a figure is the **median** over repeated runs after warm-up runs, because the machines this
runs on are often shared and noisy; the minimum and maximum are kept beside it in the JSON. Peak
memory is the process's peak resident set (``VmHWM`` in ``/proc/self/status``), reset before each
measurement by writing ``5`` to ``/proc/self/clear_refs`` (Linux), so each figure is the peak of
that measurement alone rather than of the whole run.

Results are a list of *sections*, each a title, a note and a table (list of row dicts); they are
written as ``results.json`` (everything, machine description included) and ``results.md`` (the same
tables in Markdown).

Example:
    >>> from benchmarks.common import Section, markdown_table, median_time
    >>> timing = median_time(lambda: sum(range(1000)), repeats=3, warmup=1)
    >>> sorted(timing)
    ['max_s', 'median_s', 'min_s', 'repeats']
    >>> section = Section("demo", "Demo", "a note", columns=[("x", "x")], rows=[{"x": 1}])
    >>> print(markdown_table(section.columns, section.rows))
    | x |
    | --- |
    | 1 |
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

# CPU features that decide which levers can pay off: native bfloat16 (AVX512-BF16, AMX) and the
# vector width TensorFlow's oneDNN kernels use.
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni", "avx_vnni")


# ---- timing -------------------------------------------------------------------------------------
def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> dict:
    """Seconds per call of ``fn``: median, min and max over ``repeats`` calls after ``warmup`` calls."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return summarize(times)


def summarize(seconds: Sequence[float]) -> dict:
    """``{"median_s", "min_s", "max_s", "repeats"}`` of a list of timings."""
    seconds = [float(s) for s in seconds]
    if not seconds:
        raise ValueError("no timings to summarize")
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds),
            "repeats": len(seconds)}


def ratio(value: Optional[float], reference: Optional[float]) -> Optional[float]:
    """``value / reference``, or None when either is missing or the reference is zero."""
    if value is None or reference is None or not reference:
        return None
    return float(value) / float(reference)


def linear_fit(x: Sequence[float], y: Sequence[float]) -> dict:
    """Least-squares line ``y = intercept + slope * x`` and its coefficient of determination R^2.

    Example (points on a line fit exactly: R^2 = 1):
        >>> fit = linear_fit([1, 2, 3], [3, 5, 7])
        >>> round(fit["slope"], 6), round(fit["intercept"], 6), round(fit["r2"], 6)
        (2.0, 1.0, 1.0)
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2 or len(x) != len(y):
        raise ValueError(f"a linear fit needs two or more (x, y) pairs, got {len(x)} x and {len(y)} y")
    slope, intercept = np.polyfit(x, y, 1)
    residual = float(np.sum((y - (intercept + slope * x)) ** 2))
    total = float(np.sum((y - y.mean()) ** 2))
    return {"slope": float(slope), "intercept": float(intercept),
            "r2": 1.0 - residual / total if total > 0 else 1.0}


# ---- memory -------------------------------------------------------------------------------------
def _status_kb(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Resets the process's peak resident set to its current size; False where Linux won't let us."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> Optional[float]:
    """Peak resident memory of this process in MB (since start or the last :func:`reset_peak_rss`)."""
    kb = _status_kb("VmHWM")
    return None if kb is None else kb / 1024.0


# ---- the machine --------------------------------------------------------------------------------
def cpu_info() -> dict:
    """CPU model, the flags in :data:`CPU_FLAGS` it has, and cores, from ``/proc/cpuinfo``."""
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") and model in ("unknown", "", platform.processor()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "model": model,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "flags": {name: name in flags for name in CPU_FLAGS},
        "native_bfloat16": bool(flags & {"avx512_bf16", "amx_bf16"}),
    }


def machine_info() -> dict:
    """What the numbers were measured on: CPU, memory, load, OS and library versions."""
    import keras
    import tensorflow as tf

    mem_kb = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            mem_kb = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": cpu_info(),
        "memory_gb": None if mem_kb is None else round(mem_kb / 2 ** 20, 1),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def describe_machine(info: dict) -> str:
    """One line for the top of ``results.md``."""
    cpu = info["cpu"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in cpu["flags"].items()
                      if k in ("avx2", "avx512f", "avx512_bf16", "amx_bf16"))
    load = info.get("load_average_at_start")
    return (f"{cpu['model']}, {cpu['usable_cores']} usable cores ({flags}); "
            f"{info['memory_gb']} GB RAM; GPUs: {', '.join(info['gpus']) or 'none'}; "
            f"TensorFlow {info['tensorflow']}, Keras {info['keras']}, Python {info['python']}"
            + (f"; load average at start {load[0]:.1f}" if load else ""))


# ---- results ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Section:
    """One table of results: ``columns`` is a list of ``(key, header)`` pairs into ``rows``."""

    key: str
    title: str
    note: str = ""
    columns: list = dataclasses.field(default_factory=list)
    rows: list = dataclasses.field(default_factory=list)
    extra: dict = dataclasses.field(default_factory=dict)  # JSON only (fits, raw timings, ...)
    seconds: Optional[float] = None  # wall time the section took
    error: Optional[str] = None  # set when the section failed; the others still run

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def format_value(value) -> str:
    """A table cell: numbers to 3 significant figures (thousands separated), None as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if not math.isfinite(value):
            return str(value)
        if value == 0:
            return "0"
        magnitude = math.floor(math.log10(abs(value)))
        if magnitude < -3:
            return f"{value:.1e}"
        if magnitude >= 3:
            return f"{value:,.0f}"
        return f"{value:.{max(0, 2 - magnitude)}f}"
    return str(value).replace("|", "\\|")


def markdown_table(columns: Sequence, rows: Sequence[dict]) -> str:
    """A GitHub Markdown table of ``rows`` (dicts) with ``columns`` as ``(key, header)`` pairs."""
    headers = [header for _, header in columns]
    lines = ["| " + " | ".join(headers) + " |",
             "| " + " | ".join("---" if i == 0 else "---:" for i in range(len(headers))) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(format_value(row.get(key)) for key, _ in columns) + " |")
    return "\n".join(lines)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _finite(value):
    # JSON has no NaN/Infinity; strict readers reject them, so they become null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_results(out_dir, machine: dict, sections: Sequence[Section], *, command: str,
                  mode: str, total_seconds: Optional[float] = None) -> tuple:
    """Writes ``results.json`` and ``results.md`` into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"command": command, "mode": mode, "total_seconds": total_seconds, "machine": machine,
               "sections": [s.to_dict() for s in sections]}
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_finite(json.loads(json.dumps(payload, default=_json_default))),
                              indent=2, allow_nan=False) + "\n")
    tmp.replace(json_path)

    lines = ["# can-tf benchmark results", "",
             f"Command: `{command}` ({mode} mode"
             + (f", {total_seconds / 60:.1f} min" if total_seconds else "") + ")", "",
             f"Machine: {describe_machine(machine)}", "",
             "Every figure is the median over repeated runs after warm-up; ratios compare figures "
             "measured in this same run, so they hold better than absolute numbers on a shared, "
             "noisy machine.", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        if section.error:
            lines += [f"**Not measured:** {section.error}", ""]
        if section.note:
            lines += [section.note, ""]
        if section.rows:
            lines += [markdown_table(section.columns, section.rows), ""]
    md_path.write_text("\n".join(lines))
    return json_path, md_path
