"""Conversation data for stages 1, 2 and 2.5: one record schema, readers for the public instruction sets,
generators that write captions / QA / interaction from the prepared shards, and the per-stage mixture.

Layout on disk, beside the sample shards::

    SHARDS/conversations/<split>/<source>.parquet   (schema ``schema.CONVERSATION_SCHEMA``)
    SHARDS/conversations/manifest.json              (counts per split/source/task, unmatched tokens, seed)

Entry points: ``build.build_instructions`` (what ``odvla instructions`` runs) and ``mixture.build_examples``
(the examples table that ``odvla.platform.data.pipeline.build_dataset`` expands).
"""
