"""One dynamic partition per batch, so the Dagster UI lists batches and offers per-batch re-runs."""

import dagster as dg

batch_partitions = dg.DynamicPartitionsDefinition(name="batches")
