"""Triton serving: export, the gRPC handler, and the parity of the local and Triton paths.

The server is the real ``tritonserver`` from the nvidia-pytriton wheel
(``tests/fixtures/triton.py``), on 127.0.0.1, serving the handcrafted model
through the Python backend.
"""
from __future__ import annotations

import io
import os
import socket
import threading
import time

import apache_beam as beam
import numpy as np
import pytest
import torch
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import BeamAssertException, assert_that
from apache_beam.utils import retry
from google.protobuf import text_format
from tritonclient.grpc import InferenceServerClient, InferInput, model_config_pb2
from tritonclient.utils import InferenceServerException

from cli_common import guarded
from pipelines.local_runner import local_runner
from scoring import export_triton as et
from scoring.model import ScoreModel, load_model
from scoring.photos import DEGRADATIONS, degrade, draw_product, sample_photos
from tests.fixtures.triton import CLIP_MODEL_NAME, MODEL_NAME, TcpForwarder
from transforms.decode import decode_image
from transforms.inference import ScoreModelHandler
from transforms.triton_handler import (
    TritonModel,
    TritonModelHandler,
    TritonSpec,
    connect,
    grpc_code,
    parse_triton_spec,
    read_model_config,
    retry_filter,
    triton_model_info,
)


def cli(argv):
    """The command as the console script runs it: a usage error is one line on stderr and exit code 2."""
    return guarded("imagescore export-triton", et.run, argv)


PARITY_TOLERANCE = 1e-5


# ---------------------------------------------------------------- spec parsing

@pytest.mark.parametrize("spec, expected", [
    ("triton://localhost:8001/image_score", TritonSpec("localhost", 8001, "image_score", "")),
    ("triton://127.0.0.1:9000/image_score/3", TritonSpec("127.0.0.1", 9000, "image_score", "3")),
    ("triton://[::1]:8001/m/", TritonSpec("::1", 8001, "m", "")),
])
def test_parse_good_specs(spec, expected):
    parsed = parse_triton_spec(spec)
    assert parsed == expected
    assert parse_triton_spec(str(parsed)) == parsed


@pytest.mark.parametrize("spec, problem", [
    ("handcrafted", "not a Triton spec"),
    ("http://localhost:8001/image_score", "not a Triton spec"),
    ("triton://localhost/image_score", "no port"),
    ("triton://:8001/image_score", "no host"),
    ("triton://localhost:80x1/image_score", "bad port"),
    ("triton://localhost:8001", "exactly one model"),
    ("triton://localhost:8001/", "exactly one model"),
    ("triton://localhost:8001/a/1/extra", "exactly one model"),
    ("triton://localhost:8001/a//1", "exactly one model"),
    ("triton://localhost:8001/a/latest", "positive integer"),
    ("triton://localhost:8001/a/0", "positive integer"),
    ("triton://user:secret@localhost:8001/a", "credentials in the spec are not supported"),
    ("triton://localhost:8001/a?timeout=3", "queries and fragments"),
])
def test_parse_bad_specs_say_what_is_wrong(spec, problem):
    with pytest.raises(ValueError) as error:
        parse_triton_spec(spec)
    assert problem in str(error.value)
    assert "triton://HOST:PORT/NAME" in str(error.value)
    if "secret" in spec:
        assert "secret" not in str(error.value) and "user" not in str(error.value)
    else:
        assert repr(spec) in str(error.value)


def test_retry_filter_retries_only_transient_grpc_errors():
    def error(code):
        return InferenceServerException("x", status=f"StatusCode.{code}")
    assert retry_filter(error("UNAVAILABLE")) and retry_filter(error("RESOURCE_EXHAUSTED"))
    assert retry_filter(error("DEADLINE_EXCEEDED"))
    assert not retry_filter(error("INVALID_ARGUMENT"))
    assert not retry_filter(error("NOT_FOUND"))
    assert not retry_filter(InferenceServerException("no status"))
    assert not retry_filter(ValueError("bad image"))


