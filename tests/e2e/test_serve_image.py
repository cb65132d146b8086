"""The Dockerfile's `serve` image, built without a Docker engine and run as its non-root user.

buildah (`.ci/tools/container.sh`) builds `--target serve` on a base image made by debootstrap
from Debian's own packages, so no registry is needed for the base; pip reaches PyPI through
the build secret `pip-ca` (the host's CA bundle, which holds a TLS-intercepting proxy's CA where
there is one). The container runs on the host's network with the package mounted read-only at
/mnt/models, as user 10001. The `train` target needs CUDA torch from PyTorch's own index and
is not built here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from harness.servers import LOOPBACK, Child, child_process, free_port, http_ok

from tests.conftest import REPO_ROOT, require
from tests.model.serving_cases import PACKAGE, Spec, evaluate_predictions, prepared_test_images, v2_body

pytestmark = pytest.mark.slow

HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BASE_IMAGE = "localhost/mlpipe-test-base:bookworm"
SERVE_IMAGE = "localhost/mlpipe-serve:test"
SERVE_UID = 10001
DEBIAN_MIRROR = "http://deb.debian.org/debian"


def sh(*args: str, timeout: float = 900) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(args)} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result.stdout


@pytest.fixture(scope="module")
def buildah(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """buildah with its own storage (vfs: no overlay mounts needed) under a temporary directory."""
    require(
        shutil.which("buildah") is not None and shutil.which("debootstrap") is not None,
        "buildah and debootstrap",
    )
    require(os.geteuid() == 0, "root (debootstrap and buildah's chroot isolation)")
    storage = tmp_path_factory.mktemp("buildah")
    return [
        "buildah",
        "--root",
        str(storage / "root"),
        "--runroot",
        str(storage / "run"),
        "--storage-driver",
        "vfs",
    ]


@pytest.fixture(scope="module")
def serve_image(buildah: list[str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """The serve target, built on a python3 base image made from Debian's packages."""
    scratch = tmp_path_factory.mktemp("image")
    rootfs, base_tar = scratch / "rootfs", scratch / "base.tar"
    sh("debootstrap", "--variant=minbase", "--include=python3,python3-venv,python-is-python3,ca-certificates",
       "bookworm", str(rootfs), DEBIAN_MIRROR)  # fmt: skip
    sh("tar", "-C", str(rootfs), "-cf", str(base_tar), ".")
    container = sh(*buildah, "from", "scratch").strip()
    sh(*buildah, "add", container, str(base_tar), "/")
    sh(*buildah, "commit", "-q", container, BASE_IMAGE)
    sh(*buildah, "rm", container)
    sh(*buildah, "bud", "--isolation", "chroot", "--pull=never", "--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}",
       "--secret", f"id=pip-ca,src={HOST_CA_BUNDLE}", "--target", "serve", "-t", SERVE_IMAGE, str(REPO_ROOT),
       timeout=1800)  # fmt: skip
    return SERVE_IMAGE


@contextlib.contextmanager
def container_server(buildah: list[str], image: str, package: Path, port: int) -> Iterator[Child]:
    """`mlpipe serve` in a container of ``image`` as user 10001, on 127.0.0.1:``port``."""
    container = sh(*buildah, "from", "--pull=never", image).strip()
    serve = ["mlpipe", "serve", "--model-dir", "/mnt/models", "--host", LOOPBACK, "--http-port", str(port)]
    user, volume = f"{SERVE_UID}:{SERVE_UID}", f"{package}:/mnt/models:ro"
    command = [
        *buildah,
        "run",
        "--isolation",
        "chroot",
        "--user",
        user,
        "-v",
        volume,
        container,
        "--",
        *serve,
    ]
    try:
        with child_process(command, env=os.environ) as child:
            try:
                yield child
            finally:
                # buildah run does not pass SIGTERM on to the container's process: stop the server
                # by its PID, so that it shuts down gracefully before buildah is stopped.
                for process in psutil.Process(child.pid).children(recursive=True):
                    with contextlib.suppress(psutil.NoSuchProcess):  # a helper that just exited
                        if "mlpipe" in " ".join(process.cmdline()):
                            os.kill(process.pid, signal.SIGTERM)
    finally:
        sh(*buildah, "rm", container)


def test_serve_image_answers_v2_as_user_10001(
    buildah: list[str], serve_image: str, built_project: Path
) -> None:
    spec = Spec.of(built_project)
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    with container_server(buildah, serve_image, built_project / PACKAGE, port) as server:
        server.wait_until(lambda: http_ok(f"{url}/v2/health/ready"), "the container's server", timeout=120)
        listening = [c for c in psutil.net_connections("inet") if c.laddr == (LOOPBACK, port) and c.pid]
        assert {psutil.Process(c.pid).uids().real for c in listening} == {SERVE_UID}
        assert httpx.get(f"{url}/v2/health/live").json() == {"live": True}
        assert httpx.get(f"{url}/v2/models/{spec.model_name}/ready").json()["ready"] is True
        images = prepared_test_images(built_project)[:8]
        response = httpx.post(f"{url}/v2/models/{spec.model_name}/infer", json=v2_body(images), timeout=10)
        assert response.status_code == 200, response.text
        labels = next(o for o in response.json()["outputs"] if o["name"] == "label")["data"]
        assert labels == evaluate_predictions(built_project)[: len(images)]
