"""Synthetic demo data in the exact file layout of the ChallengeData Rakuten France challenge.

The real data cannot be shipped, yet every stage of the pipeline (folds, text and image models,
fusion, stacking, submission) must be runnable end to end. This module writes a small stand-in::

    <out>/X_train_update.csv      ,designation,description,productid,imageid   (index 0..N-1)
    <out>/Y_train_CVw08PX.csv     ,prdtypecode                                  (same index)
    <out>/X_test_update.csv       ,designation,description,productid,imageid   (index N..N+M-1)
    <out>/image_train/image_<imageid>_product_<productid>.jpg
    <out>/image_test/image_<imageid>_product_<productid>.jpg
    <out>/README.md, <out>/demo_manifest.json

Design goal: the data must reward the same things the real data rewards, so that a pipeline tuned
on it is not tuned on nonsense.

* **Class prior.** Labels are the 27 real codes drawn with the real train proportions
  (:data:`rakuten.labels.CODE_COUNTS`): 2583 is the most frequent, 60/1180/1301/... are rare.
* **Complementary modalities.** Every class has a *text pool* (title/description vocabulary) and a
  *visual pattern* (shape + colours). Some classes share a text pool, so only the image tells them
  apart (used vs new vs lots of books; console game vs PC game; collectible vs wargame figurines;
  baby clothes vs baby equipment; indoor vs garden furniture). Others share a visual pattern, so only
  the text tells them apart (new books vs magazines; games vs game lots; accessories vs consoles;
  toys vs outdoor games; bedding vs decoration; grocery vs pet supplies). The rest differ in both.
  A text-only or image-only model therefore hits a ceiling that fusion can break, as on the real data.
* **Noise.** About 3% of labels are a random other class; titles carry generic filler words, some
  titles hold no class word at all and some borrow a word from another class; about 10% of images
  show another class's pattern; images get colour jitter, random position/scale, borders and
  background changes. No modality is perfect.
* **Dirty text.** Descriptions are HTML (``<p>``, ``<br />``, ``<b>``, ``<ul><li>``) with accents
  written either raw or as entities (``&eacute;``; sometimes double-escaped ``&amp;eacute;`` as in the
  real export); ~35% of rows have no description (empty field -> NaN on read).
* **Learnable images.** Patterns are large shapes, colour fields and stripes that survive
  downsampling to 64-96 px (and even to 16x16 thumbnails), so a small CNN learns them quickly.

Everything is a pure function of ``seed``: labels, ids and the text come from seeded numpy
Generators, and every image from its own Generator seeded by ``(seed, row)``, so the output is
byte-identical across runs and independent of the number of worker processes.
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import re
import shutil
import socket
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageChops, ImageDraw
from tqdm import tqdm

from rakuten.artifacts import atomic_write_csv, atomic_write_json, atomic_write_text
from rakuten.labels import CODE_COUNTS, CODES

log = logging.getLogger(__name__)

# Bump whenever the output for a given seed changes: a dataset on disk is only reused when its
# manifest records the same version (and parameters).
GENERATOR_VERSION = "1.0"
MANIFEST_NAME = "demo_manifest.json"
X_TRAIN, Y_TRAIN, X_TEST = "X_train_update.csv", "Y_train_CVw08PX.csv", "X_test_update.csv"

# Noise levels (tuned so that a TF-IDF + logistic regression lands around 0.6-0.8 macro-F1, a linear
# model on image thumbnails clearly lower, and their combination clearly above both).
LABEL_NOISE = 0.03          # rows whose label is a random *other* class than their content
MISSING_DESCRIPTION = 0.35  # rows with an empty description
P_TITLE_NO_CLASS_WORD = 0.12  # title made of generic filler only
P_TITLE_FOREIGN_WORD = 0.15   # title borrows one word from another class's pool
P_IMAGE_OTHER_PATTERN = 0.10  # image drawn with another class's visual pattern
JPEG_QUALITY = 90

# Seed streams: independent Generators per purpose, so e.g. changing image code never changes text.
_STREAM_GLOBAL, _STREAM_TEXT, _STREAM_IMAGE = 0, 1, 2


# ---------------------------------------------------------------------------------------- class design
@dataclass(frozen=True)
class DemoClass:
    """One demo class: its challenge ``code`` and ``name``, the text pool its words come from and the visual
    pattern its images are drawn with."""
    code: int
    name: str
    text_pool: str   # classes with the same pool are indistinguishable by text
    visual: str      # classes with the same visual are indistinguishable by image


CLASS_DESIGN: tuple[DemoClass, ...] = (
    # Books: one vocabulary for used / new / lots; the picture tells a worn single book, a bright new
    # cover and a stack apart. New books and magazines share the cover picture; text separates them.
    DemoClass(10, "livre d'occasion", "books", "old_book"),
    DemoClass(2705, "livre neuf", "books", "cover"),
    DemoClass(2403, "lot de livres / BD", "books", "book_stack"),
    DemoClass(2280, "magazines et revues", "magazines", "cover"),
    # Video games: console vs PC games share vocabulary; game lots share the game-case picture.
    DemoClass(40, "jeu vidéo", "videogames", "game_case"),
    DemoClass(2905, "jeu PC", "videogames", "pc_game"),
    DemoClass(2462, "lot de jeux vidéo", "game_lots", "game_case"),
    # Accessories and consoles: the same dark gadget picture; text separates them.
    DemoClass(50, "accessoire de console", "game_accessories", "gadget"),
    DemoClass(60, "console de jeu", "consoles", "gadget"),
    # Figurines: one vocabulary, two looks (bright pop figure on white vs grey miniature on dark).
    DemoClass(1140, "figurine", "figurines", "pop_figure"),
    DemoClass(1180, "figurine de jeu de rôle", "figurines", "war_figure"),
    DemoClass(1160, "carte à collectionner", "cards", "cards"),
    # Toys: children's toys and outdoor games share the scattered-colours picture.
    DemoClass(1280, "jouet enfant", "toys", "toy_blobs"),
    DemoClass(1302, "jeu d'extérieur", "outdoor", "toy_blobs"),
    DemoClass(1281, "jeu de société", "boardgames", "board"),
    DemoClass(1300, "modélisme / drone", "rc", "drone"),
    # Baby: one vocabulary; socks pictures vs big pastel equipment.
    DemoClass(1301, "chaussettes bébé", "baby", "socks"),
    DemoClass(1320, "puériculture", "baby", "baby_gear"),
    # Furniture: one vocabulary; wooden furniture indoors vs furniture on a garden background.
    DemoClass(1560, "mobilier intérieur", "furniture", "wood_furniture"),
    DemoClass(2582, "mobilier de jardin", "furniture", "garden_furniture"),
    # Bedding and decoration share the patterned-fabric picture.
    DemoClass(1920, "linge de maison", "bedding", "fabric"),
    DemoClass(2060, "décoration", "decor", "fabric"),
    # Grocery and pet supplies share the packaging picture.
    DemoClass(1940, "épicerie", "grocery", "package"),
    DemoClass(2220, "animalerie", "pets", "package"),
    DemoClass(2522, "papeterie", "stationery", "pens"),
    DemoClass(2583, "piscine et spa", "pool", "pool"),
    DemoClass(2585, "bricolage et jardinage", "diy", "tool"),
)
_DESIGN = {c.code: c for c in CLASS_DESIGN}
assert sorted(_DESIGN) == list(CODES), "CLASS_DESIGN must cover exactly the 27 challenge codes"


# ------------------------------------------------------------------------------------------ vocabulary
# Each pool: ``heads`` (what the product is; one starts most titles) and ``mods`` (brands, qualifiers,
# sizes). ``{n}``, ``{m}`` and ``{year}`` are filled per row. Accents are deliberate: the cleaning
# stage must keep them, and descriptions sometimes encode them as HTML entities.
TEXT_POOLS: dict[str, dict[str, list[str]]] = {
    "books": {
        "heads": ["Livre", "Roman", "Le Petit Prince", "Les Misérables", "Guide pratique", "Recueil de poèmes",
                  "Bande dessinée", "Essai", "Biographie", "Dictionnaire", "Manuel scolaire", "Récit de voyage",
                  "Histoire de France", "Mémoires", "Contes et légendes", "Lot de {n} livres"],
        "mods": ["Victor Hugo", "Émile Zola", "Albert Camus", "Jules Verne", "Marcel Proust", "Gallimard", "Folio",
                 "Hachette", "Le Livre de Poche", "broché", "relié", "tome {n}", "édition {year}", "illustré",
                 "Flammarion", "J'ai lu", "Seuil", "texte intégral", "première édition", "{n} pages"],
    },
    "magazines": {
        "heads": ["Magazine", "Revue", "Journal", "Paris Match", "Le Point", "L'Express", "Science & Vie",
                  "Télérama", "Le Figaro Magazine", "Géo", "Historia", "Marie Claire"],
        "mods": ["N° {n}", "numéro spécial", "hebdomadaire", "mensuel", "{year}", "supplément", "hors-série",
                 "ancien numéro", "édition de juillet", "actualité", "reportage", "couverture"],
    },
    "videogames": {
        "heads": ["Jeu PS4", "Jeu Xbox One", "Jeu PC", "Jeu Nintendo Switch", "Jeu vidéo", "Jeu PS3", "Jeu Wii U",
                  "Jeu Steam", "Jeu DVD-ROM"],
        "mods": ["Call of Duty", "FIFA {n}", "Assassin's Creed", "Grand Theft Auto V", "The Witcher 3", "Zelda",
                 "Mario Kart", "Battlefield", "Final Fantasy", "Need for Speed", "édition collector",
                 "version française", "PEGI 16", "PEGI 18", "import", "Game of the Year", "DLC inclus", "Deluxe"],
    },
    "game_lots": {
        "heads": ["Lot de {n} jeux", "Lot jeux vidéo", "Pack de jeux", "Bundle jeux", "Lot {n} cartouches"],
        "mods": ["Nintendo DS", "Game Boy", "PS2", "PSP", "Nintendo 64", "occasion", "sans notice", "en boîte",
                 "testés", "fonctionnels", "rétro", "Gamecube", "Super Nintendo"],
    },
    "game_accessories": {
        "heads": ["Manette", "Câble de charge", "Chargeur", "Housse de protection", "Casque gamer", "Support",
                  "Adaptateur", "Station de charge", "Volant", "Protection d'écran", "Carte mémoire", "Grip"],
        "mods": ["pour PS4", "pour Switch", "pour Xbox One", "sans fil", "Bluetooth", "USB", "filaire",
                 "compatible PC", "LED", "ergonomique", "{n} m", "joystick"],
    },
    "consoles": {
        "heads": ["Console", "Console portable", "Mini console rétro", "Console de jeux", "Pack console",
                  "Console de salon"],
        "mods": ["HDMI", "{n} jeux intégrés", "2 manettes", "500 Go", "1 To", "édition limitée", "rétro",
                 "Nintendo", "PlayStation", "4K", "écran 3 pouces", "Sega"],
    },
    "figurines": {
        "heads": ["Figurine", "Statuette", "Funko Pop", "Figurine articulée", "Buste", "Miniature",
                  "Figurine de collection"],
        "mods": ["Star Wars", "Marvel", "Dragon Ball Z", "One Piece", "Naruto", "Warhammer 40k",
                 "Seigneur des Anneaux", "résine", "peinte à la main", "échelle 1/6", "{n} cm", "PVC",
                 "édition limitée", "Games Workshop", "Space Marine", "Batman"],
    },
    "cards": {
        "heads": ["Carte Pokémon", "Carte Yu-Gi-Oh!", "Carte Magic", "Booster", "Lot de {n} cartes",
                  "Carte à collectionner", "Display"],
        "mods": ["holo", "rare", "VF", "commune", "reverse", "Dracaufeu", "Pikachu", "édition 1",
                 "Soleil et Lune", "ultra rare", "near mint", "Panini"],
    },
    "toys": {
        "heads": ["Peluche", "Poupée", "Jouet", "Jeu d'éveil", "Déguisement", "Voiture miniature",
                  "Cuisine enfant", "Jouet en bois", "Robot", "Circuit de billes"],
        "mods": ["enfant", "3 ans et +", "éducatif", "Playmobil", "Lego", "Disney", "Barbie", "musical",
                 "lumineux", "fille", "garçon", "Vtech"],
    },
    "outdoor": {
        "heads": ["Trampoline", "Balançoire", "Toboggan", "Ballon", "Cerf-volant", "Raquettes de plage",
                  "Kit de pêche", "Pistolet à eau", "Tente de jeu", "Trottinette"],
        "mods": ["jardin", "plein air", "extérieur", "été", "{n} m", "résistant", "filet de sécurité", "plage",
                 "sport", "pliable", "enfant"],
    },
    "boardgames": {
        "heads": ["Jeu de société", "Puzzle", "Jeu de cartes", "Jeu de plateau", "Jeu d'ambiance",
                  "Jeu de stratégie"],
        "mods": ["{n} pièces", "2 à 6 joueurs", "Monopoly", "Scrabble", "Uno", "famille", "Asmodee",
                 "dès 8 ans", "Dixit", "Cluedo", "coopératif", "extension"],
    },
    "rc": {
        "heads": ["Drone", "Hélicoptère RC", "Voiture radiocommandée", "Maquette", "Quadricoptère", "Bateau RC",
                  "Avion RC"],
        "mods": ["caméra HD", "4K", "FPV", "batterie LiPo", "hélices", "échelle 1/43", "1/18", "brushless",
                 "Wi-Fi", "GPS", "télécommande 2.4 GHz", "kit de montage"],
    },
    "baby": {
        "heads": ["Chaussettes bébé", "Body bébé", "Poussette", "Biberon", "Gigoteuse", "Siège auto",
                  "Chaussons", "Bavoir", "Tapis d'éveil", "Lit parapluie", "Porte-bébé",
                  "Lot de {n} paires de chaussettes"],
        "mods": ["naissance", "0-6 mois", "coton bio", "6-12 mois", "fille", "garçon", "antidérapant", "doux",
                 "pliable", "sans BPA", "Bébé Confort", "Chicco"],
    },
    "furniture": {
        "heads": ["Table", "Chaise", "Fauteuil", "Banc", "Tabouret", "Table basse", "Lot de {n} chaises",
                  "Salon", "Meuble", "Étagère", "Transat", "Canapé"],
        "mods": ["bois massif", "métal", "design", "pliable", "scandinave", "chêne", "{n}x{m} cm", "empilable",
                 "rotin", "tissu", "aluminium", "résine tressée"],
    },
    "bedding": {
        "heads": ["Coussin", "Housse de couette", "Taie d'oreiller", "Drap housse", "Plaid", "Parure de lit",
                  "Housse de coussin", "Couverture", "Oreiller"],
        "mods": ["coton", "{n}x{n} cm", "240x220", "polaire", "lin lavé", "microfibre", "2 personnes",
                 "percale", "motif géométrique", "velours"],
    },
    "decor": {
        "heads": ["Cadre photo", "Vase", "Stickers muraux", "Guirlande lumineuse", "Bougie parfumée",
                  "Horloge murale", "Miroir", "Tableau déco", "Statue décorative", "Lampe"],
        "mods": ["décoration", "salon", "Noël", "LED", "mural", "vintage", "moderne", "chambre", "bohème",
                 "fleurs artificielles"],
    },
    "grocery": {
        "heads": ["Café", "Thé vert", "Chocolat noir", "Bonbons", "Biscuits", "Capsules", "Épices", "Confiture",
                  "Miel", "Huile d'olive", "Pâtes"],
        "mods": ["bio", "sachet {n} g", "{n} capsules", "compatible Nespresso", "artisanal", "sans gluten",
                 "commerce équitable", "Arabica", "Provence", "pur beurre"],
    },
    "pets": {
        "heads": ["Collier pour chien", "Laisse", "Griffoir", "Arbre à chat", "Gamelle", "Panier pour chien",
                  "Jouet pour chat", "Aquarium", "Harnais", "Litière"],
        "mods": ["chien", "chat", "réglable", "nylon", "petit chien", "grand chien", "antidérapant", "lavable",
                 "rongeur", "poisson"],
    },
    "stationery": {
        "heads": ["Cahier", "Stylo", "Classeur", "Agenda", "Carnet", "Feutres", "Ramette papier", "Trousse",
                  "Enveloppes", "Cartouche d'encre", "Post-it", "Calculatrice"],
        "mods": ["A4", "A5", "{year}", "bille", "Bic", "Clairefontaine", "Oxford", "à spirale", "{n} pages",
                 "couleurs assorties", "bureau", "école"],
    },
    "pool": {
        "heads": ["Piscine", "Filtre à sable", "Pompe de piscine", "Bâche", "Robot nettoyeur", "Spa gonflable",
                  "Chlore", "Échelle de piscine", "Liner", "Skimmer", "Bâche à bulles"],
        "mods": ["hors sol", "{n} m³/h", "Intex", "Bestway", "galets", "{n}x{m} m", "tubulaire", "électrique",
                 "pour piscine", "traitement de l'eau"],
    },
    "diy": {
        "heads": ["Perceuse", "Tournevis", "Scie", "Tuyau d'arrosage", "Tondeuse", "Sécateur", "Visseuse",
                  "Jeu de clés", "Taille-haie", "Ponceuse", "Niveau laser", "Coffret d'outils"],
        "mods": ["sans fil", "{n} V", "Bosch", "Makita", "électrique", "{n} W", "acier", "{n} pièces", "batterie",
                 "professionnel", "Black & Decker"],
    },
}
_POOL_NAMES = sorted(TEXT_POOLS)
assert {c.text_pool for c in CLASS_DESIGN} == set(TEXT_POOLS), "every pool is used by some class"

# Filler shared by all classes: it carries no class signal, only noise (as on a marketplace).
GENERIC_WORDS = ["neuf", "qualité", "pas cher", "livraison rapide", "promo", "original", "nouveau", "cadeau",
                 "idéal", "haute qualité", "bleu", "rouge", "noir", "blanc", "vert", "rose", "gris", "beige",
                 "lot de 2", "France", "taille unique", "grand", "petit", "mode", "garantie", "authentique",
                 "très bon état", "occasion", "fabriqué en France", "prix réduit", "été", "hiver", "luxe"]
_DESC_SENTENCES = [
    "Produit {g} et {g}.", "Idéal pour offrir à vos proches.", "Livraison sous 48 h en France métropolitaine.",
    "Très bon état général.", "Dimensions : {n} x {m} cm.", "Matière : {mat}.", "Garantie {n} ans.",
    "Article expédié avec soin.", "Satisfait ou remboursé.", "Poids : {n}0 g.", "Couleur : {color}.",
    "Photos non contractuelles.", "Qualité supérieure, finitions soignées.", "Stock limité, commandez vite !",
]
_MATERIALS = ["coton", "plastique", "bois", "métal", "polyester", "verre", "céramique", "papier", "acier inoxydable"]
_COLORS = ["bleu", "rouge", "noir", "blanc", "vert", "rose", "gris", "beige", "jaune", "violet"]
_HTML_ENTITIES = {"é": "&eacute;", "è": "&egrave;", "ê": "&ecirc;", "à": "&agrave;", "â": "&acirc;",
                  "ç": "&ccedil;", "ô": "&ocirc;", "î": "&icirc;", "ù": "&ugrave;", "É": "&Eacute;",
                  "'": "&#39;", "°": "&deg;", "³": "&sup3;"}
_ENTITY_RE = re.compile("|".join(map(re.escape, _HTML_ENTITIES)))


def _fill(rng: np.random.Generator, s: str) -> str:
    """Fill the ``{n}``, ``{m}``, ``{year}`` slots of a vocabulary entry."""
    if "{" not in s:
        return s
    return s.format(n=int(rng.choice([2, 3, 4, 5, 6, 10, 12, 20, 24, 30, 40, 50, 60, 100, 250, 500, 1000])),
                    m=int(rng.choice([20, 30, 40, 45, 60, 80, 120, 150, 200])),
                    year=int(rng.integers(1960, 2020)))


def _pick(rng: np.random.Generator, items: list[str]) -> str:
    return _fill(rng, items[int(rng.integers(len(items)))])


def _make_title(rng: np.random.Generator, pool: str) -> str:
    """A marketplace-style title: head + qualifiers + filler, in one of a few orders."""
    p = TEXT_POOLS[pool]
    u = rng.random()
    if u < P_TITLE_NO_CLASS_WORD:
        # Sellers do post titles like "Article neuf bleu - qualité": no class signal in the title.
        parts = [_pick(rng, GENERIC_WORDS) for _ in range(int(rng.integers(2, 5)))]
        return " ".join(parts).capitalize()
    head = _pick(rng, p["heads"])
    mods = [_pick(rng, p["mods"]) for _ in range(int(rng.integers(0, 3)))]
    generic = [_pick(rng, GENERIC_WORDS) for _ in range(int(rng.integers(1, 4)))]
    if u < P_TITLE_NO_CLASS_WORD + P_TITLE_FOREIGN_WORD:
        # A misleading word from another pool (cross-listed products, keyword stuffing).
        other = TEXT_POOLS[_POOL_NAMES[int(rng.integers(len(_POOL_NAMES)))]]
        mods.append(_pick(rng, other["heads"] if rng.random() < 0.5 else other["mods"]))
        rng.shuffle(mods)
    style = int(rng.integers(4))
    if style == 0:
        title = " ".join([head, *mods, *generic])
    elif style == 1:
        title = f"{head} {' '.join(mods)} - {' '.join(generic)}"
    elif style == 2:
        title = f"{' '.join(generic).capitalize()} {head[0].lower() + head[1:]} {' '.join(mods)}"
    else:
        title = f"{head} ({', '.join(mods + generic)})"
    return re.sub(r"\s+", " ", title).replace(" -  ", " - ").strip()


def _make_description(rng: np.random.Generator, pool: str, title: str) -> str:
    """An HTML description mixing class words, generic sentences, lists and entities."""
    p = TEXT_POOLS[pool]
    g = lambda: _pick(rng, GENERIC_WORDS)  # noqa: E731
    sentences = []
    if rng.random() < 0.6:
        sentences.append(title + ".")
    sentences.append(f"{_pick(rng, p['heads'])} {_pick(rng, p['mods'])}, {g()}.")
    for _ in range(int(rng.integers(1, 4))):
        s = _DESC_SENTENCES[int(rng.integers(len(_DESC_SENTENCES)))]
        sentences.append(s.format(g=g(), n=int(rng.integers(1, 99)), m=int(rng.integers(1, 99)),
                                  mat=_pick(rng, _MATERIALS), color=_pick(rng, _COLORS)))
    rng.shuffle(sentences)
    style = int(rng.integers(4))
    if style == 0:
        html = "".join(f"<p>{s}</p>" for s in sentences)
    elif style == 1:
        html = "<br />".join(sentences)
    elif style == 2:
        items = "".join(f"<li>{_pick(rng, p['mods'])}</li>" for _ in range(int(rng.integers(2, 5))))
        html = f"<p>{sentences[0]}</p><b>Caractéristiques :</b><ul>{items}</ul>" + " ".join(sentences[1:])
    else:
        html = f"<p><b>{sentences[0]}</b><br />{' '.join(sentences[1:])}</p>"
    # Ampersands first, so "Science & Vie" becomes valid HTML before accents turn into entities.
    html = html.replace("&", "&amp;")
    enc = rng.random()
    if enc < 0.45:
        html = _ENTITY_RE.sub(lambda mt: _HTML_ENTITIES[mt.group(0)], html)
    elif enc < 0.55:
        # Double-escaped, as in parts of the real export ("&amp;eacute;").
        html = _ENTITY_RE.sub(lambda mt: _HTML_ENTITIES[mt.group(0)].replace("&", "&amp;"), html)
    if rng.random() < 0.2:
        html = html.replace(" ", "&nbsp;", 1 + int(rng.integers(3)))
    return html


# -------------------------------------------------------------------------------------------- images
# Each visual pattern draws into the object box (x0, y0, w, h) of a square canvas. Shapes are big and
# colours distinctive, so the pattern survives downsampling to 16-96 px.
Box = tuple[float, float, float, float]


def _jit(rng: np.random.Generator, rgb, amount: int = 25) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def _rect(d: ImageDraw.ImageDraw, box: Box, f0x, f0y, f1x, f1y, **kw) -> None:
    x0, y0, w, h = box
    d.rectangle([x0 + f0x * w, y0 + f0y * h, x0 + f1x * w, y0 + f1y * h], **kw)


def _ellipse(d: ImageDraw.ImageDraw, box: Box, f0x, f0y, f1x, f1y, **kw) -> None:
    x0, y0, w, h = box
    d.ellipse([x0 + f0x * w, y0 + f0y * h, x0 + f1x * w, y0 + f1y * h], **kw)


def _poly(d: ImageDraw.ImageDraw, box: Box, pts, **kw) -> None:
    x0, y0, w, h = box
    d.polygon([(x0 + fx * w, y0 + fy * h) for fx, fy in pts], **kw)


_BRIGHT = [(220, 30, 40), (30, 80, 200), (30, 160, 60), (140, 40, 170), (240, 130, 0), (0, 150, 160)]
_PASTEL = [(250, 180, 200), (170, 210, 245), (200, 180, 240), (180, 235, 200), (250, 230, 160)]


def _draw_old_book(d, b, rng):
    _rect(d, b, 0.2, 0.05, 0.8, 0.95, fill=_jit(rng, (190, 160, 110)))
    _rect(d, b, 0.2, 0.05, 0.3, 0.95, fill=_jit(rng, (120, 85, 50)))
    for k in range(int(rng.integers(2, 5))):
        y = 0.2 + 0.12 * k
        _rect(d, b, 0.38, y, 0.72, y + 0.03, fill=_jit(rng, (95, 70, 45)))


def _draw_cover(d, b, rng):
    _rect(d, b, 0.18, 0.04, 0.82, 0.96, fill=_jit(rng, _BRIGHT[int(rng.integers(len(_BRIGHT)))], 30))
    _rect(d, b, 0.18, 0.15, 0.82, 0.35, fill=_jit(rng, (245, 245, 240), 10))
    _rect(d, b, 0.3, 0.5, 0.7, 0.85, fill=_jit(rng, (60, 60, 60), 40))


def _draw_book_stack(d, b, rng):
    n = int(rng.integers(3, 6))
    for k in range(n):
        y0 = 0.1 + 0.8 * k / n
        dx = rng.uniform(-0.08, 0.08)
        _rect(d, b, 0.1 + dx, y0, 0.9 + dx, y0 + 0.8 / n - 0.02,
              fill=_jit(rng, _BRIGHT[int(rng.integers(len(_BRIGHT)))], 40), outline=(30, 30, 30))


def _draw_game_case(d, b, rng):
    _rect(d, b, 0.2, 0.02, 0.8, 0.98, fill=_jit(rng, (10, 60, 170), 20))
    _rect(d, b, 0.2, 0.02, 0.8, 0.14, fill=_jit(rng, (240, 240, 245), 10))
    _rect(d, b, 0.27, 0.25, 0.73, 0.85, fill=_jit(rng, _BRIGHT[int(rng.integers(len(_BRIGHT)))], 40))


def _draw_pc_game(d, b, rng):
    _rect(d, b, 0.0, 0.15, 1.0, 0.85, fill=_jit(rng, (15, 15, 25), 10))
    neon = [(0, 230, 230), (230, 0, 200), (120, 255, 0)]
    for k in range(int(rng.integers(3, 6))):
        y = rng.uniform(0.2, 0.75)
        _rect(d, b, rng.uniform(0.0, 0.3), y, rng.uniform(0.6, 1.0), y + 0.05,
              fill=_jit(rng, neon[k % 3], 20))


def _draw_gadget(d, b, rng):
    body = _jit(rng, (35, 35, 40), 15)
    _ellipse(d, b, 0.05, 0.3, 0.95, 0.75, fill=body)
    _ellipse(d, b, 0.05, 0.45, 0.35, 0.95, fill=body)
    _ellipse(d, b, 0.65, 0.45, 0.95, 0.95, fill=body)
    for (fx, fy), c in zip([(0.7, 0.42), (0.78, 0.5), (0.62, 0.5), (0.7, 0.58)],
                           [(220, 30, 40), (30, 160, 60), (30, 80, 200), (240, 200, 0)]):
        _ellipse(d, b, fx - 0.03, fy - 0.03, fx + 0.03, fy + 0.03, fill=c)
    _rect(d, b, 0.2, 0.45, 0.32, 0.5, fill=(200, 200, 200))
    _rect(d, b, 0.235, 0.41, 0.285, 0.54, fill=(200, 200, 200))


def _draw_pop_figure(d, b, rng):
    _rect(d, b, 0.33, 0.55, 0.67, 0.98, fill=_jit(rng, _BRIGHT[int(rng.integers(len(_BRIGHT)))], 30))
    _ellipse(d, b, 0.15, 0.02, 0.85, 0.62, fill=_jit(rng, (250, 210, 170), 20))
    _ellipse(d, b, 0.32, 0.3, 0.42, 0.4, fill=(10, 10, 10))
    _ellipse(d, b, 0.58, 0.3, 0.68, 0.4, fill=(10, 10, 10))


def _draw_war_figure(d, b, rng):
    metal = _jit(rng, (150, 150, 155), 25)
    _ellipse(d, b, 0.4, 0.15, 0.6, 0.35, fill=metal)
    _poly(d, b, [(0.5, 0.3), (0.25, 0.9), (0.75, 0.9)], fill=metal)
    _rect(d, b, 0.2, 0.88, 0.8, 0.95, fill=_jit(rng, (80, 70, 60), 15))


def _draw_cards(d, b, rng):
    cols, rows = int(rng.integers(2, 4)), 2
    for i in range(cols):
        for j in range(rows):
            fx0, fy0 = 0.05 + 0.9 * i / cols, 0.05 + 0.9 * j / rows
            fx1, fy1 = fx0 + 0.9 / cols - 0.03, fy0 + 0.9 / rows - 0.03
            _rect(d, b, fx0, fy0, fx1, fy1, fill=_jit(rng, (250, 205, 0), 15))
            m = 0.03
            _rect(d, b, fx0 + m, fy0 + m, fx1 - m, fy0 + (fy1 - fy0) * 0.6,
                  fill=_jit(rng, _BRIGHT[int(rng.integers(len(_BRIGHT)))], 40))


def _draw_toy_blobs(d, b, rng):
    prim = [(230, 20, 30), (250, 210, 0), (20, 90, 220), (20, 170, 60)]
    for k in range(int(rng.integers(4, 8))):
        r = rng.uniform(0.12, 0.25)
        cx, cy = rng.uniform(r, 1 - r), rng.uniform(r, 1 - r)
        _ellipse(d, b, cx - r, cy - r, cx + r, cy + r, fill=_jit(rng, prim[k % 4], 20))


def _draw_board(d, b, rng):
    _rect(d, b, 0.05, 0.05, 0.95, 0.95, fill=_jit(rng, (20, 100, 50), 20))
    n = 4
    light, dark = _jit(rng, (240, 230, 200), 10), _jit(rng, (150, 30, 30), 20)
    for i in range(n):
        for j in range(n):
            f = 0.15 + 0.7 * i / n, 0.15 + 0.7 * j / n
            _rect(d, b, f[0], f[1], f[0] + 0.7 / n, f[1] + 0.7 / n, fill=light if (i + j) % 2 else dark)


def _draw_drone(d, b, rng):
    x0, y0, w, h = b
    arm = _jit(rng, (50, 50, 55), 15)
    lw = max(2, int(0.09 * w))
    d.line([(x0 + 0.15 * w, y0 + 0.15 * h), (x0 + 0.85 * w, y0 + 0.85 * h)], fill=arm, width=lw)
    d.line([(x0 + 0.85 * w, y0 + 0.15 * h), (x0 + 0.15 * w, y0 + 0.85 * h)], fill=arm, width=lw)
    rotor = _jit(rng, (190, 190, 200), 20)
    for fx, fy in [(0.15, 0.15), (0.85, 0.15), (0.15, 0.85), (0.85, 0.85)]:
        _ellipse(d, b, fx - 0.14, fy - 0.14, fx + 0.14, fy + 0.14, outline=rotor, width=max(1, lw // 2))
    _rect(d, b, 0.38, 0.38, 0.62, 0.62, fill=arm)


def _draw_socks(d, b, rng):
    c = _jit(rng, _PASTEL[int(rng.integers(len(_PASTEL)))], 20)
    stripe = _jit(rng, (255, 255, 255), 10)
    for dx in (0.0, 0.45):
        _poly(d, b, [(0.08 + dx, 0.05), (0.33 + dx, 0.05), (0.33 + dx, 0.7), (0.45 + dx, 0.8),
                     (0.45 + dx, 0.95), (0.08 + dx, 0.95)], fill=c)
        _rect(d, b, 0.08 + dx, 0.08, 0.33 + dx, 0.15, fill=stripe)


def _draw_baby_gear(d, b, rng):
    c = _jit(rng, _PASTEL[int(rng.integers(len(_PASTEL)))], 20)
    _ellipse(d, b, 0.05, 0.2, 0.95, 0.85, fill=c)
    x0, y0, w, h = b
    d.arc([x0 + 0.25 * w, y0, x0 + 0.75 * w, y0 + 0.45 * h], 180, 360, fill=_jit(rng, (90, 90, 90), 20),
          width=max(2, int(0.04 * w)))
    for fx in (0.25, 0.75):
        _ellipse(d, b, fx - 0.1, 0.8, fx + 0.1, 1.0, fill=(40, 40, 40))


def _draw_table(d, b, rng, wood):
    _rect(d, b, 0.02, 0.3, 0.98, 0.42, fill=wood)
    _rect(d, b, 0.08, 0.42, 0.17, 0.98, fill=wood)
    _rect(d, b, 0.83, 0.42, 0.92, 0.98, fill=wood)
    _rect(d, b, 0.45, 0.05, 0.55, 0.3, fill=wood)  # a lamp/vase silhouette on the table


def _draw_wood_furniture(d, b, rng):
    _draw_table(d, b, rng, _jit(rng, (140, 90, 45), 20))


def _draw_garden_furniture(d, b, rng):
    _draw_table(d, b, rng, _jit(rng, [(245, 245, 245), (70, 70, 75)][int(rng.integers(2))], 15))


def _draw_fabric(d, b, rng):
    c1 = _jit(rng, _BRIGHT[int(rng.integers(len(_BRIGHT)))], 40)
    c2 = _jit(rng, (240, 240, 235), 15)
    n = int(rng.integers(4, 9))
    kind = int(rng.integers(3))
    _rect(d, b, 0.05, 0.05, 0.95, 0.95, fill=c2)
    for i in range(n):
        f0, f1 = 0.05 + 0.9 * i / n, 0.05 + 0.9 * (i + 0.5) / n
        if kind == 0:
            _rect(d, b, 0.05, f0, 0.95, f1, fill=c1)
        elif kind == 1:
            _rect(d, b, f0, 0.05, f1, 0.95, fill=c1)
        else:  # polka dots
            for j in range(n):
                g0 = 0.05 + 0.9 * j / n
                _ellipse(d, b, f0, g0, f1, g0 + 0.45 / n, fill=c1)


def _draw_package(d, b, rng):
    warm = [(200, 40, 30), (230, 120, 20), (240, 190, 30), (120, 70, 30)]
    _poly(d, b, [(0.2, 0.05), (0.8, 0.05), (0.9, 0.95), (0.1, 0.95)], fill=_jit(rng, warm[int(rng.integers(4))], 20))
    _rect(d, b, 0.3, 0.4, 0.7, 0.65, fill=_jit(rng, (250, 250, 245), 8))
    _rect(d, b, 0.2, 0.05, 0.8, 0.12, fill=_jit(rng, (60, 40, 30), 20))


def _draw_pens(d, b, rng):
    _rect(d, b, 0.05, 0.1, 0.7, 0.95, fill=_jit(rng, (235, 235, 250), 10), outline=(120, 120, 160))
    for k in range(int(rng.integers(4, 8))):
        fx = 0.1 + 0.1 * k
        _rect(d, b, fx, 0.05, fx + 0.05, 0.85, fill=_jit(rng, _BRIGHT[k % len(_BRIGHT)], 30))


def _draw_pool(d, b, rng):
    _ellipse(d, b, 0.0, 0.15, 1.0, 0.95, fill=_jit(rng, (20, 120, 220), 20))
    _ellipse(d, b, 0.1, 0.25, 0.9, 0.85, fill=_jit(rng, (60, 190, 235), 20))
    x0, y0, w, h = b
    for k in range(3):
        yy = y0 + (0.4 + 0.12 * k) * h
        d.line([(x0 + 0.25 * w, yy), (x0 + 0.75 * w, yy)], fill=(230, 250, 255), width=max(1, int(0.02 * w)))


def _draw_tool(d, b, rng):
    x0, y0, w, h = b
    lw = max(3, int(0.16 * w))
    d.line([(x0 + 0.15 * w, y0 + 0.85 * h), (x0 + 0.6 * w, y0 + 0.4 * h)], fill=_jit(rng, (245, 150, 0), 20), width=lw)
    d.line([(x0 + 0.6 * w, y0 + 0.4 * h), (x0 + 0.88 * w, y0 + 0.12 * h)], fill=_jit(rng, (160, 160, 165), 15),
           width=lw // 2)
    d.line([(x0 + 0.1 * w, y0 + 0.9 * h), (x0 + 0.3 * w, y0 + 0.7 * h)], fill=(20, 20, 20), width=lw)


# pattern -> (draw function, forced background or None). A forced background is part of the pattern
# (miniatures shot on dark, garden furniture on grass), not a per-row nuisance.
_VISUALS = {
    "old_book": (_draw_old_book, None), "cover": (_draw_cover, None), "book_stack": (_draw_book_stack, None),
    "game_case": (_draw_game_case, None), "pc_game": (_draw_pc_game, None), "gadget": (_draw_gadget, None),
    "pop_figure": (_draw_pop_figure, None), "war_figure": (_draw_war_figure, "dark"),
    "cards": (_draw_cards, None), "toy_blobs": (_draw_toy_blobs, None), "board": (_draw_board, None),
    "drone": (_draw_drone, None), "socks": (_draw_socks, None), "baby_gear": (_draw_baby_gear, None),
    "wood_furniture": (_draw_wood_furniture, None), "garden_furniture": (_draw_garden_furniture, "garden"),
    "fabric": (_draw_fabric, None), "package": (_draw_package, None), "pens": (_draw_pens, None),
    "pool": (_draw_pool, None), "tool": (_draw_tool, None),
}
VISUAL_NAMES: tuple[str, ...] = tuple(sorted(_VISUALS))
assert {c.visual for c in CLASS_DESIGN} == set(_VISUALS)


def render_image(visual: str, rng: np.random.Generator, size: int) -> Image.Image:
    """Draw one product photo of pattern ``visual``: background, object box, borders, colour jitter."""
    draw_fn, forced_bg = _VISUALS[visual]
    # Background: mostly white (studio shots), sometimes grey/black/pale colour.
    if forced_bg == "dark":
        bg = _jit(rng, (35, 30, 40), 15)
    else:
        u = rng.random()
        bg = ((255, 255, 255) if u < 0.6 else _jit(rng, (225, 225, 225), 15) if u < 0.75
              else (0, 0, 0) if u < 0.83 else _jit(rng, (235, 225, 205), 20))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    if forced_bg == "garden":
        horizon = int(size * rng.uniform(0.35, 0.55))
        d.rectangle([0, 0, size, horizon], fill=_jit(rng, (170, 210, 240), 15))
        d.rectangle([0, horizon, size, size], fill=_jit(rng, (70, 145, 55), 20))
    # Object box: random scale and position, so the model must not rely on exact pixel positions.
    s = rng.uniform(0.5, 0.95) * size
    x0, y0 = rng.uniform(0, size - s), rng.uniform(0, size - s)
    draw_fn(d, (x0, y0, s, s), rng)
    # Letterbox bands, as when a seller pads a non-square photo to 500x500.
    if rng.random() < 0.3:
        band = (255, 255, 255) if rng.random() < 0.6 else (0, 0, 0)
        t = int(size * rng.uniform(0.05, 0.2))
        if rng.random() < 0.5:
            d.rectangle([0, 0, size, t], fill=band)
            d.rectangle([0, size - t, size, size], fill=band)
        else:
            d.rectangle([0, 0, t, size], fill=band)
            d.rectangle([size - t, 0, size, size], fill=band)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    # Photometric jitter: per-channel gain (white balance) and offset (exposure) through a lookup
    # table, plus low-frequency noise (uneven lighting) drawn at 1/32 resolution and upsampled. Both
    # run in PIL's C code, which keeps 500 px generation fast.
    gain = rng.uniform(0.85, 1.15, size=3)
    offset = rng.uniform(-20, 20)
    ramp = np.arange(256, dtype=np.float64)
    lut = np.concatenate([np.clip(np.rint(ramp * g + offset), 0, 255) for g in gain]).astype(np.uint8)
    img = img.point(lut.tolist())
    lo = max(2, size // 32)
    # Mostly luminance (shading) with a little chroma, so white backgrounds stay near-white.
    noise = rng.normal(0.0, 6.0, size=(lo, lo, 1)) + rng.normal(0.0, 2.5, size=(lo, lo, 3))
    noise_img = Image.fromarray(np.clip(np.rint(noise + 128), 0, 255).astype(np.uint8))
    noise_img = noise_img.resize((size, size), Image.Resampling.BILINEAR)
    return ImageChops.add(img, noise_img, scale=1.0, offset=-128)


def _render_rows(tasks: list[tuple[str, str, int, int, int]]) -> int:
    """Worker: render and save a chunk of images. Each task is (path, visual, seed, row, size)."""
    for path, visual, seed, row, size in tasks:
        rng = np.random.default_rng([seed, _STREAM_IMAGE, row])
        render_image(visual, rng, size).save(path, format="JPEG", quality=JPEG_QUALITY)
    return len(tasks)


# ------------------------------------------------------------------------------------------- tables
MIN_TRAIN_PER_CLASS = 8  # floor per code on train rows (stratified folds need >= K)


def make_tables(n_train: int, n_test: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """The three CSV tables plus per-row generation info (true class, visual pattern).

    Returns ``(x_train, y_train, x_test, info)``; ``info`` holds arrays over all ``n_train + n_test``
    rows: ``content_code`` (the class the text/image were generated from), ``visual``, ``label_noise``.
    """
    n = n_train + n_test
    rng = np.random.default_rng([seed, _STREAM_GLOBAL])
    prior = np.array([CODE_COUNTS[c] for c in CODES], dtype=np.float64)
    prior /= prior.sum()
    content = rng.choice(len(CODES), size=n, p=prior)
    # Label noise on train rows only: the test labels are never written anyway.
    noisy = rng.random(n) < LABEL_NOISE
    noisy[n_train:] = False
    shift = rng.integers(1, len(CODES), size=n)  # never 0, so a noisy label is always a different class
    label = np.where(noisy, (content + shift) % len(CODES), content)
    # Small demo sets would leave the rarest codes with a row or two, and a stratified K-fold split
    # needs at least K of each: move rows of the commonest class to any class below the floor.
    floor = min(MIN_TRAIN_PER_CLASS, n_train // (2 * len(CODES)))
    for c in range(len(CODES)):
        short = floor - int((label[:n_train] == c).sum())
        if short > 0:
            donors = np.flatnonzero(label[:n_train] == np.bincount(label[:n_train]).argmax())[:short]
            content[donors] = c
            label[donors] = c
            noisy[donors] = False
    # Ids: unique, 9-10 digits, drawn jointly for train+test so the two sets never collide.
    productid = _unique_ints(rng, n, 100_000_000, 4_300_000_000)
    imageid = _unique_ints(rng, n, 100_000_000, 1_400_000_000)
    has_desc = rng.random(n) >= MISSING_DESCRIPTION
    other_visual = rng.random(n) < P_IMAGE_OTHER_PATTERN
    other_pick = rng.integers(len(VISUAL_NAMES), size=n)

    titles, descs, visuals = [], [], []
    for i in range(n):
        cls = _DESIGN[CODES[content[i]]]
        trng = np.random.default_rng([seed, _STREAM_TEXT, i])
        title = _make_title(trng, cls.text_pool)
        titles.append(title)
        descs.append(_make_description(trng, cls.text_pool, title) if has_desc[i] else np.nan)
        visuals.append(VISUAL_NAMES[other_pick[i]] if other_visual[i] else cls.visual)

    cols = {"designation": titles, "description": descs, "productid": productid, "imageid": imageid}
    x_all = pd.DataFrame(cols)
    x_all["productid"] = x_all["productid"].astype(np.int64)
    x_all["imageid"] = x_all["imageid"].astype(np.int64)
    x_all["description"] = x_all["description"].astype(object)
    # Test index continues after train, as in the challenge files.
    x_train = x_all.iloc[:n_train].copy()
    x_test = x_all.iloc[n_train:].copy()
    x_train.index = pd.RangeIndex(0, n_train)
    x_test.index = pd.RangeIndex(n_train, n)
    y_train = pd.DataFrame({"prdtypecode": np.array([CODES[k] for k in label[:n_train]], dtype=np.int64)},
                           index=pd.RangeIndex(0, n_train))
    info = {"content_code": np.array([CODES[k] for k in content], dtype=np.int64),
            "visual": np.array(visuals), "label_noise": noisy}
    return x_train, y_train, x_test, info


def _unique_ints(rng: np.random.Generator, n: int, lo: int, hi: int) -> np.ndarray:
    """``n`` distinct int64 in [lo, hi), in random order (rejection of the rare collisions)."""
    out = np.empty(0, dtype=np.int64)
    while len(out) < n:
        cand = rng.integers(lo, hi, size=n - len(out) + 16, dtype=np.int64)
        merged = np.concatenate([out, cand])
        _, first = np.unique(merged, return_index=True)
        out = merged[np.sort(first)][:n]
    return out


def image_name(imageid: int, productid: int) -> str:
    """The challenge's image file name of a product: ``image_<imageid>_product_<productid>.jpg``."""
    return f"image_{int(imageid)}_product_{int(productid)}.jpg"


