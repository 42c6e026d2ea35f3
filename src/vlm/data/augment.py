"""Photo-like augmentation of train images at export: N extra copies per image, same target.

The transforms are what happens when a receipt is photographed: a small rotation and
perspective tilt (one warp), brightness and contrast changes, a soft shadow, blur,
sensor noise and JPEG re-compression. Copies are made for the train split only, so
validation and test scores stay on real images.

Every copy is a pure function of (seed, policy, source document, source bytes, copy
index): its parameters come from a ``random.Random`` seeded with those, and its noise
from a numpy generator seeded the same way, so a rerun makes identical bytes. The
file name carries a hash of that identity, so a copy on disk with the right name was
made by this exact plan and a rerun (or a resume after a kill) reuses it without
redoing it. Copies keep the source's width and height, so their image tokens, and
``vlm stats``'s budget, are the same as the original's.

Work runs in a process pool (decoding and warping 4-megapixel photos is CPU-bound;
threads would serialise on the GIL in the numpy and torch glue), one torch thread
per worker, so the bytes do not depend on how many workers ran.
"""

from __future__ import annotations

import hashlib
import io
import math
import random
import shutil
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageFilter

from vlm.data.images import image_info
from vlm.errors import VlmError
from vlm.fsutil import atomic_write_bytes, sha256_file
from vlm.output import info
from vlm.procs import die_with_parent

# Bump when a transform's code changes what it makes: old copies then stop matching by name.
AUGMENT_VERSION = 1


@dataclass(frozen=True)
class Policy:
    """Ranges the per-copy parameters are drawn from; ``p_*`` is how often a transform is applied."""

    rotate_deg: float  # +- degrees
    tilt: float  # corner shift, as a fraction of the side (perspective)
    brightness: tuple[float, float]
    contrast: tuple[float, float]
    p_shadow: float
    shadow: tuple[float, float]  # darkening at the shadow's deepest edge
    p_blur: float
    blur_sigma: tuple[float, float]
    p_noise: float
    noise_std: tuple[float, float]  # grey levels
    jpeg_quality: tuple[int, int]  # every copy is re-encoded as JPEG at a quality from this range


POLICIES = {
    "light": Policy(1.5, 0.02, (0.9, 1.1), (0.9, 1.1), 0.2, (0.1, 0.25), 0.3, (0.3, 0.8), 0.3, (2.0, 5.0), (75, 95)),
    "medium": Policy(3.0, 0.04, (0.8, 1.2), (0.8, 1.2), 0.4, (0.15, 0.4), 0.5, (0.4, 1.2), 0.5, (3.0, 8.0), (55, 90)),
    "heavy": Policy(5.0, 0.07, (0.65, 1.35), (0.7, 1.3), 0.6, (0.2, 0.55), 0.7, (0.5, 1.8), 0.7, (5.0, 14.0), (35, 80)),
}


# More copies than this mostly repeat the same few transforms, and a typo (--augment 20000) would fill the disk.
MAX_COPIES = 100
IN_FLIGHT_PER_WORKER = 4  # copies queued per worker: the pool is kept busy, and memory stays flat whatever N is


@dataclass(frozen=True)
class AugmentSpec:
    """``copies`` augmented copies of each train image, drawn from ``policy`` with ``seed``."""

    copies: int
    policy: str = "medium"
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.copies <= MAX_COPIES:
            raise VlmError(f"--augment takes 0 to {MAX_COPIES} copies per image, not {self.copies}",
                           hint="a few copies (2 to 10) is the usual range; more mostly repeats the same transforms.")
        if self.policy not in POLICIES:
            raise VlmError(f"unknown --augment-policy {self.policy!r}", hint=f"use one of {', '.join(POLICIES)}.")

    def describe(self) -> dict[str, Any]:
        """What the manifest records: how the copies were made."""
        return {"copies": self.copies, "policy": self.policy, "seed": self.seed, "version": AUGMENT_VERSION,
                "splits": ["train"], "ranges": asdict(POLICIES[self.policy])}


def copy_key(spec: AugmentSpec, doc_id: str, source_sha256: str, copy: int) -> str:
    """The identity of one copy; names its file and seeds its randomness."""
    text = f"vlm-augment:{AUGMENT_VERSION}:{spec.seed}:{spec.policy}:{doc_id}:{source_sha256}:{copy}"
    return hashlib.sha256(text.encode()).hexdigest()


