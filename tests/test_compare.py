"""contrl compare: the statistics against scipy, the tables and plots on a tiny budget, and a
second call that skips finished runs and completes an unfinished one."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from contrl.compare import bootstrap_ci, iqm, parse_seeds
from contrl.errors import ContrlError
from tests.conftest import ROOT


@pytest.mark.parametrize("n", [1, 3, 4, 5, 8, 10])
def test_iqm_is_scipys_25_percent_trimmed_mean(n):
    x = np.random.default_rng(n).normal(size=n) * 100
    assert iqm(x) == pytest.approx(stats.trim_mean(x, 0.25))


@pytest.mark.parametrize("statistic", [np.mean, iqm])
def test_bootstrap_interval_agrees_with_scipy(statistic):
    x = np.random.default_rng(0).normal(200, 60, size=10)
    ours = bootstrap_ci(x, statistic, n_resamples=20_000)
    ref = stats.bootstrap((x,), statistic, vectorized=False, method="percentile", n_resamples=20_000,
                          confidence_level=0.95, random_state=1).confidence_interval
    width = ref.high - ref.low
    assert abs(ours[0] - ref.low) < 0.05 * width and abs(ours[1] - ref.high) < 0.05 * width


def _compare(tmp_path, steps):
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "contrl", "compare", "--env", "CartPole-v1", "--algos", "ppo,a2c",
                           "--steps", str(steps), "--seeds", "2", "--jobs", "2", "--out", str(tmp_path / "cmp")],
                          capture_output=True, text=True, env=env, timeout=600)


def test_compare_tables_plots_and_rerun(tmp_path):
    out = tmp_path / "cmp"
    # an unfinished run before compare starts: a2c seed 0 with half the budget
    pre = subprocess.run([sys.executable, "-m", "contrl", "train", "a2c", "--env", "CartPole-v1", "--steps", "1024",
                          "--seed", "0", "--out", str(out / "a2c-s0"), "--quiet", "--no-tensorboard"],
                         capture_output=True, text=True, env={"PYTHONPATH": str(ROOT)}, timeout=600)
    assert pre.returncode == 0, pre.stderr
    p = _compare(tmp_path, 2048)
    assert p.returncode == 0, p.stderr
    assert "1 to resume, 3 to start" in p.stdout and "a2c-s0: finished (resumed)" in p.stdout
    a2c0 = json.loads((out / "a2c-s0" / "summary.json").read_text())
    assert a2c0["steps"] >= 2048  # continued from its checkpoint (contrl train --resume) to the new budget
    md = (out / "compare.md").read_text()
    assert "| ppo | 2 | 2,048 |" in md and "| a2c | 2 | 2,0" in md and "threshold (475)" in md
    assert "`contrl compare --env CartPole-v1 --algos ppo,a2c --seeds 2 --steps 2048`" in md
    rows = list(csv.DictReader(open(out / "compare.csv")))
    assert [r["algo"] for r in rows] == ["ppo", "a2c"]
    for r in rows:
        assert float(r["iqm_ci_low"]) <= float(r["iqm"]) <= float(r["iqm_ci_high"])
        assert float(r["steps_per_s"]) > 0
    runs = list(csv.DictReader(open(out / "runs.csv")))
    assert sorted((r["algo"], r["seed"]) for r in runs) == [("a2c", "0"), ("a2c", "1"), ("ppo", "0"), ("ppo", "1")]
    for png in ("return_vs_steps.png", "return_vs_wall.png"):
        assert (out / png).stat().st_size > 5000
    # the same command again: nothing is re-run
    stamps = {r: (out / r / "summary.json").stat().st_mtime_ns for r in ("ppo-s0", "ppo-s1", "a2c-s0", "a2c-s1")}
    p = _compare(tmp_path, 2048)
    assert p.returncode == 0, p.stderr
    assert "4 finished run(s) skipped, 0 to resume, 0 to start" in p.stdout
    assert stamps == {r: (out / r / "summary.json").stat().st_mtime_ns for r in stamps}


def test_compare_bad_algo_one_line(run_cli):
    p = run_cli("compare", "--env", "CartPole-v1", "--algos", "ppo,dqn", "--steps", "1000")
    assert p.returncode == 2 and "unknown algorithm 'dqn' in --algos" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("text, seeds", [("5", [0, 1, 2, 3, 4]), (3, [0, 1, 2]), ("10-12", [10, 11, 12]),
                                         ("0,3,7", [0, 3, 7]), ("0-1,9", [0, 1, 9]), ("7-7", [7])])
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["0", "x", "3-1", "1,1", "-2", "", "1.5"])
def test_parse_seeds_refuses(text):
    with pytest.raises(ContrlError, match="--seeds must be"):
        parse_seeds(text)


def test_compare_preset_budget_seed_range_set_and_other_settings_refused(tmp_path, run_cli):
    """--steps omitted: the preset's budget; --seeds as a range; --set on every run; a folder
    trained with other settings is refused rather than mixed into the table."""
    preset = tmp_path / "tiny.yaml"
    preset.write_text("env: CartPole-v1\nsteps: 1024\nn_envs: 4\na2c:\n  n_steps: 8\n")
    out = tmp_path / "cmp"
    args = ("compare", "--env", "CartPole-v1", "--algos", "a2c", "--seeds", "3-4", "--preset", str(preset),
            "--threshold", "480", "--out", str(out))
    p = run_cli(*args, "--set", "a2c.lr=0.002", "--jobs", "2")
    assert p.returncode == 0, p.stderr
    for seed in (3, 4):
        cfg = json.loads((out / f"a2c-s{seed}" / "config.json").read_text())
        assert (cfg["seed"], cfg["steps"], cfg["n_envs"], cfg["a2c"]["lr"], cfg["eval_every"]) == (seed, 1024, 4,
                                                                                                 0.002, 51)
    runs = list(csv.DictReader(open(out / "runs.csv")))
    assert sorted(r["seed"] for r in runs) == ["3", "4"] and all(r["solved"] == "False" for r in runs)
    md = (out / "compare.md").read_text()
    assert f"--seeds 3-4 --threshold 480 --preset {preset} --set a2c.lr=0.002`" in md and "| a2c | 2 | 1,024 |" in md
    assert "threshold (480)" in md and "Final return: deterministic evaluation" in md
    p = run_cli(*args, "--set", "a2c.lr=0.001")
    assert p.returncode == 2 and "a2c-s3 was trained with other settings (a2c:" in p.stderr
    assert "give another --out" in p.stderr and "Traceback" not in p.stderr
    # a run folder from before a run key existed (here eval_deterministic) is still the same settings
    # when the key's default is asked for: skipped, not refused
    for seed in (3, 4):
        path = out / f"a2c-s{seed}" / "config.json"
        cfg = json.loads(path.read_text())
        del cfg["eval_deterministic"]
        path.write_text(json.dumps(cfg))
    p = run_cli(*args, "--set", "a2c.lr=0.002")
    assert p.returncode == 0 and "2 finished run(s) skipped" in p.stdout, p.stdout + p.stderr
    p = run_cli(*args, "--set", "a2c.lr=0.002", "eval_deterministic=false")
    assert p.returncode == 2 and "(eval_deterministic: True, asked now: False)" in p.stderr, p.stderr
    stoch = tmp_path / "stoch"
    p = run_cli(*args[:-1], str(stoch), "--set", "a2c.lr=0.002", "eval_deterministic=false", "--jobs", "2")
    assert p.returncode == 0, p.stderr
    assert "Final return: stochastic evaluation (sampled actions" in (stoch / "compare.md").read_text()
    assert json.loads((stoch / "a2c-s3" / "summary.json").read_text())["final_eval"]["deterministic"] is False


def test_ctrl_c_stops_compare_and_the_same_command_goes_on(tmp_path):
    """One SIGINT to compare (as a terminal's Ctrl-C, which reaches compare alone: each run has its
    own session) stops the run under way with a checkpoint, launches nothing more, exits 130 with
    one line; the same command then resumes that run and finishes the rest."""
    import signal
    import time

    out = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "contrl", "compare", "--env", "CartPole-v1", "--algos", "a2c", "--steps", "12000",
           "--seeds", "2", "--out", str(out), "--set", "checkpoint_every=1000"]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    latest = out / "a2c-s0" / "checkpoints" / "latest.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not latest.exists():
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 130, stderr
    assert stderr.count("\n") == 1 and "compare stopped" in stderr and "Traceback" not in stderr
    assert "a2c-s0: stopped, checkpoint kept" in stdout
    assert not (out / "a2c-s1").exists() and not (out / "a2c-s0" / "summary.json").exists()
    assert "interrupted at step" in (out / "a2c-s0.log").read_text()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "1 to resume, 1 to start" in p.stdout and "a2c-s0: finished (resumed)" in p.stdout
    for seed in (0, 1):
        assert json.loads((out / f"a2c-s{seed}" / "summary.json").read_text())["steps"] >= 12000


def test_max_failures_leaves_out_a_row_that_cannot_pass(tmp_path, run_cli):
    """--max-failures 1 with a threshold no run reaches: the first run ends below it and the other
    seeds are not started (said so, no error); the tables cover what finished, and the same command
    without the flag runs the rest."""
    out = tmp_path / "cmp"
    args = ["compare", "--env", "CartPole-v1", "--algos", "a2c", "--steps", "512", "--threshold", "1000", "--out", out]
    p = run_cli(*args, "--seeds", "3", "--max-failures", "1", check=0)
    assert "a2c-s0: finished, below 1000" in p.stdout, p.stdout
    assert "a2c-s1: not started (1 run(s) of a2c ended below 1000; --max-failures 1)" in p.stdout
    assert "left out by --max-failures 1: a2c-s1, a2c-s2" in p.stdout
    assert not (out / "a2c-s1").exists() and not (out / "a2c-s2").exists()
    assert [r["seeds"] for r in csv.DictReader(open(out / "compare.csv"))] == ["1"]
    p = run_cli(*args, "--seeds", "2", check=0)
    assert "1 finished run(s) skipped, 0 to resume, 1 to start" in p.stdout, p.stdout
    assert [r["seeds"] for r in csv.DictReader(open(out / "compare.csv"))] == ["2"]


@pytest.mark.parametrize("extra, words", [(["--max-failures", "0"], "--max-failures must be >= 1"),
                                          (["--env", "Pendulum-v1", "--max-failures", "2"], "give --threshold")])
def test_max_failures_bad_input_one_line(run_cli, tmp_path, extra, words):
    p = run_cli("compare", "--env", "CartPole-v1", "--algos", "a2c", "--steps", "512", "--out", tmp_path / "c",
                *extra, check=2)
    assert words in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
