"""``python -m pdplan.realrun.targets.engine_exec ENGINE-ARGV... [--parent-pid PID]``: run a real
engine under pdplan's supervisor.

The supervisor appends ``--parent-pid`` to every worker command (pdplan's workers poll their parent);
an engine such as SGLang rejects unknown flags, so this shim drops it and replaces itself with the
engine (``execv``: same PID and process group, so the supervisor's stop and ``PR_SET_PDEATHSIG``, set
before exec and kept across it, still apply).
"""

from __future__ import annotations

import os
import shutil
import sys


def main() -> None:
    args = sys.argv[1:]
    if len(args) >= 2 and args[-2] == "--parent-pid":
        args = args[:-2]
    if not args:
        print("usage: python -m pdplan.realrun.targets.engine_exec ENGINE ARGS...", file=sys.stderr)
        sys.exit(2)
    path = shutil.which(args[0]) or args[0]
    os.execv(path, args)


if __name__ == "__main__":
    main()
