"""Identify sightings: several photos of one animal, identified together.

Each folder under ``belugas/sightings/`` holds the photos of one encounter (one whale in
one sighting, as the field team recorded it). The photos are identified together against
a catalogue of the 12 example belugas, and one record per sighting is written.

Run: python examples/identify_sightings.py [RESULTS.jsonl]
"""

import csv
import sys
from pathlib import Path

from ecomarine import Pipeline
from ecomarine.results import ResultsWriter

HERE = Path(__file__).resolve().parent
belugas = HERE / "belugas"
out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("sightings.jsonl")

pipe = Pipeline.from_pretrained("embedded")
with (belugas / "gallery.csv").open() as fh:
    rows = list(csv.DictReader(fh))
pipe.enroll(
    [belugas / r["image"] for r in rows], [r["individual_id"] for r in rows], species="beluga"
)

# One sighting per folder; the folder name starts with the whale's id (the truth).
sightings = {
    folder.name: sorted(folder.glob("*.jpg"))
    for folder in sorted((belugas / "sightings").iterdir())
    if folder.is_dir()
}
print(f"sighting policy: {pipe.sighting_aggregation}, threshold {pipe.sighting_threshold}")
with ResultsWriter(out, sightings=True) as writer:
    for s in pipe.predict_sightings(sightings):
        writer.write(s)
        best = s.candidates[0]
        verdict = "new individual?" if s.is_new_individual else s.individual_id
        photo_best = [p.candidates[0].individual_id for p in s.photos]
        print(
            f"{s.sighting_id}: {len(s.accepted_photos)} photos -> best {best.individual_id} "
            f"({best.score:.3f}), {verdict}; photo by photo: {', '.join(photo_best)}"
        )
print(f"wrote {out}")
