"""The local RunInference path: the model's own score for each image, with the model's id, batched by Beam."""
import apache_beam as beam
import numpy as np
import pytest
import torch
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from pipelines.local_runner import local_runner
from scoring.model import load_model, model_info, resolve_device
from transforms.inference import ScoreModelHandler


def _images(n, size=384, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_run_inference_scores_every_image_with_the_model_id():
    images = _images(7)
    expected = load_model("handcrafted", "cpu")(torch.from_numpy(np.stack(images))).numpy()

    def check(results):
        results = sorted(results)
        assert [key for key, _ in results] == list(range(7))
        assert all(r.model_id == "handcrafted-v4" for _, r in results)
        np.testing.assert_allclose([r.inference for _, r in results], expected, rtol=1e-5, atol=1e-6)

    handler = KeyedModelHandler(ScoreModelHandler("handcrafted", "cpu", min_batch_size=2, max_batch_size=3))
    with TestPipeline(runner=local_runner()) as p:
        out = p | beam.Create(list(enumerate(images))) | RunInference(handler)
        assert_that(out, check)


def test_large_model_shares_one_model_through_a_proxy():
    """--large-model: Beam serves the model from one process per machine; only method calls cross the proxy."""
    images = _images(4, seed=1)
    expected = load_model("handcrafted", "cpu")(torch.from_numpy(np.stack(images))).numpy()

    def check(results):
        results = sorted(results)
        assert all(r.model_id == "handcrafted-v4" for _, r in results)
        np.testing.assert_allclose([r.inference for _, r in results], expected, rtol=1e-5, atol=1e-6)

    handler = KeyedModelHandler(ScoreModelHandler("handcrafted", "cpu", max_batch_size=2, large_model=True))
    with TestPipeline(runner=local_runner()) as p:
        assert_that(p | beam.Create(list(enumerate(images))) | RunInference(handler), check)


def test_model_info_matches_the_loaded_model():
    model = load_model("handcrafted", "cpu")
    assert model_info("handcrafted") == (model.model_id, model.input_size)


def test_wrong_input_is_refused_with_what_to_do():
    model = load_model("handcrafted", "cpu")
    with pytest.raises(ValueError, match="uint8 NHWC"):
        model(torch.zeros(1, 384, 384, 3))
    with pytest.raises(ValueError, match="384x384"):
        model(torch.zeros(1, 224, 224, 3, dtype=torch.uint8))


def test_unknown_model_spec_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match="handcrafted"):
        load_model(str(tmp_path / "nowhere"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"
