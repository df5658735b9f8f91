"""The one exception type for mistakes a user can fix (bad option, missing file), and
the one wrapper that turns it into what a command-line user sees.

Every command's body runs in `run_command`: a UserError becomes one `error:`
line and exit status 2, a full disk or a refused write too (finished results
are kept: every file is written under a temporary name first), Ctrl-C exit
status 130 with how to resume. No traceback for any of them.
"""
from __future__ import annotations

import errno
import sys
from typing import Callable, Optional

# Failures of the user's disk, not of the code: reported as one line.
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM)


class UserError(Exception):
    """A problem with the user's input, stated with the fix."""


def run_command(body: Callable[[], Optional[int]], output_dir: str = "") -> int:
    """Run `body` and return its exit status (0 when it returns None)."""
    try:
        return body() or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in DISK_ERRNOS:
            raise
        print(f"error: cannot write {e.filename or output_dir}: {e.strerror}; "
              f"finished results are kept, free space or fix permissions and re-run", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume", file=sys.stderr)
        return 130


def warn(msg: str) -> None:
    """A warning line on stderr (the run goes on)."""
    print(f"warning: {msg}", file=sys.stderr)
