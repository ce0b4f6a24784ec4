"""Files that must survive a power cut whole: written beside, synced, renamed into place.

One writer for the small state and configuration files (shadow.json, the provisioned
configuration, certificates): a crash leaves the old file or the new one, never half
of one. Private keys are created by :func:`gateway.signing` (never replaced).
"""

from __future__ import annotations

import os
import pwd
import tempfile
from importlib import resources
from pathlib import Path

from gateway.errors import GatewayError


def write_atomically(
    path: Path, data: bytes, *, mode: int = 0o644, owner: tuple[int, int] | None = None
) -> None:
    """Replace ``path`` with ``data``: a temporary file beside it (mode ``mode``, owner
    ``owner`` when given) is synced and renamed over it, then the directory is synced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temporary = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fchmod(out.fileno(), mode)
            if owner is not None:
                os.fchown(out.fileno(), *owner)
            os.fsync(out.fileno())
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def owner_ids(owner: str | None) -> tuple[int, int] | None:
    """The uid and gid of user ``owner`` to give files to; None when no owner is asked
    for or when not running as root (then the files stay the caller's)."""
    if owner is None or os.geteuid() != 0:
        return None
    try:
        user = pwd.getpwnam(owner)
    except KeyError:
        raise GatewayError(
            f"no user {owner!r} to own the key: create the service user first "
            "(systemd/install.sh does), or leave the owner out"
        ) from None
    return user.pw_uid, user.pw_gid


def root_ca_pem() -> bytes:
    """Amazon Root CA 1 and 3, shipped with the package (no download at install time)."""
    return resources.files("gateway").joinpath("data/amazon-root-ca.pem").read_bytes()
