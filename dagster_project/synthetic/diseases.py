"""The disease vocabulary of the synthetic source: names, ICD-9 codes, synonyms, exclusions.

The head of the list is the production label file `common25` (SOURCE_FORMAT.md section 5);
the long tail is built from real dermatology terms so that the frequency curve and the
number of distinct names (~1,000) look like the real service. Synonym spellings and
non-diagnoses come from the project's own dictionary (`dagster_project/data/`), so that what
the generator calls "the same disease" is what the pipeline's normalization calls the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SYNONYMS_FILE = DATA_DIR / "disease_synonyms.json"
EXCLUSIONS_FILE = DATA_DIR / "disease_exclusions.txt"

# common25 with their Maccabi ICD-9 codes and Hebrew names (None where the table has none).
COMMON25: tuple[tuple[str, str, str | None], ...] = (
    ("acne vulgaris", "706.1", "אקנה"),
    ("eczema uns", "692.9", "אקזמה"),
    ("folliculitis", "704.8", "דלקת זקיקים"),
    ("hematoma uns", "924.9", "המטומה"),
    ("herpes simplex", "054.9", "הרפס סימפלקס"),
    ("herpes zoster", "053.9", "שלבקת חוגרת"),
    ("insect bite", "919.4", "עקיצת חרק"),
    ("intertrigo", "695.89", None),
    ("keratosis pilaris", "757.39", None),
    ("melasma", "709.09", "כלואזמה"),
    ("molluscum contagiosum", "078.0", "מולוסקום"),
    ("onychomycosis", "110.1", "פטרת ציפורניים"),
    ("paronychia finger", "681.02", "זיהום סביב הציפורן"),
    ("pityriasis rosea", "696.3", None),
    ("post inflammatory hyperpigmentation", "709.00", None),
    ("psoriasis", "696.1", "ספחת"),
    ("rosacea", "695.3", "רוזציאה"),
    ("seborrheic dermatitis", "690.10", "דלקת עור סבוראית"),
    ("skin tag", "701.9", "תג עור"),
    ("tinea pedis", "110.4", "פטרת כף הרגל"),
    ("tinea versicolor", "111.0", None),
    ("urticaria", "708.9", "סרפדת"),
    ("verruca vulgaris", "078.10", "יבלת"),
    ("viral exanthem uns", "057.9", None),
    ("vitiligo", "709.01", "בהקת"),
)

_TAIL_TERMS = (
    "actinic keratosis",
    "alopecia areata",
    "angioma",
    "atopic dermatitis",
    "basal cell carcinoma",
    "bullous pemphigoid",
    "callus",
    "candidiasis",
    "cellulitis",
    "cheilitis",
    "chilblains",
    "contact dermatitis",
    "cutaneous lupus",
    "cyst",
    "dermatofibroma",
    "dermatomyositis",
    "drug eruption",
    "dyshidrotic eczema",
    "ecthyma",
    "epidermoid cyst",
    "erysipelas",
    "erythema multiforme",
    "erythema nodosum",
    "fixed drug eruption",
    "granuloma annulare",
    "hand foot and mouth disease",
    "hidradenitis suppurativa",
    "hyperhidrosis",
    "ichthyosis",
    "impetigo",
    "keloid",
    "keratoacanthoma",
    "lentigo",
    "lichen planus",
    "lichen sclerosus",
    "lichen simplex",
    "lipoma",
    "livedo reticularis",
    "melanocytic nevus",
    "melanoma",
    "miliaria",
    "morphea",
    "mycosis fungoides",
    "necrobiosis lipoidica",
    "neurofibroma",
    "nummular dermatitis",
    "perioral dermatitis",
    "pemphigus vulgaris",
    "pilonidal cyst",
    "pityriasis alba",
    "porokeratosis",
    "prurigo nodularis",
    "pruritus",
    "purpura",
    "pyogenic granuloma",
    "scabies",
    "scar",
    "sebaceous hyperplasia",
    "seborrheic keratosis",
    "solar urticaria",
    "squamous cell carcinoma",
    "stasis dermatitis",
    "striae",
    "syringoma",
    "telangiectasia",
    "tinea capitis",
    "tinea corporis",
    "tinea cruris",
    "tinea manuum",
    "ulcer",
    "vasculitis",
    "xanthelasma",
    "xerosis",
    "angular cheilitis",
    "burn",
    "abscess",
    "furuncle",
    "wound infection",
    "nail dystrophy",
    "ingrown nail",
    "pressure sore",
)
_TAIL_QUALIFIERS = (
    "",
    " uns",
    " of face",
    " of scalp",
    " of trunk",
    " of hand",
    " of foot",
    " of leg",
    " localized",
    " generalized",
    " chronic",
    " acute",
    " infantile",
)
TAIL_SIZE = 1000 - len(COMMON25)

# The contract's own examples; used only where the project's dictionary files are absent.
_FALLBACK_SYNONYMS = {
    "plaque psoriasis": "psoriasis",
    "cutaneous insect bite reactions": "insect bite",
}
_FALLBACK_EXCLUSIONS = ("undefined diagnosis", "unclear image", "test", "diagnosis deferred")


def normalize_name(name: str) -> str:
    """Lower-case, trim and collapse inner whitespace (SOURCE_FORMAT.md section 5)."""
    return " ".join(name.lower().split())


@dataclass(frozen=True)
class Vocabulary:
    """Canonical names in frequency order, their codes, and the messy spellings of each."""

    names: tuple[str, ...]
    codes: dict[str, str]
    hebrew: dict[str, str]
    spellings: dict[str, tuple[str, ...]]
    exclusions: tuple[str, ...]


def _load_synonyms() -> dict[str, str]:
    if not SYNONYMS_FILE.exists():
        return dict(_FALLBACK_SYNONYMS)
    document = json.loads(SYNONYMS_FILE.read_text(encoding="utf-8"))
    table = document.get("synonyms", document) if isinstance(document, dict) else {}
    if not isinstance(table, dict):
        raise ValueError(f"{SYNONYMS_FILE}: expected an object of spelling -> canonical name")
    return {
        normalize_name(key): normalize_name(value)
        for key, value in table.items()
        if isinstance(key, str) and isinstance(value, str)
    }


def _load_exclusions() -> tuple[str, ...]:
    if not EXCLUSIONS_FILE.exists():
        return _FALLBACK_EXCLUSIONS
    lines = EXCLUSIONS_FILE.read_text(encoding="utf-8").splitlines()
    names = (normalize_name(line) for line in lines if line.strip() and not line.startswith("#"))
    return tuple(dict.fromkeys(names))


def load_vocabulary() -> Vocabulary:
    """Build the vocabulary; names that the dictionary maps elsewhere or drops are never labels.

    A canonical label must survive the pipeline's normalization unchanged, so names that are
    themselves synonym spellings or non-diagnoses are left out, and only synonyms whose target
    is a final canonical name (not itself remapped or excluded) are used as spellings.
    """
    synonyms = _load_synonyms()
    # A spelling the dictionary maps to a disease is not a non-diagnosis (mapping comes first).
    exclusions = tuple(name for name in _load_exclusions() if synonyms.get(name, name) == name)
    excluded = set(exclusions)
    remapped = {key for key, value in synonyms.items() if key != value}
    blocked = remapped | excluded
    head = [name for name, _, _ in COMMON25 if name not in blocked]
    targets = sorted({v for v in synonyms.values() if v not in blocked and v not in head})
    tail: list[str] = []
    for qualifier in _TAIL_QUALIFIERS:
        for term in _TAIL_TERMS:
            name = term + qualifier
            if name not in blocked and name not in head and name not in targets:
                tail.append(name)
    names = tuple(head + targets + tail[: max(0, TAIL_SIZE - len(targets))])
    codes = {name: code for name, code, _ in COMMON25}
    hebrew = {name: he for name, _, he in COMMON25 if he is not None}
    used_codes = set(codes.values())
    tail_index = 0
    for name in names[len(head) :]:
        code = f"{680 + tail_index % 29}.{tail_index // 29}"
        tail_index += 1
        if tail_index % 10 == 0 or code in used_codes:
            continue
        codes[name] = code
        used_codes.add(code)
    spellings: dict[str, list[str]] = {}
    for key, value in sorted(synonyms.items()):
        if key != value and value in names and key not in excluded:
            spellings.setdefault(value, []).append(key)
    return Vocabulary(
        names=names,
        codes=codes,
        hebrew=hebrew,
        spellings={name: tuple(keys) for name, keys in spellings.items()},
        exclusions=exclusions,
    )
