"""Run every benchmark in --quick mode, one after another, and summarise PASS/FAIL.

`python bench/run_all.py [--full]` (--full drops --quick; expect ~10 minutes). Each script runs in its
own process with a time limit; its output is shown as it goes.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["callbacks.py", "digest.py", "e2e.py", "memory.py", "ui.py", "smtp_in.py", "uvloop_orjson.py"]


def main() -> int:
    full = "--full" in sys.argv[1:]
    extra = [a for a in sys.argv[1:] if a != "--full"]
    summary = []
    for script in SCRIPTS:
        args = [sys.executable, str(HERE / script), *([] if full else ["--quick"]), *extra]
        print(f"\n=== {script} {'(full)' if full else '(quick)'}", flush=True)
        started = time.monotonic()
        try:
            code = subprocess.run(args, timeout=600).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        summary.append((script, code, time.monotonic() - started))
    print("\n=== summary (exit 0 = every target met)")
    for script, code, seconds in summary:
        print(f"{script:20s} {'PASS' if code == 0 else 'FAIL' if code == 1 else code!s:8s} {seconds:6.1f} s")
    return 0 if all(code == 0 for _, code, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
