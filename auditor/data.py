"""Evaluation data for the classifier path: the zoo's own sets, ImageFolder and flat folders.

The set is decoded once, up front, into one tensor: a corrupt file stops the run with its
name before any probe starts, and probes slice batches without decoding again. Decoded
files stay uint8 (a quarter of the memory of float32) until a batch is taken.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from auditor.errors import AuditError
from auditor.models.base import ModelAdapter

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
UNLABELLED = -1


@dataclass
class EvalData:
    name: str
    images: torch.Tensor  # N x C x H x W, uint8 or float in [0, 1]
    labels: torch.Tensor  # N, long; UNLABELLED where label-free
    labelled: bool
    source: str  # "zoo", "imagefolder" or "flat"
    total: int  # images available before --limit

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int, device: torch.device | str = "cpu"):
        """(images in [0, 1] as float32, labels) on the device, in order."""
        for start in range(0, len(self), batch_size):
            yield self.batch(slice(start, start + batch_size), device)

    def batch(self, index, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[index].to(device)
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        return x, self.labels[index].to(device)

    def facts(self) -> dict:
        return {"name": self.name, "n": len(self), "labelled": self.labelled, "layout": self.source, "available": self.total}


def _decode(path: Path, mode: str, transform) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            image = im.convert(mode)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise AuditError(f"{path}: cannot read this image ({exc.__class__.__name__}); remove or replace it") from exc
    return transform(image)


def load_data(adapter: ModelAdapter, path: str | None, *, limit: int | None, seed: int, progress=None) -> EvalData:
    """The evaluation set, subset to `limit` images by a seeded draw, decoded into memory."""
    if path is None:
        return _limit(_zoo_data(adapter), limit, seed)
    root = Path(path)
    if not root.is_dir():
        raise AuditError(f"--data {root}: no such folder")
    files, labels, labelled, layout = _scan_folder(root, adapter)
    if not files:
        raise AuditError(f"--data {root}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    total = len(files)
    keep = _subset(total, limit, seed)
    files, labels = [files[i] for i in keep], [labels[i] for i in keep]
    mode = "L" if adapter.channels == 1 else "RGB"
    transform = adapter.preprocess.transform()
    bar = progress(len(files), "decode images") if progress else None
    images = []
    for f in files:
        images.append(_decode(f, mode, transform))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return EvalData(name=root.name, images=torch.stack(images), labels=torch.tensor(labels, dtype=torch.long),
                    labelled=labelled, source=layout, total=total)


def _subset(n: int, limit: int | None, seed: int) -> list[int]:
    # A seeded draw rather than the first N, so class folders sorted by name are all represented.
    if limit is None or limit >= n:
        return list(range(n))
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:limit].sort().values.tolist()


def _limit(data: EvalData, limit: int | None, seed: int) -> EvalData:
    keep = torch.tensor(_subset(len(data), limit, seed), dtype=torch.long)
    data.images, data.labels = data.images[keep], data.labels[keep]
    return data


def _zoo_data(adapter: ModelAdapter) -> EvalData:
    if adapter.eval_set is None:
        raise AuditError(f"--model {adapter.facts.name}: this model names no evaluation set; pass --data DIR "
                         "(class sub-folders, or a flat folder of images)")
    name, load = adapter.eval_set
    images, labels = load(0)
    return EvalData(name=name, images=images, labels=labels, labelled=True, source="zoo", total=len(labels))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _scan_folder(root: Path, adapter: ModelAdapter) -> tuple[list[Path], list[int], bool, str]:
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = _images_in(root)
    if class_dirs and loose:
        raise AuditError(f"--data {root}: holds both images and sub-folders; use class sub-folders (labelled) "
                         "or a flat folder of images (label-free), not both")
    if not class_dirs:
        return loose, [UNLABELLED] * len(loose), False, "flat"
    mapping = map_folders_to_classes([d.name for d in class_dirs], adapter.class_names, root)
    files, labels = [], []
    for d in class_dirs:
        found = _images_in(d)
        files += found
        labels += [mapping[d.name]] * len(found)
    return files, labels, True, "imagefolder"


def map_folders_to_classes(folders: list[str], class_names: list[str], root: Path) -> dict[str, int]:
    """Folder name -> model class index: by class name (case-insensitive), else by integer index."""
    by_name = {n.lower(): i for i, n in enumerate(class_names)}
    mapping, unknown = {}, []
    for f in folders:
        if f.lower() in by_name:
            mapping[f] = by_name[f.lower()]
        elif f.isdigit() and int(f) < len(class_names):
            mapping[f] = int(f)
        else:
            unknown.append(f)
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise AuditError(f"--data {root}: class folders [{shown}] match none of the model's {len(class_names)} class "
                         "names or indices; rename them, or pass --classes FILE with the model's classes in output order")
    return mapping
