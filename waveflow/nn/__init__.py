"""The model: invertible flow layers, the WaveNet conditioner, linear prediction from the mel,
the pulse source, WaveGlow itself, its loss and cost, and its checkpoints."""
