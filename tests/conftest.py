import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every Ray a test starts binds 127.0.0.1 only


def flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.fixture
def run_cli(tmp_path):
    """Run `python -m contrl ...` in a subprocess; returns CompletedProcess."""
    import subprocess

    def run(*args, timeout=600, check=None):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        p = subprocess.run([sys.executable, "-m", "contrl", *map(str, args)], capture_output=True, text=True,
                           cwd=tmp_path, env=env, timeout=timeout)
        if check is not None and p.returncode != check:
            raise AssertionError(f"exit {p.returncode} != {check}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
        return p

    return run
