"""RunInference model handler that scores through a Triton Inference Server over gRPC.

``--model triton://HOST:PORT/NAME[/VERSION]`` routes scoring here instead of
to the local PyTorch model. The served model is the one
``scoring.export_triton`` writes: uint8 NHWC ``images`` in, FP32 ``scores``
out, with its model id and input size in the model config's ``parameters``.
So the client sends the very arrays the local handler would feed the model,
and its :class:`PredictionResult` s look exactly like
:class:`transforms.inference.ScoreModelHandler`'s: ``(example, score, model_id)``.

Beam's :class:`RemoteModelHandler` owns retries (exponential backoff,
``retry_filter``) and client-side throttling; this module says only how to
connect (:meth:`TritonModelHandler.create_client`) and how to send one batch
(:meth:`TritonModelHandler.request`).
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from apache_beam.ml.inference.base import PredictionResult, RemoteModelHandler
from tritonclient.grpc import InferenceServerClient, InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from scoring.export_triton import INPUT_NAME, INPUT_SIZE_PARAMETER, MODEL_ID_PARAMETER, OUTPUT_NAME

SCHEME = "triton://"
#: gRPC codes worth another try: the server is restarting, overloaded, or slow
RETRYABLE_CODES = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"})


@dataclasses.dataclass(frozen=True)
class TritonSpec:
    """Where a Triton model lives: ``triton://HOST:PORT/NAME[/VERSION]``."""

    host: str
    port: int
    model_name: str
    model_version: str = ""   # "" = the version policy's latest

    @property
    def url(self) -> str:
        """``HOST:PORT`` as gRPC wants it (IPv6 literals bracketed)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        version = f"/{self.model_version}" if self.model_version else ""
        return f"{SCHEME}{self.url}/{self.model_name}{version}"


def is_triton_spec(spec: str) -> bool:
    """Whether a ``--model`` value names a Triton model (the launcher's routing test)."""
    return isinstance(spec, str) and spec.startswith(SCHEME)


def parse_triton_spec(spec: str) -> TritonSpec:
    """Parse ``triton://HOST:PORT/NAME[/VERSION]``; raises ``ValueError`` that names the spec and the problem."""
    usage = "expected triton://HOST:PORT/NAME[/VERSION], e.g. triton://localhost:8001/image_score"
    if not is_triton_spec(spec):
        raise ValueError(f"--model {spec!r} is not a Triton spec; {usage}")
    parts = urlsplit(spec)
    if parts.username or parts.password:   # never echo them: flags end up in logs
        raise ValueError(f"--model triton://***@{parts.netloc.rpartition('@')[2]}{parts.path}: credentials in the "
                         f"spec are not supported; {usage}")
    if parts.query or parts.fragment:
        raise ValueError(f"--model {spec!r}: queries and fragments are not supported; {usage}")
    try:
        port = parts.port
    except ValueError as error:
        raise ValueError(f"--model {spec!r}: bad port ({error}); {usage}") from None
    if not parts.hostname:
        raise ValueError(f"--model {spec!r} has no host; {usage}")
    if port is None or port == 0:
        raise ValueError(f"--model {spec!r} has no port (Triton's gRPC port is 8001 by default); {usage}")
    segments = parts.path.strip("/").split("/") if parts.path.strip("/") else []
    if not segments or len(segments) > 2 or any(not segment for segment in segments):
        raise ValueError(f"--model {spec!r} must name exactly one model (and optionally a version); {usage}")
    version = segments[1] if len(segments) == 2 else ""
    if version and not (version.isdigit() and int(version) >= 1):
        raise ValueError(f"--model {spec!r}: model version {version!r} must be a positive integer; {usage}")
    return TritonSpec(parts.hostname, port, segments[0], version)


def grpc_code(error: BaseException) -> str | None:
    """The gRPC status name of a tritonclient error (``UNAVAILABLE``, ...), else ``None``."""
    if not isinstance(error, InferenceServerException) or error.status() is None:
        return None
    return str(error.status()).rsplit(".", 1)[-1]


class ModelUnavailable(ConnectionError):
    """The server stayed unreachable (or overloaded) for longer than the handler's ``unavailable_s``."""


def retry_filter(error: Exception) -> bool:
    """Retry what a later try can fix (server down, overloaded, slow); never a request the server refused."""
    return grpc_code(error) in RETRYABLE_CODES


@dataclasses.dataclass
class TritonModel:
    """What :meth:`TritonModelHandler.create_client` hands RunInference: a live client and the model's contract."""

    client: InferenceServerClient
    spec: TritonSpec
    model_id: str
    input_size: int
    max_batch_size: int  # the served model's; larger RunInference batches are sent in parts


def _parameter(config: dict, key: str, spec: TritonSpec) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    if not value:
        raise ValueError(f"model {spec.model_name!r} on Triton at {spec.url} has no {key!r} parameter in its config; "
                         "serve a repository written by `imagescore export-triton`")
    return value


def read_model_config(config: dict, spec: TritonSpec) -> tuple[str, int]:
    """``(model_id, input_size)`` from a model config (as JSON); refuses one whose tensors are not imagescore's."""
    model_id = _parameter(config, MODEL_ID_PARAMETER, spec)
    size_text = _parameter(config, INPUT_SIZE_PARAMETER, spec)
    if not size_text.isdigit():
        raise ValueError(f"model {spec.model_name!r} on Triton at {spec.url}: {INPUT_SIZE_PARAMETER!r} is "
                         f"{size_text!r}, not a size in pixels")
    input_size = int(size_text)
    inputs = {tensor["name"]: tensor for tensor in config.get("input", [])}
    outputs = {tensor["name"]: tensor for tensor in config.get("output", [])}
    image = inputs.get(INPUT_NAME, {})
    dims = [int(d) for d in image.get("dims", [])]
    problems = []
    if image.get("data_type") != "TYPE_UINT8" or dims != [input_size, input_size, 3]:
        problems.append(f"input {INPUT_NAME!r} is {image.get('data_type')} {dims}, "
                        f"expected TYPE_UINT8 [{input_size}, {input_size}, 3]")
    if outputs.get(OUTPUT_NAME, {}).get("data_type") != "TYPE_FP32":
        problems.append(f"output {OUTPUT_NAME!r} is missing or not TYPE_FP32")
    if int(config.get("max_batch_size", 0)) < 1:
        problems.append("max_batch_size is 0 (the model must batch)")
    if problems:
        raise ValueError(f"model {spec.model_name!r} on Triton at {spec.url} does not take what imagescore sends: "
                         + "; ".join(problems) + ". Re-export it with `imagescore export-triton`")
    return model_id, input_size


def connect(spec: TritonSpec | str, *, timeout_s: float = 10.0, wait_s: float = 30.0) -> TritonModel:
    """Connect, wait up to ``wait_s`` for the server and model to be ready, and read the model's contract.

    Raises ``ConnectionError`` naming the URL and model when they are not ready
    in time (a launcher should fail before any work is done), ``ValueError``
    when the served model is not an imagescore export.
    """
    spec = parse_triton_spec(spec) if isinstance(spec, str) else spec
    client = InferenceServerClient(spec.url)
    deadline = time.monotonic() + wait_s
    delay, last = 0.25, "no answer"
    while True:
        try:
            if not client.is_server_ready(client_timeout=timeout_s):
                last = "the server is not ready"
            elif not client.is_model_ready(spec.model_name, spec.model_version, client_timeout=timeout_s):
                last = f"model {spec.model_name!r} (version {spec.model_version or 'latest'}) is not ready"
            else:
                break
        except InferenceServerException as error:
            last = f"{grpc_code(error) or 'error'}: {error.message()}"
        if time.monotonic() + delay > deadline:
            client.close()
            raise ConnectionError(
                f"Triton at {spec.url} is not serving model {spec.model_name!r} "
                f"(version {spec.model_version or 'latest'}) after {wait_s:g}s: {last}. "
                f"Check that tritonserver runs with that model in its repository and that its gRPC port is {spec.port}")
        time.sleep(delay)
        delay = min(delay * 2, 2.0)
    try:
        config = client.get_model_config(spec.model_name, spec.model_version, as_json=True,
                                         client_timeout=timeout_s)["config"]
        model_id, input_size = read_model_config(config, spec)
    except BaseException:
        client.close()
        raise
    return TritonModel(client, spec, model_id, input_size, int(config["max_batch_size"]))


def triton_model_info(spec: str, *, timeout_s: float = 10.0, wait_s: float = 30.0) -> tuple[str, int]:
    """``(model_id, input_size)`` of the model a Triton spec names, asked of the server.

    The Triton counterpart of ``scoring.model.model_info``: the launcher needs
    both before the pipeline runs.
    """
    model = connect(spec, timeout_s=timeout_s, wait_s=wait_s)
    try:
        return model.model_id, model.input_size
    finally:
        model.client.close()


#: spec -> (model_id, input_size, max_batch_size) of every model this process has reached
_CONTRACTS: dict[str, tuple[str, int, int]] = {}


class TritonModelHandler(RemoteModelHandler[np.ndarray, PredictionResult, TritonModel]):
    """Scores uint8 HWC images on a Triton server; results match :class:`ScoreModelHandler`'s.

    ``num_retries`` bounds Beam's exponential-backoff retries of one batch
    (first delay ~5 s, doubling) on UNAVAILABLE / RESOURCE_EXHAUSTED /
    DEADLINE_EXCEEDED; any other error (a refused request) fails at once.
    With ``unavailable_s`` (the streaming job's ``--model-unavailable-seconds``)
    retries are bounded by time instead: a batch is retried with backoff (0.5 s
    doubling to ``max_backoff_s``) while the server is down or restarting, and
    raises :class:`ModelUnavailable` once ``unavailable_s`` have passed.
    ``timeout_s`` caps each request; ``wait_s`` is how long a worker waits for
    the server and model at start-up.
    """

    def __init__(self, spec: str, *, timeout_s: float = 60.0, wait_s: float = 60.0, num_retries: int = 5,
                 throttle_delay_secs: int = 5, min_batch_size: int | None = None,
                 max_batch_size: int | None = None, max_batch_duration_secs: int | None = None,
                 unavailable_s: float | None = None, max_backoff_s: float = 10.0):
        # With a time bound the retries happen in request(); Beam's count-bounded ones would add to it.
        super().__init__(namespace="imagescore_triton", num_retries=num_retries if unavailable_s is None else 0,
                         throttle_delay_secs=throttle_delay_secs, retry_filter=retry_filter)
        if unavailable_s is not None and unavailable_s < 0:
            raise ValueError(f"--model-unavailable-seconds must not be negative, got {unavailable_s}")
        self._unavailable_s = unavailable_s
        self._max_backoff_s = max_backoff_s
        self._spec = parse_triton_spec(spec)
        self._timeout_s = timeout_s
        self._wait_s = wait_s
        # RemoteModelHandler does not take batching arguments; set them the way ModelHandler does.
        self._batching_kwargs: dict[str, Any] = {
            key: value for key, value in (("min_batch_size", min_batch_size), ("max_batch_size", max_batch_size),
                                          ("max_batch_duration_secs", max_batch_duration_secs))
            if value is not None}

    def create_client(self) -> TritonModel:
        key = str(self._spec)
        recovering = self._unavailable_s is not None and key in _CONTRACTS
        try:
            model = connect(self._spec, timeout_s=self._timeout_s,
                            wait_s=min(self._wait_s, 5.0) if recovering else self._wait_s)
        except ConnectionError:
            if not recovering:
                raise
            known = _CONTRACTS[key]
            # The server went away after this process had reached it: keep the job running, and let each
            # request retry until --model-unavailable-seconds, then dead-letter it (model_unavailable).
            return TritonModel(InferenceServerClient(self._spec.url), self._spec, *known)
        _CONTRACTS[key] = (model.model_id, model.input_size, model.max_batch_size)
        return model

    def request(self, batch: Sequence[np.ndarray], model: TritonModel,
                inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        size = model.input_size
        for image in batch:
            if image.dtype != np.uint8 or image.shape != (size, size, 3):
                raise ValueError(f"Triton model {model.spec} takes uint8 {size}x{size}x3 images, got "
                                 f"{image.dtype} {image.shape}; decode them with "
                                 f"transforms.decode.decode_image(data, {size})")
        scores = np.concatenate([self._infer_within_deadline(model, batch[start:start + model.max_batch_size])
                                 for start in range(0, len(batch), model.max_batch_size)])
        return [PredictionResult(example, float(score), model.model_id) for example, score in zip(batch, scores)]

    def _infer_within_deadline(self, model: TritonModel, part: Sequence[np.ndarray]) -> np.ndarray:
        """One request; with ``unavailable_s``, retried with backoff while the server is down or restarting."""
        if self._unavailable_s is None:
            return self._infer(model, part)
        deadline = time.monotonic() + self._unavailable_s
        delay = 0.5
        while True:
            try:
                return self._infer(model, part)
            except Exception as error:
                if not retry_filter(error):
                    raise
                if time.monotonic() + delay > deadline:
                    raise ModelUnavailable(
                        f"Triton model {model.spec} still unavailable after {self._unavailable_s:g}s "
                        f"({grpc_code(error)}: {error}); dead-lettered as model_unavailable: replay it once the "
                        "server is back") from None
                time.sleep(delay)
                delay = min(delay * 2, self._max_backoff_s)

    def _infer(self, model: TritonModel, part: Sequence[np.ndarray]) -> np.ndarray:
        images = np.ascontiguousarray(np.stack(part))
        tensor = InferInput(INPUT_NAME, list(images.shape), "UINT8")
        tensor.set_data_from_numpy(images)
        result = model.client.infer(model.spec.model_name, [tensor], model_version=model.spec.model_version,
                                    outputs=[InferRequestedOutput(OUTPUT_NAME)], client_timeout=self._timeout_s)
        scores = result.as_numpy(OUTPUT_NAME)
        if scores is None or scores.size != len(part):
            raise ValueError(f"Triton model {model.spec} returned {None if scores is None else scores.shape} "
                             f"{OUTPUT_NAME!r} for a batch of {len(part)}; expected one score per image")
        return scores.reshape(-1)

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(image.nbytes for image in batch)

    def get_metrics_namespace(self) -> str:
        return "imagescore_inference"

    def __str__(self) -> str:
        return f"TritonModelHandler({self._spec})"
