"""Diagnosis normalization: vocabulary, latest annotation, rule 3, taxonomy, legacy loader."""

from __future__ import annotations

import datetime as dt
import json
import textwrap
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl
import pyarrow as pa
import pytest

from dagster_project.diagnoses import (
    DiagnosisVocabulary,
    codes_by_name,
    disease_taxonomy,
    latest_annotations,
    load_vocabulary,
    normalize_diagnoses,
    normalize_name,
)
from dagster_project.schema import ANNOTATIONS_TABLE, DISEASE_CODES_TABLE

UTC = dt.UTC
JERUSALEM = ZoneInfo("Asia/Jerusalem")
LONDON = ZoneInfo("Europe/London")
COMMON25 = [
    "acne vulgaris",
    "eczema uns",
    "folliculitis",
    "hematoma uns",
    "herpes simplex",
    "herpes zoster",
    "insect bite",
    "intertrigo",
    "keratosis pilaris",
    "melasma",
    "molluscum contagiosum",
    "onychomycosis",
    "paronychia finger",
    "pityriasis rosea",
    "post inflammatory hyperpigmentation",
    "psoriasis",
    "rosacea",
    "seborrheic dermatitis",
    "skin tag",
    "tinea pedis",
    "tinea versicolor",
    "urticaria",
    "verruca vulgaris",
    "viral exanthem uns",
    "vitiligo",
]


def annotations_batch(rows: list[tuple[int, int, Any, dt.datetime | None]]) -> pa.RecordBatch:
    """dermatologist_annotation rows (id, request_id, diagnoses, modified_at) as parsed."""
    schema = pa.schema(list(ANNOTATIONS_TABLE.columns.items()))
    ids, request_ids, diagnoses, times = zip(*rows, strict=True) if rows else ([], [], [], [])
    texts = [d if d is None or isinstance(d, str) else json.dumps(d) for d in diagnoses]
    data = {"id": ids, "request_id": request_ids, "diagnoses": texts, "modified_at": times}
    return pa.RecordBatch.from_pydict({k: list(v) for k, v in data.items()}, schema=schema)


def codes_batch(rows: list[tuple[str, str, str | None]]) -> pa.RecordBatch:
    schema = pa.schema(list(DISEASE_CODES_TABLE.columns.items()))
    code, name, name_he = (list(c) for c in zip(*rows, strict=True))
    return pa.RecordBatch.from_pydict(
        {"code": code, "name": name, "name_he": name_he}, schema=schema
    )


CODES = codes_batch(
    [
        ("696.1", "Psoriasis", "ספחת"),
        ("706.1", "Acne  Vulgaris ", None),
        ("078.10", "Verruca vulgaris", None),
        ("919.4", "Insect bite", None),
        ("709.09", "Melasma", None),
        ("709.01", "melasma", None),
        ("692.9", "Contact dermatitis", None),
    ]
)


@pytest.fixture(scope="module")
def vocabulary() -> DiagnosisVocabulary:
    return load_vocabulary()


def normalize_one(diagnoses: Any, vocabulary: DiagnosisVocabulary) -> tuple[dict, dict]:
    latest = latest_annotations(annotations_batch([(1, 10, diagnoses, None)]))
    frame, counts = normalize_diagnoses(latest, pl.from_arrow(CODES), vocabulary)
    assert frame.height == 1
    return frame.row(0, named=True), dict(counts)


def test_normalize_name() -> None:
    assert normalize_name("  Plaque \t PSORIASIS\n") == "plaque psoriasis"
    assert normalize_name("\u2028 Tinea\u00a0 Pedis ") == "tinea pedis"


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("plaque psoriasis", "psoriasis"),
        ("cutaneous insect bite reactions", "insect bite"),
        ("acne", "acne vulgaris"),
        ("shingles", "herpes zoster"),
        ("common wart", "verruca vulgaris"),
        ("wart", "verruca vulgaris"),
        ("hives", "urticaria"),
        ("atopic dermatitis", "eczema uns"),
        ("eczema", "eczema uns"),
        ("Pityriasis Versicolor", "tinea versicolor"),
        ("  Athlete's   Foot ", "tinea pedis"),
        ("psoriasis", "psoriasis"),
        ("lichen planus", "lichen planus"),
    ],
)
def test_project_synonyms(vocabulary: DiagnosisVocabulary, alias: str, canonical: str) -> None:
    assert vocabulary.canonical(alias) == canonical


@pytest.mark.parametrize(
    "name",
    ["undefined diagnosis", "Unclear Image", "test", " Diagnosis  Deferred ", "", "   "],
)
def test_project_exclusions(vocabulary: DiagnosisVocabulary, name: str) -> None:
    assert vocabulary.canonical(name) is None


