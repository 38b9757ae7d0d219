"""Authorization with Casbin: may this certificate subject do this action?

The model and policy are the book's ACL (``certs/model.conf``, ``certs/policy.csv``): a
request is (subject, object, action); a policy line ``p, root, *, produce`` allows subject
``root`` the action ``produce`` on every object. Actions: ``produce``, ``consume`` (clients)
and ``replicate`` (peer traffic between servers, used by the cluster).
"""

from __future__ import annotations

import logging
from pathlib import Path

import casbin

logger = logging.getLogger("raftlog.auth")


class AuthConfigError(ValueError):
    """The ACL model or policy file is missing or cannot be loaded; the message says which."""


class CasbinAuthorizer:
    """A Casbin enforcer over a model file and a CSV policy file."""

    def __init__(self, model_file: str | Path, policy_file: str | Path) -> None:
        model, policy = Path(model_file), Path(policy_file)
        for what, path in (("acl_model_file", model), ("acl_policy_file", policy)):
            if not path.is_file():
                raise AuthConfigError(f"{what}: no such file: {path}")
        try:
            self._enforcer = casbin.Enforcer(str(model), str(policy))
        except Exception as exc:
            raise AuthConfigError(
                f"cannot load the ACL (acl_model_file={model}, acl_policy_file={policy}): {exc}"
            ) from exc
        self.model_file, self.policy_file = model, policy
        #: Grows with each reload that put a new policy in place (callers that cache
        #: decisions drop their cache when it changes).
        self.generation = 0

    def reload(self) -> bool:
        """Load the model and policy files again; True when the new ACL is in place.

        A missing or malformed file is refused with an error log line and the ACL loaded
        before stays in force (a reload never leaves the node without an ACL)."""
        try:
            fresh = CasbinAuthorizer(self.model_file, self.policy_file)
        except AuthConfigError as exc:
            logger.error("ACL reload refused, keeping the loaded ACL: %s", exc)
            return False
        self._enforcer = fresh._enforcer
        self.generation += 1
        logger.info("ACL reloaded from %s and %s", self.model_file, self.policy_file)
        return True

    def authorize(self, subject: str, obj: str, action: str) -> bool:
        """True when the policy allows ``subject`` to do ``action`` on ``obj``."""
        return bool(self._enforcer.enforce(subject, obj, action))


class AllowAll:
    """The authorizer of insecure mode: everything is allowed (say so loudly elsewhere)."""

    def authorize(self, subject: str, obj: str, action: str) -> bool:
        """Always True."""
        return True
