"""`python -m dbjobq`: the same as the `dbjobq` command."""

from __future__ import annotations

import sys

from dbjobq.cli import main

sys.exit(main())
