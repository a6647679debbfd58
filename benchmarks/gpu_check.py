"""One prepared GPU check: atrous on a CUDA GPU against its peers, measured in the same run.

    .venv/bin/python benchmarks/gpu_check.py [--timeout-s 440] [--sections a b c d]
        [--json benchmarks/results/gpu_check.json] [--markdown benchmarks/results/gpu_check.md]
    .venv/bin/python benchmarks/gpu_check.py --dry-run   # every step at toy size on the CPU

Rows (ratios: peer median seconds / atrous median seconds, > 1: atrous is faster):
 a. DenseCRF and ConvCRF on the GPU against pydensecrf on the CPU: 360x480 (H x W), 11
    classes, 10 mean-field iterations (benchmarks/crf.py's parameters), 1 image and a batch
    of 8 (pydensecrf: the 8 images one after the other); label agreement with pydensecrf.
    Images: atrous' synthetic scenes (val split); unaries: their masks as noisy, smoothed
    one-hot logits (benchmarks/crf.py's stand-in). Timed: one forward under no_grad, inputs
    already on the GPU, after one warm-up call (the cold first call is recorded too).
 b. One DeepLab v3+ ResNet-50 training step (forward, cross-entropy, backward, SGD with
    momentum) at 513x513, batch 8, 21 classes, against smp's DeepLabV3Plus(resnet50): fp32,
    bf16 autocast, and torch.compile (under bf16 autocast). Encoder weights random (nothing
    is downloaded); both models channels-last; smp's input zero-padded to a multiple of 16
    and its logits cropped (atrous' model pads to its output stride the same way). Steps of
    the two models interleaved; warm-up steps (and compilation) not timed. atrous' model is
    the paper's (plain 3x3 convolutions in ASPP and decoder); smp uses separable ones, so the
    eager rows also time atrous with `separable=True` (smp's work) in the details.
 c. Inference of torchvision's deeplabv3_resnet50 (weights=None, weights_backbone=None, 21
    classes, batch-norm statistics from one train-mode pass on random images) at 1024x2048,
    batch 1, in fp16 and bf16: atrous (atrous.from_torchvision of its state dict, prepared
    once with atrous.inference.infer.prepare(model, precision), then atrous.infer) against
    torchvision's own model under torch.autocast; label agreement with each other and with
    torchvision in fp32.
 d. Two processes training through atrous.training (NCCL, one GPU each) on synthetic scenes,
    against one process training the same run (same global batch) in the same check; the
    largest weight difference between the two runs' models. Needs >= 2 GPUs, else skipped.

Every row records the device, torch version, precision, shapes, repeats, and 'ran' or
'skipped' with the reason (pydensecrf missing, torch.compile failing, the --timeout-s budget
spent, ...: one line, and the check goes on). Timings are medians, torch.cuda.synchronize()
before and after each. The whole check stays within --timeout-s (default 440 s, imports
included): a row that would not fit is skipped with the reason, one that runs over is stopped.
Writes the JSON after every row and the markdown table at the end, and prints the table.

--dry-run runs every row at toy size on the CPU (32x48 images, 2 classes, 2 iterations,
batch 2, ResNet-18 for training, torch.compile with the aot_eager backend, gloo in place of
NCCL for row d) to show that the check works before a GPU is at hand; its default outputs
are benchmarks/results/gpu_check_dry.{json,md}, so a dry run never overwrites a GPU run's.
"""

from __future__ import annotations

import time

START = time.perf_counter()  # the budget counts from here (imports included)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from harness import (  # noqa: E402
    RESULTS_DIR,
    clock,
    command_line,
    cpu_name,
    import_sibling,
    interleaved,
    pad_to,
    set_batch_norm_statistics,
    timed,
    write_file,
    write_json,
)

RESERVE_S = 8.0  # kept back from the budget to write the results
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# ---------------------------------------------------------------- what runs, at which size


