"""Index set-up, once per job before its first write: the field mapping and the guard script.

Both jobs call :func:`prepare_index` at start-up. It is also a job's first request to the
cluster, so a cluster that is not there, a missing index, refused credentials or a score
field mapped with another type stop the job here, as an :class:`IndexSetupError` whose
message is one line naming the URL or the index and saying what to do (the jobs print it
as a usage error). Any other failure stays an :class:`~es.client.EsError`.
"""
from __future__ import annotations

from elasticsearch import Elasticsearch

from es.client import EsConfig, EsError, make_client, scrubbed_errors, usage_message
from es.guard import WriteMode, ensure_guard_script
from es.mapping import document_properties, ensure_score_mapping

#: statuses that mean the set-up is wrong, not the cluster: the index, the mapping, the credentials
_SETUP_STATUSES = (400, 401, 403, 404)


class IndexSetupError(EsError):
    """A start-up failure the user fixes (URL, index, credentials, mapping); the message says how."""


def prepare_index(config: EsConfig, index: str, mode: WriteMode | str) -> None:
    """Map the fields ``mode`` writes and store the guard script (``es/guard.py``); both are idempotent.

    In ``document`` mode the job owns its documents, so a missing index is created with
    :func:`~es.mapping.document_properties`; in ``score`` mode another indexer owns the index,
    and a missing one is an :class:`IndexSetupError`. The mapping also makes
    ``image_score_model`` a keyword the backfill's source can filter on.
    """
    mode = WriteMode.of(mode)
    try:
        client = make_client(config)
    except EsError as exc:  # half a credential pair in the environment
        raise IndexSetupError(str(exc)) from None
    try:
        if mode is WriteMode.DOCUMENT:
            _create_if_missing(client, config, index)
        ensure_score_mapping(client, index, owns_documents=mode is WriteMode.DOCUMENT)
        ensure_guard_script(client)
    except EsError as exc:
        if exc.status is None or exc.status in _SETUP_STATUSES:
            raise IndexSetupError(usage_message(exc, config), exc.status) from None
        raise
    finally:
        client.close()


def _create_if_missing(client: Elasticsearch, config: EsConfig, index: str) -> None:
    with scrubbed_errors(f"checking index {index!r} at {config.safe_url()}"):
        exists = client.indices.exists(index=index)
    if not exists:
        # 400 when another job created it in between: the put-mapping that follows covers that case
        with scrubbed_errors(f"creating index {index!r}"):
            client.options(ignore_status=400).indices.create(index=index, mappings={"properties": document_properties()})
