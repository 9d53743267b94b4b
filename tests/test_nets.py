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


import pytest  # noqa: E402

from contrl.nets.distributions import NumpySampler  # noqa: E402


@pytest.mark.parametrize("space, shared, activation, hidden", [
    (gym.spaces.Box(-1, 1, (6,)), False, "relu", [64, 64]), (gym.spaces.Box(-2, 2, (1,)), True, "tanh", [64, 64]),
    (gym.spaces.Discrete(4), False, "tanh", [64, 64]), (gym.spaces.Discrete(2), True, "relu", [64, 64]),
    (gym.spaces.Box(-1, 1, (3,)), False, "tanh", [32])])
def test_numpy_acting_matches_torch(space, shared, activation, hidden):
    """The acting loop's numpy forward and sampling: the torch path's distribution parameters,
    values, actions and log-probs to float32 rounding, drawing the same noise from the generator
    (the same discrete actions), also when the noise buffer is reused, and one built after a
    weight update sees it."""
    torch.manual_seed(0)
    net = ActorCritic(17, space, NetConfig(hidden=hidden, activation=activation, shared=shared))
    if not net.discrete:
        with torch.no_grad():
            net.log_std.fill_(-0.7)
    fast = net.numpy_forward()
    for n in (1, 4, 16):
        obs = torch.randn(n, 17)
        with torch.inference_mode():
            pi_t, v_t = net(obs)
            dist = net.dist(pi_t)
            a_t = dist.sample(torch.Generator().manual_seed(n))
            logp_t = dist.log_prob(a_t)
        pi_n, v_n = fast(obs.numpy())
        assert pi_n.dtype == np.float32 and v_n.shape == (n,)
        np.testing.assert_allclose(pi_n, pi_t.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(v_n, v_t.numpy(), rtol=1e-5, atol=1e-6)
        log_std = None if net.discrete else net.log_std.detach().numpy()
        sampler = NumpySampler(log_std)
        for draw in range(2):  # the second draw reuses the sampler's noise buffer
            gen = torch.Generator().manual_seed(n + draw)
            with torch.inference_mode():
                a_t = dist.sample(torch.Generator().manual_seed(n + draw))
                logp_t = dist.log_prob(a_t)
            a_n, logp_n = sampler(pi_n, gen)
            if net.discrete:
                assert np.array_equal(a_n, a_t.numpy())
            else:
                np.testing.assert_allclose(a_n, a_t.numpy(), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(logp_n, logp_t.numpy(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # an optimiser's in-place step
        for p in net.parameters():
            p.mul_(0.5)
        pi_t, v_t = net(obs)
    pi_n, v_n = net.numpy_forward()(obs.numpy())
    np.testing.assert_allclose(pi_n, pi_t.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v_n, v_t.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("space", [gym.spaces.Discrete(3), gym.spaces.Box(-1, 1, (2,))])
@pytest.mark.parametrize("net", [{}, {"critic_lstm": True, "lstm_layers": 2, "hidden": [], "post_hidden": [32]},
                                 {"activation": "relu", "post_hidden": []}])
def test_numpy_lstm_step_matches_torch(space, net):
    """The recurrent network's numpy step (LSTM cells with gates reordered and both products in
    one): the torch step's distribution parameters, values and next state to float32 rounding,
    from a non-zero state, with another head on the critic's features (ACER's Q) too."""
    from contrl.nets.recurrent import RecurrentActorCritic

    torch.manual_seed(0)
    m = RecurrentActorCritic(5, space, NetConfig(type="lstm", lstm_hidden=16, **net))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.5 * torch.randn_like(p))
    q = torch.nn.Linear(m.feature_dim, 4)
    for n in (1, 8):
        obs, state = 3 * torch.randn(n, 5), torch.randn(n, m.state_size)
        with torch.inference_mode():
            pi_t, v_t, s_t = m.step(obs, state)
            q_t = q(m.step_features(obs, state)[1])
        pi_n, v_n, s_n = m.numpy_forward()(obs.numpy(), state.numpy())
        assert pi_n.dtype == v_n.dtype == s_n.dtype == np.float32 and v_n.shape == (n,)
        for got, want in ((pi_n, pi_t), (v_n, v_t), (s_n, s_t)):
            np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)
        pi_q, q_n, s_q = m.numpy_forward(critic_head=q)(obs.numpy(), state.numpy())
        np.testing.assert_allclose(q_n, q_t.numpy(), rtol=1e-4, atol=1e-5)
        assert np.array_equal(s_q, s_n) and np.array_equal(pi_q, pi_n)
