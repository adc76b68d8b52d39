"""A local OpenAI Files + Batches API simulator with deterministic results and fault injection.

Run it with ``batchman simulator`` or ``python -m batch_pipeline.simulator`` and point any OpenAI client at
``http://127.0.0.1:4010/v1``. See ``docs/simulator.md``. Importing this package never imports dagster or
psycopg.
"""

from .app import create_app, serve
from .settings import SimulatorConfigError, SimulatorSettings, load_settings

__all__ = ["SimulatorConfigError", "SimulatorSettings", "create_app", "load_settings", "serve"]
