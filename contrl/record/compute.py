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
        self.c0 = self._sample(memory=False)[0]

    def _sample(self, memory: bool = True) -> tuple[float, int]:
        """(CPU-seconds, RSS in bytes) of the process tree, from one listing of its children
        (listing them reads every process of /proc: once per progress row, not once per figure)."""
        t = self.proc.cpu_times()
        cpu = t.user + t.system + t.children_user + t.children_system  # self + exited children
        rss = self.proc.memory_info().rss if memory else 0
        for child in self._children():
            try:
                with child.oneshot():
                    c = child.cpu_times()
                    cpu += c.user + c.system + c.children_user + c.children_system
                    rss += child.memory_info().rss if memory else 0
            except psutil.Error:  # it exited between listing and reading
                pass
        return cpu, rss

    def _children(self) -> list:
        try:
            return self.proc.children(recursive=True)
        except psutil.Error:
            return []

    def wall(self) -> float:
        return self.prev_wall + time.time() - self.t0

    def _now(self) -> tuple[float, float]:
        """(CPU-seconds so far, peak memory in MiB so far): one sample of the process tree."""
        cpu_now, rss = self._sample()
        own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        self.peak_mb = max(self.peak_mb, rss / 2**20, own_peak / 2**20)
        return self.prev_cpu + max(0.0, cpu_now - self.c0), self.peak_mb

    def cpu(self) -> float:
        return self._now()[0]

    def sample_memory(self) -> float:
        """Current RSS of the process tree in MiB; updates and returns the peak."""
        return self._now()[1]

    def _energy(self, cpu_s: float) -> dict:
        return {"energy_wh": cpu_s * self.power_watts / 3600.0} if self.power_watts else {}

    def row(self) -> dict:
        """The cost columns of a progress row (samples memory)."""
        cpu, peak = self._now()
        return {"cpu_s": cpu, "peak_mem_mb": peak, **self._energy(cpu)}

    def state(self) -> dict:
        """What a checkpoint keeps so a resumed run continues the counters."""
        cpu, peak = self._now()
        return {"wall_s": self.wall(), "cpu_s": cpu, "peak_mem_mb": peak}

    def summary(self) -> dict:
        cpu, peak = self._now()
        power = {"power_watts": self.power_watts} if self.power_watts else {}
        return {"wall_s": self.wall(), "cpu_s": cpu, "peak_mem_mb": peak, **power, **self._energy(cpu)}
