"""``icm certs``: TLS material (a CA, cloud and edge certificates) for the services' mutual TLS.

It lives beside :mod:`icm_rpc.tls`, which makes the files, and imports nothing heavier.
"""

from __future__ import annotations

import argparse

from icm_codec.commands import CommandTable

__all__ = ["COMMANDS"]

COMMANDS = CommandTable()
command = COMMANDS.command


def _certs_configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    ca = sub.add_parser("ca", help="create a certificate authority (ca.pem, ca.key)")
    ca.add_argument("--out", required=True, help="folder for the CA files")
    iss = sub.add_parser("issue", help="issue a certificate signed by the CA")
    iss.add_argument("name", help="camera id (edge certificate) or server name")
    iss.add_argument("--ca", required=True, help="folder holding ca.pem and ca.key")
    iss.add_argument("--out", help="output folder (default: the CA folder)")
    iss.add_argument("--server", action="store_true", help="a server (cloud) certificate")
    iss.add_argument("--host", action="append", default=[],
                     help="extra host name or IP of a server certificate (repeatable)")


@command("certs", "make TLS material: a CA, cloud and edge certificates", _certs_configure)
def _certs(args: argparse.Namespace) -> int:
    from .tls import make_ca, make_cert

    if args.action == "ca":
        cert, _ = make_ca(args.out)
        print(f"wrote {cert} and its key")
    else:
        hosts = ("localhost", "127.0.0.1", *args.host)
        cert, key = make_cert(args.ca, args.name, args.out, server=args.server, hosts=hosts)
        print(f"wrote {cert} and {key}")
    return 0
