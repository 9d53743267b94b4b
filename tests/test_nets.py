"""Networks: the twin torso is exactly two independent MLPs; init; shapes."""

import gymnasium as gym
import numpy as np
import torch

from contrl.config import NetConfig
from contrl.nets.actor_critic import ActorCritic, TwinMLP, mlp


def test_twin_mlp_equals_two_separate_mlps():
    twin = TwinMLP(5, [7, 6, 4], "relu", ortho_init=False)
    a, b = mlp(5, [7, 6, 4], "relu"), mlp(5, [7, 6, 4], "relu")
    with torch.no_grad():
        for i, net in enumerate((a, b)):
            half = slice(7 * i, 7 * (i + 1))
            net[0].weight.copy_(twin.first.weight[half])
            net[0].bias.copy_(twin.first.bias[half])
            for k, (w, bias) in enumerate(zip(twin.weights, twin.biases)):
                net[2 * (k + 1)].weight.copy_(w[i].T)
                net[2 * (k + 1)].bias.copy_(bias[i, 0])
    x = torch.randn(3, 2, 5)  # leading dims are kept
    h_pi, h_v = twin(x)
    assert h_pi.shape == (3, 2, 4)
    assert torch.allclose(h_pi, a(x), atol=1e-6) and torch.allclose(h_v, b(x), atol=1e-6)
    # the halves are independent: the actor's gradient does not touch the critic's weights
    twin.zero_grad()
    twin(x)[0].sum().backward()
    assert twin.weights[0].grad[1].abs().sum() == 0 and twin.weights[0].grad[0].abs().sum() > 0


def test_orthogonal_init_per_torso():
    twin = TwinMLP(8, [64, 64], "tanh", ortho_init=True)
    for i in range(2):
        w = twin.weights[0][i]
        assert torch.allclose(w.T @ w, 2 * torch.eye(64), atol=1e-4)  # gain sqrt(2)
        half = twin.first.weight[64 * i: 64 * (i + 1)]
        assert torch.allclose(half.T @ half, 2 * torch.eye(8), atol=1e-4)


def test_actor_critic_heads_and_parameter_count_match_sb3_default():
    m = ActorCritic(8, gym.spaces.Discrete(4), NetConfig())
    # SB3 MlpPolicy on LunarLander: two 64x64 torsos + heads = 9,797 parameters
    assert sum(p.numel() for p in m.parameters()) == 9797
    logits, v = m(torch.zeros(5, 8))
    assert logits.shape == (5, 4) and v.shape == (5,)
    g = ActorCritic(3, gym.spaces.Box(-2, 2, (2,), np.float32), NetConfig(shared=True, hidden=[256], log_std_init=-1))
    mean, v = g(torch.zeros(4, 3))
    assert mean.shape == (4, 2) and torch.equal(g.log_std.data, torch.full((2,), -1.0))
