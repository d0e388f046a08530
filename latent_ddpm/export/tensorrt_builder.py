"""Build TensorRT plans from a bundle's ONNX graphs and keep ``engines/`` current: the engine cache's build side.

``EngineCache.ensure(role)`` returns a plan that matches this TensorRT, this GPU, the graph in the bundle and
the requested profile/precision, building it when it is missing or stale. Only ``latent-ddpm build-engines``
(``tensorrt_build.build_engines``) builds; the runtime's ``tensorrt`` backend loads plans and refuses stale ones.
Both judge a plan with ``runtime.backends.tensorrt_plans.plan_status``, so they agree on what is stale; the
build also compares what was asked for (profile, precision, builder options), the runtime takes it as built.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from latent_ddpm import __version__
from latent_ddpm.errors import BackendUnavailableError, BundleError, InputError
from latent_ddpm.export.tensorrt_options import BuilderOptions, builder_options
from latent_ddpm.export.tensorrt_profiles import Profile, model_profile, profile_to_json
from latent_ddpm.export.tensorrt_write import write_manifest
from latent_ddpm.files import atomic_write
from latent_ddpm.runtime.backends.tensorrt_cache import Environment, engine_fields, engine_key
from latent_ddpm.runtime.backends.tensorrt_cuda import environment, import_cudart, import_tensorrt, trt_logger
from latent_ddpm.runtime.backends.tensorrt_manifest import (
    TIMING_CACHE_FILE,
    BuildSettings,
    EngineRecord,
    Manifest,
    engines_dir,
    plan_file,
    read_manifest,
    rebuild_command,
)
from latent_ddpm.runtime.backends.tensorrt_plans import plan_status
from latent_ddpm.runtime.bundle import ENGINES_DIR, Bundle, ModelFile

log = logging.getLogger("latent_ddpm.tensorrt")
Progress = Callable[[str], None]
LOCK_FILE = ".build.lock"


class EngineCache:
    """The ``engines/`` folder of one bundle on this GPU with this TensorRT, built for ``settings``."""

    def __init__(self, bundle: Bundle, settings: BuildSettings, progress: Progress | None = None):
        self.bundle = bundle
        self.trt = import_tensorrt()
        self.cudart = import_cudart()
        self.env: Environment = environment(self.trt, self.cudart)
        self.dir = engines_dir(bundle.root)
        self.progress = progress or log.warning  # a build takes minutes: say so by default
        self.manifest, self.manifest_problem = self._read_manifest(settings)

    # ------------------------------------------------------------------ what a valid plan looks like

    def expected(self, model: ModelFile) -> tuple[dict[str, Any], Profile, BuilderOptions]:
        """Key fields, profile and builder options for ``model`` here; InputError if no such build is possible."""
        settings = self.manifest.settings
        profile = model_profile(self.bundle, model, settings)
        options = builder_options(
            model.path.name,
            model.precision,
            settings.precision,
            tensorrt_version=self.env.tensorrt_version,
            weak_typing_available=hasattr(self.trt.BuilderFlag, "FP16"),
            compute_capability=self.env.compute_capability,
        )
        fields = engine_fields(
            onnx_sha256=model.sha256,
            external_data_sha256=model.external_data_sha256,
            environment=self.env,
            profile=profile_to_json(profile),
            precision=settings.precision,
            builder=options.to_json(),
        )
        return fields, profile, options

    def cannot_build_reason(self) -> str | None:
        if not hasattr(self.trt, "Builder"):
            return (
                f"this TensorRT {self.env.tensorrt_version} install has no builder (a lean/dispatch runtime)"
            )
        target = self.dir if self.dir.exists() else self.bundle.root
        if not os.access(target, os.W_OK):
            return f"{target} is not writable (copy the bundle somewhere writable and build there)"
        return None

    # ------------------------------------------------------------------ the one entry point

    def ensure(self, role: str, *, force: bool = False) -> tuple[EngineRecord, bytes]:
        """The valid plan for ``role`` (record and bytes), rebuilt if stale or ``force`` and if possible here."""
        model = self.bundle.models[role]
        plan = f"{ENGINES_DIR}/{plan_file(role)}"
        try:
            fields, profile, options = self.expected(model)
        except InputError as exc:
            raise InputError(f"{plan} cannot be built here: {exc}") from None
        record, plan_bytes, reason = self._check(role, model, fields)
        if reason is None and not force:
            return record, plan_bytes  # type: ignore[return-value]
        why_not = self.cannot_build_reason()
        if why_not:
            raise BundleError(
                f"{reason or plan + ': rebuild requested'}, and it cannot be rebuilt here: {why_not}; "
                f"run {rebuild_command(self.bundle.root, self.manifest.settings, force=force)} where it can"
            )
        with self._lock():
            self.manifest, self.manifest_problem = self._read_manifest(self.manifest.settings)
            record, plan_bytes, reason = self._check(role, model, fields)  # another process may have built it
            if reason is None and not force:
                return record, plan_bytes  # type: ignore[return-value]
            self.progress(f"{plan}: rebuilding (forced)" if reason is None else f"{reason}: rebuilding it")
            return self._build(role, model, fields, profile, options)

    def finish(self) -> None:
        """Record the build settings and drop plans of models the bundle no longer has (a removed encoder)."""
        with self._lock():
            for role in sorted(set(self.manifest.engines) - set(self.bundle.models)):
                rec = self.manifest.engines.pop(role)
                (self.dir / rec.file).unlink(missing_ok=True)
                self.progress(f"{ENGINES_DIR}/{rec.file}: removed (the bundle has no {role} model)")
            self.manifest.created_by = f"latent-ddpm {__version__}"
            write_manifest(self.dir, self.manifest)

    def _check(
        self, role: str, model: ModelFile, fields: dict[str, Any]
    ) -> tuple[EngineRecord | None, bytes | None, str | None]:
        if self.manifest_problem:
            return None, None, self.manifest_problem
        record = self.manifest.engines.get(role)
        plan_bytes, reason = plan_status(self.dir, role, model.path.name, record, fields)
        return record, plan_bytes, reason

    # ------------------------------------------------------------------ building

    def _build(
        self, role: str, model: ModelFile, fields: dict[str, Any], profile: Profile, options: BuilderOptions
    ) -> tuple[EngineRecord, bytes]:
        settings = self.manifest.settings
        batch = profile[model.inputs[0].name]
        self.progress(
            f"building {ENGINES_DIR}/{plan_file(role)} from {model.path.name}: {settings.precision}, "
            f"batch {batch.min[0]}..{batch.max[0]} (opt {batch.opt[0]}), TensorRT {self.env.tensorrt_version} "
            f"on {self.env.device_name}; this can take minutes"
        )
        start = time.perf_counter()
        plan, timing = build_plan(
            self.trt,
            model,
            profile,
            options,
            workspace_bytes=settings.workspace_bytes,
            timing_cache=self._timing_cache(),
            progress=self.progress,
        )
        seconds = time.perf_counter() - start
        atomic_write(self.dir / plan_file(role), plan)
        atomic_write(self.dir / TIMING_CACHE_FILE, timing)
        record = EngineRecord(
            file=plan_file(role),
            key=engine_key(fields),
            fields=fields,
            plan_sha256=hashlib.sha256(plan).hexdigest(),
            plan_bytes=len(plan),
            build_seconds=round(seconds, 3),
            built_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        )
        self.manifest.engines[role] = record
        self.manifest.timing_cache = {"file": TIMING_CACHE_FILE, **self.env.to_json()}
        self.manifest.created_by = f"latent-ddpm {__version__}"
        write_manifest(self.dir, self.manifest)
        self.manifest_problem = None
        self.progress(f"built {ENGINES_DIR}/{record.file} ({len(plan) / 2**20:.1f} MiB) in {seconds:.1f} s")
        return record, plan

    def _timing_cache(self) -> bytes:
        """The saved timing cache if it was measured here; TensorRT's cache is per GPU and release too."""
        path = self.dir / TIMING_CACHE_FILE
        saved = self.manifest.timing_cache or {}
        if not path.is_file() or {k: saved.get(k) for k in self.env.to_json()} != self.env.to_json():
            return b""
        return path.read_bytes()

    def _read_manifest(self, settings: BuildSettings) -> tuple[Manifest, str | None]:
        try:
            manifest = read_manifest(self.dir)
        except BundleError as exc:
            return Manifest(settings=settings), f"{exc} (all engines will be rebuilt)"
        if manifest is None:
            return Manifest(settings=settings), None
        manifest.settings = settings
        return manifest, None

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialise builds of one bundle across processes (POSIX); elsewhere the atomic renames still hold."""
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:
            yield
            return
        with open(self.dir / LOCK_FILE, "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------------- TensorRT calls (GPU only)


def build_plan(
    trt: ModuleType,
    model: ModelFile,
    profile: Profile,
    options: BuilderOptions,
    *,
    workspace_bytes: int | None,
    timing_cache: bytes,
    progress: Progress,
) -> tuple[bytes, bytes]:
    """Parse ``model``'s ONNX file and build a serialized plan with one optimization profile.

    Returns the plan and the updated timing cache. Explicit batch is the only mode in TensorRT 10+, so
    ``create_network`` takes only the STRONGLY_TYPED flag (ignored by TensorRT 11, where it is always on).
    """
    logger = trt_logger(trt)
    logger.take_errors()
    builder = trt.Builder(logger)
    flags = 0
    if options.typing == "strong":
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(model.path)):  # resolves external weights beside the file
        errors = "; ".join(str(parser.get_error(i)) for i in range(min(parser.num_errors, 3)))
        raise BundleError(f"{model.path.name}: TensorRT's ONNX parser rejected it: {errors}")
    graph_inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    if graph_inputs != set(profile):
        raise BundleError(
            f"{model.path.name}: the graph's inputs {sorted(graph_inputs)} are not the ones bundle.json declares "
            f"{sorted(profile)}"
        )
    config = builder.create_builder_config()
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    for name in options.flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in options.cleared_flags:
        if hasattr(trt.BuilderFlag, name):
            config.clear_flag(getattr(trt.BuilderFlag, name))
    opt_profile = builder.create_optimization_profile()
    for name, r in profile.items():
        opt_profile.set_shape(name, r.min, r.opt, r.max)
    config.add_optimization_profile(opt_profile)
    try:
        cache = config.create_timing_cache(timing_cache)
    except Exception:  # an unreadable cache file only costs build time
        cache = None
    if cache is None or not config.set_timing_cache(cache, False):  # False: refuse another device's cache
        config.set_timing_cache(config.create_timing_cache(b""), False)
    monitor = _progress_monitor(trt, progress)
    if monitor is not None:
        config.progress_monitor = monitor
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendUnavailableError(
            f"TensorRT could not build an engine from {model.path.name}: {logger.take_errors()}"
        )
    return bytes(memoryview(serialized)), bytes(memoryview(config.get_timing_cache().serialize()))


def _progress_monitor(trt: ModuleType, progress: Progress) -> Any:
    """Report the builder's top-level phases (TensorRT >= 10 has IProgressMonitor)."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class _Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None:
                progress(f"  TensorRT: {phase_name}")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # keep building

        def phase_end(self, phase_name: str) -> None:
            pass

    return _Monitor()
