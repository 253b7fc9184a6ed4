"""Mutation check: plant small, realistic bugs in the package one at a time and see that the
tests catch each.

Every mutant is a text patch on one file of ``waveflow/`` (an exact old string, which must occur
exactly once, and its replacement) with the tests that should catch it. Each runs in a fresh
copy of the repository (the package, the tests and what they read; never ``.venv``), with this
Python's pytest run from inside the copy, so that the copy's package is the one imported (the
editable install points at the original tree: the script checks which one a copy imports before
it starts). A mutant is caught when its tests fail, survives when they pass.

    python scripts/mutants.py                 # every mutant, one at a time
    python scripts/mutants.py -j 2            # two at a time
    python scripts/mutants.py --only NAME ... # some of them (names or shell patterns, e.g. 'stream*')
    python scripts/mutants.py --list          # names, files and tests; whether each patch applies
    python scripts/mutants.py --tree DIR      # the package and tests of another checkout (e.g. an older one)
    python scripts/mutants.py --whole-files   # each mutant's whole test files, not its -k selection (slow)

Prints one line per mutant and the score; exits 1 if any mutant survived or could not be run.
A patch whose old string is no longer in the file (the code moved on) is reported as
"patch not applicable" and counted as not caught: update the mutant.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COPY = ("waveflow", "tests", "recipes", "scripts", "pyproject.toml")  # what the tests read
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "*.egg-info")


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # relative to the repository
    old: str
    new: str
    tests: tuple[str, ...]  # pytest arguments: test files, node ids, and optionally "-k", "EXPR"
    why: str = ""
    timeout: int = field(default=240, compare=False)


def m(name: str, file: str, old: str, new: str, *tests: str, why: str = "", timeout: int = 240) -> Mutant:
    return Mutant(name, f"waveflow/{file}", old, new, tests, why, timeout)


def locate(tree: Path, file: str) -> str:
    """Where ``file`` (``waveflow/NAME.py``) lives in ``tree``: there, or in the one sub-package
    that holds a module of that name (the package is grouped by layer: waveflow/nn/flows.py);
    ``file`` itself when none or several do (the patch is then reported not applicable)."""
    if (tree / file).is_file():
        return file
    found = sorted((tree / "waveflow").rglob(Path(file).name))
    return found[0].relative_to(tree).as_posix() if len(found) == 1 else file


MUTANTS: list[Mutant] = [
    # ------------------------------------------------------------------ flows
    m("coupling_logdet_sign", "flows.py",
      "return torch.cat([xa, yb], dim=1), log_s.sum(dim=(1, 2))",
      "return torch.cat([xa, yb], dim=1), -log_s.sum(dim=(1, 2))",
      "tests/nn/test_flows.py", "-k", "logdet_matches"),
    m("coupling_inverse_shift_sign", "flows.py",
      "xb = ((yb.to(log_s.dtype) - shift) * torch.exp(-log_s))",
      "xb = ((yb.to(log_s.dtype) + shift) * torch.exp(-log_s))",
      "tests/nn/test_flows.py", "-k", "inverse_recovers_input"),
    m("invconv_logdet_counts_channels", "flows.py",
      "logdet = (self.log_abs_det() * x.shape[-1])",
      "logdet = (self.log_abs_det() * x.shape[1])",
      "tests/nn/test_flows.py", "-k", "logdet_matches"),
    m("lu_logdet_abs", "flows.py",
      "return self.log_s.double().sum()",
      "return self.log_s.double().abs().sum()",
      "tests/nn/test_flows.py", "-k", "logdet_matches"),
    m("actnorm_inverse_shift_sign", "flows.py",
      "return y * torch.exp(-self.log_scale).to(y.dtype) - self.loc.to(y.dtype)",
      "return y * torch.exp(-self.log_scale).to(y.dtype) + self.loc.to(y.dtype)",
      "tests/nn/test_flows.py", "-k", "inverse_recovers_input"),
    m("squeeze_layout", "flows.py",
      "return audio.view(b, t // n_group, n_group).transpose(1, 2)",
      "return audio.view(b, n_group, t // n_group)",
      "tests/nn/test_flows.py", "-k", "squeeze"),
    # ------------------------------------------------------------------ model
    m("early_outputs_rejoin_in_wrong_order", "model.py",
      "x = torch.cat([early.pop(), x], dim=1)",
      "x = torch.cat([early.pop(0), x], dim=1)",
      "tests/nn/test_model.py", "-k", "inverse_recovers_audio",
      why="issue 24: every test model had a single early output"),
    m("early_outputs_leave_in_wrong_order", "model.py",
      "return torch.cat([*early, x], dim=1), logdet",
      "return torch.cat([*reversed(early), x], dim=1), logdet",
      "tests/nn/test_model.py", "-k", "inverse_recovers_audio"),
    m("model_drops_the_lp_logdet", "model.py",
      "audio, logdet = self.lpc(audio, mel, context)",
      "audio, _ = self.lpc(audio, mel, context)",
      "tests/nn/test_lpc.py", "-k", "log_det"),
    # ------------------------------------------------------------------ linear prediction
    m("lp_gain_logdet_sign", "lpc.py",
      "logdet = -torch.log(g)[:, idx].sum(-1)",
      "logdet = torch.log(g)[:, idx].sum(-1)",
      "tests/nn/test_lpc.py", "-k", "log_det"),
    m("levinson_error_update", "lpc.py",
      "neg_err = neg_err.addcmul(neg_err * k, k, value=-1.0)",
      "neg_err = neg_err.addcmul(neg_err, k, value=-1.0)",
      "tests/nn/test_lpc.py", "-k", "levinson or gain or silence"),
    m("lp_context_ignored", "lpc.py",
      "windows = torch.cat([context, x], dim=1)",
      "windows = torch.cat([torch.zeros_like(context), x], dim=1)",
      "tests/nn/test_lpc.py", "-k", "context"),
    m("stream_drops_the_lp_state", "streaming.py",
      "audio, self._lp_state = lpc.synthesize(residual, a, g, start=lo, state=self._lp_state)",
      "audio, self._lp_state = lpc.synthesize(residual, a, g, start=lo, state=None)",
      "tests/nn/test_lpc.py", "-k", "streaming"),
    # ------------------------------------------------------------------ pulse source
    m("free_phase_one_step_ahead", "source.py",
      "phase = torch.cumsum(step, dim=1) - step",
      "phase = torch.cumsum(step, dim=1)",
      "tests/nn/test_source.py", "-k", "free_phase or streaming"),
    m("phase_advance_one_sample_short", "source.py",
      "cycles = self.sample_frequencies(period[:, : frames + 1], frames * self.hop_length + head).sum(dim=1)",
      "cycles = self.sample_frequencies(period[:, : frames + 1], frames * self.hop_length + head - 1).sum(dim=1)",
      "tests/nn/test_source.py", "-k", "free_phase or streaming"),
    m("free_phase_holds_each_frames_period", "source.py",
      "glide = (a + (b - a) * weight).reshape(freq.shape[0], -1)[:, : length - head]",
      "glide = a.expand(-1, -1, hop).reshape(freq.shape[0], -1)[:, : length - head]",
      "tests/nn/test_source.py", "-k", "free_phase or sample_frequencies"),
    m("phase_advance_ignores_the_next_frame", "source.py",
      "cycles = self.sample_frequencies(period[:, : frames + 1], frames * self.hop_length + head).sum(dim=1)",
      "cycles = self.sample_frequencies(period[:, :frames], frames * self.hop_length + head).sum(dim=1)",
      "tests/nn/test_source.py", "-k", "free_phase or streaming"),
    m("phase_advance_forgets_the_held_head", "source.py",
      "cycles = cycles - head / period[:, min(frames, period.shape[1] - 1)].double()",
      "cycles = cycles - 0 * head / period[:, min(frames, period.shape[1] - 1)].double()",
      "tests/nn/test_source.py", "-k", "free_phase"),
    m("pulse_picker_takes_the_smallest", "source.py",
      "t = a + int(np.argmax(mag[a:b]))",
      "t = a + int(np.argmin(mag[a:b]))",
      "tests/nn/test_source.py", "-k", "pulses"),
    m("stream_does_not_carry_the_phase", "streaming.py",
      "self._phase = source.advance_periods(self._tracks[0], self._phase, drop).cpu()",
      "self._phase = self._phase",
      "tests/nn/test_source.py", "-k", "streaming"),
    m("stream_keeps_the_dropped_frames_values", "streaming.py",
      "self._tracks = None if self._tracks is None else tuple(v[:, drop:] for v in self._tracks)",
      "self._tracks = self._tracks",
      "tests/infer/test_streaming.py", "-k", "once"),
    m("stream_recomputes_every_frames_values", "streaming.py",
      "done = 0 if kept is None else kept[0].shape[1]",
      "done, kept = 0, None",
      "tests/infer/test_streaming.py", "-k", "once"),
    # ------------------------------------------------------------------ pitch
    m("pitch_period_off_by_one", "pitch.py",
      "log_f0 = torch.log(self.sample_rate / (best + PERIODS[0]).double())",
      "log_f0 = torch.log(self.sample_rate / (best + PERIODS[0] + 1).double())",
      "tests/dsp/test_pitch.py", "-k", "f0_of or whole_period"),
    m("voicing_threshold_moved", "pitch.py",
      "VOICED = 0.5  # periodicity score where voicing starts",
      "VOICED = 0.45  # periodicity score where voicing starts",
      "tests/dsp/test_pitch.py", "-k", "voicing",
      why="issue 24: caught by a 0.4 dB margin only"),
    # ------------------------------------------------------------------ post-filter
    m("postfilter_period_truncated", "postfilter.py",
      "return period.round().long(), voicing.float()",
      "return period.long(), voicing.float()",
      "tests/dsp/test_postfilter.py", "-k", "comb_period",
      why="issue 24: the comb test used 150 Hz, where rounding and truncating agree"),
    m("postfilter_ignores_voicing", "postfilter.py",
      "a = strength * voicing.to(x.device)",
      "a = strength * torch.ones_like(x)",
      "tests/dsp/test_postfilter.py", "-k", "direct_sum or identity"),
    m("postfilter_band_above_left_alone", "postfilter.py",
      "high_gain = torch.sqrt(1 - 2 * a + 1.5 * a * a)",
      "high_gain = torch.ones_like(a)",
      "tests/dsp/test_postfilter.py", "-k", "balance",
      why="the band above the cut-off left as it was: the mel correction over-raised it by 1.4-2.4 dB"),
    m("postfilter_fir_input_zero_padded", "postfilter.py",
      'inner = F.pad((a * d + (1 - high_gain) * x)[:, None], (h, h), mode="replicate")[:, 0]',
      "inner = F.pad(a * d + (1 - high_gain) * x, (h, h))",
      "tests/dsp/test_postfilter.py", "-k", "direct_sum or identity"),
    m("postfilter_end_tap_zero", "postfilter.py",
      "x_ahead = torch.where(ahead < length, torch.gather(x, 1, ahead.clamp(max=length - 1)), x)",
      "x_ahead = torch.where(ahead < length, torch.gather(x, 1, ahead.clamp(max=length - 1)), 0 * x)",
      "tests/dsp/test_postfilter.py", "-k", "direct_sum or identity"),
    m("postfilter_stops_at_2_khz_again", "postfilter.py",
      "return min(float(f_max), MAX_CUTOFF_SHARE * sample_rate / 2)",
      "return min(2000.0, MAX_CUTOFF_SHARE * sample_rate / 2)",
      "tests/dsp/test_postfilter.py", "-k", "cut_off or identity"),
    m("pitch_floor_window_uniform", "evaluate.py",
      "weights = 0.5 - 0.5 * np.cos(2 * np.pi * (win // 2 + offsets * hop) / win)",
      "weights = np.ones(len(offsets))",
      "tests/train/test_evaluate.py", "-k", "window_f0"),
    m("harmonic_valley_peak_at_the_valley", "evaluate.py",
      "centre = np.rint(k * f0[i] / bin_hz).astype(int)",
      "centre = np.rint((k + 0.5) * f0[i] / bin_hz).astype(int)",
      "tests/train/test_evaluate.py", "-k", "valley"),
    m("postfilter_margin_without_the_fir", "postfilter.py",
      "self.margin = PERIODS[1] + FIR_HALF",
      "self.margin = PERIODS[1]",
      "tests/dsp/test_postfilter.py", "-k", "exact_reach or streaming_with_the_postfilter"),
    m("vocoder_postfilter_not_applied", "stages.py",
      "        return self.postfilter(audio, mel, self.strength)",
      "        return audio",
      "tests/dsp/test_postfilter.py", "-k", "without_pitch",
      why="issue 24: the test of a model without pitch conditioning checked shape and finiteness only"),
    # ------------------------------------------------------------------ mel correction
    m("mel_correction_gain_cap_in_power_db", "melcorrect.py",
      "self.max_log_gain = max_gain_db * math.log(10) / 20",
      "self.max_log_gain = max_gain_db * math.log(10) / 10",
      "tests/dsp/test_melcorrect.py"),
    m("mel_correction_margin_one_step_short", "melcorrect.py",
      "return iterations * self.step_reach",
      "return (iterations - 1) * self.step_reach",
      "tests/dsp/test_melcorrect.py", "-k", "streaming or reach"),
    m("vocoder_mel_correction_not_applied", "stages.py",
      "        return self.correction(audio, mel, self.iterations)",
      "        return audio",
      "tests/dsp/test_melcorrect.py", "-k", "three_frames",
      why="issue 24: the test on any model checked shape and finiteness only"),
    # ------------------------------------------------------------------ streaming
    m("default_lookback_one_frame_short", "streaming.py",
      "self.lookback = self.lookahead + overlap if lookback is None else int(lookback)",
      "self.lookback = self.lookahead + overlap - 1 if lookback is None else int(lookback)",
      "tests/infer/test_streaming.py", "-k", "default_context",
      why="issue 24: the default-context test accepted 30 dB"),
    m("default_lookback_one_frame_short_lp", "streaming.py",
      "self.lookback = self.lookahead + overlap if lookback is None else int(lookback)",
      "self.lookback = self.lookahead + overlap - 1 if lookback is None else int(lookback)",
      "tests/nn/test_lpc.py", "tests/nn/test_source.py", "-k", "default_context",
      why="the same, seen by the tests of models with linear prediction and a pulse source"),
    m("default_lookahead_one_frame_short", "vocoder.py",
      "return min(receptive_field_frames(model), MAX_CONTEXT_FRAMES)",
      "return min(receptive_field_frames(model) - 1, MAX_CONTEXT_FRAMES)",
      "tests/infer/test_streaming.py", "-k", "default_context or latency"),
    m("tail_uncapped", "vocoder.py",
      "return min(receptive_field_frames(model), MAX_CONTEXT_FRAMES)",
      "return receptive_field_frames(model)",
      "tests/infer/test_vocoder.py", "-k", "tail_is_the_context"),
    m("stream_blocks_ignored", "streaming.py",
      "if self._unsynthesized < self.block_frames:",
      "if False:",
      "tests/infer/test_streaming.py", "-k", "blocks"),
    m("held_back_correction_waits_its_reach", "stages.py",
      "ready = end if final else end - self.hold",
      "ready = end if final else end - mc.margin(iterations)",
      "tests/infer/test_streaming.py", "-k", "held_back or low_latency"),
    m("postfilter_stream_tracks_frames_twice", "stages.py",
      "            self.pending = []\n",
      "",
      "tests/dsp/test_stages.py", "-k", "streams_as_it_runs"),
    m("receptive_field_one_layer_short", "vocoder.py",
      "steps = cfg.n_flows * (cfg.kernel_size - 1) // 2 * (2**cfg.n_layers - 1)",
      "steps = cfg.n_flows * (cfg.kernel_size - 1) // 2 * (2 ** (cfg.n_layers - 1) - 1)",
      "tests/infer/test_vocoder.py", "-k", "receptive_field"),
    m("positional_noise_block_offset", "vocoder.py",
      "out[:, lo - start : hi - start] = noise[:, lo - block * NOISE_BLOCK : hi - block * NOISE_BLOCK]",
      "out[:, lo - start : hi - start] = noise[:, : hi - lo]",
      "tests/infer/test_vocoder.py", "-k", "positional_noise"),
    m("limiter_without_its_span", "limiter.py",
      "limited = torch.sign(audio) * (knee + span * torch.tanh(over.clamp(min=0) / span))",
      "limited = torch.sign(audio) * (knee + torch.tanh(over.clamp(min=0)))",
      "tests/dsp/test_limiter.py"),
    m("stream_not_limited", "stages.py",
      "        return self.stage(audio[None], mel[None])[0] if audio.numel() else audio",
      "        return audio",
      "tests/dsp/test_limiter.py", "-k", "stream"),
    m("stacked_taps_in_reverse", "conditioner.py",
      "xs = torch.cat([xs[:, j * dilation : j * dilation + steps] for j in range(kernel)])",
      "xs = torch.cat([xs[:, j * dilation : j * dilation + steps] for j in reversed(range(kernel))])",
      "tests/nn/test_conditioner.py", "-k", "infer_conv1d or float32_inference"),
    # ------------------------------------------------------------------ training
    m("dev_evaluation_with_autograd", "trainer.py",
      "    @torch.no_grad()\n    def evaluate(self) -> dict[str, float]:",
      "    def evaluate(self) -> dict[str, float]:",
      "tests/train/test_train.py", "-k", "autograd"),
    m("gradient_guard_disabled", "trainer.py",
      'if not torch.isfinite(grad_norm) and self.precision != "fp16":',
      'if not torch.isfinite(grad_norm) and self.precision == "fp16":',
      "tests/train/test_train.py", "-k", "guard",
      why="issue 24: only a NaN loss was injected, never a finite loss with a non-finite gradient"),
    m("nan_loss_guard_removed", "trainer.py",
      "        if not self.ctx.all_true(bool(torch.isfinite(nll.nats))):\n            return None\n",
      "",
      "tests/train/test_train.py", "-k", "guard",
      why="issue 24: on the CPU the gradient guard hid it"),
    m("bad_step_count_not_reset", "trainer.py",
      "            self.bad_in_a_row = 0\n            self.step += 1\n",
      "            self.step += 1\n",
      "tests/train/test_train.py", "-k", "non_finite_steps", timeout=300),
    m("same_shuffle_every_epoch", "data.py",
      "np.random.default_rng([self.seed, epoch]).permutation(len(self.clips))",
      "np.random.default_rng([self.seed, 0]).permutation(len(self.clips))",
      "tests/train/test_data.py", "-k", "shuffle",
      why="issue 24: nothing checked that epochs reshuffle"),
    m("segment_offsets_seeded_by_step", "data.py",
      "rng = np.random.default_rng([self.seed, position])",
      "rng = np.random.default_rng([self.seed, step])",
      "tests/train/test_data.py", "-k", "ranks or own_segment"),
    # ------------------------------------------------------------------ checkpoints and atomic writes
    m("no_fsync_before_rename", "atomic.py",
      "            os.fsync(handle.fileno())\n",
      "",
      "tests/test_atomic.py",
      why="issue 24: invisible without a crash; the test checks the call"),
    m("temp_file_left_after_a_failure", "atomic.py",
      "        if os.path.exists(tmp):\n            os.unlink(tmp)\n",
      "",
      "tests/test_atomic.py"),
    m("umask_permissions_not_applied", "atomic.py",
      "        os.chmod(tmp, 0o666 & ~umask)\n",
      "",
      "tests/test_atomic.py"),
    m("save_wav_not_atomic", "audio.py",
      "    with atomic_open(path) as handle:\n        handle.write(_wav_header(0, sample_rate))",
      '    with open(path, "wb") as handle:\n        handle.write(_wav_header(0, sample_rate))',
      "tests/dsp/test_audio.py", "-k", "save_wav",
      why="issue 24: the atomicity test checked only the NaN refusal, before any file is opened"),
    m("checkpoint_version_check_inverted", "checkpoint.py",
      "if not isinstance(version, int) or version > VERSION:",
      "if not isinstance(version, int) or version < VERSION:",
      "tests/nn/test_checkpoint.py"),
    m("checkpoint_shape_mismatch_not_reported", "checkpoint.py",
      "    if missing or unexpected or shapes:\n",
      "    if missing or unexpected:\n",
      "tests/nn/test_checkpoint.py", "tests/interop/test_nvidia.py", "-k", "another_config or bad_inputs"),
    # ------------------------------------------------------------------ config
    m("odd_channel_counts_accepted", "config.py",
      "channels >= 2 and channels % 2 == 0,",
      "channels >= 2,",
      "tests/test_config.py"),
    m("integers_accepted_as_booleans", "config.py",
      "        if not isinstance(value, bool):\n",
      "        if not isinstance(value, (bool, int)):\n",
      "tests/test_config.py"),
    # ------------------------------------------------------------------ loss
    m("gaussian_constant_without_the_square", "loss.py",
      "return 0.5 * math.log(2 * math.pi * sigma * sigma)",
      "return 0.5 * math.log(2 * math.pi * sigma)",
      "tests/nn/test_loss.py"),
    # ------------------------------------------------------------------ audio and mel
    m("mel_log_of_sum_instead_of_clamp", "audio.py",
      "mel = torch.log(torch.clamp(mel, min=self.cfg.clamp_min)).float()",
      "mel = torch.log(mel + self.cfg.clamp_min).float()",
      "tests/dsp/test_audio_convention.py",
      why="issue 24: the mel-convention mutants were caught only by a test that needs the corpus"),
    m("mel_zero_padding", "audio.py",
      '            pad_mode="reflect",\n',
      '            pad_mode="constant",\n',
      "tests/dsp/test_audio_convention.py",
      why="issue 24: the mel-convention mutants were caught only by a test that needs the corpus"),
    m("hifigan_preset_padded_like_the_default", "audio.py",
      "            pad = (cfg.n_fft - cfg.hop_length) // 2\n",
      "            pad = cfg.n_fft // 2\n",
      "tests/dsp/test_audio_convention.py"),
    m("symmetric_window", "audio.py",
      "window=torch.hann_window(cfg.win_length, periodic=True, dtype=torch.float64)",
      "window=torch.hann_window(cfg.win_length, periodic=False, dtype=torch.float64)",
      "tests/dsp/test_audio_convention.py"),
    m("filterbank_without_area_norm", "audio.py",
      "weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]",
      "weights *= (1.0 / (edges[2:] - edges[:-2]))[:, None]",
      "tests/dsp/test_audio_convention.py"),
    # ------------------------------------------------------------------ measures and mel files
    m("crest_keeps_the_quiet_frames", "evaluate.py",
      "keep = rms >= rms.max() * 10 ** (floor_db / 20)",
      "keep = rms >= 0",
      "tests/train/test_evaluate.py", "-k", "crest"),
    m("peak_measured_over_the_whole_output", "evaluate.py",
      "out_peak = np.abs(np.asarray(output, dtype=np.float64)[: len(reference)]).max(initial=0.0)",
      "out_peak = np.abs(np.asarray(output, dtype=np.float64)).max(initial=0.0)",
      "tests/train/test_evaluate.py", "-k", "crest"),
    m("level_above_counts_the_whole_spectrum", "evaluate.py",
      "above = np.fft.rfftfreq(len(ref), 1 / sample_rate) > f_max",
      "above = np.fft.rfftfreq(len(ref), 1 / sample_rate) >= 0",
      "tests/train/test_evaluate.py", "-k", "level_above"),
    m("evaluate_peak_reference_and_output_swapped", "evaluate.py",
      'row["waveflow"]["peak_over_ref_db"] = peak_over_ref_db(audio, out)',
      'row["waveflow"]["peak_over_ref_db"] = peak_over_ref_db(out, audio)',
      "tests/train/test_evaluate.py", "-k", "evaluate_cli_writes_table"),
    m("object_npy_left_to_numpy", "synthesize.py",
      "if header is not None and header[2].hasobject:",
      "if header is not None and False:",
      "tests/cli/test_synthesize_cli.py", "-k", "bad_mel"),
]  # fmt: skip


# ------------------------------------------------------------------ running
@dataclass
class Result:
    mutant: Mutant
    status: str  # caught, survived, timeout, patch not applicable, error
    seconds: float = 0.0
    detail: str = ""


def make_copy(tree: Path, dest: Path) -> None:
    for name in COPY:
        src = tree / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=IGNORE, symlinks=True)
        elif src.is_file():
            shutil.copy2(src, dest / name)


def environment(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("WAVEFLOW_TEST_SEED", None)  # the tests' own order: -x stops at the first failure
    env.setdefault("OMP_NUM_THREADS", "1")
    # the copy lives in a temporary folder: point the tests at the shared data beside this tree
    env.setdefault("WAVEFLOW_SHARED", str(REPO.parent / "shared"))
    return env


PROBE = """
import conftest
import waveflow


