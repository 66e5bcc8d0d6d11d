"""Building and installing the two wheels the way the Dockerfile does, for tests/test_packaging.py.

The commands themselves are in deploy/install-wheels.sh, which the Dockerfile runs
too. What the Dockerfile adds is which files its build stage copies: ``stage_build_context``
copies the same files (by reading the stage's COPY lines, and leaving out what
.dockerignore leaves out), so a source the image would lack is missing here as well.
"""

from __future__ import annotations

import fnmatch
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

__all__ = [
    "ROOT",
    "INSTALL_SCRIPT",
    "clean_env",
    "dockerfile_stages",
    "install_wheels",
    "make_venv",
    "run",
    "stage_build_context",
]

ROOT = Path(__file__).resolve().parent.parent
#: Where the script sits in the source tree (and, from WORKDIR, in the build stage).
INSTALL_SCRIPT = "deploy/install-wheels.sh"
#: Long enough for a slow package index; a hung pip still fails rather than blocks.
INSTALL_TIMEOUT = 600


def clean_env(**extra: str) -> dict[str, str]:
    """This environment less what would let a child see the checkout or this virtualenv."""
    dropped = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH", "VIRTUAL_ENV"}
    env = {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("REGISTRY_")}
    return {**env, **extra}


def run(
    command: list[str | Path], *, cwd: Path, timeout: float = 60, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run to completion; with ``check``, a non-zero exit fails the test with the output."""
    argv = [str(part) for part in command]
    result = subprocess.run(argv, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, (
            f"{shlex.join(argv)} (in {cwd}) exited {result.returncode}\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )
    return result


def _logical_lines(text: str) -> list[str]:
    joined = text.replace("\\\n", " ")
    return [
        line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]


def dockerfile_stages(path: Path = ROOT / "Dockerfile") -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined, comments dropped), one list per FROM."""
    stages: list[list[str]] = []
    for line in _logical_lines(path.read_text()):
        if line.split()[0].upper() == "FROM":
            stages.append([])
        assert stages, f"{path}: an instruction before the first FROM: {line}"
        stages[-1].append(line)
    return stages


def _dockerignore(path: Path = ROOT / ".dockerignore") -> list[str]:
    """.dockerignore's patterns as names to leave out at any depth (all it uses; checked)."""
    patterns = []
    for line in _logical_lines(path.read_text()) if path.exists() else []:
        name = line.removeprefix("**/")
        assert "/" not in name and not name.startswith("!"), (
            f".dockerignore pattern {line!r}: tests/packaging.py only knows names (NAME or **/NAME)"
        )
        patterns.append(name)
    return patterns


def stage_build_context(root: Path) -> Path:
    """Copy what the Dockerfile's build stage copies into ``root`` (standing for the stage's
    filesystem), the way ``docker build`` would; return the stage's WORKDIR there."""
    ignored = _dockerignore()

    def left_out(name: str) -> bool:
        return any(fnmatch.fnmatch(name, pattern) for pattern in ignored)

    workdir = PurePosixPath("/")
    build_stage = dockerfile_stages()[0]
    for line in build_stage[1:]:
        instruction, *args = shlex.split(line)
        instruction = instruction.upper()
        if instruction == "WORKDIR":
            workdir = workdir / args[0]
        elif instruction in ("COPY", "ADD"):
            assert instruction == "COPY" and not any(a.startswith("--") for a in args), (
                f"tests/packaging.py cannot stage {line!r}: plain COPY SRC... DEST only"
            )
            *sources, dest = args
            target = root / (workdir / dest).relative_to("/")
            for source in sources:
                assert not any(c in source for c in "*?["), f"wildcards are not staged: {line!r}"
                origin = ROOT / source
                assert origin.exists(), f"the Dockerfile copies {source}, which does not exist"
                if origin.is_dir():
                    shutil.copytree(
                        origin,
                        target,
                        symlinks=True,
                        dirs_exist_ok=True,
                        ignore=lambda _dir, names: [n for n in names if left_out(n)],
                    )
                elif not left_out(origin.name):
                    into_dir = dest.endswith("/") or len(sources) > 1
                    file_target = target / origin.name if into_dir else target
                    file_target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, file_target)
    return root / workdir.relative_to("/")


def make_venv(path: Path) -> Path:
    """A fresh virtualenv (with pip) from this interpreter's base Python; returns its python."""
    run([sys.executable, "-m", "venv", "--clear", path], cwd=path.parent, timeout=INSTALL_TIMEOUT)
    return path / "bin" / "python"


def install_wheels(script: Path, action: str, python: Path, wheels: Path, *, cwd: Path) -> None:
    """``sh deploy/install-wheels.sh ACTION PYTHON WHEELS``, as the Dockerfile runs it."""
    run(["sh", script, action, python, wheels], cwd=cwd, timeout=INSTALL_TIMEOUT)
