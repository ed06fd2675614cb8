"""Evaluation data: the zoo's own sets and the layouts users bring.

classify: ImageFolder (class sub-folders) or a flat folder (label-free).
segment: images/ + masks/ (PNG, pixel value = class id, 255 = ignore), or images alone
(label-free).
detect: an ultralytics data set YAML (its `test` split, else `val`), or images/ + labels/
(YOLO txt: class cx cy w h, normalised; YOLO-seg polygons give boxes and instance masks), or images
alone (label-free).

Every file is decoded once, up front, in DataLoader workers (auditor/loading.py): an unreadable
file is named and left out before any probe starts. A set that fits in memory stays one uint8
tensor (a quarter of float32's memory) and probes slice batches without decoding again; a larger
one (or --stream) is decoded again from its files for each batch a probe takes, so memory is
bounded by the batch size and the workers, not by the set. Labels stay in memory either way.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image, UnidentifiedImageError
from torchvision import tv_tensors

from auditor.errors import AuditError
from auditor.loading import StreamedImages, decode_files, default_workers, release_freed_memory
from auditor.models.base import ModelAdapter
from auditor.tasks.instances import Instances
from auditor.yolo_labels import read_yolo_labels

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
UNLABELLED = -1


@dataclass(frozen=True)
class YoloLabel:
    """A YOLO txt label file and, for a data set YAML with names, its class ids mapped to the model's."""

    path: Path
    class_map: dict[int, int] | None = None


@dataclass
class EvalData:
    name: str
    images: torch.Tensor | StreamedImages  # N x C x H x W, uint8 or float in [0, 1]; or decoded from files on access
    labels: Any  # classify: N class ids; segment: N x H x W masks (uint8); detect: list of K x 5 (class, xyxy
    # in input pixels; polygon labels: an Instances, with masks); label-free: N x UNLABELLED
    labelled: bool
    source: str  # "zoo", "imagefolder" or "flat"
    total: int  # images available before --limit
    skipped: list[str] = field(default_factory=list)  # "path: why" for each unreadable file left out
    images_hash: Any = None  # a hashlib sha256 of the images as digest() hashes them, from the decoding pass

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def streamed(self) -> bool:
        return isinstance(self.images, StreamedImages)

    def batches(self, batch_size: int, device: torch.device | str = "cpu"):
        """(images in [0, 1] as float32, labels) on the device, in order."""
        if self.streamed:  # decoded ahead in DataLoader workers while the model runs
            on_cuda = torch.device(device).type == "cuda"
            for b, stored in enumerate(self.images.batches(batch_size, pin_memory=on_cuda)):
                release_freed_memory()
                rows = slice(b * batch_size, b * batch_size + len(stored))
                yield as_unit_float(stored.to(device, non_blocking=on_cuda)), self.labels_at(rows, device)
            return
        for start in range(0, len(self), batch_size):
            yield self.batch(slice(start, start + batch_size), device)

    def batch(self, index, device: torch.device | str = "cpu") -> tuple[torch.Tensor, Any]:
        """(images in [0, 1] as float32, labels) at a slice, or at a list or tensor of indices, on the device.

        Labels as the data holds them: class ids or masks as long, or (detect) a list of K x 5 tensors."""
        index = _rows(index, self.images.device)
        return self.images_at(index, device), self.labels_at(index, device)

    def images_at(self, index, device: torch.device | str = "cpu") -> torch.Tensor:
        """Images (a slice, or a list or tensor of indices) in [0, 1] as float32 on the device."""
        return as_unit_float(self.stored_images_at(index, device))

    def stored_images_at(self, index, device: torch.device | str = "cpu") -> torch.Tensor:
        """Images as the data holds them (uint8 for files: a quarter of float32's memory), on the device."""
        release_freed_memory()  # what the last batch's work freed (see there)
        return self.images[_rows(index, self.images.device)].to(device)

    def labels_at(self, index, device: torch.device | str = "cpu") -> Any:
        """Labels as the data holds them: class ids or masks as long, or (detect) a list of K x 5 tensors."""
        index = _rows(index, self.images.device)
        if isinstance(self.labels, list):
            picked = self.labels[index] if isinstance(index, slice) else [self.labels[i] for i in index.tolist()]
            return [t.to(device) for t in picked]
        return self.labels[index].to(device).long()

    def digest(self) -> str:
        """sha256 of the images and labels in audit order: equal digests let two runs be paired image by image.
        A streamed set gives the digest it would give in memory."""
        if self.images_hash is not None:
            h = self.images_hash.copy()  # a streamed set is not decoded again for it
        else:
            h = hashlib.sha256()
            h.update(str((tuple(self.images.shape), str(self.images.dtype))).encode())
            for start in range(0, len(self), HASH_ROWS):
                h.update(self.images[start : start + HASH_ROWS].detach().cpu().contiguous().numpy().tobytes())
        for t in _tensors(self.labels):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def facts(self) -> dict:
        facts = {
            "name": self.name,
            "n": len(self),
            "labelled": self.labelled,
            "layout": self.source,
            "available": self.total,
            "digest": self.digest(),
        }
        if self.streamed:
            facts["streamed"] = True  # decoded from the files for every batch (--stream, or too large for memory)
        if self.skipped:
            facts["skipped"] = len(self.skipped)
            facts["skipped_files"] = self.skipped[:SKIPPED_LISTED]
        return facts


