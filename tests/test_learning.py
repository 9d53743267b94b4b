"""Learning tests: PPO must actually learn, within fixed step budgets."""

from contrl.api import train


def test_ppo_cartpole_reaches_475(tmp_path):
    agent = train("ppo", "CartPole-v1", steps=60_000, seed=1, out=tmp_path / "run", quiet=True, tensorboard=False)
    assert agent.summary["final_eval"]["mean"] >= 475, agent.summary


def test_ppo_pendulum_reaches_minus_250(tmp_path):
    agent = train("ppo", "Pendulum-v1", steps=80_000, seed=0, out=tmp_path / "run", quiet=True, tensorboard=False)
    assert agent.summary["final_eval"]["mean"] >= -250, agent.summary
