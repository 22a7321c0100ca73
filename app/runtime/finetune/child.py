"""The training child process: ``python -m app.runtime.finetune.child RUN_DIR [--resume]``.

The real stdout carries only event lines (JSON, one per line); fd 1 is re-pointed to stderr first,
so whatever torch, transformers or a progress bar prints cannot corrupt the stream. The parent
(`app.runtime.finetune.runner`) sends stderr to the run's ``train.log``.

Exit status: 0 done, 2 the run failed with a message (the last event says why), anything else (a
kill, an abort, out of memory) the parent reports as a crash that a resume can continue.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from typing import IO, Any

FAILED = 2


def _events_stream() -> IO[str]:
    fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(fd, "w", buffering=1, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m app.runtime.finetune.child RUN_DIR [--resume]", file=sys.stderr)
        return FAILED
    # Spinning OpenMP threads waste the CPU when the machine is busy: measured 6x more CPU time per
    # step with the default policy on a loaded 2-core machine, the same per step with PASSIVE.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    stream = _events_stream()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def emit(event: dict[str, Any]) -> None:
        stream.write(json.dumps(event, default=str) + "\n")
        stream.flush()

    from app.runtime.finetune.config import RunConfig
    from app.runtime.finetune.train import run
    from app.runtime.protocol import RuntimeFailure

    try:
        run(RunConfig.load(args[0]), emit, resume="--resume" in args[1:])
    except RuntimeFailure as exc:
        logging.getLogger(__name__).exception("fine-tune run failed")
        emit({"kind": "error", "error_kind": exc.kind.value, "message": exc.message})
        return FAILED
    except (ValueError, RuntimeError, OSError, MemoryError) as exc:
        logging.getLogger(__name__).exception("fine-tune run failed")
        oom = isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()
        emit({"kind": "error", "error_kind": "out_of_memory" if oom else "internal", "message": str(exc), "detail": traceback.format_exc()})
        return FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
