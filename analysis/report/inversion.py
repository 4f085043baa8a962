"""The inversion section (Jones et al. 2022; SPEC §4, §11): for sweeps with inverted-image inputs,
per eps group, clean-image vs inverted-image similarity, inversion transfer, and the picture of
each model's inversions.

Data, each part shown only when present:
- pair rows with ``input_set == "inverted"`` (ordered: row model A's inversions shown to model B)
  for the representational measures, beside the same measures' clean rows;
- transfer rows on the inverted set, measures ``transfer_target`` / ``transfer_seed``: the
  fraction of A's inversions that B labels as the target class / as the seed class;
- the inverted images cached by ``analysis.inputs.extract`` at ``cache/inputs/<key16>.npz``
  (``X``, ``y`` = the targets' labels, ``info`` JSON, ``seed_idx`` / ``target_idx``); the seed
  and target images come from the eval set, reloaded as the trials drew it.
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.inputs import ModelRef, load_eval_sets, pair_seeds_and_targets
from analysis.report.figures import ARCH_SERIES, save, small_multiples
from analysis.report.markup import figure, note, section
from analysis.report.markup import table as markup_table
from analysis.report.tables import KIND, eps_text, group_interval, interval_text, measure_info
from analysis.reproduction.study import INVERSION_NOT_DISCRIMINATIVE
from trainables.errors import UserError

__all__ = ["INVERTED", "TRANSFER", "direction_groups", "similarity_table", "transfer_table",
           "Inversions", "find_inversions", "inversions_figure", "section_html"]

log = logging.getLogger(__name__)

INVERTED = "inverted"
TRANSFER = ("transfer_target", "transfer_seed")
ARCHS = ("different-arch", "same-arch-different-seed")
IMAGE_EXAMPLES = 8


def _side(eps: float) -> str:
    return "standard" if eps == 0 else f"robust ε{eps_text(eps)}"


def direction_groups(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows with ``direction`` (``robust ε0.1 → standard``: A's eps, then B's) and its sort key.
    Clean rows are stored once per unordered pair: a clean pair across eps stands in both
    directions (the same models, so the same clean value)."""
    rows = rows[rows["arch_group"].isin(ARCHS) & (rows["status"] == "ok")]
    clean = rows["input_set"] != INVERTED
    cross = clean & ~np.isclose(rows["eps_a"].astype(float), rows["eps_b"].astype(float))
    swap = {"model_a": "model_b", "seed_a": "seed_b", "arch_a": "arch_b", "eps_a": "eps_b"}
    swap.update({v: k for k, v in swap.items()})
    rows = pd.concat([rows, rows[cross].rename(columns=swap)], ignore_index=True)
    ea, eb = rows["eps_a"].astype(float), rows["eps_b"].astype(float)
    rows["direction"] = [f"{_side(a)} → {_side(b)}" for a, b in zip(ea, eb, strict=True)]
    rows["direction_key"] = list(zip((ea != eb).astype(int), ea, eb, strict=True))
    return rows


def _grouped(rows: pd.DataFrame, measures: list[str]) -> pd.DataFrame:
    """``group_interval`` per (input set, measure, params, direction, arch group)."""
    out = []
    keys = ["input_set", "measure", "params", "direction", "arch_group"]
    for key, g in rows[rows["measure"].isin(measures)].groupby(keys, sort=False):
        label = dict(zip(keys, key, strict=True))
        ordered = label["input_set"] == INVERTED
        out.append({**label, "direction_key": g["direction_key"].iloc[0], "n": len(g),
                    **group_interval(g, KIND[label["arch_group"]], symmetric=not ordered)})
    out.sort(key=lambda r: (r["direction_key"], ARCHS.index(r["arch_group"]), r["measure"],
                            r["input_set"]))
    return pd.DataFrame(out)


def similarity_table(tidy: pd.DataFrame) -> pd.DataFrame:
    """Clean vs inverted similarity per direction group and arch group, for every
    representational measure that has inverted rows (``_grouped`` columns)."""
    inv = tidy[(tidy["input_set"] == INVERTED) & ~tidy["measure"].isin(TRANSFER)]
    measures = sorted(m for m in inv["measure"].unique() if measure_info(m).word == "similarity"
                      or not measure_info(m).higher_is_more_similar)
    clean = tidy[(tidy["input_set"] == "clean") & tidy["measure"].isin(measures)]
    return _grouped(direction_groups(pd.concat([clean, inv])), measures)


