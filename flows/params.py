"""Flows whose parameters are JSON already: recorded as they are, without FastAPI.

Prefect records a new flow run's parameters through FastAPI's general
``jsonable_encoder``; its first use imports FastAPI's routing and OpenAPI models,
0.15-0.25 s of CPU at the start of every process that runs a night (``qlcp run``,
a work-pool worker's flow-run process), on cores the frame workers are starting
on.  QLCP's flow parameters are paths, config dicts and names: JSON's own types.
"""

from __future__ import annotations

import json

from prefect import Flow


def _json_native(v) -> bool:
    """True for JSON's own types (str, int, float, bool, None; lists and str-keyed dicts of them)."""
    if v is None or isinstance(v, (str, int, float, bool)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_json_native(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _json_native(x) for k, x in v.items())
    return False


class JsonParamsFlow(Flow):
    """A flow that records JSON-native parameters as they are (a copy); others the general way."""

    def serialize_parameters(self, parameters):
        if _json_native(parameters):
            return json.loads(json.dumps(parameters))
        return super().serialize_parameters(parameters)

    def with_options(self, **kwargs):
        new = super().with_options(**kwargs)       # Prefect builds a plain Flow
        new.__class__ = type(self)
        return new


def json_params_flow(**kwargs):
    """``@flow(**kwargs)`` making a :class:`JsonParamsFlow`."""
    return lambda fn: JsonParamsFlow(fn, **kwargs)
