"""Ray's overhead on this machine: photos/s in process against Ray with 1 and 2 actors.

One run, side by side: ``Pipeline.predict_many`` over the photos in this process, then
:func:`ecomarine.distributed.identify_dataset` on a local Ray cluster (started here,
``num_cpus`` = this machine's cores) with 1 and 2 actors, each writing Parquet to a
scratch folder. Ray's times include starting the actors and loading the pipeline in
each (what a user pays per run), and reading the photos in tasks. On 2 cores no speed-up
is expected; the figure is the overhead.

Writes ``benchmarks/results/ray_scale.json`` and ``ray_scale.md``.

Usage: python benchmarks/ray_scale.py --data ../shared/data [--photos 800]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from ecomarine import Pipeline
from ecomarine.distributed import identify_dataset, ray_init


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--photos", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    files = sorted((args.data / "gate").rglob("*.jpg"))
    photos = [str(files[i % len(files)].resolve()) for i in range(args.photos)]
    rates: dict[str, float] = {}
    startup: dict[str, float] = {}

    pipe = Pipeline.from_pretrained("embedded", device="cpu")
    list(pipe.predict_many(photos[:64], batch_size=args.batch_size))  # warm-up
    start = time.perf_counter()
    n = sum(1 for _ in pipe.predict_many(photos, batch_size=args.batch_size))
    rates["in_process_predict_many"] = n / (time.perf_counter() - start)
    del pipe

    ray_init(num_cpus=os.cpu_count() or 1)
    scratch = Path(tempfile.mkdtemp(prefix="ecomarine-ray-"))
    try:
        small = photos[: 4 * args.batch_size]
        for actors in (1, 2):
            seconds = {}
            for name, some in (("small", small), ("full", photos)):
                start = time.perf_counter()
                identify_dataset(
                    some, "embedded", output=scratch / f"{actors}-{name}", num_actors=actors,
                    batch_size=args.batch_size, skip_done=False,
                )  # fmt: skip
                seconds[name] = time.perf_counter() - start
            label = f"ray_{actors}_actor{'s' if actors > 1 else ''}"
            rates[label] = len(photos) / seconds["full"]
            # The cost per photo once the actors run: the full run minus a small one, which
            # pays the same start-up (actors, model loading, first passes).
            rates[f"{label}_after_startup"] = (len(photos) - len(small)) / (
                seconds["full"] - seconds["small"]
            )
            startup[label] = round(
                seconds["small"] - len(small) / rates[f"{label}_after_startup"], 1
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    base = rates["in_process_predict_many"]
    result = {
        "command": f"python benchmarks/ray_scale.py --data ../shared/data --photos {args.photos}",
        "machine": f"{os.cpu_count()} CPU cores",
        "photos": args.photos,
        "batch_size": args.batch_size,
        "photos_per_s": {k: round(v, 2) for k, v in rates.items()},
        "vs_in_process": {k: round(v / base, 2) for k, v in rates.items()},
        "startup_seconds_estimate": startup,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "ray_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"From `{result['command']}` on {result['machine']} (one run). Ray's plain rows "
        "include starting its actors and loading the pipeline in each; the *after startup* "
        f"rows are the full run minus a run of {4 * args.batch_size} photos, which pays the "
        f"same start-up (estimated {', '.join(f'{v} s' for v in startup.values())}).",
        "",
        "| run | photos/s | vs in process |",
        "| --- | --- | --- |",
        *[
            f"| {k.replace('_', ' ')} | {v} | {result['vs_in_process'][k]}x |"
            for k, v in result["photos_per_s"].items()
        ],
    ]
    (args.results / "ray_scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
