"""The shipped artefacts: both wheels, built and installed the way the Dockerfile does,
then run from fresh virtualenvs and working directories outside the checkout.

One build per module (the Dockerfile's build-stage files, staged by tests/packaging.py,
built by deploy/install-wheels.sh), and two virtualenvs: the server (both wheels) and a
worker's host (the client wheel alone). Installing them fetches the dependencies from
the package index (pip's cache helps); a build or install that fails fails the test.
"""

from __future__ import annotations

import contextlib
import email.message
import email.parser
import json
import os
import re
import signal
import sqlite3
import sys
import tomllib
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from model_registry.api.docs import ASSETS as DOCS_ASSETS
from tests.packaging import (
    INSTALL_SCRIPT,
    ROOT,
    dockerfile_stages,
    install_wheels,
    make_venv,
    run,
    stage_build_context,
)
from tests.process import ServerProcess
from tests.test_deploy import _client_examples

#: What a worker's host must not get with the client.
DATABASE_STACK = {"sqlalchemy", "alembic", "asyncpg", "aiosqlite", "pydantic", "pydantic-settings"}
#: The source folders and where the server wheel installs them (pyproject.toml's package-dir).
SERVER_FOLDERS = {
    "registry": "model_registry",
    "storage": "model_registry/storage",
    "api": "model_registry/api",
    "alembic": "model_registry/migrations",
}


def _outside_checkout(path: Path) -> Path:
    assert not path.resolve().is_relative_to(ROOT), f"{path} is inside the checkout {ROOT}"
    return path


@dataclass(frozen=True)
class Build:
    source: Path  # the build stage's WORKDIR, as staged
    server: Path  # the two wheels
    client: Path

    @property
    def wheels(self) -> Path:
        return self.server.parent

    @property
    def script(self) -> Path:
        return self.source / INSTALL_SCRIPT


def _the_wheel(wheels: Path, project: str, version: str) -> Path:
    found = sorted(wheels.glob(f"{project}-*.whl"))
    assert [w.name for w in found] == [f"{project}-{version}-py3-none-any.whl"], found
    return found[0]


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    source = stage_build_context(_outside_checkout(tmp_path_factory.mktemp("build-stage")))
    wheels = tmp_path_factory.mktemp("wheels")
    install_wheels(source / INSTALL_SCRIPT, "build", Path(sys.executable), wheels, cwd=source)

    def version(pyproject: Path) -> str:
        return tomllib.loads(pyproject.read_text())["project"]["version"]

    return Build(
        source=source,
        server=_the_wheel(wheels, "model_registry", version(source / "pyproject.toml")),
        client=_the_wheel(wheels, "model_registry_sdk", version(source / "clients/python/pyproject.toml")),
    )


