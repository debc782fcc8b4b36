"""Write the lock: every dependency, direct and transitive, at an exact version with its hashes.

What is installed anywhere (the README's two commands, `.ci/run`, `bench/`, the Docker image)
comes from these files, never from `pyproject.toml`'s ranges directly:

- ``requirements/app.txt``: what the gateway and the worker run on (and the build backend,
  installed with ``--no-build-isolation`` so that it is locked too);
- ``requirements/dev.txt``: the same versions plus the test, fuzzing and lock tools;
- ``requirements/msgspec-previous.txt``: the release of msgspec before the locked one, which
  `.ci/run` also runs the decoding tests under (a decoder's next release must not change what
  a client is answered).

Resolved by ``uv pip compile`` for Python 3.11 on every platform (``--universal``), keeping
the versions already locked unless they no longer satisfy ``pyproject.toml`` or an upgrade is
asked for. Refreshing the lock is a deliberate change: run the tests on it before committing
(``scripts/newest.sh`` shows what the newest allowed versions would do).

    .venv/bin/python scripts/lock.py                        # after editing pyproject.toml
    .venv/bin/python scripts/lock.py --upgrade              # every package to its newest
    .venv/bin/python scripts/lock.py --upgrade-package msgspec
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements"
APP = REQUIREMENTS / "app.txt"
DEV = REQUIREMENTS / "dev.txt"
MSGSPEC_PREVIOUS = REQUIREMENTS / "msgspec-previous.txt"
MSGSPEC_PREVIOUS_IN = REQUIREMENTS / "msgspec-previous.in"
BUILD_SYSTEM = REQUIREMENTS / "build-system.in"
PYTHON = "3.11"
DEV_EXTRAS = ("test", "fuzz", "lock")
COMMAND = "python scripts/lock.py"
_HEADER = f"# Written by `{COMMAND}`: an input of the lock, not to edit by hand.\n"


def _uv() -> str:
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if found is None:
        raise SystemExit("uv is not installed: install the dev lock (README, the test command)")
    return found


def _compile(
    uv: str, inputs: list[Path], output: Path, extras: tuple[str, ...], more: list[str]
) -> None:
    command = [
        uv,
        "pip",
        "compile",
        *map(str, inputs),
        *(f"--extra={extra}" for extra in extras),
        "--universal",
        f"--python-version={PYTHON}",
        "--generate-hashes",
        "--no-strip-extras",
        f"--custom-compile-command={COMMAND}",
        f"--output-file={output.relative_to(ROOT)}",
        "--quiet",
        *more,
    ]
    # Relative paths in the files' headers and `# via` lines, whoever runs it from where.
    subprocess.run(command, check=True, cwd=ROOT)  # noqa: S603 - uv, fixed arguments


def _previous(locked: str) -> str:
    """The releases of the minor before ``locked``'s (``0.23.0`` → ``==0.22.*``)."""
    major, minor = (int(part) for part in locked.split(".")[:2])
    return f"=={major}.{minor - 1}.*" if minor else f"<{major}"


def _locked_version(lock: Path, name: str) -> str:
    for line in lock.read_text().splitlines():
        if line.startswith(f"{name}=="):
            return line.split("==", 1)[1].split()[0]
    raise SystemExit(f"{name} is not in {lock}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upgrade", action="store_true", help="every package to its newest")
    parser.add_argument(
        "--upgrade-package", action="append", default=[], metavar="NAME", help="one package"
    )
    args = parser.parse_args()
    uv = _uv()
    upgrade = ["--upgrade"] if args.upgrade else []
    upgrade += [f"--upgrade-package={name}" for name in args.upgrade_package]
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    # The build backend, so `pip install --no-build-isolation -e .` uses a locked one.
    BUILD_SYSTEM.write_text(_HEADER + "".join(f"{requirement}\n" for requirement in build))
    inputs = [Path("pyproject.toml"), BUILD_SYSTEM.relative_to(ROOT)]
    _compile(uv, inputs, DEV, DEV_EXTRAS, upgrade)
    # The app's lock takes the dev lock's versions: what is tested is what runs.
    _compile(uv, inputs, APP, (), [f"--constraint={DEV.relative_to(ROOT)}"])
    locked = _locked_version(DEV, "msgspec")
    MSGSPEC_PREVIOUS_IN.write_text(_HEADER + f"msgspec{_previous(locked)}\n")
    _compile(uv, [MSGSPEC_PREVIOUS_IN.relative_to(ROOT)], MSGSPEC_PREVIOUS, (), [])
    for lock in (APP, DEV, MSGSPEC_PREVIOUS):
        print(f"wrote {lock.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
