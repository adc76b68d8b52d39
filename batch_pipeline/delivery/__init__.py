"""Result delivery: webhooks (signed, SSRF-checked) and RabbitMQ (confirmed), with retries.

No dagster imports here: ``batch_pipeline.defs.delivery`` wraps ``deliverer.deliver_batch`` in a job.
"""
