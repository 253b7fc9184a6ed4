"""scripts/benchmark.py --peer: a clear exit for an unknown name or a folder that is not the
expected checkout, and the loaders' patches, on stand-in checkouts (CI has no peer checkouts)."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest
import torch
from conftest import REPO

SCRIPT = REPO / "scripts" / "benchmark.py"

# Stand-ins for the files the loaders read, keeping what the loaders patch or rely on: utils.py's
# matplotlib imports at the top (here of a module that does not exist, so that only dropping the
# lines lets it load), models.py's `from utils import`, the generator's print, vocos's package
# __init__ (which must not run) and heads.py's torchaudio import.
HIFIGAN = {
    "utils.py": "import matplotlib\nimport matplotlib.no_such_module as plt\nmatplotlib.use('Agg')\n\n"
    "def get_padding(kernel_size, dilation=1):\n    return (kernel_size * dilation - dilation) // 2\n",
    "models.py": "import torch\nfrom utils import get_padding\n\n"
    "class Generator(torch.nn.Module):\n"
    "    def __init__(self, h):\n"
    "        super().__init__()\n"
    "        self.up = torch.nn.ConvTranspose1d(80, 1, h.hop_size, h.hop_size, padding=get_padding(1))\n"
    "    def forward(self, x):\n        return self.up(x)\n"
    "    def remove_weight_norm(self):\n        print('Removing weight norm...')\n",
    **{f"config_v{v}.json": '{"hop_size": 256}' for v in (1, 2, 3)},
}
VOCOS = {
    "vocos/__init__.py": "raise ImportError('the pretrained wrapper: huggingface_hub, encodec')\n",
    "vocos/modules.py": "import torch\n",
    "vocos/spectral_ops.py": "import torch\n",
    "vocos/models.py": "import torch\nfrom vocos.modules import torch as _\n\n"
    "class VocosBackbone(torch.nn.Module):\n"
    "    def __init__(self, input_channels, dim, intermediate_dim, num_layers):\n"
    "        super().__init__()\n        self.embed = torch.nn.Conv1d(input_channels, dim, 1)\n"
    "    def forward(self, x):\n        return self.embed(x).transpose(1, 2)\n",
    "vocos/heads.py": "import torch\nfrom torchaudio.functional.functional import _hz_to_mel, _mel_to_hz\n\n"
    "class ISTFTHead(torch.nn.Module):\n"
    "    def __init__(self, dim, n_fft, hop_length, padding='same'):\n"
    "        super().__init__()\n        self.out = torch.nn.Linear(dim, hop_length)\n"
    "    def forward(self, x):\n        return self.out(x).flatten(1)\n",
}


@pytest.fixture(scope="module")
def benchmark():
    sys.path.insert(0, str(SCRIPT.parent))  # the script imports benchlib from its folder
    try:
        spec = importlib.util.spec_from_file_location("benchmark_script", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    yield module
    for name in [m for m in sys.modules if m.split(".")[0] in ("vocos", "hifigan_models")]:
        del sys.modules[name]


def exit_message(benchmark, *peers: str) -> str:
    argv = [arg for peer in peers for arg in ("--peer", peer)]
    with pytest.raises(SystemExit) as exited:  # the thread count stays the test session's
        benchmark.main([*argv, "--threads", str(torch.get_num_threads())])
    return str(exited.value.code)


def write(folder, files: dict[str, str]):
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def test_an_unknown_peer_exits_listing_the_known_ones(benchmark, tmp_path):
    message = exit_message(benchmark, f"melgan={tmp_path}")
    assert "unknown peer 'melgan'" in message
    assert "hifigan=DIR (a checkout of github.com/jik876/hifi-gan)" in message
    assert "vocos=DIR (a checkout of github.com/gemelo-ai/vocos)" in message
    assert "expected hifigan=DIR" in exit_message(benchmark, "hifigan")


def test_a_folder_that_is_not_the_peers_checkout_exits_naming_the_repository(benchmark, tmp_path):
    message = exit_message(benchmark, f"hifigan={tmp_path}")
    assert "expected a checkout of github.com/jik876/hifi-gan" in message and "models.py" in message
    write(tmp_path, {"models.py": ""})  # a partial checkout names what is missing, not what is there
    message = exit_message(benchmark, f"vocos={tmp_path}", f"hifigan={tmp_path}")
    assert "expected a checkout of github.com/gemelo-ai/vocos" in message and "vocos/heads.py" in message
    assert "models.py," not in exit_message(benchmark, f"hifigan={tmp_path}")


def test_the_loaders_patch_a_copy_and_leave_the_checkout_as_it_was(benchmark, tmp_path, capsys, monkeypatch):
    hifigan = write(tmp_path / "hifi-gan", HIFIGAN)
    vocos = write(tmp_path / "vocos", VOCOS)
    utils = types.ModuleType("utils")  # another package's `utils`, imported before
    monkeypatch.setitem(sys.modules, "utils", utils)
    systems = benchmark.load_peer(f"hifigan={hifigan}") | benchmark.load_peer(f"vocos={vocos}")
    assert list(systems) == ["HiFi-GAN V1", "HiFi-GAN V2", "HiFi-GAN V3", "Vocos (80 mels, ISTFT head)"]
    mel = torch.randn(1, 80, 10)
    assert all(model(mel).shape[-1] == 2560 for model in systems.values())
    assert sys.modules["utils"] is utils  # the copy's `utils` was there only while models.py ran
    assert capsys.readouterr().out == ""  # stdout carries the table: the generator's print is swallowed
    for checkout, files in ((hifigan, HIFIGAN), (vocos, VOCOS)):
        assert {str(p.relative_to(checkout)) for p in checkout.rglob("*") if p.is_file()} == set(files)
        assert all((checkout / name).read_text() == text for name, text in files.items())
