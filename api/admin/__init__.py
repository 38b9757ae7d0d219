"""The admin wire contract: ``raftlog.admin.v1.Admin``, beside (never inside) ``log.v1.Log``."""
