"""From survey photos to a Darwin Core Archive ready for the GBIF IPT.

Run: python examples/export_gbif.py [ARCHIVE.zip]
"""

import csv
import sys
from pathlib import Path

from ecomarine import Pipeline
from ecomarine.darwin_core import DatasetMetadata, write_dwca

HERE = Path(__file__).resolve().parent
belugas = HERE / "belugas"
out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("sightings-dwca.zip")

pipe = Pipeline.from_pretrained("embedded")
with (belugas / "gallery.csv").open() as fh:
    rows = list(csv.DictReader(fh))
pipe.enroll(
    [belugas / r["image"] for r in rows], [r["individual_id"] for r in rows], species="beluga"
)

photos = sorted((belugas / "queries").glob("*.jpg"))
predictions = list(pipe.predict_many(photos))

# Dataset metadata goes to eml.xml; recordedBy/institutionCode/licence to every record.
# The licence is the data owner's choice (GBIF accepts CC0-1.0, CC-BY-4.0, CC-BY-NC-4.0);
# the dataset id is part of every occurrenceID, so keep it fixed across re-exports.
dataset = DatasetMetadata(
    title="Cook Inlet beluga photo-identifications (example)",
    publisher="Example Marine Lab",
    license="CC-BY-4.0",
    recorded_by="Example survey team",
    institution_code="EML",
    dataset_id="example-cook-inlet",
)
# Per-photo values win over EXIF: here the survey date and position from the field log.
field_log = {
    str(p): {
        "eventDate": "2018-08-20",
        "decimalLatitude": "61.2",
        "decimalLongitude": "-150.0",
        "geodeticDatum": "EPSG:4326",
    }
    for p in photos
}
# Photos published on the web: GBIF shows media only from public URLs.
write_dwca(
    out,
    predictions,
    dataset,
    per_image=field_log,
    media_base_url="https://example.org/belugas/queries/",
    media_root=belugas / "queries",
)
print(f"wrote {out} with {len(predictions)} occurrences")