def test_shipped_dictionary_is_consistent() -> None:
    data = resources.files("dagster_project") / "data"

    def no_duplicates(pairs: list[tuple[str, str]]) -> dict[str, str]:
        keys = [key for key, _ in pairs]
        assert len(keys) == len(set(keys)), "duplicate alias in disease_synonyms.json"
        return dict(pairs)

    text = (data / "disease_synonyms.json").read_text(encoding="utf-8")
    synonyms = json.loads(text, object_pairs_hook=no_duplicates)
    lines = (data / "disease_exclusions.txt").read_text(encoding="utf-8").splitlines()
    exclusions = {line for line in lines if line.strip() and not line.startswith("#")}
    assert len(synonyms) >= 160
    assert 30 <= len(exclusions) <= 40
    assert all(normalize_name(k) == k and normalize_name(v) == v for k, v in synonyms.items())
    assert all(normalize_name(name) == name for name in exclusions)
    assert not set(synonyms.values()) & set(synonyms), "a canonical name is also an alias"
    assert not (set(synonyms) | set(synonyms.values())) & exclusions
    assert set(COMMON25) <= set(synonyms.values()), "every common25 name has aliases"


def test_vocabulary_normalizes_what_it_is_given() -> None:
    vocabulary = DiagnosisVocabulary({" Big  Rash ": "Rash"}, frozenset({" No  Idea"}))
    assert vocabulary.canonical("big rash") == "rash"
    assert vocabulary.canonical("NO IDEA") is None


def test_exclusion_applies_to_the_mapped_name_too() -> None:
    vocabulary = DiagnosisVocabulary({"blurry": "unclear image"}, frozenset({"unclear image"}))
    assert vocabulary.canonical("Blurry") is None


def test_latest_annotation_compares_instants_across_time_zones() -> None:
    # 01:30 in Jerusalem (+02:00) is 23:30 UTC the day before: earlier than 00:15 UTC,
    # although its wall-clock text sorts later.
    early = dt.datetime(2021, 3, 26, 1, 30, tzinfo=JERUSALEM)
    later = dt.datetime(2021, 3, 26, 0, 15, tzinfo=UTC)
    # London's 01:30 happens twice on 2021-10-31: fold=1 (GMT) is an hour after fold=0 (BST).
    first_0130 = dt.datetime(2021, 10, 31, 1, 30, tzinfo=LONDON, fold=0)
    second_0130 = dt.datetime(2021, 10, 31, 1, 30, tzinfo=LONDON, fold=1)
    batch = annotations_batch(
        [
            (2, 10, "[]", early),
            (1, 10, "[]", later),
            (3, 20, "[]", second_0130),
            (4, 20, "[]", first_0130),
        ]
    )
    latest = latest_annotations(batch)
    assert dict(latest.select("request_id", "id").iter_rows()) == {10: 1, 20: 3}


def test_latest_annotation_ties_go_to_the_highest_id_and_nulls_are_earliest() -> None:
    when = dt.datetime(2022, 5, 1, 12, tzinfo=UTC)
    batch = annotations_batch(
        [
            (7, 1, "[]", when),
            (9, 1, "[]", when),
            (8, 1, "[]", when),
            (3, 2, "[]", None),
            (2, 2, "[]", when - dt.timedelta(days=400)),
            (5, 3, "[]", None),
            (4, 3, "[]", None),
        ]
    )
    latest = latest_annotations(batch)
    assert dict(latest.select("request_id", "id").iter_rows()) == {1: 9, 2: 2, 3: 5}


def test_latest_annotation_keeps_no_pii_column() -> None:
    frame = pl.DataFrame(
        {
            "id": [1],
            "request_id": [2**60 + 1],
            "diagnoses": ["[]"],
            "modified_at": [dt.datetime(2020, 1, 1, tzinfo=UTC)],
            "modified_by": ["dr@example.org"],
            "free_text": ["notes"],
        }
    )
    latest = latest_annotations(frame)
    assert latest.columns == ["id", "request_id", "diagnoses", "modified_at"]
    assert latest.get_column("request_id").to_list() == [2**60 + 1]


def test_latest_empty_annotation_wins_and_case_is_unlabeled(
    vocabulary: DiagnosisVocabulary,
) -> None:
    day = dt.datetime(2020, 6, 1, tzinfo=UTC)
    batch = annotations_batch(
        [
            (1, 10, [{"disease": "psoriasis", "icd9": "696.1"}], day),
            (2, 10, [], day + dt.timedelta(hours=1)),
            (3, 11, [{"disease": "acne", "icd9": None}], day),
            (4, 11, [{"disease": "Unclear image", "icd9": None}], day + dt.timedelta(days=1)),
        ]
    )
    frame, counts = normalize_diagnoses(latest_annotations(batch), pl.from_arrow(CODES), vocabulary)
    assert frame.sort("request_id").rows() == [(10, None, None, []), (11, None, None, [])]
    assert counts["cases_unlabeled"] == 2
    assert counts["diagnosis_elements_excluded"] == 1


