"""A DoFn that holds one Elasticsearch client per worker, the way Beam means per-worker connections to be held."""
from __future__ import annotations

from typing import Any

import apache_beam as beam

from es.client import EsConfig, make_client


class EsClientDoFn(beam.DoFn):
    """Makes ``self._client`` from ``self._config`` in ``setup`` and closes it in ``teardown``.

    Subclasses set ``self._config`` (an :class:`~es.client.EsConfig`) in ``__init__``;
    ``node_class`` swaps the transport node (the bulk writer meters its requests that way).
    """

    node_class: Any = None
    _config: EsConfig
    _client = None

    def setup(self) -> None:
        self._client = make_client(self._config, node_class=self.node_class)

    def teardown(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