def _tensors(labels) -> list[torch.Tensor]:
    """Every tensor in a label structure (a tensor, a list of them, or an object holding them)."""
    if isinstance(labels, torch.Tensor):
        return [labels]
    found = [t for item in labels for t in _tensors(item)] if isinstance(labels, list | tuple) else []
    if hasattr(labels, "__dict__"):  # Instances: a list of boxes with `masks` beside them
        found += [t for v in vars(labels).values() for t in _tensors(v)]
    return found


def _rows(index, device: torch.device) -> slice | torch.Tensor:
    """A slice as it is; a list or tensor of indices (on any device) as a long tensor where the data lives."""
    return index if isinstance(index, slice) else torch.as_tensor(index, dtype=torch.long).to(device)


HASH_ROWS = 256  # images hashed at a time (a streamed set is decoded for its digest this many at a time)
SKIPPED_LISTED = 20  # unreadable files named in results.json and the report; the log names them all


class UnreadableImage(AuditError):
    """A file that is not a decodable image: left out of the set, and named."""


def pil_open(path: Path):
    """PIL's own Image.open, even after ultralytics is imported.

    Importing ultralytics anywhere in the process replaces PIL.Image.open with a wrapper that, for a file
    PIL cannot identify, pip-installs a HEIF plugin and imports it: a corrupt file would then be answered
    with an install attempt or a ModuleNotFoundError rather than skipped and named."""
    patches = sys.modules.get("ultralytics.utils.patches")
    return getattr(patches, "_image_open", Image.open)(path)


def _open(path: Path, mode: str | None):
    try:
        with pil_open(path) as im:
            im.load()
            if mode and im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
                im = _to_8bit(im)  # Pillow's own conversion clips 16-bit values at 255: all white
            return im.convert(mode) if mode else im.copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        detail = str(exc).splitlines()[0][:80] if str(exc) else exc.__class__.__name__
        raise UnreadableImage(f"{path}: cannot read this image ({detail})") from exc


def _to_8bit(im):
    """A 16-bit (or 32-bit integer) greyscale image scaled to 8 bits, full range kept."""
    arr = np.asarray(im, dtype=np.float64)
    peak = 65535.0 if arr.max() > 255 else 255.0
    return Image.fromarray(np.clip(arr / peak * 255 + 0.5, 0, 255).astype(np.uint8), mode="L")


def _decode(path: Path, mode: str, transform) -> torch.Tensor:
    return transform(_open(path, mode))


def _decode_pair(path: Path, mask_path: Path, mode: str, transform) -> tuple[torch.Tensor, torch.Tensor]:
    """Image and mask through the same geometry; torchvision resizes a Mask with nearest-neighbour."""
    mask = _open(mask_path, None)
    if mask.mode not in ("L", "P", "I", "I;16"):
        raise AuditError(f"{mask_path}: a mask must be single-channel (pixel value = class id), got mode {mask.mode}")
    target = tv_tensors.Mask(torch.from_numpy(np.array(mask, dtype=np.int64))[None])
    image, target = transform(_open(path, mode), target)
    return image, target[0].to(torch.uint8)


