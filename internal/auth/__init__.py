"""raftlog.auth: Casbin authorization of certificate subjects (the book's ACL)."""

from raftlog.auth.authorizer import AllowAll, AuthConfigError, CasbinAuthorizer
from raftlog.auth.example import EXAMPLE_MODEL, EXAMPLE_POLICY, write_example_acl

__all__ = [
    "EXAMPLE_MODEL",
    "EXAMPLE_POLICY",
    "AllowAll",
    "AuthConfigError",
    "CasbinAuthorizer",
    "write_example_acl",
]
