"""Corpus preparation: the split rules, clip checks, filelists and the batch stream."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from waveflow.train.data import Clip, DataError, SegmentBatches, prepare, read_filelist, split_ids

RATE = 22050


def _ljspeech_ids() -> list[str]:
    """13,100 IDs shaped like LJSpeech 1.1's: LJ050 has 278 clips, the rest fill LJ001-LJ049."""
    ids = [f"LJ{c:03d}-{i:04d}" for c in range(1, 50) for i in range(1, 263)][: 13100 - 278]
    return ids + [f"LJ050-{i:04d}" for i in range(1, 279)]


def test_full_corpus_split_is_the_ljspeech_recipe_split():
    ids = _ljspeech_ids()
    rng = np.random.default_rng(0)
    split, rule = split_ids(list(rng.permutation(ids)))  # order in metadata must not matter
    assert split["test"][0] == "LJ050-0029" and split["test"][-1] == "LJ050-0278"
    assert len(split["test"]) == 250 and len(split["dev"]) == 250 and len(split["train"]) == 12600
    assert split["dev"][-1] == "LJ050-0028" and split["train"][-1] < split["dev"][0]
    assert sorted(split["train"] + split["dev"] + split["test"]) == sorted(ids)
    assert "last 250" in rule


def test_small_corpus_split_is_proportional_with_one_clip_at_least():
    ids = [f"LJ001-{i:04d}" for i in range(1, 33)]
    split, rule = split_ids(ids)
    assert (len(split["train"]), len(split["dev"]), len(split["test"])) == (30, 1, 1)
    assert split["test"] == ["LJ001-0032"] and split["dev"] == ["LJ001-0031"]
    assert "too small" in rule
    with pytest.raises(DataError, match="need at least 3"):
        split_ids(["LJ001-0001", "LJ001-0002"])


def _corpus(tmp_path, clips: dict[str, tuple[np.ndarray, int]], extra_ids=()) -> object:
    corpus = tmp_path / "corpus"
    (corpus / "wavs").mkdir(parents=True)
    for clip_id, (audio, rate) in clips.items():
        sf.write(corpus / "wavs" / f"{clip_id}.wav", audio, rate, subtype="PCM_16")
    ids = [*clips, *extra_ids]
    (corpus / "metadata.csv").write_text("".join(f"{i}|text {i}|text {i}\n" for i in ids))
    return corpus


