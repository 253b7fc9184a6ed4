"""The console entry point, run as a user would: in a subprocess."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "waveflow", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def test_check_round_trips_a_shared_clip(clip):
    result = run_cli("check", str(clip), "--seconds", "1.5")
    assert result.returncode == 0, result.stderr
    assert "mel (80, 130)" in result.stdout
    error = float(result.stdout.split("max |error| = ")[1].split()[0])
    assert error < 1e-4


def test_check_on_a_missing_file_is_one_line_without_traceback(tmp_path):
    result = run_cli("check", str(tmp_path / "nope.wav"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope.wav" in lines[0] and "cannot read audio" in lines[0]


def test_presets_lists_parameter_counts():
    result = run_cli("presets")
    assert result.returncode == 0
    assert "| `default` | 12 | 8 | 8 x 256 | 1024 | 87.9 M |" in result.stdout


def test_version_and_info_of_the_bundled_model():
    from waveflow import __version__

    assert run_cli("--version").stdout.strip() == f"waveflow {__version__}"
    result = run_cli("info")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in (
        "preset 'realtime'",
        "linear prediction order 24",
        "mel: 80 bands, 22050 Hz",
        "inference sigma 0.7, harmonic excitation 1, harmonic post-filter 0.5",
        "a pulse source, pitch tracker template",
        "fine-tuned from ljspeech_mini.pt (step 9000)",
        "training: step",
        "quality (waveflow, 2 clips",
    ):
        assert expected in out, out


def test_info_of_a_training_checkpoint_and_of_a_bad_file(tmp_path):
    import torch
    from test_vocoder import write_tiny_checkpoint

    write_tiny_checkpoint(tmp_path / "tiny.pt")
    out = run_cli("info", str(tmp_path / "tiny.pt")).stdout
    assert "preset 'tiny'" in out and "no linear prediction" in out
    torch.save({"x": 1}, tmp_path / "other.pt")
    bad = run_cli("info", str(tmp_path / "other.pt"))
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
    assert "not a waveflow checkpoint" in bad.stderr


def test_the_cli_leaves_the_root_logger_alone():
    import logging

    from waveflow.cli.main import configure_logging

    root_handlers = list(logging.getLogger().handlers)
    configure_logging(False)
    configure_logging(True)  # idempotent: one handler
    logger = logging.getLogger("waveflow")
    assert logging.getLogger().handlers == root_handlers
    assert sum(getattr(h, "_waveflow_cli", False) for h in logger.handlers) == 1
    assert logger.level == logging.DEBUG


def test_every_subcommand_has_a_description_and_every_option_a_help_text():
    from waveflow.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    missing = []
    for name, sub in commands.items():
        if not sub.description:
            missing.append(f"{name}: no description")
        for action in sub._actions:
            if action.help is None and action.dest != "help":
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}: no help")
    assert len(commands) >= 10 and not missing, missing