def transfer_table(tidy: pd.DataFrame) -> pd.DataFrame:
    """Inversion transfer per direction group and arch group (``_grouped`` columns)."""
    rows = tidy[(tidy["input_set"] == INVERTED) & tidy["measure"].isin(TRANSFER)]
    return _grouped(direction_groups(rows), list(TRANSFER))


def similarity_figure(table: pd.DataFrame, *, title: str, path: Path) -> Path:
    """Per measure: clean vs inverted similarity of cross-architecture pairs per direction group
    (same-architecture pairs where the sweep has one architecture)."""
    arch = "different-arch" if (table["arch_group"] == "different-arch").any() else ARCHS[1]
    sub = table[table["arch_group"] == arch]
    styles = {"clean": ("clean images", "#8a8a8a", ":", "o"),
              INVERTED: ("inverted images", "#1f5fa8", "-", "D")}
    return small_multiples(sub, x="direction", series="input_set", styles=styles, path=path,
                           title=f"{title} ({ARCH_SERIES[arch][0]})",
                           xlabel="A's eps → B's eps (A's inversions shown to B)", ncols=3,
                           size=(4.2, 2.8))


def transfer_figure(table: pd.DataFrame, *, title: str, path: Path) -> Path:
    """Transfer to the target class and to the seed class per direction group, cross- and
    same-architecture pairs as two lines."""
    return small_multiples(table, x="direction", series="arch_group", path=path, title=title,
                           xlabel="A's eps → B's eps (A's inversions shown to B)", ncols=2,
                           size=(5.0, 2.8))


@dataclass
class Inversions:
    """Cached inverted images of one inversion setting.

    Attributes:
        params: the ``inverted`` input set's options (``info.params`` of the cache files).
        images: run id -> (T, C, H, W) float32 inversions.
        files: run id -> the ``.npz`` they came from.
        target_y: (T,) the targets' labels; seed_idx / target_idx: (T,) indices into the eval
            set (None when the cache files predate them and the eval set is not at hand).
        seeds, targets: (T, C, H, W) the eval images they started from / were matched to (None
            when the eval set cannot be reloaded here).
        note: why seeds/targets are missing.
    """

    dataset: str
    params: dict
    images: dict[str, np.ndarray]
    files: dict[str, Path]
    target_y: np.ndarray
    seed_idx: np.ndarray | None = None
    target_idx: np.ndarray | None = None
    seed_y: np.ndarray | None = None
    seeds: np.ndarray | None = None
    targets: np.ndarray | None = None
    note: str = ""


