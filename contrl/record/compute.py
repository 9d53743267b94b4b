"""What a run costs: wall-seconds, CPU-seconds of the process and its children, peak memory, and
(with ``power_watts``) an energy estimate.

- CPU-seconds: user + system time of this process, of its children that have exited, and of the
  live ones (env subprocesses, A3C / async ACER workers), so the figure is right while they run.
- Peak memory: the largest resident set (RSS) of this process plus its live children seen at any
  sample (every progress row, and at the end), and never less than this process's own peak.
- Energy: CPU-seconds x ``power_watts`` (watts drawn per busy core), reported in watt-hours. It
  is an estimate: it ignores idle power, memory, GPU and the rest of the machine.

A resumed run continues the counters saved in its checkpoint.
"""

from __future__ import annotations

import resource
import sys
import time
from typing import Optional

import psutil


class ComputeMeter:
    def __init__(self, prev: Optional[dict] = None, power_watts: float = 0.0):
        prev = prev or {}
        self.prev_wall = float(prev.get("wall_s", 0.0))
        self.prev_cpu = float(prev.get("cpu_s", 0.0))
        self.peak_mb = float(prev.get("peak_mem_mb", 0.0))
        self.power_watts = power_watts
        self.proc = psutil.Process()
        self.t0 = time.time()
        self.c0 = self._cpu_now()

    def _cpu_now(self) -> float:
        t = self.proc.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system  # self + exited children
        for child in self._children():
            try:
                c = child.cpu_times()
                total += c.user + c.system + c.children_user + c.children_system
            except psutil.Error:  # it exited between listing and reading
                pass
        return total

    def _children(self) -> list:
        try:
            return self.proc.children(recursive=True)
        except psutil.Error:
            return []

    def wall(self) -> float:
        return self.prev_wall + time.time() - self.t0

    def cpu(self) -> float:
        return self.prev_cpu + max(0.0, self._cpu_now() - self.c0)

    def sample_memory(self) -> float:
        """Current RSS of the process tree in MiB; updates and returns the peak."""
        rss = self.proc.memory_info().rss
        for child in self._children():
            try:
                rss += child.memory_info().rss
            except psutil.Error:
                pass
        own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        self.peak_mb = max(self.peak_mb, rss / 2**20, own_peak / 2**20)
        return self.peak_mb

    def energy_wh(self, cpu_s: Optional[float] = None) -> Optional[float]:
        if not self.power_watts:
            return None
        return (self.cpu() if cpu_s is None else cpu_s) * self.power_watts / 3600.0

    def row(self) -> dict:
        """The cost columns of a progress row (samples memory)."""
        cpu = self.cpu()
        out = {"cpu_s": cpu, "peak_mem_mb": self.sample_memory()}
        if self.power_watts:
            out["energy_wh"] = self.energy_wh(cpu)
        return out

    def state(self) -> dict:
        """What a checkpoint keeps so a resumed run continues the counters."""
        return {"wall_s": self.wall(), "cpu_s": self.cpu(), "peak_mem_mb": self.sample_memory()}

    def summary(self) -> dict:
        cpu = self.cpu()
        out = {"wall_s": self.wall(), "cpu_s": cpu, "peak_mem_mb": self.sample_memory()}
        if self.power_watts:
            out["power_watts"] = self.power_watts
            out["energy_wh"] = self.energy_wh(cpu)
        return out
