"""contrl tune: three tiny trials write a preset that trains, a second call continues the same
study, and the evaluation hook that prunes trials stops a run."""

import pytest
import yaml

from contrl.api import train


def test_tune_writes_a_preset_that_trains_and_continues_the_study(run_cli, tmp_path):
    args = ("tune", "ppo", "--env", "CartPole-v1", "--steps", "2048", "--out", tmp_path / "study")
    p = run_cli(*args, "--trials", "3", check=0)
    assert "3 new trial(s), 3 in all" in p.stdout, p.stdout
    preset = yaml.safe_load((tmp_path / "study" / "best.yaml").read_text())
    assert preset["env"] == "CartPole-v1" and preset["steps"] == 2048
    assert {"lr", "n_steps", "batch_size", "gamma"} <= set(preset["ppo"]) and "hidden" in preset["net"]
    assert (tmp_path / "study" / "study.png").stat().st_size > 5000
    p = run_cli("train", "ppo", "--preset", tmp_path / "study" / "best.yaml", "--out", "tuned", "--quiet",
                "--no-tensorboard", check=0)
    assert "final evaluation" in p.stdout
    p = run_cli(*args, "--trials", "2", check=0)
    assert "2 new trial(s), 5 in all" in p.stdout, p.stdout


def test_tune_seeds_per_trial_and_fixed_keys(run_cli, tmp_path):
    """--seeds 2: each trial trains two seeds, its value is the mean of their finals; --set keys are
    kept by every trial and written into the preset."""
    p = run_cli("tune", "a2c", "--env", "CartPole-v1", "--steps", "1024", "--out", tmp_path / "study", "--trials", "2",
                "--seeds", "2", "--seed", "5", "--set", "n_envs=4", "gamma=0.97",
                "--search", "a2c.lr=2e-4..8e-4", "n_steps=8|16", "net.hidden=32,32|16", check=0)
    assert "2 new trial(s), 2 in all" in p.stdout, p.stdout
    for trial in ("trial-0000", "trial-0001"):
        assert {d.name for d in (tmp_path / "study" / trial).iterdir()} == {"s5", "s6"}
    import optuna

    study = optuna.load_study(study_name="a2c-CartPole-v1", storage=f"sqlite:///{tmp_path / 'study' / 'study.db'}")
    for t in study.trials:
        assert len(t.user_attrs["finals"]) == 2 and t.value == pytest.approx(sum(t.user_attrs["finals"]) / 2)
        # the kept keys are not searched: the sampler never sees a value the run did not use
        assert "n_envs" not in t.params and "gamma" not in t.params and "lr" in t.params
        # the narrowed keys are drawn from the given range and choices
        assert 2e-4 <= t.params["lr"] <= 8e-4 and t.params["n_steps"] in (8, 16)
        assert t.params["net.hidden"] in ("32,32", "16")
        assert t.distributions["lr"].log  # the space's log scale is kept
    preset = yaml.safe_load((tmp_path / "study" / "best.yaml").read_text())
    assert preset["n_envs"] == 4 and preset["a2c"]["gamma"] == 0.97 and "norm_obs" in preset
    assert "eval_episodes" not in preset and "mean of 2 seeds" in (tmp_path / "study" / "best.yaml").read_text()
    assert preset["net"]["hidden"] in ([32, 32], [16]) and preset["a2c"]["n_steps"] in (8, 16)
    assert "# searched with --search a2c.lr=2e-4..8e-4 n_steps=8|16 net.hidden=32,32|16" in \
        (tmp_path / "study" / "best.yaml").read_text()
    import csv

    rows = list(csv.DictReader(open(tmp_path / "study" / "trials.csv")))
    assert [r["trial"] for r in rows] == ["0", "1"] and all(r["state"] == "COMPLETE" for r in rows)
    assert all(len(r["finals"].split()) == 2 and r["n_envs"] == "4" and r["a2c.gamma"] == "0.97" for r in rows)


