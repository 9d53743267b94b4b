"""One knob for a process's compute threads: torch's intra-op pool and the BLAS library numpy
calls (OpenBLAS in numpy's wheels).

numpy's OpenBLAS starts a thread per core and splits any product above ~64k multiply-adds
across them (a [256, 256] x [256, 8] layer of the acting loop's numpy forward is one). With the
other core busy -- a second run beside this one, A3C's other worker -- each such product waits
for a thread that is not scheduled: measured on a 2-core VM with an A3C run beside it, ACER's
LunarLander preset acted 5x slower (380 against 2,000 steps/s) until its BLAS was held to one
thread. So every process that learns or acts holds both pools to ``cfg.threads`` (1 by default).
"""

from __future__ import annotations

import torch
from threadpoolctl import threadpool_limits


def set_threads(n: int) -> None:
    """torch's intra-op threads and the BLAS libraries' loaded in this process to ``n``, from now on."""
    torch.set_num_threads(n)
    threadpool_limits(limits=n, user_api="blas")
