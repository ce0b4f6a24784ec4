"""cloud/package.py builds a zip with the functions and only the verifier of the daemon,
and the handler in it runs where the daemon's hardware dependencies cannot be imported."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_harness import THING

from .conftest import FUNCTIONS, REPO, DaemonRun, Stack, rule_event

PACKAGE = REPO / "cloud" / "package.py"
GATEWAY_FILES = {"gateway/__init__.py", "gateway/errors.py", "gateway/verify.py"}
HARDWARE = ("smbus2", "serial", "aiomqtt", "pydantic", "yaml")

_spec = importlib.util.spec_from_file_location("wsn_cloud_package", PACKAGE)
assert _spec is not None and _spec.loader is not None
package = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(package)


def build(out: Path, *extra: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, str(PACKAGE), "--out", str(out), "--no-deps", *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    built: dict[str, object] = json.loads(done.stdout)
    return built


def test_the_zip_holds_the_functions_and_only_the_verifier(tmp_path: Path) -> None:
    built = build(tmp_path / "build" / "lambda.zip")
    with zipfile.ZipFile(tmp_path / "build" / "lambda.zip") as archive:
        names = set(archive.namelist())
    functions = {path.name for path in FUNCTIONS.glob("*.py")}
    assert {"ingest.py", "silence.py"} <= functions
    assert names == functions | GATEWAY_FILES
    assert built["files"] == len(names)

    # Reproducible: the same sources give the same bytes (and the same S3 key).
    again = build(tmp_path / "again.zip")
    assert again["sha256"] == built["sha256"]


@pytest.mark.integration
def test_the_handler_runs_from_the_zip_without_the_daemons_dependencies(
    tmp_path: Path, stack: Stack, daemon_run: Callable[[str], DaemonRun]
) -> None:
    run = daemon_run("ed25519")
    stack.register_ed25519(THING, run.signing_key_file)
    zip_path = tmp_path / "lambda.zip"
    build(zip_path)
    task = tmp_path / "task"  # what Lambda unpacks into /var/task
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(task)
    event = rule_event(run.unique()[0].payload)

    script = f"""
import json, sys
for name in {HARDWARE!r}:
    sys.modules[name] = None  # importing it now raises ImportError
sys.path.insert(0, {str(task)!r})
import ingest, silence
import gateway
assert gateway.__file__.startswith({str(task)!r}), gateway.__file__
result = ingest.handler(json.loads(sys.argv[1]), None)
loaded = sorted(name for name in sys.modules if name == "gateway" or name.startswith("gateway."))
print(json.dumps({{"result": result, "gateway_modules": loaded}}))
"""
    for name in HARDWARE:  # the guard works: each of them is importable here
        __import__(name)
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(event)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=task,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["result"]["status"] == "stored", report
    assert report["gateway_modules"] == ["gateway", "gateway.errors", "gateway.verify"]
    (item,) = stack.items()
    assert item["seq"] == report["result"]["seq"]


@pytest.mark.parametrize("name", ["smbus2/__init__.py", "yaml/__init__.py", "gateway/config.py"])
def test_the_build_refuses_what_does_not_belong(name: str) -> None:
    with pytest.raises(package.PackageError, match=r"must not|only"):
        package.check_contents(["ingest.py", name])
