"""The 27 product type codes of the challenge and the code <-> class index map."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rakuten.artifacts import atomic_write_json

# Counts per code over all 84,916 train rows (Y_train_CVw08PX.csv of the challenge). They are the real
# class prior: the demo generator samples from it and the leaderboard reports against it.
CODE_COUNTS: dict[int, int] = {
    10: 3116, 40: 2508, 50: 1681, 60: 832, 1140: 2671, 1160: 3953, 1180: 764, 1280: 4870, 1281: 2070,
    1300: 5045, 1301: 807, 1302: 2491, 1320: 3241, 1560: 5073, 1920: 4303, 1940: 803, 2060: 4993,
    2220: 824, 2280: 4760, 2403: 4774, 2462: 1421, 2522: 4989, 2582: 2589, 2583: 10209, 2585: 2496,
    2705: 2761, 2905: 872,
}
CODES: tuple[int, ...] = tuple(sorted(CODE_COUNTS))
NUM_CLASSES = len(CODES)

# A name for each code: (French category name, short English name). Rakuten never published names for
# the codes (the challenge gives numbers only), so these are the names public projects on this data
# agree on, e.g. Daryl01/rakuten-challenge ("libellés indicatifs choisis par l'équipe : Rakuten ne
# fournit que les codes") and other DataScientest Rakuten projects, checked against real titles of
# the real train rows of the challenge (2583: pool kits and pH testers; 2905: "jeu en
# téléchargement"; 2280: dated old newspaper issues; 2462: consoles sold with games; 1940: coffee
# capsules and tea). Where those projects disagree, the name was inferred from
# the titles and is marked "inferred" below: 40, 1180, 1301, 1302, 1920, 1940, 2403, 2462, 2582, 2905.
# The codes stay the key everywhere; a name is only ever shown beside its code.
CATEGORY_NAMES: dict[int, tuple[str, str]] = {
    10: ("Livres d'occasion", "used books"),
    40: ("Jeux vidéo neufs et import", "video games, new or imported"),          # inferred
    50: ("Accessoires de jeux vidéo", "gaming accessories"),
    60: ("Consoles de jeux", "game consoles"),
    1140: ("Figurines et produits dérivés", "figurines and merchandise"),
    1160: ("Cartes à collectionner", "trading cards"),
    1180: ("Jeux de rôle et figurines de jeu", "tabletop and role-playing games"),  # inferred
    1280: ("Jouets enfants", "children's toys"),
    1281: ("Jeux de société", "board games"),
    1300: ("Modélisme et télécommandés", "models, RC and drones"),
    1301: ("Vêtements bébé et loisirs", "baby clothes and leisure"),              # inferred
    1302: ("Jeux d'extérieur et gadgets", "outdoor games and novelties"),         # inferred
    1320: ("Puériculture", "baby care"),
    1560: ("Mobilier intérieur", "indoor furniture"),
    1920: ("Linge de maison", "household linen"),                                  # inferred
    1940: ("Épicerie", "groceries"),                                               # inferred
    2060: ("Décoration intérieure", "home decoration"),
    2220: ("Animalerie", "pet supplies"),
    2280: ("Revues et journaux anciens", "magazines and old newspapers"),
    2403: ("Livres, BD et mangas en lots", "books and comics in lots"),            # inferred
    2462: ("Jeux vidéo d'occasion et lots", "used video games and bundles"),       # inferred
    2522: ("Papeterie et fournitures de bureau", "stationery"),
    2582: ("Mobilier et accessoires de jardin", "garden furniture"),              # inferred
    2583: ("Piscine et accessoires", "pool and spa"),
    2585: ("Bricolage et outillage", "DIY and tools"),
    2705: ("Livres neufs", "new books"),
    2905: ("Jeux PC en téléchargement", "PC games (download)"),                    # inferred
}


def category_name(code, lang: str = "fr") -> str:
    """The French (``lang="fr"``) or short English (``"en"``) name of a code; raises KeyError on an
    unknown code (a code outside the 27 is a bug upstream, not something to print)."""
    fr, en = CATEGORY_NAMES[int(code)]
    return {"fr": fr, "en": en}[lang]


def code_label(code) -> str:
    """``"2583 - Piscine et accessoires"``: what every report and the service show for a code."""
    return f"{int(code)} - {category_name(code)}"


class LabelMap:
    """Bijection between challenge codes (``prdtypecode``) and contiguous class indices 0..26."""

    def __init__(self, codes=CODES):
        self.codes = tuple(int(c) for c in codes)
        if len(set(self.codes)) != len(self.codes):
            raise ValueError("label map has duplicate codes")
        self._index = {c: i for i, c in enumerate(self.codes)}

    def __len__(self) -> int:
        return len(self.codes)

    def __eq__(self, other) -> bool:
        return isinstance(other, LabelMap) and self.codes == other.codes

    def encode(self, codes) -> list[int]:
        """Codes -> indices; raises KeyError naming the first unknown code."""
        out = []
        for c in codes:
            try:
                out.append(self._index[int(c)])
            except KeyError:
                raise KeyError(f"label code {c} is not one of the {len(self.codes)} known codes") from None
        return out

    def decode(self, indices) -> list[int]:
        """Class indices -> codes; raises IndexError naming the first index outside 0..n-1 (a negative
        one too: Python's indexing would take it from the end)."""
        out = []
        for i in indices:
            i = int(i)
            if not 0 <= i < len(self.codes):
                raise IndexError(f"class index {i} is outside 0..{len(self.codes) - 1}")
            out.append(self.codes[i])
        return out

    def is_known(self, code) -> bool:
        """Whether ``code`` is one of the map's codes."""
        return int(code) in self._index

    def to_json(self) -> dict:
        """``{"codes": [...], "index": {code as a string: class index}}``: what ``save`` writes."""
        return {"codes": list(self.codes), "index": {str(c): i for c, i in self._index.items()}}

    def save(self, path: str | Path) -> None:
        """Write ``to_json()`` to ``path`` atomically."""
        atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "LabelMap":
        """The map that ``save`` wrote to ``path`` (only its ``codes`` are read)."""
        return cls(json.loads(Path(path).read_text())["codes"])


def class_weights(labels, power: float, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Per-class weights ``count ** -power``, normalised so that their mean over ``labels`` is 1 (the
    loss scale, and so the learning rate, stays comparable across powers). The one class-weight rule
    of every model (unimodal losses, scikit-learn heads, fusion nets, the stacker).

    A class absent from ``labels`` gets the weight of the rarest present class and takes no part in
    the normalisation: it cannot be trained on, but a validation row of it (or a fusion net's loss
    over other rows) must neither vanish (weight 0: a batch of such rows divides by zero) nor count
    as a class of one row (a weight above every real one).
    """
    y = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)[:num_classes]
    present = counts > 0
    if not present.any():
        return np.ones(num_classes)
    w = np.ones(num_classes)
    w[present] = counts[present] ** (-float(power))
    w[present] *= counts[present].sum() / (w[present] * counts[present]).sum()
    w[~present] = w[present].max()
    return w
