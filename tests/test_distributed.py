"""Appendix B1's invariants: two processes train exactly what one process trains on the whole
batch (DDP, FSDP2, Accelerate), an FSDP2 sharded checkpoint loads back to the same model, FSDP2
halves each process's weights, gradients and optimizer state, and a seed repeats a run."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ftcourse import distributed

STEPS, BATCH = 4, 8
LOSS_RTOL = 1e-5  # the losses agree to fp32 rounding of sums taken in another order
# Adam divides by the gradient's running size, so a rounding difference in a tiny gradient
# can move a weight by up to a step: after 4 steps at lr 1e-3, well under a tenth of a step.
WEIGHT_ATOL = 1e-4


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "FTCOURSE_PRECISION": "fp32",  # the invariant is about the arithmetic, not bf16
        "FTCOURSE_PROGRESS": "0",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(launcher: list[str], args: list[str]) -> None:
    cmd = [*launcher, "-m", "ftcourse.distributed", *args]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def _torchrun(args: list[str]) -> None:
    # --standalone: a rendezvous on a free port, so parallel runs do not collide
    _launch([sys.executable, "-m", "torch.distributed.run", "--standalone",
             "--nproc_per_node", "2"], args)  # fmt: skip


def _accelerate(args: list[str]) -> None:
    config = distributed.ACCELERATE_CONFIG
    _launch([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
             "--main_process_port", str(_free_port())], args)  # fmt: skip


def _single(job: str, tmp_path, monkeypatch) -> tuple[dict, dict]:
    for k, v in _env().items():
        monkeypatch.setenv(k, v)
    out = tmp_path / f"single-{job}"
    distributed.train(job, steps=STEPS, batch_size=BATCH, out=out)
    return json.loads((out / "result.json").read_text()), torch.load(out / "model.pt")


def _read(folder) -> tuple[dict, dict]:
    return json.loads((folder / "result.json").read_text()), torch.load(folder / "model.pt")


def _assert_same_run(one: tuple[dict, dict], two: tuple[dict, dict]) -> None:
    (r1, w1), (r2, w2) = one, two
    assert r2["world"] == 2 and r1["world"] == 1
    assert r2["losses"] == pytest.approx(r1["losses"], rel=LOSS_RTOL)
    assert r1["losses"][-1] < r1["losses"][0]  # it trains at all
    assert set(w1) == set(w2)
    worst = max(float((w1[k].float() - w2[k].float()).abs().max()) for k in w1)
    assert worst <= WEIGHT_ATOL, worst


def test_global_batches_split_into_contiguous_shares():
    items = list(range(7))
    shares = [distributed.my_slice(items, r, 3) for r in range(3)]
    assert shares == [[0, 1, 2], [3, 4], [5, 6]]
    batches = distributed.global_batches(20, 8, 3, seed=0)
    assert [len(b) for b in batches] == [8, 8, 4]  # epoch by epoch: the last batch is short
    assert sorted(batches[0] + batches[1] + batches[2]) == list(range(20))
    assert batches == distributed.global_batches(20, 8, 3, seed=0)


def test_a_seed_repeats_a_run_exactly(tmp_path, monkeypatch):
    one = _single("sft", tmp_path / "a", monkeypatch)
    two = _single("sft", tmp_path / "b", monkeypatch)
    assert one[0]["losses"] == two[0]["losses"]
    assert all(torch.equal(one[1][k], two[1][k]) for k in one[1])


def test_ddp_and_fsdp2_with_two_processes_train_what_one_process_trains(tmp_path, monkeypatch):
    one = _single("sft", tmp_path, monkeypatch)
    common = ["--job", "sft", "--steps", str(STEPS), "--batch-size", str(BATCH)]
    _torchrun([*common, "--engine", "ddp", "--out", str(tmp_path / "ddp")])
    _torchrun([*common, "--engine", "fsdp2", "--out", str(tmp_path / "fsdp2"),
               "--checkpoint", str(tmp_path / "checkpoint")])  # fmt: skip
    ddp, fsdp2 = _read(tmp_path / "ddp"), _read(tmp_path / "fsdp2")
    _assert_same_run(one, ddp)
    _assert_same_run(one, fsdp2)
    assert fsdp2[0]["checkpoint_max_diff"] == 0.0  # sharded save, load into a fresh model
    # DDP keeps a whole copy per process; FSDP2 half of every parameter, gradient and
    # Adam moment (the shards of odd-sized tensors round up by a few elements).
    whole, (r0, r1) = one[0]["memory"][0], fsdp2[0]["memory"]
    assert ddp[0]["memory"] == [whole, whole]
    for kind in ("parameters", "gradients", "optimizer"):
        assert r0[kind] + r1[kind] == pytest.approx(whole[kind], rel=1e-3), kind
        assert r0[kind] == pytest.approx(whole[kind] / 2, rel=1e-2), kind


def test_accelerate_with_two_processes_trains_what_one_process_trains(tmp_path, monkeypatch):
    one = _single("lora", tmp_path, monkeypatch)
    _accelerate(["--job", "lora", "--engine", "accelerate", "--steps", str(STEPS),
                 "--batch-size", str(BATCH), "--out", str(tmp_path / "accelerate")])  # fmt: skip
    _assert_same_run(one, _read(tmp_path / "accelerate"))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="engine"):
        distributed.train("sft", "zero3")
    with pytest.raises(RuntimeError, match="torchrun"):
        distributed.train("sft", "ddp")
    with pytest.raises(ValueError, match="FSDP2"):
        distributed.train("sft", checkpoint=Path("unused"))
    with pytest.raises(SystemExit):
        distributed.main(["--steps", "0"])
