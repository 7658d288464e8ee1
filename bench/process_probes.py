"""What the federation benchmarks read from the processes they start, from the outside.

Why from the outside: a benchmark that asked the coordinator about itself through its own API
would measure that API too, and would need code in the product that exists only for the
benchmark. The kernel's figures (/proc) and the Prometheus endpoint every process already
serves on its health port are what an operator sees, so they are what the benchmarks print.
Linux only (/proc), like the benchmarks' figures.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import resource
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)"
)
_LABEL = re.compile(r'(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')
_SCRAPE_TIMEOUT_S = 10.0


class ProbeError(RuntimeError):
    """A process could not be measured (it exited, or its metrics endpoint did not answer)."""


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` now (VmRSS), in bytes."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise ProbeError(f"cannot read the memory of process {pid}: {exc.strerror}") from None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ProbeError(f"process {pid} reports no VmRSS (a zombie?)")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used so far (all its threads)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise ProbeError(f"cannot read the CPU time of process {pid}: {exc.strerror}") from None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses; utime and stime are
    # fields 14 and 15 of the line, 12 and 13 after the closing parenthesis.
    fields = stat[stat.rfind(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def thread_count(pid: int) -> int:
    """Threads of ``pid`` now (grpc-core and thread pools show here)."""
    return len(os.listdir(f"/proc/{pid}/task"))


def open_fds(pid: int) -> int:
    """File descriptors ``pid`` holds now (one per TCP connection, among others)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def raise_nofile_limit() -> int:
    """Raise this process's open-file limit to its hard limit; the new soft limit.

    Children inherit it, so call this before starting the coordinator: 1,000 connections are
    1,000 descriptors on each side, more than the common soft limit of 1,024.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def scrape(port: int, host: str = "127.0.0.1") -> str:
    """The Prometheus text a process serves on its health port."""
    url = f"http://{host}:{port}/metrics"
    # The federation lives on loopback: a proxy from the user's environment must not be used.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=_SCRAPE_TIMEOUT_S) as response:
            body: bytes = response.read()
    except OSError as exc:
        raise ProbeError(f"cannot scrape {url}: {exc}") from None
    return body.decode("utf-8", errors="replace")


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """The value of the sample ``name{labels}`` in Prometheus ``text``; None if absent.

    With ``labels`` None, the first sample of that name whatever its labels.
    """
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match["name"] != name:
            continue
        if labels is not None:
            found = {m["key"]: m["value"] for m in _LABEL.finditer(match["labels"] or "")}
            if found != labels:
                continue
        try:
            return float(match["value"])
        except ValueError:
            return None
    return None


def wait_until(
    condition: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.1
) -> float:
    """Poll ``condition`` until true; the seconds it took. ProbeError after ``timeout``."""
    started = time.perf_counter()
    while not condition():
        if time.perf_counter() - started > timeout:
            raise ProbeError(f"{what}: not reached after {timeout:.0f} s")
        time.sleep(interval)
    return time.perf_counter() - started


@dataclass(frozen=True)
class Summary:
    """Median, p95 (linear interpolation, numpy's default), mean, min and max of samples."""

    count: int
    median: float
    p95: float
    mean: float
    minimum: float
    maximum: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        data = np.asarray(values, dtype=float)
        median, p95 = np.percentile(data, [50, 95])
        return cls(
            count=len(values),
            median=float(median),
            p95=float(p95),
            mean=float(data.mean()),
            minimum=float(data.min()),
            maximum=float(data.max()),
        )


def verdict(met: bool) -> str:
    return "MET" if met else "MISSED"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table, columns left-aligned to their widest cell."""
    widths = [len(cell) for cell in header]
    for row in rows:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)]).rstrip()


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages: other work on the machine shows in the figures."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def machine_line() -> str:
    """CPU count and model, for the figures to be read against."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace").split("\n"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"machine: {usable} usable CPU(s) of {os.cpu_count()}" + (f", {model}" if model else "")