@dataclass(frozen=True)
class Plan:
    """Sizes, repeats and time estimates of a GPU run; DRY is the same at toy size."""

    crf_size: tuple[int, int] = (360, 480)
    crf_classes: int = 11
    crf_iterations: int = 10
    crf_batch: int = 8
    crf_repeats: int = 5  # atrous calls and single pydensecrf images
    crf_batch_repeats: int = 3  # pydensecrf's sequential batch (8 images each)
    train_size: tuple[int, int] = (513, 513)
    train_batch: int = 8
    train_classes: int = 21
    train_backbone: str = "resnet50"
    train_warmup: int = 3
    train_repeats: int = 10
    compile_backend: str = "inductor"
    infer_size: tuple[int, int] = (1024, 2048)
    infer_classes: int = 21
    infer_warmup: int = 3
    infer_repeats: int = 10
    ddp_size: int = 256  # synthetic scenes and crops
    ddp_batch: int = 16  # the global batch
    ddp_backbone: str = "resnet50"
    ddp_iters: int = 25
    ddp_warmup: int = 5  # steps whose time is not counted
    ddp_precision: str = "bf16"
    threads: int | None = None  # torch CPU threads (None: torch's default)
    # seconds a task needs at least: a task is skipped when less than this is left
    need_s: dict[str, float] = dataclasses.field(default_factory=lambda: {
        "a": 45, "b": 40, "b3": 200, "c": 30, "d": 120})


DRY = Plan(crf_size=(32, 48), crf_classes=2, crf_iterations=2, crf_batch=2, crf_repeats=2, crf_batch_repeats=2,
           train_size=(32, 48), train_batch=2, train_classes=2, train_backbone="resnet18", train_warmup=1,
           train_repeats=2, compile_backend="aot_eager", infer_size=(32, 48), infer_classes=2, infer_warmup=1,
           infer_repeats=2, ddp_size=32, ddp_batch=4, ddp_backbone="resnet18", ddp_iters=3, ddp_warmup=1,
           ddp_precision="fp32", threads=1, need_s={"a": 3, "b": 5, "b3": 15, "c": 5, "d": 15})

# (id, section, what it measures); the order of the table. The tasks below fill them.
ROWS = [
    ("a1", "a", "DenseCRF (GPU) vs pydensecrf (CPU), 1 image"),
    ("a2", "a", "DenseCRF (GPU) vs pydensecrf (CPU), batch"),
    ("a3", "a", "ConvCRF (GPU) vs pydensecrf (CPU), 1 image"),
    ("a4", "a", "ConvCRF (GPU) vs pydensecrf (CPU), batch"),
    ("b1", "b", "DeepLab v3+ training step vs smp, fp32"),
    ("b2", "b", "DeepLab v3+ training step vs smp, bf16 autocast"),
    ("b3", "b", "DeepLab v3+ training step vs smp, torch.compile"),
    ("c1", "c", "deeplabv3_resnet50 inference vs torchvision, fp16"),
    ("c2", "c", "deeplabv3_resnet50 inference vs torchvision, bf16"),
    ("d1", "d", "2-process NCCL training vs 1 process"),
]


class BudgetSpent(BaseException):
    """The --timeout-s budget ran out during a row (a BaseException, so that no library's
    `except Exception` swallows it)."""