def test_model_config_gives_id_and_size_and_refuses_other_models():
    spec = TritonSpec("127.0.0.1", 1, "m")
    good = {"max_batch_size": 8, "input": [{"name": "images", "data_type": "TYPE_UINT8", "dims": ["8", "8", "3"]}],
            "output": [{"name": "scores", "data_type": "TYPE_FP32", "dims": ["1"]}],
            "parameters": {"image_score_model": {"string_value": "m-v1"},
                           "image_score_input_size": {"string_value": "8"}}}
    assert read_model_config(good, spec) == ("m-v1", 8)
    bad_input = {**good, "input": [{"name": "images", "data_type": "TYPE_FP32", "dims": ["3", "8", "8"]}]}
    with pytest.raises(ValueError, match=r"'m' on Triton at 127.0.0.1:1 .*input 'images' is TYPE_FP32 \[3, 8, 8\]"
                                         r".*export-triton"):
        read_model_config(bad_input, spec)
    with pytest.raises(ValueError, match="output 'scores' is missing"):
        read_model_config({**good, "output": []}, spec)
    with pytest.raises(ValueError, match="max_batch_size is 0"):
        read_model_config({**good, "max_batch_size": 0}, spec)
    with pytest.raises(ValueError, match="no 'image_score_model' parameter.*export-triton"):
        read_model_config({**good, "parameters": {}}, spec)
    odd_size = {**good, "parameters": {**good["parameters"], "image_score_input_size": {"string_value": "big"}}}
    with pytest.raises(ValueError, match="'big', not a size in pixels"):
        read_model_config(odd_size, spec)


# ---------------------------------------------------------------- export

@pytest.fixture(scope="module")
def handcrafted():
    return load_model("handcrafted", "cpu")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The handcrafted model exported for the libtorch backend through the CLI."""
    repository = str(tmp_path_factory.mktemp("export"))
    assert et.run(["--model", "handcrafted", "--repository", repository, "--name", "hc", "--version", "2",
                   "--backend", "pytorch", "--max-batch-size", "16"]) == 0
    return repository


def _config(path: str) -> model_config_pb2.ModelConfig:
    with open(path, encoding="utf-8") as handle:
        return text_format.Parse(handle.read(), model_config_pb2.ModelConfig())


def test_export_layout_and_config(exported, handcrafted):
    files = sorted(os.path.relpath(os.path.join(d, f), exported) for d, _, fs in os.walk(exported) for f in fs)
    assert files == ["hc/2/model.pt", "hc/config.pbtxt"]   # no staging leftovers
    config = _config(os.path.join(exported, "hc", "config.pbtxt"))   # parses as Triton's own ModelConfig
    assert config.name == "hc" and config.platform == "pytorch_libtorch" and config.max_batch_size == 16
    (image,), (score,) = config.input, config.output
    assert (image.name, image.data_type, list(image.dims)) == ("images", model_config_pb2.TYPE_UINT8, [384, 384, 3])
    assert (score.name, score.data_type, list(score.dims)) == ("scores", model_config_pb2.TYPE_FP32, [1])
    assert config.HasField("dynamic_batching") and max(config.dynamic_batching.preferred_batch_size) == 16
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    assert parameters == {"image_score_model": handcrafted.model_id, "image_score_input_size": "384",
                          "image_score_device": "cpu"}


class _TinyModel(ScoreModel):
    """A cheap traceable model for tests about the export's files, not its scores."""

    model_id = "tiny-v1"
    input_size = 32

    def forward(self, images):
        return torch.sigmoid(images.float().mean(dim=(1, 2, 3)) / 64.0 - 2.0)


def test_python_backend_export_carries_model_py(tmp_path):
    et.export_triton(_TinyModel(), str(tmp_path), backend="python")
    assert sorted(os.listdir(tmp_path / "image_score" / "1")) == ["model.pt", "model.py"]
    assert _config(str(tmp_path / "image_score" / "config.pbtxt")).backend == "python"
    source = (tmp_path / "image_score" / "1" / "model.py").read_text()
    compile(source, "model.py", "exec")
    assert "import scoring" not in source and "from scoring" not in source  # the server has only torch


def test_traced_model_matches_eager(exported, handcrafted):
    traced = torch.jit.load(os.path.join(exported, "hc", "2", "model.pt"), map_location="cpu")
    rng = np.random.default_rng(7)   # other images than the export's own check saw
    products = [np.asarray(draw_product(rng, 384, clutter=c).convert("RGB")) for c in (0.0, 0.5, 1.0, 0.2)]
    images = torch.from_numpy(np.stack(products + [rng.integers(0, 256, (384, 384, 3), dtype=np.uint8)]))
    got, expected = traced(images)[:, 0], handcrafted(images)
    assert got.shape == (5,) and got.dtype == torch.float32
    assert float(expected.max() - expected.min()) > 0.1   # not all saturated: a wrong trace would show
    assert torch.allclose(got, expected, rtol=0, atol=PARITY_TOLERANCE)


