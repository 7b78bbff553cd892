"""Calibrate the gate's threshold on your own labelled photos.

Run: python examples/calibrate_gate.py [GATE_DIR]
"""

import sys
from pathlib import Path

from ecomarine import Gate

HERE = Path(__file__).resolve().parent
out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("my-gate")

gate = Gate.from_pretrained("embedded")
positives = sorted((HERE / "belugas" / "queries").glob("*.jpg"))
negatives = sorted((HERE / "not_cetacean").glob("*.jpg"))

for result in gate.score(positives[:3] + negatives):
    print(f"score {result.score:.3f} -> cetacean: {result.is_cetacean}")

report = gate.calibrate(positives, negatives, min_tpr=0.9, min_tnr=0.9)
print(
    f"threshold {report.threshold:.3f}: TPR {report.tpr:.2f}, TNR {report.tnr:.2f} ({report.note})"
)
gate.save_pretrained(out)
print(f"saved {out}")
