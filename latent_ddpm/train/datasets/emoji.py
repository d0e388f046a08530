r"""Rebuild the shipped emoji data set (``latent_ddpm/data/emoji_32.npz``) from two Debian packages.

    apt-get install fonts-noto-color-emoji unicode-data
    python -m latent_ddpm.train.datasets.emoji --out latent_ddpm/data/emoji_32.npz \
        --grid docs/images/emoji_classes.png

Every fully-qualified emoji of Unicode's ``emoji-test.txt``, drawn with Pillow from Noto Color Emoji and
labelled by its Unicode emoji group. The choices, and why:

* Classes: the groups of ``emoji-test.txt`` in the file's (CLDR) order, less "Component" (bare skin tones
  and hair styles, which are not emoji on their own): 9 classes.
* Skin tones: only emoji without a skin-tone modifier (U+1F3FB..U+1F3FF) are kept. A tone variant differs
  from its base in one colour only, and the 1,785 of them would make People & Body 2,148 of the 3,655
  fully-qualified emoji, a class of near-copies. Minimally- and unqualified forms draw the same glyphs as
  their fully-qualified twins and are skipped too, and so are emoji drawn exactly like an earlier one
  (9: territories that fly another's flag, "family" drawn as "family: man, man, boy"), so that no
  training image is there twice. What remains: 1,861 emoji, 85 to 362 per class.
* Drawing: the bitmap (CBDT) font at its one strike, 109 px, each glyph's 136x128 cell centred in the same
  136x136 square (no cropping to the ink, so sizes and positions stay as the font designs them), alpha-
  composited on flat grey (128, 128, 128) at full size, then shrunk with Lanczos. Mid-grey is ~0 in the
  models' [-1, 1] range and leaves both white emoji (clouds, flags) and black ones (black heart) visible.
* 32x32, not 64x64: the array takes 2.5 MB compressed at 32 px and 6.7 MB at 64, too much for a data set
  riding in the package beside its models, and 32 px keeps the digits' 8x8 latents and CPU-sized training.

Reproducible: the file's order, no randomness, and a zip with fixed timestamps, so the same packages and
Pillow give the same arrays (and, with the same zlib, the same file). The JSON beside the array records the
packages' versions, the files' SHA-256 and Pillow's FreeType / HarfBuzz / Raqm versions: Raqm shapes the
ZWJ sequences, keycaps and flags into one glyph each, and the build refuses to run without it.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import subprocess
import sys
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

from latent_ddpm.errors import InputError, LatentDDPMError
from latent_ddpm.files import atomic_write
from latent_ddpm.runtime.images import make_grid

# Debian package -> the file of it that the build reads (found with `dpkg -L`, so no path is hard-coded).
FONT_SOURCE = ("fonts-noto-color-emoji", "NotoColorEmoji.ttf")
TEST_SOURCE = ("unicode-data", "emoji-test.txt")
SHIPPED = "emoji_32.npz"  # in latent_ddpm/data: what `data.source = "emoji_32"` trains on
FONT_SIZE = 109  # the CBDT font's only bitmap strike; other sizes are refused by FreeType
CELL = 136  # the strike's advance; glyph cells are 136x128, centred in a 136x136 square
BACKGROUND = (128, 128, 128)
DROPPED_GROUP = "Component"
SKIN_TONES = range(0x1F3FB, 0x1F400)  # the Fitzpatrick modifiers U+1F3FB..U+1F3FF
_LINE = re.compile(r"^(?P<points>[0-9A-F ]+?)\s*;\s*(?P<status>[\w-]+)\s*#\s*\S+\s+E\d+\.\d+\s+(?P<name>.+)$")


@dataclass(frozen=True)
class Emoji:
    sequence: str
    group: str
    name: str


def read_emoji_test(text: str) -> tuple[list[Emoji], list[str], Counter[str]]:
    """The kept emoji in file order, the kept group names in file order, and what was skipped and why."""
    kept: list[Emoji] = []
    groups: list[str] = []
    skipped: Counter[str] = Counter()
    group = ""
    for line in text.splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
            continue
        match = _LINE.match(line)
        if not match:
            continue
        points = [int(p, 16) for p in match["points"].split()]
        if match["status"] != "fully-qualified":
            skipped[match["status"]] += 1
        elif group == DROPPED_GROUP:
            skipped["Component group"] += 1
        elif any(p in SKIN_TONES for p in points):
            skipped["skin-tone variant"] += 1
        else:
            if group not in groups:
                groups.append(group)
            kept.append(Emoji("".join(map(chr, points)), group, match["name"]))
    return kept, groups, skipped


def render(font: ImageFont.FreeTypeFont, sequence: str, size: int) -> np.ndarray:
    """One emoji -> uint8 (size, size, 3): drawn at full size on the background, then shrunk."""
    canvas = Image.new("RGB", (CELL, CELL), BACKGROUND)
    top = (CELL - font.getbbox(sequence, mode="RGBA")[3]) // 2
    ImageDraw.Draw(canvas).text((0, top), sequence, font=font, embedded_color=True)
    return np.asarray(canvas.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


def build(font_path: Path, test_path: Path, size: int) -> tuple[dict[str, np.ndarray], dict]:
    """The data set's arrays and the facts about how they were made (the sidecar JSON)."""
    emoji, groups, skipped = read_emoji_test(test_path.read_text(encoding="utf-8"))
    font = ImageFont.truetype(str(font_path), FONT_SIZE, layout_engine=ImageFont.Layout.RAQM)
    advance = font.getlength("\U0001f600", mode="RGBA")
    split = [e.name for e in emoji if font.getlength(e.sequence, mode="RGBA") != advance]
    if split:
        raise InputError(
            f"{font_path.name} does not draw {len(split)} of the {len(emoji)} emoji as one glyph "
            f"(e.g. {split[0]!r}): a font older than {test_path.name}?"
        )
    pictures: dict[bytes, tuple[Emoji, np.ndarray]] = {}
    for e in emoji:  # the first of several emoji drawn alike (shared flags) stands for them all
        image = render(font, e.sequence, size)
        pictures.setdefault(image.tobytes(), (e, image))
    skipped["same picture as an earlier emoji"] = len(emoji) - len(pictures)
    emoji = [e for e, _ in pictures.values()]
    arrays = {
        "images": np.stack([image for _, image in pictures.values()]),
        "labels": np.array([groups.index(e.group) for e in emoji], dtype=np.uint8),
        "class_names": np.array(groups),
        "emoji": np.array([e.sequence for e in emoji]),
        "names": np.array([e.name for e in emoji]),
    }
    counts = Counter(e.group for e in emoji)
    meta = {
        "data_set": f"emoji_{size}",
        "built_by": "python -m latent_ddpm.train.datasets.emoji",
        "sources": {
            "font": _source_facts(FONT_SOURCE[0], font_path),
            "emoji_test": _source_facts(TEST_SOURCE[0], test_path),
        },
        "renderer": {
            "pillow": Image.__version__,
            **{lib: features.version(lib) for lib in ("freetype2", "harfbuzz", "raqm")},
            "font_size": FONT_SIZE,
            "cell": CELL,
            "background": list(BACKGROUND),
            "resample": "LANCZOS",
        },
        "images": len(emoji),
        "class_counts": {g: counts[g] for g in groups},
        "skipped": dict(sorted(skipped.items())),
        "sha256": {name: hashlib.sha256(a.tobytes()).hexdigest() for name, a in arrays.items()},
    }
    return arrays, meta


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A compressed .npz (what ``np.load`` reads) whose zip entries carry a fixed date: same arrays, same
    bytes (``np.savez_compressed`` stamps the current time)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w") as f:
                np.lib.format.write_array(f, array, allow_pickle=False)
    return buffer.getvalue()


