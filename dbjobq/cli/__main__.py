"""`python -m dbjobq.cli`: the `dbjobq` command, as when this was a single module."""

from __future__ import annotations

import sys

from dbjobq.cli import main

sys.exit(main())
