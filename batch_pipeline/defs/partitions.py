"""One dynamic partition per batch, so the Dagster UI lists batches and offers per-batch re-runs.

``batch_run_config`` gives every run of a partitioned job its ``batch_id`` tag from the partition key,
whoever launches it (a sensor, the Launchpad, a backfill): the instance's tag limit (one run per
unique ``batch_id``, dagster.yaml) then holds for hand-launched runs too.
"""

import dagster as dg

batch_partitions = dg.DynamicPartitionsDefinition(name="batches")


def batch_run_config(stage: str) -> dg.PartitionedConfig:
    return dg.PartitionedConfig(
        partitions_def=batch_partitions,
        run_config_for_partition_key_fn=lambda _key: {},
        tags_for_partition_key_fn=lambda key: {"batch_id": key, "stage": stage},
    )
