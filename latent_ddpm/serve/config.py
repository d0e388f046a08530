"""The settings of a serve application: one model, shared by the CLI and Ray Serve's config files.

``latent-ddpm serve`` fills it from its flags; a Ray Serve config file or a KubeRay ``RayService`` passes the
same fields as ``args`` of ``import_path: latent_ddpm.serve.app:build`` (deploy/kuberay/rayservice.yaml).
Each field's description is its flag's help.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Ray Serve's own default port, so that its tooling and docs apply unchanged.
DEFAULT_PORT = 8000


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bundles: list[str] = Field(
        default_factory=list,
        description="bundle directories, one model each (the model id is the bundle's name); none = the "
        "shipped digits model. On a cluster every node must see the same path.",
    )
    replicas: int | None = Field(
        default=None, ge=1, description="replicas per model (fixed); default 1 unless autoscaling"
    )
    min_replicas: int | None = Field(
        default=None, ge=0, description="autoscale: fewest replicas per model (default 1)"
    )
    max_replicas: int | None = Field(default=None, ge=1, description="autoscale: most replicas per model")
    cpus_per_replica: float = Field(
        default=1.0, gt=0, description="CPUs Ray reserves for each replica (places replicas on nodes)"
    )
    gpus_per_replica: float = Field(default=0.0, ge=0, description="GPUs Ray reserves for each replica")
    threads: int | None = Field(
        default=None, ge=1, description="intra-op threads per model in a replica; default: its CPUs"
    )
    backend: str = Field(default="onnxruntime", description="inference backend: onnxruntime or tensorrt")
    providers: list[str] | None = Field(
        default=None, description="ONNX Runtime execution providers, e.g. CUDAExecutionProvider"
    )
    max_ongoing: int = Field(
        default=4,
        ge=1,
        description="requests one replica holds at once (running or in its own queue); Ray Serve "
        "routes no more to it and autoscales on this load",
    )
    max_queued: int = Field(
        default=128,
        ge=1,
        description="requests that may wait for a free replica, per model and ingress replica; more are "
        "refused with 503",
    )

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
        return self

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
            "max_ongoing_requests": self.max_ongoing,
            "max_queued_requests": self.max_queued,
        }
        if self.max_replicas is None:
            options["num_replicas"] = self.replicas or 1
        else:
            options["autoscaling_config"] = {
                "min_replicas": self.min_replica_count,
                "max_replicas": self.max_replicas,
                # Scale out before a replica's queue fills: at half of what it may hold.
                "target_ongoing_requests": max(1.0, self.max_ongoing / 2),
            }
        return options
