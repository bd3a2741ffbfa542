"""Diagnosis normalization (SOURCE_FORMAT.md section 5 and rules 2 and 3).

The vocabulary is the project's own (``data/disease_synonyms.json``, alias -> canonical, and
``data/disease_exclusions.txt``, the non-diagnoses) unless a checkout of the legacy
``algo_python`` repository is given: then its ``DiseaseCorrecter`` decides, so that labels
match what the production models were trained on.

Counter keys of ``normalize_diagnoses``:

- ``cases_labeled`` / ``cases_unlabeled``: the latest annotation does / does not yield a
  diagnosis after normalization (empty, unreadable, or only non-diagnoses);
- ``annotations_diagnoses_null``: ``diagnoses`` is NULL or JSON ``null``;
- ``annotations_diagnoses_invalid_json``: ``diagnoses`` (or its double-encoded inner string)
  is not valid JSON;
- ``annotations_diagnoses_not_list``: valid JSON but not an array;
- ``diagnosis_elements_invalid``: an element without a string ``disease`` (skipped);
- ``diagnosis_elements_excluded``: an element naming a non-diagnosis (dropped);
- ``diagnosis_icd9_from_codes``: the primary's code was looked up in ``disease_codes``;
- ``diagnosis_icd9_missing``: the primary has no code, neither given nor found.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import json
import re
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any

import polars as pl
import pyarrow as pa

from dagster_project.flatten import source_frame
from dagster_project.schema import ANNOTATIONS_TABLE, DISEASE_CODES_TABLE
from dagster_project.values import load_json

_CLASS_NAME = "DiseaseCorrecter"
_CLASS_DEFINITION = re.compile(rf"^\s*class\s+{_CLASS_NAME}\b", re.MULTILINE)
# Attribute-name hints used to pick the legacy class's mapping and exclusion list.
_MAPPING_HINTS = ("syn", "map", "correct", "replace")
_EXCLUSION_HINTS = ("exclu", "ignore", "non_", "not_", "remov", "drop", "invalid", "skip")


def normalize_name(name: str) -> str:
    """Lower-case, trim and collapse inner whitespace: the form every lookup uses."""
    return " ".join(name.split()).lower()


@dataclass(frozen=True)
class DiagnosisVocabulary:
    """Synonyms (alias -> canonical) and non-diagnoses, all held in normalized form.

    ``corrector`` is set only for a legacy ``DiseaseCorrecter`` that exposes a correcting
    method instead of a mapping; it then replaces the synonym lookup.
    """

    synonyms: Mapping[str, str]
    exclusions: frozenset[str]
    corrector: Callable[[str], object] | None = field(default=None, compare=False)
    source: str = "dermacurate"

    def __post_init__(self) -> None:
        synonyms = {normalize_name(k): normalize_name(v) for k, v in self.synonyms.items()}
        object.__setattr__(self, "synonyms", MappingProxyType(synonyms))
        object.__setattr__(self, "exclusions", frozenset(map(normalize_name, self.exclusions)))

    def canonical(self, name: str) -> str | None:
        """The canonical disease name, or None for a non-diagnosis (or a blank name)."""
        key = normalize_name(name)
        if self.corrector is None:
            mapped = self.synonyms.get(key, key)
        else:
            corrected = self.corrector(key)
            mapped = normalize_name(corrected) if isinstance(corrected, str) else ""
        if not mapped or key in self.exclusions or mapped in self.exclusions:
            return None
        return mapped


def _project_vocabulary() -> DiagnosisVocabulary:
    data = resources.files("dagster_project") / "data"
    synonyms = json.loads((data / "disease_synonyms.json").read_text(encoding="utf-8"))
    lines = (data / "disease_exclusions.txt").read_text(encoding="utf-8").splitlines()
    exclusions = frozenset(line for line in map(str.strip, lines) if line and line[0] != "#")
    return DiagnosisVocabulary(synonyms, exclusions)


def _find_correcter_module(root: Path) -> Path:
    for path in sorted(root.rglob("*.py")):
        hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
        if hidden or "site-packages" in path.parts:
            continue
        if _CLASS_DEFINITION.search(path.read_text(encoding="utf-8", errors="replace")):
            return path
    raise ValueError(f"algo_python {root}: no *.py file defines class {_CLASS_NAME}")


def _import_module(path: Path, root: Path) -> ModuleType:
    """Import ``path`` with its folder and the checkout root importable for its own imports."""
    spec = importlib.util.spec_from_file_location(f"_legacy_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"algo_python {root}: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look the module up there
    added = [str(path.parent), str(root)]
    sys.path[:0] = added
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[spec.name]
        raise ValueError(f"algo_python {root}: importing {path} failed: {exc!r}") from exc
    finally:
        for entry in added:
            sys.path.remove(entry)
    return module


def _pick(candidates: dict[str, Any], hints: tuple[str, ...]) -> Any:
    """The attribute whose name carries a hint, else the largest one; None if none."""
    hinted = [name for name in candidates if any(hint in name.lower() for hint in hints)]
    names = hinted or list(candidates)
    return max((candidates[name] for name in names), key=len, default=None)


def _legacy_vocabulary(root: Path) -> DiagnosisVocabulary:
    if not root.is_dir():
        raise ValueError(f"algo_python {root}: not a directory")
    path = _find_correcter_module(root)
    where = f"algo_python {root}: {path.relative_to(root)}"
    correcter_class = getattr(_import_module(path, root), _CLASS_NAME)
    try:
        instance = correcter_class()
    except Exception as exc:
        raise ValueError(f"{where}: cannot instantiate {_CLASS_NAME}(): {exc}") from exc
    # Static lookup: no property or __getattr__ of the legacy class runs here.
    attributes = {
        name: value
        for name, value in inspect.getmembers_static(instance)
        if not name.startswith("__")
    }
    mappings = {
        name: value
        for name, value in attributes.items()
        if isinstance(value, dict)
        and value
        and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    }
    collections = {
        name: value
        for name, value in attributes.items()
        if isinstance(value, set | frozenset | list | tuple)
        and value
        and all(isinstance(item, str) for item in value)
    }
    exclusions = frozenset(_pick(collections, _EXCLUSION_HINTS) or ())
    synonyms = _pick(mappings, _MAPPING_HINTS)
    if synonyms is not None:
        return DiagnosisVocabulary(synonyms, exclusions, source=f"{_CLASS_NAME} ({path.name})")
    methods = sorted(
        name
        for name, value in attributes.items()
        if callable(value) and not name.startswith("_") and "correct" in name.lower()
    )
    if not methods:
        raise ValueError(
            f"{where}: {_CLASS_NAME} has neither a str->str mapping attribute "
            "nor a correcting method"
        )
    corrector = functools.lru_cache(maxsize=None)(getattr(instance, methods[0]))
    return DiagnosisVocabulary(
        {}, exclusions, corrector, source=f"{_CLASS_NAME}.{methods[0]} ({path.name})"
    )


def load_vocabulary(algo_python: str | Path | None = None) -> DiagnosisVocabulary:
    """The project's vocabulary, or the legacy ``DiseaseCorrecter`` found under ``algo_python``.

    From the legacy class: its largest str->str dict attribute (preferring names like
    ``synonyms``/``mapping``) is the synonym map and its largest list/set of strings
    (preferring names like ``exclusions``) the non-diagnoses; without such a dict, its
    ``*correct*`` method is called on each normalized name (None or "" = non-diagnosis).
    """
    if algo_python is None:
        return _project_vocabulary()
    return _legacy_vocabulary(Path(algo_python))


def latest_annotations(annotations: pl.DataFrame) -> pl.DataFrame:
    """Rule 2: each request's latest annotation (``modified_at`` as instants, ties: highest id).

    Only the columns of ``schema.ANNOTATIONS_TABLE`` are kept, so PII columns never pass.
    A NULL ``modified_at`` counts as the earliest.
    """
    frame = source_frame(annotations, ANNOTATIONS_TABLE)
    return frame.sort(["request_id", "modified_at", "id"], nulls_last=False).unique(
        subset="request_id", keep="last", maintain_order=True
    )


def _decode_diagnoses(text: str | None, counts: Counter[str]) -> list[Any]:
    """The diagnoses array, decoding a double-encoded string; [] (counted) if unusable."""
    try:
        value = load_json(text) if text is not None else None
        if isinstance(value, str):
            value = load_json(value)
    except (ValueError, RecursionError):
        counts["annotations_diagnoses_invalid_json"] += 1
        return []
    if value is None:
        counts["annotations_diagnoses_null"] += 1
        return []
    if not isinstance(value, list):
        counts["annotations_diagnoses_not_list"] += 1
        return []
    return value


def codes_by_name(codes: pl.DataFrame) -> dict[str, str]:
    """Normalized ``disease_codes`` name -> code; a name with several codes gets the lowest."""
    frame = source_frame(codes, DISEASE_CODES_TABLE).drop_nulls(["code", "name"])
    by_name: dict[str, str] = {}
    for code, name in frame.sort("code").select("code", "name").iter_rows():
        by_name.setdefault(normalize_name(name), code.strip())
    return by_name


def normalize_diagnoses(
    latest: pl.DataFrame, codes: pl.DataFrame, vocabulary: DiagnosisVocabulary
) -> tuple[pl.DataFrame, Counter[str]]:
    """Rule 3: one row per annotated request with its normalized diagnoses.

    Columns ``request_id``, ``diagnosis`` (primary: the first element that survives),
    ``diagnosis_icd9`` (that element's code, else looked up by canonical then original
    name), ``diagnoses_all`` (canonical names, de-duplicated, first-seen order). An
    unlabeled case has null ``diagnosis``/``diagnosis_icd9`` and an empty ``diagnoses_all``.
    """
    lookup = codes_by_name(codes)
    counts: Counter[str] = Counter()
    primaries: list[str | None] = []
    icd9s: list[str | None] = []
    all_names: list[list[str]] = []
    for text in latest.get_column("diagnoses").cast(pl.Binary).to_list():
        primary: str | None = None
        icd9: str | None = None
        names: list[str] = []
        for element in _decode_diagnoses(text, counts):
            disease = element.get("disease") if isinstance(element, dict) else None
            if not isinstance(disease, str):
                counts["diagnosis_elements_invalid"] += 1
                continue
            name = vocabulary.canonical(disease)
            if name is None:
                counts["diagnosis_elements_excluded"] += 1
                continue
            if primary is None:
                primary = name
                given = element.get("icd9")
                icd9 = given.strip() if isinstance(given, str) and given.strip() else None
                if icd9 is None:
                    icd9 = lookup.get(name) or lookup.get(normalize_name(disease))
                    counts["diagnosis_icd9_from_codes" if icd9 else "diagnosis_icd9_missing"] += 1
            if name not in names:
                names.append(name)
        counts["cases_labeled" if primary else "cases_unlabeled"] += 1
        primaries.append(primary)
        icd9s.append(icd9)
        all_names.append(names)
    frame = pl.DataFrame(
        [
            latest.get_column("request_id").cast(pl.Int64),
            pl.Series("diagnosis", primaries, dtype=pl.String),
            pl.Series("diagnosis_icd9", icd9s, dtype=pl.String),
            pl.from_arrow(pa.array(all_names, pa.list_(pa.string()))).alias("diagnoses_all"),
        ]
    )
    return frame, counts


def _frequencies(values: pl.Series) -> dict[str, int]:
    counted = values.drop_nulls().value_counts(name="n")
    ordered = counted.sort(["n", values.name], descending=[True, False])
    return dict(ordered.iter_rows())


def disease_taxonomy(
    codes: pl.DataFrame, vocabulary: DiagnosisVocabulary, observed: pl.DataFrame
) -> dict[str, Any]:
    """The JSON-able taxonomy published with a dataset version.

    ``observed`` has ``diagnosis`` and ``diagnoses_all`` columns (the output of
    ``normalize_diagnoses`` counts cases; image records count images). Frequencies are
    sorted by count, then name.
    """
    frame = source_frame(codes, DISEASE_CODES_TABLE).drop_nulls(["code", "name"]).sort("code")
    code_to_name: dict[str, str] = {}
    code_to_name_he: dict[str, str] = {}
    for code, name, name_he in frame.select("code", "name", "name_he").iter_rows():
        code_to_name.setdefault(code.strip(), name.strip())
        if name_he is not None:
            code_to_name_he.setdefault(code.strip(), name_he.strip())
    all_diagnoses = observed.get_column("diagnoses_all").explode().alias("diagnosis_any")
    any_frequencies = _frequencies(all_diagnoses)
    return {
        "vocabulary_source": vocabulary.source,
        "icd9": {
            "code_to_name": code_to_name,
            "code_to_name_he": code_to_name_he,
            "name_to_code": codes_by_name(codes),
        },
        "synonyms": dict(sorted(vocabulary.synonyms.items())),
        "exclusions": sorted(vocabulary.exclusions),
        "n_diseases": len(any_frequencies),
        "primary_frequencies": _frequencies(observed.get_column("diagnosis")),
        "any_frequencies": any_frequencies,
    }
