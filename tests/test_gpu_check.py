"""benchmarks/gpu_check.py, the check prepared for a lent GPU, works before a GPU is at hand:
its --dry-run runs every row (CRFs, training steps, inference, two processes) at toy size on
the CPU and writes the JSON and the markdown table."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

ROW_IDS = ("a1", "a2", "a3", "a4", "b1", "b2", "b3", "c1", "c2", "d1")


def _positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_gpu_check_dry_run_fills_every_row(tmp_path: Path) -> None:
    out_json, out_md = tmp_path / "gpu_check.json", tmp_path / "gpu_check.md"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--json", str(out_json),
         "--markdown", str(out_md), "--timeout-s", "240"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    result = json.loads(out_json.read_text())
    assert result["dry_run"] is True
    rows = {row["id"]: row for row in result["rows"]}
    assert sorted(rows) == sorted(ROW_IDS)
    assert {row["section"] for row in rows.values()} == {"a", "b", "c", "d"}
    for row_id, row in rows.items():
        for key in ("device", "torch", "precision", "shapes", "repeats"):
            assert row[key], f"{row_id}: no {key}"
        assert row["status"] in ("ran", "skipped"), row
        if row["status"] == "ran":
            assert _positive(row["median_s"]) and all(_positive(t) for t in row["times"]), row
            if row["peer_median_s"] is not None:
                assert _positive(row["peer_median_s"]), row
                assert math.isclose(row["speedup"], row["peer_median_s"] / row["median_s"]), row
            else:
                assert row["peer_reason"], row
        else:
            assert isinstance(row["reason"], str) and row["reason"].strip(), row
            # a budget may run out on a loaded machine; a step that breaks is a bug
            assert not row["reason"].startswith("failed"), row

    # each kind of row ran (a dry run is toy-sized: no budget runs out), and its agreement holds
    assert all(row["status"] == "ran" for row in rows.values()), [r["id"] for r in rows.values() if r["status"] != "ran"]
    for row_id in ("a1", "a2"):  # DenseCRF equals pydensecrf label for label (tests/test_crf.py: |dQ| <= 1e-5)
        assert rows[row_id]["agreement"] == 1.0, rows[row_id]
    for row_id in ("a3", "a4"):  # ConvCRF approximates the dense CRF (a 7x7 window)
        assert 0.9 <= rows[row_id]["agreement"] <= 1.0, rows[row_id]
    for row_id in ("c1", "c2"):  # fp16 / bf16 inference keeps the labels of fp32; fp32 equals torchvision
        details = rows[row_id]["details"]
        assert 0.9 <= rows[row_id]["agreement"] <= 1.0, rows[row_id]
        assert details["atrous_agreement_with_fp32"] >= 0.95 and details["fp32_max_abs_logit_diff"] <= 1e-4, details
    assert rows["d1"]["details"]["max_abs_weight_difference"] <= 1e-4  # 2 processes train 1 process's model
    assert rows["b3"]["compile"] is True and rows["b1"]["precision"] == "fp32" and rows["b2"]["precision"] == "bf16"

    table = out_md.read_text()
    for row_id in ROW_IDS:
        lines = [line for line in table.splitlines() if line.startswith(f"| {row_id} |")]
        assert len(lines) == 1, (row_id, table)
        assert f"| {rows[row_id]['status']} |" in lines[0]
    assert table.strip() in proc.stdout  # the table is printed at the end
