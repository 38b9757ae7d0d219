"""The example ACL (the book's), also kept as ``certs/model.conf`` and ``certs/policy.csv``.

``raftlog cert`` writes these next to the certificates it makes when the directory has no
ACL yet, so a fresh directory is a complete development setup.
"""

from __future__ import annotations

from pathlib import Path

EXAMPLE_MODEL = """\
# raftlog ACL model (the book's): a request (subject, object, action) is allowed when a
# policy line names the subject and the action, for that object or for every object ("*").
[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = r.sub == p.sub && (p.obj == "*" || r.obj == p.obj) && r.act == p.act
"""

#: root may produce and consume; the servers (CN "server") may also replicate (peer
#: traffic) and produce/consume (a follower forwarding a client's call to the leader).
#: Only root may use the admin service (``admin``: status, leadership transfer, member
#: removal, snapshots).
#: "nobody" has no line: it is authenticated but may do nothing but GetServers and health.
EXAMPLE_POLICY = """\
p, root, *, produce
p, root, *, consume
p, root, *, admin
p, server, *, produce
p, server, *, consume
p, server, *, replicate
"""

MODEL_FILE, POLICY_FILE = "model.conf", "policy.csv"


def write_example_acl(out_dir: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Write ``model.conf`` and ``policy.csv`` into ``out_dir`` unless they exist."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in ((MODEL_FILE, EXAMPLE_MODEL), (POLICY_FILE, EXAMPLE_POLICY)):
        path = out / name
        if overwrite or not path.exists():
            path.write_text(text)
            written.append(path)
    return written
