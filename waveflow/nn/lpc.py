"""Linear prediction from the mel: an exact, volume-preserving flow layer.

The mel states the spectral envelope; a flow trained on raw audio spends most of its
training relearning it. This layer hands the envelope to DSP (as LPCNet did for WaveRNN)
and leaves the flow the excitation. Per mel frame f, from the log-mel alone:

1. linear magnitude ``mag = clamp(pinv(M) @ exp(mel), 1e-6)`` (M the mel filterbank), with
   the bins above f_max, about which the mel says nothing, set to the mean of the 8 bins
   below it;
2. autocorrelation ``r = irfft(mag ** 2)[: p + 1]`` with a white-noise correction
   ``r[0] *= 1 + noise_floor`` that keeps the system well posed;
3. Levinson-Durbin in float64: ``a`` (a_0 = 1, minimum phase) and the prediction error E;
4. gain ``g = max(sqrt(E / sum(window ** 2)), gain_floor)``: the residual's rms.

Sample n belongs to frame ``(n + frame_offset) // hop`` (the frame whose centre is nearest).

forward (analysis, training): ``e[n] = sum_k a_k(f(n)) x[n - k] / g(f(n))``, with the p
samples before x given as ``context`` (zeros at the start of a clip). The map x -> e is lower
triangular with diagonal ``1 / g``, so ``log|det de/dx| = -sum_n log g(f(n))`` exactly.

inverse (synthesis): ``x = (g e) filtered by 1 / A(z)``, an all-pole filter whose
coefficients change at frame boundaries, its p-sample state carried from frame to frame and
(``state``) from call to call. No per-sample Python loop: within a frame the filter is a
small lower-triangular Toeplitz matrix applied to sub-blocks of ``S >= p`` samples, the state
is carried across a frame's sub-blocks up and down a binary tree, and the state that links
frames is a linear recurrence ``s_b = M_b s_{b-1} + c_b`` solved by a parallel (Blelloch)
scan, ``2 log2(frames)`` rounds of batched matrix products.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from waveflow.dsp.audio import LOG_MEL_RANGE, DeviceConstants, mel_filterbank, sample_frames

FILL_BINS = 8  # bins below f_max whose mean fills the bins above it


class LinearPrediction(nn.Module):
    """Exact LP flow layer ``x (B, T) <-> e (B, T)`` conditioned on the log-mel ``(B, n_mels, F)``.

    It has no parameters. Its constants are float64 tensors kept off the module's buffers, so
    that ``.half()`` on an enclosing model never degrades them.
    """

    def __init__(
        self,
        order: int,
        n_mels: int = 80,
        sample_rate: int = 22050,
        n_fft: int = 1024,
        win_length: int = 1024,
        hop_length: int = 256,
        f_min: float = 0.0,
        f_max: float = 8000.0,
        frame_offset: int | None = None,
        noise_floor: float = 1e-3,
        gain_floor: float = 1e-4,
    ) -> None:
        super().__init__()
        if not 0 < order < hop_length:
            raise ValueError(f"LP order must be in 1..{hop_length - 1} (below hop_length), got {order}")
        self.order, self.hop = order, hop_length
        self.frame_offset = hop_length // 2 if frame_offset is None else frame_offset
        self.noise_floor, self.gain_floor = noise_floor, gain_floor
        # Sub-blocks of S samples (S >= order, S divides hop) share one Toeplitz matrix per frame.
        self.sub = hop_length
        while self.sub % 2 == 0 and self.sub // 2 >= order:
            self.sub //= 2
        # When tracing for export, the scan needs a fixed depth: 2**16 frames (12 min at hop 256).
        self.scan_levels: int | None = None

        basis = mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max)
        n_bins = n_fft // 2 + 1
        top = min(n_bins - 1, math.floor(f_max * n_fft / sample_rate))  # last bin at or below f_max
        window = torch.hann_window(win_length, periodic=True, dtype=torch.float64)
        # r[k] = irfft(power)[k] as a (bins, p + 1) cosine matrix: exportable, and cheaper than an FFT for p << n_fft.
        k = np.arange(order + 1)[None, :]
        j = np.arange(n_bins)[:, None]
        weight = np.where((j == 0) | (j == n_fft // 2), 1.0, 2.0) / n_fft
        cos = weight * np.cos(2 * np.pi * j * k / n_fft)  # (bins, p + 1)
        self._consts = DeviceConstants(
            pinv=torch.from_numpy(np.linalg.pinv(basis)[: top + 1]),  # (bins up to f_max, n_mels)
            cos=torch.from_numpy(cos[: top + 1].T.copy()),  # (p + 1, bins up to f_max)
            cos_above=torch.from_numpy(cos[top + 1 :].sum(axis=0)[:, None]),  # (p + 1, 1)
        )
        self._window_power = float(window.square().sum())

    # ------------------------------------------------------------ coefficients
    def coefficients(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log-mel ``(B, n_mels, F)`` -> predictor ``a (B, F, p + 1)`` (a_0 = 1), gain ``g (B, F)``; float64."""
        with torch.autocast(device_type=mel.device.type, enabled=False):
            # float64 throughout: in float32 the matmuls' rounding depends on how many frames are in
            # the batch, and streaming must compute a window's coefficients exactly as offline does.
            lin = torch.exp(mel.double().clamp(*LOG_MEL_RANGE))
            mag = torch.matmul(self._consts.get("pinv", mel.device), lin).clamp_(min=1e-6)  # (B, bins <= f_max, F)
            fill = mag[:, -FILL_BINS:].mean(dim=1)  # (B, F): the magnitude of every bin above f_max
            # r = irfft(power)[: p + 1], the bins above f_max (all equal to fill) in one column sum
            r = torch.matmul(self._consts.get("cos", mel.device), mag.square_())  # (B, p + 1, F)
            r = r + fill.square().unsqueeze(1) * self._consts.get("cos_above", mel.device)
            r = r.transpose(1, 2)  # (B, F, p + 1)
            r = torch.cat([r[..., :1] * (1.0 + self.noise_floor), r[..., 1:]], dim=-1)
            a, err = levinson(r, self.order)
            g = torch.sqrt(err.clamp(min=0.0) / self._window_power).clamp(min=self.gain_floor)
        return a, g

    def frame_index(self, start: int, length: int, frames: int, device: torch.device) -> torch.Tensor:
        """Frame of each sample ``start .. start + length - 1`` ``(length,)``, clamped to the mel's frames."""
        return sample_frames(start, length, frames, self.hop, self.frame_offset, device)

    # ------------------------------------------------------------ flow contract
    def forward(
        self, x: torch.Tensor, mel: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio ``(B, T)`` -> residual ``(B, T)`` and ``log|det de/dx|`` ``(B,)`` (float32).

        ``context``: the ``(B, p)`` samples before ``x`` (zeros when None: a clip's start).
        """
        p = self.order
        a, g = self.coefficients(mel)
        with torch.autocast(device_type=x.device.type, enabled=False):
            idx = self.frame_index(0, x.shape[1], a.shape[1], x.device)
            if context is None:
                context = x.new_zeros(x.shape[0], p)
            elif context.shape != (x.shape[0], p):
                raise ValueError(f"LP context has shape {tuple(context.shape)}; expected ({x.shape[0]}, {p})")
            windows = torch.cat([context, x], dim=1).double().unfold(1, p + 1, 1)  # (B, T, p + 1): x[n-p .. n]
            e = (windows * a.flip(-1)[:, idx]).sum(-1) / g[:, idx]
            logdet = -torch.log(g)[:, idx].sum(-1)
        return e.to(x.dtype), logdet.float()

    def inverse(
        self, e: torch.Tensor, mel: torch.Tensor, start: int = 0, state: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Residual ``(B, T)`` -> audio ``(B, T)``; ``start``/``state`` as in ``synthesize``."""
        a, g = self.coefficients(mel)
        return self.synthesize(e, a, g, start, state)[0]

    def synthesize(
        self,
        e: torch.Tensor,
        a: torch.Tensor,
        g: torch.Tensor,
        start: int = 0,
        state: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the synthesis filter over ``e (B, T)``: returns audio ``(B, T)`` and the new state ``(B, p)``.

        ``e[:, 0]`` is sample ``start`` of the mel's time line (frame f is centred at f * hop);
        ``state`` holds the ``p`` output samples before it, oldest first (zeros when None).
        """
        p, hop, sub = self.order, self.hop, self.sub
        batch, length = e.shape
        # float32 keeps the error of a 10 s clip near 2e-6 (of a 0.8 peak); float64 input stays float64.
        dtype = torch.promote_types(e.dtype, torch.float32)
        with torch.autocast(device_type=e.device.type, enabled=False):
            a, g = a.to(dtype), g.to(dtype)
            # Align blocks to frame boundaries: pad in front to the start of the first sample's frame.
            # Zero input from a zero state leaves the state zero, so the padding changes nothing.
            lead = (start + self.frame_offset) % hop
            tail = (-(lead + length)) % hop
            first = (start + self.frame_offset) // hop
            u = F.pad(e.to(dtype), (lead, tail)).view(batch, -1, hop)  # (B, NB, hop)
            bidx = (torch.arange(u.shape[1], device=e.device) + first).clamp(0, a.shape[1] - 1)
            u = u * g[:, bidx, None]
            if state is not None:
                if state.shape != (batch, p):
                    raise ValueError(f"LP state has shape {tuple(state.shape)}; expected ({batch}, {p})")
                state = state.to(dtype)
                idx = self.frame_index(start, min(p, length), a.shape[1], e.device)
                u = _fold_state(u.view(batch, -1), lead, a[:, idx], state).view(batch, -1, hop)
            x = _blocked_all_pole(u, a[:, bidx], sub, self.scan_levels)
            x = x.reshape(batch, -1)[:, lead : lead + length]
            prev = state if state is not None else x.new_zeros(batch, p)
            new_state = torch.cat([prev, x], dim=1)[:, -p:]
        return x.to(e.dtype), new_state


# ---------------------------------------------------------------------- DSP
def levinson(r: torch.Tensor, order: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Levinson-Durbin over the last axis: autocorrelation ``(..., p + 1)`` -> ``a (..., p + 1)``, error ``(...)``.

    Batched over every leading axis; minimum phase for a positive-definite ``r``.
    """
    if exporting() or (torch.is_grad_enabled() and r.requires_grad):
        return _levinson_functional(r, order)
    # In place: a third fewer ops per step than building a new ``a`` each step, which is most
    # of its cost for the few hundred frames of a clip. (A numpy loop was 0.16 ms faster for
    # a second of audio and 0.4 ms slower for ten.)
    r_rev = r[..., : order + 1].flip(-1)  # r_p .. r_0: r[1 .. i] reversed is r_rev[p - i .. p - 1]
    a = torch.zeros_like(r_rev)
    a[..., 0] = 1.0
    neg_err = -r[..., 0]
    for i in range(1, order + 1):
        k = torch.linalg.vecdot(a[..., :i], r_rev[..., order - i : order]).div_(neg_err).clamp_(-1 + 1e-12, 1 - 1e-12)
        a[..., 1 : i + 1].addcmul_(k.unsqueeze(-1), a[..., :i].flip(-1))
        neg_err = neg_err.addcmul(neg_err * k, k, value=-1.0)  # E (1 - k^2)
    return a, -neg_err


def _levinson_functional(r: torch.Tensor, order: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``levinson`` without in-place updates, for tracing (TorchScript, ONNX) and autograd."""
    r_rev = r[..., : order + 1].flip(-1)
    err = r[..., 0]
    a = torch.cat([torch.ones_like(r_rev[..., :1]), torch.zeros_like(r_rev[..., 1:])], dim=-1)
    for i in range(1, order + 1):
        acc = (a[..., :i] * r_rev[..., order - i : order]).sum(-1)
        k = (-acc / err).clamp(-1 + 1e-12, 1 - 1e-12)
        updated = a[..., 1 : i + 1] + k[..., None] * a[..., :i].flip(-1)
        a = torch.cat([a[..., :1], updated, a[..., i + 1 :]], dim=-1)
        err = err * (1 - k * k)
    return a, err


def _matvec(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``m (..., i, j) @ v (..., j) -> (..., i)``. As an einsum: for the many tiny products here
    (a frame's 24 x 24 map) it runs 3-4x faster on CPU than matmul's batched GEMM."""
    return torch.einsum("...ij,...j->...i", m, v)


def exporting() -> bool:
    """Tracing for TorchScript or ONNX: take the gather forms, which both export."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _fold_state(u: torch.Tensor, at: int, a_first: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """Move an initial state into the input of the first samples (from index ``at`` of ``u (B, L)``),
    so that the filter can start from zeros.

    ``a_first`` ``(B, n, p + 1)``: the coefficients of the first ``n = min(p, T)`` samples.
    """
    n, p = a_first.shape[1], a_first.shape[2] - 1
    rows = _state_windows(a_first)  # (B, n, p, p), reversed: row p - 1 - j of sample j's map is what sample j needs
    diag = torch.arange(n, device=u.device)
    corr = _matvec(rows[:, diag, p - 1 - diag], state)
    return torch.cat([u[:, :at], u[:, at : at + n] + corr, u[:, at + n :]], dim=1)


def _zero_input_response(a: torch.Tensor, length: int) -> torch.Tensor:
    """``(..., p + 1)`` -> ``Z (..., length, p)``: from a zero input and a state ``s = x[-p .. -1]``,
    the all-pole filter's sample j is ``(Z s)[j]``.

    By doubling, in ``ceil(log2 length)`` batched products: the state after m samples is
    ``P_m s`` (the last p - m state entries shifted down, then rows 0 .. m - 1 of Z), so rows
    m .. 2m - 1 of Z are rows 0 .. m - 1 times ``P_m``. Its last column, shifted by one, is the
    impulse response.
    """
    p = a.shape[-1] - 1
    z = -a[..., 1:].flip(-1).unsqueeze(-2)  # row 0: x[0] = -sum_k a_k x[-k]
    eye = torch.eye(p, dtype=a.dtype, device=a.device)
    while z.shape[-2] < length:
        m = z.shape[-2]
        if m < p:
            step = torch.cat([eye[m:].expand(*z.shape[:-2], p - m, p), z], dim=-2)  # P_m
        else:
            step = z[..., m - p : m, :]
        z = torch.cat([z, torch.matmul(z[..., : min(m, length - m), :], step)], dim=-2)
    return z


def _state_windows(a: torch.Tensor) -> torch.Tensor:
    """``(..., p + 1)`` -> ``(..., p, p)``: the state map U, ``(U s)[j] = -sum_{k > j} a_k x[j - k]``
    for a state ``s = x[-p .. -1]`` (the part of sample j's sum that reaches before the block),
    with its rows in reverse order: ``R[i, m] = U[p - 1 - i, m] = -a[2p - 1 - i - m]`` (0 past a_p).
    Reversed, it is a plain view (windows of the padded coefficients)."""
    p = a.shape[-1] - 1
    zp = F.pad(-a[..., 1:].flip(-1), (p - 1, 0))  # [0 x (p - 1), -a_p .. -a_1]
    if not exporting():
        return zp.unfold(-1, p, 1)
    i = torch.arange(p, device=a.device)[:, None]
    return zp[..., i + torch.arange(p, device=a.device)[None, :]]  # a gather: ONNX cannot export this unfold


def _toeplitz_windows(h: torch.Tensor) -> torch.Tensor:
    """``(..., S)`` -> ``(..., S, S)`` with ``W[i, m] = h[i + m - S + 1]`` (0 for a negative index).

    The lower-triangular Toeplitz matrix ``T[i, j] = h[i - j]`` is W with its columns reversed,
    so ``T @ v = W @ v.flip(-2)``: flipping v costs far less than flipping W.
    """
    sub = h.shape[-1]
    padded = F.pad(h, (sub - 1, 0))
    if not exporting():
        return padded.unfold(-1, sub, 1)
    i = torch.arange(sub, device=h.device)
    return padded[..., i[:, None] + i[None, :]]  # a gather: ONNX cannot export this unfold


def _blocked_all_pole(u: torch.Tensor, a: torch.Tensor, sub: int, scan_levels: int | None) -> torch.Tensor:
    """All-pole filter ``x[n] = u[n] - sum_k a_k x[n - k]`` from a zero state, one coefficient set
    per block: ``u (B, NB, L)``, ``a (B, NB, p + 1)`` -> ``x (B, NB, L)``.

    A block is ``K = L / S`` sub-blocks (K a power of two). Within a sub-block the filter is the
    Toeplitz matrix of the impulse response; across sub-blocks the state is carried by one p x p
    map, in a tree: the block's end state (for the scan across blocks) comes up the tree in
    ``log2 K`` levels and the state entering every sub-block comes back down it, each level one
    matrix product for all its nodes at once.
    """
    batch, nb, hop = u.shape
    p = a.shape[-1] - 1
    k = hop // sub
    zir = _zero_input_response(a, sub)  # (B, NB, S, p): the response to the state entering a sub-block
    impulse = torch.cat([torch.ones_like(zir[..., :1, -1]), zir[..., : sub - 1, -1]], dim=-1)  # (B, NB, S)
    # One copy makes the windows contiguous: matmul takes a slow per-matrix path over overlapping views.
    w = _toeplitz_windows(impulse).contiguous()  # (B, NB, S, S)
    # Row vectors throughout (a sub-block's samples or state along the last axis), so that every
    # slice below is one BLAS can read.
    zir_t = zir.transpose(-1, -2)  # (B, NB, p, S)
    forced = torch.matmul(u.view(batch, nb, k, sub).flip(-1), w.transpose(-1, -2))  # (B, NB, K, S): from zero states
    # Up the tree: ends[l][..., m, :] is the state after sub-blocks m 2^l .. (m + 1) 2^l - 1 from a
    # zero state before them; steps[l] carries a state across 2^l sub-blocks (transposed).
    ends, steps = [forced[..., sub - p :]], [zir_t[..., sub - p :]]
    while ends[-1].shape[-2] > 1:
        ends.append(torch.matmul(ends[-1][..., 0::2, :], steps[-1]) + ends[-1][..., 1::2, :])
        steps.append(torch.matmul(steps[-1], steps[-1]))
    frame_end = _affine_scan(steps[-1].transpose(-1, -2), ends[-1][..., 0, :], scan_levels)  # every block's end state
    states = torch.cat([u.new_zeros(batch, 1, p), frame_end[:, :-1]], dim=1).unsqueeze(-2)  # entering each block
    # Down the tree: the state entering every sub-block, the right children from their parents.
    for level in range(len(ends) - 2, -1, -1):
        right = torch.matmul(states, steps[level]) + ends[level][..., 0::2, :]
        states = torch.stack([states, right], dim=-2).flatten(-3, -2)
    return (forced + torch.matmul(states, zir_t)).reshape(batch, nb, hop)


def _affine_scan(m: torch.Tensor, c: torch.Tensor, levels: int | None = None) -> torch.Tensor:
    """``s_b = m_b s_{b-1} + c_b`` for every b, with ``s_{-1} = 0``: ``m (B, N, p, p)``, ``c (B, N, p)`` -> ``s``.

    ``levels``: a fixed depth for tracing (TorchScript, ONNX), whose graph must not depend on N;
    see ``_fixed_depth_scan``. Otherwise a Blelloch tree: up it, pairs of maps are composed
    (N - 1 products in all, halving each level); down it, the state entering every pair's
    right member comes from the state entering the pair. Row vectors, ``s_b^T = s_{b-1}^T m_b^T
    + c_b^T``, keep every strided slice one BLAS can read.
    """
    if levels is not None or exporting():
        return _fixed_depth_scan(m, c, levels)
    batch, n, p = c.shape
    mt, ct = m.transpose(-1, -2), c.unsqueeze(-2)  # (B, N, p, p), (B, N, 1, p)
    tree = []
    while ct.shape[1] > 1:
        if ct.shape[1] % 2:  # a copy of the last element makes the pairs; it reaches only its own output
            mt, ct = torch.cat([mt, mt[:, -1:]], dim=1), torch.cat([ct, ct[:, -1:]], dim=1)
        tree.append((mt, ct))
        ct = torch.matmul(ct[:, 0::2], mt[:, 1::2]) + ct[:, 1::2]
        if ct.shape[1] > 1:
            mt = torch.matmul(mt[:, 0::2], mt[:, 1::2])
    entry = ct.new_zeros(batch, 1, 1, p)  # the state entering every element of the current level
    for mt_l, ct_l in reversed(tree):
        entry = entry[:, : ct_l.shape[1] // 2]
        left = torch.matmul(entry, mt_l[:, 0::2]) + ct_l[:, 0::2]  # the state after each pair's left member
        entry = torch.stack([entry, left], dim=2).flatten(1, 2)
    if tree:
        mt, ct = tree[0]
    return (torch.matmul(entry, mt) + ct)[:, :n, 0]


def _fixed_depth_scan(m: torch.Tensor, c: torch.Tensor, levels: int | None = None, chunk: int = 8) -> torch.Tensor:
    """``_affine_scan`` in a graph whose shape does not depend on N: a sequential pass within
    chunks of ``chunk`` maps (all chunks at once), then a Hillis-Steele scan over the chunks in
    ``levels`` rounds (``ceil(log2 chunks)`` when None; more rounds change nothing)."""
    batch, n, p = c.shape
    # m_0 acts on s_{-1} = 0, so no output depends on it (the scan never applies a product that
    # reaches back to it), and the padding maps reach only padded outputs: neither needs zeroing.
    pad = (-n) % chunk
    if pad:
        m = torch.cat([m, m[:, -1:].expand(batch, pad, p, p)], dim=1)
    m = m.reshape(batch, -1, chunk, p, p)
    c = F.pad(c, (0, 0, 0, pad)).view(batch, -1, chunk, p)
    local_m, local_c = [m[:, :, 0]], [c[:, :, 0]]  # maps from each chunk's entry state
    for j in range(1, chunk):
        local_c.append(_matvec(m[:, :, j], local_c[-1]) + c[:, :, j])
        local_m.append(torch.matmul(m[:, :, j], local_m[-1]))
    cm, cc = local_m[-1], local_c[-1]  # (B, chunks, p, p), (B, chunks, p): one map per chunk
    chunks = cm.shape[1]
    if levels is None:
        levels = math.ceil(math.log2(chunks)) if chunks > 1 else 0
    offset = 1
    for _ in range(levels):
        c_prev = F.pad(cc, (0, 0, offset, 0))[:, :chunks]
        m_prev = F.pad(cm, (0, 0, 0, 0, offset, 0))[:, :chunks]
        cc = _matvec(cm, c_prev) + cc
        cm = torch.matmul(cm, m_prev)
        offset *= 2
    entry = torch.cat([torch.zeros_like(cc[:, :1]), cc[:, :-1]], dim=1)  # state entering each chunk
    lm, lc = torch.stack(local_m, dim=2), torch.stack(local_c, dim=2)
    out = _matvec(lm, entry[:, :, None, :]) + lc
    return out.reshape(batch, -1, p)[:, :n]
