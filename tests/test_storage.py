"""Storage: GAE and n-step returns by hand, explained variance, the cutting of rollouts into
sequences, ACER's replay memory and its one-call forward over a segment."""

import pytest
import torch

from contrl.agent import Agent, build_model
from contrl.algos import make_rule
from contrl.config import build_config
from contrl.envs.vec import VecEnv
from contrl.runners.collect import collect
from contrl.storage.replay import ReplayBuffer, Segment, SegmentForward
from contrl.storage.rollout import Rollout, compute_gae, segments


def gae_by_hand(r, v, done, trunc_v, last_v, gamma, lam):
    """Straight from the definition, one env, no vectorisation."""
    T = len(r)
    adv = [0.0] * T
    for t in range(T):
        total, weight = 0.0, 1.0
        for k in range(t, T):
            next_v = last_v if k == T - 1 else v[k + 1]
            delta = r[k] + gamma * (next_v * (1 - done[k]) + trunc_v[k]) - v[k]
            total += weight * delta
            if done[k]:
                break
            weight *= gamma * lam
        adv[t] = total
    return adv


def test_gae_constant_value_matches_hand_computation():
    gamma, lam = 0.9, 0.8
    r = [1.0, 0.0, 2.0, 1.0, -1.0, 0.5]
    v = [0.7] * 6  # constant value function
    done = [0, 0, 1, 0, 1, 0]  # episode ends at t=2 (terminated) and t=4 (truncated)
    trunc_v = [0, 0, 0, 0, 0.3, 0]  # V(final obs) only where truncated
    last_v = 0.7
    adv, ret = compute_gae(*(torch.tensor(x, dtype=torch.float32).unsqueeze(1) for x in (r, v, done, trunc_v)),
                           torch.tensor([last_v]), gamma, lam)
    want = gae_by_hand(r, v, done, trunc_v, last_v, gamma, lam)
    assert adv.squeeze(1).tolist() == pytest.approx(want, abs=1e-6)
    assert ret.squeeze(1).tolist() == pytest.approx([a + 0.7 for a in want], abs=1e-6)
    # hand values of two entries, written out:
    # t=2 terminated: A = 2 - 0.7
    assert adv[2, 0].item() == pytest.approx(1.3, abs=1e-6)
    # t=4 truncated: A = -1 + 0.9*0.3 - 0.7 (bootstraps from the final obs, not the next episode)
    assert adv[4, 0].item() == pytest.approx(-1 + 0.27 - 0.7, abs=1e-6)


def test_gae_is_bit_identical_to_the_torch_recursion():
    """compute_gae runs its recursion in numpy for speed: the same float32 results as the torch
    recursion it replaced, to the bit, with episode ends and truncations in the rollout."""
    g = torch.Generator().manual_seed(3)
    T, N, gamma, lam = 300, 5, 0.99, 0.95
    r, v, last = torch.randn(T, N, generator=g), torch.randn(T, N, generator=g), torch.randn(N, generator=g)
    done = (torch.rand(T, N, generator=g) < 0.05).float()
    trunc_v = torch.randn(T, N, generator=g) * done * (torch.rand(T, N, generator=g) < 0.5)
    want, nxt, acc = torch.zeros(T, N), last, torch.zeros(N)
    for t in range(T - 1, -1, -1):
        not_done = 1.0 - done[t]
        delta = r[t] + gamma * (nxt * not_done + trunc_v[t]) - v[t]
        acc = delta + gamma * lam * not_done * acc
        want[t], nxt = acc, v[t]
    adv, ret = compute_gae(r, v, done, trunc_v, last, gamma, lam)
    assert torch.equal(adv, want) and torch.equal(ret, want + v)


