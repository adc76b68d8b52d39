"""Browser tests: Playwright driving Debian's Chromium (``/usr/bin/chromium``).

The browser is installed with apt when it is missing (as root, or through sudo); when that is not
possible the tests skip locally and fail in CI (CI=true). One browser per session; each test module
gets its own context. Screenshots go to ``tests/artifacts/`` (not committed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
IN_CI = os.environ.get("CI", "").lower() == "true"
APT_TIMEOUT_SECONDS = 600


def _install_chromium() -> str | None:
    """Install Debian's chromium with apt; the reason it could not, or None."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available"
    prefix = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if prefix is None:
        return "not root and no sudo to install chromium"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
        done = subprocess.run(
            [*prefix, *cmd], env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_SECONDS
        )
        if done.returncode != 0:
            return f"{' '.join(cmd)} failed: {done.stderr.strip()[-500:]}"
    return None if CHROMIUM.exists() else "chromium installed, but not at /usr/bin/chromium"


@pytest.fixture(scope="session")
def chromium_path() -> str:
    if not CHROMIUM.exists():
        reason = _install_chromium()
        if reason is not None:
            if IN_CI:
                pytest.fail(f"Chromium is needed for the browser tests in CI: {reason}")
            pytest.skip(f"no Chromium for the browser tests: {reason}")
    return str(CHROMIUM)


@pytest.fixture(scope="package")
def browser(chromium_path: str) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # No sandbox: the tests may run as root in a container, where Chromium's sandbox cannot start.
        browser = pw.chromium.launch(executable_path=chromium_path, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
