"""A stand-in comparison for the tests: what it does depends on the cell.

    python cellcmd.py SPEC.json dose_1000/dense/train OUTPUT_DIR

SPEC.json maps cell keys (or "*") to a behaviour: "ok", "exit:N", "sleep:S", "sleep-ok:S",
"sleep-once:S" (sleeps on its first run only), "nometrics" (exit 0, no metrics file), "nan" and
"norows" (a metrics file with a NaN / without rows), "binary", "big:BYTES" (both then exit 1), "kill-wrapper-once" (the first run kills the task wrapper running it,
as if its node process vanished). Every run appends one line to OUTPUT_DIR/runs.log.
"""

import json
import os
import sys
import time
from pathlib import Path

spec_path, cell, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
spec = json.loads(Path(spec_path).read_text())
what = spec.get(cell, spec.get("*", "ok"))
out.mkdir(parents=True, exist_ok=True)
with open(out / "runs.log", "a") as fh:
    fh.write(f"{time.time()} {os.getpid()} {os.environ.get('CUDA_VISIBLE_DEVICES')}\n")
kind, _, arg = what.partition(":")
if kind == "kill-wrapper-once" and len((out / "runs.log").read_text().splitlines()) == 1:
    import signal

    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(0.5)
    sys.exit(9)
print(f"cell {cell} doing {what}", flush=True)
if kind == "exit":
    print(f"cellcmd: failing on purpose with {arg}", file=sys.stderr, flush=True)
    sys.exit(int(arg))
if kind in ("sleep", "sleep-ok") or kind == "sleep-once" and len((out / "runs.log").read_text().splitlines()) == 1:
    time.sleep(float(arg))
if kind == "binary":  # and fails, so its tails are kept
    sys.stdout.buffer.write(b"bad bytes \xff\xfe\xc3\x28 end\n")
    sys.stderr.buffer.write(b"\x80\x81 not utf-8\n")
    sys.exit(1)
if kind == "big":
    line = b"x" * 99 + b"\n"
    for _ in range(int(arg) // 100):
        sys.stdout.buffer.write(line)
    sys.exit(1)  # failed, so its tails are kept
if kind == "nometrics":  # exits 0 without what the study needs
    sys.exit(0)
(out / "comparison_metrics.csv").write_text({"nan": "model,mae,psnr\npinn,nan,30.5\n", "norows": "model,mae,psnr\n"}.get(
    kind, "model,mae,psnr\npinn,0.1,30.5\n"))
