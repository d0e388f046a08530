"""Generate digits from a bundle and judge them: conditional accuracy and classifier-space FID.

The reference for the FID is half A of the classifier's held-out digits (never seen in its training); the
real-vs-real *floor* is the same distance from half A to as many held-out digits of half B as there are
generated images, so both figures carry the same finite-sample bias and the floor is the best a perfect
generator could score. (The shipped diffusion model trained on all 5,000 digits, so like FID on CIFAR this
measures closeness to the training distribution, not generalisation.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from latent_ddpm.errors import InputError
from latent_ddpm.evaluate.classifier import DigitClassifier, check_image_shape
from latent_ddpm.evaluate.digits import NUM_CLASSES, halves, load_digits, split
from latent_ddpm.evaluate.frechet import fit_gaussian, frechet_distance
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
    sampler: str
    steps: int
    guidance_scale: float
    eta: float
    seed: int
    batch: int  # batch i is generated with seed + i, so the batch size is part of what fixes the images
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
    # confusion[i][j]: images asked for class_names[i] that the classifier read as digit j
    confusion: list[list[int]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Evaluation:
    report: Report
    images: np.ndarray  # (N, H, W, 1) uint8, in generation order
    asked: np.ndarray | None  # digit asked for per image (None: unconditional)
    read: np.ndarray  # digit the classifier read per image


class RealReference:
    """Classifier features of the held-out digits, split into two class-balanced halves A and B."""

    def __init__(self, classifier: DigitClassifier) -> None:
        images, labels = load_digits()
        a, b = halves(split(labels).held_out, labels)
        _, self.features_a = classifier.run(images[a])
        _, features_b = classifier.run(images[b])
        self.gaussian_a = fit_gaussian(self.features_a)
        self._b_by_class = [features_b[labels[b] == c] for c in range(NUM_CLASSES)]

    def floor(self, per_class: int) -> tuple[float, int]:
        """Real-vs-real FID (A against ``per_class`` of each class from B) and the number of B images."""
        b = np.concatenate([f[:per_class] for f in self._b_by_class])
        return frechet_distance(self.gaussian_a, fit_gaussian(b)), len(b)


def digit_of_class(pipe: Pipeline) -> np.ndarray | None:
    """Digit (0-9) the classifier should see for each of the bundle's classes; None if unconditional."""
    cond = pipe.bundle.conditioning
    if cond is None:
        return None
    digits = {str(d): d for d in range(NUM_CLASSES)}
    unknown = [n for n in cond.class_names if n not in digits]
    if unknown:
        raise InputError(
            f"bundle {pipe.bundle.root} has classes {', '.join(map(repr, unknown))}; the digit classifier "
            f"can only check classes named '0'..'9'"
        )
    return np.asarray([digits[n] for n in cond.class_names], dtype=np.int64)


def check_settings(pipe: Pipeline, s: Settings) -> None:
    """Everything that can be refused before minutes of sampling."""
    check_image_shape(pipe.bundle.image_shape, f"bundle {pipe.bundle.root}")
    if isinstance(s.per_class, bool) or not isinstance(s.per_class, int) or s.per_class < MIN_PER_CLASS:
        raise InputError(f"per_class must be an integer >= {MIN_PER_CLASS}, got {s.per_class!r}")
    if isinstance(s.batch, bool) or not isinstance(s.batch, int) or s.batch < 1:
        raise InputError(f"batch must be an integer >= 1, got {s.batch!r}")
    digit_of_class(pipe)


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
    classifier: DigitClassifier,
    reference: RealReference,
    settings: Settings,
    progress: bool = True,
) -> Evaluation:
    """Sample ``per_class`` images of every class (10 x per_class for an unconditional model) and judge them."""
    check_settings(pipe, settings)
    digit = digit_of_class(pipe)
    num_classes = NUM_CLASSES if digit is None else len(digit)
    n = settings.per_class * num_classes
    # Classes interleaved, so every batch holds all of them and a partial run is still balanced.
    labels = None if digit is None else np.tile(np.arange(num_classes), settings.per_class)
    starts = range(0, n, settings.batch)
    steps = settings.steps if settings.steps is not None else pipe.bundle.defaults.steps
    images, seconds = [], 0.0
    with ProgressBar(len(starts) * steps, desc="sampling (steps x batches)", disable=not progress) as bar:
        for i, start in enumerate(starts):
            stop = min(start + settings.batch, n)
            result = pipe.generate(
                num_images=stop - start,
                steps=settings.steps,
                sampler=settings.sampler,
                eta=settings.eta,
                seed=settings.seed + i,  # one seed per batch: reruns and partial reruns repeat exactly
                class_labels=None if labels is None else labels[start:stop].tolist(),
                guidance_scale=settings.guidance_scale,
                callback=lambda *_: bar.update(1),
            )
            images.append(result.images)
            seconds += result.timings.total_s
    all_images = np.concatenate(images)
    logits, features = classifier.run(all_images)
    read = logits.argmax(1)
    cfid = frechet_distance(reference.gaussian_a, fit_gaussian(features))
    floor, floor_n = reference.floor(min(settings.per_class, len(reference.features_a) // NUM_CLASSES))
    report = Report(
        bundle=str(pipe.bundle.root),
        **result.settings,  # as resolved by the pipeline: the same for every batch
        seed=settings.seed,
        batch=settings.batch,
        num_images=n,
        conditional=digit is not None,
        cfid=cfid,
        cfid_std=bootstrap_std(reference, features),
        cfid_floor=floor,
        reference_images=len(reference.features_a),
        floor_images=floor_n,
        seconds_per_image=seconds / n,
        total_seconds=seconds,
        classifier_held_out_accuracy=classifier.held_out_accuracy,
    )
    asked = None if digit is None else digit[labels]
    if digit is not None:
        report.accuracy = float((read == asked).mean())
        names = pipe.bundle.conditioning.class_names
        report.per_class_accuracy = {
            names[k]: float((read[labels == k] == digit[k]).mean()) for k in range(num_classes)
        }
        confusion = np.zeros((num_classes, NUM_CLASSES), dtype=np.int64)
        np.add.at(confusion, (labels, read), 1)
        report.confusion = confusion.tolist()
    return Evaluation(report, all_images, asked, read)
