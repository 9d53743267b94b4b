"""Networks: heads, shapes, init, parameter count."""

import gymnasium as gym
import numpy as np
import torch

from contrl.config import NetConfig
from contrl.nets.actor_critic import ActorCritic


def test_actor_critic_matches_sb3_default_size_and_orthogonal_init():
    m = ActorCritic(8, gym.spaces.Discrete(4), NetConfig())
    # SB3 MlpPolicy on LunarLander: two 64x64 tanh torsos + heads = 9,797 parameters
    assert sum(p.numel() for p in m.parameters()) == 9797
    w = m.pi_torso[2].weight
    assert torch.allclose(w @ w.T, 2 * torch.eye(64), atol=1e-4)  # orthogonal, gain sqrt(2)
    logits, v = m(torch.zeros(5, 8))
    assert logits.shape == (5, 4) and v.shape == (5,)
    assert logits.abs().max() < 1e-6  # zero bias, small pi-head gain: near-uniform policy at start


def test_shared_torso_gaussian_head():
    g = ActorCritic(3, gym.spaces.Box(-2, 2, (2,), np.float32), NetConfig(shared=True, hidden=[256], log_std_init=-1))
    assert g.v_torso is None
    mean, v = g(torch.zeros(4, 3))
    assert mean.shape == (4, 2) and v.shape == (4,)
    assert torch.equal(g.log_std.data, torch.full((2,), -1.0))
