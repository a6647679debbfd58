"""Where the time goes: atrous' default path (torch.profiler, per ATen operator) against
OpenVINO bf16 (its per-layer performance counters, PERF_COUNT) on one forward of the same
model and input.

    .venv/bin/python benchmarks/engine_profile.py [--size 360x480] [--threads 1] [--top 12]

Model: torchvision's deeplabv3_resnet50 (21 classes, random weights, seed 0) as atrous'
(`atrous.from_torchvision`). PyTorch: `atrous.infer(prepare(model), x)` at the default
precision, one profiled call after a warm-up; self CPU time per operator. OpenVINO: the model
converted in memory (the engine "openvino"), compiled at bf16 with PERF_COUNT, one profiled
request after a warm-up; real time per (layer type, kernel). Writes
benchmarks/results/engine_profile.json.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from harness import RESULTS_DIR, command_line, cpu_name, write_json

import atrous
from atrous.checkpoints.openvino_model import on_openvino
from atrous.inference.infer import prepare

RESULTS = RESULTS_DIR / "engine_profile.json"


def torch_profile(model: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    """{ATen operator: self CPU ms} of one call of atrous' default path."""
    fast = prepare(model)
    atrous.infer(fast, x)  # warm-up
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        atrous.infer(fast, x)
    return {event.key: event.self_cpu_time_total / 1e3 for event in prof.key_averages()}


def openvino_profile(model: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    """{layer type (kernel): ms} of one bf16 request of the converted model."""
    import openvino as ov

    converted = on_openvino(model)
    config = {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": torch.get_num_threads(),
              "PERF_COUNT": True, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    compiled = ov.Core().compile_model(converted.graph, "CPU", config)
    request = compiled.create_infer_request()
    request.infer({0: x.numpy()})  # warm-up
    request.infer({0: x.numpy()})
    times: defaultdict[str, float] = defaultdict(float)
    for info in request.get_profiling_info():
        times[f"{info.node_type} ({info.exec_type})"] += info.real_time.total_seconds() * 1e3
    return dict(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="360x480")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import torchvision.models.segmentation as tvs

    torch.manual_seed(0)
    tv = tvs.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=False)
    model = atrous.from_torchvision("deeplabv3_resnet50", tv.state_dict()).eval()
    x = torch.randn(1, 3, *(int(v) for v in args.size.lower().split("x")))
    profiles = {"torch default": torch_profile(model, x), "openvino bf16": openvino_profile(model, x)}
    print(f"CPU: {cpu_name(bf16=True)}; {args.threads} thread(s); {args.size}")
    for name, times in profiles.items():
        total = sum(times.values())
        print(f"\n{name}: {total:.0f} ms in all\n| op | ms | share |\n|---|---:|---:|")
        for op, ms in sorted(times.items(), key=lambda item: -item[1])[: args.top]:
            print(f"| {op} | {ms:.1f} | {100 * ms / total:.1f} % |")
    write_json(RESULTS, {"command": command_line(__file__, python=True), "cpu": cpu_name(bf16=True),
                         "threads": args.threads, "size": args.size, "ms": profiles})


if __name__ == "__main__":
    main()
