"""The contracts of cvm's messages: the Avro schemas of the upstream events (``*.avsc``, ids in ``registry.json``)
and of the score message (``customer_score.avsc``, checked by :mod:`schemas.scores`)."""

__all__: list[str] = []