def plan_copy(policy: Policy, key: str, width: int, height: int) -> list[dict[str, Any]]:
    """The transforms of one copy, in order, with every parameter drawn (rounded, so the record is exact)."""
    rng = random.Random(key)
    steps: list[dict[str, Any]] = []
    shift = [[round(rng.uniform(0, policy.tilt), 4), round(rng.uniform(0, policy.tilt), 4)] for _ in range(4)]
    steps.append({"name": "perspective", "rotate_deg": round(rng.uniform(-policy.rotate_deg, policy.rotate_deg), 3),
                  "corner_shift": shift})
    steps.append({"name": "brightness", "factor": round(rng.uniform(*policy.brightness), 3)})
    steps.append({"name": "contrast", "factor": round(rng.uniform(*policy.contrast), 3)})
    if rng.random() < policy.p_shadow:
        steps.append({"name": "shadow", "strength": round(rng.uniform(*policy.shadow), 3),
                      "angle_deg": round(rng.uniform(0, 360), 1), "edge": round(rng.uniform(0.3, 0.7), 3),
                      "softness": round(rng.uniform(0.05, 0.3), 3)})
    if rng.random() < policy.p_blur:
        steps.append({"name": "blur", "sigma": round(rng.uniform(*policy.blur_sigma), 3)})
    if rng.random() < policy.p_noise:
        steps.append({"name": "noise", "std": round(rng.uniform(*policy.noise_std), 2),
                      "seed": rng.randrange(2**32)})
    steps.append({"name": "jpeg", "quality": rng.randint(*policy.jpeg_quality)})
    return steps


def _warp(img, step: dict[str, Any], fill: list[int]):
    """Rotation and perspective in one resampling: each corner moves inward, then all turn about the centre."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    w, h = img.size
    corners = [(0, 0), (w - 1, 0), (w - 1, h - 1), (0, h - 1)]
    inward = [(1, 1), (-1, 1), (-1, -1), (1, -1)]
    angle = math.radians(step["rotate_deg"])
    cx, cy = (w - 1) / 2, (h - 1) / 2
    end = []
    for (x, y), (sx, sy), (fx, fy) in zip(corners, inward, step["corner_shift"]):
        x, y = x + sx * fx * w, y + sy * fy * h
        dx, dy = x - cx, y - cy
        end.append([round(cx + dx * math.cos(angle) - dy * math.sin(angle)),
                    round(cy + dx * math.sin(angle) + dy * math.cos(angle))])
    return F.perspective(img, [list(c) for c in corners], end, interpolation=InterpolationMode.BILINEAR, fill=fill)


def _shadow(img, step: dict[str, Any]):
    """A soft straight-edged shadow (a hand or phone over the paper), multiplied in.

    The ramp is smooth, so it is drawn at 1/8 scale and resized: same look, a tenth of the work.
    """
    w, h = img.size
    sw, sh = max(2, w // 8), max(2, h // 8)
    t = math.radians(step["angle_deg"])
    xs = np.linspace(0, 1, sw, dtype=np.float32)[None, :] * math.cos(t)
    ys = np.linspace(0, 1, sh, dtype=np.float32)[:, None] * math.sin(t)
    lo = min(0.0, math.cos(t)) + min(0.0, math.sin(t))
    hi = max(0.0, math.cos(t)) + max(0.0, math.sin(t))
    pos = (xs + ys - lo) / (hi - lo)  # 0..1 along the shadow's direction
    ramp = np.clip((pos - step["edge"]) / step["softness"] + 0.5, 0, 1)
    mask = Image.fromarray(np.round(255 * (1 - step["strength"] * ramp)).astype(np.uint8))
    mask = mask.resize((w, h), Image.Resampling.BILINEAR).convert("RGB")
    return ImageChops.multiply(img, mask)


def _noise(img, step: dict[str, Any]):
    """Gaussian luma noise, as phone sensors show, from its own seeded generator."""
    w, h = img.size
    gen = np.random.default_rng(step["seed"])
    grain = gen.standard_normal((h, w), dtype=np.float32) * step["std"] + 128.5
    grain = Image.fromarray(np.clip(grain, 0, 255).astype(np.uint8)).convert("RGB")
    return ImageChops.add(img, grain, scale=1.0, offset=-128)


def apply_plan(data: bytes, steps: list[dict[str, Any]]) -> bytes:
    """The JPEG bytes of ``data`` (any image) after ``steps``. Same input and steps, same bytes."""
    from torchvision.transforms.v2 import functional as F

    with Image.open(io.BytesIO(data)) as src:
        img = src.convert("RGB")
    # The paper's margin colour fills what the warp uncovers (a black wedge would be a new, false cue).
    fill = [int(c) for c in img.resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))]
    by_name = {s["name"]: s for s in steps}
    img = _warp(img, by_name["perspective"], fill)
    img = F.adjust_brightness(img, by_name["brightness"]["factor"])
    img = F.adjust_contrast(img, by_name["contrast"]["factor"])
    if "shadow" in by_name:
        img = _shadow(img, by_name["shadow"])
    if "blur" in by_name:
        # PIL's blur, not F.gaussian_blur: on a PIL image torchvision converts to a float tensor and convolves,
        # 0.63 s against 0.13 s per 1600x2400 photo on one core.
        img = img.filter(ImageFilter.GaussianBlur(by_name["blur"]["sigma"]))
    if "noise" in by_name:  # after the blur: sensor noise is not smoothed by the lens
        img = _noise(img, by_name["noise"])
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=by_name["jpeg"]["quality"])
    return buf.getvalue()


def _init_worker() -> None:
    import torch

    die_with_parent()  # a killed export (SIGKILL, SIGTERM) must not leave its 700 MB workers running
    torch.set_num_threads(1)  # one thread per process: the pool is the parallelism, and bytes stay thread-free


def _make_copy(task: tuple[str, str, list[dict[str, Any]]]) -> None:
    source, target, steps = task
    atomic_write_bytes(target, apply_plan(Path(source).read_bytes(), steps), fsync=False)


def augment_split(out_dir: Path, split: str, spec: AugmentSpec, exported: list[dict[str, Any]],
                  images: dict[str, Any], workers: int, progress=None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Make (or reuse) ``spec.copies`` copies of every exported image of ``split``.

    ``exported`` holds the export's good results (``id``, ``record``, ``image``). Adds one entry per
    copy to ``images`` (file, sha256, source, transforms) and returns the copies' records, in
    source order then copy order, and a summary (made, reused).
    """
    policy = POLICIES[spec.policy]
    planned = []
    for r in exported:
        src = r["image"]
        for k in range(spec.copies):
            key = copy_key(spec, r["id"], src["sha256"], k)
            copy_id = f"{r['id']}-aug{k}"
            rel = Path("images") / f"{split}_aug" / f"{copy_id}-{key[:12]}.jpg"
            planned.append((r, k, copy_id, rel, key, plan_copy(policy, key, src["width"], src["height"])))
    todo = [(str(out_dir / r["image"]["file"]), str(out_dir / rel), steps)
            for r, _, _, rel, _, steps in planned if not (out_dir / rel).is_file()]
    _check_room(out_dir, split, exported, spec, len(planned), len(todo))
    task = progress.add_task(f"augment {split}", total=len(planned), completed=len(planned) - len(todo)) \
        if progress else None
    if todo:
        n_workers = max(1, min(workers, len(todo)))
        with ProcessPoolExecutor(max_workers=n_workers, initializer=_init_worker, mp_context=_spawn()) as pool:
            for _ in _bounded_map(pool, _make_copy, todo, n_workers * IN_FLIGHT_PER_WORKER):
                if progress:
                    progress.advance(task)
    records = []
    for r, k, copy_id, rel, key, steps in planned:
        path = out_dir / rel
        ext, width, height = image_info(path.read_bytes())
        if (width, height) != (r["image"]["width"], r["image"]["height"]):
            raise VlmError(f"augmented copy {path} is {width}x{height}, its source {r['image']['file']} is "
                           f"{r['image']['width']}x{r['image']['height']}", hint="delete the copy and rerun.")
        images[copy_id] = {"file": rel.as_posix(), "sha256": sha256_file(path), "bytes": path.stat().st_size,
                           "format": ext, "width": width, "height": height, "source": r["id"],
                           "source_sha256": r["image"]["sha256"], "copy": k, "key": key,
                           "transforms": steps}
        record = dict(r["record"], id=copy_id, images=[str(path.resolve())])
        records.append(record)
    return records, {"copies": len(planned), "made": len(todo), "reused": len(planned) - len(todo)}


