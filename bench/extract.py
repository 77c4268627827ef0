"""Extraction speed and memory: our `extract` against the stock Keras route, on this machine.

    python bench/extract.py --case mobilenet-flowers   # MobileNet 0.25 on flowers5, in-process
    python bench/extract.py --case vgg16 --n 96        # VGG16 block5_pool, 224 px JPEGs
    python bench/extract.py --case process             # whole `cli.py extract` vs a stock script
    python bench/extract.py --case memory --n 256      # peak RSS at 1x and 4x the images
    python bench/extract.py --case workers --n 600     # 1 vs 2 workers, each pinned to one core
    python bench/extract.py --case decode --n 300      # img/s one core decodes (JPEG -> 224 px)

The stock route is `keras.utils.image_dataset_from_directory(shuffle=False)` + the family's
`preprocess_input` + `model.predict`, with the same body and weights (bench/stock_extract.py is
the same as a whole script, with h5py). The speed cases run `--rounds` interleaved rounds (ours,
stock, ours, stock, ...) and report the median of the per-round ratios, each round with the load
beside it, and the CPU model and flags (AMX, AVX-512 BF16) beside every figure: on a shared
machine only ratios measured in the same run mean anything, and only on the CPU they came from.
flowers5 is read from a copy under the system's temp folder (extract writes the folder's split
record beside the images; ../shared stays untouched).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


import numpy as np  # noqa: E402

from bench.common import matmul_peak, model_flops, peak_rss_mb  # noqa: E402
from bench.machine import loadavg, machine  # noqa: E402
from bottleneck.backbones.registry import get_backbone  # noqa: E402
from bottleneck.data.images import class_folders  # noqa: E402
from bottleneck.extract import ExtractOptions, run_extract  # noqa: E402
from features.cache.store import Cache  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
SHARED_FLOWERS = os.path.join(SHARED, "data", "flowers5")
FLOWERS = os.path.join(tempfile.gettempdir(), "bottleneck-bench", "flowers5")
MOBILENET = os.path.join(SHARED, "weights", "mobilenet_2_5_224_tf_no_top.h5")
MOBILENET_ARGS = ("mobilenet", MOBILENET, 0.25, "conv_pw_13_relu", 224)


def flowers() -> str:
    """A private copy of flowers5 (made once): extract's split record is written beside it."""
    if not os.path.isdir(SHARED_FLOWERS):
        sys.exit("needs ../shared/data/flowers5")
    if not os.path.isdir(FLOWERS):
        tmp = FLOWERS + f".tmp{os.getpid()}"
        shutil.copytree(SHARED_FLOWERS, tmp, ignore=shutil.ignore_patterns(".*"))
        for base, dirs, _ in os.walk(tmp):
            os.chmod(base, 0o755)
        os.rename(tmp, FLOWERS)
    return FLOWERS


