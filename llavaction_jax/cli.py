"""One error convention for every command-line tool.

A mistake in what the user gave us (a flag, a file, a row, a field, a config value) is a `UserError`: the
tool prints one line ``error: <what> (<where>): <what was expected>`` to stderr and exits 2, no traceback.
Anything else is a bug and keeps its traceback (exit 1). A run stopped by preemption exits EXIT_PREEMPTED
so a scheduler can tell it from a finished one and requeue it.

A full disk (ENOSPC / EDQUOT) is no bug either: one line naming the file (the writers stage whole outputs, so
what was there before is still whole).

Set LLAVACTION_DEBUG=1 (or pass --debug to a tool that has it) to see the traceback of a user error too.
"""
import errno
import os
import sys
from typing import Callable, Optional, Sequence

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USER = 2
EXIT_PREEMPTED = 75   # EX_TEMPFAIL (sysexits.h): "try again later"


class UserError(Exception):
    """Bad user input. `where` names the file[:line] / row / field; `expected` says what would be right."""

    def __init__(self, what: str, where: Optional[str] = None, expected: Optional[str] = None):
        self.what, self.where, self.expected = what, where, expected
        super().__init__(self.line())

    def line(self) -> str:
        out = self.what
        if self.where:
            out += f" ({self.where})"
        if self.expected:
            out += f": {self.expected}"
        return out


def debug_enabled(argv: Optional[Sequence[str]] = None) -> bool:
    argv = sys.argv if argv is None else argv
    return os.environ.get("LLAVACTION_DEBUG", "") not in ("", "0") or "--debug" in argv


def report_user_error(err: BaseException) -> int:
    """Print `err` as the one-line convention; return the exit status."""
    text = err.line() if isinstance(err, UserError) else str(err)
    print(f"error: {' '.join(text.split())}", file=sys.stderr, flush=True)
    return EXIT_USER


def run(main: Callable[..., Optional[int]], *args, user_errors: tuple = (), **kwargs) -> int:
    """Call main(*args, **kwargs) under the convention; returns the exit status (`sys.exit(run(main))`).

    `user_errors`: further exception types that mean bad input for this tool (e.g. a parser's error type).
    """
    try:
        return int(main(*args, **kwargs) or 0)
    except (UserError,) + tuple(user_errors) as err:
        if debug_enabled():
            raise
        return report_user_error(err)
    except OSError as err:
        if err.errno not in DISK_FULL or debug_enabled():
            raise
        return report_user_error(UserError(f"no space left on the device ({os.strerror(err.errno)})",
                                           err.filename, "free space there and run again"))


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
