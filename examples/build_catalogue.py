"""Build, save, grow and correct a catalogue (gallery) of known individuals.

Run: python examples/build_catalogue.py [GALLERY_DIR]
"""

import csv
import sys
from pathlib import Path

from ecomarine import ConfigError, Gallery, Identifier

HERE = Path(__file__).resolve().parent
belugas = HERE / "belugas"
folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("beluga-gallery")

ident = Identifier.from_pretrained("embedded")
with (belugas / "gallery.csv").open() as fh:
    rows = list(csv.DictReader(fh))

# Embed the photos and add them with their ids, species and per-photo metadata.
emb = ident.embed([belugas / r["image"] for r in rows])
# No threshold here: a gallery follows its model's unless it is calibrated itself (below).
gallery = Gallery(fingerprint=ident.fingerprint(), model_name=ident.config.name)
gallery.add(
    emb,
    [r["individual_id"] for r in rows],
    species="beluga",
    metadata=[{"encounter": r["encounter"], "date": r["date"], "source": r["image"]} for r in rows],
)
print(gallery)

# Choose the open-set threshold from the catalogue itself (leave one encounter out).
report = gallery.calibrate_new_individual(group_key="encounter")
print(
    f"new-individual threshold {report.threshold:.3f} (MAP@5 {report.map5:.2f} on {report.n_queries} queries)"
)

# Save atomically; load it back, refusing vectors from any other model.
gallery.save(folder)
gallery = Gallery.load(folder, expected_fingerprint=ident.fingerprint())

# Catalogues get corrected: rename an individual, merge two, remove one.
first, second, third = gallery.individuals()[:3]
gallery.rename(first, "BL-001")
gallery.merge([second], into="BL-001")
gallery.remove(individual_id=third)
gallery.save(folder)
print(f"after corrections: {len(gallery)} photos of {len(gallery.individuals())} individuals")

# Search: the closest individuals to a new photo.
query = ident.embed([next((belugas / "queries").glob("*.jpg"))])
for match in gallery.search(query, top_k=3)[0]:
    print(f"  {match.individual_id}: {match.score:.3f} (best photo {match.image_id})")

# Large catalogues: an approximate index ("hnsw", "ivf" or "sq8"; needs faiss), saved
# with the gallery. Scores stay exact cosines; only which rows are looked at changes.
try:
    gallery.use_index("sq8")
    print("sq8 index, best match:", gallery.search(query, top_k=1)[0][0].individual_id)
except ConfigError as exc:  # faiss is not installed
    print(f"exact search only: {exc}")
