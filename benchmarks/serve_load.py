"""A bounded load test of `atrous serve` on loopback: the real server (`python -m atrous
serve`, uvicorn) in its own process, N client threads with keep-alive connections sending a
fixed count of `POST /predict` requests; requests per second, p50/p95 latency, errors (must
be 0), requests refused with 503 (only in the overload row, by design) and the server's peak
resident memory (VmHWM). The peer in the same run: the same work without HTTP
(`Segmenter.run` called directly in this process), whose median is the floor of a request.
Last, the memory bound: one image at the default --max-megapixels (the test image resized
to 2304x1728), without and with the dense CRF, on a fresh server.

    .venv/bin/python benchmarks/serve_load.py [--checkpoint FILE] [--image FILE] [--requests 32]

Without --checkpoint it serves a freshly initialised `make demo` architecture (DeepLab v3+
ResNet-18, decoder 128, 7 classes: speed does not depend on the weights); without --image a
CamVid val image (360x480) if ../shared/data is there, else a synthetic scene of that size.
Writes benchmarks/results/serve_load.json.
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from harness import CAMVID_DATA, RESULTS_DIR, ROOT, command_line, timed, write_json

CAMVID_IMAGE = CAMVID_DATA / "val" / "0016E5_07959.png"
LIMIT_SIZE = (2304, 1728)  # 3.98 megapixels: just under `atrous serve`'s default --max-megapixels 4


def demo_checkpoint(path: Path) -> Path:
    import torch

    import atrous
    from atrous.data import SYNTHETIC_INFO

    torch.manual_seed(0)
    model = atrous.create_model("deeplab_v3plus", SYNTHETIC_INFO.num_classes, backbone="resnet18",
                                decoder_channels=128)
    atrous.save_checkpoint(model.eval(), str(path), class_names=list(SYNTHETIC_INFO.class_names),
                           palette=[list(c) for c in SYNTHETIC_INFO.palette])
    return path


def request_image(path: str | None, size: tuple[int, int] | None = None) -> tuple[bytes, str]:
    """PNG bytes to send (resized to `size` = (width, height) if given) and a description."""
    from PIL import Image

    if path is None and CAMVID_IMAGE.is_file():
        path = str(CAMVID_IMAGE)
    if path is not None:
        image = Image.open(path).convert("RGB")
        name = os.path.basename(path)
    else:
        from atrous.data import SyntheticScenes

        scene = SyntheticScenes("val", size=480, length=1)[0][0]  # (3, 480, 480) uint8
        image = Image.fromarray(scene.permute(1, 2, 0).numpy()[:360])
        name = "synthetic scene"
    if size is not None:
        image = image.resize(size, Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), f"{name}, {image.width}x{image.height}"


def multipart(png: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"load.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class Server:
    """`python -m atrous serve` on a free loopback port."""

    def __init__(self, checkpoint: Path, log: Path, *options: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.log = log
        with open(log, "w") as handle:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "atrous", "serve", "--checkpoint", str(checkpoint), "--port", "0", *options],
                stdout=handle, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 300
        while time.time() < deadline and self.process.poll() is None:
            found = re.search(r"on http://([\d.]+):(\d+)/", log.read_text())
            if found:
                self.host, self.port = found.group(1), int(found.group(2))
                return
            time.sleep(0.2)
        raise RuntimeError(f"the server did not start:\n{log.read_text()}")

    def peak_rss_mib(self) -> float | None:
        """The process' peak resident set size so far (Linux /proc), in MiB."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return None
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def load(server: Server, body: bytes, content_type: str, *, clients: int, requests: int, query: str) -> dict:
    """`requests` POSTs shared by `clients` threads, each on its own keep-alive connection."""
    latencies: list[float] = []
    statuses: list[int | str] = []
    lock = threading.Lock()
    remaining = [requests]

    def client() -> None:
        connection = http.client.HTTPConnection(server.host, server.port, timeout=600)
        while True:
            with lock:
                if remaining[0] == 0:
                    break
                remaining[0] -= 1
            start = time.perf_counter()
            try:
                connection.request("POST", f"/predict?{query}", body, {"Content-Type": content_type})
                response = connection.getresponse()
                response.read()
                status: int | str = response.status
                if response.getheader("connection", "").lower() == "close":
                    connection.close()
            except (OSError, http.client.HTTPException) as err:
                status = type(err).__name__
                connection.close()
            with lock:
                latencies.append(time.perf_counter() - start)
                statuses.append(status)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    ok = sorted(t for t, s in zip(latencies, statuses, strict=True) if s == 200)
    return {
        "clients": clients,
        "requests": requests,
        "seconds": round(seconds, 2),
        "requests_per_s": round(len(ok) / seconds, 3),
        "p50_ms": round(1000 * _quantile(ok, 0.50), 1) if ok else None,
        "p95_ms": round(1000 * _quantile(ok, 0.95), 1) if ok else None,
        "ok": len(ok),
        "refused_503": statuses.count(503),
        "errors": sum(1 for s in statuses if s not in (200, 503)),
        "error_kinds": sorted({str(s) for s in statuses if s not in (200, 503)}),
        "peak_rss_mib": server.peak_rss_mib(),
    }


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    return float(np.quantile(np.asarray(sorted_values), q))


