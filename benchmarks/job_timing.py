"""One training job end to end, timed by stage: ``python -m benchmarks.job_timing --images 10 --size 1024``.

The real job (``training.jobs.training_job.train_project``: export from a Label Studio stand-in over HTTP,
embeddings, training, evaluation of masks and simulated clicks, publish) with the shipped defaults,
twice on the same labeled images: first with an empty embedding store (every image is encoded
once), then again (everything comes from the store, as after the backend has shown the
images). It runs the job in this process without rq and the debounce; the webhook round trip adds the
debounce (5 s by default) and the queue pickup on top. Records stage times, steps, how often each
image was seen, and this process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import loop_scaling
from benchmarks.machine import describe
from testkit.fake_label_studio import FakeLabelStudio
from testkit.ls_annotations import brush_region, png_bytes
from testkit.standin import TARGET_CLASSES, target_dataset
from training.jobs.training_job import train_project
from training.pipeline.settings import JobSettings

CONFIG = ("<View><Image name=\"image\" value=\"$image\"/><BrushLabels name=\"tag\" toName=\"image\">"
          + "".join(f'<Label value="{name}"/>' for name in TARGET_CLASSES) + "</BrushLabels></View>")


class StageClock:
    """A JobProgress stand-in that notes when each stage began."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.stages: list[tuple[str, float, dict]] = []

    def stage(self, stage: str, message: str, **fields: Any) -> None:
        self.stages.append((stage, round(time.monotonic() - self.start, 2), fields))
        print(f"{self.stages[-1][1]:8.1f} s  {stage}: {message}", file=sys.stderr, flush=True)

    def on_train(self, progress: Any) -> None:
        pass


def run_once(ls: FakeLabelStudio, data_dir: Path, size: int, images: int, full: bool = False) -> dict:
    settings = JobSettings(label_studio_url=ls.url, label_studio_api_key=ls.legacy_token, checkpoint="random",
                           image_size=size, data_dir=str(data_dir), precision="auto")
    clock = StageClock()
    outcome = train_project("1", settings, clock, full=full)  # type: ignore[arg-type]
    seconds = round(time.monotonic() - clock.start, 1)
    steps = outcome["train"]["steps"]
    held_out = outcome["metrics"]["candidate"]["images"] if outcome["metrics"]["evaluated_on"] == "holdout" else 0
    train_images = outcome["export"]["tasks"] - held_out
    encoded = next((f.get("encoded") for s, _, f in clock.stages if s == "training"), None)
    return {"seconds": seconds, "stages": [[s, t] for s, t, _ in clock.stages], "steps": steps,
            "train_seconds": outcome["train"]["seconds"], "stopped_because": outcome["train"]["stopped_because"],
            "train_images": train_images, "held_out_images": held_out,
            "visits_per_image": round(steps * settings.batch_size / max(1, train_images), 1),
            "encoded": encoded, "status": outcome["status"], "clicks_decoder": outcome["metrics"]["clicks"]["decoder"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.job_timing", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=10, help="labeled images (default 10)")
    parser.add_argument("--size", type=int, default=1024, help="model image size in px (default 1024)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--scaling", action="store_true",
                        help="the loop at 10/100/1000 labeled tasks through the real backend and worker "
                             "(benchmarks.loop_scaling): first version, then bursts of 1 and 5 annotations")
    parser.add_argument("--sizes", default=",".join(map(str, loop_scaling.SIZES)), help="with --scaling")
    parser.add_argument("--plot", type=Path, help="with --scaling: write the time-to-version plot here")
    parser.add_argument("--logs", type=Path, help="with --scaling: keep the backends' logs in this folder")
    args = parser.parse_args(argv)
    if args.scaling:
        return _scaling(args)
    dataset = target_dataset(args.images, args.size, seed=5)
    with FakeLabelStudio() as ls, tempfile.TemporaryDirectory() as work:
        ls.add_project(1, CONFIG)
        for k, sample in enumerate(dataset.samples):
            url = ls.add_image(1, f"scene{k}.png", png_bytes(sample.image))
            regions = [brush_region(mask, name) for name, mask in zip(dataset.class_names, sample.masks, strict=True)
                       if mask.any()]
            ls.add_task(1, {"image": url}, [{"result": regions}])
        # The second run retrains from scratch (nothing changed: an ordinary run would have nothing to do).
        runs = [run_once(ls, Path(work), args.size, args.images, full=k == 1) for k in range(2)]
    result = {"images": args.images, "image_size": args.size, "machine": describe(),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
              "first_run": runs[0], "stored_embeddings_run": runs[1]}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


def _scaling(args: argparse.Namespace) -> int:
    sizes = tuple(int(v) for v in args.sizes.split(",") if v)
    result = {"machine": describe(), **loop_scaling.run(sizes, args.size, logs=args.logs)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.plot:
        loop_scaling.plot(result, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
