"""User-facing errors.

Every problem a user can cause (bad flags, bad files, bad environments) is raised as a
:class:`ContrlError` whose message is one line naming the problem and the fix; a run that fails
on the way (an env that raises, a non-finite value, a full disk) as a :class:`Fault`, which
also says where the last good checkpoint is. The CLI prints the line without a traceback and
exits 2 (input) or 1 (fault). Library code validates with exceptions, never ``assert``
(``python -O`` strips asserts).
"""

import signal
import unicodedata


class ContrlError(Exception):
    """A problem caused by the input, reported as one line: what is wrong and how to fix it."""

    exit_code = 2

    def __init__(self, message: str = ""):
        # one line, whatever text the input brought in (a key or a value with a line break in it)
        super().__init__("".join(repr(c)[1:-1] if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c
                                 for c in str(message)))


class Stopped(ContrlError):
    """Stopped from outside (Ctrl-C, SIGTERM) with its work kept: one line, exit 130."""

    exit_code = 130


class Fault(ContrlError):
    """A run that could not go on (an env raised, a value went non-finite, the disk is full):
    one line saying what happened, where, and where the last good checkpoint is; the details
    (a traceback) go to the run's messages.log. Exit status 1."""

    exit_code = 1

    def __init__(self, message: str = "", details: str = ""):
        super().__init__(message)
        self.details = details

    def __reduce__(self):  # across processes (env subprocesses, Ray) with its details, t and step
        return type(self), (str(self), self.details), self.__dict__


class EnvError(Fault):
    """An environment raised (in this process, an env subprocess, a worker or a Ray actor)."""


class NonFinite(Fault):
    """A non-finite number: an observation or reward from an env, an action, a loss, a gradient."""


class Interrupted(Exception):
    """Training stopped by Ctrl-C (or SIGTERM) after saving a checkpoint."""

    def __init__(self, run_dir, step: int, signum: int = signal.SIGINT):
        what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        super().__init__(f"{what} at step {step:,}; checkpoint saved. Resume with: contrl train --resume {run_dir}")
        self.run_dir, self.step, self.exit_code = run_dir, step, 128 + signum


def checkpoint_kept(run_dir) -> str:
    """How a run that stops on an error ends its one line: where its last checkpoint is."""
    ckpt = run_dir / "checkpoints" / "latest.pt"
    if not ckpt.exists():
        return "no checkpoint was saved yet"
    return (f"the last checkpoint is kept in {ckpt.parent}; fix the cause and resume with "
            f"contrl train --resume {run_dir}")


def one_line_warnings() -> None:
    """Warnings (contrl's and the libraries') as one line each, ``contrl: warning: ...``; gymnasium's
    out-of-bounds observation warning is left to contrl's own, which names the env."""
    import re
    import warnings

    warnings.formatwarning = lambda message, category, *args, **kwargs: (
        "contrl: warning: " + re.sub(r"\x1b\[[0-9;]*m", "", " ".join(str(message).split())) + "\n")
    warnings.filterwarnings("ignore", message=r".*obs returned by the .* method is not within the observation space")
