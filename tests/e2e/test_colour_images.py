"""A team's own colour images end to end: an RGB image folder (PNG and JPEG files of two sizes,
resized by `prepare`) trains, packages an ONNX model of raw RGB pixels, and `mlpipe serve`
answers the image files themselves (V1 ``b64``, V2 BYTES in JSON and in binary) exactly as it
answers their prepared pixels and as `evaluate` classified them; a broken file gets a 400 that
says what is wrong. One project is built for the whole module."""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnxruntime
import pytest
import tritonclient.http as triton
from harness.servers import ModelServer, mlpipe_server
from PIL import Image

from tests.conftest import TINY_PARAMS, make_project, run
from tests.model.serving_cases import PACKAGE, evaluate_predictions, prepared_test_images

pytestmark = pytest.mark.slow

CLASSES = ("green", "red", "stripes")
SIZE = 16  # data.image_size: every file is resized to SIZE x SIZE
SOURCE = "data/raw/colours"
MODEL = "colours"


@dataclass(frozen=True)
class Built:
    """The trained and packaged project, and its server."""

    project: Path
    server: ModelServer
    files: list[bytes]  # the source file of each prepared test image, in the split's order

    @property
    def infer(self) -> str:
        return f"{self.server.url}/v2/models/{MODEL}/infer"

    @property
    def predict(self) -> str:
        return f"{self.server.url}/v1/models/{MODEL}:predict"


def write_images(folder: Path) -> None:
    """20 images per class: a red or green cast, or bright stripes; PNG and JPEG, 20x20 and 24x18."""
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (folder / name).mkdir(parents=True)
        for index in range(20):
            height, width = (20, 20) if index % 2 else (24, 18)
            pixels = rng.integers(0, 80, size=(height, width, 3))
            if name == "stripes":
                pixels[::4] += 170
            else:
                pixels[..., CLASSES.index(name)] += 170
            suffix = "jpg" if index % 5 == 0 else "png"
            Image.fromarray(pixels.astype(np.uint8)).save(folder / name / f"{index:02d}.{suffix}")


def resized(path: Path) -> np.ndarray:
    """What `prepare` should make of a file, written out with Pillow here."""
    with Image.open(path) as image:
        return np.array(image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR))


def source_files(project: Path) -> list[bytes]:
    """The bytes of the file each prepared test image came from, found by its pixels."""
    by_pixels = {resized(path).tobytes(): path.read_bytes() for path in (project / SOURCE).rglob("*.*")}
    return [by_pixels[image.tobytes()] for image in prepared_test_images(project)]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    data = TINY_PARAMS["data"] | {"dataset": "imagefolder", "source": SOURCE, "image_size": [SIZE, SIZE]}
    package = {"model_name": MODEL, "register_model": False}
    project = make_project(
        tmp_path_factory.mktemp("colour") / "project", TINY_PARAMS | {"data": data, "package": package}
    )
    write_images(project / SOURCE)
    run("dvc", "repro", cwd=project)
    with mlpipe_server(project / PACKAGE) as server:
        yield Built(project, server, source_files(project))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def labels_and_probabilities(response: httpx.Response) -> tuple[list[str], np.ndarray]:
    assert response.status_code == 200, response.text
    body = response.json()
    if "predictions" in body:
        predictions = body["predictions"]
        return [p["label"] for p in predictions], np.array([p["probabilities"] for p in predictions])
    outputs = {output["name"]: output for output in body["outputs"]}
    probabilities = np.array(outputs["probabilities"]["data"]).reshape(outputs["probabilities"]["shape"])
    return outputs["label"]["data"], probabilities


def test_prepare_keeps_the_colour_and_the_package_takes_rgb_pixels(built: Built) -> None:
    images = prepared_test_images(built.project)
    schema = json.loads((built.project / "data/prepared/schema.json").read_text())
    manifest = json.loads((built.project / PACKAGE / "package.json").read_text())
    [onnx_input] = onnxruntime.InferenceSession(
        str(built.project / PACKAGE / "model.onnx"), providers=["CPUExecutionProvider"]
    ).get_inputs()
    metadata = httpx.get(f"{built.server.url}/v2/models/{MODEL}", timeout=10).json()

    assert (images.dtype, images.shape[1:]) == (np.uint8, (SIZE, SIZE, 3))
    decoding = {"height": SIZE, "width": SIZE, "channels": 3, "resize": "bilinear"}
    assert (schema["channels"], len(schema["pixel_mean"]), schema["decoding"]) == (3, 3, decoding)
    assert (onnx_input.type, onnx_input.shape[1:]) == ("tensor(uint8)", [SIZE, SIZE, 3])
    assert (manifest["input"]["shape"], manifest["input"]["decoding"]) == ([SIZE, SIZE, 3], decoding)
    assert metadata["inputs"][0]["shape"] == [-1, SIZE, SIZE, 3]


