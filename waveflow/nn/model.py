"""WaveGlow: a 1D Glow over groups of audio samples, conditioned on the upsampled mel.

forward (training, exact likelihood):
    audio (B, T) --squeeze--> (B, n_group, T/n_group) --[flow k: early output? -> [actnorm]
    -> 1x1 conv -> affine coupling] x n_flows--> z (B, n_group, T/n_group), log|det J| (B,)

inverse (inference) runs the same modules backwards; ``infer`` samples z ~ N(0, sigma^2)
and calls ``inverse``. There is no second hand-written copy of the network.

With ``lpc_order > 0`` a linear-prediction layer (``waveflow.nn.lpc``) sits between the audio
and the squeeze: the flow models the residual of a mel-derived all-pole filter, the log-det
gains the layer's exact ``-sum log g``, and inference runs the synthesis filter last.

Length policy: a training input whose length is not a multiple of ``n_group`` is trimmed
(the last ``T % n_group`` samples are dropped, and the likelihood is that of the rest);
inference generates ``ceil(L / n_group) * n_group`` samples and trims to ``L``
(default ``L = frames * hop_length``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from waveflow.config import MelConfig, ModelConfig
from waveflow.dsp.pitch import MelPitch
from waveflow.nn.compose import ComposedConditioning, can_compose
from waveflow.nn.conditioner import Conv1d
from waveflow.nn.flows import FlowStep, squeeze, squeeze_cond, unsqueeze
from waveflow.nn.lpc import LinearPrediction
from waveflow.nn.source import PulseSource


class WaveGlow(nn.Module):
    """``mel``: the mel convention, used by linear prediction and pitch features only
    (default: WaveGlow's, with the model's bands and hop)."""

    def __init__(self, cfg: ModelConfig | None = None, mel: MelConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or ModelConfig()
        cfg.validate()
        self._composed: list[ComposedConditioning] | None = None
        mel = mel or MelConfig(n_mels=cfg.n_mels, hop_length=cfg.hop_length)
        self.lpc: LinearPrediction | None = None
        frame_offset = mel.frame_offset
        if cfg.lpc_order:
            if (mel.n_mels, mel.hop_length) != (cfg.n_mels, cfg.hop_length):
                raise ValueError(
                    f"mel convention ({mel.n_mels} mels, hop {mel.hop_length}) does not match the model "
                    f"({cfg.n_mels} mels, hop {cfg.hop_length})"
                )
            self.lpc = LinearPrediction(
                cfg.lpc_order,
                n_mels=mel.n_mels,
                sample_rate=mel.sample_rate,
                n_fft=mel.n_fft,
                win_length=mel.win_length,
                hop_length=mel.hop_length,
                f_min=mel.f_min,
                f_max=mel.f_max,
                frame_offset=frame_offset,
            )
        self.pitch: MelPitch | None = None
        if cfg.pitch_features:
            self.pitch = MelPitch(mel.n_mels, mel.sample_rate, mel.n_fft, mel.f_min, mel.f_max, cfg.pitch_tracker)
        self.source: PulseSource | None = None
        if cfg.pulse_source:
            self.source = PulseSource.for_mel(mel, cfg.pitch_tracker)
        inputs = cfg.cond_inputs
        self.upsample = nn.ConvTranspose1d(inputs, inputs, cfg.upsample_kernel, stride=cfg.upsample_stride)
        cond_channels = cfg.cond_channels
        self.flows = nn.ModuleList(
            FlowStep(
                channels,
                cond_channels,
                cfg.n_layers,
                cfg.n_channels,
                cfg.kernel_size,
                weight_norm=cfg.weight_norm,
                lu=cfg.lu,
                actnorm=cfg.actnorm,
            )
            for channels in cfg.channels_per_flow()
        )

    # ------------------------------------------------------------------ inputs
    def _check_mel(self, mel: torch.Tensor) -> None:
        n_mels = self.cfg.n_mels
        if not torch.is_tensor(mel):
            raise TypeError(f"mel must be a torch.Tensor of shape (batch, {n_mels}, frames), got {type(mel).__name__}")
        if mel.dim() != 3 or mel.shape[1] != n_mels:
            raise ValueError(
                f"mel has shape {tuple(mel.shape)}; expected (batch, {n_mels}, frames)"
                + (" - it looks time-major, transpose it" if mel.dim() == 3 and mel.shape[2] == n_mels else "")
            )
        if mel.shape[2] < 1:
            raise ValueError(f"mel has no frames; expected (batch, {n_mels}, frames >= 1)")
        if not torch.isfinite(mel).all():
            raise ValueError("mel contains NaN or Inf")

    def _check_audio(self, audio: torch.Tensor, mel: torch.Tensor) -> int:
        """Validate a training pair; returns the usable audio length (multiple of n_group)."""
        cfg = self.cfg
        if not torch.is_tensor(audio) or audio.dim() != 2:
            shape = tuple(audio.shape) if torch.is_tensor(audio) else type(audio).__name__
            raise ValueError(f"audio has shape {shape}; expected (batch, samples)")
        self._check_mel(mel)
        if audio.shape[0] != mel.shape[0]:
            raise ValueError(f"audio batch {audio.shape[0]} does not match mel batch {mel.shape[0]}")
        if audio.shape[1] < cfg.n_group:
            raise ValueError(f"audio has {audio.shape[1]} samples; expected at least one group of {cfg.n_group}")
        if not torch.isfinite(audio).all():
            raise ValueError("audio contains NaN or Inf")
        length = audio.shape[1] - audio.shape[1] % cfg.n_group
        frames = mel.shape[2]
        lo, hi = self.frame_range(length)
        if not lo <= frames <= hi:
            raise ValueError(
                f"mel has {frames} frames but audio has {audio.shape[1]} samples; expected {lo}..{hi} frames "
                f"(hop {cfg.hop_length}: about 1 + samples // hop)"
            )
        return length

    def frame_range(self, length: int) -> tuple[int, int]:
        """Mel frame counts accepted for ``length`` samples: enough for the upsampled mel
        to cover the audio, and no more than a centred STFT (plus one frame of slack for a
        length trimmed to a multiple of n_group) would give."""
        cfg = self.cfg
        steps = self._cond_steps(length)
        lo = max(1, math.ceil((steps - cfg.upsample_kernel) / cfg.upsample_stride) + 1)
        hi = length // cfg.hop_length + 2
        return lo, hi

    def _cond_steps(self, length: int) -> int:
        """Conditioning steps needed for ``length`` samples (a multiple of n_group)."""
        return length if self.cfg.cond_rate == "sample" else length // self.cfg.n_group

    def max_length(self, frames: int) -> int:
        """The most samples the upsampled conditioning of ``frames`` mel frames covers."""
        cfg = self.cfg
        steps = (frames - 1) * cfg.upsample_stride + cfg.upsample_kernel
        return steps if cfg.cond_rate == "sample" else steps * cfg.n_group

    # ------------------------------------------------------------ conditioning
    def upsample_mel(
        self,
        mel: torch.Tensor,
        length: int,
        phase: torch.Tensor | None = None,
        phase0: torch.Tensor | float = 0.0,
        residual: torch.Tensor | None = None,
        tracks: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Mel ``(B, n_mels, F)`` -> conditioning ``(B, cond_channels, length / n_group)``.

        The transposed convolution gives ``(F - 1) * stride + upsample_kernel`` steps, trimmed
        to the steps needed (padded by repeating the last step if a configuration leaves it
        short). At the sample rate the result is squeezed like the audio. With a pulse source,
        its channels follow, squeezed like the audio: at ``phase`` ``(B, length)`` if given, else
        locked to pulses picked in the LP ``residual`` (training), else running free from
        ``phase0`` (synthesis).
        """
        steps = self._cond_steps(length)
        inputs = mel
        if self.pitch is not None:
            inputs = torch.cat([mel, self.pitch(mel).to(mel.dtype)], dim=1)
        up = self.upsample(inputs)
        if up.shape[2] < steps:
            up = torch.nn.functional.pad(up, (0, steps - up.shape[2]), mode="replicate")
        up = up[:, :, :steps]
        if self.source is None:
            return squeeze_cond(up, self.cfg.n_group) if self.cfg.cond_rate == "sample" else up
        pulses = self.source(mel, length, phase, phase0, residual, tracks).to(up.dtype)
        if self.cfg.cond_rate == "sample":
            return squeeze_cond(torch.cat([up, pulses], dim=1), self.cfg.n_group)
        return torch.cat([up, squeeze_cond(pulses, self.cfg.n_group)], dim=1)

    # ------------------------------------------------------------------- flow
    def forward(
        self,
        audio: torch.Tensor,
        mel: torch.Tensor,
        context: torch.Tensor | None = None,
        phase: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """audio ``(B, T)``, mel ``(B, n_mels, F)`` -> z ``(B, n_group, T // n_group)``,
        log|det dz/daudio| ``(B,)`` in float32.

        z's channels are the early outputs in the order they left the flow, then the
        channels that went through every flow (the layout ``inverse`` expects). With linear
        prediction, ``context`` ``(B, lpc_order)`` holds the audio just before ``audio``
        (zeros when None, as at the start of a clip); without it, ``context`` is ignored.
        With a pulse source, ``phase`` ``(B, length)`` is its phase; None picks the pulses in the
        LP residual (``PulseSource``), and the likelihood is conditional on them.
        """
        length = self._check_audio(audio, mel)
        audio = audio[:, :length]
        logdet = audio.new_zeros(audio.shape[0], dtype=torch.float32)
        if self.lpc is not None:
            audio, logdet = self.lpc(audio, mel, context)
        cond = self.upsample_mel(mel, length, phase, residual=audio)
        x = squeeze(audio, self.cfg.n_group)
        early: list[torch.Tensor] = []
        for k, flow in enumerate(self.flows):
            if self.cfg.early_output_at(k):
                early.append(x[:, : self.cfg.n_early_size])
                x = x[:, self.cfg.n_early_size :]
            x, ld = flow(x, cond)
            logdet = logdet + ld
        return torch.cat([*early, x], dim=1), logdet

    def inverse(self, z: torch.Tensor, mel: torch.Tensor, phase: torch.Tensor | None = None) -> torch.Tensor:
        """z ``(B, n_group, T')`` and mel ``(B, n_mels, F)`` -> audio ``(B, T' * n_group)``.
        ``phase``: the pulse source's phase ``(B, T' * n_group)`` (None: free-running from 0)."""
        x = self.excitation(z, mel, phase=phase)
        return x if self.lpc is None else self.lpc.inverse(x, mel)

    def excitation(
        self,
        z: torch.Tensor,
        mel: torch.Tensor,
        phase0: torch.Tensor | float = 0.0,
        phase: torch.Tensor | None = None,
        harmonic: float = 0.0,
        tracks: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The flow's inverse alone: z -> ``(B, T' * n_group)``, the LP residual when the model
        has linear prediction (``lpc.synthesize`` turns it into audio), else the audio. A pulse
        source runs free from ``phase0`` (a stream's carried phase), or follows ``phase``.
        ``harmonic`` > 0 (a model with a pulse source): the voiced share of the result made
        periodic at that strength after the flow (``waveflow.dsp.harmonic``; weightless).
        ``tracks``: the pulse source's ``frame_tracks(mel)`` when the caller has them (a stream
        keeps them per frame), else computed here."""
        self._check_mel(mel)
        if harmonic and self.source is None:
            raise ValueError("harmonic excitation needs a model with a pulse source (model.pulse_source)")
        cfg = self.cfg
        if z.dim() != 3 or z.shape[0] != mel.shape[0] or z.shape[1] != cfg.n_group:
            raise ValueError(f"z has shape {tuple(z.shape)}; expected ({mel.shape[0]}, {cfg.n_group}, steps)")
        composed = self._composed_conditioning(mel.shape[2], z.shape[2])
        if tracks is None and harmonic:
            tracks = self.source.frame_tracks(mel)  # read once, by the conditioning and the step
        if harmonic and phase is None:  # the free phase, too
            phase = self.source.free_phase(mel, z.shape[2] * cfg.n_group, phase0, tracks)
        cond = None
        if composed is None:
            cond = self.upsample_mel(mel, z.shape[2] * cfg.n_group, phase, phase0, tracks=tracks)
        n_early = sum(cfg.early_output_at(k) for k in range(cfg.n_flows))
        split = n_early * cfg.n_early_size
        early = list(z[:, :split].split(cfg.n_early_size, dim=1)) if split else []
        x = z[:, split:]
        for k in reversed(range(cfg.n_flows)):
            if composed is None:
                x = self.flows[k].inverse(x, cond)
            else:
                x = self.flows[k].inverse(x, composed[k](mel, z.shape[2]), cond_projected=True)
            if cfg.early_output_at(k):
                x = torch.cat([early.pop(), x], dim=1)
        x = unsqueeze(x)
        if harmonic:
            x = self.source.harmonic(x, mel, harmonic, phase0, phase, tracks)
        return x

    def compose_conditioning(self) -> None:
        """Precompute, for every flow, the upsampler and its conditioning conv as one map
        at the mel rate (``waveflow.nn.compose``): less arithmetic at inference, much more
        memory. Used by ``inverse`` in eval mode without autograd while the weights stay
        as they were; ``train()`` drops it."""
        if not can_compose(self.cfg):
            raise ValueError(
                "composing the conditioning needs cond_rate 'sample', n_group dividing hop_length, "
                "upsample_kernel a multiple of hop_length and no pitch features"
            )
        self._composed = [
            ComposedConditioning(self.upsample, flow.coupling.wn.cond_layer, self.cfg.n_group) for flow in self.flows
        ]

    def _composed_conditioning(self, frames: int, steps: int) -> list[ComposedConditioning] | None:
        composed = self._composed
        if composed is None or self.training or torch.is_grad_enabled() or not composed[0].covers(frames, steps):
            return None
        if not all(
            c.matches(self.upsample, f.coupling.wn.cond_layer) for c, f in zip(composed, self.flows, strict=False)
        ):
            self._composed = None  # the weights moved on: compose again to get the speed back
            return None
        return composed

    def train(self, mode: bool = True) -> WaveGlow:
        self._composed = None
        return super().train(mode)

    def latent_shape(self, batch: int, length: int) -> tuple[int, int, int]:
        """Shape of z for ``length`` output samples (rounded up to a whole group)."""
        return batch, self.cfg.n_group, -(-length // self.cfg.n_group)

    def infer(
        self,
        mel: torch.Tensor,
        sigma: float = 0.6,
        z: torch.Tensor | None = None,
        length: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample audio ``(B, length)`` for mel ``(B, n_mels, F)``; ``length`` defaults to F * hop.

        ``z`` (shape ``latent_shape(B, length)``, as returned by ``forward``) is used as is and
        makes the result reproducible; otherwise z ~ N(0, sigma^2) is drawn from ``generator``
        on the mel's device and dtype.
        """
        self._check_mel(mel)
        cfg = self.cfg
        if length is None:
            length = mel.shape[2] * cfg.hop_length
        max_len = self.max_length(mel.shape[2])
        if not 0 < length <= max_len:
            raise ValueError(f"length {length} is outside 1..{max_len} for a mel of {mel.shape[2]} frames")
        shape = self.latent_shape(mel.shape[0], length)
        if z is None:
            z = torch.randn(shape, generator=generator, device=mel.device, dtype=mel.dtype) * sigma
        elif tuple(z.shape) != shape:
            raise ValueError(f"z has shape {tuple(z.shape)}; expected {shape} for {length} samples")
        return self.inverse(z, mel)[:, :length]

    @torch.no_grad()
    def optimize_for_inference(self, dtype: torch.dtype | None = None, compose: bool = False) -> WaveGlow:
        """Prepare for sampling only, in place, and return ``self``: eval mode, no autograd
        on parameters, weight norm folded into plain weights, 1x1-conv inverses computed,
        and the conditioner's fused weights built.

        ``dtype`` (e.g. ``torch.float16`` on a GPU) casts everything but the invertible
        1x1 convs and ActNorm, which keep float32 parameters so that their inverses stay
        exact; the model then expects mels of that dtype. The function computed is
        unchanged up to rounding. The state dict afterwards holds ``weight`` instead of
        ``weight_g``/``weight_v``: save checkpoints before this.

        ``compose=True`` also composes the upsampler with every flow's conditioning conv
        (``compose_conditioning``): about 20% fewer FLOPs for the default model, at the
        cost of the composed weights' memory (2 GB for the default model).
        """
        self.eval()
        self.requires_grad_(False)
        for module in self.modules():
            if isinstance(module, Conv1d):
                module.remove_weight_norm()
        if dtype is not None:
            self.to(dtype)  # linear prediction keeps its float64 constants off the buffers
            for flow in self.flows:
                flow.invconv.float()
                if flow.actnorm is not None:
                    flow.actnorm.float()
        for flow in self.flows:
            flow.invconv.inverse_matrix()
            flow.coupling.wn._fused()
        if compose:
            self.compose_conditioning()
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
