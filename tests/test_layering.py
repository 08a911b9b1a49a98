"""The package layering holds: the codec library imports nothing above it, and the ``icm``
shell's light paths (``--help``, a command's ``--help``, ``analyst``, ``certs``) start without
torch.

See docs/architecture.md for the layers.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# packages above the codec library: icm_codec may name none of them
ABOVE_CODEC = ("icm_app", "icm_rpc", "icm_eval", "analytics", "edge_encoder", "cloud_decoder",
               "console")
# the evaluation package (layer 2) stands on the codec library only; analytics uses it
ABOVE_EVAL = ("icm_app", "icm_rpc", "analytics", "edge_encoder", "cloud_decoder", "console")
HEAVY = ("torch", "torchvision", "compressai", "ultralytics", "cv2", "fastapi")


def _imported_packages(path: Path) -> set[str]:
    """Top-level names a module imports, at any depth (functions too), or names as a dotted
    module path in a string (what ``importlib.import_module`` would load)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", node.value)):
            names.add(node.value.split(".")[0])
    return names


def _upward_imports(package: str, above: tuple[str, ...], at_least: int) -> dict[str, list]:
    """Module → the packages of ``above`` it imports, for every module of ``package`` that
    imports one (``at_least`` modules must exist, so a moved package cannot pass vacuously)."""
    modules = sorted((ROOT / package).rglob("*.py"))
    assert len(modules) > at_least
    bad = {str(p.relative_to(ROOT)): sorted(_imported_packages(p) & set(above))
           for p in modules}
    return {k: v for k, v in bad.items() if v}


def test_codec_library_imports_nothing_above_it() -> None:
    assert not _upward_imports("icm_codec", ABOVE_CODEC, 10), \
        "icm_codec imports a layer above it"


def test_evaluation_package_imports_only_the_codec_library() -> None:
    assert not _upward_imports("icm_eval", ABOVE_EVAL, 5), "icm_eval imports a layer above it"


def test_the_check_sees_a_hidden_upward_import(tmp_path: Path) -> None:
    mod = tmp_path / "m.py"
    mod.write_text("def f():\n    from cloud_decoder.cli import x\n"
                   "    for name in ('analytics.cli', 'console.cli'):\n"
                   "        importlib.import_module(name)\n")
    assert {"cloud_decoder", "analytics", "console"} <= _imported_packages(mod)


def test_the_menu_matches_the_command_modules() -> None:
    from icm_app.menu import MENU

    for e in MENU:
        table = importlib.import_module(e.module).COMMANDS
        assert e.name in table, f"{e.module} does not define `icm {e.name}`"
        assert table[e.name].help == e.help, f"`icm {e.name}`: menu and module help differ"
    modules = {e.module for e in MENU}
    named = {(m, n) for m in modules for n in importlib.import_module(m).COMMANDS}
    assert named == {(e.module, e.name) for e in MENU}, "a command module has an unlisted command"


def _modules_after(argv: list[str]) -> set[str]:
    code = ("import json, sys\nfrom icm_app.main import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(json.dumps(sorted(sys.modules)))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=120, check=True).stdout
    return {m.split(".")[0] for m in json.loads(out.strip().splitlines()[-1])}


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["analyst", "--help"],
                                  ["analyst", "frames", "--help"], ["certs", "issue", "--help"],
                                  # flags generated from config dataclasses kept in light modules
                                  ["train", "--help"], ["edge", "--help"], ["cloud", "--help"]])
def test_light_commands_start_without_torch(argv: list[str]) -> None:
    loaded = _modules_after(argv)
    assert not loaded & set(HEAVY), f"`icm {' '.join(argv)}` imported {loaded & set(HEAVY)}"


def test_certs_runs_without_torch(tmp_path: Path) -> None:
    loaded = _modules_after(["certs", "ca", "--out", str(tmp_path / "ca")])
    assert (tmp_path / "ca" / "ca.pem").is_file()
    assert not loaded & set(HEAVY)


def test_images_carry_the_shell() -> None:
    """The images' ENTRYPOINT is the `icm` console script, which lives in icm_app."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    script = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["icm"]
    package = script.split(".")[0]
    for dockerfile in sorted((ROOT / "deploy" / "docker").glob("*.Dockerfile")):
        text = dockerfile.read_text()
        # the build context is whitelisted by the .dockerignore; the image copies all of it
        assert f"COPY {package}/ {package}/" in text or "COPY . ." in text, dockerfile.name
        ignore = Path(f"{dockerfile}.dockerignore").read_text().splitlines()
        assert f"!{package}/" in ignore, f"{dockerfile.name}.dockerignore leaves out {package}"


def test_menu_extras_exist() -> None:
    """`icm NAME` with a package missing names an install extra: it must be one pyproject has."""
    from icm_app.menu import MENU

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    for e in MENU:
        assert set(e.extra.split(",")) <= set(extras), f"`icm {e.name}`: unknown extra {e.extra}"


def test_a_missing_extra_is_one_clear_line(monkeypatch, capsys) -> None:
    import icm_app.main as shell

    def load(e):
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    monkeypatch.setattr(shell, "load", load)
    assert shell.main(["model", "list"]) == 2
    err = capsys.readouterr().err
    assert "torch is not installed" in err and "icm-scalable[codec]" in err
