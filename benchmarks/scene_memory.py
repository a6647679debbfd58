"""Peak memory and time of `atrous predict` on a scene larger than memory allows reading whole.

    .venv/bin/python benchmarks/scene_memory.py [--size 20000] [--bands 4] [--window 512]
        [--batch-size 4] [--threads 2] [--work /tmp/atrous_scene] [--json FILE]

Writes (once; kept in --work and reused) a SIZE x SIZE GeoTIFF of BANDS uint16 bands, tiled
256 x 256 and DEFLATE-compressed, strip by strip (smooth fields: the content does not matter
here), and a tiny 2-class U-Net checkpoint for BANDS bands (base_channels 4, random weights:
memory and time do not depend on them). Then runs, each in a process of its own,

    atrous predict --checkpoint MODEL scene.tif --out DIR --slide WINDOW --batch-size B

first on a 512 x 512 scene (the floor: Python, torch and the model) and then on the large one,
with OMP_NUM_THREADS=THREADS, and reads each process's peak resident memory (ru_maxrss, from
os.wait4) and wall time. Prints a table and writes JSON (default
benchmarks/results/scene_memory.json, or scene_memory_SIZE.json for another --size).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from harness import RESULTS_DIR, command_line, cpu_name, write_json

# imported before the long run, not after it
from atrous.inference.infer import tile_starts

STRIP = 256  # rows written at a time while making the scene


def write_scene(path: Path, size: int, bands: int) -> float:
    """A size x size uint16 GeoTIFF (UTM 33N, 10 m pixels), written strip by strip; its seconds."""
    import rasterio

    start = time.perf_counter()
    profile = dict(driver="GTiff", height=size, width=size, count=bands, dtype="uint16", crs="EPSG:32633",
                   transform=rasterio.Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0), tiled=True,
                   blockxsize=256, blockysize=256, compress="deflate", predictor=2, BIGTIFF="YES")
    cols = np.arange(size, dtype=np.float32)
    tmp = path.with_suffix(".partial.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        for top in range(0, size, STRIP):
            rows = np.arange(top, min(top + STRIP, size), dtype=np.float32)[:, None]
            strip = [2000 + 1500 * np.sin(rows / (40 + 9 * b)) * np.cos(cols / (55 + 7 * b)) for b in range(bands)]
            dst.write(np.stack(strip).astype(np.uint16), window=rasterio.windows.Window(0, top, size, len(rows)))
    tmp.rename(path)
    return time.perf_counter() - start


def write_checkpoint(path: Path, bands: int) -> None:
    import torch

    import atrous

    torch.manual_seed(0)
    model = atrous.create_model("unet", 2, in_channels=bands, base_channels=4)
    atrous.save_checkpoint(model.eval(), str(path), mean=[2000.0] * bands, std=[1000.0] * bands,
                           class_names=["background", "field"])


def run_predict(checkpoint: Path, scene: Path, out: Path, window: int, batch_size: int, threads: int) -> dict:
    """One `atrous predict` process: its wall seconds and peak resident memory (MiB)."""
    command = [sys.executable, "-m", "atrous", "predict", "--checkpoint", str(checkpoint), str(scene), "--out",
               str(out), "--slide", str(window), "--batch-size", str(batch_size)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"atrous predict failed ({process.returncode}): {' '.join(command)}")
    return {"seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024, "command": " ".join(command[1:])}


def check_output(scene: Path, mask: Path) -> dict:
    import rasterio

    with rasterio.open(scene) as src, rasterio.open(mask) as out:
        assert (out.width, out.height) == (src.width, src.height)
        assert out.crs == src.crs and out.transform == src.transform
        return {"mask_bytes": mask.stat().st_size, "mask_blocks": out.block_shapes[0], "crs": str(out.crs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--bands", type=int, default=4)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default="/tmp/atrous_scene")
    parser.add_argument("--json")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = work / f"unet_{args.bands}band.safetensors"
    write_checkpoint(checkpoint, args.bands)
    scenes = {"floor": work / f"scene_512_{args.bands}band.tif", "scene": work / f"scene_{args.size}_{args.bands}band.tif"}
    made = {name: write_scene(path, 512 if name == "floor" else args.size, args.bands)
            for name, path in scenes.items() if not path.exists()}
    runs = {name: run_predict(checkpoint, path, work / f"out_{name}", args.window, args.batch_size, args.threads)
            for name, path in scenes.items()}
    result = {
        "cpu": cpu_name(bf16=True), "threads": args.threads, "precision": "auto (predict's default)",
        "size": args.size, "bands": args.bands, "dtype": "uint16", "window": args.window,
        "stride": (2 * args.window) // 3, "batch_size": args.batch_size, "model": "unet base_channels=4, 2 classes",
        "windows": len(_starts(args.size, args.window)) ** 2, "input_bytes_uncompressed": args.size ** 2 * args.bands * 2,
        "input_bytes": scenes["scene"].stat().st_size, "scene_written_s": made.get("scene"),
        "floor": runs["floor"], "scene_run": runs["scene"],
        "output": check_output(scenes["scene"], work / "out_scene" / f"{scenes['scene'].stem}.tif"),
        "made_by": command_line(__file__, python=True),
    }
    print(f"{result['cpu']}, {args.threads} threads, {args.window}-pixel windows, batch {args.batch_size}")
    print(f"{'scene':<22} {'windows':>8} {'seconds':>9} {'peak RSS MiB':>13}")
    for name, size in (("floor", 512), ("scene", args.size)):
        windows = len(_starts(size, args.window)) ** 2
        print(f"{f'{size}x{size}x{args.bands} uint16':<22} {windows:>8} {runs[name]['seconds']:>9.1f} "
              f"{runs[name]['peak_rss_mib']:>13.0f}")
    default = "scene_memory.json" if args.size == 20000 else f"scene_memory_{args.size}.json"
    path = Path(args.json) if args.json else RESULTS_DIR / default
    write_json(path, result)
    print(f"wrote {path}")


def _starts(length: int, window: int) -> list[int]:
    return tile_starts(max(length, window), window, max(1, (2 * window) // 3))


if __name__ == "__main__":
    main()
