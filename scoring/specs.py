"""What a ``--model`` spec names, without loading anything: the default and the loading table.

Kept free of torch so that flag definitions (``--model``'s default) and
``--help`` need no heavy import; :func:`scoring.model.load_model` loads
through :data:`MODEL_KINDS`.
"""
from __future__ import annotations

import os

DEFAULT_MODEL = "handcrafted"

#: ``--model`` spec kind -> ``(loader, info)`` as ``"module:function"``. Resolved with importlib when a spec
#: of that kind is loaded, so ``scoring.model`` (the interface the models subclass) imports none of them.
#: ``loader(spec, device)`` returns the model; ``info(spec)``, when given, returns ``(model_id, input_size)``
#: without loading weights.
MODEL_KINDS: dict[str, tuple[str, str | None]] = {
    "handcrafted": ("scoring.handcrafted:load_handcrafted", None),
    "clip-iqa": ("scoring.clip_iqa:load_clip_iqa", None),
    "run": ("scoring.checkpoint:load_run", "scoring.checkpoint:run_info"),
}


def model_kind(spec: str) -> str:
    """The :data:`MODEL_KINDS` key of a ``--model`` spec, or a ValueError saying what the spec may be."""
    if spec == "handcrafted":
        return "handcrafted"
    if spec.startswith("clip-iqa:"):
        return "clip-iqa"
    if os.path.isdir(spec):
        return "run"
    if spec.startswith("triton://"):
        raise ValueError(f"--model {spec!r} is served by Triton, not loaded locally; "
                         "score through transforms.inference.make_score_handler")
    raise ValueError(
        f"--model {spec!r} is neither 'handcrafted' nor a training run directory (nor a clip-iqa: spec); "
        "pass --model handcrafted, --model clip-iqa:BACKBONE (zero-shot CLIP-IQA), --model RUN_DIR "
        "(from `imagescore train`) or --model triton://HOST:PORT/NAME")
