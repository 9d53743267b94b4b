"""contrl doctor: every check passes on a working installation; a missing piece is reported with
the command that fixes it, and a broken core makes the exit code non-zero."""

import sys

import pytest

from contrl import doctor


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path, monkeypatch):
    """MuJoCo writes MUJOCO_LOG.TXT into the working directory: keep it out of the repository."""
    monkeypatch.chdir(tmp_path)


def test_doctor_on_this_installation(run_cli):
    p = run_cli("doctor", check=0)
    for name in ("python", "torch", "gymnasium", "Box2D", "MuJoCo", "contrl", "video writer"):
        assert f"ok    {name}:" in p.stdout, p.stdout
    assert "a random agent steps HalfCheetah-v5" in p.stdout
    assert "contrl doctor: the core works" in p.stdout
    assert "Traceback" not in p.stderr


def _run(monkeypatch, checks, hidden):
    for module in hidden:
        monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError, as if not installed
    monkeypatch.setattr(doctor, "CHECKS", checks)
    lines = []
    return doctor.run(lines.append), lines


def test_missing_core_module_is_reported_with_its_fix_and_fails(monkeypatch):
    code, lines = _run(monkeypatch, [doctor.check_box2d, doctor.check_mujoco], ["mujoco"])
    assert code == 1
    assert lines[0].startswith("ok    Box2D:")
    assert lines[1].startswith("FAIL  MuJoCo: the mujoco module is not importable")
    assert lines[2] == '      fix: pip install "gymnasium[mujoco]"'
    assert "the core is broken (MuJoCo)" in lines[-1]


def test_missing_optional_piece_warns_and_passes(monkeypatch):
    code, lines = _run(monkeypatch, [doctor.check_python, doctor.check_video], ["imageio_ffmpeg"])
    assert code == 0
    assert lines[1].startswith("warn  video writer:") and lines[2] == "      fix: pip install imageio imageio-ffmpeg"
    assert lines[-1] == "contrl doctor: the core works; optional pieces missing or broken: video writer"


def test_missing_box2d_and_torch(monkeypatch):
    code, lines = _run(monkeypatch, [doctor.check_box2d, doctor.check_torch], ["Box2D", "torch"])
    assert code == 1
    assert lines[0].startswith("FAIL  Box2D") and "gymnasium[box2d]" in lines[1]
    assert lines[2].startswith("FAIL  torch: not importable") and "torch==2.13.0" in lines[3]


def test_optional_robotics_not_installed_is_neither_ok_nor_a_warning(monkeypatch):
    code, lines = _run(monkeypatch, [doctor.check_robotics], ["gymnasium_robotics"])
    assert code == 0 and lines[0].startswith("-     gymnasium-robotics: not installed (optional")
    assert lines[-1] == "contrl doctor: the core works; everything checked works"


def test_optional_ray_not_installed(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    code, lines = _run(monkeypatch, [doctor.check_ray], [])
    assert code == 0 and lines[0].startswith("-     ray: not installed (optional")
