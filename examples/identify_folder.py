"""Identify a folder of photos against a small catalogue, offline.

Builds a gallery from the bundled example belugas, then identifies the held-out photos
and a non-cetacean photo, and writes the results as JSON lines.

Run: python examples/identify_folder.py [OUTPUT.jsonl]
"""

import csv
import json
import sys
from pathlib import Path

from ecomarine import Pipeline

HERE = Path(__file__).resolve().parent
belugas = HERE / "belugas"

pipe = Pipeline.from_pretrained("embedded")  # bundled weights: no download

# 1. A catalogue of known individuals: image,individual_id,... rows.
with (belugas / "gallery.csv").open() as fh:
    rows = list(csv.DictReader(fh))
pipe.enroll(
    [belugas / r["image"] for r in rows],
    [r["individual_id"] for r in rows],
    species="beluga",
)

# 2. Photos to identify: a folder, plus one photo that is not a cetacean.
photos = sorted((belugas / "queries").glob("*.jpg")) + sorted((HERE / "not_cetacean").glob("*.jpg"))
out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("results.jsonl")
with out.open("w") as fh:
    for pred in pipe.predict_many(photos, batch_size=16):
        if pred.rejection_reason:
            verdict = f"rejected ({pred.rejection_reason})"
        elif pred.is_new_individual:
            verdict = "new individual"
        else:
            verdict = f"{pred.individual_id} (score {pred.candidates[0].score:.2f})"
        print(f"{Path(pred.source or '').name}: {verdict}")
        fh.write(json.dumps(pred.to_dict()) + "\n")
print(f"wrote {out}")
