"""`layers`: list a backbone's tappable layers with their output shapes."""

from __future__ import annotations

from bottleneck.cli.common import add_backbone_args


def add_parser(sub):
    p = sub.add_parser("layers", help="list the layers of a backbone that extract can tap",
                       description="List every layer of a backbone whose output is a feature map "
                                   "(H x W x C) with its index and shape; pass a name or index to "
                                   "`extract --layer`. Lower layers generalise better to data "
                                   "unlike ImageNet; `*` marks the default tap.")
    add_backbone_args(p, weights_default="none")
    p.add_argument("--all", action="store_true", help="also list layers that are not feature maps")
    return p


def run(args, say):
    from bottleneck.backbones.network import default_layer_specs, resolve_layers
    from bottleneck.backbones.registry import build_body, get_backbone

    row = get_backbone(args.backbone)
    body = build_body(row, weights=None if args.weights == "none" else args.weights,
                      image_size=args.image_size or row.default_size, alpha=args.alpha)
    default_name = resolve_layers(body, default_layer_specs(row))[0][0]
    rows = []
    for index, layer in enumerate(body.layers):
        shape = tuple(layer.output.shape[1:])
        if len(shape) == 3 or args.all:
            rows.append({"index": index, "name": layer.name, "shape": list(shape),
                         "type": type(layer).__name__, "default": layer.name == default_name})
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        mark = "*" if r["default"] else " "
        say(f"{mark} {r['index']:>4}  {r['name']:<{width}}  {'x'.join(map(str, r['shape'])):>14}  "
            f"{r['type']}")
    return {"backbone": row.name, "image_size": args.image_size or row.default_size,
            "default": default_name, "layers": rows}
