"""The settings of a serve application (every model it serves), shared by the CLI and Ray Serve config files.

``latent-ddpm serve`` fills it from its flags; a Ray Serve config file or a KubeRay ``RayService`` passes the
same fields as ``args`` of ``import_path: latent_ddpm.serve.app:build`` (deploy/kuberay/rayservice.yaml).
Defaults and descriptions come from ``options.py``, as the flags' do.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from latent_ddpm.runtime.backends import BACKENDS, EXECUTION_PRECISIONS
from latent_ddpm.runtime.limits import DEFAULT_MAX_PENDING_IMAGES
from latent_ddpm.serve.options import DEFAULTS, HELP


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bundles: list[str] = Field(default_factory=list, description=HELP["bundles"])
    replicas: int | None = Field(default=None, ge=1, description=HELP["replicas"])
    min_replicas: int | None = Field(default=None, ge=0, description=HELP["min_replicas"])
    max_replicas: int | None = Field(default=None, ge=1, description=HELP["max_replicas"])
    cpus_per_replica: float = Field(
        default=DEFAULTS["cpus_per_replica"], gt=0, description=HELP["cpus_per_replica"]
    )
    gpus_per_replica: float = Field(
        default=DEFAULTS["gpus_per_replica"], ge=0, description=HELP["gpus_per_replica"]
    )
    threads: int | None = Field(default=None, ge=1, description=HELP["threads"])
    backend: str = Field(default=DEFAULTS["backend"], description=HELP["backend"])
    providers: list[str] | None = Field(default=None, description=HELP["providers"])
    precision: str = Field(default=DEFAULTS["precision"], description=HELP["precision"])
    max_images: int = Field(default=DEFAULTS["max_images"], ge=1, description=HELP["max_images"])
    max_rows: int = Field(default=DEFAULTS["max_rows"], ge=2, description=HELP["max_rows"])
    max_pending_images: int | None = Field(
        default=DEFAULTS["max_pending_images"], ge=1, description=HELP["max_pending_images"]
    )
    max_queued: int = Field(default=DEFAULTS["max_queued"], ge=1, description=HELP["max_queued"])

    @field_validator("backend", "precision")
    @classmethod
    def _one_of_the_runtimes(cls, value: str, info: ValidationInfo) -> str:
        known = {"backend": BACKENDS, "precision": EXECUTION_PRECISIONS}[str(info.field_name)]
        if value not in known:
            raise ValueError(f"{value!r} is not one of {', '.join(known)}")
        return value

    @model_validator(mode="after")
    def _replicas_one_way(self) -> ServeConfig:
        autoscale = self.min_replicas is not None or self.max_replicas is not None
        if self.replicas is not None and autoscale:
            raise ValueError("give either replicas or min_replicas/max_replicas, not both")
        if autoscale and self.max_replicas is None:
            raise ValueError("autoscaling needs max_replicas")
        if autoscale and self.max_replicas < self.min_replica_count:  # type: ignore[operator]
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is more than max_replicas ({self.max_replicas})"
            )
        if self.max_pending_images is not None and self.max_pending_images < self.max_images:
            raise ValueError(
                f"max_pending_images ({self.max_pending_images}) is below max_images ({self.max_images}): a "
                "request of max_images images could never be admitted"
            )
        return self

    @property
    def capacity(self) -> int:
        """Images a replica's engine holds at once (queued or running): the engine's default unless set."""
        if self.max_pending_images is not None:
            return self.max_pending_images
        return max(DEFAULT_MAX_PENDING_IMAGES, self.max_images)

    @property
    def min_replica_count(self) -> int:
        return 1 if self.min_replicas is None else self.min_replicas

    @property
    def replica_threads(self) -> int:
        """ONNX Runtime threads: the replica's CPUs unless set (more threads than CPUs only contend)."""
        return self.threads if self.threads is not None else max(1, int(self.cpus_per_replica))

    def model_options(self) -> dict[str, Any]:
        """``Deployment.options`` of each model's deployment."""
        options: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.cpus_per_replica, "num_gpus": self.gpus_per_replica},
            # Every request holds at least one image, so the engine never holds more requests than its
            # capacity in images: Ray Serve hands a replica all it can hold, which then batch together.
            "max_ongoing_requests": self.capacity,
            "max_queued_requests": self.max_queued,
        }
        if self.max_replicas is None:
            options["num_replicas"] = self.replicas or 1
        else:
            options["autoscaling_config"] = {
                "min_replicas": self.min_replica_count,
                "max_replicas": self.max_replicas,
                # Scale out once a replica holds more requests than fill one U-Net call (one-image guided
                # requests, two rows each): beyond that they wait in its engine's queue.
                "target_ongoing_requests": max(1, self.max_rows // 2),
            }
        return options