class Check:
    """The run's state: the plan, the device, the budget, the rows, the outputs."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dry = args.dry_run
        self.plan = DRY if self.dry else Plan()
        self.device = torch.device("cpu" if self.dry else "cuda")
        self.deadline = START + args.timeout_s
        self.interrupted = False
        self.env = environment(self.device, self.dry)
        self.rows: dict[str, dict[str, Any]] = {}
        for row_id, section, what in ROWS:
            self.rows[row_id] = dict(id=row_id, section=section, measures=what, status="pending", reason=None,
                                     device=self.env["device_name"], torch=torch.__version__, **planned(row_id, self))

    # ---- the budget
    def left(self) -> float:
        return self.deadline - time.perf_counter() - RESERVE_S

    @contextlib.contextmanager
    def deadline_guard(self):
        """Stop what runs when the budget is spent (SIGALRM raises BudgetSpent)."""
        seconds = self.left()
        if seconds <= 0:
            raise BudgetSpent

        def expire(signum, frame):
            raise BudgetSpent

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    # ---- rows
    def run_task(self, name: str, row_ids: list[str], task: Callable[[], None]) -> None:
        """Run one task (it fills `row_ids`); a task that would not fit, fails or runs out of
        budget leaves its unfilled rows 'skipped' with the one-line reason."""
        sections = self.args.sections
        if sections and not any(self.rows[r]["section"] in sections or r in sections for r in row_ids):
            self.skip(row_ids, f"not selected (--sections {' '.join(sections)})")
            return
        need = self.plan.need_s.get(name, self.plan.need_s.get(name[0], 0))
        if self.left() < need:
            self.skip(row_ids, f"budget: {max(self.left(), 0):.0f} s left of --timeout-s {self.args.timeout_s:g}, "
                               f"this needs about {need:.0f} s")
            return
        began = time.perf_counter()
        try:
            with self.deadline_guard():
                task()
        except BudgetSpent:
            self.interrupted = True
            self.skip(row_ids, f"stopped after {time.perf_counter() - began:.0f} s: the --timeout-s "
                               f"{self.args.timeout_s:g} budget was spent")
        except Exception as err:  # one line, and the check goes on
            self.skip(row_ids, f"failed: {one_line(err)}")
        finally:
            release_memory()
        for row_id in row_ids:
            self.rows[row_id]["task_wall_s"] = round(time.perf_counter() - began, 2)
        self.save()

    def skip(self, row_ids: list[str], reason: str) -> None:
        for row_id in row_ids:
            if self.rows[row_id]["status"] == "pending":
                self.rows[row_id].update(status="skipped", reason=reason)
                log(f"{row_id} skipped: {reason}")

    def fill(self, row_id: str, median_s: float, peer_median_s: float | None, **fields: Any) -> None:
        row = self.rows[row_id]
        row.update(status="ran", median_s=median_s, peer_median_s=peer_median_s,
                   speedup=peer_median_s / median_s if peer_median_s else None, **fields)
        row.setdefault("peer_status", "ran" if peer_median_s else "skipped")
        speed = f", speed-up {row['speedup']:.2f}x" if row["speedup"] else f" (peer skipped: {row.get('peer_reason')})"
        log(f"{row_id} ran: atrous {median_s:.4f} s, {row['peer']} {fmt(peer_median_s)} s{speed}")

    # ---- outputs
    def result(self) -> dict[str, Any]:
        return {
            "command": command_line(__file__, python=True),
            "dry_run": self.dry,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "wall_s": round(time.perf_counter() - START, 2),
            "timeout_s": self.args.timeout_s,
            "environment": self.env,
            "plan": dataclasses.asdict(self.plan),
            "speedup": "peer median s / atrous median s (> 1: atrous is faster)",
            "rows": [self.rows[row_id] for row_id, _, _ in ROWS],
        }

    def save(self) -> None:
        write_json(self.args.json, self.result())


def planned(row_id: str, check: Check) -> dict[str, Any]:
    """What a row measures, known before it runs: precision, shapes, repeats."""
    p, section = check.plan, row_id[0]
    if section == "a":
        batch = 1 if row_id in ("a1", "a3") else p.crf_batch
        h, w = p.crf_size
        return dict(precision="fp32", peer="pydensecrf (CPU, 1 thread)", repeats=p.crf_repeats, warmup=1,
                    peer_repeats=p.crf_repeats if batch == 1 else p.crf_batch_repeats,
                    shapes=dict(logits=[batch, p.crf_classes, h, w], image=[batch, 3, h, w],
                                iterations=p.crf_iterations))
    if section == "b":
        precision = {"b1": "fp32", "b2": "bf16", "b3": "bf16"}[row_id]
        return dict(precision=precision, peer=f"smp DeepLabV3Plus({p.train_backbone})", repeats=p.train_repeats,
                    warmup=p.train_warmup, compile=row_id == "b3",
                    compile_backend=p.compile_backend if row_id == "b3" else None,
                    shapes=dict(input=[p.train_batch, 3, *p.train_size], classes=p.train_classes,
                                backbone=p.train_backbone))
    if section == "c":
        return dict(precision="fp16" if row_id == "c1" else "bf16", peer="torchvision deeplabv3_resnet50 (autocast)",
                    repeats=p.infer_repeats, warmup=p.infer_warmup,
                    shapes=dict(input=[1, 3, *p.infer_size], classes=p.infer_classes))
    return dict(precision=p.ddp_precision, peer="1 process, same run", repeats=p.ddp_iters - p.ddp_warmup,
                warmup=p.ddp_warmup, processes=2, backend="gloo (dry run, CPU)" if check.dry else "nccl",
                shapes=dict(crop=[p.ddp_size, p.ddp_size], global_batch=p.ddp_batch, backbone=p.ddp_backbone))


# ---------------------------------------------------------------- helpers


def log(text: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f} s] {text}", file=sys.stderr, flush=True)


def one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = f"{type(err).__name__}: {lines[0] if lines else ''}"
    return text[:300]


def fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def synchronizer(device: torch.device) -> Callable[[], None] | None:
    """What makes a timer wait for `device`'s queued work (harness.clock's `sync`):
    torch.cuda.synchronize on a GPU, nothing on the CPU (a call is done when it returns)."""
    return partial(torch.cuda.synchronize, device) if device.type == "cuda" else None


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    dtype = DTYPES[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(device: torch.device, dry: bool) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    name = f"{gpus[0]} (cuda)" if device.type == "cuda" else f"{cpu_name()} (cpu, dry run)"
    return {
        "device_name": name, "gpus": gpus, "cpu": cpu_name(), "cpu_count": os.cpu_count(),
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "torchvision": version("torchvision"), "timm": version("timm"),
        "segmentation_models_pytorch": version("segmentation-models-pytorch"), "pydensecrf2": version("pydensecrf2"),
        "atrous": version("atrous"), "torch_threads": torch.get_num_threads(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
    }


# ---------------------------------------------------------------- a. CRFs


def crf_inputs(plan: Plan, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(count, K, H, W) stand-in logits and (count, 3, H, W) float images in [0, 255] from
    synthetic scenes (masks as noisy, smoothed one-hot logits, as benchmarks/crf.py)."""
    from atrous.data import SyntheticScenes

    noisy_smoothed = import_sibling("crf").noisy_smoothed  # benchmarks/crf.py's stand-in unaries
    h, w = plan.crf_size
    scenes = SyntheticScenes("val", length=count, size=max(h, w))
    images, logits = [], []
    for i in range(count):
        image, mask = scenes[i]
        labels = mask[:h, :w] % plan.crf_classes
        g = torch.Generator().manual_seed(i)
        onehot = F.one_hot(labels, plan.crf_classes).permute(2, 0, 1).float()[None]
        logits.append(noisy_smoothed(onehot, g))
        images.append(image[None, :, :h, :w].float())
    return torch.cat(logits), torch.cat(images)


