"""Frozen image backbones with named layers, for feature extraction.

Registry: :func:`get` (``'vgg19'``, ``'vgg19_random'``, ``'efficientnet_lite0'``,
``'efficientnet_lite1'``, ``'efficientnet_lite2'``).

Every backbone is a :class:`SequentialBackbone`: an ``nn.Sequential`` of *named* stages
(``.stages``), run in order, whose outputs are the named layers. The input convention of
:meth:`SequentialBackbone.features` is

* ``x``: a tensor ``(B, 3, H, W)`` of RGB images, either ``uint8`` (0..255) or floating point
  in ``[0, 1]`` (i.e. uint8 / 255). It is **not** normalised: the backbone subtracts its own
  ``mean`` and divides by its own ``std`` (per channel) inside ``features``.
* ``layers``: names from ``.layer_names``; the network runs only up to the deepest one.
* returns ``{layer: Tensor (B, C, h, w)}`` (float32, or bfloat16 under bf16 autocast), in the
  order of ``layers``.

Attributes: ``.name``, ``.layer_names`` (every named layer, in network order),
``.default_layers`` (the set used for saliency when none is given), ``.strides``
({layer: total stride}), ``.weights_sha256`` (SHA-256 of the weights file, or for a randomly
initialised network a hash of its tensors prefixed ``random-seed<k>:``), ``.weights_source``,
``.architecture`` (a string naming the exact network that computes the features: the same
tensors in another architecture variant compute something else) and ``.network_id`` (a short
hash of architecture and weights: what feature stores and trained runs are keyed on).

Missing pretrained weights never silently become random weights: the loaders raise
:class:`dgstudy.io.DataError` naming the file, where to get it and how to point at a copy.
"""
from . import efficientnet_lite, vgg19  # noqa: F401  (each registers its backbones)
from .base import (SequentialBackbone, architecture, architecture_id, available, default_layers,  # noqa: F401
                   get, network_id, register, tensors_sha256)
