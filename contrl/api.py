"""The Python entry points the CLI calls: ``train`` and ``load``."""

from __future__ import annotations

import json
import multiprocessing
import re
import shutil
from pathlib import Path
from typing import Optional

from contrl.agent import Agent, load
from contrl.config import build_config, config_from_dict, validate
from contrl.errors import ContrlError
from contrl.runners.loop import Trainer

RESUME_ELSEWHERE = ("ray_address",)  # keys --resume may change: where the run runs, not what it computes

__all__ = ["train", "load", "Agent"]


def _default_run_dir(algo: str, env: str, seed: int, root: Path = Path("runs")) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", env.split(":")[-1])
    base = root / f"{algo}-{name}-s{seed}"
    if not base.exists():
        return base
    i = 2
    while (root / f"{base.name}-{i}").exists():
        i += 1
    return root / f"{base.name}-{i}"


def train(
    algo: str = "ppo",
    env: Optional[str] = None,
    *,
    steps: Optional[int] = None,
    seed: Optional[int] = None,
    preset: Optional[str] = None,
    env_kwargs: Optional[dict] = None,
    overrides: Optional[dict] = None,
    net: Optional[str] = None,
    mask_velocity: bool = False,
    out: Optional[str | Path] = None,
    force: bool = False,
    resume: Optional[str | Path] = None,
    quiet: bool = False,
    tensorboard: bool = True,
    log=print,
    eval_hook=None,
) -> Agent:
    """Train an agent and return it; the run folder holds config, logs, checkpoints, summary.

    ``overrides`` takes the same keys as ``--set`` (``{"lr": 1e-3, "net.hidden": [128, 128]}``).
    ``net="lstm"`` trains a recurrent policy; ``mask_velocity=True`` trains on the env's
    velocity-masked version (``contrl/CartPoleNoVel-v1`` for ``CartPole-v1``).
    ``resume`` continues the run folder from its latest checkpoint (``steps`` may extend it).
    ``eval_hook(step, mean_return)`` is called after each periodic evaluation (raise to stop).
    The summary of the run is in ``agent.summary``.
    """
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise ContrlError("contrl.train was called while a worker process was starting (it imports your script): "
                          "put the call under `if __name__ == '__main__':`")
    if resume is not None:
        run_dir = Path(resume)
        cfg_path = run_dir / "config.json"
        if not cfg_path.is_file():
            raise ContrlError(f"cannot resume '{run_dir}': no config.json there; give a run folder made by contrl train")
        if not (run_dir / "checkpoints" / "latest.pt").is_file():
            raise ContrlError(f"cannot resume '{run_dir}': no checkpoints/latest.pt; start a new run instead")
        try:
            data = json.loads(cfg_path.read_text())
        except json.JSONDecodeError:
            raise ContrlError(f"cannot resume '{run_dir}': config.json is corrupted") from None
        cfg = config_from_dict(data)
        if steps is not None:
            cfg = config_from_dict({**cfg.to_dict(), "steps": steps})
        # where the run's Ray actors live is not what it computes: a run resumes on another cluster
        where = {k: v for k, v in (overrides or {}).items() if k in RESUME_ELSEWHERE}
        if {k: v for k, v in (overrides or {}).items() if k not in where} or preset or env_kwargs or net \
                or mask_velocity or (env and env != cfg.env):
            raise ContrlError("--resume continues a run as configured; only --steps (and, on the Ray runner, "
                              "--ray-address) may change (start a new run to change settings)")
        if where:
            if cfg.runner != "ray":
                raise ContrlError(f"--ray-address applies to the Ray runner; '{run_dir}' runs on the {cfg.runner} "
                                  f"runner: drop it")
            cfg = config_from_dict({**cfg.to_dict(), **where})
            validate(cfg)
    else:
        cfg = build_config(algo, env, preset=preset, steps=steps, seed=seed, env_kwargs=env_kwargs, overrides=overrides,
                           net=net, mask_velocity=mask_velocity)
        run_dir = Path(out) if out is not None else _default_run_dir(cfg.algo, cfg.env, cfg.seed)
        if run_dir.exists() and not run_dir.is_dir():
            raise ContrlError(f"--out '{run_dir}' is a file, not a folder; give a folder (it is created) or another --out")
        if run_dir.exists() and any(run_dir.iterdir()):
            if not force:
                raise ContrlError(f"run folder '{run_dir}' already exists; use --resume {run_dir} to continue it, "
                                  f"--force to overwrite it, or another --out")
            shutil.rmtree(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(cfg.to_json() + "\n")
    except OSError as e:
        raise ContrlError(f"cannot write the run folder '{run_dir}' ({e.strerror or e}); give a writable --out with "
                          f"free space") from None
    if not quiet:
        log(("resuming" if resume is not None else "training") + f" {cfg.algo} on {cfg.env} -> {run_dir}")
        log(f"config (preset: {cfg.preset or 'none'}):\n{cfg.to_json()}")
    trainer = Trainer(cfg, run_dir, resume=resume is not None, quiet=quiet, tensorboard=tensorboard,
                      eval_hook=eval_hook)
    agent, summary = trainer.run()
    agent.summary = summary
    return agent