def task_crf(check: Check, batch: int) -> None:
    """Rows a1 and a3 (batch 1) or a2 and a4 (the batch)."""
    import numpy as np

    from atrous.crf import ConvCRF, DenseCRF

    plan, device = check.plan, check.device
    sync = synchronizer(device)
    crf = import_sibling("crf")  # benchmarks/crf.py: the CPU comparison's parameters
    PARAMS, run_pydensecrf = crf.PARAMS, crf.run_pydensecrf

    dense_id, conv_id = ("a1", "a3") if batch == 1 else ("a2", "a4")
    logits, images = crf_inputs(plan, batch)
    rgb = [images[i].permute(1, 2, 0).to(torch.uint8).numpy().copy(order="C") for i in range(batch)]
    logits_d, images_d = logits.to(device), images.to(device)
    dense = DenseCRF(num_iterations=plan.crf_iterations, **PARAMS).to(device)
    conv = ConvCRF(num_iterations=plan.crf_iterations, **PARAMS).to(device)
    with torch.no_grad():
        fresh = DenseCRF(num_iterations=plan.crf_iterations, **PARAMS).to(device)
        cold_s, _, _ = timed(lambda: fresh(logits_d, images_d), 1, sync=sync)  # builds the position lattice
        dense(logits_d, images_d)  # warm-up
        conv(logits_d, images_d)
        t_dense, dense_times, out_dense = timed(lambda: dense(logits_d, images_d), plan.crf_repeats, sync=sync)
        t_conv, conv_times, out_conv = timed(lambda: conv(logits_d, images_d), plan.crf_repeats, sync=sync)
    labels_dense = out_dense.argmax(1).cpu()
    labels_conv = out_conv.argmax(1).cpu()
    labels_unary = logits.argmax(1)

    peer_s, peer_times, peer_reason, labels_ref = None, None, None, None
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as err:
        peer_reason = f"pydensecrf missing (pip install pydensecrf2): {one_line(err)}"
    else:
        def reference():
            return [run_pydensecrf(dcrf, logits[i : i + 1], rgb[i], plan.crf_iterations) for i in range(batch)]

        repeats = plan.crf_repeats if batch == 1 else plan.crf_batch_repeats
        peer_s, peer_times, q = timed(reference, repeats)
        labels_ref = torch.from_numpy(np.stack([qi.argmax(0) for qi in q]))

    def agreement(labels: torch.Tensor) -> float | None:
        return None if labels_ref is None else float((labels == labels_ref).double().mean())

    peer_fields = dict(peer_device=f"{cpu_name()} (cpu)", peer_times=peer_times,
                       peer_status="ran" if peer_s else "skipped", peer_reason=peer_reason)
    check.fill(dense_id, t_dense, peer_s, times=dense_times, agreement=agreement(labels_dense),
               details=dict(cold_first_call_s=cold_s, unary_agreement_with_dense=float(
                   (labels_unary == labels_dense).double().mean()), parameters=PARAMS), **peer_fields)
    check.fill(conv_id, t_conv, peer_s, times=conv_times, agreement=agreement(labels_conv),
               details=dict(filter_size=conv.filter_size, blur=conv.blur, parameters=PARAMS,
                            agreement_with_atrous_dense=float((labels_conv == labels_dense).double().mean())),
               **peer_fields)


