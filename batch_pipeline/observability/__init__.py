"""What the processes tell operators: logs (``logs``) and the API process's own metrics (``metrics``).

A layer of its own between the store and the shared basics: every process (the CLI, the API, Dagster
runs) can set its logging up here, and it may use ``redaction`` to keep secrets out of what it writes.
"""
