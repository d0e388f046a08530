"""Generate images from a bundle and judge them: conditional accuracy and classifier-space FID.

The judge is the classifier of the data set the bundle draws (evaluate/judged.py). The reference for the FID
is half A of that judge's held-out images (never seen in its training); the real-vs-real *floor* is the same
distance from half A to as many held-out images of half B as there are generated images (at most half B),
so both figures carry a similar finite-sample bias and the floor is about the best a perfect generator could
score. (The shipped diffusion models trained on their whole data sets, so like FID on CIFAR this measures
closeness to the training distribution, not generalisation; see evaluate/memorisation.py for copying.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from latent_ddpm.errors import InputError
from latent_ddpm.evaluate.classifier import Judge
from latent_ddpm.evaluate.frechet import fit_gaussian, frechet_distance
from latent_ddpm.evaluate.judged import JudgedData, judged_data_for
from latent_ddpm.provenance import portable_path
from latent_ddpm.runtime.pipeline import Pipeline
from latent_ddpm.runtime.progress import ProgressBar

MIN_PER_CLASS = 2  # a covariance needs at least two samples
BOOTSTRAP_ROUNDS = 20  # resamples of the generated features behind cfid_std


@dataclass(frozen=True)
class Settings:
    """Sampling settings; None takes the bundle's defaults (resolved values are reported)."""

    per_class: int = 100
    sampler: str | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    eta: float | None = None
    seed: int = 0
    batch: int = 100


@dataclass
class Report:
    bundle: str
    judge: str  # the judged data set: "digits", "emoji"
    sampler: str
    steps: int
    guidance_scale: float
    eta: float
    seed: int
    batch: int  # images per generate call (image k is seeded seed + k whatever the batch)
    num_images: int
    conditional: bool
    cfid: float
    cfid_std: float  # bootstrap spread over the generated images: differences below ~2x this are noise
    cfid_floor: float
    reference_images: int
    floor_images: int
    seconds_per_image: float
    total_seconds: float
    classifier_held_out_accuracy: float | None
    accuracy: float | None = None
    per_class_accuracy: dict[str, float] = field(default_factory=dict)
    # confusion[i][j]: images asked for class_names[i] that the judge read as its class j
    confusion: list[list[int]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Evaluation:
    report: Report
    images: np.ndarray  # (N, H, W, C) uint8, in generation order
    asked: np.ndarray | None  # judge's class asked for per image (None: unconditional)
    read: np.ndarray  # judge's class read per image
    features: np.ndarray  # the judge's features per image, behind the cFID


class RealReference:
    """Judge features of its held-out images, split into two class-balanced halves A and B."""

    def __init__(self, judge: Judge) -> None:
        data = judge.data
        images, labels = data.load()
        a, b = data.halves(data.split(labels).held_out, labels)
        _, self.features_a = judge.run(images[a])
        _, features_b = judge.run(images[b])
        self.gaussian_a = fit_gaussian(self.features_a)
        self._b_by_class = [features_b[labels[b] == c] for c in range(data.num_classes)]

    def floor(self, per_class: int) -> tuple[float, int]:
        """Real-vs-real FID (A against ``per_class`` of each class from B, or all B holds of it) and the
        number of B images."""
        b = np.concatenate([f[:per_class] for f in self._b_by_class])
        return frechet_distance(self.gaussian_a, fit_gaussian(b)), len(b)


def class_names(pipe: Pipeline) -> list[str] | None:
    cond = pipe.bundle.conditioning
    return None if cond is None else list(cond.class_names)


def check_settings(pipe: Pipeline, s: Settings) -> JudgedData:
    """Everything that can be refused before minutes of sampling; the data set the bundle is judged by."""
    data = judged_data_for(pipe.bundle.image_shape, class_names(pipe), f"bundle {pipe.bundle.name}")
    if isinstance(s.per_class, bool) or not isinstance(s.per_class, int) or s.per_class < MIN_PER_CLASS:
        raise InputError(f"per_class must be an integer >= {MIN_PER_CLASS}, got {s.per_class!r}")
    if isinstance(s.batch, bool) or not isinstance(s.batch, int) or s.batch < 1:
        raise InputError(f"batch must be an integer >= 1, got {s.batch!r}")
    return data


def bootstrap_std(reference: RealReference, features: np.ndarray, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    n = len(features)
    values = [
        frechet_distance(reference.gaussian_a, fit_gaussian(features[rng.integers(0, n, n)]))
        for _ in range(BOOTSTRAP_ROUNDS)
    ]
    return float(np.std(values))


def evaluate(
    pipe: Pipeline,
    judge: Judge,
    reference: RealReference,
    settings: Settings,
    progress: bool = True,
) -> Evaluation:
    """Sample ``per_class`` images of every class (or of as many as the judge has, for an unconditional
    model) and judge them."""
    check_settings(pipe, settings)
    names = class_names(pipe)
    judged = None if names is None else judge.class_index(names)
    num_classes = judge.data.num_classes if judged is None else len(judged)
    n = settings.per_class * num_classes
    # Classes interleaved, so every batch holds all of them and a partial run is still balanced.
    labels = None if judged is None else np.tile(np.arange(num_classes), settings.per_class)
    starts = range(0, n, settings.batch)
    steps = settings.steps if settings.steps is not None else pipe.bundle.defaults.steps
    images, seconds = [], 0.0
    with ProgressBar(len(starts) * steps, desc="sampling (steps x batches)", disable=not progress) as bar:
        for start in starts:
            stop = min(start + settings.batch, n)
            result = pipe.generate(
                num_images=stop - start,
                steps=settings.steps,
                sampler=settings.sampler,
                eta=settings.eta,
                # image k seeded seed + k (the runtime seeds image j of a call seed + j): every image its own
                # noise, and reruns, partial reruns and other batch sizes repeat exactly
                seed=settings.seed + start,
                class_labels=None if labels is None else labels[start:stop].tolist(),
                guidance_scale=settings.guidance_scale,
                callback=lambda *_: bar.update(1),
            )
            images.append(result.images)
            seconds += result.timings.total_s
    all_images = np.concatenate(images)
    logits, features = judge.run(all_images)
    read = logits.argmax(1)
    cfid = frechet_distance(reference.gaussian_a, fit_gaussian(features))
    floor, floor_n = reference.floor(settings.per_class)
    report = Report(
        bundle=portable_path(pipe.bundle.root),
        judge=judge.data.name,
        **result.settings,  # as resolved by the pipeline: the same for every batch
        seed=settings.seed,
        batch=settings.batch,
        num_images=n,
        conditional=judged is not None,
        cfid=cfid,
        cfid_std=bootstrap_std(reference, features),
        cfid_floor=floor,
        reference_images=len(reference.features_a),
        floor_images=floor_n,
        seconds_per_image=seconds / n,
        total_seconds=seconds,
        classifier_held_out_accuracy=judge.held_out_accuracy,
    )
    asked = None if judged is None else judged[labels]
    if judged is not None and names is not None and labels is not None:
        report.accuracy = float((read == asked).mean())
        report.per_class_accuracy = {
            names[k]: float((read[labels == k] == judged[k]).mean()) for k in range(num_classes)
        }
        confusion = np.zeros((num_classes, judge.data.num_classes), dtype=np.int64)
        np.add.at(confusion, (labels, read), 1)
        report.confusion = confusion.tolist()
    return Evaluation(report, all_images, asked, read, features)