@pytest.fixture(scope="module")
def server_python(build: Build, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with both wheels installed (not editable), as in the image."""
    home = _outside_checkout(tmp_path_factory.mktemp("server"))
    python = make_venv(home / "venv")
    install_wheels(build.script, "server", python, build.wheels, cwd=home)
    return python


@pytest.fixture(scope="module")
def client_python(build: Build, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the client wheel alone, as on a worker's host."""
    home = _outside_checkout(tmp_path_factory.mktemp("client"))
    python = make_venv(home / "venv")
    install_wheels(build.script, "client", python, build.wheels, cwd=home)
    return python


def _names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return [name for name in archive.namelist() if not name.endswith("/")]


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        [metadata] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(archive.read(metadata).decode())


def _requires(wheel: Path) -> dict[str, str]:
    """The wheel's Requires-Dist (extras left out), name -> the whole requirement."""
    requirements = _metadata(wheel).get_all("Requires-Dist") or []
    return {re.match(r"[A-Za-z0-9._-]+", r).group().lower(): r for r in requirements if "extra ==" not in r}


def _modules(source: Path, folder: str, installed_as: str) -> set[str]:
    """The .py files under a source folder, named as the wheel holds them (links not followed:
    registry/migrations is the link to alembic/ that an editable install uses)."""
    top = source / folder
    found = set()
    for directory, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        relative = Path(directory).relative_to(top)
        found |= {(Path(installed_as) / relative / f).as_posix() for f in files if f.endswith(".py")}
    return found


def test_the_dockerfile_builds_and_installs_with_the_script() -> None:
    """What the test below builds and installs is what the image gets: the same script, same actions."""
    build_stage, final_stage = dockerfile_stages()

    def runs(stage: list[str]) -> list[str]:
        return [line for line in stage if line.startswith("RUN ")]

    assert runs(build_stage) == [f"RUN sh {INSTALL_SCRIPT} build python /wheels"]
    assert "COPY --from=build /wheels /wheels" in final_stage
    assert f"COPY {INSTALL_SCRIPT} /wheels/" in final_stage
    [install] = runs(final_stage)
    assert install.startswith("RUN PIP_NO_CACHE_DIR=1 sh /wheels/install-wheels.sh server python /wheels ")
    everything = " ".join(build_stage + final_stage)
    assert "pip install" not in everything and "pip wheel" not in everything and " -e " not in everything


def test_the_server_wheel_holds_the_package_and_nothing_else(build: Build) -> None:
    names = _names(build.server)
    dist_info = build.server.name.split("-py3")[0] + ".dist-info/"
    strays = [n for n in names if not n.startswith(("model_registry/", dist_info))]
    assert strays == [], f"files outside model_registry/ in the server wheel: {strays}"
    assert not [n for n in names if {"tests", "benchmarks"} & set(n.split("/"))]
    for required in ("env.py", "script.py.mako"):
        assert f"model_registry/migrations/{required}" in names, (
            f"the server wheel lacks migrations/{required}"
        )
    revisions = sorted(
        n.removeprefix("model_registry/migrations/versions/")
        for n in names
        if n.startswith("model_registry/migrations/versions/") and n.endswith(".py")
    )
    assert [r[:4] for r in revisions] == ["0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008"], (
        revisions
    )
    # Every module of the four source folders, and no other (a new subpackage left out
    # of pyproject.toml's packages list would be missing here).
    expected = set().union(*(_modules(build.source, f, to) for f, to in SERVER_FOLDERS.items()))
    assert {n for n in names if n.endswith(".py")} == expected
    # The /docs page's assets, package data beside the modules, with Swagger UI's licence.
    static = [path for path, _ in DOCS_ASSETS.values()] + ["swagger-ui/LICENSE", "swagger-ui/NOTICE"]
    missing = [path for path in static if f"model_registry/api/static/{path}" not in names]
    assert missing == [], f"the server wheel lacks the /docs files {missing} (pyproject.toml's package-data)"
    # The dashboard's files, every one of them (the page at / and what it loads).
    ui = sorted(p.name for p in (build.source / "api/static/ui").iterdir())
    missing = [name for name in ui if f"model_registry/api/static/ui/{name}" not in names]
    assert "index.html" in ui and missing == [], f"the server wheel lacks the dashboard's {missing}"
    assert _requires(build.server)["model-registry-sdk"] == "model-registry-sdk==0.1.0"
    assert _metadata(build.server)["License-Expression"] == "Apache-2.0"


def test_the_client_wheel_holds_the_sdk_alone(build: Build) -> None:
    names = _names(build.client)
    dist_info = build.client.name.split("-py3")[0] + ".dist-info/"
    assert [n for n in names if not n.startswith(("model_registry_sdk/", dist_info))] == []
    expected = _modules(build.source / "clients/python", "model_registry_sdk", "model_registry_sdk")
    assert {n for n in names if n.endswith(".py")} == expected
    assert set(_requires(build.client)) == {"aiohttp", "orjson"}
    assert _metadata(build.client)["License-Expression"] == "Apache-2.0"


def test_the_installed_wheels_migrate_and_serve(server_python: Path, tmp_path: Path) -> None:
    work = _outside_checkout(tmp_path / "work")
    work.mkdir()
    bin_dir = server_python.parent
    where = run(
        [
            server_python,
            "-c",
            "import model_registry, model_registry_sdk as s; print(model_registry.__file__, s.__file__)",
        ],
        cwd=work,
    )
    for module in where.stdout.split():
        assert Path(module).is_relative_to(bin_dir.parent), f"{module} is not the installed copy"

    database = tmp_path / "new.db"
    run([bin_dir / "model-registry", "migrate", "--storage", f"sqlite+aiosqlite:///{database}"], cwd=work)
    assert database.is_file()
    with contextlib.closing(sqlite3.connect(database)) as connection:
        assert connection.execute("SELECT version_num FROM alembic_version").fetchall() == [("0008",)]

    served = tmp_path / "served.db"
    server = ServerProcess(
        "--storage",
        f"sqlite+aiosqlite:///{served}",
        command=[str(bin_dir / "model-registry")],
        cwd=work,
        env={"PYTHONPATH": ""},
    )
    with server:
        body = json.dumps({"model_name": "glm-4@llm", "host": "10.0.0.7", "port": 8001}).encode()
        request = urllib.request.Request(
            f"{server.url}/api/v1/instances", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 201
            created = json.load(response)
        assert (created["model_name"], created["host"], created["port"]) == ("glm-4@llm", "10.0.0.7", 8001)
        with urllib.request.urlopen(f"{server.url}/api/v1/instances", timeout=10) as response:
            listing = json.load(response)
        assert [(i["model_name"], i["host"], i["port"]) for i in listing["instances"]] == [
            ("glm-4@llm", "10.0.0.7", 8001)
        ]
        with urllib.request.urlopen(f"{server.url}/health", timeout=10) as response:
            assert response.status == 200
        for asset, (_, content_type) in DOCS_ASSETS.items():  # read from the installed package
            with urllib.request.urlopen(f"{server.url}/docs/assets/{asset}", timeout=10) as response:
                assert response.status == 200 and response.headers.get_content_type() == content_type
                assert response.read()
        with urllib.request.urlopen(f"{server.url}/", timeout=10) as response:  # the dashboard
            assert response.status == 200 and response.headers.get_content_type() == "text/html"
        server.signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0, server.logs
    assert served.is_file()


def test_a_working_directory_with_its_own_storage_and_api_does_not_shadow(
    server_python: Path, tmp_path: Path
) -> None:
    """A worker's folder has its own storage.py and api/: on sys.path first, they must not be imported."""
    work = _outside_checkout(tmp_path / "worker")
    (work / "api").mkdir(parents=True)
    for module in (work / "storage.py", work / "api" / "__init__.py", work / "settings.py"):
        module.write_text(f"raise ImportError('the working directory\\'s {module.name} was imported')\n")
    run([server_python, "-m", "model_registry", "--help"], cwd=work)
    run([server_python, "-c", "from model_registry_sdk import RegistryClient"], cwd=work)
    database = tmp_path / "worker.db"  # migrating imports the storage and the migration scripts
    run(
        [server_python, "-m", "model_registry", "migrate", "--storage", f"sqlite+aiosqlite:///{database}"],
        cwd=work,
    )
    assert database.is_file()


def test_the_client_alone_installs_no_database_stack(client_python: Path, tmp_path: Path) -> None:
    work = _outside_checkout(tmp_path)
    listed = run(
        [
            client_python,
            "-c",
            "import importlib.metadata as m, json; "
            "print(json.dumps([d.metadata['Name'] for d in m.distributions()]))",
        ],
        cwd=work,
    )
    installed = {re.sub(r"[-_.]+", "-", name).lower() for name in json.loads(listed.stdout)}
    assert "model-registry-sdk" in installed and "model-registry" not in installed
    assert installed & DATABASE_STACK == set(), installed
    missing = run([client_python, "-c", "import model_registry"], cwd=work, check=False)
    assert missing.returncode != 0 and "No module named 'model_registry'" in missing.stderr


def test_the_readme_examples_run_with_the_client_alone(client_python: Path, tmp_path: Path) -> None:
    work = _outside_checkout(tmp_path)
    worker, controller = _client_examples()[:2]  # the whole programs; later blocks are fragments
    with ServerProcess("--storage", "memory://") as server:  # the checkout's server, this interpreter
        for name, code in (("worker", worker), ("controller", controller)):
            script = work / f"{name}.py"
            script.write_text(code.replace("http://127.0.0.1:8000", server.url))
            run([client_python, script], cwd=work)
        listing = run(
            [client_python.parent / "model-registry-client", "list", "--json", "--url", server.url], cwd=work
        )
    # The worker registered, then deregistered on the way out.
    [instance] = json.loads(listing.stdout)
    assert instance["model_name"] == "glm-4@llm" and instance["healthy"] is False
