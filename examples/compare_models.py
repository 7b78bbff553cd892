"""Compare identifiers on your own catalogue, then use the one you choose in the pipeline.

Offline, this compares the two bundled models; with internet access, add Hub models
such as "hf-hub:BVRA/MegaDescriptor-T-224" or "hf-hub:conservationxlabs/miewid-msv3"
(``ecomarine models`` lists them, with their licences).

Run: python examples/compare_models.py [OUT_DIR]
"""

import json
import sys
from pathlib import Path

from ecomarine import Pipeline
from ecomarine.catalog import read_catalog_csv
from ecomarine.evaluation import compare_models, comparison_markdown

HERE = Path(__file__).resolve().parent
belugas = HERE / "belugas"
out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("compare-out")

gallery = read_catalog_csv(belugas / "gallery.csv", belugas)
queries = read_catalog_csv(belugas / "queries.csv", belugas)

# Every model is evaluated on the same photos, with its threshold calibrated the same way
# (leave-encounter-out on the catalogue: most published models ship no threshold).
rows = compare_models(["embedded", "embedded-imagenet"], gallery, queries)
print(comparison_markdown(rows))

# Use the best one: a catalogue built with it, calibrated on itself, saved with it.
best = max(rows, key=lambda r: r.report.map5)
pipe = Pipeline.from_pretrained(best.source, gate=False)
pipe.enroll(
    [s.path for s in gallery],
    [s.individual_id for s in gallery],
    "beluga",
    metadata=[s.metadata() for s in gallery],
)
assert pipe.gallery is not None
report = pipe.gallery.calibrate_new_individual()
pipe.gallery.save(out / "gallery")
prediction = pipe.predict(queries[0].path)
guess = prediction.candidates[0].individual_id if prediction.candidates else "none"
verdict = prediction.individual_id or "new individual"
print(f"{best.source}: threshold {report.threshold:.3f}; first query: {verdict} (best {guess})")
(out / "comparison.json").write_text(json.dumps([r.to_dict() for r in rows], indent=1))
