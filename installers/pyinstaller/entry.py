"""The frozen executable's entry point: the same `main` as `hearth` and `python -m app`.

One executable serves as the studio, the worker (``--worker``) and every child job
(``--child ROLE``: the dry run, convert, quantize, fine-tune); app.runtime.launcher starts it
again with those flags.
"""

import sys

from app.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