def load_data(
    adapter: ModelAdapter,
    path: str | None,
    *,
    limit: int | None,
    seed: int,
    progress=None,
    stream: bool | None = None,
    workers: int | None = None,
) -> EvalData:
    """The evaluation set, subset to `limit` images by a seeded draw. Files are decoded by `workers` DataLoader
    workers (None: default_workers()); stream None keeps the images in memory when they fit MEMORY_LIMIT, True
    decodes them from the files for every batch, False keeps them whatever their size."""
    name = None
    if path is None:
        zoo = _zoo_data(adapter)
        limit = limit or adapter.eval_set[2]  # the zoo's default audit size, unless --limit says otherwise
        if isinstance(zoo, EvalData):
            return _limit(zoo, limit, seed)
        name, path = zoo  # a generated folder in the layout users bring
    root = Path(path)
    layout = LAYOUTS[adapter.task]
    is_yaml = root.suffix in (".yaml", ".yml") and layout.data_file
    if not (root.is_dir() or (is_yaml and root.is_file())):
        raise AuditError(f"--data {root}: no such {'file' if is_yaml else 'folder'}")
    files, labels, labelled, source = layout.scan(root, adapter)
    if not files:
        raise AuditError(f"--data {root}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    total = len(files)
    keep = seeded_subset(total, limit, seed)
    files, labels = [files[i] for i in keep], [labels[i] for i in keep]
    workers = default_workers() if workers is None else workers
    decoder = Decoder(files, labels, "L" if adapter.channels == 1 else "RGB", adapter.preprocess.transform())
    try:
        found = decode_files(
            len(files),
            decoder,
            UnreadableImage,
            keep_images=None if stream is None else not stream,
            workers=workers,
            progress=progress,
        )
    except ValueError as exc:
        raise AuditError(f"--data {root}: {exc}") from exc
    if not found.kept:
        raise AuditError(f"--data {root}: none of its {len(files)} image(s) could be read (first: {found.skipped[0]})")
    if found.skipped:
        print(f"warning: {len(found.skipped)} unreadable image(s) left out of the audit:", file=sys.stderr)
        for line in found.skipped:
            print(f"  {line}", file=sys.stderr)
    if found.images is None:
        images = StreamedImages(decoder.image_of([files[i] for i in found.kept]), len(found.kept), found.shape, workers)
    else:
        images = found.images
    default_name = f"{root.parent.name}/{root.name}" if root.is_file() else root.name
    return EvalData(
        name=name or default_name,
        images=images,
        labels=_stack_targets(found.targets, labels[0], adapter.num_classes, root),
        labelled=labelled,
        source=source,
        total=total,
        skipped=found.skipped,
        images_hash=found.images_hash,
    )


@dataclass(frozen=True)
class Decoder:
    """decoder(i) -> (image, target) of file i, each label read as its kind says: a YOLO txt gives boxes, a mask
    file a mask (through the image's geometry), a class id itself. Plain data: DataLoader workers get a copy."""

    files: list[Path]
    labels: list
    mode: str
    transform: Any

    def __call__(self, i: int) -> tuple[torch.Tensor, Any]:
        f, label = self.files[i], self.labels[i]
        if isinstance(label, YoloLabel):
            image = _decode(f, self.mode, self.transform)
            return image, read_yolo_labels(label.path, image.shape[-2:], label.class_map)  # boxes, masks or None
        if isinstance(label, Path):
            return _decode_pair(f, label, self.mode, self.transform)
        return _decode(f, self.mode, self.transform), label

    def image_of(self, files: list[Path]) -> ImageOf:
        return ImageOf(files, self.mode, self.transform)


@dataclass(frozen=True)
class ImageOf:
    """image_of(i) -> the image of file i alone: a deterministic transform gives it what it gave beside the mask."""

    files: list[Path]
    mode: str
    transform: Any

    def __call__(self, i: int) -> torch.Tensor:
        return _decode(self.files[i], self.mode, self.transform)


def _stack_targets(targets: list, kind, num_classes: int, root: Path):
    """EvalData.labels from per-image targets: boxes stay a list, masks and class ids become one tensor.
    `kind` is one of the labels the set was scanned with (all of a set's labels are of one kind)."""
    if isinstance(kind, YoloLabel):
        boxes, masks = [b for b, _ in targets], [m for _, m in targets]
        _check_class_ids(
            torch.cat([t[:, 0] for t in boxes]).long(),
            num_classes,
            root,
            "labels",
            "; a data set YAML with `names` maps its ids to the model's by name",
        )
        # YOLO-seg polygons on every object: instance masks beside the boxes
        return Instances(boxes, masks) if any(len(b) for b in boxes) and None not in masks else boxes
    if isinstance(kind, Path):
        masks = torch.stack(targets)
        _check_class_ids(masks[masks != 255].long(), num_classes, root, "masks", "; 255 = ignore")
        return masks
    return torch.tensor(targets, dtype=torch.long)


def _check_class_ids(ids: torch.Tensor, num_classes: int, root: Path, what: str, hint: str) -> None:
    """Exit 2 on class ids the model does not have (a metric would fail on them, or silently miscount)."""
    extra = [int(v) for v in torch.unique(ids) if not 0 <= int(v) < num_classes]
    if extra:
        raise AuditError(
            f"--data {root}: {what} hold class id(s) {', '.join(map(str, extra[:8]))}, but the model has "
            f"{num_classes} classes (0..{num_classes - 1}{hint})"
        )


def as_unit_float(x: torch.Tensor) -> torch.Tensor:
    """Images as stored (uint8, or float already in [0, 1]) as float32 in [0, 1]."""
    return x.float() / 255 if x.dtype == torch.uint8 else x.float()


def seeded_subset(n: int, limit: int | None, seed: int) -> list[int]:
    """`limit` of range(n) drawn with the seed, ascending; all of them when limit is None or >= n."""
    # A seeded draw rather than the first N, so class folders sorted by name are all represented.
    if limit is None or limit >= n:
        return list(range(n))
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:limit].sort().values.tolist()


