"""The trainer end to end: learning, exact resume, DDP, non-finite steps, bad input."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO

from waveflow.cli import main
from waveflow.config import make_config, model_preset
from waveflow.nn.checkpoint import read_checkpoint
from waveflow.nn.model import WaveGlow
from waveflow.train import trainer as train_module
from waveflow.train.data import prepare

TINY = [
    "--set", "train.segment_length=2048",
    "--set", "train.batch_size=2",
    "--set", "train.lr=0.002",
    "--set", "train.num_workers=0",
    "--set", "train.log_every=1",
    "--set", "train.eval_audio_clips=0",
]  # fmt: skip


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, mini_corpus):
    out = tmp_path_factory.mktemp("prepared")
    prepare(mini_corpus, out, progress=False)
    return out


def _config(tmp_path, preset: str = "tiny"):
    path = tmp_path / "c.yaml"
    path.write_text(f"preset: {preset}\n")
    return str(path)


def _train(tmp_path, prepared, out, *extra: str) -> int:
    args = ["train", "--config", _config(tmp_path), "--data", str(prepared), "--out", str(out), "--no-progress"]
    return main([*args, "--device", "cpu", *TINY, *extra])


def _dev_curve(out) -> list[tuple[int, float]]:
    rows = [line.split("\t") for line in (out / "dev_nll.tsv").read_text().splitlines()]
    return [(int(step), float(nats)) for step, nats, _ in rows]


def test_training_lowers_the_dev_nll(tmp_path, prepared):
    out = tmp_path / "run"
    assert _train(tmp_path, prepared, out, "--set", "train.max_steps=30", "--set", "train.eval_every=30") == 0
    curve = _dev_curve(out)
    assert [step for step, _ in curve] == [0, 30]
    assert curve[1][1] < curve[0][1] - 0.3, curve
    best = read_checkpoint(out / "checkpoints" / "best.pt")
    assert best["step"] == 30 and math.isclose(best["dev_nll"], curve[1][1], rel_tol=1e-5)
    assert (out / "checkpoints" / "step_0000030.pt").is_file()
    assert any((out / "tb").iterdir())
    assert "step 30: dev NLL" in (out / "train.log").read_text()  # the run folder keeps its log


def test_training_with_linear_prediction_lowers_the_dev_nll(tmp_path, prepared):
    out = tmp_path / "run"
    args = ["--set", "model.lpc_order=8", "--set", "train.max_steps=20", "--set", "train.eval_every=20"]
    assert _train(tmp_path, prepared, out, *args) == 0
    curve = _dev_curve(out)
    assert curve[1][1] < curve[0][1] - 0.1, curve
    assert read_checkpoint(out / "checkpoints" / "best.pt")["config"]["model"]["lpc_order"] == 8


def test_init_from_fine_tunes_an_lp_model_into_one_with_a_pulse_source(tmp_path, prepared, capsys):
    lp = ["--set", "model.lpc_order=8", "--set", "train.eval_every=100"]
    base = tmp_path / "base"
    assert _train(tmp_path, prepared, base, *lp, "--set", "train.max_steps=3") == 0
    start = base / "checkpoints" / "step_0000003.pt"
    tuned = tmp_path / "tuned"
    source = [*lp, "--set", "model.pulse_source=true", "--set", "train.eval_every=4"]
    assert _train(tmp_path, prepared, tuned, *source, "--set", "train.max_steps=4", "--init-from", str(start)) == 0
    curve = _dev_curve(tuned)
    # the fine-tuned run starts where the base run ended
    assert curve[0][0] == 0 and math.isclose(curve[0][1], _dev_curve(base)[-1][1], rel_tol=1e-5)
    last = read_checkpoint(tuned / "checkpoints" / "step_0000004.pt")
    assert last["init_from"] == {"path": str(start), "step": 3} and last["config"]["model"]["pulse_source"]
    assert "initialised from" in (tuned / "train.log").read_text()
    capsys.readouterr()
    # refused in one line, before --out is touched: with --resume, a missing file, weights that do not fit
    for extra, message in [
        (["--resume", "--init-from", str(start)], "pass one of them"),
        (["--init-from", str(tmp_path / "none.pt")], "no such checkpoint"),
        (["--set", "model.n_channels=16", "--init-from", str(start)], "cannot start from these weights"),
    ]:
        out = tmp_path / "refused"
        assert _train(tmp_path, prepared, out, *source, *extra) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()


def test_a_stopped_and_resumed_run_equals_an_uninterrupted_one(tmp_path, prepared):
    common = ["--set", "train.checkpoint_every=3", "--set", "train.eval_every=100", "--set", "train.keep_last=5"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _train(tmp_path, prepared, straight, *common, "--set", "train.max_steps=6") == 0
    assert _train(tmp_path, prepared, resumed, *common, "--set", "train.max_steps=3") == 0
    assert _train(tmp_path, prepared, resumed, *common, "--set", "train.max_steps=6", "--resume") == 0
    assert "resumed from" in (resumed / "train.log").read_text()  # one log across the run's sessions
    a = read_checkpoint(straight / "checkpoints" / "step_0000006.pt")
    b = read_checkpoint(resumed / "checkpoints" / "step_0000006.pt")
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-6, atol=1e-7, msg=key)
    # and the optimizer moments too: the resumed run carries on, it does not restart Adam
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    for k in sa:
        torch.testing.assert_close(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"], rtol=1e-6, atol=1e-12)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_train_like_one_process_with_twice_the_batch(tmp_path, prepared):
    """DDP: each rank takes its own clips (a distributed sampler) and gradients are averaged,
    so 2 ranks x batch 1 must reach the weights of 1 process x batch 2; only rank 0 writes."""
    cfg = _config(tmp_path)
    common = [*TINY, "--set", "train.max_steps=3", "--set", "train.eval_every=100", "--no-progress"]
    common = [c.replace("train.batch_size=2", "train.batch_size=1") for c in common]
    ddp = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "waveflow", "train", "--config", cfg, "--data", str(prepared), "--out", str(ddp),
           "--device", "cpu", *common]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("stopped at step 3") == 1  # rank 0 alone reports and writes
    single = tmp_path / "single"
    assert _train(tmp_path, prepared, single, "--set", "train.max_steps=3", "--set", "train.eval_every=100") == 0
    a = read_checkpoint(ddp / "checkpoints" / "step_0000003.pt")["model"]
    b = read_checkpoint(single / "checkpoints" / "step_0000003.pt")["model"]
    # Adam divides by the gradient's own scale, so where a gradient is nearly zero the
    # rounding of the all-reduce shows in the update; the bulk agrees to float precision
    # and nothing strays by more than a fraction of one step's update (lr = 0.002).
    diffs = sorted((a[key].float() - b[key].float()).abs().max().item() for key in a)
    assert diffs[len(diffs) // 2] < 1e-5 and diffs[-1] < 1e-3, diffs[-5:]
    torch.manual_seed(1234)  # the trainer's seed: the weights both runs started from
    init = WaveGlow(model_preset("tiny")).state_dict()
    moved = sum(not torch.equal(init[k], b[k]) for k in b)
    assert moved > len(b) // 2  # the weights did train


def test_non_finite_steps_are_skipped_then_the_run_stops(tmp_path, prepared, monkeypatch, capsys):
    real = train_module.flow_nll
    calls = {"n": 0}

    def sometimes_nan(z, logdet, sigma=1.0):
        calls["n"] += 1
        nll = real(z, logdet, sigma)
        if calls["n"] == 3 or calls["n"] >= 6:  # one bad step, then bad for good
            nll.nats = nll.nats * float("nan")
        return nll

    monkeypatch.setattr(train_module, "flow_nll", sometimes_nan)
    out = tmp_path / "run"
    extra = ["--set", "train.max_steps=50", "--set", "train.checkpoint_every=2", "--set", "train.max_bad_steps=3"]
    code = _train(tmp_path, prepared, out, *extra, "--set", "train.eval_every=100")
    err = capsys.readouterr().err
    assert code == 1
    # the CLI logs to stderr (and stops propagation, so caplog would see it only by the order of tests)
    assert "waveflow: step 2: non-finite loss or gradient, step skipped (1 in a row)" in err
    # good steps in between reset the count: the next bad step is the first in a row again
    assert "waveflow: step 4: non-finite loss or gradient, step skipped (1 in a row)" in err
    assert "stopped at step 4: 3 non-finite steps in a row" in err and "step_0000004.pt" in err
    assert "Traceback" not in err
    # the good steps before it were saved and the bad ones wrote nothing
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*.pt")) == ["step_0000002.pt", "step_0000004.pt"]
    assert read_checkpoint(out / "checkpoints" / "step_0000004.pt")["step"] == 4


def test_bad_input_gets_one_line_and_loses_nothing(tmp_path, prepared, capsys):
    out = tmp_path / "run"
    assert _train(tmp_path, prepared, out, "--set", "train.max_steps=2", "--set", "train.eval_every=100") == 0
    before = {p: p.read_bytes() for p in sorted(out.rglob("*.pt"))}
    capsys.readouterr()  # the set-up run's log is not part of what the refusals print

    def run(*args: str) -> str:
        assert main(list(args)) == 1
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        return err

    base = ["train", "--data", str(prepared), "--device", "cpu", "--no-progress"]
    assert "already holds files; pass --resume" in run(*base, "--config", _config(tmp_path), "--out", str(out))
    (tmp_path / "o").mkdir()
    other = _config(tmp_path / "o", "small")
    assert "holds a run of another config (model.n_flows" in run(
        *base, "--config", other, "--out", str(out), "--resume"
    )
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("preset: tiny\ntrain:\n  segment_lenght: 100\n")
    assert "unknown key(s) ['segment_lenght']" in run(*base, "--config", str(bad_yaml), "--out", str(tmp_path / "x"))
    assert "train.max_steps must be an integer" in run(
        *base, "--config", _config(tmp_path), "--out", str(tmp_path / "x"), "--set", "train.max_steps=lots"
    )
    assert "not a prepared data folder" in run(
        "train", "--data", str(tmp_path), "--out", str(tmp_path / "y"), "--config", _config(tmp_path)
    )
    assert "no metadata.csv" in run("prepare", "--data", str(tmp_path), "--out", str(tmp_path / "p"))
    assert {p: p.read_bytes() for p in sorted(out.rglob("*.pt"))} == before


def test_cli_errors_have_no_traceback_in_a_real_process(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "waveflow", "prepare", "--data", str(tmp_path / "nope"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 1
    assert done.stderr.strip().startswith("waveflow prepare: error:") and "Traceback" not in done.stderr


def test_bf16_autocast_on_the_cpu_runs_the_mixed_precision_path(tmp_path, prepared, capsys):
    """The AMP branch of the trainer (autocast, float32 affine arithmetic and 1x1 convs) without
    a GPU: losses finite, and the first step's loss within bf16 rounding of fp32's."""
    common = ["--set", "train.max_steps=4", "--set", "train.eval_every=100", "--set", "model.lpc_order=8"]
    losses = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        assert _train(tmp_path, prepared, out, *common, "--set", f"train.precision={precision}") == 0
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(out / "tb"))
        events.Reload()
        losses[precision] = [e.value for e in events.Scalars("train/nll_nats")]
    assert len(losses["bf16"]) == 4 and all(math.isfinite(v) for v in losses["bf16"])
    assert abs(losses["bf16"][0] - losses["fp32"][0]) < 0.05, losses
    capsys.readouterr()
    fp16 = ["--config", _config(tmp_path), "--device", "cpu", "--set", "train.precision=fp16"]
    assert main(["train", "--data", str(prepared), "--out", str(tmp_path / "x"), *fp16]) == 1
    assert "needs a CUDA device" in capsys.readouterr().err


def test_tensorboard_has_config_ground_truth_audio_colour_mels_and_dev_mel_l1(tmp_path, prepared):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from waveflow.train.trainer import AXIS_PX

    out = tmp_path / "run"
    args = ["--set", "train.max_steps=2", "--set", "train.eval_every=2", "--set", "train.eval_audio_clips=1"]
    assert _train(tmp_path, prepared, out, *args) == 0
    events = EventAccumulator(str(out / "tb"), size_guidance={"images": 0, "audio": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    assert {"dev/audio_0", "dev/audio_0_ground_truth"} <= set(tags["audio"])
    assert "dev/mel_0_original_top" in tags["images"]
    assert [e.step for e in events.Scalars("dev/mel_l1_0")] == [0, 2]
    assert "config/text_summary" in tags["tensors"]
    image = events.Images("dev/mel_0_original_top")[-1]
    assert image.height == 2 * 80 + 2 + AXIS_PX  # original, a white rule, resynthesis, the time axis
    assert "mel-l1_0" in (out / "train.log").read_text()


def test_mel_image_has_time_and_frequency_ticks():
    from waveflow.config import MelConfig
    from waveflow.train.trainer import AXIS_PX, khz_bands, mel_image

    bands = khz_bands(MelConfig())
    assert bands == sorted(bands) and len(bands) == 3 and 0 < bands[0] < bands[-1] < 80
    mel = torch.linspace(-11, 2, 80)[:, None].expand(80, 200)  # brighter towards the high bands
    plain = mel_image(mel, mel)
    assert plain.shape == (3, 162, 200)
    image = mel_image(mel, mel, frames_per_second=50.0, band_ticks=bands)
    assert image.shape == (3, 162 + AXIS_PX, 200 + AXIS_PX)
    torch.testing.assert_close(image[:, :162, AXIS_PX:], plain)  # the mels themselves are untouched
    left, bottom = image[0, :162, 0], image[0, 162 + 1, AXIS_PX:]
    assert sorted(torch.nonzero(left == 1).flatten().tolist()) == sorted(
        [79 - b for b in bands] + [161 - b for b in bands]
    )
    assert torch.nonzero(bottom == 1).flatten().tolist() == [25, 50, 75, 100, 125, 150, 175]  # every 0.5 s
    assert (
        float(image[0, 162 + AXIS_PX - 1, AXIS_PX + 50]) == 1 and float(image[0, 162 + AXIS_PX - 1, AXIS_PX + 25]) == 0
    )


# ------------------------------------------------------------------ one step, each guard on its own
class _NanGradient(torch.autograd.Function):
    """The identity forward; a NaN gradient backward: a finite loss whose gradient is not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def _synthetic_prepared(folder):
    """A prepared folder of three short synthetic clips: enough for a Trainer, no corpus needed."""
    import soundfile as sf

    folder.mkdir()
    gen = np.random.default_rng(0)
    lines = []
    for i in range(3):
        path = folder / f"c{i}.wav"
        sf.write(path, (0.1 * gen.standard_normal(6000)).astype(np.float32), 22050, subtype="FLOAT")
        lines.append(f"c{i}|{path}|6000\n")
    for split in ("train", "dev"):
        (folder / f"{split}.txt").write_text("".join(lines))
    (folder / "prepared.json").write_text("{}")
    return folder


