"""Every CLI command as a subprocess, and every bad input: one line, non-zero exit, no traceback."""

import json
import pickle

import pytest
import torch

TINY = ["--set", "n_envs=2", "n_steps=64", "batch_size=64", "n_epochs=1", "eval_episodes=1", "final_eval_episodes=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny CartPole run shared by the CLI tests."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    d = tmp_path_factory.mktemp("cli")
    p = subprocess.run([sys.executable, "-m", "contrl", "train", "ppo", "--env", "CartPole-v1", "--steps", "1024",
                        "--out", "run", *TINY], capture_output=True, text=True, cwd=d,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert p.returncode == 0, p.stderr
    return d / "run", p


def one_line_error(p, *words, code=2):
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    lines = [l for l in p.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("contrl: error:"), p.stderr
    assert "Traceback" not in p.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_train_prints_run_folder_eval_and_compute(trained):
    run, p = trained
    assert "run folder:" in p.stdout and "final evaluation:" in p.stdout and "+-" in p.stdout
    assert "CPU-s" in p.stdout and "wall-s" in p.stdout and "peak memory" in p.stdout
    assert '"algo": "ppo"' in p.stdout  # merged config printed at start
    assert json.loads((run / "config.json").read_text())["n_envs"] == 2


def test_eval_play_plot(trained, run_cli, tmp_path):
    run, _ = trained
    p = run_cli("eval", run, "--episodes", "3", check=0)
    assert "+-" in p.stdout and "3 episodes" in p.stdout
    p = run_cli("eval", run, "--episodes", "2", "--stochastic", "--json", check=0)
    assert json.loads(p.stdout)["episodes"] == 2
    p = run_cli("play", run, "--video", tmp_path / "cart.gif", check=0)
    assert (tmp_path / "cart.gif").stat().st_size > 1000
    p = run_cli("play", run / "checkpoints" / "latest.pt", "--video", tmp_path / "cart.mp4", check=0)
    assert (tmp_path / "cart.mp4").stat().st_size > 1000
    p = run_cli("plot", run, run, "--out", tmp_path / "c.png", check=0)
    assert (tmp_path / "c.png").stat().st_size > 1000
    p = run_cli("train", "--help-keys", check=0)
    assert "ppo.clip_range" in p.stdout and "a2c.optimizer" in p.stdout and "workers" in p.stdout


def test_preset_chapter_and_continuous_lunar(run_cli):
    p = run_cli("train", "ppo", "--preset", "chapter", "--steps", "40", "--set", "eval_episodes=1",
                "final_eval_episodes=0", "--no-tensorboard", "--out", "ch", check=0)
    cfg = json.loads(p.stdout[p.stdout.index("{"):p.stdout.index("\n}") + 2])
    assert cfg["ppo"]["lr"] == 5e-4 and cfg["ppo"]["n_steps"] == 20 and cfg["net"]["hidden"] == [256]
    assert cfg["net"]["shared"] is True and cfg["ppo"]["clip_range"] == 0.1 and cfg["ppo"]["n_epochs"] == 3
    p = run_cli("train", "ppo", "--env", "LunarLander-v3", "--env-kwargs", "continuous=true", "--steps", "2048",
                "--set", "n_envs=2", "n_steps=1024", "eval_episodes=1", "final_eval_episodes=0", "--out", "llc",
                "--no-tensorboard", check=0)
    assert "LunarLander-v3-continuous" in p.stdout


def test_ppo_lstm_chapter_preset_then_eval_play(run_cli, tmp_path):
    p = run_cli("train", "ppo", "--preset", "chapter", "--net", "lstm", "--steps", "100", "--set", "eval_episodes=1",
                "final_eval_episodes=1", "--no-tensorboard", "--out", "chl", check=0)
    cfg = _printed_config(p.stdout)
    assert cfg["preset"] == "chapter-lstm" and cfg["net"]["type"] == "lstm"
    assert cfg["net"]["hidden"] == [64] and cfg["net"]["lstm_hidden"] == 32 and cfg["ppo"]["n_steps"] == 20
    p = run_cli("eval", "chl", "--episodes", "2", check=0)
    assert "ppo on LunarLander-v3" in p.stdout and "2 episodes" in p.stdout
    run_cli("play", "chl", "--video", tmp_path / "chl.gif", check=0)
    assert (tmp_path / "chl.gif").stat().st_size > 1000
    p = run_cli("train", "a2c", "--env", "Pendulum-v1", "--mask-velocity", "--net", "lstm", "--steps", "200",
                "--set", "n_envs=2", "eval_episodes=1", "final_eval_episodes=0", "--no-tensorboard", "--out", "pm",
                check=0)
    cfg = _printed_config(p.stdout)
    assert cfg["env"] == "contrl/PendulumNoVel-v1" and cfg["net"]["type"] == "lstm"


def _printed_config(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{"):stdout.index("\n}") + 2])


def test_a2c_a3c_chapter_presets_then_eval_play_plot(run_cli, tmp_path):
    p = run_cli("train", "a2c", "--preset", "chapter", "--steps", "300", "--set", "eval_episodes=1",
                "final_eval_episodes=0", "--no-tensorboard", "--out", "a2c", check=0)
    cfg = _printed_config(p.stdout)
    assert cfg["n_envs"] == 3 and cfg["vec"] == "subprocess" and cfg["steps"] == 300
    assert cfg["a2c"]["lr"] == 2e-4 and cfg["a2c"]["n_steps"] == 5 and cfg["a2c"]["gamma"] == 0.98
    assert cfg["a2c"]["optimizer"] == "adam" and "ppo" not in cfg and "workers" not in cfg
    p = run_cli("train", "a3c", "--preset", "chapter", "--steps", "720", "--set", "eval_episodes=1",
                "final_eval_episodes=1", "--no-tensorboard", "--out", "a3c", check=0)
    cfg = _printed_config(p.stdout)
    assert cfg["workers"] == 6 and cfg["n_envs"] == 1 and cfg["a2c"]["n_steps"] == 6
    assert cfg["a2c"]["lr"] == 2e-4 and cfg["a2c"]["gamma"] == 0.98 and cfg["env"] == "LunarLander-v3"
    log = (tmp_path / "a3c" / "messages.log").read_text()
    assert log.count("started (pid") == 6 and "1 torch thread(s) each" in log
    p = run_cli("eval", "a3c", "--episodes", "2", check=0)
    assert "a3c on LunarLander-v3" in p.stdout and "2 episodes" in p.stdout
    run_cli("play", "a2c", "--video", tmp_path / "a2c.gif", check=0)
    assert (tmp_path / "a2c.gif").stat().st_size > 1000
    run_cli("plot", "a2c", "a3c", "--out", tmp_path / "p.png", check=0)


def test_acer_chapter_preset_buffer_size_then_eval_play(run_cli, tmp_path):
    p = run_cli("train", "acer", "--preset", "chapter", "--steps", "300", "--buffer-size", "2e3", "--set",
                "replay_start=100", "eval_episodes=1", "final_eval_episodes=1", "--no-tensorboard", "--out", "acer",
                check=0)
    cfg = _printed_config(p.stdout)
    assert cfg["env"] == "LunarLander-v3" and cfg["n_envs"] == 1 and cfg["net"]["hidden"] == [256]
    a = cfg["acer"]
    assert a["lr"] == 2e-4 and a["n_steps"] == 10 and a["gamma"] == 0.98 and a["c"] == 1.0
    assert a["buffer_size"] == 2000 and a["trust_region"] is False and "ppo" not in cfg and "a2c" not in cfg
    # 300 steps = 30 segments of 10; the memory holds 200 of them (2,000 transitions)
    assert "replay buffer: 300 of 2,000 transitions" in p.stdout
    summary = json.loads((tmp_path / "acer" / "summary.json").read_text())
    assert summary["replay_buffer"]["capacity_transitions"] == 2000
    assert 0 < summary["replay_buffer"]["bytes"] < 2000 * 200  # LunarLander: ~2 x 8 obs floats per step
    p = run_cli("eval", "acer", "--episodes", "2", check=0)
    assert "acer on LunarLander-v3" in p.stdout
    run_cli("play", "acer", "--video", tmp_path / "acer.gif", check=0)
    assert (tmp_path / "acer.gif").stat().st_size > 1000


@pytest.mark.parametrize("args,words", [  # the in-process cases: test_config.py
    (["train", "ppx", "--env", "CartPole-v1"], ["unknown algorithm 'ppx'", "ppo"]),
    (["train", "ppo", "--env", "LunarLander-v2"], ["unknown environment", "LunarLander-v3"]),
    (["train", "ppo", "--env", "CartPole-v1", "--set", "lr=0"], ["lr must be > 0"]),
    (["train", "ppo", "--env", "CartPole-v1", "--set", "lr"], ["expects key=value"]),
    (["train", "--resume", "nowhere"], ["cannot resume 'nowhere'"]),
    (["train", "ppo", "--env", "CartPole-v1", "--bogus-flag"], ["unrecognized arguments"]),
    (["train", "ppo", "--env", "CartPole-v1", "--net", "gru"], ["invalid choice: 'gru'"]),
    (["train", "ppo", "--env", "CartPole-v1", "--buffer-size", "1e5"], ["--buffer-size applies to acer"]),
    (["eval", "missing_run"], ["not found"]),
    (["plot", "missing_run"], ["not found"]),
])
def test_bad_input_one_line_error(run_cli, args, words):
    one_line_error(run_cli(*args), *words)


def test_existing_run_folder_refused_then_force(trained, run_cli):
    run, _ = trained
    before = (run / "checkpoints" / "latest.pt").read_bytes()
    one_line_error(run_cli("train", "ppo", "--env", "CartPole-v1", "--out", run, *TINY), "already exists", "--resume", "--force")
    assert (run / "checkpoints" / "latest.pt").read_bytes() == before  # nothing overwritten


def test_bad_checkpoints(trained, run_cli, tmp_path):
    run, _ = trained
    good = (run / "checkpoints" / "latest.pt").read_bytes()
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good[: len(good) // 2])
    one_line_error(run_cli("eval", trunc), "truncated or corrupted")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    one_line_error(run_cli("eval", garbage), "truncated or corrupted")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    one_line_error(run_cli("eval", other), "not a contrl checkpoint")
    one_line_error(run_cli("eval", run, "--env", "Pendulum-v1"), "spaces do not match")


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_crafted_checkpoint_does_not_execute_code(run_cli, tmp_path):
    evil = tmp_path / "evil.pt"
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        torch.save({"format": "contrl-checkpoint-1", "config": "{}", "spaces": "{}", "model": _Evil()}, evil,
                   pickle_protocol=protocol)
        one_line_error(run_cli("eval", evil), "refused")
        assert not (tmp_path / "PWNED").exists()
