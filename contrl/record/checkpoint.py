"""Checkpoints: tensors and JSON strings in one file, saved atomically, loaded with
``torch.load(weights_only=True)`` so that loading never runs code from the file."""

from __future__ import annotations

import json
import os
import pickle
import traceback
import warnings
import zipfile
from pathlib import Path

import torch

from contrl.errors import ContrlError, Fault

FORMAT = "contrl-checkpoint-1"


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write to a temporary file and rename: a crash or a full disk mid-write never leaves a
    broken file, and the previous checkpoint stays as it was (a :class:`Fault` says why)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"format": FORMAT, **payload}, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a failed write as RuntimeError
        tmp.unlink(missing_ok=True)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else (str(e).splitlines() or [""])[0]
        raise Fault(f"cannot write the checkpoint {path} ({reason}); free some disk space or fix the folder's "
                    f"permissions", traceback.format_exc()) from None


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ContrlError(f"checkpoint '{path}' not found; give a run folder or a .pt file from one")
    corrupted = ContrlError(
        f"checkpoint '{path}' is truncated or corrupted; use another checkpoint of the run "
        f"(checkpoints/latest.pt or best.pt) or retrain"
    )
    if not zipfile.is_zipfile(path):  # torch.save always writes a zip archive
        raise corrupted
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        what = [ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
        raise ContrlError(
            f"checkpoint '{path}' was refused: it holds objects other than tensors and plain data "
            f"({(what[0] if what else 'unsafe content')[:100]}); only load checkpoints written by contrl"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError):
        raise corrupted from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ContrlError(f"'{path}' is not a contrl checkpoint (no '{FORMAT}' marker); give a file written by contrl")
    for key in ("config", "spaces", "model"):
        if key not in data:
            raise ContrlError(f"checkpoint '{path}' is incomplete (no '{key}'); use another checkpoint or retrain")
    try:
        data["config"] = json.loads(data["config"])
        data["spaces"] = json.loads(data["spaces"])
    except (TypeError, json.JSONDecodeError):
        raise ContrlError(f"checkpoint '{path}' has a corrupted config; use another checkpoint or retrain") from None
    return data


def find_checkpoint(target: str | Path, prefer: str = "best") -> Path:
    """A checkpoint file, or a run folder (its best.pt, else latest.pt)."""
    p = Path(target)
    if p.is_dir():
        names = ["best.pt", "latest.pt"] if prefer == "best" else ["latest.pt", "best.pt"]
        for name in names:
            if (p / "checkpoints" / name).is_file():
                return p / "checkpoints" / name
        raise ContrlError(f"run folder '{p}' has no checkpoints/latest.pt or best.pt; was the run started?")
    if not p.exists():
        raise ContrlError(f"'{p}' not found; give a run folder or a checkpoint .pt file")
    return p

