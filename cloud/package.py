#!/usr/bin/env python3
"""Build the Lambda deployment zip of the cloud functions.

    python cloud/package.py --out build/lambda.zip [--no-deps]

The zip holds, at its root, every ``cloud/functions/*.py`` (handlers
``ingest.handler`` and ``silence.handler``) and, of the daemon, only what the
verifier needs: ``gateway/__init__.py``, ``gateway/errors.py`` and
``gateway/verify.py``. Unless ``--no-deps``, ``cryptography`` and ``rfc8785`` are
added as wheels for the Lambda platform (python3.12, arm64 by default) with
``pip install --target``; boto3 comes with the Lambda runtime. The daemon's
hardware and broker dependencies (smbus2, pyserial, aiomqtt, pydantic, PyYAML)
are never in it: the build fails if one turns up.

The zip is reproducible (sorted entries, fixed timestamps and modes): the same
sources give the same bytes, so its SHA-256 can name the S3 object. Prints one
JSON line: the path, the size, the SHA-256 and the number of files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parents[1]
FUNCTIONS: Final = REPO / "cloud" / "functions"
#: The only daemon files in the zip: the verifier and what it imports.
GATEWAY_FILES: Final = ("gateway/__init__.py", "gateway/errors.py", "gateway/verify.py")
DEPENDENCIES: Final = ("cryptography>=42", "rfc8785>=0.1.4")
#: The daemon's hardware, broker and configuration dependencies: never in the zip.
FORBIDDEN_MODULES: Final = frozenset(
    {"smbus2", "serial", "aiomqtt", "pydantic", "pydantic_core", "yaml", "_yaml"}
)
FORBIDDEN_DISTRIBUTIONS: Final = frozenset(
    {"smbus2", "pyserial", "aiomqtt", "pydantic", "pydantic_core", "pyyaml"}
)
PLATFORMS: Final = {"arm64": "manylinux2014_aarch64", "x86_64": "manylinux2014_x86_64"}
_EPOCH: Final = (1980, 1, 1, 0, 0, 0)


class PackageError(RuntimeError):
    """The zip cannot be built as asked."""


def source_files() -> list[tuple[str, Path]]:
    """(name in the zip, file) for the functions and the allowed gateway modules."""
    functions = sorted(FUNCTIONS.glob("*.py"))
    if not functions:
        raise PackageError(f"no Python files in {FUNCTIONS}")
    files = [(path.name, path) for path in functions]
    files += [(name, REPO / name) for name in GATEWAY_FILES]
    return files


def install_dependencies(target: Path, *, arch: str, python_version: str) -> None:
    """``pip install --target`` the Lambda wheels of cryptography and rfc8785."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-compile",
        "--target",
        str(target),
        "--platform",
        PLATFORMS[arch],
        "--implementation",
        "cp",
        "--python-version",
        python_version,
        "--only-binary=:all:",
        *DEPENDENCIES,
    ]
    try:
        subprocess.run(command, check=True)
    except subprocess.CalledProcessError as err:
        raise PackageError(f"pip install failed (exit {err.returncode}): {command}") from err


def dependency_files(target: Path) -> list[tuple[str, Path]]:
    """(name in the zip, file) for everything pip installed, without caches."""
    files = []
    for path in sorted(target.rglob("*")):
        relative = path.relative_to(target)
        if not path.is_file() or "__pycache__" in relative.parts or path.suffix == ".pyc":
            continue
        if relative.parts[0] == "bin":
            continue
        files.append((relative.as_posix(), path))
    return files


def check_contents(names: Iterable[str]) -> None:
    """Fail if a forbidden package, or a daemon module other than the verifier, got in."""
    problems = []
    for name in names:
        top = name.split("/", 1)[0]
        module = top.removesuffix(".py")
        distribution = top.lower().split("-", 1)[0]  # "pyyaml-6.0.2.dist-info" -> "pyyaml"
        if module in FORBIDDEN_MODULES or distribution in FORBIDDEN_DISTRIBUTIONS:
            problems.append(f"{name}: the daemon's dependency {module} must not be packaged")
        if top == "gateway" and name not in GATEWAY_FILES:
            problems.append(f"{name}: only {', '.join(GATEWAY_FILES)} of the daemon belong here")
    if problems:
        raise PackageError("\n".join(problems))


def write_zip(out: Path, files: Sequence[tuple[str, Path]]) -> None:
    """A reproducible zip: sorted names, fixed time, mode 0644."""
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(out.name + ".tmp")
    with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, path in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = 0o100644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    temporary.replace(out)


def build(
    out: Path, *, deps: bool = True, arch: str = "arm64", python_version: str = "3.12"
) -> dict[str, object]:
    """Build the zip at ``out``; returns what was built."""
    files = source_files()
    with tempfile.TemporaryDirectory(prefix="wsn-lambda-") as scratch:
        if deps:
            target = Path(scratch) / "deps"
            install_dependencies(target, arch=arch, python_version=python_version)
            files += dependency_files(target)
        names = [name for name, _ in files]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise PackageError(f"two files for one name in the zip: {duplicates}")
        check_contents(names)
        write_zip(out, files)
    data = out.read_bytes()
    return {
        "zip": str(out),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "files": len(files),
        "dependencies": deps,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="the zip to write")
    parser.add_argument(
        "--no-deps",
        action="store_true",
        help="leave out cryptography and rfc8785 (for tests, or a Lambda layer that has them)",
    )
    parser.add_argument("--arch", choices=sorted(PLATFORMS), default="arm64")
    parser.add_argument("--python-version", default="3.12")
    args = parser.parse_args(argv)
    try:
        built = build(
            args.out, deps=not args.no_deps, arch=args.arch, python_version=args.python_version
        )
    except PackageError as err:
        print(f"package.py: {err}", file=sys.stderr)
        return 1
    print(json.dumps(built))
    return 0


if __name__ == "__main__":
    sys.exit(main())
