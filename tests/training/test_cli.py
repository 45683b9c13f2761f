import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from training.cli import main

BASE = ["--checkpoint", "random", "--image-size", "128", "--model", "vit_t"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else None), captured.err


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    assert main(["synth", "--out", str(out), "--count", "6", "--size", "96"]) == 0
    return out


def test_end_to_end(tmp_path, capsys, dataset):
    adapter = tmp_path / "adapter.safetensors"
    registry = tmp_path / "registry"
    code, summary, err = run(capsys, "train", *BASE, "--images", dataset / "images", "--masks", dataset / "masks",
                             "--labels", dataset / "labels.txt", "--steps", "3", "--batch-size", "2",
                             "--out", adapter, "--registry", registry, "--project", "7")
    assert code == 0, err
    assert adapter.stat().st_size == summary["adapter_bytes"] and summary["registry_version"] == 1
    assert summary["train"]["steps"] == 3 and summary["validation"]["images"] >= 1
    assert "step" in err  # the progress bar

    code, metrics, err = run(capsys, "evaluate", *BASE, "--images", dataset / "images", "--masks", dataset / "masks",
                             "--labels", dataset / "labels.txt", "--registry", registry, "--project", "7")
    assert code == 0, err
    assert set(metrics) >= {"mean_iou", "mean_dice", "per_class"} and metrics["images"] == 6

    out = tmp_path / "pred"
    code, result, err = run(capsys, "predict", *BASE, "--adapter", adapter, "--input", dataset / "images",
                            "--output", out)
    assert code == 0, err
    assert len(result["predicted"]) == 6 and result["classes"] == {"1": "disc", "2": "square", "3": "triangle"}
    name = result["predicted"][0]["image"].rsplit(".", 1)[0]
    mask, overlay = cv2.imread(str(out / f"{name}_mask.png"), cv2.IMREAD_UNCHANGED), cv2.imread(
        str(out / f"{name}_overlay.png"))
    assert mask.shape == (96, 96) and overlay.shape == (96, 192, 3)

    # publish a second version, then roll back to the first
    assert main(["train", *BASE, "--images", str(dataset / "images"), "--masks", str(dataset / "masks"),
                 "--labels", str(dataset / "labels.txt"), "--steps", "1", "--registry", str(registry),
                 "--project", "7"]) == 0
    capsys.readouterr()
    code, listing, _ = run(capsys, "versions", "--registry", registry, "--project", "7", "--activate", "1")
    assert [(v["version"], v["active"]) for v in listing["versions"]] == [(1, True), (2, False)]


def test_coco_training(tmp_path, capsys, dataset):
    images = sorted((dataset / "images").iterdir())[:3]
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    for i, path in enumerate(images):
        coco["images"].append({"id": i, "file_name": path.name, "width": 96, "height": 96})
        coco["annotations"].append({"id": i, "image_id": i, "category_id": 1, "iscrowd": 0,
                                    "segmentation": [[10, 10, 60, 10, 60, 50, 10, 50]]})
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    code, summary, err = run(capsys, "train", *BASE, "--coco", path, "--images", dataset / "images", "--steps", "1",
                             "--val-fraction", "0.34", "--out", tmp_path / "a.safetensors")
    assert code == 0, err
    assert summary["validation"]["images"] == 1


@pytest.mark.parametrize(("argv", "message"), [
    (["train", *BASE, "--steps", "1", "--out", "x"], "give a dataset"),
    (["evaluate", *BASE, "--coco", "/nonexistent.json"], "give an adapter"),
    (["predict", *BASE, "--adapter", "/nonexistent.safetensors", "--input", ".", "--output", "o"],
     "cannot read adapter"),
    (["train", "--checkpoint", "random", "--coco", "/no/c.json", "--out", "x"], "cannot read COCO file"),
    (["synth", "--out", "/proc/forbidden"], "cannot write"),
])
def test_errors_are_one_line_not_tracebacks(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err and "Traceback" not in err


def test_help_explains_every_option():
    out = subprocess.run([sys.executable, "-m", "training", "train", "--help"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], check=True).stdout
    for option in ["--images", "--masks", "--labels", "--coco", "--coco-val", "--encoder", "--decoder",
                   "--lora-rank", "--steps", "--max-seconds", "--out", "--registry", "--checkpoint"]:
        assert option in out