@pytest.fixture
def trainer(tmp_path):
    cfg = make_config("tiny", {"train": {"segment_length": 2048, "batch_size": 2, "lr": 0.002}})
    data = _synthetic_prepared(tmp_path / "data")
    trainer = train_module.Trainer(cfg, data, tmp_path / "run", train_module.Dist("cpu"))
    trainer.ddp_model = trainer.model  # what run() sets up in a single process
    return trainer


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("fault", ["none", "nan_loss_finite_gradient", "finite_loss_nan_gradient"])
def test_each_non_finite_guard_skips_the_step_on_its_own(trainer, monkeypatch, fault):
    """A NaN loss is refused before backward even when its gradient would be finite, and a
    finite loss with a non-finite gradient is refused before the optimizer step: neither
    guard hides behind the other, and a skipped step changes no weight and no Adam moment."""
    real = train_module.flow_nll

    def faulty(z, logdet, sigma=1.0):
        nll = real(z, logdet, sigma)
        if fault == "nan_loss_finite_gradient":
            nll.nats = nll.nats + torch.tensor(float("nan"))  # a constant: the gradient stays finite
        elif fault == "finite_loss_nan_gradient":
            nll.nats = _NanGradient.apply(nll.nats)
        return nll

    monkeypatch.setattr(train_module, "flow_nll", faulty)
    audio = torch.randn(2, 2048, generator=torch.Generator().manual_seed(0)) * 0.1
    before = _weights(trainer.model)
    stats = trainer.train_step(audio)
    after = _weights(trainer.model)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    if fault == "none":
        assert stats is not None and math.isfinite(stats["grad_norm"]) and stats["grad_norm"] > 0
        assert changed  # the control: a good step does move the weights (at first, the end convs and 1x1 convs)
        return
    assert stats is None, f"{fault}: the step was taken ({stats})"
    assert not changed, f"{fault}: a skipped step changed {changed[:3]}"
    assert not trainer.opt.state, "a skipped step must not touch the optimizer's moments"
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())


def test_dev_evaluation_builds_no_autograd_graph(trainer, monkeypatch):
    """The dev NLL runs the flow over whole clips: with autograd on it would hold every
    activation of a clip (and warned when the NLL became a float)."""
    seen = []
    real = trainer.model.forward

    def spy(*args, **kwargs):
        seen.append(torch.is_grad_enabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer.model, "forward", spy)
    result = trainer.evaluate()
    assert seen and not any(seen) and math.isfinite(result["nll_nats"])
    assert torch.is_grad_enabled()  # and training goes on with it
