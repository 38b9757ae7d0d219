"""``python -m raftlog.cmd``: the same as the ``raftlog`` console script."""

import sys

from raftlog.cmd.main import main

sys.exit(main())
