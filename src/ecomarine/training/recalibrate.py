"""Record new open-set thresholds in an identifier folder (``ecomarine calibrate``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .._atomic import atomic_write_bytes, atomic_write_text
from ..config import IdentifierConfig
from ..errors import ConfigError
from ..identifier import CARD_NAME, CONFIG_NAME
from ..model_card import calibration_section

__all__ = ["CALIBRATION_NAME", "switch_test_time_flip", "write_calibration"]

logger = logging.getLogger(__name__)

#: The calibration record written beside ``config.json``.
CALIBRATION_NAME = "calibration.json"


def switch_test_time_flip(config: IdentifierConfig, on: bool) -> IdentifierConfig:
    """``config`` with flip test-time augmentation switched, nothing fitted on old vectors.

    The photo thresholds are kept for the caller to recalibrate; the sighting policy and
    both uncertainty calibrations are dropped (refit them for the new vectors).
    """
    return config.replace(
        test_time_flip=on,
        sighting_aggregation=None,
        sighting_thresholds={},
        uncertainty=None,
        sighting_uncertainty=None,
    )


def write_calibration(
    folder: Path,
    config: IdentifierConfig,
    calibration: dict[str, Any],
    command: str,
    *,
    out: Path | None = None,
) -> Path:
    """Write calibrated thresholds into an identifier folder, or into a copy of it.

    ``config.json`` gets ``config`` (holding the new thresholds), ``calibration.json``
    the results and the command, and the model card a "Recalibration" section. The
    weights are not touched (a copy gets the same files). Every file is written
    atomically, so an interrupted run leaves either the old or the new version.

    Args:
        folder: The identifier folder that was calibrated.
        config: Its configuration with the new thresholds.
        calibration: What :func:`~ecomarine.training.calibrate_identifier` returned.
        command: The command to record.
        out: Write a calibrated copy here instead of updating ``folder``.

    Returns:
        The folder written.

    Raises:
        ConfigError: ``folder`` holds no ``config.json``.
    """
    if not (folder / CONFIG_NAME).is_file():
        raise ConfigError(f"{folder}: not an identifier folder (no {CONFIG_NAME})")
    target = folder if out is None else out
    if out is not None and out.resolve() != folder.resolve():
        out.mkdir(parents=True, exist_ok=True)
        # Top-level files only: a training folder's checkpoints/ stay behind.
        for path in sorted(folder.iterdir()):
            if path.is_file():
                atomic_write_bytes(out / path.name, path.read_bytes())
    card_path = target / CARD_NAME
    card = card_path.read_text(encoding="utf-8") if card_path.is_file() else ""
    section = ["", "## Recalibration", "", "```bash", command, "```"]
    section += calibration_section(calibration)
    atomic_write_text(card_path, card.rstrip("\n") + "\n" + "\n".join(section) + "\n")
    record = {"command": command, **calibration}
    atomic_write_text(target / CALIBRATION_NAME, json.dumps(record, indent=2) + "\n")
    # config.json last: it is what changes behaviour.
    atomic_write_text(target / CONFIG_NAME, json.dumps(config.to_dict(), indent=2) + "\n")
    logger.info("open-set thresholds written to %s", target / CONFIG_NAME)
    return target