def test_image_files_get_the_answers_of_their_prepared_pixels_and_evaluate_s_classes(built: Built) -> None:
    pixels = prepared_test_images(built.project)
    tensor = {
        "name": "pixels",
        "shape": list(pixels.shape),
        "datatype": "UINT8",
        "data": pixels.ravel().tolist(),
    }
    expected_labels, expected = labels_and_probabilities(httpx.post(built.infer, json={"inputs": [tensor]}))
    assert expected_labels == evaluate_predictions(built.project)

    v1 = httpx.post(built.predict, json={"instances": [{"b64": b64(f)} for f in built.files]}, timeout=30)
    files = {
        "name": "pixels",
        "shape": [len(built.files)],
        "datatype": "BYTES",
        "data": [b64(f) for f in built.files],
    }
    v2 = httpx.post(built.infer, json={"inputs": [files]}, timeout=30)
    for labels, probabilities in (labels_and_probabilities(v1), labels_and_probabilities(v2)):
        assert labels == expected_labels
        np.testing.assert_array_equal(probabilities, expected)


def test_a_triton_client_sends_the_files_as_binary_bytes(built: Built) -> None:
    client = triton.InferenceServerClient(built.server.url.removeprefix("http://"))
    tensor = triton.InferInput("pixels", [len(built.files)], "BYTES")
    tensor.set_data_from_numpy(np.array(built.files, dtype=np.object_), binary_data=True)

    result = client.infer(MODEL, [tensor])

    assert [label.decode() for label in result.as_numpy("label")] == evaluate_predictions(built.project)


def test_mlpipe_predict_and_drift_work_on_rgb_test_images(built: Built) -> None:
    run("mlpipe", "predict", "--url", built.server.url, "--n", "5", "--seed", "1", cwd=built.project)
    # the drift profile of colour images: an inverted copy of the test split is far from it
    drift = run("mlpipe", "drift", "--shift", "invert", cwd=built.project, check=False)
    assert drift.returncode == 1 and "over 12 images" in drift.stdout and ": DRIFT" in drift.stdout


def encoded(image: Image.Image, image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


GOOD = encoded(Image.new("RGB", (SIZE, SIZE), (200, 10, 10)))


def v1_files(*files: bytes) -> dict:
    return {"instances": [{"b64": b64(f)} for f in files]}


def v2_files(*elements: object, shape: list[int] | None = None) -> dict:
    tensor = {"name": "pixels", "shape": shape or [len(elements)], "datatype": "BYTES"}
    return {"inputs": [tensor | {"data": list(elements)}]}


# (protocol, body, what the error says): what a careless client or an attacker sends as files
BROKEN = {
    "corrupt-png": ("v1", v1_files(b"\x89PNG\r\n\x1a\n" + bytes(100)), r"^instance 0: unreadable image"),
    "truncated-png": ("v1", v1_files(GOOD, GOOD[:60]), r"^instance 1: unreadable image"),
    "text": ("v1", v1_files(b"hello, world"), r"not a PNG, JPEG or BMP image"),
    "gif": ("v1", v1_files(encoded(Image.new("RGB", (SIZE, SIZE)), "GIF")), r"not a PNG, JPEG or BMP image"),
    # 8,000 x 8,000 pixels in 200 kB: refused from its header, before anything is decoded
    "huge": ("v1", v1_files(encoded(Image.new("L", (8000, 8000)))), r"more than the \d+ this model decodes"),
    "not-base64": ("v1", {"instances": [{"b64": "not base64!"}]}, r"^instance 0: not valid base64"),
    "b64-not-text": ("v1", {"instances": [{"b64": 42}]}, r'^instance 0: an image file is sent as \{"b64"'),
    "pixels-and-file": ("v1", {"instances": [[[0] * SIZE] * SIZE, {"b64": b64(GOOD)}]}, r"every instance"),
    "v2-corrupt": ("v2", v2_files(b64(GOOD[:60])), r"^input 'pixels', image 0: unreadable image"),
    "v2-not-base64": ("v2", v2_files("%%%"), r"image 0: not valid base64"),
    "v2-number": ("v2", v2_files(7), r"image 0: a BYTES element is a base64 string"),
    "v2-shape": ("v2", v2_files(b64(GOOD), shape=[1, 1]), r"one image file per element: shape \[N\]"),
    "v2-count": ("v2", v2_files(b64(GOOD), shape=[2]), r"needs 2 image files; got 1"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_image_file_gets_a_400_that_says_why(built: Built, case: str) -> None:
    protocol, body, error = BROKEN[case]

    response = httpx.post(built.predict if protocol == "v1" else built.infer, json=body, timeout=10)

    assert response.status_code == 400, response.text
    assert list(response.json()) == ["error"] and re.search(error, response.json()["error"]), response.json()


def test_refused_files_leave_no_traceback_are_counted_and_the_server_still_answers(built: Built) -> None:
    httpx.post(built.predict, json=BROKEN["corrupt-png"][1], timeout=10)

    assert labels_and_probabilities(httpx.post(built.predict, json=v1_files(GOOD), timeout=10))[0]
    assert "Traceback" not in built.server.child.output(limit=None)
    metrics = httpx.get(f"{built.server.url}/metrics", timeout=10).text
    refused = re.search(r'mlpipe_rejected_requests_total\{[^}]*reason="image"\} (\d+)', metrics)
    assert refused and float(refused[1]) >= 1
