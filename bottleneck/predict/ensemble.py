"""The predictor of an ensemble file (features/ensembles/combination.py): each member's backbone
runs once per image, members that share a network (backbone, weights, size, pooling) share one
forward pass over the union of their taps, and the members' probabilities are combined."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from bottleneck.predict.base import Predictor, head_features
from features.ensembles.combination import load_ensemble


def _union_provenance(members):
    """The provenance of one network computing every tap the given members read, in order."""
    index, order = {}, []
    for m in members:
        index.update(zip(m.provenance.layers, m.provenance.layer_indices))
        order.extend(t for t in m.provenance.taps if t not in order)
    return replace(members[0].provenance, layers=tuple(order),
                   layer_indices=tuple(index[t] for t in order), feature_layers=None)


def _weights_for(prov, weights):
    """--weights applies to the members whose recorded weights id is that file's sha256."""
    if not weights or prov.weights in ("imagenet", "none"):
        return None
    from bottleneck.backbones.registry import weights_id

    return weights if weights_id(weights) == prov.weights else None


def _networks(ensemble, weights):
    """[(image size, forward, union provenance, [member indices])], one per distinct network."""
    from bottleneck.backbones.network import compiled_forward, feature_model_from_provenance

    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(ensemble.members):
        groups.setdefault(m.network_key(), []).append(i)
    nets = []
    for idxs in groups.values():
        prov = _union_provenance([ensemble.members[i] for i in idxs])
        model, _ = feature_model_from_provenance(prov, weights=_weights_for(prov, weights),
                                                 fold_bn=True)
        nets.append((prov.image_size, compiled_forward(model), prov, idxs))
    return nets


def load_ensemble_predictor(path: str, weights: str | None = None) -> Predictor:
    """An ensemble as a Predictor; with several image sizes, predict_images takes a dict
    {size: float32 (n, size, size, 3) images} (Predictor.image_sizes names them)."""
    ensemble = load_ensemble(path)
    nets = _networks(ensemble, weights)
    sizes = tuple(sorted({size for size, *_ in nets}))

    def predict_images(images):
        by_size = images if isinstance(images, dict) else {sizes[0]: images}
        probas = [None] * len(ensemble.members)
        for size, forward, prov, idxs in nets:
            outputs = [o.numpy() for o in forward(np.asarray(by_size[size], np.float32))]
            for i in idxs:
                member = ensemble.members[i]
                X = head_features(outputs, replace(member.provenance, layers=prov.layers))
                probas[i] = member.pipeline.predict_proba(X)
        return ensemble.predict_proba(probas)

    info = {"head": "ensemble", "combine": ensemble.combine, "members": len(ensemble.members),
            "networks": len(nets)}
    return Predictor("ensemble", path, list(ensemble.class_names), max(sizes), predict_images,
                     info, image_sizes=sizes if len(sizes) > 1 else ())
