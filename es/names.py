"""Names that flags, ``--help`` and reports need, kept free of the Elasticsearch client (which takes a second to import).

The stale-update guard's write modes (``document``: the job owns the document
and upserts all of it; ``score``: only the score fields, onto documents another
indexer owns) and the boosting formulas, rank functions and platforms.
``es.guard`` and ``es.boosting`` use these.
"""
from __future__ import annotations

from enum import StrEnum


class WriteMode(StrEnum):
    """The two write modes. A ``str`` enum: ``WriteMode.SCORE == "score"``, so flags, JSON and log lines
    carry the plain value."""

    DOCUMENT = "document"
    SCORE = "score"

    @classmethod
    def of(cls, value: str) -> WriteMode:
        """``value`` as a mode, or a ``ValueError`` naming the modes: the one check every writer runs."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"write mode must be one of {WRITE_MODES}, got {value!r}") from None


DOCUMENT, SCORE = WriteMode.DOCUMENT, WriteMode.SCORE
WRITE_MODES = tuple(mode.value for mode in WriteMode)

# The index fields the jobs write and read (es/mapping.py maps them).
SCORE_FIELD = "image_score"
MODEL_FIELD = "image_score_model"
SCORED_AT_FIELD = "image_scored_at"
SCORED_URL_FIELD = "image_score_image_url"  # the URL that was scored: streaming reuses a score while it is unchanged
SCORE_VERSION_FIELD = "image_score_version"  # the item version (updated_at) the score was computed from
RANK_FIELD = "image_score_rank"  # rank_feature copy of image_score, for the rank_feature query
DELETED_FIELD = "deleted"  # true on a tombstone
VERSION_FIELD = "updated_at"  # the item version; the stale-update guard compares it (es/guard.py)
PROVENANCE_FIELD = "image_provenance"  # what the image's metadata says of its origin (transforms/provenance.py)
PROVENANCE_DETAIL_FIELD = "image_provenance_detail"  # the generator or claim; what was wrong when unreadable
#: the image_provenance values that say the image was made by AI (ranking's ai_factor discounts them)
AI_PROVENANCE_VALUES = ("c2pa_ai", "xmp_ai", "generator_metadata")
CREATED_AT_FIELD = "created_at"  # owned by the item indexer; the backfill source filters on it

RELEVANCE_NAME = "relevance"
FORMULAS = ("multiplicative", "power", "additive", "rank_feature")
RANK_FUNCTIONS = ("saturation", "log", "sigmoid", "linear")
PLATFORMS = ("web", "ios", "android")