def _bounded_map(pool: ProcessPoolExecutor, fn, items: list, in_flight: int) -> Iterator[Any]:
    """``pool.map`` with at most ``in_flight`` tasks submitted at a time (pool.map submits them all at once)."""
    queue: deque = deque()
    for item in items:
        queue.append(pool.submit(fn, item))
        if len(queue) >= in_flight:
            yield queue.popleft().result()
    while queue:
        yield queue.popleft().result()


def _check_room(out_dir: Path, split: str, exported: list[dict[str, Any]], spec: AugmentSpec, n_copies: int,
                n_new: int) -> None:
    """Say how many copies and about how much disk they take before starting; refuse when the disk lacks room."""
    if not n_copies:
        return
    per_copy = sum(r["image"]["bytes"] for r in exported) / max(1, len(exported))  # a copy is about its source
    need = per_copy * n_new
    free = shutil.disk_usage(out_dir).free
    info(f"augment {split}: {n_copies} copies ({spec.copies} of each of {len(exported)} images), {n_new} to make, "
         f"about {_size(need)} on disk ({_size(free)} free)")
    if need > free:
        raise VlmError(f"augmenting {split} needs about {_size(need)} and {out_dir} has {_size(free)} free",
                       hint="free some space, or pass a smaller --augment.")


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _spawn():
    import multiprocessing

    # spawn, not fork: the exporting process already runs pyarrow's threads, and a fork can copy a held lock.
    return multiprocessing.get_context("spawn")
