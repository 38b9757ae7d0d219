"""raftlog: a replicated, secure commit-log service on asyncio.

The import root of everything raftlog installs. The repository keeps the code in
``internal/`` (this package), ``api/`` (``raftlog.api``) and ``cmd/`` (``raftlog.cmd``).
"""

__version__ = "0.1.0"