def _limit(data: EvalData, limit: int | None, seed: int) -> EvalData:
    keep = torch.tensor(seeded_subset(len(data), limit, seed), dtype=torch.long)
    data.images = data.images[keep]
    data.labels = [data.labels[i] for i in keep] if isinstance(data.labels, list) else data.labels[keep]
    return data


def _zoo_data(adapter: ModelAdapter) -> EvalData | tuple[str, Path]:
    """The zoo model's own set: tensors, or the folder its generator wrote."""
    if adapter.eval_set is None:
        expected = LAYOUTS[adapter.task].expected
        raise AuditError(
            f"--model {adapter.facts.name}: this model names no evaluation set; pass --data DIR ({expected})"
        )
    name, load, _ = adapter.eval_set
    loaded = load(0)
    if isinstance(loaded, (str, Path)):
        return name, Path(loaded)
    images, labels = loaded
    return EvalData(name=name, images=images, labels=labels, labelled=True, source="zoo", total=len(labels))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _scan_folder(root: Path, adapter: ModelAdapter) -> tuple[list[Path], list[int], bool, str]:
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = _images_in(root)
    if class_dirs and loose:
        raise AuditError(
            f"--data {root}: holds both images and sub-folders; use class sub-folders (labelled) "
            "or a flat folder of images (label-free), not both"
        )
    if not class_dirs:
        return loose, [UNLABELLED] * len(loose), False, "flat"
    mapping = map_folders_to_classes([d.name for d in class_dirs], adapter.class_names, root)
    files, labels = [], []
    for d in class_dirs:
        found = _images_in(d)
        files += found
        labels += [mapping[d.name]] * len(found)
    return files, labels, True, "imagefolder"


def _scan_segmentation(root: Path, adapter: ModelAdapter) -> tuple[list[Path], list, bool, str]:
    """images/ + masks/ (matched by file stem), or images alone / a flat folder: label-free."""
    image_dir = root / "images" if (root / "images").is_dir() else root
    files = _images_in(image_dir)
    mask_dir = root / "masks"
    if not mask_dir.is_dir():
        return files, [UNLABELLED] * len(files), False, "flat"
    masks = {p.stem: p for p in _images_in(mask_dir)}
    missing = [f.name for f in files if f.stem not in masks]
    if missing:
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise AuditError(
            f"--data {root}: no mask in masks/ for {len(missing)} image(s) ({shown}); each image needs "
            "a PNG of the same name whose pixels are class ids"
        )
    return files, [masks[f.stem] for f in files], True, "images+masks"


