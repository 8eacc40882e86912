"""A strict Elasticsearch test double: a real HTTP server on 127.0.0.1.

The real ``elasticsearch`` client (8.x or 9.x) talks to it over HTTP, so every request
the project makes is built, serialised and parsed by the real client. It speaks only the
REST subset the project uses. Anything else -- an endpoint, a URL parameter, a body field,
a mapping option or a setting it does not implement -- gets an Elasticsearch-shaped 400
that names it, so a wrong or new request fails the test instead of being accepted and
ignored. ``tests/test_es_double_conformance.py`` holds each behaviour against what
Elasticsearch does; run it against a real cluster with ``ES_URL``.

Covered: ``GET /``; index templates (settings, mappings); create/delete/exists index
(settings ``number_of_shards`` 1, ``number_of_replicas``, ``refresh_interval``); put/get
mapping with type checking, objects, multi-fields and date formats; ``PUT /idx/_settings``;
``PUT|GET /idx/_doc/id``; refresh, both explicit and every ``index.refresh_interval`` (1 s by
default, ``-1`` off) as in Elasticsearch, checked lazily on each read against the double's
clock; ``_count``; ``_bulk`` with ``index`` and ``update`` (``doc``, ``doc_as_upsert``,
``detect_noop``) and ``require_alias``; ``_pit`` open and close (a new ``pit_id`` on every
page); ``_search`` with ``pit``, ``slice``, ``sort``, ``search_after``, ``size``, ``from``,
``_source``, ``track_total_hits`` and the ``bool``/``range``/``term``/``exists``/``match_all``
queries; aggregations (``terms``, ``histogram``, ``percentiles``, ``filter``, ``value_count``, ``min``,
``max``: ``aggregations.py``) and the score monitor's inline Painless scripts (``painless.py``, in a
``script`` query or a ``histogram``); ``rank_feature`` fields; stored scripts (``/_scripts/<id>``) and scripted bulk
updates (``script``, ``upsert``, ``scripted_upsert``), for the one stored script the project
uses, which ``scripts.py`` runs as Python. Faults can be injected (error answers, dropped
connections, per-item bulk errors such as 429 storms) and authentication can be required.

The package, one module per concern; each endpoint module holds its handlers, each registered
beside its code in the module's route table (``rest.Routes``):

* ``server.py``: :class:`EsDouble` (lifecycle, test API, faults, auth), the HTTP handler, the joined routes
* ``state.py``: :class:`~tests.es_double.state.Cluster`, what the endpoints share (indices and their
  documents and refreshes, templates, points in time, stored scripts)
* endpoints: ``info.py`` (``GET /``), ``templates.py`` (``_index_template``), ``indices.py`` (indices,
  mappings, settings, refresh), ``documents.py`` (``_doc``, ``_mget``), ``bulk.py``, ``search.py``
  (``_search``, ``_count``, ``_pit``), ``scripts.py`` (``_scripts`` and the guard script as Python)
* helpers: ``rest.py`` (route tables, parameter and body checks), ``errors.py``, ``faults.py``,
  ``dates.py``, ``mappings.py``, ``queries.py``, ``aggregations.py``, ``painless.py``
* ``canned_search.py``: not the double, a one-answer ``_search`` stand-in for ``imagescore query``

Run it by hand with ``python -m tests.es_double --port 9200``.
"""
from __future__ import annotations

from tests.es_double.errors import EsHttpError
from tests.es_double.server import SUPPORTED_COMPAT, EsDouble, RequestRecord

__all__ = ["SUPPORTED_COMPAT", "EsDouble", "EsHttpError", "RequestRecord"]
