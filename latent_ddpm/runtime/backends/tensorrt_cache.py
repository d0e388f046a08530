"""The engine cache key: everything that makes a serialized TensorRT plan invalid, hashed.

A plan is only valid for the graph it was built from, the TensorRT release that built it, and the GPU it was
tuned on; it also embodies the profile and precision it was built with. The key is the sha256 of a canonical
JSON of exactly those fields, and the manifest keeps the fields so a mismatch is explained field by field
("built for TensorRT 10.3 on compute capability 8.6; this is TensorRT 10.7 on compute capability 9.0")
instead of surfacing as TensorRT's "Serialization assertion ... Version tag does not match".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from latent_ddpm.runtime.backends.tensorrt_manifest import EngineRecord

# Bump when the meaning of a field changes, so every older plan reads as stale.
KEY_VERSION = 1
# Fields that describe where a plan runs; the others (profile, precision, builder) describe what was asked.
ENVIRONMENT_FIELDS = (
    "key_version",
    "tensorrt_version",
    "compute_capability",
    "device_name",
    "onnx_sha256",
    "external_data_sha256",
)
REQUEST_FIELDS = ("profile", "precision", "builder")
KEY_FIELDS = ENVIRONMENT_FIELDS + REQUEST_FIELDS


@dataclass(frozen=True)
class Environment:
    """The TensorRT release and GPU of this process."""

    tensorrt_version: str
    device_name: str
    compute_capability: tuple[int, int]

    @property
    def compute_capability_str(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"

    def to_json(self) -> dict[str, str]:
        return {
            "tensorrt_version": self.tensorrt_version,
            "compute_capability": self.compute_capability_str,
            "device_name": self.device_name,
        }


def environment_fields(
    *, onnx_sha256: str, external_data_sha256: str | None, environment: Environment
) -> dict[str, Any]:
    """The ENVIRONMENT_FIELDS of a plan that runs here, on this TensorRT and GPU, from this graph."""
    return {
        "key_version": KEY_VERSION,
        **environment.to_json(),
        "onnx_sha256": onnx_sha256,
        "external_data_sha256": external_data_sha256,
    }


def engine_fields(
    *,
    onnx_sha256: str,
    external_data_sha256: str | None,
    environment: Environment,
    profile: Mapping[str, Any],
    precision: str,
    builder: Mapping[str, Any],
) -> dict[str, Any]:
    """Every key field of a plan built here for this request (what ``build-engines`` expects)."""
    return {
        **environment_fields(
            onnx_sha256=onnx_sha256, external_data_sha256=external_data_sha256, environment=environment
        ),
        "profile": dict(profile),
        "precision": precision,
        "builder": dict(builder),
    }


def runnable_fields(built: Mapping[str, Any], here: Mapping[str, Any]) -> dict[str, Any]:
    """The key fields a plan built with ``built`` must have to run where ``here`` (environment fields) holds.

    The runtime asks for no profile or precision of its own: it runs the plan as it was built, so only the
    environment fields can make a plan stale at load time; the build command also compares the request.
    """
    return {**here, **{f: built.get(f) for f in REQUEST_FIELDS}}


def canonical_json(value: Any) -> str:
    """One byte string per value: sorted keys, no whitespace, ASCII only."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def engine_key(fields: Mapping[str, Any]) -> str:
    missing = [f for f in KEY_FIELDS if f not in fields]
    if missing:
        raise ValueError(f"engine key fields missing: {', '.join(missing)}")
    return hashlib.sha256(canonical_json({f: fields[f] for f in KEY_FIELDS}).encode("ascii")).hexdigest()


def stale_reason(
    plan: str,
    onnx_file: str,
    record: EngineRecord | None,
    expected: Mapping[str, Any],
    plan_sha256: str | None,
) -> str | None:
    """Why the plan cannot be used as it is (None when it can). ``plan_sha256`` is None when the file is absent."""
    if record is None:
        return f"{plan} has not been built yet (no entry in the manifest)"
    if plan_sha256 is None:
        return f"{plan} is listed in the manifest but missing"
    try:
        consistent = record.key == engine_key(record.fields)
    except (TypeError, ValueError):  # unserialisable or incomplete fields: a hand-edited manifest
        consistent = False
    if not consistent:
        return f"the manifest entry of {plan} does not match its own key (edited by hand?)"
    if plan_sha256 != record.plan_sha256:
        return f"{plan} is not the file the manifest recorded (sha256 differs: truncated or replaced)"
    if record.key != engine_key(expected):
        return describe_mismatch(plan, onnx_file, record.fields, expected)
    return None


def describe_mismatch(plan: str, onnx_file: str, built: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    """One sentence naming every differing field, the built value first."""
    differ = {f for f in KEY_FIELDS if built.get(f) != now.get(f)}
    sentences = []
    env = [f for f in ENVIRONMENT_FIELDS if f in differ]
    if env:
        sentences.append(
            f"{plan} was built for {_environment_phrase(built, env, onnx_file)}; "
            f"this is {_environment_phrase(now, env, onnx_file)}"
        )
    request = [f for f in REQUEST_FIELDS if f in differ]
    if request:
        was = ", ".join(_request_phrase(f, built.get(f)) for f in request)
        asked = ", ".join(_request_phrase(f, now.get(f)) for f in request)
        sentences.append(f"{plan} was built with {was}; now asked for {asked}")
    return "; ".join(sentences) if sentences else f"{plan} has a different cache key"


def _environment_phrase(fields: Mapping[str, Any], differ: list[str], onnx_file: str) -> str:
    parts = []
    if "tensorrt_version" in differ:
        parts.append(f"TensorRT {fields.get('tensorrt_version')}")
    if "compute_capability" in differ:
        device = f"compute capability {fields.get('compute_capability')} ({fields.get('device_name')})"
        parts = [f"{parts[0]} on {device}"] if parts else [device]
    elif "device_name" in differ:
        device = f"the {fields.get('device_name')}"
        parts = [f"{parts[0]} on {device}"] if parts else [device]
    if "onnx_sha256" in differ:
        parts.append(f"{onnx_file} with sha256 {_short(fields.get('onnx_sha256'))}")
    if "external_data_sha256" in differ:
        parts.append(f"external weights with sha256 {_short(fields.get('external_data_sha256'))}")
    if "key_version" in differ:
        parts.append(f"engine cache key version {fields.get('key_version')}")
    return ", ".join(parts)


def _request_phrase(field: str, value: Any) -> str:
    if field == "precision":
        return f"precision {value}"
    if field == "builder" and isinstance(value, Mapping):
        flags = ",".join(value.get("flags", [])) or "none"
        return f"{value.get('typing')} typing with flags {flags}"
    if field == "profile" and isinstance(value, Mapping):
        shapes = "; ".join(
            f"{name} {r.get('min')}..{r.get('max')}"
            for name, r in sorted(value.items())
            if isinstance(r, Mapping)
        )
        return f"profile {shapes}"
    return f"{field} {value!r}"


def _short(sha: Any) -> str:
    return f"{sha[:12]}..." if isinstance(sha, str) else repr(sha)