def _scan_detection(root: Path, adapter: ModelAdapter) -> tuple[list[Path], list, bool, str]:
    """An ultralytics data set YAML, images/ + labels/ (YOLO txt), or images alone (label-free)."""
    class_map = None
    if root.is_file():
        image_dir, names = _yaml_split_dir(root)
        layout = "ultralytics-yaml"
        if names:
            class_map = _map_names(names, adapter.class_names, root)
    else:
        image_dir, layout = (root / "images" if (root / "images").is_dir() else root), "images+labels"
    files = sorted(p for p in image_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    labels = [_label_path(f) for f in files]
    if not any(p.is_file() for p in labels):
        return files, [UNLABELLED] * len(files), False, "flat"
    # ultralytics' convention: an image without a label file has no objects
    return files, [YoloLabel(p, class_map) for p in labels], True, layout


@dataclass(frozen=True)
class Layout:
    """How a task's evaluation data lies on disk."""

    scan: Callable[[Path, ModelAdapter], tuple[list[Path], list, bool, str]]  # -> files, labels, labelled, layout
    expected: str  # the layouts, in words, for an error that asks for --data
    data_file: bool = False  # a data set file (ultralytics YAML) may stand for the folder


LAYOUTS: dict[str, Layout] = {
    "classify": Layout(_scan_folder, "class sub-folders, or a flat folder of images"),
    "detect": Layout(_scan_detection, "an ultralytics data.yaml, or images/ + labels/", data_file=True),
    "segment": Layout(_scan_segmentation, "images/ + masks/"),
}


def _map_names(names: list[str], class_names: list[str], source: Path) -> dict[int, int]:
    """Data set class id -> model class id, by name: COCO in YOLO format counts 80 classes from 0,
    torchvision's COCO detectors 91 from a background at 0, so ids alone would not line up."""
    by_name = {n.lower(): i for i, n in enumerate(class_names)}
    unknown = [n for n in names if n.lower() not in by_name]
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise AuditError(
            f"--data {source}: class names [{shown}] are not among the model's {len(class_names)} "
            "classes; pass --classes FILE naming the model's outputs, or fix `names:`"
        )
    return {i: by_name[n.lower()] for i, n in enumerate(names)}


def _label_path(image: Path) -> Path:
    """ultralytics' rule: the last /images/ in the path becomes /labels/, the suffix .txt."""
    parts = list(image.parts)
    if "images" in parts:
        i = len(parts) - 1 - parts[::-1].index("images")
        parts[i] = "labels"
    return Path(*parts).with_suffix(".txt")


def _yaml_split_dir(path: Path) -> tuple[Path, list[str]]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise AuditError(f"--data {path}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise AuditError(f"--data {path}: expected an ultralytics data set YAML (path, val or test, names)")
    split = next((k for k in ("test", "val") if doc.get(k)), None)
    if split is None or isinstance(doc[split], list):
        raise AuditError(f"--data {path}: needs a `test` or `val` entry naming one image folder")
    base = Path(doc.get("path") or path.parent)
    if not base.is_absolute():
        base = path.parent / base
    folder = base / doc[split]
    if not folder.is_dir():
        raise AuditError(
            f"--data {path}: its {split} images folder {folder} does not exist (download the data set "
            "with ultralytics first, or point `path:` at it)"
        )
    names = doc.get("names") or []
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    return folder, [str(n) for n in names]


def _read_yolo_labels(path: Path, size, class_map: dict[int, int] | None = None) -> torch.Tensor:
    """YOLO txt (boxes, or YOLO-seg polygons; normalised) -> K x 5 (class, x0, y0, x1, y1) in input pixels."""
    return read_yolo_labels(path, size, class_map)[0]


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
        raise AuditError(
            f"--data {root}: class folders [{shown}] match none of the model's {len(class_names)} class "
            "names or indices; rename them, or pass --classes FILE with the model's classes in output order"
        )
    return mapping
