"""Other formats and other projects' models: NVIDIA's checkpoints, TorchScript and ONNX
export, safetensors pretrained folders, and the registry of models by name."""
