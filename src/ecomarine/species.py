"""Species labels -> accepted scientific names and higher taxonomy (for Darwin Core).

Covers every species label of the Happywhale data, including its misspellings
(``bottlenose_dolpin``, ``kiler_whale``, ``frasiers_dolphin``) and pooled labels
(``globis``, ``pilot_whale``: the genus *Globicephala*). Labels that stand for more than
one species (``spotted_dolphin``, ``brydes_whale``, ``white_sided_dolphin``,
``bottlenose_dolphin``) map to the lowest rank that is certainly right. No taxon
identifiers are given: none could be verified offline.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CETACEA", "SPECIES", "Taxon", "lookup_species"]

HIGHER = {"kingdom": "Animalia", "phylum": "Chordata", "class": "Mammalia", "order": "Artiodactyla"}


@dataclass(frozen=True)
class Taxon:
    """An accepted name with its rank, family and an English vernacular name."""

    scientific_name: str
    rank: str
    family: str
    vernacular: str

    def terms(self) -> dict[str, str]:
        """Darwin Core taxon terms."""
        return {
            "scientificName": self.scientific_name,
            "taxonRank": self.rank,
            "vernacularName": self.vernacular,
            **HIGHER,
            "family": self.family,
            "higherClassification": " | ".join(
                [*HIGHER.values(), *(["Cetacea", self.family] if self.family else [])]
            ),
        }


#: The highest rank every photo the gate accepts supports: used when no species has
#: evidence (Darwin Core allows a record identified to a higher rank).
CETACEA = Taxon("Cetacea", "infraorder", "", "cetaceans")

_D, _B, _M, _Z = "Delphinidae", "Balaenopteridae", "Monodontidae", "Ziphiidae"

SPECIES: dict[str, Taxon] = {
    "beluga": Taxon("Delphinapterus leucas", "species", _M, "beluga whale"),
    "blue_whale": Taxon("Balaenoptera musculus", "species", _B, "blue whale"),
    "bottlenose_dolphin": Taxon("Tursiops", "genus", _D, "bottlenose dolphin"),
    "bottlenose_dolpin": Taxon("Tursiops", "genus", _D, "bottlenose dolphin"),
    "brydes_whale": Taxon("Balaenoptera", "genus", _B, "Bryde's whale"),
    "commersons_dolphin": Taxon(
        "Cephalorhynchus commersonii", "species", _D, "Commerson's dolphin"
    ),
    "common_dolphin": Taxon("Delphinus delphis", "species", _D, "common dolphin"),
    "cuviers_beaked_whale": Taxon("Ziphius cavirostris", "species", _Z, "Cuvier's beaked whale"),
    "dusky_dolphin": Taxon("Lagenorhynchus obscurus", "species", _D, "dusky dolphin"),
    "false_killer_whale": Taxon("Pseudorca crassidens", "species", _D, "false killer whale"),
    "fin_whale": Taxon("Balaenoptera physalus", "species", _B, "fin whale"),
    "frasiers_dolphin": Taxon("Lagenodelphis hosei", "species", _D, "Fraser's dolphin"),
    "fraser_dolphin": Taxon("Lagenodelphis hosei", "species", _D, "Fraser's dolphin"),
    "globis": Taxon("Globicephala", "genus", _D, "pilot whale"),
    "gray_whale": Taxon("Eschrichtius robustus", "species", "Eschrichtiidae", "gray whale"),
    "humpback_whale": Taxon("Megaptera novaeangliae", "species", _B, "humpback whale"),
    "kiler_whale": Taxon("Orcinus orca", "species", _D, "killer whale"),
    "killer_whale": Taxon("Orcinus orca", "species", _D, "killer whale"),
    "long_finned_pilot_whale": Taxon(
        "Globicephala melas", "species", _D, "long-finned pilot whale"
    ),
    "melon_headed_whale": Taxon("Peponocephala electra", "species", _D, "melon-headed whale"),
    "minke_whale": Taxon("Balaenoptera", "genus", _B, "minke whale"),
    "pantropic_spotted_dolphin": Taxon(
        "Stenella attenuata", "species", _D, "pantropical spotted dolphin"
    ),
    "pilot_whale": Taxon("Globicephala", "genus", _D, "pilot whale"),
    "rough_toothed_dolphin": Taxon("Steno bredanensis", "species", _D, "rough-toothed dolphin"),
    "sei_whale": Taxon("Balaenoptera borealis", "species", _B, "sei whale"),
    "short_finned_pilot_whale": Taxon(
        "Globicephala macrorhynchus", "species", _D, "short-finned pilot whale"
    ),
    "southern_right_whale": Taxon(
        "Eubalaena australis", "species", "Balaenidae", "southern right whale"
    ),
    "spinner_dolphin": Taxon("Stenella longirostris", "species", _D, "spinner dolphin"),
    "spotted_dolphin": Taxon("Stenella", "genus", _D, "spotted dolphin"),
    "white_sided_dolphin": Taxon("Delphinidae", "family", _D, "white-sided dolphin"),
}


def lookup_species(label: str | None) -> Taxon | None:
    """The taxon for a species label (case, spaces and hyphens ignored), or ``None``."""
    if not label:
        return None
    key = label.strip().lower().replace(" ", "_").replace("-", "_").replace("'", "")
    return SPECIES.get(key)
