"""``raftlog cert``: development certificates (CA, server/peer, clients) and the example ACL."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from raftlog.security.certs import DEFAULT_CLIENTS, DEFAULT_HOSTS


def register(sub: Any) -> None:
    """Add the ``cert`` sub-command."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "cert",
        help="make development certificates (CA, server, clients) and the example ACL",
        description=(
            "Write a development CA (ca.pem), a server/peer certificate (server.pem, CN "
            "'server') valid for the given hosts, and a client certificate "
            "(<name>-client.pem, CN <name>) for each client, plus model.conf and "
            "policy.csv when the directory has none, and a Serf gossip encryption key "
            "(gossip.key, base64, for --serf-encrypt-key-file). Keys are written mode "
            "0600. An existing CA and gossip key are reused unless --overwrite is given."
        ),
    )
    parser.add_argument("--out-dir", default="certs", help="directory to write (default certs)")
    parser.add_argument(
        "--host",
        action="append",
        dest="hosts",
        metavar="HOST",
        help="DNS name or IP the server certificate is valid for (repeatable; "
        f"default {', '.join(DEFAULT_HOSTS)})",
    )
    parser.add_argument(
        "--client",
        action="append",
        dest="clients",
        metavar="NAME",
        help=f"client subject to issue a certificate for (repeatable; default "
        f"{', '.join(DEFAULT_CLIENTS)})",
    )
    parser.add_argument("--overwrite", action="store_true", help="make a new CA even if one exists")
    parser.add_argument(
        "--renew",
        action="append",
        metavar="NAME",
        help="renew leaf NAME ('server' or a client subject) from the CA in --out-dir: same "
        "subject, hosts and usages, new key, valid from now; nothing else is written "
        "(repeatable). Then send the nodes SIGHUP",
    )
    parser.add_argument(
        "--valid-days",
        type=int,
        default=None,
        help="validity of the certificates written, days (default 365)",
    )
    parser.set_defaults(handler=run)


def renew(args: argparse.Namespace) -> int:
    """``--renew``: issue the named leaves again from the development CA."""
    from raftlog.security.certs import DEFAULT_VALID_DAYS, renew_leaf

    days = args.valid_days or DEFAULT_VALID_DAYS
    for name in args.renew:
        try:
            files = renew_leaf(args.out_dir, name, valid_days=days)
        except (OSError, ValueError) as exc:
            print(f"raftlog cert --renew {name}: {exc}", file=sys.stderr)
            return 1
        print(f"renewed {name}: {files.cert_file} (key {files.key_file}, valid {days} days)")
    return 0


def run(args: argparse.Namespace) -> int:
    """Write the files and list them."""
    from raftlog.auth.example import write_example_acl
    from raftlog.security import write_dev_certs, write_gossip_key
    from raftlog.security.certs import DEFAULT_VALID_DAYS

    if args.renew:
        return renew(args)
    try:
        files = write_dev_certs(
            args.out_dir,
            hosts=tuple(args.hosts or DEFAULT_HOSTS),
            clients=tuple(args.clients or DEFAULT_CLIENTS),
            valid_days=args.valid_days or DEFAULT_VALID_DAYS,
            overwrite=args.overwrite,
        )
        acl = write_example_acl(args.out_dir)
        gossip = write_gossip_key(args.out_dir, overwrite=args.overwrite)
    except OSError as exc:
        print(f"raftlog cert: cannot write to {args.out_dir}: {exc}", file=sys.stderr)
        return 1
    for role, cert in files.items():
        print(f"{role}: {cert.cert_file} (key {cert.key_file}, CA {cert.ca_file})")
    for path in acl:
        print(f"acl: {path}")
    print(f"gossip key: {gossip} (pass it with --serf-encrypt-key-file)")
    return 0
