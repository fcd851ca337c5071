"""Helpers of the bad-input matrix: run the CLI, and fingerprint folders to show nothing earlier changed."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from tests.fixtures import SMALL_DATA
from tests.helpers import run_cli


def digest(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under `root` (what "no earlier file changed" compares)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def risbench(cwd: Path, data_dir: Path, *args: str, small_data: bool = True, timeout: int = 600):
    """``python -m risbench`` with the tests' small synthref, in `cwd`."""
    return run_cli([f"paths.data_dir={data_dir}", *(SMALL_DATA if small_data else []), *args], cwd=cwd,
                   timeout=timeout)


def module(cwd: Path, name: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m <name> ARGS`` (risbench.data, risbench.convert) in `cwd`."""
    return subprocess.run([sys.executable, "-m", name, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def one_message(result: subprocess.CompletedProcess, code: int, *expected: str) -> None:
    """Exit status `code`, the expected text in the output, and no Python traceback."""
    output = result.stdout + result.stderr
    assert result.returncode == code, output[-3000:]
    for text in expected:
        assert text in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
