"""The optimisers A2C/A3C and ACER use: TF-style RMSprop and Adam by hand, and their statistics
really shared between processes (Hogwild)."""

import pytest
import torch
import torch.multiprocessing as mp

from contrl.algos.optim import Adam, RMSpropTF


def test_rmsprop_tf_style_by_hand():
    p = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = RMSpropTF([p], lr=0.1, alpha=0.9, eps=1e-3)
    p.grad = torch.tensor([0.5, 3.0])
    opt.step()
    v = 0.9 * 1.0 + 0.1 * torch.tensor([0.25, 9.0])  # the average starts at 1 (TensorFlow)
    expected = torch.tensor([1.0, -2.0]) - 0.1 * torch.tensor([0.5, 3.0]) / torch.sqrt(v + 1e-3)
    assert torch.allclose(p.detach(), expected, atol=1e-7)


def test_adam_matches_torch_adam():
    torch.manual_seed(0)
    a = torch.randn(5, 3, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    ours, ref = Adam([a], lr=0.01, eps=1e-8), torch.optim.Adam([b], lr=0.01, eps=1e-8)
    for _ in range(7):
        g = torch.randn(5, 3)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert torch.allclose(a, b, atol=1e-6)
    assert ours.steps == 7


def test_learning_rate_lives_in_param_groups_as_in_torch():
    p = torch.zeros(2, requires_grad=True)
    opt = RMSpropTF([p], lr=0.1)
    opt.param_groups[0]["lr"] = 0.0
    p.grad = torch.ones(2)
    opt.step()
    assert opt.lr == 0.0 and torch.equal(p.detach(), torch.zeros(2))


@pytest.mark.parametrize("cls", [RMSpropTF, Adam])
def test_shared_optimizer_state_lives_in_shared_memory_and_advances_with_every_worker(cls):
    """Two worker processes, each given the optimiser itself (its parameters and statistics
    travel as shared-memory handles), step the same statistics: the result equals one optimiser
    taking all their steps, and the step count includes every worker's steps."""
    torch.manual_seed(0)
    w = torch.randn(4, 3).share_memory_()
    w0 = w.clone()
    opt = cls([w], lr=0.01).share_memory()
    assert opt.is_shared() and w.is_shared()
    grads = [[torch.randn(4, 3) for _ in range(5)] for _ in range(2)]
    ctx = mp.get_context("spawn")
    for k in range(2):  # one after the other, so the result is exact
        p = ctx.Process(target=_child_steps, args=(opt, grads[k]))
        p.start()
        p.join(60)
        assert p.exitcode == 0
    assert opt.steps == 10
    ref_w = w0.clone()
    ref = cls([ref_w], lr=0.01)
    for g in grads[0] + grads[1]:
        ref_w.grad = g
        ref.step()
    assert torch.allclose(w, ref_w, atol=1e-6)
    for name in cls.state_names:
        assert torch.allclose(opt.state[name][0], ref.state[name][0], atol=1e-6)


def _child_steps(opt, grads):
    for g in grads:
        opt.params[0].grad = g
        opt.step()


def test_adam_step_bound_is_never_reached_by_consistent_statistics_and_holds_torn_ones():
    """The per-element clip of Adam's step: on the gradient sequence that reaches the
    Cauchy-Schwarz bound (g_{t-k} = (b1 / b2)^k) the step equals torch's Adam; with torn
    statistics (m holding a large gradient that v never saw, as two Hogwild workers stepping at
    once can leave them) the step stays at lr * bound / (1 - b1^t) instead of ~lr * m / eps."""
    b1, b2, t = 0.9, 0.999, 6
    grads = [torch.tensor([(b1 / b2) ** (t - 1 - i)]) for i in range(t)]
    ours_p, ref_p = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    ours, ref = Adam([ours_p], lr=0.1), torch.optim.Adam([ref_p], lr=0.1)
    for g in grads:
        ours_p.grad, ref_p.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert torch.allclose(ours_p, ref_p, rtol=1e-5, atol=0)
    torn_p = torch.zeros(3, requires_grad=True)
    torn = Adam([torn_p], lr=0.1)
    torn.state["exp_avg"][0].copy_(torch.tensor([50.0, 0.0, -50.0]))  # another worker's gradient in m only
    torn_p.grad = torch.zeros(3)
    torn.step()  # t = 1: v = 0
    bound = torn.ratio_bound(1.0)
    assert bound == pytest.approx(1 - b1, rel=1e-3)  # so that Adam's first step is at most lr
    assert torch.allclose(torn_p, torch.tensor([-0.1, 0.0, 0.1]), rtol=1e-3)  # without the clip: -0.1 * 50 / 1e-8