# ----------------------------------------------------------------------------------------- dataset
def _params(n_train: int, n_test: int, seed: int, image_size: int) -> dict:
    return {"generator_version": GENERATOR_VERSION, "seed": int(seed), "n_train": int(n_train),
            "n_test": int(n_test), "image_size": int(image_size)}


def _read_manifest(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_complete(out_dir: Path, manifest: dict) -> bool:
    """Every CSV present and each image folder holding exactly the expected number of JPEGs."""
    if not all((out_dir / f).is_file() for f in (X_TRAIN, Y_TRAIN, X_TEST)):
        return False
    for split, n in (("train", manifest["n_train"]), ("test", manifest["n_test"])):
        d = out_dir / f"image_{split}"
        if not d.is_dir() or sum(1 for p in d.iterdir() if p.suffix == ".jpg") != n:
            return False
    return True


_PARTIAL_RE = re.compile(r"^\.(?P<name>.+)\.partial-(?P<host>[^-]+)-(?P<pid>\d+)-")


def _remove_stale_partials(out_dir: Path) -> None:
    """Delete temp dirs left by killed runs on this host (their pid no longer exists)."""
    host = socket.gethostname().replace("-", "_")
    if not out_dir.parent.is_dir():
        return
    for p in out_dir.parent.iterdir():
        m = _PARTIAL_RE.match(p.name)
        if not m or m["name"] != out_dir.name or m["host"] != host or not p.is_dir():
            continue
        try:
            os.kill(int(m["pid"]), 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's


def _readme(params: dict, summary: dict) -> str:
    groups_text = {}
    groups_visual = {}
    for c in CLASS_DESIGN:
        groups_text.setdefault(c.text_pool, []).append(c.code)
        groups_visual.setdefault(c.visual, []).append(c.code)
    shared_text = [v for v in groups_text.values() if len(v) > 1]
    shared_visual = [v for v in groups_visual.values() if len(v) > 1]
    return f"""# Generated demo data (synthetic, not the Rakuten challenge data)

Written by `rakuten.data.demo` (generator version {params['generator_version']}, e.g. via
`src/make_demo_data.py`) with seed {params['seed']}: {params['n_train']} train rows, {params['n_test']} test rows,
{params['image_size']}x{params['image_size']} JPEG images. It copies the file layout of the ChallengeData
Rakuten France multimodal challenge (`{X_TRAIN}`, `{Y_TRAIN}`, `{X_TEST}`,
`image_train/`, `image_test/`) so that the whole pipeline runs without the real data.
Scores on it say nothing about the real leaderboard.

- Labels: the 27 real codes with the real class prior; {LABEL_NOISE:.0%} label noise.
- Descriptions missing: {summary['missing_description_pct']:.1f}% of train rows.
- Classes separable only by image (same text vocabulary): {shared_text}
- Classes separable only by text (same picture pattern): {shared_visual}
- Other classes differ in both modalities, with noise in both.

Regenerating with the same parameters gives byte-identical files. Do not edit by hand: the generator
recognises this folder by `{MANIFEST_NAME}` and reuses it only when the parameters match.
"""


def generate_demo_dataset(out_dir: str | Path, n_train: int, n_test: int, seed: int, image_size: int = 500,
                          overwrite: bool = False, n_jobs: int | None = None, progress: bool = True) -> dict:
    """Write a demo dataset into ``out_dir`` and return a summary dict.

    Idempotent: if ``out_dir`` already holds a complete demo dataset with the same parameters and
    generator version, nothing is written and the stored summary is returned (``skipped=True``).
    A non-empty ``out_dir`` that is anything else raises ValueError, unless ``overwrite`` is set
    *and* the folder is a previous demo dataset (recognised by its manifest): a folder that is not
    demo data is never deleted, since a mistyped ``--out`` could otherwise wipe real files.

    The dataset is built in a hidden temp folder beside ``out_dir`` and renamed into place at the
    end, so a killed run never leaves a half-written dataset at ``out_dir``.

    ``n_jobs``: worker processes for the images (default: up to 8 CPUs); the output does not depend
    on it. ``progress``: show a tqdm bar while writing images.
    """
    t0 = time.perf_counter()
    if n_train < 1 or n_test < 0:
        raise ValueError(f"need n_train >= 1 and n_test >= 0 (got {n_train}, {n_test})")
    if seed < 0:
        raise ValueError(f"seed must be >= 0 (got {seed})")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16 (got {image_size})")
    out_dir = Path(out_dir).resolve()
    params = _params(n_train, n_test, seed, image_size)

    if out_dir.exists():
        if not out_dir.is_dir():
            raise ValueError(f"{out_dir}: exists and is not a directory")
        if any(out_dir.iterdir()):
            manifest = _read_manifest(out_dir)
            existing_demo = isinstance(manifest, dict) and isinstance(manifest.get("params"), dict)
            if existing_demo and manifest["params"] == params and _is_complete(out_dir, params):
                if not overwrite:
                    return {**manifest["summary"], "out_dir": str(out_dir), "skipped": True,
                            "seconds": round(time.perf_counter() - t0, 2)}
            elif not existing_demo:
                raise ValueError(f"{out_dir}: directory is not empty and holds no demo dataset "
                                 f"({MANIFEST_NAME} missing); refusing to write there (choose an empty or "
                                 "new --out; it is never deleted, even with --overwrite)")
            elif not overwrite:
                what = ("an incomplete demo dataset" if manifest["params"] == params
                        else f"a demo dataset with other parameters {manifest['params']}")
                raise ValueError(f"{out_dir}: holds {what}; wanted {params}; pass overwrite=True "
                                 "(--overwrite) to replace it")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out_dir)
    host = socket.gethostname().replace("-", "_")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-{host}-{os.getpid()}-", dir=out_dir.parent))
    try:
        x_train, y_train, x_test, info = make_tables(n_train, n_test, seed)
        atomic_write_csv(tmp / X_TRAIN, x_train)
        atomic_write_csv(tmp / Y_TRAIN, y_train)
        atomic_write_csv(tmp / X_TEST, x_test)

        tasks = []
        for split, x, start in (("train", x_train, 0), ("test", x_test, n_train)):
            (tmp / f"image_{split}").mkdir()
            for k, (iid, pid) in enumerate(zip(x["imageid"].tolist(), x["productid"].tolist())):
                row = start + k
                tasks.append((str(tmp / f"image_{split}" / image_name(iid, pid)), str(info["visual"][row]),
                              int(seed), row, int(image_size)))
        _write_images(tasks, n_jobs, progress)

        missing = float(x_train["description"].isna().mean() * 100)
        counts = y_train["prdtypecode"].value_counts()
        summary = {**params, "out_dir": str(out_dir), "n_classes_train": int(counts.size),
                   "class_counts_train": {str(c): int(counts.get(c, 0)) for c in CODES},
                   "missing_description_pct": round(missing, 2),
                   "label_noise_rows": int(info["label_noise"][:n_train].sum()), "skipped": False}
        atomic_write_text(tmp / "README.md", _readme(params, summary))
        # The manifest goes last: it is what marks the folder as a complete demo dataset.
        atomic_write_json(tmp / MANIFEST_NAME, {"params": params, "summary": summary})
        _swap_into_place(tmp, out_dir, params)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


def _write_images(tasks: list, n_jobs: int | None, progress: bool) -> None:
    """Render every task, in worker processes when that pays off; the bytes do not depend on it."""
    if n_jobs is None:
        n_jobs = min(8, os.cpu_count() or 1)
    # Serial below ~0.5 s of work: starting spawn workers (each imports numpy, PIL and pandas) costs more.
    work = len(tasks) * (tasks[0][4] ** 2 if tasks else 0)
    if work < 300 * 500 * 500 // 4:
        n_jobs = 1
    chunk = 32
    chunks = [tasks[i:i + chunk] for i in range(0, len(tasks), chunk)]
    bar = tqdm(total=len(tasks), desc="writing images", unit="img", disable=not progress)
    try:
        done = 0
        if n_jobs > 1 and len(chunks) > 1:
            # spawn, not fork: the caller may have threads running (torch, tokenizers) and forking a
            # threaded process can deadlock. spawn re-imports the caller's main module, so a calling
            # script needs the usual ``if __name__ == "__main__":`` guard; if it lacks one the pool
            # breaks and we finish serially rather than fail.
            try:
                with ProcessPoolExecutor(max_workers=min(n_jobs, len(chunks)),
                                         mp_context=mp.get_context("spawn")) as ex:
                    for k in ex.map(_render_rows, chunks):
                        bar.update(k)
                        done += 1
            except BrokenProcessPool:
                log.warning("image worker pool failed (does the calling script lack an "
                            "`if __name__ == '__main__':` guard?); writing the images serially")
                done = 0  # chunks are idempotent (same bytes), so simply redo them all
                bar.reset()
        for c in chunks[done:]:
            bar.update(_render_rows(c))
    finally:
        bar.close()


def _swap_into_place(tmp: Path, out_dir: Path, params: dict) -> None:
    """Rename the finished temp folder to ``out_dir``, replacing an empty folder or an old demo set."""
    if out_dir.exists():
        if not any(out_dir.iterdir()):
            out_dir.rmdir()
        else:
            # Only reached for a previous demo dataset (checked by the caller): move it aside, then
            # delete it once the new one is in place.
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / "data")
            try:
                os.rename(tmp, out_dir)
            except OSError:
                os.replace(old / "data", out_dir)  # put the old one back rather than leave nothing
                raise
            shutil.rmtree(old, ignore_errors=True)
            return
    try:
        os.rename(tmp, out_dir)
    except OSError:
        # A concurrent run with the same parameters may have finished first: that is fine.
        manifest = _read_manifest(out_dir)
        if manifest is None or manifest.get("params") != params:
            raise
