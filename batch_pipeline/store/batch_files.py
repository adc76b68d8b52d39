"""The OpenAI file ids of one batch (input, output, error), for downloading them."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

FILE_IDS_OF_A_BATCH = """
SELECT id, state, openai_input_file_id, openai_output_file_id, openai_error_file_id
FROM batchman.batches WHERE id = %s
"""


async def batch_file_ids(conn: psycopg.AsyncConnection, batch_id: int) -> dict[str, Any] | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(FILE_IDS_OF_A_BATCH, (batch_id,))
    return await cur.fetchone()
