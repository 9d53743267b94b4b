"""The solve matrix, one seed per cell (slow: minutes each; `pytest -m slow tests/test_solve.py`).

Each test trains the preset that `contrl train ALGO --env LunarLander-v3 [continuous]` picks, to
its own budget, and asserts the *final* deterministic evaluation (20 episodes) reaches the
task's threshold, 200. docs/benchmarks.md has the 5-seed rows these come from; a cell is here
once its preset passes there.
"""

import pytest

from contrl.api import train

CONTINUOUS = {"continuous": True}


@pytest.mark.slow
@pytest.mark.parametrize("algo, env_kwargs", [("ppo", None), ("ppo", CONTINUOUS), ("a2c", None), ("a2c", CONTINUOUS),
                                              ("a3c", None), ("a3c", CONTINUOUS), ("acer", None), ("acer", CONTINUOUS)])
def test_lunarlander_preset_solves(tmp_path, algo, env_kwargs):
    agent = train(algo, "LunarLander-v3", seed=0, env_kwargs=env_kwargs, out=tmp_path / "run", quiet=True,
                  tensorboard=False, overrides={"eval_every": 10**9})
    assert agent.summary["final_eval"]["mean"] >= 200, agent.summary
