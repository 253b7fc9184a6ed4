"""Inference: ``Vocoder`` (mel -> audio, offline) and ``StreamingVocoder`` (mel chunks in, audio
out as soon as it is final), both applying the post-processing chain of ``waveflow.dsp.stages``."""