def class_grid(
    images: np.ndarray, labels: np.ndarray, class_names: Sequence[str], per_class: int = 16
) -> Image.Image:
    """A picture of the data set: one row per class, ``per_class`` images spread evenly over the class (in
    file order, so neighbouring subgroups all show), the class name and count on the left, pixels doubled."""
    rows = []
    for label in range(len(class_names)):
        members = np.flatnonzero(labels == label)
        rows.append(images[members[np.linspace(0, len(members) - 1, per_class).round().astype(int)]])
    grid = Image.fromarray(make_grid(np.concatenate(rows), nrow=per_class))
    grid = grid.resize((grid.width * 2, grid.height * 2), Image.Resampling.NEAREST)
    font = ImageFont.load_default(size=16)
    captions = [f"{name} ({np.count_nonzero(labels == i)})" for i, name in enumerate(class_names)]
    margin = 12 + max(round(font.getlength(c)) for c in captions)
    picture = Image.new("RGB", (margin + grid.width, grid.height), "white")
    picture.paste(grid, (margin, 0))
    row_height = grid.height / len(class_names)
    for i, caption in enumerate(captions):
        xy = (margin - 8, (i + 0.5) * row_height)
        ImageDraw.Draw(picture).text(xy, caption, fill="black", font=font, anchor="rm")
    return picture