def bare_times_ms(checkpoint: Path, png: bytes, query: dict[str, str], repeats: int) -> list[float]:
    """The same work as one request, without HTTP: Segmenter.run in this process."""
    import atrous
    from atrous.inference.refinement import build_crf
    from atrous.serve.segment import Options, Segmenter, Timer

    model = atrous.load_checkpoint(str(checkpoint))
    crfs = {kind: build_crf(kind, model) for kind in ("dense", "conv")}
    segmenter = Segmenter(model, crfs, name=checkpoint.name)
    options = Options(output=query.get("output", "mask"), crf=query.get("crf", "none"))
    times: list[float] = []

    def work() -> None:  # a warm-up, then the timed runs
        times.extend(timed(lambda: segmenter.run(png, "load.png", options, Timer()), repeats, warmup=1).times)

    # in a worker thread, as in the server: on this machine the main thread's inference was
    # several times slower than a worker thread's, which would flatter the server
    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    return [1000 * t for t in times]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="default: a fresh `make demo` architecture")
    parser.add_argument("--image", help="default: a CamVid val image, else a synthetic scene")
    parser.add_argument("--requests", type=int, default=32, help="requests per row")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8], help="concurrent clients per row")
    parser.add_argument("--output", choices=("mask", "overlay", "json"), default="mask")
    parser.add_argument("--crf", choices=("none", "dense", "conv"), default="none")
    parser.add_argument("--overload-clients", type=int, default=16,
                        help="a row with this many clients against --queue 2: 503s by design (0: no row)")
    parser.add_argument("--no-limit-rows", dest="limit_rows", action="store_false",
                        help="skip the two rows of one image at the default pixel limit")
    return parser.parse_args()


def server_rows(checkpoint: Path, tmp: Path, args: argparse.Namespace, png: bytes, query: str,
                queue: str) -> tuple[list[dict], float | None]:
    """The rows measured on a server: one per --clients count (a server with --queue
    `queue`), the overload row (its own server, --queue 2), the two rows of one image at the
    pixel limit (a fresh server); and the first server's peak memory after its warm-up."""
    body, content_type = multipart(png)
    rows = []
    server = Server(checkpoint, tmp / "server.log", "--queue", queue)
    try:
        warm = load(server, body, content_type, clients=1, requests=2, query=query)
        idle_rss = server.peak_rss_mib()
        assert warm["errors"] == 0, (warm, (tmp / "server.log").read_text()[-2000:])
        for clients in args.clients:
            rows.append({"row": f"{clients} clients", **load(server, body, content_type, clients=clients,
                                                              requests=args.requests, query=query)})
    finally:
        server.stop()
    if args.overload_clients:
        server = Server(checkpoint, tmp / "overload.log", "--queue", "2")
        try:
            load(server, body, content_type, clients=1, requests=2, query=query)
            rows.append({"row": f"{args.overload_clients} clients, queue 2 (overload)",
                         **load(server, body, content_type, clients=args.overload_clients,
                                requests=args.requests, query=query)})
        finally:
            server.stop()
    if args.limit_rows:
        big, _ = request_image(args.image, LIMIT_SIZE)
        big_body, big_type = multipart(big)
        server = Server(checkpoint, tmp / "limit.log")
        try:
            for crf in ("none", "dense"):
                rows.append({"row": f"1 image {LIMIT_SIZE[0]}x{LIMIT_SIZE[1]}, crf={crf}",
                             **load(server, big_body, big_type, clients=1, requests=1,
                                    query=f"output={args.output}&crf={crf}")})
        finally:
            server.stop()
    return rows, idle_rss


def print_table(rows: list[dict], bare: float) -> None:
    """The rows, each with its p50 over the bare median (`p50_over_bare`, set here)."""
    print(f"{'':<34} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p50/bare':>9} {'errors':>6} {'503':>5} {'peak RSS MiB':>13}")
    nan = float("nan")
    for row in rows:
        ratio = row["p50_ms"] / bare if row["p50_ms"] and not row["row"].startswith("1 image") else nan
        row["p50_over_bare"] = None if ratio != ratio else round(ratio, 2)  # NaN: not comparable
        print(f"{row['row']:<34} {row['requests_per_s']:>7.2f} {row['p50_ms'] or nan:>8.0f} {row['p95_ms'] or nan:>8.0f} "
              f"{ratio:>9.2f} {row['errors']:>6} {row['refused_503']:>5} {row['peak_rss_mib'] or nan:>13.0f}")


def main() -> int:
    args = parse_args()

    import torch

    query = {"output": args.output, "crf": args.crf}
    query_string = "&".join(f"{k}={v}" for k, v in query.items())
    png, image = request_image(args.image)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(args.checkpoint) if args.checkpoint else demo_checkpoint(Path(tmp) / "demo.safetensors")
        queue = str(max(args.clients) + 1)
        repeats = max(3, args.requests // 8)
        bare_times = bare_times_ms(checkpoint, png, query, repeats)  # before the server rows and after
        rows, idle_rss = server_rows(checkpoint, Path(tmp), args, png, query_string, queue)
        bare_times += bare_times_ms(checkpoint, png, query, repeats)
        bare = statistics.median(bare_times)

    print(f"atrous serve load test: {image}, {query_string}, server --concurrency 1 --queue {queue}; "
          f"the same work without HTTP: {bare:.0f} ms (median); server RSS after warm-up {idle_rss:.0f} MiB")
    print_table(rows, bare)
    result = {
        "command": command_line(__file__),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__},
        "checkpoint": args.checkpoint or "fresh deeplab_v3plus resnet18 decoder_channels=128, 7 classes",
        "image": image,
        "query": query,
        "server_options": {"concurrency": 1, "queue": int(queue)},
        "bare_median_ms": round(bare, 1),
        "bare_times_ms": [round(t, 1) for t in bare_times],
        "server_rss_after_warmup_mib": idle_rss,
        "rows": rows,
    }
    out = RESULTS_DIR / "serve_load.json"
    write_json(out, result)
    print(f"wrote {out.relative_to(ROOT)}")
    errors = sum(row["errors"] for row in rows)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
