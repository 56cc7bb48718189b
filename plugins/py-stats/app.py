"""Example jobbox plugin `py-stats`, in Python: summarises a series of numbers.

The payload names a series and its values:

    {"series": "latency_ms", "values": [12, 7.5, 30, 9]}

and the output is its summary:

    {"series": "latency_ms", "count": 4, "min": 7.5, "max": 30, "mean": 14.625,
     "median": 10.5, "seen": 4}

With the kv grant, the plugin also keeps a running count of the values seen
per series (`seen/<series>`), committed with the job's completion; `seen` in
the output is that count after this job (without the grant it is the job's
own count). Invalid input (malformed JSON, a missing or empty `values`, a
value that is not a number, an unknown field) is a permanent error naming the
field.

Built with componentize-py against the jobbox WIT (scripts/build-python-plugin).
"""

import json
import math

from componentize_py_types import Err
from wit_world import WitWorld
from wit_world.imports import kv, log
from wit_world.imports.types import Job, JobError_Permanent, Output

FIELDS = {"series", "values"}


def invalid(message: str) -> Err:
    return Err(JobError_Permanent(f"invalid series: {message}"))


def parse(payload: str):
    try:
        data = json.loads(payload)
    except ValueError as e:
        raise invalid(f"payload: {e}")
    if not isinstance(data, dict):
        raise invalid("payload: expected a JSON object")
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise invalid(f"unknown field `{unknown[0]}`")
    series = data.get("series")
    if not isinstance(series, str) or not series:
        raise invalid("series: expected a non-empty string")
    values = data.get("values")
    if not isinstance(values, list) or not values:
        raise invalid("values: expected a non-empty array of numbers")
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise invalid(f"values[{i}]: expected a number, got {json.dumps(v)}")
    return series, values


def median(values):
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def running_count(series: str, count: int) -> int:
    """Adds `count` to the series' running count in kv, if granted."""
    key = f"seen/{series}"
    try:
        before = kv.get(key)
    except Err as e:
        log.log(log.Level.DEBUG, f"no running count: {e.value}")
        return count
    total = (int(before) if before is not None else 0) + count
    kv.set(key, str(total).encode())
    return total


class WitWorld(WitWorld):
    def run(self, job: Job) -> Output:
        series, values = parse(job.payload)
        seen = running_count(series, len(values))
        summary = {
            "series": series,
            "count": len(values),
            "min": min(values),
            "max": max(values),
            "mean": sum(values) / len(values),
            "median": median(values),
            "seen": seen,
        }
        log.log(
            log.Level.INFO,
            f"py-stats: {series} has {len(values)} values, mean {summary['mean']} "
            f"(attempt {job.attempt}, key {job.idempotency_key})",
        )
        return Output(json.dumps(summary, separators=(",", ":"), sort_keys=True))