def debian_file(package: str, file_name: str) -> Path:
    """The installed file ``file_name`` of Debian ``package``, or an error saying what to install."""
    try:
        listing = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise InputError(f"no dpkg here to find {file_name}: pass its path (see --help)") from None
    found = [Path(p) for p in listing.stdout.splitlines() if Path(p).name == file_name]
    if listing.returncode != 0 or not found:
        raise InputError(f"{file_name} not found: apt-get install {package} (or pass its path, see --help)")
    return found[0]


def _source_facts(package: str, path: Path) -> dict[str, str | None]:
    """Which package version and file the build read (by name: no absolute path goes into the package)."""
    try:
        query = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=False
        )
        version = query.stdout.strip() if query.returncode == 0 else None
    except FileNotFoundError:
        version = None
    return {
        "package": package,
        "version": version,
        "file": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m latent_ddpm.train.datasets.emoji",
        description="\n\n".join(__doc__.split("\n\n")[:2])
        + "\n\nWhat is kept and how it is drawn: docs/emoji.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out", type=Path, help="build the data set into this .npz (a .json lands beside it)"
    )
    parser.add_argument(
        "--grid", type=Path, help="draw a PNG of it, one row per class (without --out: of the shipped array)"
    )
    parser.add_argument("--size", type=int, default=32, help="image side in pixels, 8..136 (default: 32)")
    parser.add_argument(
        "--font", type=Path, help=f"{FONT_SOURCE[1]} (default: the one of Debian's {FONT_SOURCE[0]})"
    )
    parser.add_argument(
        "--emoji-test", type=Path, help=f"{TEST_SOURCE[1]} (default: the one of Debian's {TEST_SOURCE[0]})"
    )
    args = parser.parse_args(argv)
    if not (args.out or args.grid):
        parser.error("nothing to do: give --out, --grid or both")
    if args.grid and args.grid.suffix != ".png":
        parser.error(f"--grid {args.grid}: must end in .png")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        arrays = _build_from_args(args) if args.out else None
    except LatentDDPMError as exc:
        print(f"emoji: error: {exc}", file=sys.stderr)
        return 2
    if arrays is None:
        with resources.as_file(resources.files("latent_ddpm.data") / SHIPPED) as path, np.load(path) as npz:
            arrays = {name: npz[name] for name in npz.files}
    if args.grid:
        png = io.BytesIO()
        class_grid(arrays["images"], arrays["labels"], arrays["class_names"].tolist()).save(png, "PNG")
        atomic_write(args.grid, png.getvalue())
        print(f"wrote {args.grid}")
    return 0


def _build_from_args(args: argparse.Namespace) -> dict[str, np.ndarray]:
    """Check every argument and source before any work, build, write the array and its JSON."""
    if args.out.suffix != ".npz":
        raise InputError(f"--out {args.out}: must end in .npz")
    if not 8 <= args.size <= CELL:
        raise InputError(f"--size {args.size}: must be in 8..{CELL} (the font's glyphs are {CELL} px)")
    if not features.check("raqm"):
        raise InputError("this Pillow has no Raqm layout: emoji sequences would draw as several glyphs")
    font = args.font or debian_file(*FONT_SOURCE)
    test = args.emoji_test or debian_file(*TEST_SOURCE)
    for path in (font, test):
        if not path.is_file():
            raise InputError(f"{path}: no such file")
    arrays, meta = build(font, test, args.size)
    atomic_write(args.out, npz_bytes(arrays))
    atomic_write(args.out.with_suffix(".json"), json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    counts = ", ".join(f"{g} {n}" for g, n in meta["class_counts"].items())
    print(f"wrote {args.out}: {meta['images']} emoji, {args.size}x{args.size} RGB ({counts})")
    return arrays


if __name__ == "__main__":
    sys.exit(main())