class _PythonFloatModel(ScoreModel):
    """Reads tensor values into Python floats: tracing records them as constants, so the trace scores wrong."""

    model_id = "python-float-v1"
    input_size = 32

    def forward(self, images):
        return torch.tensor([float(image.float().mean()) / 255.0 for image in images])


def test_export_refuses_a_trace_that_differs_from_the_eager_model(tmp_path):
    with pytest.raises(ValueError, match="python-float-v1 differs from the eager model.*refusing to export"):
        et.export_triton(_PythonFloatModel(), str(tmp_path / "repo"), name="pf")
    assert not (tmp_path / "repo" / "pf").exists()


def test_export_refuses_to_overwrite_and_bad_arguments(tmp_path):
    model = _TinyModel()
    et.export_triton(model, str(tmp_path), name="m")
    before = (tmp_path / "m" / "1" / "model.pt").read_bytes()
    with pytest.raises(FileExistsError, match="already exists.*--overwrite"):
        et.export_triton(model, str(tmp_path), name="m")
    for kwargs, problem in (({"backend": "onnx"}, "--backend 'onnx'"), ({"version": 0}, "--version must be >= 1"),
                            ({"name": "../up"}, "not a usable directory name"),
                            ({"max_batch_size": 0}, "max-batch-size must be >= 1")):
        with pytest.raises(ValueError, match=problem):
            et.export_triton(model, str(tmp_path), **{"name": "x", **kwargs})
    assert sorted(os.listdir(tmp_path)) == ["m"] and sorted(os.listdir(tmp_path / "m")) == ["1", "config.pbtxt"]
    assert (tmp_path / "m" / "1" / "model.pt").read_bytes() == before
    et.export_triton(model, str(tmp_path), name="m", overwrite=True)
    assert sorted(os.listdir(tmp_path / "m")) == ["1", "config.pbtxt"]


