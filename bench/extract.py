"""Extraction speed and memory: our `extract` against the stock Keras route, in one process.

    python bench/extract.py --case mobilenet-flowers   # MobileNet 0.25 on ../shared/data/flowers5
    python bench/extract.py --case vgg16 --n 96        # VGG16 block5_pool, 224 px JPEGs, fp32/bf16
    python bench/extract.py --case memory --n 256      # peak RSS at 1x and 4x the images
    python bench/extract.py --case workers --n 600     # 1 vs 2 workers, each pinned to one core
    python bench/extract.py --case decode --n 300      # img/s one core decodes (JPEG -> 224 px)

The stock route is `keras.utils.image_dataset_from_directory(shuffle=False)` + the family's
`preprocess_input` + `model.predict`, with the same body and weights. Ratios, not absolute times,
are the figures to read on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


import numpy as np  # noqa: E402

from bench.common import matmul_peak, model_flops, peak_rss_mb  # noqa: E402
from bottleneck.backbones.network import build_feature_model  # noqa: E402
from bottleneck.backbones.registry import get_backbone  # noqa: E402
from bottleneck.data.images import class_folders  # noqa: E402
from bottleneck.extract import ExtractOptions, run_extract  # noqa: E402
from features.cache.store import Cache  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
FLOWERS = os.path.join(SHARED, "data", "flowers5")
MOBILENET = os.path.join(SHARED, "weights", "mobilenet_2_5_224_tf_no_top.h5")


def subset(n: int, dest: str) -> str:
    """The first n/5 JPEGs of each flowers class (or drawn JPEGs without ../shared)."""
    if os.path.isdir(FLOWERS):
        for name in class_folders(FLOWERS):
            os.makedirs(os.path.join(dest, name), exist_ok=True)
            for f in sorted(os.listdir(os.path.join(FLOWERS, name)))[: max(1, n // 5)]:
                shutil.copy(os.path.join(FLOWERS, name, f), os.path.join(dest, name, f))
    else:
        from bottleneck.data.synthetic import make_image_folder
        make_image_folder(dest, n_per_class=max(1, n // 4), size=227, ext=".jpg")
    return dest


def stock_route(folder, backbone, weights, alpha, layer, size, batch_size=32):
    """Keras' documented route; returns (seconds, features)."""
    from features.tf import keras
    row = get_backbone(backbone)
    start = time.perf_counter()
    kwargs = {"alpha": alpha} if row.alphas else {}
    if weights is None:
        keras.utils.set_random_seed(0)
    body = getattr(keras.applications, row.constructor)(
        include_top=False, weights=weights, input_shape=(size, size, 3), **kwargs)
    x = keras.layers.GlobalAveragePooling2D()(body.get_layer(layer).output)
    model = keras.Model(body.input, x)
    pre = getattr(keras.applications, row.preprocess).preprocess_input
    ds = keras.utils.image_dataset_from_directory(folder, shuffle=False, image_size=(size, size),
                                                  batch_size=batch_size, verbose=False)
    feats = model.predict(ds.map(lambda im, lab: pre(im)), verbose=0)
    return time.perf_counter() - start, feats


def our_route(folder, backbone, weights, alpha, layer, size, precision="float32", batch_size=32,
              devices=None):
    out = tempfile.mktemp(suffix=".h5")
    start = time.perf_counter()
    result = run_extract(ExtractOptions(
        data=folder, backbone=backbone, alpha=alpha, weights=weights or "none", layers=(layer,),
        image_size=size, batch_size=batch_size, test_size=0, val_size=0, out=out, progress=False,
        precision=precision, devices=devices), say=lambda *a: None)
    seconds = time.perf_counter() - start
    with Cache(out) as cache:
        feats = cache.features(layer)
    os.remove(out)
    return seconds, feats, result["n_images"], result["steady_images_per_second"]


def case_mobilenet(args):
    if not os.path.isdir(FLOWERS):
        sys.exit("needs ../shared/data/flowers5")
    n = sum(len(os.listdir(os.path.join(FLOWERS, c))) for c in class_folders(FLOWERS))
    ours = our_route(FLOWERS, "mobilenet", MOBILENET, 0.25, "conv_pw_13_relu", 224)
    stock = stock_route(FLOWERS, "mobilenet", MOBILENET, 0.25, "conv_pw_13_relu", 224)
    diff = np.abs(ours[1] - stock[1]).max() / np.abs(stock[1]).max()
    return {"case": "mobilenet-0.25 flowers5 224px", "images": n,
            "ours_img_s": round(n / ours[0], 1), "ours_steady_img_s": ours[3], "stock_img_s": round(n / stock[0], 1),
            "ratio": round(stock[0] / ours[0], 2), "target_ratio": 1.3,
            "features_max_rel_diff": float(diff)}


def case_vgg16(args):
    tmp = tempfile.mkdtemp()
    folder = subset(args.n, os.path.join(tmp, "data"))
    row = get_backbone("vgg16")
    model, _ = build_feature_model(row, weights=None, image_size=224, alpha=None,
                                   layer_specs=["block5_pool"], pool="avg")
    flops = model_flops(model)
    peak32, peak16 = matmul_peak("float32"), matmul_peak("bfloat16")
    fp32 = our_route(folder, "vgg16", None, None, "block5_pool", 224)
    bf16 = our_route(folder, "vgg16", None, None, "block5_pool", 224, precision="bfloat16")
    stock = stock_route(folder, "vgg16", None, None, "block5_pool", 224)
    n = fp32[2]
    rel = float(np.linalg.norm(bf16[1] - fp32[1]) / np.linalg.norm(fp32[1]))
    shutil.rmtree(tmp)
    return {"case": "vgg16 block5_pool 224px JPEG", "images": n, "gflops_per_image":
            round(flops / 1e9, 2), "peak_fp32_gflops": round(peak32 / 1e9, 1),
            "peak_bf16_gflops": round(peak16 / 1e9, 1),
            "ours_fp32_img_s": round(n / fp32[0], 2), "ours_bf16_img_s": round(n / bf16[0], 2),
            "stock_img_s": round(n / stock[0], 2),
            "ours_fp32_steady_img_s": fp32[3], "ours_bf16_steady_img_s": bf16[3],
            "fp32_fraction_of_peak": round(fp32[3] * flops / peak32, 3), "target_fp32": 0.8,
            "bf16_over_fp32": round(bf16[3] / fp32[3], 2), "target_bf16": 1.8,
            "bf16_rel_diff": round(rel, 4), "ours_over_stock": round(stock[0] / fp32[0], 2)}


