"""The backbone registry: every row is buildable and its facts agree with keras.applications."""

import pytest

from bottleneck.backbones.network import default_layer_specs, resolve_layers
from bottleneck.backbones.registry import BACKBONES, build_body, get_backbone
from features.errors import UserError
from features.tf import keras


@pytest.mark.parametrize("row", BACKBONES.values(), ids=list(BACKBONES))
def test_row_points_at_real_keras_objects(row):
    assert hasattr(keras.applications, row.constructor)
    assert callable(getattr(keras.applications, row.preprocess).preprocess_input)


@pytest.mark.parametrize("name", ["vgg16", "resnet50", "resnet50v2", "mobilenet", "mobilenetv2",
                                  "mobilenetv3small", "densenet121", "efficientnetb0",
                                  "xception", "inceptionv3", "convnexttiny"])
def test_default_layer_is_the_body_output(name):
    """The registry's default tap is the last layer of the no-top body (the last conv block)."""
    row = get_backbone(name)
    body = build_body(row, weights=None, image_size=max(75, row.min_size))
    (layer, index), = resolve_layers(body, default_layer_specs(row))
    assert index == len(body.layers) - 1
    if row.default_layer:
        assert layer == row.default_layer


def test_vgg16_default_is_block5_pool():
    assert get_backbone("VGG16").default_layer == "block5_pool"
    assert get_backbone("vgg16").default_size == 224


def test_unknown_backbone_names_close_matches():
    with pytest.raises(UserError, match="vgg16"):
        get_backbone("vgg61")


def test_alpha_rules():
    with pytest.raises(UserError, match="drop --alpha"):
        build_body(get_backbone("vgg16"), weights=None, image_size=32, alpha=0.5)
    with pytest.raises(UserError, match="0.25"):
        build_body(get_backbone("mobilenet"), weights=None, image_size=32, alpha=0.3)


def test_too_small_image_refused():
    with pytest.raises(UserError, match="minimum"):
        build_body(get_backbone("inceptionv3"), weights=None, image_size=32)


def test_unknown_layer_lists_closest_names():
    body = build_body(get_backbone("vgg16"), weights=None, image_size=32)
    with pytest.raises(UserError, match="block5_pool"):
        resolve_layers(body, ["block5_poool"])
    with pytest.raises(UserError, match="out of range"):
        resolve_layers(body, ["999"])
    assert resolve_layers(body, ["-1", "block3_pool"]) == [("block5_pool", 18),
                                                           ("block3_pool", 10)]
