"""Decoding an evaluation set's files: in parallel DataLoader workers, into memory or streamed from disk.

Every file is decoded once before any probe runs, through a torch DataLoader whose workers decode and
resize in parallel: an unreadable file is then named and left out before the audit starts, and the set's
size and digest are fixed. A set whose decoded images fit MEMORY_LIMIT stays in one uint8 tensor. A
larger one is not kept: its images are `StreamedImages`, decoded again from the files whenever a probe
takes a batch, so memory is bounded by the batch size and the workers, not by the set.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

MEMORY_LIMIT = 2**30  # decoded bytes (uint8) above which --stream's automatic choice streams
DECODE_BATCH = 16  # files a DataLoader worker decodes per batch it hands over


def _glibc_malloc_trim():
    """glibc's malloc_trim, or None (another C library, another system)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _glibc_malloc_trim() if sys.platform.startswith("linux") else None
TRIM_EVERY = 2.0  # seconds
_last_trim = 0.0


def release_freed_memory() -> None:
    """Give the pages of freed heap memory back to the system (glibc), at most every TRIM_EVERY seconds, as
    probes take batches.

    glibc keeps freed blocks in its heap, and raises its mmap threshold after each large free, so batch-sized
    tensors of ever-changing sizes (APGD drops the images it broke) end up in a heap that only grows: a
    label-free audit of 20,000 images at 128 px (bench/streaming.py) peaked at 3.39 GiB streamed, 1.81 with
    this. A lower mmap threshold (MALLOC_MMAP_THRESHOLD_) kept it flat but made the attacks 3x slower (a page
    fault for every page of every tensor). A trim gives pages back that the next batch faults in again, so it
    runs at most once every TRIM_EVERY seconds: the heap cannot grow far in that time."""
    global _last_trim
    now = time.monotonic()
    if _MALLOC_TRIM is not None and now - _last_trim >= TRIM_EVERY:
        _MALLOC_TRIM(0)
        _last_trim = now


def default_workers() -> int:
    """Decoding workers: half the cores this process may use (the other half run the model), 1 to 4."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(4, cores // 2))


@dataclass(frozen=True)
class Decoded:
    """One file's outcome: its image (C x H x W uint8) and target, or why it could not be read."""

    index: int
    image: torch.Tensor | None
    target: Any = None
    error: str | None = None  # why the file was left out
    fatal: Exception | None = None  # what ends the run (a mask of the wrong kind), raised again in the main process


class _Files(Dataset):
    """A Dataset of files: item i is decode(i) as a Decoded, never an exception (a worker must not die)."""

    def __init__(self, count: int, decode: Callable[[int], tuple[torch.Tensor, Any]], unreadable: type[Exception]):
        self.count, self.decode, self.unreadable = count, decode, unreadable

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> Decoded:
        try:
            image, target = self.decode(i)
        except self.unreadable as exc:
            return Decoded(i, None, error=str(exc))
        except Exception as exc:  # noqa: BLE001 (raised again, as itself, by the process that reads the batch)
            return Decoded(i, None, fatal=exc)
        return Decoded(i, image, target)


def _as_list(items: list[Decoded]) -> list[Decoded]:
    return items  # the default collate would try to stack images of files that failed


def _loader(dataset: Dataset, workers: int, batch_size: int, collate_fn=None, pin_memory: bool = False) -> DataLoader:
    """The items in order, batch_size at a time, decoded ahead by `workers` processes (0: in this one)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        prefetch_factor=2 if workers else None,
    )


@dataclass
class DecodePass:
    """What the one decoding pass over the files found."""

    kept: list[int]  # indices (into the files) of the readable ones, in order
    targets: list  # their targets, in the same order
    skipped: list[str]  # "path: why" for each file left out
    images: torch.Tensor | None  # K x C x H x W uint8 when kept in memory, else None
    shape: tuple[int, ...] | None  # one image's C x H x W
    images_hash: Any  # a sha256 of the kept images as EvalData.digest hashes them, when every file was read


def decode_files(
    count: int,
    decode: Callable[[int], tuple[torch.Tensor, Any]],
    unreadable: type[Exception],
    *,
    keep_images: bool | None,
    workers: int,
    progress=None,
) -> DecodePass:
    """Decode files 0..count-1 once, in DataLoader workers. keep_images None: keep them when they fit
    MEMORY_LIMIT (judged from the first readable image's size)."""
    bar = progress(count, "decode images") if progress else None
    kept, targets, skipped = [], [], []
    images, shape, keep = None, None, keep_images
    h = hashlib.sha256()  # hashed as the images arrive, assuming none is skipped; redone lazily if one is
    for batch in _loader(_Files(count, decode, unreadable), workers, DECODE_BATCH, _as_list):
        for item in batch:
            if item.fatal is not None:
                raise item.fatal
            if item.image is None:
                skipped.append(item.error)
                continue
            if shape is None:
                shape = tuple(item.image.shape)
                keep = keep if keep is not None else count * item.image.numel() <= MEMORY_LIMIT
                if keep:
                    images = torch.empty((count, *shape), dtype=torch.uint8)
                h.update(str(((count, *shape), str(torch.uint8))).encode())
            if tuple(item.image.shape) != shape:
                raise ValueError(
                    f"image {item.index} decodes to {tuple(item.image.shape)}, the first to {shape}: the model's "
                    "preprocessing must give one size"
                )
            if images is not None:
                images[len(kept)] = item.image
            h.update(item.image.contiguous().numpy().tobytes())
            kept.append(item.index)
            targets.append(item.target)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    if images is not None and len(kept) < count:
        images = images[: len(kept)].clone()  # the rows of skipped files were never filled
    return DecodePass(kept, targets, skipped, images, shape, None if skipped else h)


class StreamedImages:
    """A set's images decoded from their files on each access: indexed like an N x C x H x W uint8 tensor.

    `[index]` (a slice, or a long tensor of rows) decodes those files in a thread pool (PIL and the resize
    release the GIL); `batches` streams the whole set in order through DataLoader workers that decode ahead
    of the model."""

    dtype = torch.uint8
    device = torch.device("cpu")

    def __init__(self, decode: Callable[[int], torch.Tensor], count: int, shape: tuple[int, ...], workers: int):
        self.decode, self.count, self.image_shape, self.workers = decode, count, shape, workers
        self._threads: ThreadPoolExecutor | None = None

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.count, *self.image_shape))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index) -> torch.Tensor:
        rows = range(self.count)[index] if isinstance(index, slice) else torch.as_tensor(index).flatten().tolist()
        if not rows:
            return torch.empty((0, *self.image_shape), dtype=torch.uint8)
        if self.workers <= 1 or len(rows) == 1:
            return torch.stack([self.decode(i) for i in rows])
        if self._threads is None:
            self._threads = ThreadPoolExecutor(self.workers + 1, thread_name_prefix="decode")
        return torch.stack(list(self._threads.map(self.decode, rows)))

    def batches(self, batch_size: int, pin_memory: bool = False) -> Iterator[torch.Tensor]:
        """The images in order, batch_size at a time, decoded ahead in worker processes."""
        yield from _loader(_Streamed(self.decode, self.count), self.workers, batch_size, pin_memory=pin_memory)


class _Streamed(Dataset):
    def __init__(self, decode: Callable[[int], torch.Tensor], count: int):
        self.decode, self.count = decode, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.decode(i)