def test_full_rule3(vocabulary: DiagnosisVocabulary) -> None:
    diagnoses = [
        {"disease": "Unclear image", "icd9": "799.9"},
        {"disease": "  Plaque  Psoriasis ", "icd9": None},
        {"disease": "acne", "icd9": "706.1"},
        {"disease": "Psoriasis", "icd9": "696.1"},
        {"disease": 5, "icd9": "1"},
        {"icd9": "2"},
        "psoriasis",
        None,
        {"disease": "guttate psoriasis"},
        {"disease": "test"},
        {"disease": "Lichen Planus", "icd9": "697.0"},
    ]
    row, counts = normalize_one(diagnoses, vocabulary)
    assert row == {
        "request_id": 10,
        "diagnosis": "psoriasis",
        "diagnosis_icd9": "696.1",
        "diagnoses_all": ["psoriasis", "acne vulgaris", "lichen planus"],
    }
    assert counts == {
        "cases_labeled": 1,
        "diagnosis_elements_excluded": 2,
        "diagnosis_elements_invalid": 4,
        "diagnosis_icd9_from_codes": 1,
    }


def test_double_encoded_diagnoses_decoded(vocabulary: DiagnosisVocabulary) -> None:
    inner = json.dumps([{"disease": "Shingles", "icd9": "053.9"}, {"disease": "zoster"}])
    row, counts = normalize_one(json.dumps(inner), vocabulary)
    assert row["diagnosis"] == "herpes zoster"
    assert row["diagnosis_icd9"] == "053.9"
    assert row["diagnoses_all"] == ["herpes zoster"]
    assert counts == {"cases_labeled": 1}


@pytest.mark.parametrize(
    ("disease", "icd9", "expected"),
    [
        ("acne", None, "706.1"),
        ("ACNE VULGARIS", "", "706.1"),
        ("common wart", "  ", "078.10"),
        ("Cutaneous insect bite reactions", None, "919.4"),
        ("melasma", None, "709.01"),
        ("contact dermatitis", None, "692.9"),
        ("acne", " 706.10 ", "706.10"),
    ],
)
def test_icd9_from_element_else_looked_up_by_name(
    vocabulary: DiagnosisVocabulary, disease: str, icd9: str | None, expected: str
) -> None:
    row, counts = normalize_one([{"disease": disease, "icd9": icd9}], vocabulary)
    assert row["diagnosis_icd9"] == expected
    assert counts.get("diagnosis_icd9_from_codes", 0) == (0 if icd9 and icd9.strip() else 1)


def test_icd9_lookup_falls_back_to_the_original_name() -> None:
    vocabulary = DiagnosisVocabulary({"contact dermatitis": "dermatitis"}, frozenset())
    row, _ = normalize_one([{"disease": "Contact  Dermatitis"}], vocabulary)
    assert (row["diagnosis"], row["diagnosis_icd9"]) == ("dermatitis", "692.9")


def test_icd9_missing_counted(vocabulary: DiagnosisVocabulary) -> None:
    row, counts = normalize_one([{"disease": "pemphigus vulgaris"}], vocabulary)
    assert (row["diagnosis"], row["diagnosis_icd9"]) == ("pemphigus vulgaris", None)
    assert counts["diagnosis_icd9_missing"] == 1


@pytest.mark.parametrize(
    ("diagnoses", "reason"),
    [
        (None, "annotations_diagnoses_null"),
        ("null", "annotations_diagnoses_null"),
        ("[{", "annotations_diagnoses_invalid_json"),
        (json.dumps("[{"), "annotations_diagnoses_invalid_json"),
        ({"disease": "psoriasis"}, "annotations_diagnoses_not_list"),
        (json.dumps(json.dumps({"disease": "psoriasis"})), "annotations_diagnoses_not_list"),
        ("42", "annotations_diagnoses_not_list"),
    ],
)
def test_unusable_diagnoses_leave_the_case_unlabeled(
    vocabulary: DiagnosisVocabulary, diagnoses: Any, reason: str
) -> None:
    row, counts = normalize_one(diagnoses, vocabulary)
    assert (row["diagnosis"], row["diagnosis_icd9"], row["diagnoses_all"]) == (None, None, [])
    assert counts == {reason: 1, "cases_unlabeled": 1}


def test_codes_by_name_normalizes_and_prefers_the_lowest_code() -> None:
    lookup = codes_by_name(pl.from_arrow(CODES))
    assert lookup["acne vulgaris"] == "706.1"
    assert lookup["melasma"] == "709.01"
    assert "Psoriasis" not in lookup


