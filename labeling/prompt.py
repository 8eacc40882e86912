"""Versioned prompt templates for the LLM judge.

A prompt file is YAML front matter (``version`` is required, because labels
and the cache are keyed by it) followed by the prompt text. The text may use
``${n_images}`` and ``${image_labels}`` (``Image 1, Image 2, ...``); JSON
braces in the text need no escaping because substitution uses
:class:`string.Template`.
"""
from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass
from pathlib import Path

import yaml

DEFAULT_PROMPT = Path(__file__).with_name("prompts") / "xiqe_aesthetic_v1.txt"

_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*\r?\n(.*)\Z", re.DOTALL)
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt's text with its version; ``sha256`` catches edits made without bumping the version."""

    version: str
    text: str
    source: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def render(self, n_images: int) -> str:
        """The instruction text for a window of ``n_images`` images."""
        labels = ", ".join(image_label(i) for i in range(n_images))
        return string.Template(self.text).safe_substitute(n_images=n_images, image_labels=labels)


def image_label(index: int) -> str:
    """How the prompt and the message name the image at 0-based ``index``."""
    return f"Image {index + 1}"


def parse_prompt(content: str, source: str = "<string>") -> PromptTemplate:
    """Split front matter from text and check the version; errors name ``source``."""
    match = _FRONT_MATTER.match(content)
    if not match:
        raise ValueError(
            f"prompt {source} has no front matter; start the file with '---', a line 'version: NAME', and '---'")
    try:
        meta = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"prompt {source}: front matter is not valid YAML: {exc}") from exc
    version = str(meta.get("version", "")) if isinstance(meta, dict) else ""
    if not _VERSION.match(version):
        raise ValueError(
            f"prompt {source}: front matter needs 'version: NAME' (letters, digits, '._-'), got {version!r}")
    text = match.group(2).strip()
    if not text:
        raise ValueError(f"prompt {source} has front matter but no prompt text")
    return PromptTemplate(version=version, text=text, source=source)


def load_prompt(path: str | Path | None = None) -> PromptTemplate:
    """Load ``path``, or the default X-IQE-style aesthetic prompt."""
    path = Path(path) if path is not None else DEFAULT_PROMPT
    try:
        content = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read prompt file {path}: {exc.strerror}") from exc
    return parse_prompt(content, source=str(path))
