"""Train an identifier on your own catalogue (a very short run on the example belugas).

A real run uses more epochs and images, e.g.:
    ecomarine train --csv catalogue.csv --images photos/ --out my-model --epochs 30

Run: python examples/train_own_species.py [OUTPUT_DIR]
"""

import sys
from pathlib import Path

from ecomarine import Identifier
from ecomarine.training import TrainConfig, train

HERE = Path(__file__).resolve().parent
out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("my-model")

result = train(
    TrainConfig(
        csv=str(HERE / "belugas" / "gallery.csv"),  # image,individual_id[,species,encounter,date]
        images=str(HERE / "belugas"),
        out=str(out),
        backbone="embedded",  # EfficientNet-Lite0 from the bundled ImageNet weights, offline
        input_size=(128, 48),  # height x width: small, for a quick example
        epochs=2,
        batch_size=12,
        calibration_csv=str(HERE / "belugas" / "queries.csv"),  # held-out photos
        name="example-belugas",
    )
)
print(f"losses per epoch: {[round(x, 3) for x in result.losses]}")
ident = Identifier.from_pretrained(out)
print(
    f"saved {out}: {len(ident.labels)} individuals, threshold {ident.new_individual_threshold:.3f}"
)