def test_gae_lambda_one_is_discounted_return_minus_value():
    gamma = 0.99
    r = torch.rand(7, 3)
    v = torch.rand(7, 3)
    zeros = torch.zeros(7, 3)
    last = torch.rand(3)
    adv, _ = compute_gae(r, v, zeros, zeros, last, gamma, 1.0)
    g = last.clone()
    for t in range(6, -1, -1):
        g = r[t] + gamma * g
        assert torch.allclose(adv[t], g - v[t], atol=1e-5)


def test_lambda_one_gives_n_step_returns_by_hand():
    """With gae_lambda=1 the return of step t is r_t + g r_t+1 + ... + g^(T-t) V(s_T), cut at a
    termination and bootstrapped from V(final obs) at a truncation."""
    g = 0.9
    r = [1.0, 2.0, 3.0, 4.0, 5.0]
    v = [0.5, -0.2, 0.1, 0.3, 0.7]
    done = [0, 1, 0, 1, 0]  # terminated at t=1, truncated at t=3
    trunc_v = [0, 0, 0, 2.0, 0]
    last_v = 1.5
    t = lambda x: torch.tensor(x, dtype=torch.float32).unsqueeze(1)  # noqa: E731
    adv, ret = compute_gae(t(r), t(v), t(done), t(trunc_v), torch.tensor([last_v]), g, 1.0)
    expected = [
        1.0 + g * 2.0,  # terminated at t=1: nothing after
        2.0,
        3.0 + g * (4.0 + g * 2.0),  # truncated at t=3: bootstrap V(final obs) = 2.0
        4.0 + g * 2.0,
        5.0 + g * last_v,
    ]
    assert torch.allclose(ret.squeeze(1), torch.tensor(expected), atol=1e-6)
    assert torch.allclose(adv.squeeze(1), torch.tensor(expected) - torch.tensor(v), atol=1e-6)


def test_explained_variance():
    ro = Rollout(4, 2, 1, ())
    ro.returns = torch.arange(8.0).reshape(4, 2)
    ro.values.copy_(ro.returns)
    assert ro.explained_variance() == 1.0
    ro.values.fill_(3.5)  # the mean: explains nothing
    assert ro.explained_variance() == pytest.approx(0.0)
    ro.returns = torch.ones(4, 2)
    assert ro.explained_variance() != ro.explained_variance()  # nan: constant returns


def test_segments_cut_at_episode_starts_and_every_seq_len():
    dones = torch.zeros(6, 2)
    dones[1, 0] = 1  # env 0: episode ends at t=1, so a sequence starts at t=2
    pos, lengths = segments(dones, seq_len=4)
    # env-major positions: env 0 -> 0..5, env 1 -> 6..11
    assert pos.tolist() == [0, 2, 4, 6, 10]
    assert lengths.tolist() == [2, 2, 2, 4, 2]


