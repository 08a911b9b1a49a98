"""Lock the Python packages of the container images: deploy/docker/requirements/<image>.txt.

Each lock pins every distribution the image installs, with its sha256, as pip resolves the
project's dependencies and the image's extra on PyPI for CPython 3.11 on Linux x86_64 (the
images' platform), with the torch pins of scripts/install.sh. Left out, on purpose:

- torch and torchvision, and what only they pull in (the CUDA runtime wheels, triton): the
  edge and cloud Dockerfiles install them by version from ``TORCH_INDEX_URL`` (PyPI's CUDA build
  for the cloud, the CPU index for the edge), whose files differ per index. The console image
  has no torch at all (its extra does not need it), so its lock is resolved without the pins;
- opencv-python, which ultralytics asks for: the images carry opencv-python-headless only (one
  OpenCV, no GUI libraries); both provide the same ``cv2`` module.

The Dockerfiles install a lock with ``pip install --no-deps --require-hashes``, so nothing
outside it (and no other version or file) gets in. Run after changing pyproject.toml::

    python scripts/lock_images.py            # needs PyPI (pip's resolver, --dry-run --report)
    python scripts/lock_images.py console    # one image's lock
    python scripts/lock_images.py --check    # the locks name every dependency pyproject asks for

Versions already in a lock stay (they constrain the resolution) unless the new requirements
need others; ``--upgrade`` resolves the newest.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "deploy" / "docker" / "requirements"
IMAGES = {"edge": ["edge"], "cloud": ["cloud"], "console": ["console"]}
TORCH_IMAGES = ("edge", "cloud")  # the images that install torch (from TORCH_INDEX_URL)
# distributions the Dockerfiles install otherwise (see the module docstring); nvidia-ml-py is
# ultralytics' (NVML bindings), not the CUDA runtime
EXCLUDED = re.compile(r"^(torch|torchvision|triton|nvidia-(?!ml-py$).*|cuda-.*|opencv-python)$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(req: str) -> str:
    """The normalised distribution name of a requirement string."""
    return _norm(re.split(r"[<>=!~ \[;]", req)[0])


def _pyproject(table: str = "project") -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())[table]


def build_requirements() -> list[str]:
    """The build system's requirements (setuptools, grpcio-tools for the stubs): the images
    install the project with ``--no-build-isolation`` from their lock."""
    return list(_pyproject("build-system")["requires"])


def requirements(extras: list[str]) -> list[str]:
    """The project's own dependencies and those of ``extras`` (markers kept); an extra that
    names the project's own extras (``icm-scalable[codec,analyst]``) brings theirs."""
    project = _pyproject()
    own = _norm(project["name"])
    reqs = [r for r in project["dependencies"] if _req_name(r) not in ("torch", "torchvision")]
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop(0)
        if extra in seen:
            continue
        seen.add(extra)
        for req in project["optional-dependencies"][extra]:
            if _req_name(req) == own:
                todo += [e.strip() for e in req[req.index("[") + 1:req.index("]")].split(",")]
            elif req not in reqs:
                reqs.append(req)
    return reqs


def torch_pins() -> list[str]:
    install = (ROOT / "scripts" / "install.sh").read_text()
    return [f"{n}=={v}" for n, v in re.findall(r'"(torch|torchvision)==([0-9.]+)"', install)]


def resolve(reqs: list[str], keep: dict[str, str] | None = None) -> list[dict]:
    """pip's resolution on PyPI (no local configuration), as its installation report;
    ``keep`` (name -> version) constrains what it may pick."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("".join(f"{n}=={v}\n" for n, v in (keep or {}).items()
                                       if not EXCLUDED.match(n)))
        env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}
        for key in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL"):
            env.pop(key, None)
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
               "--quiet", "--report", str(report), "--index-url", "https://pypi.org/simple",
               "--only-binary", ":all:", "--constraint", str(constraints), *reqs]
        subprocess.run(cmd, check=True, env=env)
        return json.loads(report.read_text())["install"]


def lock_text(image: str, items: list[dict]) -> str:
    torch = ("torch, torchvision\n# and the CUDA runtime come from TORCH_INDEX_URL in the "
             "Dockerfile; opencv-python\n# is left out for opencv-python-headless."
             if image in TORCH_IMAGES else "No torch: the\n# console does not import it.")
    lines = [f"# The {image} image's Python packages, pinned with their hashes: generated by",
             f"# scripts/lock_images.py from pyproject.toml (do not edit). {torch}", ""]
    for it in sorted(items, key=lambda i: _norm(i["metadata"]["name"])):
        name, version = it["metadata"]["name"], it["metadata"]["version"]
        if EXCLUDED.match(_norm(name)):
            continue
        hashes = it["download_info"].get("archive_info", {}).get("hashes", {})
        sha = hashes.get("sha256") or it["download_info"]["archive_info"]["hash"].split("=")[1]
        lines.append(f"{_norm(name)}=={version} \\\n    --hash=sha256:{sha}")
    return "\n".join(lines) + "\n"


def locked(image: str) -> dict[str, str]:
    text = (OUT / f"{image}.txt").read_text()
    return {_norm(n): v for n, v in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.M)}


def check() -> list[str]:
    """What the locks miss: a dependency of pyproject (for the image's extras) or a build
    requirement, not pinned."""
    problems = []
    for image, extras in IMAGES.items():
        have = locked(image)
        for req in [*requirements(extras), *build_requirements()]:
            name = _req_name(req)
            if ";" in req and "python_version < '3.11'" in req:
                continue   # the images run 3.11
            if not EXCLUDED.match(name) and name not in have:
                problems.append(f"{image}: {name} (from pyproject) is not in the lock")
        for name in have:
            if EXCLUDED.match(name):
                problems.append(f"{image}: {name} must not be in the lock")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="*", metavar="IMAGE",
                   help=f"the locks to write (default: all of {', '.join(IMAGES)})")
    p.add_argument("--check", action="store_true")
    p.add_argument("--upgrade", action="store_true", help="newest versions, not the locked")
    args = p.parse_args(argv)
    unknown = sorted(set(args.images) - set(IMAGES))
    if unknown:
        p.error(f"no such image: {', '.join(unknown)} (images: {', '.join(IMAGES)})")
    if args.check:
        problems = check()
        print("\n".join(problems) or "locks cover pyproject.toml")
        return 1 if problems else 0
    OUT.mkdir(parents=True, exist_ok=True)
    for image in args.images or IMAGES:
        # the build requirements: the project is installed with --no-build-isolation
        pins = torch_pins() if image in TORCH_IMAGES else []
        keep = None if args.upgrade or not (OUT / f"{image}.txt").is_file() else locked(image)
        items = resolve([*requirements(IMAGES[image]), *pins, *build_requirements()], keep)
        (OUT / f"{image}.txt").write_text(lock_text(image, items))
        print(f"wrote {OUT / f'{image}.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