def test_cli_reports_errors_without_a_traceback(exported, capsys):
    assert cli(["--repository", exported, "--name", "hc", "--version", "2"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli(["--model", "/no/such/run", "--repository", exported]) == 2
    assert "'/no/such/run' is neither 'handcrafted' nor a training run directory" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert cli(["--repository", exported, "--name", "gpu", "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    assert sorted(os.listdir(exported)) == ["hc"]


# ---------------------------------------------------------------- the real server

def test_model_info_comes_from_the_server(triton_server):
    assert triton_model_info(triton_server.spec()) == ("handcrafted-v4", 384)
    assert triton_model_info(triton_server.spec() + "/1") == ("handcrafted-v4", 384)
    clip = triton_server.models[CLIP_MODEL_NAME]
    assert clip.model_id.startswith("clip-mlp:tiny@") and clip.input_size == 32
    assert triton_model_info(triton_server.spec(CLIP_MODEL_NAME)) == (clip.model_id, clip.input_size)


def _photos(size: int) -> list[tuple[str, np.ndarray]]:
    """Real photos and graded distortions of one, through the production decoder."""
    images = []
    photos = sample_photos()
    for name, photo in photos:
        images.append((name, photo))
    for kind in DEGRADATIONS:
        images.append((f"coffee-{kind}", degrade(dict(photos)["coffee"], kind, 0.7)))
    decoded = []
    for name, image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        decoded.append((name, decode_image(buffer.getvalue(), size)))
    return decoded


@pytest.mark.parametrize("name, min_spread", [(MODEL_NAME, 0.1), (CLIP_MODEL_NAME, 0.02)])
def test_local_and_triton_paths_give_the_same_scores(triton_server, name, min_spread):
    """The invariant: the same decoded photos score the same through RunInference locally and on Triton."""
    served = triton_server.models[name]
    photos = _photos(served.input_size)
    expected_names = sorted(name for name, _ in photos)
    local = KeyedModelHandler(ScoreModelHandler(served.local_spec, "cpu", max_batch_size=4))
    remote = KeyedModelHandler(TritonModelHandler(triton_server.spec(name), max_batch_size=4, num_retries=0))

    def check(joined):
        joined = sorted(joined)
        names = [name for name, _ in joined]
        if names != expected_names:
            raise BeamAssertException(f"expected every photo once on each path, got {names}")
        worst, spread = 0.0, []
        for name, results in joined:
            (a,), (b,) = results["local"], results["triton"]
            if a.model_id != b.model_id or a.model_id != served.model_id:
                raise BeamAssertException(f"{name}: model ids differ: {a.model_id!r} vs {b.model_id!r}")
            if not (isinstance(a.inference, float) and isinstance(b.inference, float)):
                raise BeamAssertException(f"{name}: scores are not floats: {a.inference!r}, {b.inference!r}")
            worst = max(worst, abs(a.inference - b.inference))
            spread.append(a.inference)
        if worst > PARITY_TOLERANCE:
            raise BeamAssertException(f"local and Triton scores differ by up to {worst:.3g}")
        if max(spread) - min(spread) < min_spread:
            raise BeamAssertException(f"scores barely vary ({min(spread):.3f}..{max(spread):.3f}); "
                                      "the parity check would prove nothing")

    with test_pipeline.TestPipeline(runner=local_runner()) as pipeline:
        images = pipeline | beam.Create(photos)
        by_local = images | "Local" >> RunInference(local)
        by_triton = images | "Triton" >> RunInference(remote)
        joined = {"local": by_local, "triton": by_triton} | beam.CoGroupByKey()
        assert_that(joined, check)


def test_wrong_input_size_fails_at_once_client_side(triton_server):
    handler = TritonModelHandler(triton_server.spec(), num_retries=3, throttle_delay_secs=0)
    model = handler.create_client()
    calls = []
    infer = model.client.infer
    model.client.infer = lambda *a, **k: calls.append(1) or infer(*a, **k)
    try:
        with pytest.raises(ValueError, match=r"takes uint8 384x384x3 images, got uint8 \(200, 200, 3\)"):
            handler.run_inference([np.zeros((200, 200, 3), np.uint8)], model)
        assert calls == []
        assert len(handler.run_inference([np.zeros((384, 384, 3), np.uint8)], model)) == 1  # client still fine
    finally:
        model.client.close()


def test_server_refusal_is_not_retried(triton_server, monkeypatch):
    sleeps = []
    monkeypatch.setattr(retry.Clock, "sleep", lambda self, seconds: sleeps.append(seconds))
    handler = TritonModelHandler(triton_server.spec(), num_retries=3, throttle_delay_secs=0)
    client = InferenceServerClient(triton_server.grpc_url)
    # A client that believes the model takes 200x200: only the server can refuse the request.
    model = TritonModel(client, parse_triton_spec(triton_server.spec()), "handcrafted-v4", 200, 64)
    calls = []
    infer = client.infer
    client.infer = lambda *a, **k: calls.append(1) or infer(*a, **k)
    try:
        with pytest.raises(InferenceServerException) as error:
            handler.run_inference([np.zeros((200, 200, 3), np.uint8)] * 2, model)
    finally:
        client.close()
    assert "INVALID_ARGUMENT" in str(error.value.status())
    assert "unexpected shape for input 'images'" in error.value.message()
    assert calls == [1] and sleeps == []


def test_batches_larger_than_the_served_model_takes_are_sent_in_parts(triton_server):
    handler = TritonModelHandler(triton_server.spec(), num_retries=0)
    model = handler.create_client()
    assert model.max_batch_size == 64  # what the export wrote; the handler read it from the server
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (384, 384, 3), dtype=np.uint8) for _ in range(5)]
    whole = [r.inference for r in handler.run_inference(images, model)]
    model.max_batch_size = 2  # as if the repository were exported with --max-batch-size 2
    calls = []
    infer = model.client.infer
    model.client.infer = lambda *a, **k: calls.append(1) or infer(*a, **k)
    try:
        parts = [r.inference for r in handler.run_inference(images, model)]
    finally:
        model.client.close()
    assert len(calls) == 3 and parts == pytest.approx(whole, abs=1e-7)


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_server_down_fails_after_bounded_retries(monkeypatch):
    sleeps = []
    monkeypatch.setattr(retry.Clock, "sleep", lambda self, seconds: sleeps.append(seconds))
    spec = f"triton://127.0.0.1:{_dead_port()}/image_score"
    handler = TritonModelHandler(spec, num_retries=2, timeout_s=5, throttle_delay_secs=0)
    client = InferenceServerClient(parse_triton_spec(spec).url)
    model = TritonModel(client, parse_triton_spec(spec), "handcrafted-v4", 384, 64)
    calls = []
    infer = client.infer
    client.infer = lambda *a, **k: calls.append(1) or infer(*a, **k)
    try:
        with pytest.raises(InferenceServerException) as error:
            handler.run_inference([np.zeros((384, 384, 3), np.uint8)], model)
    finally:
        client.close()
    assert "UNAVAILABLE" in str(error.value.status())
    assert len(calls) == 3 and len(sleeps) == 2   # the first try plus num_retries


def test_connect_names_the_url_and_model_when_the_server_is_down():
    spec = f"triton://127.0.0.1:{_dead_port()}/image_score"
    started = time.monotonic()
    with pytest.raises(ConnectionError) as error:
        connect(spec, timeout_s=1, wait_s=1.5)
    assert time.monotonic() - started < 10
    message = str(error.value)
    assert parse_triton_spec(spec).url in message and "'image_score'" in message and "UNAVAILABLE" in message


def test_connect_names_a_model_the_server_does_not_have(triton_server):
    with pytest.raises(ConnectionError, match=r"not serving model 'no_such_model'.*is not ready"):
        connect(f"triton://{triton_server.grpc_url}/no_such_model", timeout_s=2, wait_s=1)
    with pytest.raises(ConnectionError, match=r"version 7"):
        triton_model_info(f"{triton_server.spec()}/7", wait_s=1)


def test_connect_waits_for_a_server_that_comes_up_late(triton_server):
    """Nothing listens for the first 1.5 s (UNAVAILABLE); then the real server appears on that address."""
    forwarder = TcpForwarder(triton_server.grpc_url)
    timer = threading.Timer(1.5, forwarder.start)
    started = time.monotonic()
    timer.start()
    try:
        model = connect(f"triton://{forwarder.url}/{MODEL_NAME}", timeout_s=2, wait_s=60)
        waited = time.monotonic() - started
        model.client.close()
    finally:
        timer.cancel()
        timer.join()
        forwarder.stop()
    assert waited >= 1.5
    assert (model.model_id, model.input_size, model.max_batch_size) == ("handcrafted-v4", 384, 64)


def test_a_batch_recovers_after_a_temporary_unavailable(triton_server, monkeypatch):
    """The server goes away between two batches (a restart); the retry finds it back and scores the batch."""
    forwarder = TcpForwarder(triton_server.grpc_url).start()
    handler = TritonModelHandler(f"triton://{forwarder.url}/{MODEL_NAME}", num_retries=3, throttle_delay_secs=0)
    model = handler.create_client()
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (384, 384, 3), dtype=np.uint8) for _ in range(3)]
    calls, sleeps, errors = [], [], []
    infer = model.client.infer

    def counted_infer(*args, **kwargs):
        calls.append(1)
        try:
            return infer(*args, **kwargs)
        except InferenceServerException as error:
            errors.append(grpc_code(error))
            raise

    def back_up(clock, seconds):
        """Beam's backoff: bring the server back, and wait until the client's channel has reconnected."""
        sleeps.append(seconds)
        forwarder.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                if model.client.is_server_ready(client_timeout=2):
                    return
            except InferenceServerException:
                pass
            assert time.monotonic() < deadline, "the client never reconnected"
            time.sleep(0.2)

    try:
        expected = [r.inference for r in handler.run_inference(images, model)]
        forwarder.stop()
        model.client.infer = counted_infer
        monkeypatch.setattr(retry.Clock, "sleep", back_up)
        again = [r.inference for r in handler.run_inference(images, model)]
    finally:
        model.client.close()
        forwarder.stop()
    assert errors == ["UNAVAILABLE"] and len(calls) == 2 and len(sleeps) == 1
    assert again == pytest.approx(expected, abs=1e-7)


