"""OpenAI Batch Manager: the domain core (config, store, batching, OpenAI, results, delivery).

Importing this package must not import dagster: the intake API and the RabbitMQ consumer use the core
without paying for the orchestrator. The Dagster code location lives in ``batch_pipeline.defs``.
"""

__version__ = "0.1.0"
