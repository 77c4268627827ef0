"""Stage ends of a backbone body, found generically from its layer output shapes.

A CNN body is a sequence of stages, each working at one spatial resolution and ending where the
next one downsamples. "The end of every stage" is therefore, for each distinct spatial size among
the body's 4-D layer outputs, the last layer with that size. Layers that only pad (ZeroPadding2D),
the input layer and the preprocessing layers before the first layer with weights (Rescaling,
Normalization in EfficientNet/MobileNetV3/ConvNeXt) are not stages.

`sweep` taps all of them in one forward pass. `unfreeze_point` is the one rule for where
fine-tuning starts training: `advise` names it and `finetune` uses it by default.
"""

from __future__ import annotations

SKIP_TYPES = ("InputLayer", "ZeroPadding2D", "Rescaling", "Normalization")


def _spatial(layer):
    shape = layer.output.shape
    return tuple(shape[1:3]) if len(shape) == 4 else None


def stage_ends(body) -> list[tuple[str, int]]:
    """[(layer name, index in body.layers)] of the last layer at each distinct spatial size,
    in depth order."""
    first_weighted = next((i for i, layer in enumerate(body.layers) if layer.weights),
                          0)
    ends, largest = [], 0
    # walk from the top: each stage is larger than the one after it, so a smaller map met on the
    # way down is a side branch (squeeze-and-excitation's 1x1 maps), not a stage
    for index in range(len(body.layers) - 1, first_weighted - 1, -1):
        layer = body.layers[index]
        size = _spatial(layer)
        if size is None or type(layer).__name__ in SKIP_TYPES or None in size:
            continue
        area = size[0] * size[1]
        if area > largest:
            ends.append((layer.name, index))
            largest = area
    return ends[::-1]


def first_weighted_after(body, index: int) -> tuple[str, int] | None:
    """The first layer with weights after `index`: where to start unfreezing a block."""
    for i in range(index + 1, len(body.layers)):
        if body.layers[i].weights:
            return body.layers[i].name, i
    return None


def blocks(body) -> list[tuple[int, int]]:
    """(first, last) layer index of each stage that holds weights (a trailing pool-only stage,
    like VGG's block5_pool, joins the stage before it)."""
    out, start = [], 0
    for _, end in stage_ends(body):
        if any(layer.weights for layer in body.layers[start:end + 1]) or not out:
            out.append((start, end))
        else:
            out[-1] = (out[-1][0], end)
        start = end + 1
    return out


def unfreeze_point(body, n_blocks: int = 1) -> tuple[str, int] | None:
    """(name, index) of the first weighted layer of the top `n_blocks` stages of `body`."""
    found = blocks(body)
    if not found:
        return None
    start = found[max(0, len(found) - n_blocks)][0]
    return first_weighted_after(body, start - 1)


def _snake(name: str) -> str:
    import re

    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def layer_spec(body, index: int) -> str:
    """How to name layer `index` on a command line that builds the body in a fresh process: its
    name, unless Keras auto-named it (`activation_17`, whose number depends on what was built
    before in the process), then its index."""
    import re

    layer = body.layers[index]
    auto = _snake(type(layer).__name__)
    if re.fullmatch(rf"{re.escape(auto)}(_\d+)?", layer.name):
        return str(index)
    return layer.name
