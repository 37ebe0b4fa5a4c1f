"""Published figures (``../shared/ANCHORS.md``) carried into the project as data, with their sources.

Every anchor was measured on other data and splits than ours (the thesis: the 55,116 rows with a
description and its own 90/10 and 80/20 splits; SIGIR: the hidden test set; ChallengeData: one
repository's own 20% holdout), so ``other_data`` is always True: they place our numbers, they are not
a like-for-like comparison. Values are fractions (0.9245), as our metrics are.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

THESIS = "Fattouh (ELTE, 2021) thesis"
SIGIR = "SIGIR eCom'20 Rakuten Data Challenge leaderboard"
CHALLENGEDATA = "ChallengeData (ENS) edition, public repository"

THESIS_DATA = "55,116 train rows with a description"


@dataclass(frozen=True)
class Anchor:
    """One published figure: what was measured, its value (a fraction), metric, source, table and split;
    ``other_data`` (always True) and ``plot`` (shown on the leaderboard chart)."""
    name: str            # what was measured
    value: float         # fraction
    metric: str          # macro_f1 | weighted_f1 | accuracy
    source: str          # where it is published (THESIS / SIGIR / CHALLENGEDATA)
    table: str           # table or leaderboard phase
    split: str           # the data it was measured on
    other_data: bool = True
    plot: bool = False   # shown on the leaderboard chart

    def as_dict(self) -> dict:
        """The anchor's fields as a plain dict."""
        return asdict(self)


def _thesis(rows: list[tuple], table: str, split: str, plot_names: tuple[str, ...] = ()) -> list[Anchor]:
    out = []
    for name, acc, f1 in rows:
        out.append(Anchor(f"thesis: {name}", f1 / 100, "macro_f1", THESIS, table, split,
                          plot=name in plot_names))
        out.append(Anchor(f"thesis: {name}", acc / 100, "accuracy", THESIS, table, split))
    return out


_VAL_90_10 = f"{THESIS_DATA}; 90/10 train/validation split, validation set"
_TEST_80_20 = f"{THESIS_DATA}; 80/20 split, test set"

ANCHORS: tuple[Anchor, ...] = tuple(
    _thesis([
        ("CamemBERT title", 90.19, 87.38),
        ("CamemBERT description", 86.98, 84.83),
        ("FlauBERT title", 92.31, 90.32),
        ("FlauBERT description", 84.43, 84.43),
        ("SE-ResNeXt-50", 59.25, 54.30),
        ("hierarchical, concat base, concat final", 92.80, 92.47),
        ("hierarchical, concat base, add final", 92.75, 92.45),
        ("hierarchical, concat base, average final", 92.86, 92.47),
        ("hierarchical, average base, average final", 93.20, 92.67),
    ], "Table 6.1", _VAL_90_10, ("hierarchical, average base, average final",))
    + _thesis([
        ("baseline fusion (concat text input), add", 92.15, 88.00),
        ("baseline fusion, concat", 93.16, 91.36),
        ("baseline fusion, average", 93.46, 91.83),
    ], "Table 6.2", _VAL_90_10)
    + _thesis([
        ("hierarchical avg/avg + dropout", 92.49, 90.00),
        ("hierarchical avg/avg + dropout, FC, non-linearity", 92.42, 91.11),
    ], "Table 6.3", _VAL_90_10)
    + _thesis([
        ("CamemBERT title (test)", 90.03, 86.06),
        ("CamemBERT description (test)", 86.03, 84.31),
        ("FlauBERT title (test)", 88.81, 84.24),
        ("FlauBERT description (test)", 85.29, 83.27),
        ("SE-ResNeXt-50 (test)", 51.00, 41.50),
        ("hierarchical, concat base, add final (test)", 91.94, 87.29),
        ("hierarchical, concat base, concat final (test)", 91.64, 90.39),
        ("hierarchical, concat base, average final (test)", 92.23, 90.45),
        ("hierarchical, average base, average final (test)", 92.03, 87.70),
    ], "Table 6.4", _TEST_80_20, ("CamemBERT title (test)", "SE-ResNeXt-50 (test)",
                                  "hierarchical, concat base, average final (test)"))
    + _thesis([
        ("baseline fusion, add (test)", 92.22, 90.38),
        ("baseline fusion, average (test)", 92.28, 90.31),
        ("baseline fusion, concat (test)", 92.08, 90.79),
    ], "Tables 6.5, 6.7", _TEST_80_20, ("baseline fusion, concat (test)",))
) + (
    Anchor("SIGIR: pa_curis (1st), ensemble", 0.9144, "macro_f1", SIGIR, "phase 2 / final",
           "hidden test set", plot=True),
    Anchor("SIGIR: pa_curis (1st), decision fusion", 0.9094, "macro_f1", SIGIR, "phase 1", "hidden test set"),
    Anchor("SIGIR: pa_curis, text only", 0.8993, "macro_f1", SIGIR, "phase 1", "hidden test set", plot=True),
    Anchor("SIGIR: pa_curis, image only", 0.6921, "macro_f1", SIGIR, "phase 1", "hidden test set", plot=True),
    Anchor("SIGIR: pa_curis, feature-level fusion", 0.8987, "macro_f1", SIGIR, "phase 1", "hidden test set"),
    Anchor("SIGIR: Team Transformer, Verma et al. (3rd)", 0.9053, "macro_f1", SIGIR, "phase 2 / final",
           "hidden test set", plot=True),
    Anchor("SIGIR: Team Transformer, Verma et al. (3rd)", 0.9194, "macro_f1", SIGIR, "phase 1",
           "hidden test set"),
    Anchor("ChallengeData: CamemBERT + image, LightGBM stack", 0.911, "weighted_f1", CHALLENGEDATA,
           "repository README", "its own 20% holdout of the ChallengeData train set"),
)


def anchors(metric: str | None = None, plotted_only: bool = False) -> list[Anchor]:
    """The published figures, optionally of one metric and/or only those shown on the chart."""
    return [a for a in ANCHORS if (metric is None or a.metric == metric) and (a.plot or not plotted_only)]


# Public leaderboards, top entries (``../shared/ANCHORS.md``): (rank, team, score). ChallengeData
# ranks by weighted-F1 on its hidden test set (28 February 2025); SIGIR eCom'20 by macro-F1 (final
# phase). Ranks without a published team name are kept as the rank alone.
PUBLIC_LEADERBOARDS: dict[str, dict] = {
    "challengedata": {"metric": "weighted_f1", "source": "ChallengeData public leaderboard, 28 Feb 2025",
                      "entries": [(1, "OISNARD & Raiv68 & Lramaye", 0.9196), (2, "elieS", 0.9037), (3, "", 0.9030),
                                  (4, "", 0.9021), (5, "", 0.9000), (10, "", 0.8903)]},
    "sigir": {"metric": "macro_f1", "source": "SIGIR eCom'20 final phase",
              "entries": [(1, "pa_curis", 0.9144), (3, "Team Transformer", 0.9053)]},
}


def would_rank(score: float, board: str) -> str:
    """Where ``score`` would sit among the published entries of ``board`` (e.g. "between #5 and #10",
    "above #1", "below #10"). The caller marks it as a CV score against a hidden-test leaderboard."""
    entries = sorted(PUBLIC_LEADERBOARDS[board]["entries"], key=lambda e: -e[2])
    above = [e for e in entries if e[2] > score]
    if not above:
        return f"above #{entries[0][0]}"
    if len(above) == len(entries):
        return f"below #{entries[-1][0]}"
    return f"between #{above[-1][0]} and #{entries[len(above)][0]}"
