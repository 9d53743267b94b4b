"""User-facing errors.

Every problem a user can cause (bad flags, bad files, bad environments) is raised as a
:class:`ContrlError` whose message is one line naming the problem and the fix. The CLI prints
it without a traceback and exits non-zero. Library code validates with exceptions, never
``assert`` (``python -O`` strips asserts).
"""


class ContrlError(Exception):
    """A problem caused by the input, reported as one line: what is wrong and how to fix it."""

    exit_code = 2
