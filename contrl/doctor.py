"""``contrl doctor``: is this installation able to train, render and record?

The chapter checked its MuJoCo set-up with a smoke script (a random agent on a MuJoCo task).
This does the same for everything contrl relies on, one line per check, and prints the command
that fixes each missing piece:

- core (the exit code is 1 when one of them fails): Python, torch, gymnasium / numpy / PyYAML,
  Box2D (LunarLander steps), MuJoCo (a random agent steps HalfCheetah-v5), and a tiny PPO
  training run through contrl itself;
- the rest (reported, exit code unaffected): torch threads, TensorBoard, headless rendering
  (one LunarLander frame and one MuJoCo frame, in a subprocess with the GL back-end in force,
  trying OSMesa where EGL fails), the video writer (an mp4 through imageio-ffmpeg), and the
  optional gymnasium-robotics (FetchReach steps) and Ray (a local Ray with 1 CPU runs a task);
  "-" marks an optional piece that is not installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable, Optional

TORCH_PIN = "2.13.0"
TORCH_FIX = f"pip install torch=={TORCH_PIN} --index-url https://download.pytorch.org/whl/cpu"


@dataclass
class Check:
    name: str
    ok: Optional[bool]  # None: an optional piece that is not installed
    detail: str
    fix: str = ""
    core: bool = True


def _import(name: str):
    """The module, or None when it cannot be imported (missing, or broken on import)."""
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - any failure to import means the piece is missing
        return None


def _version(mod) -> str:
    return str(getattr(mod, "__version__", "?"))


def check_python() -> Check:
    v = sys.version_info
    ok = v >= (3, 10)
    return Check("python", ok, f"{v.major}.{v.minor}.{v.micro} ({sys.executable})",
                 "" if ok else "install Python 3.10 or newer and reinstall contrl in its venv")


def check_torch() -> list[Check]:
    torch = _import("torch")
    if torch is None:
        return [Check("torch", False, "not importable", TORCH_FIX)]
    version = _version(torch)
    out = [Check("torch", True, version + ("" if version.startswith(TORCH_PIN) else
                                           f" (contrl pins {TORCH_PIN}; other versions are untested)"),
                 "" if version.startswith(TORCH_PIN) else TORCH_FIX)]
    cores = os.cpu_count() or 1
    out.append(Check("torch threads", True,
                     f"contrl uses 1 intra-op thread per process by default (threads=1; tiny nets are "
                     f"fastest on one), {cores} CPU core(s) here; torch's own default would be "
                     f"{torch.get_num_threads()}", core=False))
    if torch.cuda.is_available():
        out[-1].detail += "; a CUDA device is visible (contrl trains on the CPU)"
    return out


def check_packages() -> list[Check]:
    out = []
    for module, dist, core in (("gymnasium", "gymnasium", True), ("numpy", "numpy", True), ("yaml", "pyyaml", True),
                               ("matplotlib", "matplotlib", True),
                               ("tensorboard", "tensorboard", False)):
        mod = _import(module)
        detail = _version(mod) if mod is not None else "not importable"
        if module == "tensorboard" and mod is None:
            detail += " (runs log CSV only)"
        out.append(Check(dist, mod is not None, detail, "" if mod is not None else f"pip install {dist}", core))
    return out


def _random_steps(env_id: str, steps: int) -> float:
    """Random-action steps per second (the same probe vec=auto uses)."""
    from contrl.envs.vec import env_step_seconds

    return 1.0 / max(env_step_seconds(env_id, {}, steps), 1e-9)


def check_box2d() -> Check:
    fix = 'pip install swig && pip install "gymnasium[box2d]"'
    if _import("Box2D") is None:
        return Check("Box2D", False, "the Box2D module is not importable (LunarLander, BipedalWalker)", fix)
    try:
        rate = _random_steps("LunarLander-v3", 200)
    except Exception as e:  # noqa: BLE001
        return Check("Box2D", False, f"LunarLander-v3 failed: {type(e).__name__}: {e}", fix)
    return Check("Box2D", True, f"a random agent steps LunarLander-v3 ({rate:,.0f} steps/s)")


def check_mujoco() -> Check:
    fix = 'pip install "gymnasium[mujoco]"'
    mujoco = _import("mujoco")
    if mujoco is None:
        return Check("MuJoCo", False, "the mujoco module is not importable (HalfCheetah, Hopper, ...)", fix)
    try:
        rate = _random_steps("HalfCheetah-v5", 200)
    except Exception as e:  # noqa: BLE001
        return Check("MuJoCo", False, f"HalfCheetah-v5 failed: {type(e).__name__}: {e}", fix)
    return Check("MuJoCo", True, f"mujoco {_version(mujoco)}: a random agent steps HalfCheetah-v5 ({rate:,.0f} steps/s)")


def check_contrl() -> Check:
    try:
        from contrl.api import train

        with tempfile.TemporaryDirectory() as d:
            agent = train("ppo", "CartPole-v1", steps=256, seed=0, out=f"{d}/run", quiet=True, tensorboard=False,
                          overrides={"n_envs": 2, "n_steps": 128, "batch_size": 64, "n_epochs": 1, "vec": "inprocess",
                                     "eval_episodes": 1, "final_eval_episodes": 1})
        return Check("contrl", True, f"a 256-step PPO run on CartPole-v1 trained, saved and evaluated "
                                     f"({agent.summary['wall_s']:.1f} s)")
    except Exception as e:  # noqa: BLE001
        return Check("contrl", False, f"a tiny PPO run failed: {type(e).__name__}: {e}",
                     'reinstall: pip install -e ".[test]" (from the contrl folder)')


_RENDER = """
import sys
from contrl.envs.make import make_env
env = make_env(sys.argv[1], render_mode="rgb_array")
env.reset(seed=0)
frame = env.render()
env.close()
print(f"{frame.shape[1]}x{frame.shape[0]}")
"""


def _render(env_id: str, env: dict) -> tuple[bool, str]:
    try:
        p = subprocess.run([sys.executable, "-c", _RENDER, env_id], capture_output=True, text=True, timeout=120, env=env)
    except subprocess.TimeoutExpired:
        return False, "timed out"
    if p.returncode == 0:
        return True, p.stdout.strip()
    lines = (p.stderr or "").strip().splitlines()
    return False, lines[-1] if lines else f"exit code {p.returncode}"


def check_rendering() -> list[Check]:
    from contrl.envs.make import headless

    env = dict(os.environ)
    where = "a screen" if not headless() else "headless"
    if headless():
        env.setdefault("SDL_VIDEODRIVER", "dummy")
    ok, info = _render("LunarLander-v3", env)
    out = [Check("rendering (Box2D)", ok, f"{where}: one LunarLander-v3 frame, {info}" if ok else info,
                 "" if ok else "pip install pygame (headless: export SDL_VIDEODRIVER=dummy)", core=False)]
    tried = []
    for gl in ([env["MUJOCO_GL"]] if env.get("MUJOCO_GL") else ["egl", "osmesa"]):
        genv = {**env, "MUJOCO_GL": gl}
        if gl in ("egl", "osmesa"):
            genv["PYOPENGL_PLATFORM"] = gl
        ok, info = _render("HalfCheetah-v5", genv)
        if ok:
            out.append(Check("rendering (MuJoCo)", True, f"MUJOCO_GL={gl}: one HalfCheetah-v5 frame, {info}",
                             core=False))
            if tried:
                out[-1].detail += f" ({', '.join(tried)} failed; set MUJOCO_GL={gl} for play --video)"
            return out
        tried.append(f"MUJOCO_GL={gl}: {info}")
    out.append(Check("rendering (MuJoCo)", False, "; ".join(tried),
                     "headless: export MUJOCO_GL=egl (needs libEGL, e.g. apt install libegl1) or MUJOCO_GL=osmesa "
                     "(apt install libosmesa6)", core=False))
    return out


def check_video() -> Check:
    fix = "pip install imageio imageio-ffmpeg"
    if _import("imageio") is None or _import("imageio_ffmpeg") is None:
        return Check("video writer", False, "imageio / imageio-ffmpeg not importable (play --video out.mp4)", fix,
                     core=False)
    try:
        from pathlib import Path

        import numpy as np

        from contrl.record.video import write_video

        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "check.mp4"
            write_video(path, [np.full((64, 64, 3), i * 20, np.uint8) for i in range(8)], fps=30)
            size = path.stat().st_size
        return Check("video writer", True, f"imageio-ffmpeg wrote an 8-frame mp4 ({size:,} bytes)", core=False)
    except Exception as e:  # noqa: BLE001
        return Check("video writer", False, f"writing an mp4 failed: {type(e).__name__}: {e}", fix, core=False)


def check_robotics() -> Check:
    """gymnasium-robotics (optional): goal-conditioned tasks with Dict observations, e.g. FetchReach."""
    robotics = _import("gymnasium_robotics")
    if robotics is None:
        return Check("gymnasium-robotics", None, "not installed (optional: FetchReach and the other robotics tasks; "
                                                 'pip install "contrl[robotics]")', core=False)
    try:
        import gymnasium as gym

        gym.register_envs(robotics)
        from contrl.envs.make import make_env

        env = make_env("FetchReach-v4")
        env.reset(seed=0)
        env.step(env.action_space.sample())
        env.close()
    except Exception as e:  # noqa: BLE001
        return Check("gymnasium-robotics", False, f"{_version(robotics)} installed, but FetchReach-v4 failed "
                                                  f"({type(e).__name__}: {str(e) or 'an assertion inside the package'})",
                     'pip install "contrl[robotics]" (it pins mujoco < 3.3, which gymnasium-robotics 1.4 needs)',
                     core=False)
    return Check("gymnasium-robotics", True, f"{_version(robotics)}: FetchReach-v4 steps (Dict observations, "
                                             f"flattened by contrl)", core=False)


_RAY = """
import ray
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
print(ray.get(ray.remote(lambda: ray.__version__).remote()))
ray.shutdown()
"""


def check_ray() -> Check:
    """Ray (optional, `--runner ray`): whether a local Ray starts and runs a task."""
    fix = 'pip install -U "contrl[ray]"'
    if importlib.util.find_spec("ray") is None:
        return Check("ray", None, 'not installed (optional: pip install "contrl[ray]" for --runner ray)', core=False)
    try:
        # on the loopback interface only, as a run's own local Ray (runners/ray_runner.py)
        p = subprocess.run([sys.executable, "-c", _RAY], capture_output=True, text=True, timeout=180,
                           env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    except subprocess.TimeoutExpired:
        return Check("ray", False, "a local Ray (1 CPU) did not start within 180 s", fix, core=False)
    if p.returncode != 0:
        lines = (p.stderr or "").strip().splitlines()
        return Check("ray", False, f"a local Ray (1 CPU) failed: {lines[-1] if lines else p.returncode}", fix,
                     core=False)
    return Check("ray", True, f"{p.stdout.strip().splitlines()[-1]}: a local Ray (1 CPU) ran a task", core=False)


CHECKS: list[Callable] = [check_python, check_torch, check_packages, check_box2d, check_mujoco, check_contrl,
                          check_rendering, check_video, check_robotics, check_ray]


def run(out: Callable[[str], None] = print) -> int:
    """Run every check, print one line each (and the fix under a failed one); 1 if the core is broken."""
    results: list[Check] = []
    for fn in CHECKS:
        got = fn()
        for c in got if isinstance(got, list) else [got]:
            results.append(c)
            tag = "-" if c.ok is None else "ok" if c.ok else ("FAIL" if c.core else "warn")
            out(f"{tag:<5} {c.name}: {c.detail}")
            if c.ok is False and c.fix:
                out(f"      fix: {c.fix}")
    broken = [c.name for c in results if c.core and c.ok is False]
    warned = [c.name for c in results if not c.core and c.ok is False]
    if broken:
        out(f"contrl doctor: the core is broken ({', '.join(broken)}); run the fixes above")
        return 1
    out("contrl doctor: the core works" + (f"; optional pieces missing or broken: {', '.join(warned)}" if warned else
                                           "; everything checked works"))
    return 0
