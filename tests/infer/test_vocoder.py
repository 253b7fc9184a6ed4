"""The Vocoder API: shapes and devices, determinism, batching == one by one, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import perturb_, tiny_config

from waveflow.config import make_config, with_overrides
from waveflow.dsp.audio import MelSpectrogram, load_wav
from waveflow.dsp.limiter import soft_limit
from waveflow.infer.streaming import snr_db
from waveflow.infer.vocoder import (
    DEFAULT_CHECKPOINT,
    MAX_CONTEXT_FRAMES,
    NOISE_BLOCK,
    Vocoder,
    context_frames,
    positional_noise,
    receptive_field_frames,
)
from waveflow.nn.checkpoint import CheckpointError, make_checkpoint, save_checkpoint, weights_digest
from waveflow.nn.model import WaveGlow

HOP = 256


def tiny_setup(seed: int = 0, **model_overrides):
    """A perturbed tiny model (weight norm on, as trained) and its Config; ``model_overrides``
    change the tiny preset (e.g. ``conftest.EARLY_OUTPUTS[2]``)."""
    cfg = make_config("tiny", {"model": model_overrides})
    torch.manual_seed(seed)
    model = perturb_(WaveGlow(cfg.model), std=0.05, seed=seed)
    return model, cfg


def tiny_vocoder(seed: int = 0, model: dict | None = None, **kwargs) -> Vocoder:
    """A Vocoder over ``tiny_setup(seed, **model)``; ``kwargs`` go to Vocoder."""
    net, cfg = tiny_setup(seed, **(model or {}))
    return Vocoder(net, cfg, **kwargs)


def write_tiny_checkpoint(path, seed: int = 0) -> None:
    model, cfg = tiny_setup(seed)
    save_checkpoint(path, model, cfg)


def random_mel(frames: int, batch: int | None = None, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    shape = (80, frames) if batch is None else (batch, 80, frames)
    return torch.randn(shape, generator=gen) * 2 - 5


# ------------------------------------------------------------------ noise
def test_positional_noise_windows_are_slices_of_one_sequence():
    whole = positional_noise(7, 0, 2 * NOISE_BLOCK + 100, 4)
    for start, steps in [(0, 5), (NOISE_BLOCK - 3, 10), (NOISE_BLOCK + 17, NOISE_BLOCK + 50), (5, 1)]:
        assert torch.equal(positional_noise(7, start, steps, 4), whole[:, start : start + steps])
    assert not torch.equal(positional_noise(8, 0, 100, 4), whole[:, :100])
    assert abs(whole.mean().item()) < 0.02 and abs(whole.std().item() - 1) < 0.02


def test_positional_noise_keeps_its_blocks_unchanged_and_hands_out_copies():
    with torch.inference_mode():
        first = positional_noise(3, 10, 50, 4)
    second = positional_noise(3, 10, 50, 4)
    second += 1.0  # a caller's in-place change must not reach the kept block
    assert torch.equal(positional_noise(3, 10, 50, 4), first) and not second.is_inference()


def test_receptive_field_matches_the_conditioner_arithmetic():
    model, _ = tiny_setup()
    cfg = model.cfg  # 4 flows, kernel 3, 2 layers (dilations 1, 2): 3 steps of 4 samples per flow
    assert receptive_field_frames(model) == math.ceil(4 * 3 * cfg.n_group / HOP)
    big = WaveGlow(make_config("default").model)
    assert receptive_field_frames(big) == math.ceil(12 * 255 * 8 / HOP)


def test_the_tail_is_the_context_a_default_stream_gives():
    """The silence appended to a clip is the receptive field capped at MAX_CONTEXT_FRAMES."""
    from waveflow.infer.streaming import StreamingVocoder

    model, cfg = tiny_setup()
    voc = Vocoder(model, cfg)
    assert voc.tail_frames == receptive_field_frames(model) == StreamingVocoder(voc).lookahead
    for preset, bound in (("realtime", 60), ("default", 96)):
        deep = WaveGlow(make_config(preset).model)
        assert receptive_field_frames(deep) == bound and context_frames(deep) == MAX_CONTEXT_FRAMES == 16


def test_the_bundled_models_trained_reach_ends_inside_the_tail(clip):
    """Brute force on trained weights: a tail of the whole 60-frame bound changes the last second
    of a clip by float rounding only (125-128 dB measured); a tail half as long as the default
    is heard by this measure (108-112 dB), so a shorter default would fail here."""
    voc = Vocoder.default()
    mel = voc.mel(load_wav(clip, voc.sample_rate)[: 3 * voc.sample_rate])
    flow_only = {"seed": 0, "postfilter": 0.0, "mel_correction": 0, "harmonic": 0.0, "limit": False}
    outputs = {}
    for tail in (60, voc.tail_frames, voc.tail_frames // 2):
        voc.tail_frames = tail
        outputs[tail] = voc(mel, **flow_only)[-voc.sample_rate :]
    snr = {t: snr_db(outputs[60], out) for t, out in outputs.items() if t != 60}
    assert snr[16] > 118 and snr[8] < 116, snr


# ------------------------------------------------------------------ shapes
def test_shapes_types_and_properties():
    voc = tiny_vocoder()
    assert voc.sample_rate == 22050 and voc.hop_length == HOP and voc.n_mels == 80
    assert voc.silence == pytest.approx(math.log(1e-5))
    mel = random_mel(9)
    out = voc(mel.numpy(), seed=0)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (9 * HOP,)  # one clip: 1-D
    np.testing.assert_array_equal(out, voc(mel[None].numpy(), seed=0)[0])  # the same as a batch of one
    out = voc(random_mel(7, batch=3), seed=0)
    assert torch.is_tensor(out) and out.dtype == torch.float32 and out.shape == (3, 7 * HOP)
    assert out.device == mel.device and torch.isfinite(out).all()
    clips = voc([random_mel(5).numpy(), random_mel(12)], seed=0)
    assert isinstance(clips[0], np.ndarray) and clips[0].shape == (5 * HOP,)
    assert torch.is_tensor(clips[1]) and clips[1].shape == (12 * HOP,)


def test_time_major_mels_are_transposed_only_when_asked():
    voc = tiny_vocoder()
    mels = random_mel(11, batch=2)
    expected = voc(mels, seed=3)
    torch.testing.assert_close(voc(mels.transpose(1, 2), seed=3, time_major=True), expected, rtol=0, atol=0)
    one = mels[1].numpy()
    np.testing.assert_array_equal(voc(one.T, seed=3, time_major=True), voc(one, seed=3))
    listed = voc([mels[0].T, mels[1, :, :5].T], seed=3, time_major=True)
    torch.testing.assert_close(listed, voc([mels[0], mels[1, :, :5]], seed=3), rtol=0, atol=0)
    with pytest.raises(ValueError, match="time_major=True"):  # a shape that fits neither layout is named as such
        voc(torch.zeros(2, 80, 11), time_major=True)
    with pytest.raises(ValueError, match="pass time_major=True"):  # never guessed: the error says how
        voc(mels.transpose(1, 2))
    with pytest.raises(ValueError, match="single clip"):
        voc(mels[0], lengths=[5])


def test_weight_norm_is_folded_and_the_model_is_in_eval_mode():
    voc = tiny_vocoder()
    names = [n for n, _ in voc.model.named_parameters()]
    assert not any("weight_g" in n or "weight_v" in n for n in names)
    assert not voc.model.training and not any(p.requires_grad for p in voc.model.parameters())


def test_output_is_the_model_inverse_of_positional_noise_on_the_padded_mel():
    """Brute force of the documented definition: tail of silence, z = sigma * noise(seed)."""
    model, cfg = tiny_setup()
    voc = Vocoder(model, cfg, tail_frames=3)
    reference = WaveGlow(cfg.model)
    reference.load_state_dict(tiny_setup()[0].state_dict())
    reference.eval()
    mel = random_mel(10)
    padded = torch.cat([mel, torch.full((80, 3), math.log(1e-5))], dim=1)[None]
    steps = 13 * HOP // cfg.model.n_group
    z = positional_noise(5, 0, steps, cfg.model.n_group)[None] * 0.6
    with torch.no_grad():
        expected = reference.infer(padded, z=z, length=13 * HOP)[:, : 10 * HOP]
    torch.testing.assert_close(voc(mel, seed=5, sigma=0.6, limit=False), expected[0], atol=1e-5, rtol=1e-4)
    # and by default through the soft limiter (this mel drives the tiny model past its knee)
    torch.testing.assert_close(voc(mel, seed=5, sigma=0.6), soft_limit(expected[0]), atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------ determinism
def test_seed_determinism_and_generator():
    voc = tiny_vocoder()
    mel = random_mel(8)
    assert torch.equal(voc(mel, seed=3), voc(mel, seed=3))
    assert not torch.allclose(voc(mel, seed=3), voc(mel, seed=4))
    a = voc(mel, generator=torch.Generator().manual_seed(11))
    b = voc(mel, generator=torch.Generator().manual_seed(11))
    assert torch.equal(a, b)
    silent = voc(mel, seed=3, sigma=0.0)
    assert torch.equal(silent, voc(mel, seed=4, sigma=0.0))  # no noise: the seed cannot matter


def test_batched_clips_of_different_lengths_equal_one_by_one():
    voc = tiny_vocoder()
    mels = [random_mel(n, seed=n) for n in (3, 17, 9, 1)]
    batched = voc(mels, seed=2)
    for mel, out in zip(mels, batched, strict=False):
        alone = voc(mel, seed=2)
        assert out.shape == (mel.shape[1] * HOP,)
        torch.testing.assert_close(out, alone, atol=1e-5, rtol=1e-4)
    stacked = voc(torch.stack([mels[1], mels[1] + 0.5]), seed=2)
    torch.testing.assert_close(stacked[1], voc(mels[1] + 0.5, seed=2), atol=1e-5, rtol=1e-4)


def test_denoise_changes_the_output_but_not_its_shape():
    voc = tiny_vocoder()
    mel = random_mel(10)
    plain, cleaned = voc(mel, seed=0), voc(mel, seed=0, denoise=0.5)
    assert cleaned.shape == plain.shape and not torch.allclose(plain, cleaned)
    batched = voc([mel, random_mel(20)], seed=0, denoise=0.5)
    torch.testing.assert_close(batched[0], cleaned, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "mel, message",
    [
        (np.zeros((50, 80), np.float32), "transpose"),
        (np.zeros((2, 50, 80), np.float32), "transpose"),
        (np.zeros((40, 50), np.float32), "expected (80, frames)"),
        (np.zeros((80, 0), np.float32), "zero frames"),
        (np.full((80, 4), np.nan, np.float32), "NaN or Inf"),
        (np.full((80, 4), np.inf, np.float32), "NaN or Inf"),
        (np.zeros((80,), np.float32), "expected (80, frames)"),
    ],
)
def test_bad_mels_raise_one_clear_error(mel, message):
    voc = tiny_vocoder()
    with pytest.raises(ValueError) as info:
        voc(mel)
    assert message in str(info.value)


def test_the_finiteness_check_names_the_frames_and_is_not_fooled_by_an_overflowing_sum():
    """check_mel clears a mel by its sum first (no temporaries the size of the mel); a sum that
    overflows from huge finite values must not read as NaN, and the frames at fault are named."""
    from waveflow.infer.vocoder import check_mel

    huge = np.full((80, 10), 3e38, np.float32)  # finite, but its float32 sum is inf
    assert torch.equal(check_mel(huge, 80)[0], torch.from_numpy(huge))
    huge[3, 7], huge[0, 2] = np.nan, -np.inf
    with pytest.raises(ValueError, match=r"NaN or Inf in 2 of 10 frames \(2, 7\)"):
        check_mel(huge, 80)
    mel = random_mel(30).numpy()
    mel[5, 29] = np.inf
    with pytest.raises(ValueError, match=r"NaN or Inf in 1 of 30 frames \(29\)"):
        check_mel(mel, 80)


def test_half_precision_needs_cuda():
    with pytest.raises(ValueError, match="CUDA"):
        tiny_vocoder(half=True)


# -------------------------------------------------------------- checkpoints
def test_float16_checkpoint_loads_as_float32(tmp_path):
    model, cfg = tiny_setup()
    data = make_checkpoint(model, cfg)
    data["model"] = {k: v.half() if v.is_floating_point() else v for k, v in data["model"].items()}
    data["weights_sha256"] = weights_digest(data["model"])  # the weights changed: so does their checksum
    torch.save(data, tmp_path / "half.pt")
    voc = Vocoder.from_checkpoint(tmp_path / "half.pt")
    assert all(p.dtype == torch.float32 for p in voc.model.parameters())
    rounded, _ = tiny_setup()
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.half().float())
    expected = Vocoder(rounded, cfg)
    mel = random_mel(6)
    torch.testing.assert_close(voc(mel, seed=1), expected(mel, seed=1), atol=1e-5, rtol=1e-4)


def test_bad_checkpoints_raise_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        Vocoder.from_checkpoint(tmp_path / "missing.pt")
    write_tiny_checkpoint(tmp_path / "ok.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "ok.pt").read_bytes()[:500])
    with pytest.raises(CheckpointError, match=r"cut\.pt"):
        Vocoder.from_checkpoint(tmp_path / "cut.pt")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_and_half_follow_the_mel_device(tmp_path):
    voc = tiny_vocoder(device="cuda")
    mel = random_mel(12, batch=2)
    out_cpu, out_gpu = voc(mel, seed=0), voc(mel.cuda(), seed=0)
    assert out_cpu.device.type == "cpu" and out_gpu.device.type == "cuda"
    reference = tiny_vocoder()(mel, seed=0)
    torch.testing.assert_close(out_gpu.cpu(), reference, atol=1e-4, rtol=1e-3)
    half = tiny_vocoder(device="cuda", half=True)
    out_half = half(mel.cuda(), seed=0)
    assert out_half.dtype == torch.float32 and torch.isfinite(out_half).all()
    assert (out_half.cpu() - reference).abs().max() < 0.05


# ------------------------------------------------------------ bundled model
def test_bundled_model_shapes_determinism_and_mel(clip):
    """Whatever model is bundled: it loads, follows the convention and batches exactly."""
    assert DEFAULT_CHECKPOINT.is_file(), f"bundled model missing at {DEFAULT_CHECKPOINT}"
    voc = Vocoder.default()
    assert voc.sample_rate == 22050 and voc.hop_length == HOP and voc.n_mels == 80
    audio = load_wav(clip)[:6000]
    mel = voc.mel(audio)
    np.testing.assert_allclose(mel, MelSpectrogram()(torch.from_numpy(audio)).numpy(), atol=1e-5)
    assert mel.shape == (80, 1 + 6000 // HOP)
    short = mel[:, :10]
    out = voc([mel, short], seed=0)
    assert out[0].shape == (mel.shape[1] * HOP,) and out[1].shape == (10 * HOP,)
    assert np.isfinite(out[0]).all() and np.abs(out[0]).max() > 0
    np.testing.assert_allclose(out[1], voc(short, seed=0), atol=1e-5)
    np.testing.assert_allclose(out[0], voc(mel, seed=0), atol=1e-5)


@pytest.mark.parametrize("n_layers", [2, 4])
def test_a_mel_frame_reaches_no_further_than_the_receptive_field(n_layers):
    """Brute force: change one frame and see which samples move."""
    model = perturb_(WaveGlow(tiny_config(n_layers=n_layers)), std=0.2)
    cfg = make_config("tiny")
    cfg.model = model.cfg
    voc = Vocoder(model, cfg, tail_frames=0)
    rf = receptive_field_frames(voc.model)
    mel = random_mel(40, seed=3)
    changed = mel.clone()
    changed[:, 20] += 3.0
    moved = (voc(changed, seed=0) - voc(mel, seed=0)).abs() > 1e-6
    lo, hi = (20 - rf) * HOP, 20 * HOP + model.cfg.upsample_kernel + rf * HOP
    assert moved.any() and not moved[:lo].any() and not moved[hi:].any()


def test_default_sigma_is_the_checkpoints_inference_sigma():
    from waveflow.infer.streaming import StreamingVocoder

    model, cfg = tiny_setup()
    cfg = with_overrides(cfg, "train", eval_sigma=0.9)
    voc = Vocoder(model, cfg)
    mel = random_mel(12, seed=4)
    assert voc.sigma == 0.9
    torch.testing.assert_close(voc(mel, seed=1), voc(mel, sigma=0.9, seed=1))
    assert not torch.allclose(voc(mel, seed=1), voc(mel, sigma=0.6, seed=1))
    assert StreamingVocoder(voc).sigma == 0.9
    with pytest.raises(ValueError, match="sigma"):
        StreamingVocoder(voc, sigma=-1.0)


def test_outputs_are_ordinary_tensors_that_post_processing_can_modify():
    voc = tiny_vocoder()
    audio = voc(random_mel(6, seed=2), seed=0)
    assert not audio.is_inference()
    audio.mul_(0.5)  # in-place post-processing (gain, fades) must work
    mel = voc.mel(torch.zeros(4096))
    assert not mel.is_inference()
    mel.clamp_(min=-5)


def test_a_zero_padded_batch_with_lengths_equals_each_clip_alone():
    voc = tiny_vocoder()
    clips = [random_mel(9, seed=1), random_mel(4, seed=2)]
    padded = torch.zeros(2, 80, 9)  # zeros, as a TTS model pads: a loud log-mel, not silence
    padded[0], padded[1, :, :4] = clips[0], clips[1]
    audio = voc(padded, seed=3, lengths=[9, 4])
    assert type(audio) is type(voc(padded, seed=3)) and audio.shape == (2, 9 * HOP)  # the same type as without
    alone = voc(clips, seed=3)
    for i, frames in enumerate([9, 4]):
        torch.testing.assert_close(audio[i, : frames * HOP], alone[i], rtol=0, atol=1e-6)
    assert float(audio[1, 4 * HOP :].abs().max()) == 0.0  # nothing after the end
    without = voc(padded, seed=3)[1, : 4 * HOP]
    assert float((without - alone[1]).abs().max()) > 1e-4  # the test can tell: the padding leaks in without lengths
    audio_np = voc(padded.numpy(), seed=3, lengths=np.array([9, 4]))
    assert isinstance(audio_np, np.ndarray) and audio_np.shape == (2, 9 * HOP)
    for bad in ([9], [0, 4], [9, 10], [9.0, 4.0]):
        with pytest.raises(ValueError, match="lengths"):
            voc(padded, lengths=bad)