def subset(n: int, dest: str) -> str:
    """The first n/5 JPEGs of each flowers class (or drawn JPEGs without ../shared)."""
    if os.path.isdir(SHARED_FLOWERS):
        for name in class_folders(SHARED_FLOWERS):
            os.makedirs(os.path.join(dest, name), exist_ok=True)
            for f in sorted(os.listdir(os.path.join(SHARED_FLOWERS, name)))[: max(1, n // 5)]:
                shutil.copy(os.path.join(SHARED_FLOWERS, name, f), os.path.join(dest, name, f))
    else:
        from bottleneck.data.synthetic import make_image_folder
        make_image_folder(dest, n_per_class=max(1, n // 4), size=227, ext=".jpg")
    return dest


def stock_route(folder, backbone, weights, alpha, layer, size, batch_size=32):
    """Keras' documented route, as a user writes it; returns (seconds, features)."""
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


def our_route(folder, backbone, weights, alpha, layer, size, precision="auto", batch_size=32,
              devices=None):
    """`run_extract` into a temporary cache; (seconds, features, images, steady img/s, result)."""
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
    return seconds, feats, result["n_images"], result["steady_images_per_second"], result


def median_ratio(pairs) -> float:
    """Median over rounds of stock seconds / our seconds (> 1: ours is faster)."""
    return round(statistics.median(stock / ours for ours, stock in pairs), 2)


def interleaved(rounds: int, ours, stock, label: str, warmup: bool = False) -> list[dict]:
    """`rounds` rounds of ours() then stock(), each printed as it ends with the load beside it;
    ours/stock return (seconds, extra dict). `warmup` first runs one untimed round of each, so
    that the first timed route does not pay the process's first build, trace and tf.data start
    that the second one then finds warm (in-process cases only)."""
    if warmup:
        ours()
        stock()
    rows = []
    for r in range(rounds):
        row = {"round": r + 1}
        for name, fn in (("ours", ours), ("stock", stock)):
            before = loadavg()
            seconds, extra = fn()
            row[f"{name}_s"] = round(seconds, 2)
            row.update({f"{name}_{k}": v for k, v in extra.items()})
            row[f"load_{name}"] = f"{before} -> {loadavg()}"
        row["ratio"] = round(row["stock_s"] / row["ours_s"], 2)
        print(json.dumps({"case": label, **row}), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def case_mobilenet(args):
    folder = flowers()
    n = sum(len(os.listdir(os.path.join(folder, c))) for c in class_folders(folder))
    feats = {}

    def ours():
        seconds, feats["ours"], _, steady, result = our_route(folder, *MOBILENET_ARGS)
        return seconds, {"img_s": round(n / seconds, 1), "steady_img_s": steady,
                         "precision": result["precision"]["used"]}

    def stock():
        seconds, feats["stock"] = stock_route(folder, *MOBILENET_ARGS)
        return seconds, {"img_s": round(n / seconds, 1)}

    rows = interleaved(args.rounds, ours, stock, "mobilenet-flowers", args.warmup)
    diff = np.abs(feats["ours"] - feats["stock"]).max() / np.abs(feats["stock"]).max()
    return {"case": "mobilenet-0.25 flowers5 224px, in-process", "images": n,
            "machine": machine(), "rounds": rows,
            "ratio_median": median_ratio((r["ours_s"], r["stock_s"]) for r in rows),
            "warmup_round": args.warmup, "target_ratio": 1.5, "features_max_rel_diff": float(diff)}


def case_vgg16(args):
    tmp = tempfile.mkdtemp()
    folder = subset(args.n, os.path.join(tmp, "data"))
    from bottleneck.backbones.network import build_feature_model
    model, _ = build_feature_model(get_backbone("vgg16"), weights=None, image_size=224,
                                   alpha=None, layer_specs=["block5_pool"], pool="avg")
    flops = model_flops(model)
    del model
    peaks = {"fp32": matmul_peak("float32"), "bf16": matmul_peak("bfloat16"),
             "load": loadavg()}
    feats, n = {}, [0]

    def ours(precision):
        def run():
            seconds, feats[precision], n[0], steady, result = our_route(
                folder, "vgg16", None, None, "block5_pool", 224, precision=precision)
            return seconds, {"steady_img_s": steady, "precision": result["precision"],
                             "fraction_of_peak": round((steady or 0) * flops / peaks["fp32"], 3)}
        return run

    def stock():
        seconds, feats["stock"] = stock_route(folder, "vgg16", None, None, "block5_pool", 224)
        return seconds, {}

    rows = interleaved(args.rounds, ours(args.precision), stock, "vgg16", args.warmup)
    out = {"case": f"vgg16 block5_pool 224px JPEG, ours --precision {args.precision}",
           "images": n[0], "machine": machine(), "gflops_per_image": round(flops / 1e9, 2),
           "peak_fp32_gflops": round(peaks["fp32"] / 1e9, 1),
           "peak_bf16_gflops": round(peaks["bf16"] / 1e9, 1), "peak_load": peaks["load"],
           "rounds": rows, "ours_over_stock_median": median_ratio(
               (r["ours_s"], r["stock_s"]) for r in rows), "target": 1.0}
    if args.bf16:
        bf16 = interleaved(args.rounds, ours("bfloat16"), ours("float32"), "vgg16 bf16 vs fp32")
        out["bf16_rounds"] = bf16
        out["bf16_over_fp32_median"] = median_ratio((r["ours_s"], r["stock_s"]) for r in bf16)
        out["bf16_rel_diff"] = round(float(np.linalg.norm(feats["bfloat16"] - feats["float32"])
                                           / np.linalg.norm(feats["float32"])), 4)
    shutil.rmtree(tmp)
    return out


def case_process(args):
    """Whole processes: `python cli.py extract ...` against bench/stock_extract.py on flowers5."""
    folder = flowers()
    tmp = tempfile.mkdtemp()
    py = sys.executable
    ours_cmd = [py, os.path.join(ROOT, "cli.py"), "extract", "--data", folder, "--backbone",
                "mobilenet", "--alpha", "0.25", "--weights", MOBILENET, "--layer",
                "conv_pw_13_relu", "--out", os.path.join(tmp, "ours.h5"), "--overwrite", "--json"]
    stock_cmd = [py, os.path.join(ROOT, "bench", "stock_extract.py"), "--data", folder,
                 "--weights", MOBILENET, "--out", os.path.join(tmp, "stock.h5")]
    last = {}

    def timed(cmd, keep):
        def run():
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
            seconds = time.perf_counter() - start
            if proc.returncode:
                sys.exit(f"{cmd} failed: {proc.stderr[-2000:]}")
            if keep:
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                last.update(result)
                return seconds, {"phases": result.get("phases"),
                                 "precision": result.get("precision", {}).get("used")}
            return seconds, {}
        return run

    rows = interleaved(args.rounds, timed(ours_cmd, True), timed(stock_cmd, False), "process")
    shutil.rmtree(tmp)
    return {"case": "whole process, mobilenet-0.25 flowers5 224px: `cli.py extract` vs "
                    "bench/stock_extract.py", "images": last.get("n_images"),
            "machine": machine(), "ours_command": " ".join(ours_cmd[1:]),
            "stock_command": " ".join(stock_cmd[1:]), "rounds": rows,
            "ratio_median": median_ratio((r["ours_s"], r["stock_s"]) for r in rows),
            "target_ratio": 1.2}


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
    weights = MOBILENET if os.path.isfile(MOBILENET) else None
    our_route(args.folder, "mobilenet", weights, 0.25, "conv_pw_13_relu", 224)
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
    seconds, _, n, steady, _ = our_route(args.folder, "mobilenet", weights, 0.25, "conv_pw_13_relu",
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
    parser.add_argument("--case", choices=["mobilenet-flowers", "vgg16", "process", "memory",
                                           "workers", "decode", "_rss", "_pinned"],
                        required=True)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of ours and stock for the speed cases")
    parser.add_argument("--precision", default="auto",
                        help="ours' --precision in the vgg16 case (default auto)")
    parser.add_argument("--warmup", action="store_true",
                        help="in-process cases: one untimed round of each route first")
    parser.add_argument("--bf16", action="store_true",
                        help="vgg16: also interleave ours bfloat16 against ours float32")
    parser.add_argument("--n", type=int, default=100, help="images for vgg16/memory cases")
    parser.add_argument("--folder")
    parser.add_argument("--workers", type=int, default=2, help="most workers for the workers case")
    parser.add_argument("--core", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    result = {"mobilenet-flowers": case_mobilenet, "vgg16": case_vgg16,
              "process": case_process, "memory": case_memory,
              "_rss": case_rss, "workers": case_workers, "decode": case_decode,
              "_pinned": case_pinned}[args.case](args)
    if result:
        result.setdefault("machine", machine())
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