def test_replay_buffer_is_preallocated_bounded_and_samples_stored_columns():
    k, N, D = 5, 3, 4
    buf = ReplayBuffer(capacity=100, k=k, n_envs=N, obs_dim=D, act_shape=(2,), mu_dim=4)
    assert buf.segments == 6 and buf.capacity == 90  # rounded down to whole segments
    per_step = 4 * (D + D + 2 + 1 + 4) + 2  # obs, final obs, action, reward, mu (float32) + 2 flags
    assert buf.nbytes == buf.segments * (k * N * per_step + N * D * 4)
    assert ReplayBuffer.size(100, k, N, D, (2,), 4) == (buf.capacity, buf.nbytes)
    lstm = ReplayBuffer(100, k, N, D, (2,), 4, state_size=8)  # + one initial state per column
    assert lstm.nbytes == buf.nbytes + buf.segments * N * 8 * 4 == ReplayBuffer.size(100, k, N, D, (2,), 4, 8)[1]
    ptrs = [getattr(buf, f).data_ptr() for f in ("obs", "final_obs", "actions", "mu")]
    gen = torch.Generator().manual_seed(0)
    segs = []
    for i in range(20):  # more than three times the capacity
        s = Segment(torch.randn(k + 1, N, D), torch.randn(k, N, D), torch.randn(k, N, 2), torch.randn(k, N),
                    torch.rand(k, N) < 0.1, torch.rand(k, N) < 0.1, torch.randn(k, N, 4))
        buf.add(s)
        segs.append(s)
    assert buf.count == 6 and buf.transitions == 90
    assert [getattr(buf, f).data_ptr() for f in ("obs", "final_obs", "actions", "mu")] == ptrs  # no regrowth
    held = segs[-6:]
    batch = buf.sample(64, gen)
    assert batch.obs.shape == (k + 1, 64, D) and batch.actions.shape == (k, 64, 2) and batch.mu.shape == (k, 64, 4)
    for j in range(64):  # every sampled column is one env's column of a held segment
        assert any(torch.equal(batch.obs[:, j], s.obs[:, e]) and torch.equal(batch.rewards[:, j], s.rewards[:, e])
                   and torch.equal(batch.terminated[:, j], s.terminated[:, e])
                   for s in held for e in range(N))
    st = buf.state_dict()
    other = ReplayBuffer(100, k, N, D, (2,), 4)
    other.load_state_dict(st)
    assert other.count == buf.count and other.next == buf.next and torch.equal(other.obs, buf.obs)


@pytest.mark.parametrize("env,env_kwargs,net", [
    ("contrl/CartPoleNoVel-v1", {}, {}),  # discrete: Q head; terminations
    ("contrl/CartPoleNoVel-v1", {}, {"net.critic_lstm": True, "net.lstm_layers": 2, "net.post_hidden": [16]}),
    ("Pendulum-v1", {"max_episode_steps": 23}, {"net.hidden": []}),  # continuous SDN; truncations
])
def test_segment_forward_with_an_lstm_equals_acting(env, env_kwargs, net):
    """ACER with an LSTM replays a segment as one LSTM call over its episode pieces, each from the
    stored state (zero after an episode start) plus a bootstrap input. Its policy at every step
    must be the behaviour policy the acting loop stored, V(s_k) the value collect() returned,
    and V(final obs) of a truncated episode the value collect() bootstrapped with."""
    N, k = 3, 40
    cfg = build_config("acer", env, env_kwargs=env_kwargs, net="lstm", overrides={"n_envs": N, "n_steps": k, **net})
    torch.manual_seed(0)
    venv = VecEnv(cfg.env, cfg.env_kwargs, [0, 1, 2])
    model = build_model(cfg, venv.observation_space, venv.action_space)
    with torch.no_grad():
        for p in model.parameters():  # away from the near-zero init, so states matter
            p.add_(0.3 * torch.randn_like(p))
    agent = Agent(cfg, model, venv.observation_space, venv.action_space)
    rollout = make_rule(cfg, model, N).new_rollout(N)
    gen = torch.Generator().manual_seed(0)
    state = model.initial_state(N)
    collect(agent, venv, rollout, gen, None, None, state)  # a first segment: non-zero carried state
    collect(agent, venv, rollout, gen, None, None, state)
    last_values = rollout.last_values
    venv.close()
    seg = Segment.from_rollout(rollout)
    done = seg.terminated | seg.truncated
    assert done.sum() >= 2 and seg.state0.abs().sum() > 0
    plan = SegmentForward(seg, recurrent=True)
    with torch.no_grad():
        pi, hv = plan.run(model)
        got = model.dist(pi[plan.step_rows]).params()
        v_last, v_final = plan.bootstrap_values(model.v(pi[plan.boot_rows], hv[plan.boot_rows]))
    tol = dict(atol=2e-6, rtol=1e-5)
    assert torch.allclose(got, rollout.mu.reshape(k * N, -1), **tol)
    open_cols = ~done[k - 1]
    assert torch.allclose(v_last[open_cols], last_values[open_cols], **tol)
    trunc = seg.truncated
    if env == "Pendulum-v1":
        assert trunc.sum() >= 2
    assert torch.allclose(v_final[trunc], rollout.trunc_values[trunc], **tol)


