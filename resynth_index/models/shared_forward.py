"""One forward pass where the inverter and the embedder run the same network.

With the default configuration the label inverter and the embedder are the same EfficientNet-Lite0 with the same
preprocessing: the embedder pools block stage 4, the inverter reads the ImageNet logits at the end of the same
pass. Likewise the CLIP interrogator and an open_clip embedder of the same model and weights: the interrogator
reads the final projected image features, the embedder those or a block's CLS token. :func:`shared_forward`
finds such a pair; :meth:`SharedForward.invert_and_embed` then runs the network once per image and takes both
outputs from that pass.

The results are those of separate passes: the embeddings are computed on the same batches by the same
operations, bit for bit (:meth:`Embedder.embed_with <resynth_index.models.embedders.Embedder.embed_with>`), and
the inverter decides from the same logits or features as its own pass gives (up to the last bits of a batch
of a different composition). Metadata first still holds: the inverter stages before the shared one (the file's
own prompt) answer first, and the rest of the network (the layers after the embedding) runs only for the images
they left unanswered.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..images.decode import DecodedImage
from .embedders import Embedder
from .inverters import ChainInverter, Inversion, Inverter, run_chain


@dataclass(frozen=True)
class SharedPass:
    """What :meth:`SharedForward.invert_and_embed` found for a batch of images."""

    inversions: list[Inversion | None]  # as ``inverter.invert(images)``
    embeddings: np.ndarray  # as ``embedder.embed([d.image for d in images])``, bit for bit
    embed_seconds: float  # the forward passes (the embedding and the shared stage's output)
    invert_seconds: float  # everything else the inverter did (metadata, other stages, its decision)


class SharedForward:
    """An ``inverter`` (one inverter or a chain) one of whose stages, ``stage``, runs the embedder's network.
    Build it with :func:`shared_forward`, which checks that the two coincide."""

    def __init__(self, inverter: Inverter, embedder: Embedder, stage: Inverter) -> None:
        self.inverter = inverter
        self.embedder = embedder
        self.stage = stage

    def __repr__(self) -> str:
        return f"SharedForward(embedder={self.embedder.id!r}, stage={self.stage.id!r})"

    def invert_and_embed(self, images: Sequence[DecodedImage]) -> SharedPass:
        """Invert and embed ``images`` with one pass of the shared network per image."""
        ims = list(images)
        pixels = [d.image for d in ims]
        embeddings: list[np.ndarray] = []
        t_start = time.perf_counter()
        t_embed = 0.0

        def answer(inv: Inverter, pending: list[int]) -> list[Inversion | None]:
            nonlocal t_embed
            if inv is not self.stage:
                return inv.invert([ims[i] for i in pending])
            t0 = time.perf_counter()
            vectors, outputs = self.embedder.embed_with(pixels, self.stage.shared_output, pending)
            t_embed += time.perf_counter() - t0
            embeddings.append(vectors)
            return self.stage.invert_outputs(outputs)

        stages = self.inverter.inverters if isinstance(self.inverter, ChainInverter) else [self.inverter]
        inversions = run_chain(stages, len(ims), answer)
        if not embeddings:  # earlier stages answered every image: the embedding alone
            t0 = time.perf_counter()
            embeddings.append(self.embedder.embed(pixels))
            t_embed += time.perf_counter() - t0
        total = time.perf_counter() - t_start
        return SharedPass(inversions, embeddings[0], t_embed, total - t_embed)


def shared_forward(inverter: Inverter | None, embedder: Embedder) -> SharedForward | None:
    """The :class:`SharedForward` of ``inverter`` and ``embedder`` when a stage of the inverter runs the
    embedder's network (the same network object, preprocessing and device) and the embedder can give that
    stage's output from its pass; None otherwise (then they run separately, as before), and when
    ``embedder.share_forward`` is False."""
    if inverter is None or not embedder.share_forward:
        return None
    use = embedder.network_use()
    if use is None:
        return None
    stages = inverter.inverters if isinstance(inverter, ChainInverter) else [inverter]
    for stage in stages:
        if stage.shared_output in embedder.extra_outputs and use.same_pass(stage.network_use()):
            return SharedForward(inverter, embedder, stage)
    return None
