"""`datasheet.md`: the dataset version described for people, after "Datasheets for Datasets".

Gebru et al.'s sections (motivation, composition, collection, preprocessing, uses,
distribution, maintenance), filled from the stats of this version, plus the split policy,
per-split class tables, demographic tables and four PNG plots saved beside the markdown.
Counts and category names only: the text is scanned before it is written and a datasheet
that holds a uuid or something that looks like PII is refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dagster_project.quality_checks import PII_PATTERNS
from dagster_project.stats import UNKNOWN, ordered_splits

TOP_CLASSES_TABLE = 40
TOP_CLASSES_PLOT = 20
# Context entries the text uses by name; every other entry is a configuration setting.
DESCRIPTIVE_CONTEXT = ("version", "source_dump", "created_at", "labels")
MAX_GENDER_BANDS = 3
OTHER_GENDER = "other values"
PLOTS = {
    "class_distribution": "class_distribution.png",
    "age_histogram": "age_histogram.png",
    "images_per_patient": "images_per_patient.png",
    "duplicate_cluster_sizes": "duplicate_cluster_sizes.png",
}
_COUNT_KEYS = ("images", "cases", "patients", "classes")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_PII = {kind: re.compile(pattern) for kind, pattern in PII_PATTERNS.items()}


def write_datasheet(
    manifest: pl.DataFrame,
    stats: Mapping[str, Any],
    taxonomy: Mapping[str, Any],
    out_dir: Path,
    context: Mapping[str, Any],
) -> Path:
    """Write `datasheet.md` and its plots into `out_dir`; return the markdown's path.

    `stats` is the output of `dataset_stats` for this manifest, `taxonomy` the
    `disease_taxonomy` document. `context` carries `source_dump` (the dump's file name)
    and optionally `version`, `created_at` and `labels` (the label file's class names);
    every other entry is a setting (threshold, policy, seed) listed in the configuration
    table.
    """
    if "source_dump" not in context:
        raise ValueError("datasheet context lacks source_dump (the dump's file name)")
    out_dir.mkdir(parents=True, exist_ok=True)
    _class_plot(stats["class_counts"], out_dir / PLOTS["class_distribution"])
    _age_plot(manifest, out_dir / PLOTS["age_histogram"])
    _histogram_plot(
        stats["images_per_patient"]["histogram"],
        "Images per patient",
        "images",
        "patients",
        out_dir / PLOTS["images_per_patient"],
    )
    _histogram_plot(
        stats["duplicate_clusters"]["size_histogram"],
        "Duplicate cluster sizes",
        "images in the cluster",
        "clusters",
        out_dir / PLOTS["duplicate_cluster_sizes"],
    )
    text = "\n".join(
        [
            *_header(stats, context),
            *_motivation(),
            *_composition(manifest, stats),
            *_collection(stats, context),
            *_preprocessing(stats, taxonomy, context),
            *_split_policy(stats),
            *_limitations(stats, context),
            *_uses_distribution_maintenance(),
        ]
    )
    _refuse_identifying(text)
    path = out_dir / "datasheet.md"
    path.write_text(text, encoding="utf-8")
    return path


def _header(stats: Mapping[str, Any], context: Mapping[str, Any]) -> list[str]:
    totals = stats["totals"]
    built = f" on {context['created_at']}" if "created_at" in context else ""
    version = f" v{context['version']}" if "version" in context else ""
    return [
        f"# DermaDetect curated dataset{version}: datasheet",
        "",
        f"Built from the dump `{context['source_dump']}`{built}: {totals['images']:,} images "
        f"of {totals['cases']:,} cases from {totals['patients']:,} patients, "
        f"{totals['classes']:,} diagnoses.",
        "",
    ]


def _motivation() -> list[str]:
    return [
        "## Motivation",
        "",
        "- **Purpose.** Training and evaluating skin-disease classifiers on photos taken by "
        "patients with the DermaDetect app, each labeled by a dermatologist, with the "
        "questionnaire the patient answered.",
        "- **Why curated.** The raw database holds test accounts, unlabeled cases, "
        "non-diagnoses, repeated uploads of the same photo and PII. This version removes them, "
        "groups duplicates, and splits by patient so that no patient or photo is in two splits.",
        "- **Who.** Built by the DermaDetect data pipeline (`dermacurate`) from the production "
        "database dump and the photo backup.",
        "",
    ]


def _composition(manifest: pl.DataFrame, stats: Mapping[str, Any]) -> list[str]:
    per_split = stats["per_split"]
    splits = ordered_splits(per_split)
    demographics = stats["demographics"]
    completeness = stats["completeness"]
    return [
        "## Composition",
        "",
        "An instance is one photo of one case (a patient's submission). Each carries the "
        "case's primary diagnosis (canonical name and ICD-9 code), all its diagnoses, the "
        "questionnaire answers (age, gender, symptoms, lesion location and appearance) and "
        "image facts (size, checksum, duplicate cluster, quality and outlier scores).",
        "",
        "### Counts per split",
        "",
        _table(
            ["split", "images", "cases", "patients", "classes"],
            [[split, *(per_split[split][key] for key in _COUNT_KEYS)] for split in splits],
        ),
        "",
        f"### Classes per split ({_class_table_scope(len(stats['class_counts']))})",
        "",
        _class_table(manifest, stats["class_counts"], splits),
        "",
        f"![Class distribution per split]({PLOTS['class_distribution']})",
        "",
        "### Demographics",
        "",
        "Age group and gender of the cases (as the patient answered them):",
        "",
        _age_gender_table(demographics["age_group_by_gender_cases"]),
        "",
        f"![Age histogram]({PLOTS['age_histogram']})",
        "",
        "Sources (vendors):",
        "",
        _table(
            ["vendor", "images", "cases", "patients"],
            [
                [vendor, *(counts[key] for key in _COUNT_KEYS[:3])]
                for vendor, counts in demographics["vendors"].items()
            ],
        ),
        "",
        "### Images per patient",
        "",
        _summary_line(stats["images_per_patient"]),
        "",
        f"![Images per patient]({PLOTS['images_per_patient']})",
        "",
        "### Field completeness",
        "",
        "Share of images with a value (metadata fields not asked in every app version are "
        "often missing):",
        "",
        _table(
            ["field", "non-null"],
            [[name, f"{share:.1%}"] for name, share in completeness.items() if share < 1],
        )
        if any(share < 1 for share in completeness.values())
        else "Every field has a value in every row.",
        "",
    ]


def _collection(stats: Mapping[str, Any], context: Mapping[str, Any]) -> list[str]:
    return [
        "## Collection process and sources",
        "",
        f"- **Database dump** `{context['source_dump']}`: patient submissions (`rn_requests`), "
        "dermatologist annotations (`dermatologist_annotation`) and the ICD-9 coding system "
        "(`disease_codes`).",
        "- **Photos** from the app's cloud-storage backup, one file per image uuid.",
        "- **Labels**: the latest dermatologist review of a case wins (re-reviews exist); its "
        "first valid diagnosis is the primary diagnosis.",
        "- **Metadata**: answers to the app's questionnaire, self-reported by the patient or a "
        "parent; values outside their validation ranges were set to null.",
        f"- **Vendors**: {', '.join(stats['demographics']['vendors']) or 'none'}.",
        "",
    ]


def _preprocessing(
    stats: Mapping[str, Any], taxonomy: Mapping[str, Any], context: Mapping[str, Any]
) -> list[str]:
    drops = stats["drops"]
    clusters = stats["duplicate_clusters"]
    settings = {k: v for k, v in context.items() if k not in DESCRIPTIVE_CONTEXT}
    return [
        "## Preprocessing, cleaning and labeling",
        "",
        "Rows and values removed or nulled by each step, counted:",
        "",
        _table(["reason", "count"], [[r, n] for r, n in drops["by_reason"].items()])
        if drops["by_reason"]
        else "Nothing was dropped.",
        "",
        f"Total: {drops['total']:,}.",
        "",
        "Steps: test accounts removed; diagnoses lower-cased, synonyms mapped to canonical "
        "names, non-diagnoses removed; cases without a diagnosis or without a usable image "
        "left out; images verified (decodable, checksummed, measured); PII fields (request "
        "headers, free text, user keys, annotator identity) never read into any output.",
        "",
        "### Disease taxonomy",
        "",
        _taxonomy_summary(taxonomy),
        "",
        "### Duplicates",
        "",
        "Photos were grouped into duplicate clusters by identical bytes, near-identical "
        "perceptual hashes and embedding similarity. "
        f"{clusters['clusters']:,} clusters over {clusters['images']:,} images; "
        f"{clusters['multi_image_clusters']:,} hold more than one image "
        f"({clusters['images_in_multi_image_clusters']:,} images); "
        f"{clusters['non_homogeneous']:,} of those disagree on the diagnosis "
        f"({clusters['images_in_non_homogeneous']:,} images).",
        "",
        f"![Duplicate cluster sizes]({PLOTS['duplicate_cluster_sizes']})",
        "",
        "### Configuration",
        "",
        _table(
            ["setting", "value"],
            [[key, _config_value(value)] for key, value in sorted(settings.items())],
        )
        if settings
        else "Defaults.",
        "",
    ]


def _split_policy(stats: Mapping[str, Any]) -> list[str]:
    split_patients = stats["split_patients"]
    splits = ordered_splits(split_patients["patients"])
    return [
        "## Split policy",
        "",
        '- **Groups.** The unit of assignment is the connected component of "same patient" '
        'and "same duplicate cluster": two patients who share a photo share a split.',
        "- **Stratified.** Groups go to train / val / test (80 / 10 / 10, counted in "
        "patients), stratified by primary diagnosis.",
        "- **Sticky.** A patient already in a previously published version keeps its split; "
        "a group that new duplicates join across splits goes to train, and the move is "
        "reported.",
        "",
        _table(
            ["split", "patients", "share"],
            [
                [s, split_patients["patients"][s], f"{split_patients['fractions'][s]:.1%}"]
                for s in splits
            ],
        ),
        "",
    ]


def _limitations(stats: Mapping[str, Any], context: Mapping[str, Any]) -> list[str]:
    splits = ordered_splits(stats["per_split"])
    labels = context.get("labels") or []
    absent = sorted(
        label
        for label in labels
        if any(stats["class_counts"].get(label, {}).get(s, 0) == 0 for s in splits)
    )
    sparse = [name for name, share in stats["completeness"].items() if share < 0.5]
    clusters = stats["duplicate_clusters"]
    lines = [
        "## Known limitations",
        "",
        "- One population: patients of the vendors above (Israeli health services) who used a "
        "smartphone app; "
        "skin tone (Fitzpatrick type) is not recorded, so performance across skin tones "
        "cannot be measured with this dataset.",
        "- Phone photos of varying quality, framing and lighting; no dermoscopy.",
        "- Labels come from one dermatologist's review of the photos and the questionnaire, "
        "without biopsy confirmation.",
        "- Metadata is self-reported and partly missing "
        f"({len(sparse)} field(s) are less than half filled).",
        f"- The class distribution is long-tailed: {stats['totals']['classes']:,} diagnoses; "
        "see the class table.",
        f"- {clusters['non_homogeneous']:,} duplicate cluster(s) carry conflicting diagnoses.",
        "- Duplicate detection is approximate: near-copies below the similarity threshold "
        "can remain in different splits.",
    ]
    if labels:
        lines.append(
            f"- Of the {len(labels)} classes of the label file, {len(absent)} lack images in "
            "some split" + (f": {', '.join(absent)}." if absent else ".")
        )
    return [*lines, ""]


def _uses_distribution_maintenance() -> list[str]:
    return [
        "## Uses, distribution and maintenance",
        "",
        "- **Uses.** Research and development of triage and classification models. Not a "
        "substitute for clinical diagnosis; not for re-identifying patients.",
        "- **Distribution.** Internal to DermaDetect; the manifest, splits, duplicate clusters, "
        "feature schema, taxonomy and stats are published beside this file; images under "
        "`images/<image_uuid>.jpg`.",
        "- **Maintenance.** A new version is built for every new database dump; its stats "
        "are compared with the previous version's, and splits stay sticky across versions.",
        "",
    ]


def _class_table(
    manifest: pl.DataFrame, class_counts: Mapping[str, Mapping[str, int]], splits: list[str]
) -> str:
    icd9 = dict(
        manifest.filter(pl.col("diagnosis_icd9").is_not_null())
        .group_by("diagnosis")
        .agg(pl.col("diagnosis_icd9").mode().sort().first())
        .iter_rows()
    )
    names = _by_size(class_counts)
    rows = [
        [
            name,
            icd9.get(name, ""),
            *(class_counts[name].get(s, 0) for s in splits),
            class_counts[name]["total"],
        ]
        for name in names[:TOP_CLASSES_TABLE]
    ]
    rest = names[TOP_CLASSES_TABLE:]
    if rest:
        rows.append(
            [
                f"other ({len(rest)} classes)",
                "",
                *(sum(class_counts[name].get(s, 0) for name in rest) for s in splits),
                sum(class_counts[name]["total"] for name in rest),
            ]
        )
    return _table(["diagnosis", "ICD-9", *splits, "total"], rows)


def _by_size(class_counts: Mapping[str, Mapping[str, int]]) -> list[str]:
    """Class names, most images first (ties by name), whatever order the stats came in."""
    return sorted(class_counts, key=lambda name: (-class_counts[name]["total"], name))


def _class_table_scope(n_classes: int) -> str:
    if n_classes > TOP_CLASSES_TABLE:
        return f"images; the {TOP_CLASSES_TABLE} largest of {n_classes:,} classes"
    return f"images; {n_classes:,} classes"


def _age_gender_table(age_gender: Mapping[str, Mapping[str, int]]) -> str:
    genders = sorted({g for counts in age_gender.values() for g in counts}, key=_unknown_last)
    rows = [
        [group, *(counts.get(g, 0) for g in genders), sum(counts.values())]
        for group, counts in age_gender.items()
    ]
    return _table(["age group", *genders, "total"], rows)


def _unknown_last(label: str) -> tuple[bool, str]:
    return label == UNKNOWN, label


def _summary_line(summary: Mapping[str, Any]) -> str:
    return (
        f"min {summary['min']}, median {summary['median']}, mean {summary['mean']:.2f}, "
        f"max {summary['max']}."
    )


def _taxonomy_summary(taxonomy: Mapping[str, Any]) -> str:
    """One line per top-level entry of the taxonomy document: its size, or its value."""
    if not taxonomy:
        return "No taxonomy document was given."
    rows = [
        [key, f"{len(value):,} entries" if isinstance(value, Mapping | list) else str(value)]
        for key, value in taxonomy.items()
    ]
    return _table(["entry", "content"], rows)


def _config_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table (polars renders it; `|` in cells is escaped)."""
    frame = pl.DataFrame(
        [[_cell(row[i]) for row in rows] for i in range(len(headers))],
        schema=[str(h) for h in headers],
        orient="col",
    )
    with pl.Config(
        tbl_formatting="MARKDOWN",
        tbl_hide_column_data_types=True,
        tbl_hide_dataframe_shape=True,
        tbl_rows=-1,
        tbl_cols=-1,
        fmt_str_lengths=1_000,
        tbl_width_chars=60_000,
    ):
        return str(frame)


def _cell(value: Any) -> str:
    text = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _refuse_identifying(text: str) -> None:
    """A datasheet is public inside the company: no uuid and nothing that looks like PII.

    The error names the line and the kind, never the text found.
    """
    patterns = {"a uuid": _UUID, **_PII}
    for number, line in enumerate(text.splitlines(), start=1):
        kinds = [kind for kind, pattern in patterns.items() if pattern.search(line)]
        if kinds:
            raise ValueError(
                f"datasheet line {number} holds what looks like {', '.join(kinds)}; not written"
            )


def _class_plot(class_counts: Mapping[str, Mapping[str, int]], path: Path) -> None:
    """Share of each top class within each split: a stratified split shows equal bars."""
    names = _by_size(class_counts)[:TOP_CLASSES_PLOT]
    splits = ordered_splits(s for counts in class_counts.values() for s in counts if s != "total")
    figure = Figure(figsize=(9, 0.35 * len(names) + 1.5), layout="constrained")
    axes = figure.add_subplot()
    if not names:
        _no_data(axes)
    height = 0.8 / max(len(splits), 1)
    for offset, split in enumerate(splits):
        split_total = sum(counts.get(split, 0) for counts in class_counts.values()) or 1
        shares = [100 * class_counts[name].get(split, 0) / split_total for name in names]
        positions = [i + offset * height for i in range(len(names))]
        axes.barh(positions, shares, height=height, label=split)
    axes.set_yticks([i + 0.4 - height / 2 for i in range(len(names))], names)
    axes.invert_yaxis()
    axes.set_xlabel("% of the split's images")
    axes.set_title(f"Top {len(names)} classes per split")
    if splits:
        axes.legend()
    figure.savefig(path, dpi=100)


def _age_plot(manifest: pl.DataFrame, path: Path) -> None:
    """Ages of the cases (one value per case), stacked by gender."""
    cases = (
        manifest.unique("case_uuid", keep="first")
        .select(pl.col("age").fill_nan(None), pl.col("gender").fill_null(UNKNOWN))
        .drop_nulls("age")
    )
    # Free-text genders ("f\tmale", emoji) would each get a band: keep the common ones.
    common = cases["gender"].value_counts(sort=True).head(MAX_GENDER_BANDS)["gender"]
    cases = cases.with_columns(
        pl.when(pl.col("gender").is_in(common.implode()))
        .then(pl.col("gender"))
        .otherwise(pl.lit(OTHER_GENDER))
        .alias("gender")
    )
    genders = sorted(cases["gender"].unique(), key=_unknown_last)
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    axes = figure.add_subplot()
    if cases.is_empty():
        _no_data(axes)
    else:
        axes.hist(
            [cases.filter(pl.col("gender") == g)["age"].to_numpy() for g in genders],
            bins=range(0, 125, 5),
            stacked=True,
            label=genders,
        )
        axes.legend(title="gender")
    axes.set_xlabel("age (years)")
    axes.set_ylabel("cases")
    axes.set_title("Age of the cases")
    figure.savefig(path, dpi=100)


def _histogram_plot(
    histogram: Mapping[str, int], title: str, xlabel: str, ylabel: str, path: Path
) -> None:
    """Bars of a {value: count} histogram, log count axis (the tails matter)."""
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    axes = figure.add_subplot()
    if histogram:
        axes.bar([int(k) for k in histogram], list(histogram.values()))
        axes.set_yscale("log")
        axes.set_ylim(bottom=0.5)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        _no_data(axes)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    figure.savefig(path, dpi=100)


def _no_data(axes: Any) -> None:
    axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
