"""Build hook: the gRPC stubs of ``protos/`` are generated into the package by the build.

Everything else about the distribution is in ``pyproject.toml``. ``build_py`` runs
``icm_rpc/build_stubs.py`` (loaded by path: nothing of the project is installed yet) with
``grpcio-tools`` from the build requirements: into the wheel's tree for ``pip install .`` and
``pip wheel .``, into the source tree (``icm_rpc/_generated``, git-ignored) for an editable
install.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _build_stubs():
    spec = importlib.util.spec_from_file_location("_icm_build_stubs",
                                                  HERE / "icm_rpc" / "build_stubs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithStubs(build_py):
    """``build_py`` that also writes ``icm_rpc/_generated`` (the stubs of ``protos/``)."""

    def run(self) -> None:
        super().run()
        written = _build_stubs().generate(HERE if self.editable_mode else Path(self.build_lib))
        # an editable install writes them into the source tree, where its finder sees them:
        # only a built tree lists them as outputs
        self._stubs = [] if self.editable_mode else [str(p) for p in written]

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        return outputs + [p for p in getattr(self, "_stubs", []) if p not in outputs]


setup(cmdclass={"build_py": BuildPyWithStubs})