def case_memory(args):
    tmp = tempfile.mkdtemp()
    out = {}
    for factor in (1, 4):
        folder = subset(args.n * factor, os.path.join(tmp, f"data{factor}"))
        proc = subprocess.run([sys.executable, __file__, "--case", "_rss", "--folder", folder],
                              capture_output=True, text=True)
        out[f"peak_rss_mb_{factor}x"] = json.loads(proc.stdout.strip().splitlines()[-1])["rss"]
        out[f"images_{factor}x"] = sum(len(f) for _, _, f in os.walk(folder))
    shutil.rmtree(tmp)
    out["growth_4x_over_1x"] = round(out["peak_rss_mb_4x"] / out["peak_rss_mb_1x"], 3)
    return {"case": "memory, mobilenet 224px", **out}


def case_rss(args):
    weights = MOBILENET if os.path.isfile(MOBILENET) else "none"
    our_route(args.folder, "mobilenet", weights if weights != "none" else None, 0.25,
              "conv_pw_13_relu", 224)
    print(json.dumps({"rss": round(peak_rss_mb(), 1)}))
    return None


def case_workers(args):
    """1 worker on one core (a pinned subprocess) vs --workers N CPU workers, one core each."""
    tmp = tempfile.mkdtemp()
    folder = subset(args.n, os.path.join(tmp, "data"))
    out = {"case": "workers: mobilenet-0.25 224px JPEG, one core per worker", "images": None}
    for workers in range(1, args.workers + 1):
        proc = subprocess.run([sys.executable, __file__, "--case", "_pinned", "--folder", folder,
                               "--workers", str(workers)], capture_output=True, text=True)
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        out["images"] = row["images"]
        out[f"wall_img_s_{workers}"], out[f"steady_img_s_{workers}"] = row["wall"], row["steady"]
    out["steady_img_s_peer"] = _independent_processes(folder, args.workers)
    shutil.rmtree(tmp)
    last = args.workers
    out[f"wall_{last}_over_1"] = round(out[f"wall_img_s_{last}"] / out["wall_img_s_1"], 2)
    out[f"steady_{last}_over_1"] = round(out[f"steady_img_s_{last}"] / out["steady_img_s_1"], 2)
    out["peer_over_1"] = round(out["steady_img_s_peer"] / out["steady_img_s_1"], 2)
    out["ours_over_peer"] = round(out[f"steady_img_s_{last}"] / out["steady_img_s_peer"], 2)
    out["target"] = 1.7
    return out


def _independent_processes(folder, count: int) -> float:
    """The machine's own ceiling for this work, the peer of --devices N: N unrelated one-worker
    extractions of the same folder at once, each pinned to its own core; their steady img/s
    summed."""
    procs = [subprocess.Popen([sys.executable, __file__, "--case", "_pinned", "--folder", folder,
                               "--workers", "1", "--core", str(core)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for core in range(count)]
    rows = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    return round(sum(row["steady"] for row in rows), 1)


def case_pinned(args):
    """One run with `--workers` cores: one worker in this process pinned to one core, or N
    worker processes (extract --devices N) pinned to one core each."""
    weights = MOBILENET if os.path.isfile(MOBILENET) else None
    if args.workers == 1:
        os.sched_setaffinity(0, [sorted(os.sched_getaffinity(0))[args.core]])
    seconds, _, n, steady = our_route(args.folder, "mobilenet", weights, 0.25, "conv_pw_13_relu",
                                      224, devices=str(args.workers))
    print(json.dumps({"images": n, "wall": round(n / seconds, 1), "steady": steady}))


def case_decode(args):
    """Images per second that one core decodes and resizes (the tf.data route of extract)."""
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:1])
    from bottleneck.data.images import image_dataset, scan_folder
    tmp = tempfile.mkdtemp()
    folder = scan_folder(subset(args.n, os.path.join(tmp, "data")))
    paths = [folder.absolute(p) for p in folder.paths]
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for _batch in image_dataset(paths, range(len(paths)), 224, 32):
            pass
        best = max(best, len(paths) / (time.perf_counter() - start))
    shutil.rmtree(tmp)
    return {"case": "decode + resize to 224 px on one core (tf.data, JPEG)",
            "images": len(paths), "img_s_one_core": round(best, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=["mobilenet-flowers", "vgg16", "memory", "workers",
                                           "decode", "_rss", "_pinned"],
                        required=True)
    parser.add_argument("--n", type=int, default=100, help="images for vgg16/memory cases")
    parser.add_argument("--folder")
    parser.add_argument("--workers", type=int, default=2, help="most workers for the workers case")
    parser.add_argument("--core", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    result = {"mobilenet-flowers": case_mobilenet, "vgg16": case_vgg16, "memory": case_memory,
              "_rss": case_rss, "workers": case_workers, "decode": case_decode,
              "_pinned": case_pinned}[args.case](args)
    if result:
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
