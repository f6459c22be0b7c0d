"""The sinks: where scores and events leave the stream.

``sinks.writer`` consumes cvm's topics and writes them to ClickHouse in batches (``sinks.routes`` says what rows
each topic's records become, ``sinks.columns`` converts records to a table's rows, ``sinks.clickhouse`` holds the
connection, migrations and inserts); ``sinks.http`` serves the analytics API, the dashboard and ``/metrics``
(``sinks.openapi`` describes it; ``sinks.endpoints`` holds the dashboard's endpoints and their parameters,
``sinks.dashboard`` their queries and JSON, ``sinks.page`` its page); ``sinks.service`` is ``cvm sink`` and
``sinks.query`` is ``cvm sql``.
Importing this package loads none of them.
"""

from __future__ import annotations

__all__: list[str] = []