def test_probe():
    print("PROBE", waveflow.__file__, conftest.__file__)
"""


def check_import(copy: Path) -> None:
    """Run pytest in a copy exactly as a mutant runs: the copy's package (not the editable
    install's, which points at the original tree) and the copy's conftest must be imported."""
    (copy / "tests" / "test_mutant_probe.py").write_text(PROBE)
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "tests/test_mutant_probe.py"]
    done = subprocess.run(cmd, cwd=copy, env=environment(copy), capture_output=True, text=True)
    line = next((line for line in done.stdout.splitlines() if "PROBE" in line), "")
    paths = [Path(p).resolve() for p in line.split("PROBE", 1)[-1].split()]
    if done.returncode != 0 or len(paths) != 2 or not all(p.is_relative_to(copy.resolve()) for p in paths):
        found = [str(p) for p in paths] or (done.stdout + done.stderr).strip()[-500:]
        raise SystemExit(f"mutants: pytest in a copy at {copy} imports {found}, not the copy's own package")
    print(f"mutants: pytest in a copy imports the copy's package ({paths[0].relative_to(copy.resolve())})")


def whole_files(tests: tuple[str, ...]) -> tuple[str, ...]:
    """The test files of a selection, without its ``-k`` filter or node ids."""
    files, skip = [], False
    for arg in tests:
        if skip:
            skip = False
        elif arg == "-k":
            skip = True
        elif arg.split("::")[0] not in files:
            files.append(arg.split("::")[0])
    return tuple(files)


def run_one(mutant: Mutant, tree: Path, whole: bool = False, timeout: int | None = None) -> Result:
    file = locate(tree, mutant.file)
    source = tree / file
    text = source.read_text() if source.is_file() else ""
    count = text.count(mutant.old)
    if count != 1:
        where = "not found" if count == 0 else f"found {count} times"
        return Result(mutant, "patch not applicable", detail=f"{file}: old string {where}")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.name}-") as tmp:
        copy = Path(tmp)
        make_copy(tree, copy)
        (copy / file).write_text(text.replace(mutant.old, mutant.new))
        tests = whole_files(mutant.tests) if whole else mutant.tests
        missing = [t for t in whole_files(tests) if not (copy / t).exists()]
        if missing:  # e.g. an older checkout: its tests are scored without the files it lacks
            tests = tuple(t for t in tests if t.split("::")[0] not in missing)
            if not whole_files(tests):
                return Result(mutant, "survived", time.monotonic() - start, f"no test file: {' '.join(missing)}")
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
        limit = timeout or mutant.timeout
        try:
            done = subprocess.run(cmd, cwd=copy, env=environment(copy), capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            return Result(mutant, "timeout", time.monotonic() - start, f"over {limit} s")
        seconds = time.monotonic() - start
        tail = (done.stdout + done.stderr).strip().splitlines()
        last = tail[-1] if tail else ""
        # pytest: 0 all passed, 1 some failed, 2 interrupted (a collection error), 5 nothing selected
        if done.returncode == 0:
            return Result(mutant, "survived", seconds, last)
        if done.returncode == 1:
            failed = next((line for line in tail if line.startswith(("FAILED", "ERROR"))), last)
            return Result(mutant, "caught", seconds, failed)
        if done.returncode == 5:
            return Result(mutant, "survived", seconds, "no test selected: " + " ".join(tests))
        return Result(mutant, "error", seconds, f"pytest exit {done.returncode}: {last}")


def select(names: list[str] | None) -> list[Mutant]:
    if not names:
        return MUTANTS
    chosen = [mu for mu in MUTANTS if any(fnmatch.fnmatchcase(mu.name, pattern) for pattern in names)]
    unknown = [p for p in names if not any(fnmatch.fnmatchcase(mu.name, p) for mu in MUTANTS)]
    if unknown:
        raise SystemExit(f"mutants: no mutant named {', '.join(unknown)} (see --list)")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these mutants (names or shell patterns)")
    parser.add_argument("--list", action="store_true", help="list the mutants and whether each patch applies")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="mutants run at the same time (default 1)")
    parser.add_argument("--tree", type=Path, default=REPO, help="checkout whose package and tests are used")
    parser.add_argument(
        "--whole-files", action="store_true", help="run each mutant's whole test files, without its -k filter (slow)"
    )
    parser.add_argument("--timeout", type=int, help="seconds per mutant instead of each mutant's own limit")
    args = parser.parse_args(argv)
    tree = args.tree.resolve()
    if not (tree / "waveflow").is_dir() or not (tree / "tests").is_dir():
        raise SystemExit(f"mutants: {tree} holds no waveflow/ and tests/")
    if args.jobs < 1:
        raise SystemExit(f"mutants: --jobs must be >= 1, got {args.jobs}")
    mutants = select(args.only)
    if args.list:
        for mu in mutants:
            file = locate(tree, mu.file)
            text = (tree / file).read_text() if (tree / file).is_file() else ""
            ok = "applies" if text.count(mu.old) == 1 else "patch not applicable"
            print(f"{mu.name:42s} {file:28s} {ok:21s} {' '.join(mu.tests)}")
        print(f"{len(mutants)} mutants")
        return 0
    with tempfile.TemporaryDirectory(prefix="mutant-check-") as tmp:
        make_copy(tree, Path(tmp))
        check_import(Path(tmp))
    print(f"{len(mutants)} mutants of {tree}, {args.jobs} at a time; each in a copy with its own package", flush=True)
    start = time.monotonic()
    results: list[Result] = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for result in pool.map(lambda mu: run_one(mu, tree, args.whole_files, args.timeout), mutants):
            results.append(result)
            print(
                f"{result.status:21s} {result.mutant.name:42s} {result.seconds:5.0f} s  {result.detail[:100]}",
                flush=True,
            )
    caught = [r for r in results if r.status == "caught"]
    print(f"\nscore: {len(caught)}/{len(results)} caught ({100 * len(caught) / max(1, len(results)):.0f}%) "
          f"in {time.monotonic() - start:.0f} s")  # fmt: skip
    others = [r for r in results if r.status != "caught"]
    if others:
        print("not caught:")
        for r in others:
            print(f"  {r.mutant.name} ({r.status}): {r.mutant.file}, tests {' '.join(r.mutant.tests)}"
                  + (f"; {r.detail}" if r.detail else ""))  # fmt: skip
    return 1 if others else 0


if __name__ == "__main__":
    sys.exit(main())