# ---------------------------------------------------------------- b. training step


def make_train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str, *,
                    compile_backend: str | None = None, pad: int = 1) -> Callable[[], None]:
    """One training step of `model` on (x, y): forward under autocast, cross-entropy,
    backward, SGD (momentum 0.9, weight decay 1e-4). `pad`: zero-pad the input to that
    multiple and crop the logits (smp's models require it)."""
    device = x.device
    model.train()
    net = torch.compile(model, backend=compile_backend) if compile_backend else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    height, width = x.shape[-2:]
    padded = pad_to(x, pad).contiguous(memory_format=torch.channels_last) if pad > 1 else x

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            logits = net(padded)[..., :height, :width]
        loss = F.cross_entropy(logits.float(), y, ignore_index=255)
        loss.backward()
        optimizer.step()

    return step


def task_train(check: Check, row_id: str) -> None:
    import segmentation_models_pytorch as smp

    import atrous

    plan, device, row = check.plan, check.device, check.rows[row_id]
    precision, compile_backend = row["precision"], row["compile_backend"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(plan.train_batch, 3, *plan.train_size, generator=g).to(device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, plan.train_classes, (plan.train_batch, *plan.train_size), generator=g).to(device)

    def build_atrous(**options: Any) -> torch.nn.Module:
        torch.manual_seed(0)
        model = atrous.create_model("deeplab_v3plus", plan.train_classes, backbone=plan.train_backbone, **options)
        return model.to(device, memory_format=torch.channels_last)

    torch.manual_seed(0)
    peer = smp.DeepLabV3Plus(encoder_name=plan.train_backbone, encoder_weights=None, classes=plan.train_classes)
    peer = peer.to(device, memory_format=torch.channels_last)
    candidates = {"atrous": lambda: make_train_step(build_atrous(), x, y, precision, compile_backend=compile_backend),
                  "smp": lambda: make_train_step(peer, x, y, precision, compile_backend=compile_backend, pad=16)}
    if not compile_backend:  # smp's separable convolutions: atrous doing the same work
        candidates["atrous separable"] = lambda: make_train_step(build_atrous(separable=True), x, y, precision)
    # the first step of each alone (cuDNN's search; torch.compile compiles here): a failure
    # of smp's, or of the separable variant's, must not hide atrous' time
    paths: dict[str, Callable[[], None]] = {}
    first: dict[str, float] = {}
    peer_reason = None
    for name, build in candidates.items():
        try:
            step = build()
            first[name], _, _ = timed(step, 1, sync=synchronizer(device))
            row.setdefault("details", {})["first_step_s"] = dict(first)  # kept if the budget ends the row
        except Exception as err:
            what = f"{name}{' under torch.compile' if compile_backend else ''}: {one_line(err)}"
            if name == "atrous":
                raise RuntimeError(what) from err
            peer_reason = peer_reason or f"failed: {what}"
            continue
        paths[name] = step
    median, times, _ = interleaved(paths, plan.train_repeats, warmup=max(plan.train_warmup - 1, 0),
                                   sync=synchronizer(device))
    sep = median.get("atrous separable")
    details = dict(loss="cross-entropy", optimizer="SGD lr 0.01 momentum 0.9 weight decay 1e-4",
                   channels_last=True, smp_input="zero-padded to a multiple of 16, logits cropped",
                   atrous_model="deeplab_v3plus, paper defaults (plain 3x3 ASPP and decoder), output stride 16",
                   first_step_s=first, warmup_note=f"first step timed apart, then {max(plan.train_warmup - 1, 0)} "
                   "untimed steps each")
    if sep is not None and "smp" in median:
        details.update(atrous_separable_median_s=sep, separable_speedup_vs_smp=median["smp"] / sep)
    check.fill(row_id, median["atrous"], median.get("smp"), times=times["atrous"], peer_times=times.get("smp"),
               peer_reason=peer_reason, details=details)


# ---------------------------------------------------------------- c. inference


def inference_models(check: Check, shared: dict[str, Any]) -> dict[str, Any]:
    """torchvision's deeplabv3_resnet50 (random weights, calibrated batch norm), atrous' copy,
    the input and fp32 reference labels; built once for both precisions."""
    if shared:
        return shared
    import torchvision.models.segmentation as tvs

    import atrous

    plan, device = check.plan, check.device
    torch.manual_seed(0)
    tv = tvs.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=plan.infer_classes, aux_loss=False)
    tv = tv.to(device)
    g = torch.Generator().manual_seed(1)
    h, w = plan.infer_size
    calibration = torch.randn(2, 3, max(32, h // 4), max(32, w // 4), generator=g).to(device)
    set_batch_norm_statistics(tv, calibration)
    state = {key: value.cpu() for key, value in tv.state_dict().items()}
    ours = atrous.from_torchvision("deeplabv3_resnet50", state).to(device).eval()
    x = torch.randn(1, 3, h, w, generator=g).to(device)
    with torch.no_grad():
        reference = tv(x)["out"]
        exact = atrous.infer(ours, x, precision="fp32")
    shared.update(tv=tv, ours=ours, x=x, labels_fp32=reference.argmax(1),
                  fp32_max_abs_diff=float((exact - reference).abs().max()))
    return shared


def task_infer(check: Check, row_id: str, shared: dict[str, Any]) -> None:
    import atrous
    from atrous.inference.infer import prepare

    plan, device, precision = check.plan, check.device, check.rows[row_id]["precision"]
    models = inference_models(check, shared)
    tv, x = models["tv"], models["x"]
    # batch norm folded, channels-last, autocast: once
    prepare_s, net = clock(lambda: prepare(models["ours"], precision), synchronizer(device))

    def ours() -> torch.Tensor:
        return atrous.infer(net, x)

    def peer() -> torch.Tensor:
        with torch.no_grad(), autocast(device, precision):
            return tv(x)["out"]

    median, times, _ = interleaved({"atrous": ours, "torchvision": peer}, plan.infer_repeats,
                                   warmup=plan.infer_warmup, sync=synchronizer(device))
    labels_ours, labels_tv, labels_fp32 = ours().argmax(1), peer().argmax(1), models["labels_fp32"]
    same = float((labels_ours == labels_tv).double().mean())
    check.fill(row_id, median["atrous"], median["torchvision"], times=times["atrous"],
               peer_times=times["torchvision"], agreement=same,
               details=dict(atrous_path=f"atrous.infer(prepare(model, '{precision}'), x): batch norm folded, "
                                        "channels-last, autocast; float32 logits",
                            torchvision_path=f"tv(x)['out'] under torch.autocast({precision}), no_grad",
                            prepare_s=prepare_s, net_precision=net.precision,
                            atrous_agreement_with_fp32=float((labels_ours == labels_fp32).double().mean()),
                            torchvision_agreement_with_fp32=float((labels_tv == labels_fp32).double().mean()),
                            fp32_max_abs_logit_diff=models["fp32_max_abs_diff"],
                            weights="random, batch-norm statistics from one train-mode pass on random images"))


# ---------------------------------------------------------------- d. 2 processes


def ddp_config(check: Check, out: str) -> dict[str, Any]:
    p = check.plan
    return dict(model="deeplab_v3plus", backbone=p.ddp_backbone, dataset="synthetic", synthetic_size=p.ddp_size,
                synthetic_length=p.ddp_batch,  # one step per epoch: log.jsonl holds every step's clock
                crop_size=p.ddp_size, batch_size=p.ddp_batch, iters=p.ddp_iters, optimizer="sgd", lr=0.01,
                precision=p.ddp_precision, device=check.device.type, eval_split=None, progress=False,
                checkpoint_every=10_000, workers=0 if check.dry else 2, seed=0, out=out)


def _ddp_rank(rank: int, world: int, port: int, config: dict[str, Any], threads: int | None) -> None:
    """One rank of row d (started by torch.multiprocessing's spawn)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    if threads:
        torch.set_num_threads(threads)
    try:
        from atrous.training import TrainConfig, train

        train(TrainConfig(**config))
    except BaseException as err:
        Path(config["out"], f"error_rank{rank}.txt").write_text(one_line(err))
        raise


def step_times(out: str, warmup: int) -> list[float]:
    """Seconds of each step after the warm-up, from the training clock in log.jsonl."""
    clock = [0.0]
    for line in Path(out, "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "epoch" in record:
            clock.append(record["elapsed_s"])
    return [round(b - a, 3) for a, b in zip(clock, clock[1:], strict=False)][warmup:]


def task_ddp(check: Check) -> None:
    from safetensors.torch import load_file

    import atrous.training

    plan = check.plan
    with tempfile.TemporaryDirectory(prefix="atrous-gpu-check-") as tmp:
        single, double = os.path.join(tmp, "one"), os.path.join(tmp, "two")
        one = atrous.training.train(atrous.training.TrainConfig(**ddp_config(check, single)))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        config = ddp_config(check, double)
        os.makedirs(double, exist_ok=True)
        context = torch.multiprocessing.get_context("spawn")
        ranks = [context.Process(target=_ddp_rank, args=(rank, 2, port, config, plan.threads)) for rank in range(2)]
        try:
            for process in ranks:
                process.start()
            for process in ranks:
                process.join(max(check.left(), 1))
        finally:
            for process in ranks:
                if process.is_alive():
                    process.kill()
                    process.join(5)
        errors = sorted(Path(double).glob("error_rank*.txt"))
        if errors:
            raise RuntimeError(f"{errors[0].stem}: {errors[0].read_text()}")
        codes = [process.exitcode for process in ranks]
        if any(code != 0 for code in codes):
            raise RuntimeError(f"rank exit codes {codes}")
        t_one, t_two = step_times(single, plan.ddp_warmup), step_times(double, plan.ddp_warmup)
        if not t_one or not t_two or min(statistics.median(t_one), statistics.median(t_two)) <= 0:
            raise RuntimeError(f"no step times after {plan.ddp_warmup} warm-up steps in log.jsonl")
        a, b = load_file(os.path.join(single, "model.safetensors")), load_file(os.path.join(double, "model.safetensors"))
        common = [k for k in a if k in b and a[k].is_floating_point()]
        diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in common)
    check.fill("d1", statistics.median(t_two), statistics.median(t_one), times=t_two, peer_times=t_one,
               details=dict(how="atrous.training.train in 2 spawned processes (torchrun's variables set), "
                                "against the same run in this process",
                            step_time="median of per-step differences of log.jsonl's elapsed_s (10 ms "
                                      "resolution), data loading included",
                            mean_s=statistics.mean(t_two), peer_mean_s=statistics.mean(t_one),
                            one_process_precision=one["train"]["precision"],
                            max_abs_weight_difference=diff, tensors_compared=len(common)))


# ---------------------------------------------------------------- the table


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [f"gpu_check: {env['device_name']}; torch {env['torch']}, CUDA {env['cuda']}, "
             f"{result['date']}, {result['wall_s']:.0f} s{' (dry run: toy sizes on the CPU)' if result['dry_run'] else ''}. "
             "Speed-up: peer median s / atrous median s (> 1: atrous is faster). "
             f"Made by: `{result['command']}`", "",
             "| row | measures | status | device | torch | precision | shapes | repeats | atrous median s "
             "| peer | peer median s | speed-up | labels = peer | note |",
             "|---|---|---|---|---|---|---|---:|---:|---|---:|---:|---:|---|"]
    for row in result["rows"]:
        shapes = "; ".join(f"{k} {'x'.join(map(str, v)) if isinstance(v, list) else v}"
                           for k, v in row["shapes"].items())
        if row["status"] == "ran":
            note = "" if row.get("peer_status") == "ran" else f"peer skipped: {row.get('peer_reason')}"
            first = (row.get("details") or {}).get("first_step_s")
            if row.get("compile") and first:
                note = "; ".join(filter(None, [note, "first step (compiling) " + ", ".join(
                    f"{k} {v:.0f} s" for k, v in first.items())]))
        else:
            note = row["reason"] or ""
        speedup = f"{row['speedup']:.2f}x" if row.get("speedup") else "-"
        agree = f"{100 * row['agreement']:.2f} %" if row.get("agreement") is not None else "-"
        compile_tag = f", compile ({row['compile_backend']})" if row.get("compile") else ""
        lines.append(f"| {row['id']} | {row['measures']} | {row['status']} | {row['device']} | {row['torch']} "
                     f"| {row['precision']}{compile_tag} | {shapes} | {row['repeats']} | {fmt(row.get('median_s'))} "
                     f"| {row['peer']} | {fmt(row.get('peer_median_s'))} | {speedup} | {agree} "
                     f"| {note.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="every row at toy size on the CPU")
    parser.add_argument("--json", type=Path, default=None, help="default benchmarks/results/gpu_check.json "
                        "(gpu_check_dry.json with --dry-run)")
    parser.add_argument("--markdown", type=Path, default=None, help="default benchmarks/results/gpu_check.md "
                        "(gpu_check_dry.md with --dry-run)")
    parser.add_argument("--timeout-s", type=float, default=None, help="the whole check's budget, imports "
                        "included (default 440; 240 with --dry-run)")
    parser.add_argument("--sections", nargs="+", default=None, help="run only these sections or rows (a b c d b3 ...)")
    args = parser.parse_args()
    stem = "gpu_check_dry" if args.dry_run else "gpu_check"
    args.json = args.json or RESULTS_DIR / f"{stem}.json"
    args.markdown = args.markdown or RESULTS_DIR / f"{stem}.md"
    args.timeout_s = args.timeout_s or (240.0 if args.dry_run else 440.0)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); --dry-run runs every row "
              "at toy size on the CPU", file=sys.stderr)
        return 2
    if not args.dry_run:
        torch.backends.cudnn.benchmark = True  # both sides of every pair alike
    check = Check(args)
    if check.plan.threads:
        torch.set_num_threads(check.plan.threads)
        check.env["torch_threads"] = check.plan.threads
    log(f"gpu_check on {check.env['device_name']}, torch {torch.__version__}, budget {args.timeout_s:g} s")
    shared: dict[str, Any] = {}
    # cheap and central rows first; torch.compile (minutes) last
    tasks: list[tuple[str, list[str], Callable[[], None]]] = [
        ("a", ["a1", "a3"], lambda: task_crf(check, 1)),
        ("a", ["a2", "a4"], lambda: task_crf(check, check.plan.crf_batch)),
        ("c", ["c1"], lambda: task_infer(check, "c1", shared)),
        ("c", ["c2"], lambda: task_infer(check, "c2", shared)),
        ("b", ["b1"], lambda: task_train(check, "b1")),
        ("b", ["b2"], lambda: task_train(check, "b2")),
        ("d", ["d1"], lambda: task_ddp(check)),
        ("b3", ["b3"], lambda: task_train(check, "b3")),
    ]
    for name, row_ids, task in tasks:
        if name == "d":
            shared.clear()  # the inference models are done with
            if not check.dry and torch.cuda.device_count() < 2:
                check.skip(row_ids, f"{torch.cuda.device_count()} CUDA device here; 2-process NCCL training "
                                    "needs at least 2")
                continue
        check.run_task(name, row_ids, task)
    shared.clear()
    result = check.result()
    check.save()
    table = markdown(result)
    write_file(args.markdown, table)
    print(table, flush=True)
    log(f"wrote {args.json} and {args.markdown}")
    if check.interrupted:  # a stopped compilation may leave worker threads behind: do not wait for them
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
