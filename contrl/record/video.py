"""Playing an agent: on screen (render_mode='human') or recorded to mp4/gif headless."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from contrl.envs.make import headless, make_env, prepare_headless_rendering
from contrl.envs.vec import env_call
from contrl.errors import ContrlError


def play(agent, episodes: int = 1, video: Optional[str | Path] = None, seed: int = 0,
         deterministic: bool = True, fps: int = 30) -> dict:
    """Run ``episodes`` episodes; record them to ``video`` (mp4 or gif) or show them on screen."""
    from contrl.agent import check_compatible

    if episodes < 1:
        raise ContrlError(f"--episodes must be >= 1, got {episodes}")
    if video is not None:
        video = Path(video)
        if video.suffix.lower() not in (".mp4", ".gif"):
            raise ContrlError(f"video '{video}' must end in .mp4 or .gif")
        if headless():
            prepare_headless_rendering()
    elif headless():
        raise ContrlError("no screen here (DISPLAY is not set); record instead with --video out.mp4 or out.gif")
    mode = "rgb_array" if video is not None else "human"
    try:
        env = make_env(agent.config.env, agent.config.env_kwargs, render_mode=mode)
    except ContrlError:
        raise
    except Exception as e:  # noqa: BLE001 - rendering back-ends fail in many ways
        raise ContrlError(f"cannot open a renderer for '{agent.config.env}' ({type(e).__name__}: {e}); "
                          f"for MuJoCo headless set MUJOCO_GL=egl or osmesa") from None
    check_compatible(agent, env)
    frames, returns = [], []
    try:
        for ep in range(episodes):
            obs, _ = env_call(env, agent.config.env, 0, "reset", seed=seed + ep)
            agent.reset()  # a recurrent agent starts each episode from the zero state
            total, done = 0.0, False
            while not done:
                if video is not None:
                    frames.append(np.asarray(env.render()))
                obs, r, term, trunc, _ = env_call(env, agent.config.env, 0, "step", agent.act(obs, deterministic))
                total += float(r)
                done = term or trunc
            if video is not None:
                frames.append(np.asarray(env.render()))
            returns.append(total)
    finally:
        env.close()
    if video is not None:
        write_video(video, frames, fps)
    return {"returns": returns, "video": str(video) if video else None, "frames": len(frames)}


def write_video(path: Path, frames: list, fps: int) -> None:
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        iio.imwrite(path, np.stack(frames[::2]), duration=2000 / fps, loop=0)  # every other frame
    else:
        iio.imwrite(path, np.stack(frames), fps=fps, codec="libx264", macro_block_size=1)
