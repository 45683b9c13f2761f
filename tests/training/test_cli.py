import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from training.cli import main
from training.data.synthetic import SYNTHETIC_CLASSES
from training.drawing import PANEL_GAP, label_height, overlay
from training.model.config import AdapterConfig
from training.model.loading import new_adapter_model
from training.pipeline.local_dataset import dataset_task_id
from training.registry import open_registry

BASE = ["--checkpoint", "random", "--image-size", "128", "--model", "vit_t"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else None), captured.err


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    assert main(["synth", "--out", str(out), "--count", "12", "--size", "96"]) == 0
    return out


def test_end_to_end(tmp_path, capsys, dataset):
    adapter = tmp_path / "adapter.safetensors"
    registry = tmp_path / "registry"
    train = ["train", *BASE, "--images", dataset / "images", "--masks", dataset / "masks", "--labels",
             dataset / "labels.txt", "--steps", "3", "--batch-size", "2", "--registry", registry, "--project", "7",
             "--data-dir", tmp_path / "data", "--holdout-every", "2"]
    code, summary, err = run(capsys, *train, "--out", adapter)
    assert code == 0, err
    assert summary["status"] == "promoted" and summary["version"] == 1 and summary["plan"]["kind"] == "full"
    assert adapter.stat().st_size == summary["adapter_bytes"] and summary["train"]["steps"] == 3
    assert "step" in err and "publishing" in err  # the progress bar and the pipeline's stages

    code, metrics, err = run(capsys, "evaluate", *BASE, "--images", dataset / "images", "--masks", dataset / "masks",
                             "--labels", dataset / "labels.txt", "--registry", registry, "--project", "7")
    assert code == 0, err
    assert set(metrics) >= {"mean_iou", "mean_dice", "per_class"} and metrics["images"] == 12

    out = tmp_path / "pred"
    code, result, err = run(capsys, "predict", *BASE, "--adapter", adapter, "--input", dataset / "images",
                            "--output", out)
    assert code == 0, err
    assert len(result["predicted"]) == 12 and result["classes"] == {"1": "disc", "2": "square", "3": "triangle"}
    name = result["predicted"][0]["image"].rsplit(".", 1)[0]
    mask, overlay = cv2.imread(str(out / f"{name}_mask.png"), cv2.IMREAD_UNCHANGED), cv2.imread(
        str(out / f"{name}_overlay.png"))
    assert mask.shape == (96, 96) and overlay.shape == (96, 192, 3)

    # The same data again: nothing to train, as in the service.
    code, summary, err = run(capsys, *train)
    assert code == 0, err
    assert summary["status"] == "up_to_date" and summary["active_version"] == 1

    # One redrawn mask of a training image: a warm-started incremental run on it, judged against version 1
    # on the same held-out images.
    held = set(open_registry(str(registry)).versions("7")[0].metadata["data"]["holdout_ids"])
    assert held, "the gate needs held-out images"
    redrawn = next(p for p in sorted((dataset / "masks").iterdir()) if dataset_task_id(p.stem) not in held)
    ids = cv2.imread(str(redrawn), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(redrawn), ids[::-1].copy())
    code, summary, err = run(capsys, *train)
    assert code == 0, err
    assert summary["version"] == 2 and summary["plan"] == {**summary["plan"], "kind": "incremental", "new_tasks": 1}
    assert summary["metrics"]["gate"] is not None and "held-out mean IoU" in summary["decision"]
    assert summary["metrics"]["active_scored"]["computed"] == 0  # version 1's scores were read back

    code, summary, err = run(capsys, *train, "--full")
    assert code == 0, err
    assert summary["version"] == 3 and summary["plan"]["kind"] == "full"

    code, listing, _ = run(capsys, "versions", "--registry", registry, "--project", "7", "--activate", "1")
    assert [(v["version"], v["active"]) for v in listing["versions"]][0] == (1, True)


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
                             "--coco-val", path, "--out", tmp_path / "a.safetensors", "--data-dir", tmp_path / "d")
    assert code == 0, err
    assert summary["status"] == "promoted" and summary["validation"]["images"] == 3


@pytest.mark.parametrize("kind", ["decoder", "encoder"])
def test_evaluate_draws_click_pictures_and_predict_takes_the_same_opacity(tmp_path, capsys, random_vit_t, kind):
    data = tmp_path / "synth"
    assert main(["synth", "--out", str(data), "--count", "3", "--size", "64"]) == 0
    capsys.readouterr()
    adapter = tmp_path / "adapter.safetensors"
    model = new_adapter_model(random_vit_t, 64, SYNTHETIC_CLASSES, AdapterConfig.for_kind(kind))
    adapter.write_bytes(model.to_bytes())
    base = ["--checkpoint", "random", "--image-size", "64", "--model", "vit_t", "--adapter", adapter]
    dataset = ["--images", data / "images", "--masks", data / "masks", "--labels", data / "labels.txt"]
    code, metrics, err = run(capsys, "evaluate", *base, *dataset, "--comparisons", tmp_path / "pictures",
                             "--comparison-tasks", "2", "--comparison-clicks", "2", "--opacity", "0.3")
    assert code == 0, err
    assert metrics["images"] == 3 and len(metrics["comparisons"]) == 2
    for entry in metrics["comparisons"]:
        assert Path(entry["picture"]).parent == tmp_path / "pictures" and entry["picture"].endswith("-2clicks.png")
        assert cv2.imread(entry["picture"]).shape == (label_height(64) + 64, 4 * 64 + 3 * PANEL_GAP, 3)
        assert entry["decoders"]["adapter"]["clicks"] <= 2
        # Only the decoder kind keeps SAM's decoder beside its own; the encoder kind's panel says it has none.
        assert (entry["decoders"]["SAM"] is None) == (kind == "encoder")

    code, result, err = run(capsys, "predict", *base, "--input", data / "images", "--output", tmp_path / "pred",
                            "--opacity", "0.3")
    assert code == 0, err
    name = result["predicted"][0]["image"].rsplit(".", 1)[0]
    image = cv2.cvtColor(cv2.imread(str(data / "images" / f"{name}.png")), cv2.COLOR_BGR2RGB)
    label_map = cv2.imread(str(tmp_path / "pred" / f"{name}_mask.png"), cv2.IMREAD_UNCHANGED)
    side_by_side = cv2.cvtColor(cv2.imread(str(tmp_path / "pred" / f"{name}_overlay.png")), cv2.COLOR_BGR2RGB)
    assert np.array_equal(side_by_side, np.concatenate([image, overlay(image, label_map, 0.3)], axis=1))
    with pytest.raises(SystemExit):
        main(["evaluate", *map(str, base), *map(str, dataset), "--opacity", "1.5"])
    assert "from 0 to 1" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["train", *BASE, "--steps", "1", "--out", "x"], "give a dataset"),
    (["train", *BASE, "--coco", "c.json"], "nowhere to save the adapter"),
    (["train", *BASE, "--coco", "/no/c.json", "--out", "x", "--adapter-kind", "decoder", "--encoder", "lora"],
     "contradicts adapter kind 'decoder'"),
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
    for option in ["--images", "--masks", "--labels", "--coco", "--coco-val", "--adapter-kind", "--encoder",
                   "--decoder", "--lora-rank", "--steps", "--full", "--holdout-every", "--tolerance", "--max-seconds",
                   "--out", "--registry", "--data-dir", "--checkpoint"]:
        assert option in out
