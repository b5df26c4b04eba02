"""`python -m lmforge.webui.wrap EXIT_FILE -- COMMAND...`: run COMMAND, write its exit code.

The board's job runner starts every job under this wrapper, which leads the job's process
group: stop signals reach the command and the wrapper alike; the wrapper ignores them, waits,
and writes the exit code (a signal's death as 128 + signal number) atomically, so a board
restarted meanwhile still learns how the job ended.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m lmforge.webui.wrap EXIT_FILE -- COMMAND...", file=sys.stderr)
        return 2
    exit_file, command = argv[0], argv[2:]
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    # The child gets the default handlers back (ignored signals are inherited otherwise).
    child = subprocess.Popen(command, preexec_fn=_default_signals)
    code = child.wait()
    code = 128 - code if code < 0 else code
    tmp = f"{exit_file}.tmp"
    with open(tmp, "w") as handle:
        handle.write(str(code))
    os.replace(tmp, exit_file)
    return code


def _default_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