def test_disease_taxonomy(vocabulary: DiagnosisVocabulary) -> None:
    observed = pl.DataFrame(
        {
            "request_id": [1, 2, 3, 4, 5],
            "diagnosis": ["psoriasis", "acne vulgaris", "psoriasis", None, "melasma"],
            "diagnoses_all": [
                ["psoriasis", "melasma"],
                ["acne vulgaris"],
                ["psoriasis"],
                [],
                ["melasma", "acne vulgaris"],
            ],
        }
    )
    taxonomy = disease_taxonomy(pl.from_arrow(CODES), vocabulary, observed)
    assert json.loads(json.dumps(taxonomy, ensure_ascii=False)) == taxonomy
    assert taxonomy["icd9"]["code_to_name"]["706.1"] == "Acne  Vulgaris"
    assert taxonomy["icd9"]["code_to_name_he"] == {"696.1": "ספחת"}
    assert taxonomy["icd9"]["name_to_code"]["acne vulgaris"] == "706.1"
    assert taxonomy["synonyms"]["plaque psoriasis"] == "psoriasis"
    assert "unclear image" in taxonomy["exclusions"]
    assert taxonomy["primary_frequencies"] == {"psoriasis": 2, "acne vulgaris": 1, "melasma": 1}
    assert list(taxonomy["any_frequencies"].items()) == [
        ("acne vulgaris", 2),
        ("melasma", 2),
        ("psoriasis", 2),
    ]
    assert taxonomy["n_diseases"] == 3
    assert taxonomy["vocabulary_source"] == "dermacurate"


def write_checkout(root: Path, files: dict[str, str]) -> Path:
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source), encoding="utf-8")
    return root


def test_legacy_correcter_attributes(tmp_path: Path) -> None:
    checkout = write_checkout(
        tmp_path / "algo_python",
        {
            "README.md": "legacy",
            "src/diseases/names.py": """
                SYNONYMS = {"Plaque Psoriasis": "Psoriasis", "chicken pox": "varicella"}
            """,
            "src/diseases/correcter.py": """
                from __future__ import annotations

                from dataclasses import dataclass

                from names import SYNONYMS

                @dataclass
                class Entry:
                    alias: str

                class DiseaseCorrecter:
                    label_names = ["psoriasis", "varicella", "acne", "melasma", "a", "b"]

                    def __init__(self):
                        self.disease_mapping = dict(SYNONYMS)
                        self.diseases_to_exclude = ["Undefined Diagnosis", "not sure"]

                    @property
                    def model(self):
                        raise RuntimeError("needs the production model")
            """,
        },
    )
    vocabulary = load_vocabulary(checkout)
    assert dict(vocabulary.synonyms) == {
        "plaque psoriasis": "psoriasis",
        "chicken pox": "varicella",
    }
    assert vocabulary.exclusions == {"undefined diagnosis", "not sure"}
    assert vocabulary.canonical("PLAQUE psoriasis") == "psoriasis"
    assert vocabulary.canonical("not  sure") is None
    assert vocabulary.canonical("acne") == "acne"
    assert "correcter.py" in vocabulary.source


def test_legacy_correcter_method(tmp_path: Path) -> None:
    checkout = write_checkout(
        tmp_path / "algo_python",
        {
            "correction/disease_correcter.py": """
                class DiseaseCorrecter:
                    def correct_disease(self, name):
                        if name in ("test", "undefined diagnosis"):
                            return None
                        return {"plaque psoriasis": "Psoriasis"}.get(name, name)
            """,
        },
    )
    vocabulary = load_vocabulary(str(checkout))
    assert vocabulary.canonical(" Plaque  Psoriasis") == "psoriasis"
    assert vocabulary.canonical("Test") is None
    assert vocabulary.canonical("melasma") == "melasma"
    row, _ = normalize_one([{"disease": "TEST"}, {"disease": "plaque psoriasis"}], vocabulary)
    assert (row["diagnosis"], row["diagnosis_icd9"]) == ("psoriasis", "696.1")


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"other.py": "class Other:\n    pass\n"}, "no \\*.py file defines class DiseaseCorrecter"),
        (
            {"c.py": "class DiseaseCorrecter:\n    def __init__(self, path):\n        pass\n"},
            "cannot instantiate DiseaseCorrecter",
        ),
        (
            {"c.py": "class DiseaseCorrecter:\n    size = 3\n"},
            "neither a str->str mapping attribute nor a correcting method",
        ),
        ({"c.py": "import missing_legacy_dep\nclass DiseaseCorrecter:\n    pass\n"}, "c.py failed"),
    ],
)
def test_legacy_correcter_errors_name_the_path(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    checkout = write_checkout(tmp_path / "algo", files)
    with pytest.raises(ValueError, match=message) as error:
        load_vocabulary(checkout)
    assert str(checkout) in str(error.value)


def test_legacy_checkout_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a directory") as error:
        load_vocabulary(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(error.value)