def test_an_interrupted_tune_still_writes_the_preset_and_the_record(tmp_path, monkeypatch):
    """Ctrl-C during the third trial: the two completed ones are in best.yaml and trials.csv, and
    the interrupt goes on to the caller (the CLI exits 130)."""
    import csv

    import contrl.api
    from contrl.tune import tune

    real, calls = contrl.api.train, []

    def train(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(contrl.api, "train", train)
    with pytest.raises(KeyboardInterrupt):
        tune("a2c", "CartPole-v1", trials=5, steps=512, out=tmp_path / "study", log=lambda line: None)
    rows = list(csv.DictReader(open(tmp_path / "study" / "trials.csv")))
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE", "FAIL"]
    assert yaml.safe_load((tmp_path / "study" / "best.yaml").read_text())["steps"] == 512


def test_ctrl_c_on_tune_prints_one_line_and_no_traceback(tmp_path):
    """A terminal's Ctrl-C during the first trial: exit 130, and stderr has no traceback (Optuna
    logs a trial stopped by an exception with one)."""
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    p = subprocess.Popen([sys.executable, "-m", "contrl", "tune", "a2c", "--env", "CartPole-v1", "--steps", "300000",
                          "--trials", "2", "--out", str(tmp_path / "study")], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    progress = tmp_path / "study" / "trial-0000" / "progress.csv"
    deadline = time.time() + 60
    while time.time() < deadline and not (progress.exists() and len(progress.read_text().splitlines()) > 2):
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    _, stderr = p.communicate(timeout=60)
    assert p.returncode == 130 and "Traceback" not in stderr, stderr
    assert stderr.strip() == "contrl: interrupted", stderr


class Stop(Exception):
    pass


def test_eval_hook_sees_every_evaluation_and_can_stop_the_run(tmp_path):
    seen = []

    def hook(step, mean):
        seen.append((step, mean))
        if len(seen) == 2:
            raise Stop

    with pytest.raises(Stop):
        train("ppo", "CartPole-v1", steps=8192, seed=0, out=tmp_path / "run", quiet=True, tensorboard=False,
              overrides={"n_envs": 2, "n_steps": 256, "batch_size": 256, "n_epochs": 1, "eval_every": 1024,
                         "eval_episodes": 1}, eval_hook=hook)
    assert [s for s, _ in seen] == [1024, 2048]
    assert not (tmp_path / "run" / "summary.json").exists()


def test_tune_bad_algo_one_line(run_cli):
    p = run_cli("tune", "dqn", "--env", "CartPole-v1", "--trials", "1")
    assert p.returncode == 2 and "unknown algorithm 'dqn'" in p.stderr and "Traceback" not in p.stderr


def test_box_actions_search_the_initial_log_std(tmp_path):
    """Continuous actions add the Gaussian's initial log-std to the space (a discrete env does not),
    and a kept value is not searched."""
    import optuna

    from contrl.config import build_config
    from contrl.tune import sample

    cfg = build_config("a2c", "Pendulum-v1", steps=1000)
    study = optuna.create_study()
    t = study.ask()
    flat = sample(t, "a2c", cfg, continuous=True)
    assert flat["net.log_std_init"] in (-2.0, -1.0, -0.5, 0.0) and "net.log_std_init" in t.params
    t = study.ask()
    assert "net.log_std_init" not in sample(t, "a2c", cfg) and "net.log_std_init" not in t.params
    t = study.ask()
    flat = sample(t, "a2c", cfg, fixed={"net.log_std_init": -0.7}, continuous=True)
    assert flat["net.log_std_init"] == -0.7 and "net.log_std_init" not in t.params


def test_two_copies_of_one_tune_command_share_the_study(tmp_path):
    """A second copy started once the first has begun a trial runs its own trials beside it on the
    same study (a different sampler seed: no trial repeats another's values), and each reports
    only the trials it ran."""
    import os
    import subprocess
    import sys
    import time

    import optuna

    from tests.conftest import ROOT

    args = [sys.executable, "-m", "contrl", "tune", "ppo", "--env", "CartPole-v1", "--steps", "2048",
            "--trials", "3", "--out", str(tmp_path / "st")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    storage = f"sqlite:///{tmp_path / 'st' / 'study.db'}"
    deadline = time.time() + 120
    while time.time() < deadline:  # until the first copy's first trial is in the study
        time.sleep(0.2)
        if not (tmp_path / "st" / "study.db").exists():
            continue
        try:
            if optuna.load_study(study_name="ppo-CartPole-v1", storage=storage).trials:
                break
        except Exception:  # noqa: BLE001 - the study is still being created (no table, no study, locked)
            pass
    second = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, (err, second.stderr)
    assert "3 new trial(s)" in out and "3 new trial(s)" in second.stdout, (out, second.stdout)
    trials = optuna.load_study(study_name="ppo-CartPole-v1", storage=storage).trials
    assert len(trials) == 6 and all(t.state.name == "COMPLETE" for t in trials)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 6


def _open_study(url, errors):
    import optuna

    from contrl.tune import _storage

    try:
        optuna.create_study(study_name="s", storage=_storage(optuna, url), load_if_exists=True)
    except Exception as e:  # noqa: BLE001 - the test reports any failure
        errors.put(f"{type(e).__name__}: {str(e)[:120]}")


def test_copies_started_together_all_open_a_new_study(tmp_path):
    """Copies of one tune command started at the same moment each create the schema of the same new
    SQLite file; without the retry about a third of such races end in an IntegrityError on the
    schema-version row (measured: 6 of 20 rounds of 3 processes). 10 rounds, none may fail."""
    import multiprocessing as mp

    import optuna  # noqa: F401 - imported once here, not in each forked child

    import contrl.tune  # noqa: F401
    ctx = mp.get_context("fork")
    errors = ctx.Queue()
    for i in range(10):
        url = f"sqlite:///{tmp_path / f'{i}.db'}"
        procs = [ctx.Process(target=_open_study, args=(url, errors)) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
        assert all(p.exitcode == 0 for p in procs)
    assert errors.empty(), errors.get()


def test_storage_failing_mid_study_is_one_error(tmp_path, monkeypatch):
    """A storage that fails while trials run (a full disk) ends tune with one line naming the storage
    and what to do, not SQLAlchemy's traceback."""
    import optuna
    from sqlalchemy.exc import OperationalError

    from contrl.errors import ContrlError
    from contrl.tune import tune

    def broken(self, *a, **k):
        raise OperationalError("INSERT INTO trials", {}, Exception("database or disk is full"))

    monkeypatch.setattr(optuna.Study, "optimize", broken)
    with pytest.raises(ContrlError, match=r"study's storage .*study\.db' failed \(OperationalError: "
                                          r"\(builtins\.Exception\) database or disk is full\).*free the disk"):
        tune("a2c", "CartPole-v1", trials=1, steps=256, out=tmp_path / "study", log=lambda line: None)


@pytest.mark.parametrize("spec, words", [
    (["a2c.optimizer=1..2"], ["optimizer", "takes choices", "not a range"]),
    (["lr=0..1e-3"], ["log scale", "LOW must be > 0"]),
    (["lr=1e-3..1e-4"], ["LOW < HIGH"]),
    (["a2c.clip_range=0.1|0.2"], ["--search", "unknown config key"]),
    (["ppo.clip_range=0.1|0.2"], ["--search", "belongs to the ppo update rule"]),
    (["n_envs=4|8", "--set", "n_envs=4"], ["also fixed with --set"]),
    (["net.log_std_init=-1|0"], ["not a key this search draws", "searched keys:"]),
    (["lr"], ["--search expects key=value"]),
])
def test_tune_bad_search_is_one_line(run_cli, tmp_path, spec, words):
    """A --search that cannot narrow the space (a range for a choice key, a bad range, a key the
    space does not draw -- the log-std on discrete actions -- or one also fixed) is one line, exit 2,
    before any trial runs."""
    p = run_cli("tune", "a2c", "--env", "CartPole-v1", "--steps", "512", "--trials", "1", "--out", tmp_path / "s",
                "--search", *spec, check=2)
    assert all(w in p.stderr for w in words), p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "s" / "study.db").exists()


def test_a_studys_record_seeds_another_study(run_cli, tmp_path):
    """--add-trials: the trials.csv of one study (another machine's, committed) joins a new study:
    the same values and parameters, so the sampler and best.yaml see them; added once only; a
    row this search cannot draw is left out with its reason; a record of another budget is refused."""
    import csv

    import optuna

    common = ("tune", "a2c", "--env", "CartPole-v1", "--steps", "1024", "--set", "n_envs=4",
              "--search", "a2c.lr=2e-4..8e-4", "n_steps=8|16")
    run_cli(*common, "--out", tmp_path / "a", "--trials", "2", check=0)
    record = tmp_path / "a" / "trials.csv"
    p = run_cli(*common, "--out", tmp_path / "b", "--trials", "1", "--add-trials", record, check=0)
    assert "added 2 trial(s) from" in p.stdout and "1 new trial(s), 3 in all" in p.stdout, p.stdout
    def load(d):
        return optuna.load_study(study_name="a2c-CartPole-v1", storage=f"sqlite:///{tmp_path / d / 'study.db'}")

    a, b = load("a").trials, load("b").trials
    for ta, tb in zip(a, b[:2]):
        assert tb.value == ta.value and tb.params == ta.params and tb.distributions == ta.distributions
        assert tb.user_attrs["added_from"] == f"trials.csv#{ta.number}"
    assert b[2].params.keys() == a[0].params.keys() and "added_from" not in b[2].user_attrs
    rows = list(csv.DictReader(open(tmp_path / "b" / "trials.csv")))
    assert [r["from"] for r in rows] == ["trials.csv#0", "trials.csv#1", ""]
    # again: nothing added twice (--trials 0 only writes the outputs)
    p = run_cli(*common, "--out", tmp_path / "b", "--trials", "0", "--add-trials", record, check=0)
    assert "added 0 trial(s)" in p.stdout and "0 new trial(s), 3 in all" in p.stdout, p.stdout
    # a row outside this search's range is left out, with the reason
    rows = list(csv.DictReader(open(record)))
    rows[0]["a2c.lr"] = "0.01"
    edited = tmp_path / "edited.csv"
    with open(edited, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    p = run_cli(*common, "--out", tmp_path / "c", "--trials", "0", "--add-trials", edited, check=0)
    assert "added 1 trial(s)" in p.stdout and "1 left out (trial 0: lr=0.01 is outside" in p.stdout, p.stdout
    # kept with --set at another value: no row fits -> one line, exit 2
    p = run_cli(*common[:6], "--set", "n_envs=8", "--out", tmp_path / "d", "--trials", "0", "--add-trials", record,
                check=2)
    assert "no trial of" in p.stderr and "n_envs=4, which this search keeps at 8" in p.stderr, p.stderr
    # another budget: refused whole
    p = run_cli(*common[:5], "4096", *common[6:], "--out", tmp_path / "e", "--trials", "0", "--add-trials", record,
                check=2)
    assert "trained 1,024 steps; this search trains 4,096" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = run_cli(*common, "--out", tmp_path / "f", "--trials", "0", "--add-trials", tmp_path / "nope.csv", check=2)
    assert "cannot read" in p.stderr and len(p.stderr.strip().splitlines()) == 1