def _info(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return json.loads(str(z["info"])) if "info" in z.files else {}


def find_inversions(out_dir: Path, pairs: pd.DataFrame, models: pd.DataFrame,
                    dataset: str) -> Inversions | None:
    """The cached inversions of ``dataset`` to show: the setting whose inputs the pair table
    used, else the one with the most models (then the most iterations). None if there are none."""
    files = sorted((out_dir / "cache" / "inputs").glob("*.npz"))
    found: dict[str, dict[str, Path]] = {}
    for f in files:
        info = _info(f)
        if info.get("set") == INVERTED and info.get("dataset") == dataset and info.get("source"):
            found.setdefault(json.dumps(info.get("params", {}), sort_keys=True), {})[
                info["source"]] = f
    if not found:
        return None
    used = {h[:16] for h in pairs.loc[pairs["input_set"] == INVERTED, "inputs_hash"]}
    known = set(models["run_id"])

    def rank(k: str) -> tuple:
        return (any(p.stem in used for p in found[k].values()), len(found[k]),
                json.loads(k).get("iterations") or 0)

    best = max(found, key=rank)
    chosen = {r: p for r, p in found[best].items() if r in known}
    if not chosen:
        return None
    arrays = {r: np.load(p, allow_pickle=False) for r, p in chosen.items()}
    first = next(iter(arrays.values()))
    inv = Inversions(dataset, json.loads(best), {r: z["X"] for r, z in arrays.items()}, chosen,
                     first["y"], *(first[k] if k in first.files else None
                                   for k in ("seed_idx", "target_idx", "seed_y")))
    for z in arrays.values():
        z.close()
    _eval_images(inv, models[models["run_id"].isin(list(chosen))])
    return inv


def _eval_images(inv: Inversions, models: pd.DataFrame) -> None:
    """Fill in seeds/targets from the eval set, reloaded as the trials drew it (and the pairing
    from its labels where the cache files lack it); on failure, say why in ``inv.note``."""
    fields = [f for f in ModelRef.__dataclass_fields__ if f != "params"]
    refs = [ModelRef(**{f: r[f] for f in fields if f in r}, params={})
            for r in models.to_dict("records")]
    try:
        base = load_eval_sets(refs)[inv.dataset]
    except (UserError, OSError, ValueError) as exc:  # data not on this machine, other hash
        inv.note = f"the seed and target images are not shown: {exc}"
        log.warning("inversion figure without seeds/targets: %s", exc)
        return
    if inv.seed_idx is None or inv.target_idx is None:
        inv.seed_idx, inv.target_idx = pair_seeds_and_targets(
            base.y, seed=inv.params["pairing_seed"], num_targets=inv.params.get("num_targets"))
    inv.seed_y = base.y[inv.seed_idx]
    inv.seeds, inv.targets = base.X[inv.seed_idx], base.X[inv.target_idx]


def _examples(inv: Inversions, k: int) -> list[int]:
    """Up to k inversions, one per target class first (then one per seed class), in order."""
    picked, seen = [], set()
    for i, t in enumerate(inv.target_y):
        if int(t) not in seen:
            picked.append(i)
            seen.add(int(t))
    rest = [i for i in range(len(inv.target_y)) if i not in picked]
    return (picked + rest)[:k]


def _show(ax, img: np.ndarray) -> None:
    img = np.clip(np.asarray(img, dtype=float), 0, 1)
    if img.shape[0] == 1:
        ax.imshow(img[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(np.transpose(img, (1, 2, 0)), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def inversions_figure(inv: Inversions, order: pd.DataFrame, *, title: str, path: Path) -> Path:
    """Rows: example (seed, target) pairs; columns: the seed, the target, then every model's
    inversion (models ordered by eps, arch, seed). The CSV names what each cell shows."""
    order = order[order["run_id"].isin(list(inv.images))]
    lead = [("seed", inv.seeds), ("target", inv.targets)] if inv.seeds is not None else []
    cols = [*(c for c, _ in lead), *order["name"]]
    rows = _examples(inv, IMAGE_EXAMPLES)
    cell = 0.82
    fig, axes = plt.subplots(len(rows), len(cols), squeeze=False,
                             figsize=(cell * len(cols) + 0.6, cell * len(rows) + 1.0))
    data = []
    for i, n in enumerate(rows):
        pics = [img[n] for _, img in lead] + [inv.images[r][n] for r in order["run_id"]]
        for j, (ax, pic) in enumerate(zip(axes[i], pics, strict=True)):
            _show(ax, pic)
            if i == 0:
                ax.set_title(cols[j].replace(" ε", "\nε"), fontsize=6.5)
            data.append({"row": i, "column": cols[j], "inversion_index": n,
                         "seed_idx": None if inv.seed_idx is None else int(inv.seed_idx[n]),
                         "target_idx": None if inv.target_idx is None else int(inv.target_idx[n]),
                         "seed_label": None if inv.seed_y is None else int(inv.seed_y[n]),
                         "target_label": int(inv.target_y[n])})
        label = (f"{int(inv.seed_y[n])}→{int(inv.target_y[n])}" if inv.seed_y is not None
                 else f"→{int(inv.target_y[n])}")
        axes[i][0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    fig.subplots_adjust(wspace=0.06, hspace=0.08)
    return save(fig, path, pd.DataFrame(data))


def _interval_rows(table: pd.DataFrame, cols: list[tuple[str, str]]) -> list[tuple]:
    """One row per (direction, arch group); a column per (input set or measure) pair."""
    rows = []
    for (direction, arch), g in table.groupby(["direction", "arch_group"], sort=False):
        cell = {(r["input_set"], r["measure"]): interval_text(r) for _, r in g.iterrows()}
        rows.append((direction, ARCH_SERIES[arch][0], *(cell.get(c, "") for c in cols)))
    return rows


def _similarity_part(tidy: pd.DataFrame, dataset: str, rdir: Path) -> str:
    table = similarity_table(tidy)
    if table.empty:
        return note("No pair rows on inverted images in `pairs.parquet`: run `python -m analysis "
                    "run SWEEP --input-sets clean,inverted` to compare the models on them.")
    table.drop(columns="direction_key").to_csv(rdir / f"inverted_similarity_{dataset}.csv",
                                               index=False)
    path = similarity_figure(table, path=rdir / f"inverted_vs_clean_{dataset}.png",
                             title=f"Clean vs inverted images, per eps group ({dataset})")
    cols = [(s, m) for m in sorted(table["measure"].unique()) for s in ("clean", INVERTED)]
    head = ["A → B", "pairs", *(f"{m} ({s})" for s, m in cols)]
    return figure(path) + markup_table(head, _interval_rows(table, cols))


def _transfer_part(tidy: pd.DataFrame, dataset: str, rdir: Path) -> str:
    table = transfer_table(tidy)
    if table.empty:
        return note("Inversion transfer is not in `pairs.parquet` for this sweep (no "
                    "`transfer_target` / `transfer_seed` rows on the inverted images): how often "
                    "model B labels model A's inversion as the target class cannot be shown.")
    table.drop(columns="direction_key").to_csv(rdir / f"inversion_transfer_{dataset}.csv",
                                               index=False)
    path = transfer_figure(table, path=rdir / f"inversion_transfer_{dataset}.png",
                           title=f"Inversion transfer: how B labels A's inversions ({dataset})")
    cols = [(INVERTED, m) for m in TRANSFER if (table["measure"] == m).any()]
    head = ["A → B", "pairs", *(f"{m}" for _, m in cols)]
    return figure(path) + markup_table(head, _interval_rows(table, cols))


def section_html(tidy: pd.DataFrame, pairs: pd.DataFrame, models: pd.DataFrame,
                 order: pd.DataFrame, *, out_dir: Path, rdir: Path) -> str:
    """The inversion section of every dataset with inverted pair rows or cached inversions
    ("" when the sweep has neither)."""
    parts = []
    for dataset in sorted(models["dataset"].unique()):
        sub = tidy[tidy["dataset"] == dataset]
        has_rows = (sub["input_set"] == INVERTED).any()
        images = find_inversions(out_dir, pairs, models, dataset)
        if not has_rows and images is None:
            continue
        body = [f"<h3>{html.escape(dataset)}</h3>"]
        if dataset in INVERSION_NOT_DISCRIMINATIVE:
            body.append(note(INVERSION_NOT_DISCRIMINATIVE[dataset], cls="warn"))
        body += [_similarity_part(sub, dataset, rdir), _transfer_part(sub, dataset, rdir)]
        if images is not None:
            path = inversions_figure(images, order, path=rdir / f"inversions_{dataset}.png",
                                     title=f"Inversions per model ({dataset}): seed, target, "
                                           f"then each model's inversion of the target")
            body.append(figure(path, f"{len(images.images)} models, "
                                     f"{images.params.get('iterations')} iterations; row label "
                                     "= seed class → target class. " + images.note))
        parts.append("".join(body))
    if not parts:
        return ""
    intro = note("Image inversion (Jones et al. 2022; SPEC §4): each model A turns a seed image "
                 "into one whose penultimate features match a target image's. Pairs are ordered: "
                 "A's inversions shown to B. If robust models share features, B sees A's "
                 "inversions as A does: inverted-image similarity and transfer to the target "
                 "class rise with eps, while clean-image similarity stays alike (Jones's "
                 "confound).")
    return section("inversion", "Inverted images", intro + "".join(parts))
