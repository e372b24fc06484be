"""data-filter: the classic and CLIP lighting scores, prompts, caching, selection, splits, engines and resume."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from data_models import write_photos, write_tiny_clip
from ray_testing import ray_cluster  # noqa: F401  (session fixture)

from core.cli import main
from core.data.filter import ClipScorer, PromptSets, classic_score, load_prompts, noise_level
from core.data.filter_job import Selection, select, split
from core.errors import InvalidParameterError


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("clip") / "clip")


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    write_photos(folder, ("astronaut", "coffee", "chelsea", "camera", "rocket"))
    (folder / "broken.jpg").write_bytes(b"this is not a jpeg")
    return folder


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _photo(name="astronaut", side=128):
    import cv2
    import skimage.data

    image = getattr(skimage.data, name)()[..., :3]
    return cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)


def test_classic_score_prefers_the_photo_to_its_degraded_versions():
    image = _photo()
    values = image / 255.0
    linear = values**2.2
    rng = np.random.default_rng(0)
    versions = {
        "under": (linear * 0.15) ** (1 / 2.2),
        "over": np.clip(linear * 3.0, 0, 1) ** (1 / 2.2),
        "flat": values.mean() + (values - values.mean()) * 0.3,
        "noisy": values + rng.normal(0, 0.06, values.shape),
    }
    original, parts = classic_score(image)
    assert set(parts) == {"exposure", "dynamic_range", "local_contrast", "colour_cast", "noise"}
    for name, version in versions.items():
        score, _ = classic_score(np.rint(np.clip(version, 0, 1) * 255).astype(np.uint8))
        assert score < original, name


def test_noise_level_measures_added_noise_in_flat_regions():
    rng = np.random.default_rng(1)
    flat = np.full((96, 96), 0.5, np.float32)
    assert noise_level(flat) < 1e-6
    assert noise_level(flat + rng.normal(0, 0.04, flat.shape).astype(np.float32)) == pytest.approx(0.04, rel=0.15)


def test_prompts_from_json_and_text_and_bad_files(tmp_path):
    as_json = tmp_path / "p.json"
    as_json.write_text(json.dumps({"good": ["nice light"], "poor": ["dark", "grainy"]}))
    assert load_prompts(as_json) == PromptSets(("nice light",), ("dark", "grainy"))
    as_text = tmp_path / "p.txt"
    as_text.write_text("# mine\ngood: nice light\npoor: dark\n")
    assert load_prompts(as_text) == PromptSets(("nice light",), ("dark",))
    as_text.write_text("good: only good ones\n")
    with pytest.raises(InvalidParameterError, match="no poor prompts"):
        load_prompts(as_text)
    as_text.write_text("great: x\n")
    with pytest.raises(InvalidParameterError, match="line 1 should be 'good: ...'"):
        load_prompts(as_text)
    with pytest.raises(InvalidParameterError, match="does not exist"):
        load_prompts(tmp_path / "missing.json")


def test_clip_score_is_good_minus_poor_similarity_and_embeddings_are_cached(tiny_clip, tmp_path):
    import torch
    from transformers import CLIPModel, CLIPProcessor

    images = [_photo("astronaut", 64), _photo("coffee", 64)]
    prompts = PromptSets(("good light", "studio light"), ("bad light",))
    scorer = ClipScorer(str(tiny_clip), prompts, tmp_path / "cache")
    scored = scorer.score(scorer.embed(images, ["a", "b"]))
    assert scorer.encoded == 2
    # Independent check through the model's own forward pass: logits are scale * cosine similarity.
    model, processor = CLIPModel.from_pretrained(str(tiny_clip)), CLIPProcessor.from_pretrained(str(tiny_clip))
    inputs = processor(text=list(prompts.good + prompts.poor), images=images, return_tensors="pt", padding=True)
    with torch.inference_mode():
        cosine = (model(**inputs).logits_per_image / model.logit_scale.exp()).numpy()
    for (score, parts), row in zip(scored, cosine, strict=True):
        assert score == pytest.approx(row[:2].mean() - row[2:].mean(), abs=1e-5)
        assert parts["prompts"]["bad light"] == pytest.approx(row[2], abs=1e-5)
    # Other prompts: the image embeddings come from the cache.
    other = ClipScorer(str(tiny_clip), PromptSets(("x",), ("y",)), tmp_path / "cache")
    other.embed(images, ["a", "b"])
    assert other.encoded == 0


def test_selection_and_deterministic_splits():
    scores = [{"path": f"p{i}.png", "score": float(i)} for i in range(20)]
    kept = select(scores, Selection(keep=10, threshold=None, splits=(0.8, 0.1, 0.1), seed=3))
    assert [s["path"] for s in kept] == [f"p{i}.png" for i in range(19, 9, -1)]
    assert [s["score"] for s in select(scores, Selection(None, 15.0, (1, 0, 0), 0))] == [19, 18, 17, 16, 15]
    parts = split(kept, Selection(10, None, (0.8, 0.1, 0.1), seed=3))
    assert [len(parts[name]) for name in ("train", "val", "test")] == [8, 1, 1]
    assert sorted(s["path"] for p in parts.values() for s in p) == sorted(s["path"] for s in kept)
    assert split(kept, Selection(10, None, (0.8, 0.1, 0.1), seed=3)) == parts
    assert split(kept, Selection(10, None, (0.8, 0.1, 0.1), seed=4)) != parts


def test_cli_classic_end_to_end_with_a_bad_file_and_resume(photo_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = [
        "data-filter",
        "--images",
        str(photo_dir),
        "--out",
        str(out),
        "--scorer",
        "classic",
        "--keep",
        "3",
        "--quiet",
    ]
    assert main(args) == 0
    scores = _lines(out / "scores.jsonl")
    assert len(scores) == 5 and all({"path", "score", "parts"} <= set(s) for s in scores)
    kept = (out / "kept.txt").read_text().split()
    best = sorted(scores, key=lambda s: -s["score"])[:3]
    assert kept == [s["path"] for s in best]
    unreadable = (out / "unreadable.txt").read_text()
    assert "broken.jpg" in unreadable and "cannot be decoded" in unreadable
    split_paths = []
    for name in ("train", "val", "test"):
        with open(out / f"{name}.csv") as handle:
            split_paths += [row["path"] for row in csv.DictReader(handle)]
    assert sorted(split_paths) == sorted(kept)
    first = (out / "scores.jsonl").read_bytes()
    capsys.readouterr()
    assert main(args) == 0  # resume: nothing is scored again
    assert "0 done, 0 failed, 1 already done (skipped)" in capsys.readouterr().err
    assert (out / "scores.jsonl").read_bytes() == first


def test_cli_clip_local_and_ray_agree_and_other_prompts_reuse_embeddings(
    photo_dir,
    tiny_clip,
    tmp_path,
    ray_cluster,  # noqa: F811
):
    base = ["data-filter", "--images", str(photo_dir), "--clip-model", str(tiny_clip), "--threshold", "-1", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "local")]) == 0
    assert main([*base, "--out", str(tmp_path / "ray"), "--engine", "ray", "--workers", "1"]) == 0
    local, ray = _lines(tmp_path / "local" / "scores.jsonl"), _lines(tmp_path / "ray" / "scores.jsonl")
    assert [s["path"] for s in local] == [s["path"] for s in ray]
    for a, b in zip(local, ray, strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        assert set(a["parts"]["prompts"]) == set(b["parts"]["prompts"])
    assert (tmp_path / "local" / "kept.txt").read_text().count("\n") == 5  # every readable image scores >= -1
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("good: bright\npoor: dim\n")
    assert main([*base, "--out", str(tmp_path / "local"), "--prompts", str(prompts)]) == 0
    last = _lines(tmp_path / "local" / "results.jsonl")[-1]
    assert last["status"] == "done" and last["encoded"] == 0
    assert set(_lines(tmp_path / "local" / "scores.jsonl")[0]["parts"]["prompts"]) == {"bright", "dim"}


def test_cli_usage_errors(photo_dir, tmp_path, capsys):
    out = str(tmp_path / "o")
    assert main(["data-filter", "--images", str(tmp_path / "nope"), "--out", out]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["data-filter", "--images", str(photo_dir), "--out", out, "--splits", "0.5,0.5"]) == 2
    assert "--splits should be three shares" in capsys.readouterr().err
    assert (
        main(
            [
                "data-filter",
                "--images",
                str(photo_dir),
                "--out",
                out,
                "--scorer",
                "clip",
                "--clip-model",
                str(tmp_path / "no-clip"),
            ]
        )
        == 1
    )
    assert "CLIP model folder" in capsys.readouterr().err


def test_image_lists_from_folder_glob_csv_txt_and_file(photo_dir, tmp_path):
    from core.data.sources import list_images

    folder = sorted(list_images(photo_dir))
    assert [p.name for p in folder] == [
        "astronaut.png",
        "broken.jpg",
        "camera.png",
        "chelsea.png",
        "coffee.png",
        "rocket.png",
    ]
    assert [p.name for p in list_images(str(photo_dir / "c*.png"))] == ["camera.png", "chelsea.png", "coffee.png"]
    listing = tmp_path / "list.csv"
    listing.write_text(f"path,score\n{photo_dir / 'coffee.png'},0.5\nrelative.png,0.1\n")
    assert list_images(listing) == [photo_dir / "coffee.png", tmp_path / "relative.png"]
    text = tmp_path / "list.txt"
    text.write_text(f"# kept\n{photo_dir / 'rocket.png'}\n")
    assert list_images(text) == [photo_dir / "rocket.png"]
    assert list_images(photo_dir / "rocket.png") == [photo_dir / "rocket.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidParameterError, match="holds no"):
        list_images(tmp_path / "empty")
    with pytest.raises(InvalidParameterError, match="matches no files"):
        list_images(str(tmp_path / "*.webp"))
