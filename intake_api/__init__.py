"""The HTTP API (FastAPI): request intake and lookup, batch operations, model-limit settings, the
OpenAI webhook receiver, health checks and the OpenAPI docs. The work is done by
``batch_pipeline.intake`` and ``batch_pipeline.admin``; this package is routing, schemas and errors.
"""
