"""The frozen executable's entry point: the same `main` as `hearth` and `python -m app`.

One executable serves as the studio, the worker (``--worker``) and the planner's dry run
(``--dry-run``); app.runtime.launcher starts it again with those flags.
"""

import sys

from app.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
