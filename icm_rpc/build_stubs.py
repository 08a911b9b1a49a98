"""Generate the gRPC stubs of ``protos/icm/v1/icm.proto`` into ``icm_rpc/_generated``.

The build runs this (``setup.py``'s ``build_py``: into the wheel's tree, or into the source
tree for an editable install), so an installed package imports stubs that are already there
and needs no ``grpcio-tools``. In a source checkout, ``icm_rpc.protos`` calls
:func:`ensure_in_tree` on import: it regenerates only when the stubs are missing or older than
the ``.proto`` (an edited proto never meets stale stubs). By hand::

    python -m icm_rpc.build_stubs            # regenerate in the checkout
    python -m icm_rpc.build_stubs --check    # exit 1 when the checkout's stubs are stale

The ``.proto`` is compiled under the virtual path ``icm_rpc/_generated/icm.proto``
(``protoc -Iicm_rpc/_generated=protos/icm/v1``), so protoc itself writes package imports
(``from icm_rpc._generated import icm_pb2``) and no generated line is patched afterwards.

Standard library only at import (``setup.py`` loads this file by path, before anything is
installed); ``grpc_tools`` is imported when the stubs are made.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

__all__ = ["GENERATED", "PACKAGE_DIR", "PROTO_FILE", "ensure_in_tree", "generate", "is_stale"]

PACKAGE_DIR = "icm_rpc/_generated"       # where the stubs go, relative to a tree's root
SOURCE_ROOT = Path(__file__).resolve().parent.parent
PROTO_FILE = SOURCE_ROOT / "protos" / "icm" / "v1" / "icm.proto"
GENERATED = ("__init__.py", "icm_pb2.py", "icm_pb2.pyi", "icm_pb2_grpc.py")
_INIT = '"""gRPC stubs of protos/icm/v1/icm.proto, made by icm_rpc.build_stubs; do not edit."""\n'


def generate(root: Path, proto: Path = PROTO_FILE) -> list[Path]:
    """Compile ``proto`` into ``root/icm_rpc/_generated``; return the files written."""
    if not proto.is_file():
        raise RuntimeError(f"protocol definition not found at {proto}")
    try:
        from grpc_tools import protoc
    except ImportError as e:
        raise RuntimeError("grpcio-tools is needed to generate the gRPC stubs (a build "
                           "requirement, and part of the dev extra): pip install "
                           "'grpcio-tools==1.85.1'") from e
    out = Path(root) / PACKAGE_DIR
    out.mkdir(parents=True, exist_ok=True)
    include = str(Path(protoc.__file__).parent / "_proto")
    # written next to the package, then each file moved into place: a process importing the
    # stubs meanwhile (a checkout's tests start several) never reads a half-written file
    with tempfile.TemporaryDirectory(prefix=".stubs-", dir=out.parent) as tmp:
        rc = protoc.main(["protoc", f"-I{PACKAGE_DIR}={proto.parent}", f"-I{include}",
                          f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}",
                          f"{PACKAGE_DIR}/{proto.name}"])
        if rc != 0:
            raise RuntimeError(f"protoc failed on {proto} (exit {rc})")
        made = Path(tmp) / PACKAGE_DIR
        (made / "__init__.py").write_text(_INIT)
        for name in GENERATED:
            os.replace(made / name, out / name)
    return [out / name for name in GENERATED]


def is_stale(root: Path = SOURCE_ROOT, proto: Path = PROTO_FILE) -> bool:
    """Stubs under ``root`` missing, or older than ``proto``."""
    out = Path(root) / PACKAGE_DIR
    files = [out / name for name in GENERATED]
    if not all(f.is_file() for f in files):
        return True
    return proto.stat().st_mtime > min(f.stat().st_mtime for f in files)


def ensure_in_tree() -> bool:
    """In a source checkout (the ``.proto`` next to the package), make the stubs when they are
    missing or stale; True when it generated. Elsewhere (an installed wheel) do nothing: the
    build put them there."""
    if not PROTO_FILE.is_file() or not is_stale():
        return False
    generate(SOURCE_ROOT)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true",
                   help="only say whether the checkout's stubs are stale (exit 1 if so)")
    p.add_argument("--out", type=Path, default=SOURCE_ROOT,
                   help="tree root to write icm_rpc/_generated under (default: the checkout)")
    args = p.parse_args(argv)
    if args.check:
        stale = is_stale(args.out)
        print(f"{args.out / PACKAGE_DIR}: {'stale' if stale else 'up to date'}")
        return 1 if stale else 0
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
