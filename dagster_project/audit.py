"""Split audit for any image dataset: which groups and duplicate pairs leak across splits.

Given per-image metadata with a group column (lesion, patient), a train/val/test split and,
optionally, known duplicate pairs, the audit counts for each two splits and for all three:
the groups that span them, their images in those splits, and the image tuples (rows of the
join of those splits on the group: sum of n_a*n_b, or n_a*n_b*n_c for three splits, as
published audits count them). Duplicate pairs are counted the same way over the components
of the pair graph, plus the pairs whose two images lie in different splits. The correction
moves every connected component of "same group" ∪ "duplicate pair" that spans splits wholly
to train (the DermaMNIST-C correction, made transitive), and the corrected split is audited
again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import polars as pl

from dagster_project.splits import SPLITS, components

SPLIT_SETS = (*combinations(SPLITS, 2), SPLITS)
TRAIN = SPLITS.index("train")
PAIR_COLUMNS = (("image_a", "image_b"), ("from_img", "to_img"))
_IMAGE_SUFFIX = r"(?i)\.(jpe?g|png|bmp|tiff?|heic|webp)$"


@dataclass(frozen=True)
class LeakCount:
    """Leak through one kind of link for one set of splits (two splits, or all three).

    groups: groups (or components) with images in every split of the set; images: their
    images in those splits; tuples: rows of the join of those splits on the group; pairs:
    duplicate pairs whose two images lie in two different splits of the set (pair audits of
    two splits only).
    """

    splits: tuple[str, ...]
    groups: int
    images: int
    tuples: int
    pairs: int | None = None


@dataclass(frozen=True)
class Leaks:
    """Leak tables of one split: by group, by duplicate pair (None without pairs), and by
    the union of both (what the correction removes)."""

    by_group: list[LeakCount]
    by_pair: list[LeakCount] | None
    combined: list[LeakCount]

    @property
    def clean(self) -> bool:
        """True when no group, component or pair spans two splits."""
        tables = [self.by_group, self.combined, *([self.by_pair] if self.by_pair else [])]
        return all(row.groups == 0 and not row.pairs for table in tables for row in table)


@dataclass(frozen=True)
class AuditReport:
    """The audit of one split and of its correction."""

    id_col: str
    group_col: str
    n_images: int
    n_groups: int
    n_unassigned: int
    sizes: dict[str, int]
    n_pairs: int
    n_pairs_unassigned: int
    n_pairs_across_groups: int
    leaks: Leaks
    moved_to_train: dict[str, int]
    corrected_sizes: dict[str, int]
    corrected_leaks: Leaks
    leaking_groups: list[dict]
    corrected_split: pl.DataFrame

    def to_dict(self) -> dict:
        """JSON-ready form (without the corrected split, which is written as CSV)."""
        out = {k: v for k, v in asdict(self).items() if k != "corrected_split"}
        out["leaks"]["clean"] = self.leaks.clean
        out["corrected_leaks"]["clean"] = self.corrected_leaks.clean
        return out


def read_split_csv(path: str | Path, id_col: str = "image_id") -> pl.DataFrame:
    """A split file: `image_id,split` or `split,index,image_id` (extra columns ignored)."""
    path = Path(path)
    df = pl.read_csv(path, infer_schema=False)
    missing = [c for c in (id_col, "split") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {df.columns}")
    df = df.select(id_col, "split").with_row_index("line", offset=2)
    _check_split_values(df, id_col, str(path))
    return df.drop("line")


def read_pairs_csv(*paths: str | Path) -> pl.DataFrame:
    """Known duplicate pairs from CSV files or folders of them (every *.csv inside).

    Accepts `image_a,image_b` or `from_img,to_img` columns (others ignored); a trailing image
    file extension (`ISIC_0025323.jpg`) is dropped so ids match the metadata.
    """
    files = sorted(
        f for p in map(Path, paths) for f in (sorted(p.glob("*.csv")) if p.is_dir() else [p])
    )
    if not files:
        raise ValueError(f"no pair CSV found in {[str(p) for p in paths]}")
    frames = []
    for f in files:
        df = pl.read_csv(f, infer_schema=False)
        cols = next((c for c in PAIR_COLUMNS if set(c) <= set(df.columns)), None)
        if cols is None:
            raise ValueError(
                f"{f}: expected columns image_a,image_b or from_img,to_img; found {df.columns}"
            )
        frames.append(
            df.select(
                image_a=pl.col(cols[0]).str.strip_chars().str.replace(_IMAGE_SUFFIX, ""),
                image_b=pl.col(cols[1]).str.strip_chars().str.replace(_IMAGE_SUFFIX, ""),
                source=pl.lit(f.name),
            )
        )
    return pl.concat(frames)


def _check_split_values(df: pl.DataFrame, id_col: str, where: str) -> None:
    bad = df.filter(~pl.col("split").is_in(SPLITS))
    if bad.height:
        row = bad.row(0, named=True)
        line = f", line {row['line']}" if "line" in row else ""
        raise ValueError(
            f"{where}{line}: image {row[id_col]!r} has split {row['split']!r}; "
            f"expected one of {', '.join(SPLITS)}"
        )
    dup = df.filter(pl.col(id_col).is_duplicated())
    if dup.height:
        raise ValueError(f"{where}: image {dup[id_col][0]!r} is listed more than once")


def _leak_table(
    comp: np.ndarray, split: np.ndarray, pair_splits: np.ndarray | None
) -> list[LeakCount]:
    """comp: component code per image; split: split index per image (0..2);
    pair_splits: (n_pairs, 2) split indexes of the two images of each pair, or None."""
    n = np.zeros((comp.max() + 1 if len(comp) else 0, len(SPLITS)), dtype=np.int64)
    np.add.at(n, (comp, split), 1)
    rows = []
    for names in SPLIT_SETS:
        idx = [SPLITS.index(s) for s in names]
        spans = (n[:, idx] > 0).all(axis=1)
        sub = n[spans][:, idx]
        pairs = None
        if pair_splits is not None and len(idx) == 2:
            a, b = pair_splits[:, 0], pair_splits[:, 1]
            pairs = int((((a == idx[0]) & (b == idx[1])) | ((a == idx[1]) & (b == idx[0]))).sum())
        rows.append(
            LeakCount(
                splits=names,
                groups=int(spans.sum()),
                images=int(sub.sum()),
                tuples=int(sub.prod(axis=1).sum()),
                pairs=pairs,
            )
        )
    return rows


def _leaks(
    split: np.ndarray, group: np.ndarray, pair_idx: np.ndarray | None
) -> tuple[Leaks, np.ndarray]:
    """Leak tables for images with split index `split`, group code `group` and pairs given
    as (n_pairs, 2) image indexes; also returns the combined component of each image."""
    n_img = len(split)
    n_groups = group.max() + 1 if n_img else 0
    no_pairs = np.empty((0, 2), dtype=np.int64)
    pu, pv = (no_pairs if pair_idx is None else pair_idx).T
    combined = components(
        n_img + n_groups,
        np.concatenate([np.arange(n_img), pu]),
        np.concatenate([n_img + group, pv]),
    )[:n_img]
    by_pair = None
    pair_splits = None
    if pair_idx is not None:
        pair_splits = split[pair_idx]
        by_pair = _leak_table(components(n_img, pu, pv), split, pair_splits)
    leaks = Leaks(
        by_group=_leak_table(group, split, None),
        by_pair=by_pair,
        combined=_leak_table(combined, split, pair_splits),
    )
    return leaks, combined


def audit_split(
    metadata: pl.DataFrame,
    split: pl.DataFrame,
    group_col: str,
    id_col: str = "image_id",
    pairs: pl.DataFrame | None = None,
    default_split: str | None = None,
) -> AuditReport:
    """Audit `split` (id_col, split) of the images in `metadata` (id_col, group_col).

    Metadata images absent from `split` get `default_split` (for files that list only val
    and test) or, when it is None, stay out of the audit (counted as unassigned). A null
    group makes an image its own group. `pairs` (image_a, image_b) are known duplicates.
    """
    for name, df, cols in (
        ("metadata", metadata, (id_col, group_col)),
        ("split", split, (id_col, "split")),
    ):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise ValueError(f"{name} is missing column(s) {missing}; found {df.columns}")
    if default_split is not None and default_split not in SPLITS:
        raise ValueError(f"default_split must be one of {SPLITS}, got {default_split!r}")
    meta = metadata.select(pl.col(id_col).cast(pl.String), pl.col(group_col).cast(pl.String))
    dup = meta.filter(pl.col(id_col).is_duplicated())
    if dup.height:
        raise ValueError(f"metadata: image {dup[id_col][0]!r} appears more than once")
    listed = split.select(pl.col(id_col).cast(pl.String), pl.col("split").cast(pl.String))
    _check_split_values(listed, id_col, "split")
    unknown = listed.join(meta, on=id_col, how="anti")
    if unknown.height:
        raise ValueError(
            f"split: {unknown.height} images are not in the metadata "
            f"(first: {unknown[id_col][0]!r})"
        )
    table = meta.join(listed, on=id_col, how="left")
    if default_split is not None:
        table = table.with_columns(pl.col("split").fill_null(default_split))
    n_unassigned = table["split"].null_count()
    table = table.drop_nulls("split").sort(id_col)

    # Null groups become singleton groups named after the image.
    group_code = (
        table.select(
            pl.coalesce(pl.col(group_col), pl.lit("\x00") + pl.col(id_col)).rank("dense") - 1
        )
        .to_series()
        .cast(pl.Int64)
        .to_numpy()
    )
    split_idx = table["split"].replace_strict(SPLITS, range(len(SPLITS))).cast(pl.Int64).to_numpy()

    pair_idx, n_pairs, n_pairs_unassigned, n_pairs_across = None, 0, 0, 0
    if pairs is not None:
        pair_idx, n_pairs, n_pairs_unassigned = _pair_indexes(pairs, meta, table, id_col)
        n_pairs_across = int((group_code[pair_idx[:, 0]] != group_code[pair_idx[:, 1]]).sum())

    leaks, combined = _leaks(split_idx, group_code, pair_idx)
    comp_splits = np.zeros((combined.max() + 1 if len(combined) else 0, len(SPLITS)), dtype=bool)
    comp_splits[combined, split_idx] = True
    moves = comp_splits.sum(axis=1)[combined] > 1
    corrected_idx = np.where(moves, TRAIN, split_idx)
    corrected_leaks, _ = _leaks(corrected_idx, group_code, pair_idx)

    corrected = table.select(id_col, split=pl.Series([SPLITS[i] for i in corrected_idx]))
    return AuditReport(
        id_col=id_col,
        group_col=group_col,
        n_images=table.height,
        n_groups=int(group_code.max() + 1) if table.height else 0,
        n_unassigned=n_unassigned,
        sizes=_sizes(split_idx),
        n_pairs=n_pairs,
        n_pairs_unassigned=n_pairs_unassigned,
        n_pairs_across_groups=n_pairs_across,
        leaks=leaks,
        moved_to_train={
            s: int((moves & (split_idx == i)).sum()) for i, s in enumerate(SPLITS) if i != TRAIN
        },
        corrected_sizes=_sizes(corrected_idx),
        corrected_leaks=corrected_leaks,
        leaking_groups=_leaking_groups(table, group_col),
        corrected_split=corrected,
    )


def _sizes(split_idx: np.ndarray) -> dict[str, int]:
    counts = np.bincount(split_idx, minlength=len(SPLITS))
    return {s: int(counts[i]) for i, s in enumerate(SPLITS)}


def _pair_indexes(
    pairs: pl.DataFrame, meta: pl.DataFrame, table: pl.DataFrame, id_col: str
) -> tuple[np.ndarray, int, int]:
    """Row indexes in `table` of both images of each pair whose two images are assigned;
    also the number of pairs and of pairs with an unassigned image."""
    missing = [c for c in ("image_a", "image_b") if c not in pairs.columns]
    if missing:
        raise ValueError(f"pairs is missing column(s) {missing}; found {pairs.columns}")
    p = pairs.select(pl.col("image_a").cast(pl.String), pl.col("image_b").cast(pl.String))
    for col in ("image_a", "image_b"):
        unknown = p.filter(~pl.col(col).is_in(meta[id_col].implode()))
        if unknown.height:
            raise ValueError(
                f"pairs: {unknown.height} {col} ids are not in the metadata "
                f"(first: {unknown[col][0]!r})"
            )
    index = table.select(id_col).with_row_index("row")
    joined = p.join(
        index.rename({id_col: "image_a", "row": "row_a"}), on="image_a", how="left"
    ).join(index.rename({id_col: "image_b", "row": "row_b"}), on="image_b", how="left")
    assigned = joined.drop_nulls(["row_a", "row_b"])
    rows = assigned.select("row_a", "row_b").to_numpy().astype(np.int64).reshape(-1, 2)
    return rows, p.height, p.height - assigned.height


def _leaking_groups(table: pl.DataFrame, group_col: str) -> list[dict]:
    """Each group with images in more than one split, with its image count per split."""
    counts = (
        table.drop_nulls(group_col)
        .group_by(group_col, "split")
        .len()
        .pivot(on="split", index=group_col, values="len")
        .fill_null(0)
    )
    for s in SPLITS:
        if s not in counts.columns:
            counts = counts.with_columns(pl.lit(0, pl.UInt32).alias(s))
    spans = sum((pl.col(s) > 0).cast(pl.Int8) for s in SPLITS)
    return (
        counts.filter(spans > 1)
        .select(pl.col(group_col).alias("group"), *[pl.col(s).cast(pl.Int64) for s in SPLITS])
        .sort("group")
        .to_dicts()
    )


def render_markdown(report: AuditReport) -> str:
    """The report as readable Markdown tables."""
    g = report.group_col
    lines = [
        f"# Split audit (group: `{g}`)",
        "",
        f"{report.n_images} images in {report.n_groups} `{g}` groups"
        + (
            f"; {report.n_unassigned} metadata images in no split (left out)"
            if report.n_unassigned
            else ""
        )
        + ".",
        "",
        "## Split sizes (images)",
        "",
        "| split | before | after correction | moved to train |",
        "| --- | ---: | ---: | ---: |",
    ]
    for s in SPLITS:
        lines.append(
            f"| {s} | {report.sizes[s]} | {report.corrected_sizes[s]} | "
            f"{report.moved_to_train.get(s, '')} |"
        )
    lines += [
        "",
        f"## Leaks by `{g}`",
        "",
        "Groups: groups with images in every split listed; images: their images in those "
        "splits; image tuples: rows of the join of those splits on the group "
        "(sum of n_a·n_b, or n_a·n_b·n_c).",
        "",
        *_table(report.leaks.by_group, with_pairs=False),
    ]
    if report.leaks.by_pair is not None:
        lines += [
            "",
            "## Leaks by known duplicate pairs",
            "",
            f"{report.n_pairs} pairs, {report.n_pairs_across_groups} of them between different "
            f"`{g}` groups; {report.n_pairs_unassigned} with an image in no split. Pairs: pairs "
            "whose two images lie in the two splits listed; groups: connected components of the "
            "pair graph spanning the splits.",
            "",
            *_table(report.leaks.by_pair, with_pairs=True),
        ]
    lines += [
        "",
        f"## Leaks by `{g}` ∪ duplicate pairs (what the correction moves to train)",
        "",
        *_table(report.leaks.combined, with_pairs=report.leaks.by_pair is not None),
        "",
        "## Re-audit of the corrected split",
        "",
        "| link | groups spanning | images | image tuples | cross-split pairs |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    after = report.corrected_leaks
    for name, table in (
        (f"`{g}`", after.by_group),
        ("pairs", after.by_pair),
        ("union", after.combined),
    ):
        if table is not None:
            lines.append(
                f"| {name} | {sum(r.groups for r in table)} | {sum(r.images for r in table)} | "
                f"{sum(r.tuples for r in table)} | {sum(r.pairs or 0 for r in table)} |"
            )
    lines += ["", f"Leaking `{g}` groups are listed in report.json (`leaking_groups`)."]
    return "\n".join(lines) + "\n"


def _table(rows: list[LeakCount], with_pairs: bool) -> list[str]:
    head = "| splits | groups spanning | images | image tuples |" + (
        " pairs |" if with_pairs else ""
    )
    sep = "| --- | ---: | ---: | ---: |" + (" ---: |" if with_pairs else "")
    body = [
        f"| {'-'.join(r.splits)} | {r.groups} | {r.images} | {r.tuples} |"
        + (f" {'' if r.pairs is None else r.pairs} |" if with_pairs else "")
        for r in rows
    ]
    return [head, sep, *body]


def write_report(report: AuditReport, out_dir: Path) -> None:
    """Write report.json, report.md and corrected_split.csv (id, split) into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    (out_dir / "report.md").write_text(render_markdown(report))
    report.corrected_split.write_csv(out_dir / "corrected_split.csv")