@pytest.mark.parametrize("algo", ["ppo", "acer"])
@pytest.mark.parametrize("env,env_kwargs", [("CartPole-v1", {}), ("Pendulum-v1", {"max_episode_steps": 23})])
@pytest.mark.parametrize("net", ["mlp", "lstm"])
def test_numpy_acting_fills_the_rollout_as_torch_acting(algo, env, env_kwargs, net, monkeypatch):
    """collect() acts through numpy: the rollout it fills (obs, actions, log-probs, values,
    rewards, dones, truncation values, last values; an LSTM's stored states; ACER's also the
    behaviour policy, raw observations, final observations, terminations) equals the torch
    path's, to float32 rounding, with the same generator -- the same discrete actions, so the
    same episodes -- and so does the recurrent state carried to the next rollout."""
    from contrl.envs.normalize import ObsNormalizer, RewardScaler
    from contrl.nets.acer import ACERNet
    from contrl.nets.actor_critic import ActorCritic
    from contrl.nets.recurrent import RecurrentActorCritic

    extra = {"batch_size": 64} if algo == "ppo" else {}
    if net == "lstm":  # two LSTM layers and the critic's own: every part of the state
        extra.update({"net.critic_lstm": True, "net.lstm_layers": 2, "net.lstm_hidden": 16},
                     **({"net.seq_len": 16} if algo == "ppo" else {}))
    cfg = build_config(algo, env, env_kwargs=env_kwargs, net=net, overrides={"n_envs": 3, "n_steps": 64, **extra})

    def run():
        torch.manual_seed(0)
        venv = VecEnv(cfg.env, cfg.env_kwargs, [0, 1, 2])
        model = build_model(cfg, venv.observation_space, venv.action_space)
        with torch.no_grad():
            if net == "lstm":  # away from the near-zero init, so that the states matter
                for p in model.parameters():
                    p.add_(0.3 * torch.randn_like(p))
            if not model.discrete:  # a log-std the behaviour policy must carry (not its initial 0)
                model.log_std.fill_(-0.7)
        agent = Agent(cfg, model, venv.observation_space, venv.action_space, ObsNormalizer(venv.obs_dim, 10.0))
        rollout = make_rule(cfg, model, 3).new_rollout(3)
        gen, scaler = torch.Generator().manual_seed(0), RewardScaler(3, 0.99)
        state = model.initial_state(3)
        for _ in range(2):
            collect(agent, venv, rollout, gen, scaler, None, state)
        venv.close()
        rollout.carried = state
        return rollout

    import contrl.runners.collect as acting

    calls = []
    real = acting.NumpySampler.__call__
    monkeypatch.setattr(acting.NumpySampler, "__call__", lambda *a: calls.append(1) or real(*a))
    fast = run()
    assert len(calls) == 128  # every step acted through numpy
    monkeypatch.delattr(ACERNet if algo == "acer" else RecurrentActorCritic if net == "lstm" else ActorCritic,
                        "numpy_forward")
    slow = run()
    assert fast.dones.sum() >= 2
    names = ["obs", "actions", "logp", "values", "rewards", "dones", "trunc_values", "last_values"]
    if net == "lstm":
        names += ["states", "carried"]
        assert fast.states[-1].abs().sum() > 0 and fast.carried.abs().sum() > 0
    if algo == "acer":
        names += ["mu", "final_obs", "terminated", "obs_last"]
        assert fast.final_obs.abs().sum() > 0
    for name in names:
        assert torch.allclose(getattr(fast, name), getattr(slow, name), atol=1e-4, rtol=1e-4), name
    if env == "CartPole-v1":
        assert torch.equal(fast.actions, slow.actions)
    else:
        assert fast.trunc_values.abs().sum() > 0
