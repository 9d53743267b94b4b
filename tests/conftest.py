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
# Every Ray a test starts without token authentication, whatever ran before in the process: Ray
# 2.60's first local ray.init of a process turns it on for the rest of the process (and for the
# clusters it starts later), so which tests ran first would decide a cluster test's set-up.
os.environ["RAY_AUTH_MODE"] = "disabled"


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


# modules whose tests train for tens of seconds each, longest first (pytest --durations)
LONG_FIRST = ["test_learning.py", "test_training.py", "test_hogwild.py", "test_cli.py", "test_compare.py",
              "test_tune.py", "test_faults.py"]


def _starts_ray(item) -> bool:
    """Whether a test starts a Ray (the Ray modules, and tests parametrised with the Ray runner)."""
    if Path(str(item.fspath)).name in ("test_ray.py", "test_ray_cluster.py"):
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and "ray" in callspec.id.split("-")


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``-n 2``, pyproject's default) every test that starts a Ray runs in the
    same worker, one after another: two Rays at once would share the two cores with each other's
    actors and the ports and temp folder a local Ray takes. Those tests go last (with
    ``--no-loadscope-reorder``, pyproject's default, xdist hands out tests in this order), so that
    they run while the other worker finishes its last test: a Ray run beside another training on
    2 cores took 2-3x as long as alone (its learner, actors and Ray's own processes all wait).
    Before them, the modules of long tests (learning runs, subprocess runs) go first, so that the
    tests still running when the Ray ones start are short ones."""
    def order(item) -> tuple:
        module = Path(str(item.fspath)).name
        if _starts_ray(item):
            return (2, 0)
        return (0, LONG_FIRST.index(module)) if module in LONG_FIRST else (1, 0)

    items[:] = sorted(items, key=order)  # stable: each module keeps its order
    for item in items:
        if _starts_ray(item):
            item.add_marker(pytest.mark.xdist_group("ray"))
