"""The Dagster code location: resources, partitions, sensors, jobs and schedules.

``batch_pipeline.defs.definitions`` assembles them; everything else in ``batch_pipeline`` stays free of
dagster imports so the API and the RabbitMQ consumer start fast.
"""