def test_a_wrong_score_count_from_the_server_fails_the_batch_at_once(triton_server, monkeypatch):
    """The real server answers for one image fewer than it was sent: the batch fails, naming the model and
    the counts, and is not retried (a later try would get the same answer)."""
    sleeps = []
    monkeypatch.setattr(retry.Clock, "sleep", lambda self, seconds: sleeps.append(seconds))
    handler = TritonModelHandler(triton_server.spec(), num_retries=3, throttle_delay_secs=0)
    model = handler.create_client()
    infer = model.client.infer
    sent = []

    def one_short(name, inputs, **kwargs):
        shape = list(inputs[0].shape())
        sent.append(shape[0])
        short = InferInput("images", [shape[0] - 1] + shape[1:], "UINT8")
        short.set_data_from_numpy(np.zeros([shape[0] - 1] + shape[1:], np.uint8))
        return infer(name, [short], **kwargs)

    model.client.infer = one_short
    try:
        with pytest.raises(ValueError, match=r"returned \(2, 1\) 'scores' for a batch of 3; expected one score "
                                             r"per image") as error:
            handler.run_inference([np.zeros((384, 384, 3), np.uint8)] * 3, model)
    finally:
        model.client.close()
    assert str(parse_triton_spec(triton_server.spec())) in str(error.value)
    assert sent == [3] and sleeps == []
