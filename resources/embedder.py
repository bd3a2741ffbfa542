"""The image embedder: open_clip in production, EfficientNet-Lite0 (weights shipped) offline."""

from __future__ import annotations

from functools import cache

import dagster as dg

from dagster_project.images.embed import Embedder, EmbedderConfig


@cache
def _load(config: EmbedderConfig) -> Embedder:
    return Embedder(config)


class EmbedderResource(dg.ConfigurableResource):
    """Which model embeds the photos; loading fails loudly when its weights cannot be had."""

    backend: str = "efficientnet_lite0"
    model: str = "ViT-B-32"
    pretrained: str = "laion2b_s34b_b79k"
    device: str = "auto"
    batch_size: int = 64
    image_size: int = 224
    flip_invariant: bool = True
    workers: int = 2
    weights_cache_dir: str | None = None

    def config(self) -> EmbedderConfig:
        return EmbedderConfig(
            backend=self.backend,
            model=self.model,
            pretrained=self.pretrained,
            device=self.device,
            batch_size=self.batch_size,
            image_size=self.image_size,
            flip_invariant=self.flip_invariant,
            workers=self.workers,
            cache_dir=self.weights_cache_dir,
        )

    def load(self) -> Embedder:
        return _load(self.config())