def test_prepare_checks_every_clip_and_says_why_it_skips(tmp_path):
    rng = np.random.default_rng(0)
    good = {f"LJ001-{i:04d}": (rng.uniform(-0.3, 0.3, RATE // 4), RATE) for i in range(1, 6)}
    bad = {
        "LJ002-0001": (rng.uniform(-0.3, 0.3, (RATE // 4, 2)), RATE),
        "LJ002-0002": (rng.uniform(-0.3, 0.3, 4000), 16000),
        "LJ002-0003": (np.zeros(RATE // 4), RATE),
    }
    corpus = _corpus(tmp_path, {**good, **bad}, extra_ids=["LJ002-0004", "LJ002-0005"])
    (corpus / "wavs" / "LJ002-0005.wav").write_bytes(b"RIFF not really a wav")
    summary = prepare(corpus, tmp_path / "prep", mel_cache=True, progress=False)
    assert summary["skipped"]["LJ002-0001"] == "2 channels, expected mono"
    assert summary["skipped"]["LJ002-0002"] == "16000 Hz, expected 22050"
    assert summary["skipped"]["LJ002-0003"] == "silent"
    assert summary["skipped"]["LJ002-0004"] == "missing"
    assert summary["skipped"]["LJ002-0005"].startswith("unreadable")
    assert summary["usable"] == 5 and summary["split"] == {"train": 3, "dev": 1, "test": 1}
    train = read_filelist(tmp_path / "prep" / "train.txt")
    assert [c.id for c in train] == ["LJ001-0001", "LJ001-0002", "LJ001-0003"]
    assert all(c.samples == RATE // 4 for c in train)
    mel = np.load(tmp_path / "prep" / "mels" / "LJ001-0001.npy")
    assert mel.shape == (80, 1 + (RATE // 4) // 256)


@pytest.mark.parametrize(
    "layout, match",
    [("no_metadata", "no metadata.csv"), ("no_wavs", r"no wavs/ folder"), ("missing", "no such folder")],
)
def test_prepare_refuses_a_folder_that_is_not_a_corpus(tmp_path, layout, match):
    corpus = tmp_path / "c"
    if layout != "missing":
        corpus.mkdir()
        if layout == "no_wavs":
            (corpus / "metadata.csv").write_text("LJ001-0001|a|a\n")
        else:
            (corpus / "wavs").mkdir()
    with pytest.raises(DataError, match=match):
        prepare(corpus, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def _clips(tmp_path, lengths: list[int]) -> list[Clip]:
    clips = []
    for i, n in enumerate(lengths):
        path = tmp_path / f"c{i}.wav"
        sf.write(path, np.full(n, (i + 1) / 100, dtype=np.float32), RATE, subtype="FLOAT")
        clips.append(Clip(f"c{i}", str(path), n))
    return clips


def test_batches_are_a_function_of_the_step(tmp_path):
    clips = _clips(tmp_path, [3000, 5000, 700, 4000, 2500, 6000])
    a = SegmentBatches(clips, 1024, 2, seed=3)
    b = SegmentBatches(clips, 1024, 2, seed=3)
    assert a.short_clips == 1
    for step in (0, 5, 2, 5):
        assert np.array_equal(a[step].numpy(), b[step].numpy())
    assert not np.array_equal(a[0].numpy(), SegmentBatches(clips, 1024, 2, seed=4)[0].numpy())
    # the short clip comes back zero-padded to a whole segment
    step = next(s for s in range(20) if 2 in a.clip_indices(s))
    row = a[step][a.clip_indices(step).index(2)].numpy()
    assert np.allclose(row[:700], 0.03, atol=1e-6) and np.all(row[700:] == 0)


def test_ranks_share_no_clip_within_an_epoch_and_together_equal_one_process(tmp_path):
    clips = _clips(tmp_path, [3000] * 8)
    one = SegmentBatches(clips, 1024, 4, seed=1)
    ranks = [SegmentBatches(clips, 1024, 2, seed=1, rank=r, world_size=2) for r in range(2)]
    for step in range(2):  # 2 steps x 2 ranks x 2 clips = one epoch of 8 clips
        mine = [r.clip_indices(step) for r in ranks]
        assert not set(mine[0]) & set(mine[1])
        # together, the ranks' rows are exactly the one-process batch (interleaved by rank)
        merged = np.stack([ranks[p % 2][step][p // 2].numpy() for p in range(4)])
        assert np.array_equal(merged, one[step].numpy())
    epoch = [i for step in range(2) for r in ranks for i in r.clip_indices(step)]
    assert sorted(epoch) == list(range(8))


def test_a_corpus_with_bad_clips_is_prepared_with_every_skip_explained(tmp_path, mini_corpus, capsys):
    import json
    import shutil

    import soundfile as sf

    from waveflow.cli import main

    corpus = tmp_path / "corpus"
    shutil.copytree(mini_corpus, corpus)
    wavs = corpus / "wavs"
    tone = np.sin(np.arange(22050) / 10).astype(np.float32) * 0.3
    sf.write(wavs / "LJ999-0001.wav", np.stack([tone, tone], 1), 22050)  # stereo
    sf.write(wavs / "LJ999-0002.wav", tone, 44100)  # another rate
    sf.write(wavs / "LJ999-0003.wav", tone, 22050, subtype="PCM_U8")  # 8-bit: usable
    sf.write(wavs / "LJ999-0004.wav", np.zeros(0, np.float32), 22050)  # zero-length
    (wavs / "LJ999-0005.wav").write_bytes(np.random.default_rng(0).bytes(5000))  # not audio
    lines = [f"LJ999-000{i}|text|text" for i in range(1, 7)] + ["LJ001-0001|again|again"]  # 6: no wav
    with open(corpus / "metadata.csv", "a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    assert main(["prepare", "--data", str(corpus), "--out", str(tmp_path / "prep"), "--no-progress"]) == 0
    skipped = json.loads((tmp_path / "prep" / "prepared.json").read_text())["skipped"]
    assert skipped["LJ999-0001"] == "2 channels, expected mono"
    assert skipped["LJ999-0002"] == "44100 Hz, expected 22050"
    assert "LJ999-0003" not in skipped  # 8-bit PCM reads as float
    assert skipped["LJ999-0004"] == "silent"
    assert skipped["LJ999-0005"].startswith("unreadable")
    assert skipped["LJ999-0006"] == "missing"
    assert skipped["LJ001-0001 (again)"].startswith("duplicate id")
    capsys.readouterr()
    for bad, needle in ((b"../../x|t|t\n", "plain file id"), (b"LJ001-0001|\xff\xfe|t\n", "not UTF-8")):
        (corpus / "metadata.csv").write_bytes(bad)
        assert main(["prepare", "--data", str(corpus), "--out", str(tmp_path / "p2")]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err


def test_every_epoch_is_a_new_shuffle_of_every_clip(tmp_path):
    """Each epoch visits every clip once, in an order of its own (not the first epoch's again)."""
    clips = [Clip(f"c{i}", str(tmp_path / f"c{i}.wav"), 3000) for i in range(12)]
    batches = SegmentBatches(clips, 1024, 3, seed=5)  # 4 steps per epoch
    epochs = [[i for step in range(4 * e, 4 * e + 4) for i in batches.clip_indices(step)] for e in range(4)]
    for order in epochs:
        assert sorted(order) == list(range(12))
    assert len({tuple(order) for order in epochs}) == 4, epochs
    assert epochs[0] != list(range(12))  # shuffled, not the list order
    # and the same seed gives the same epochs (a resumed run sees the same batches)
    again = SegmentBatches(clips, 1024, 3, seed=5)
    assert [i for step in (13, 14) for i in again.clip_indices(step)] == epochs[3][3:9]


def test_each_row_and_each_visit_of_a_clip_draws_its_own_segment(tmp_path):
    """Segment offsets come from (seed, position in the clip stream): the rows of one batch, and
    one clip's visits in different epochs, start at different places."""
    clips = []
    for i in range(4):
        path = tmp_path / f"ramp{i}.wav"
        sf.write(path, np.arange(30000, dtype=np.float32) / 2**15, RATE, subtype="FLOAT")  # sample k holds k
        clips.append(Clip(f"r{i}", str(path), 30000))
    batches = SegmentBatches(clips, 1024, 4, seed=2)  # one epoch per step

    def offsets(step: int) -> dict[int, int]:
        rows = batches[step].numpy()
        return {c: round(float(row[0]) * 2**15) for c, row in zip(batches.clip_indices(step), rows, strict=True)}

    first, second = offsets(0), offsets(1)
    assert len(set(first.values())) == 4, first  # four rows, four offsets
    assert all(first[c] != second[c] for c in first), (first, second)  # a clip's next visit elsewhere
    row = batches[0][0].numpy() * 2**15
    np.testing.assert_array_equal(row, row[0] + np.arange(1024))  # a contiguous segment
