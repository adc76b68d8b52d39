"""Writing a finished batch's output and error files, streamed line by line from its input file.

Lines are executed in file order: the first ``executed`` lines ran (and succeeded or failed per their
outcome), the rest never ran and are reported with ``batch_expired`` / ``batch_cancelled``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .faults import CANCELLED_ERROR, EXPIRED_ERROR, TIMEOUT_ERROR, Outcome, http_failure
from .ids import digest
from .responses import LineRejected, build_reply
from .textgen import line_tokens


@dataclass
class ResultFiles:
    output_path: Path
    error_path: Path
    output_lines: int = 0
    error_lines: int = 0
    usage: dict[str, int] = field(default_factory=lambda: {"input_tokens": 0, "output_tokens": 0})


class _Writer:
    """Formats request output objects and routes them to the output or the error file."""

    def __init__(self, batch_id: str, result: ResultFiles, out: IO[bytes], err: IO[bytes]) -> None:
        self.batch_id, self.result, self.out, self.err = batch_id, result, out, err

    def usage_add(self, input_tokens: int, output_tokens: int) -> None:
        self.result.usage["input_tokens"] += input_tokens
        self.result.usage["output_tokens"] += output_tokens

    def write(
        self,
        custom_id: str,
        status: int | None,
        body: dict[str, Any] | None,
        error: dict[str, str] | None = None,
    ) -> None:
        # One digest per line gives both ids: batch_req_<first half>, req_<second half>.
        line_id = digest(self.batch_id, custom_id)
        response = None
        if status is not None:
            response = {"status_code": status, "request_id": f"req_{line_id[32:]}", "body": body}
        record = {
            "id": f"batch_req_{line_id[:32]}",
            "custom_id": custom_id,
            "response": response,
            "error": error,
        }
        data = json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        if status == 200:
            self.out.write(data)
            self.result.output_lines += 1
        else:
            self.err.write(data)
            self.result.error_lines += 1


def write_results(
    *,
    batch_id: str,
    endpoint: str,
    input_path: Path,
    outcomes: bytearray,
    executed: int,
    unrun_status: str,
    created: int,
    output_path: Path,
    error_path: Path,
) -> ResultFiles:
    """Write both files (either may end up empty) and total the usage of the successful lines."""
    result = ResultFiles(output_path, error_path)
    unrun_error = CANCELLED_ERROR if unrun_status == "cancelled" else EXPIRED_ERROR
    with open(input_path, "rb") as source, open(output_path, "wb") as out, open(error_path, "wb") as err:
        writer = _Writer(batch_id, result, out, err)
        index = 0
        for raw in source:
            if not raw.strip():
                continue
            request = json.loads(raw)
            if index >= executed:
                writer.write(request["custom_id"], None, None, unrun_error)
            else:
                _execute(writer, endpoint, raw, request, Outcome(outcomes[index]), created)
            index += 1
    return result


def _execute(
    writer: _Writer, endpoint: str, raw: bytes, request: dict[str, Any], outcome: Outcome, created: int
) -> None:
    custom_id = request["custom_id"]
    if outcome == Outcome.REQUEST_TIMEOUT:
        writer.write(custom_id, None, None, TIMEOUT_ERROR)
        return
    if outcome not in (Outcome.OK, Outcome.REJECTED):
        writer.write(custom_id, *http_failure(outcome))
        return
    try:
        # The seed covers the whole input line (custom_id + body): same line, same reply.
        seed = hashlib.sha256(raw.strip()).hexdigest()
        reply = build_reply(endpoint, request["body"], created, seed=seed, input_tokens=line_tokens(raw))
    except LineRejected as exc:
        error = {"message": exc.message, "type": "invalid_request_error", "param": exc.param, "code": None}
        writer.write(custom_id, exc.status, {"error": error})
        return
    writer.usage_add(reply.input_tokens, reply.output_tokens)
    writer.write(custom_id, 200, reply.body)
