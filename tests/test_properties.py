"""Property-based tests (Hypothesis) over the configuration and the CLI surface: whatever keys,
values, types and YAML documents come through --set, presets or --env-kwargs, contrl either
accepts them or answers with one line and exit 2 -- never a traceback. In-process and bounded."""

import io
import json
import os
from contextlib import redirect_stderr, redirect_stdout

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contrl import cli
from contrl.config import ALGOS, _all_keys, build_config
from contrl.errors import ContrlError, Interrupted
from contrl.runners import loop

KEYS = _all_keys()
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["nan", "inf", "-1", "0", "1e9", "[1, 2]", "{a: 1}", "true", "none", "sync", "lstm", "ray"]))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(st.text(max_size=5), SCALARS, max_size=2))
KEY = st.one_of(st.sampled_from(KEYS), st.text(max_size=12), st.sampled_from(["net.", ".lr", "ppo.x", "a.b.c"]))
# deterministic and bounded in the test run; CONTRL_HUNT=N explores N random examples per property
HUNT = int(os.environ.get("CONTRL_HUNT", "0"))
FAST = settings(max_examples=HUNT or 100, deadline=None, derandomize=not HUNT,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _one_line(e: Exception) -> None:
    assert str(e) and "\n" not in str(e), repr(str(e))


@FAST
@given(algo=st.sampled_from(list(ALGOS)), overrides=st.dictionaries(KEY, VALUES, max_size=4))
def test_any_overrides_are_accepted_or_one_error(algo, overrides):
    try:
        build_config(algo, "CartPole-v1", overrides=overrides)
    except ContrlError as e:
        _one_line(e)


@FAST
@given(algo=st.sampled_from(list(ALGOS)), doc=st.one_of(
    st.dictionaries(KEY, VALUES, max_size=4).map(lambda d: yaml.safe_dump(d)),
    st.text(max_size=40), st.sampled_from(["- 1\n- 2", "a: [", "!!python/object:os.system {}", "", "~", "3"])))
def test_any_preset_file_is_accepted_or_one_error(tmp_path, algo, doc):
    path = tmp_path / "p.yaml"
    path.write_text(doc)
    try:
        build_config(algo, "CartPole-v1", preset=str(path))
    except ContrlError as e:
        _one_line(e)


def _item(key: str, value) -> str:
    return f"{key}={value if isinstance(value, str) else json.dumps(value)}"


@FAST
@given(algo=st.one_of(st.sampled_from(list(ALGOS)), st.text(max_size=6)),
       sets=st.lists(st.tuples(KEY, VALUES), max_size=3),
       env_kwargs=st.lists(st.tuples(st.sampled_from(["render_mode", "sutton_barto_reward", "x", ""]), SCALARS),
                           max_size=2),
       extra=st.lists(st.sampled_from(["--net", "lstm", "gru", "--runner", "async", "--steps", "-5", "1e3", "abc",
                                       "--workers", "0", "--seed", "-1", "--mask-velocity", "--buffer-size", "10",
                                       "--power-watts", "nan", "--bogus"]), max_size=4))
def test_any_train_command_line_is_accepted_or_one_line_exit_2(tmp_path, monkeypatch, algo, sets, env_kwargs, extra):
    """The whole of `contrl train`'s input path, in-process: arguments, --set, --env-kwargs, the
    config, the env. An accepted command would start training: the run stops at once instead."""
    def stop_at_once(self):
        raise Interrupted(self.run_dir, 0)

    monkeypatch.setattr(loop.Trainer, "run", stop_at_once)
    argv = ["train", algo, "--env", "CartPole-v1", "--out", str(tmp_path / "run"), "--force", "--quiet", *extra]
    if sets:
        argv += ["--set", *(_item(k, v) for k, v in sets)]
    if env_kwargs:
        argv += ["--env-kwargs", *(_item(k, v) for k, v in env_kwargs)]
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(argv)
    assert code in (2, 130), (argv, code, err.getvalue())
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("contrl: error:"), (argv, err.getvalue())


@pytest.mark.parametrize("argv", [["eval"], ["play", "--episodes", "x"], ["compare"], ["tune", "ppo"], ["plot"],
                                  ["nosuch"], ["train", "--resume"], []])
def test_incomplete_commands_are_one_line_exit_2(argv):
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("contrl: error:"), err.getvalue()
