"""Write clean values the way the real app and its older versions did: messily.

Each encoder first decides the clean value (what the pipeline must recover, per
SOURCE_FORMAT.md sections 3 and 7) and then one of the spellings that mean it, or one of the
invalid spellings that mean null. Only spellings whose meaning the contract fixes are used,
so the truth never depends on a reading the contract leaves open.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import random
from dataclasses import dataclass
from typing import Any

from dagster_project.schema import CONTINUOUS, METADATA_SCHEMA
from dagster_project.synthetic.diseases import Vocabulary
from dagster_project.synthetic.population import Case, Review
from dagster_project.synthetic.truth import PiiLog

GCS_BUCKET = "dermadetect-20180424.appspot.com"
GCS_PREFIX = "000RN"
MISSING: Any = object()  # the key is left out of its object

_EXOTIC = (
    "נקבה",
    "שמאל",
    "עגול 🔴",
    "irregular\u2028edge",
    "cheek\u0085left",
    "ring 💍 shaped",
    "أحمر",
    "larger\tthan palm",
)
# Cases whose container of this name is of the wrong JSON type, so every dump has each.
_FORCED_WRONG = {3: "patient", 4: "pain", 5: "hair_loss", 6: "location", 8: "answers"}
_PADS = (" ", "  ", "\t", "\n", " \n")
_TRUE = (True, "yes", "Yes", "YES", "1", 1, "true", "True", "TRUE")
_FALSE = (False, "no", "No", "NO", "0", 0, "false", "False", "FALSE")
_NULL_BOOL = (MISSING, None, "unknown", "Unknown", "UNKNOWN", "maybe", 2, 1.5, "-1", [True], "n/a")
_UNITS = {"days": 1, "weeks": 7, "months": 30, "years": 365}
_CATEGORIES = {
    "gender": ("female", "male", "other"),
    "size": ("pinhead", "lentil", "coin", "palm", "larger than palm"),
    "shape": ("round", "oval", "irregular", "linear", "ring"),
    "quantity": ("single", "few", "multiple", "countless"),
    "topography": ("flat", "raised", "sunken", "mixed"),
    "location_primary": (
        "face",
        "scalp",
        "neck",
        "trunk",
        "arm",
        "hand",
        "leg",
        "foot",
        "genitals",
        "nails",
    ),
    "location_secondary": (
        "cheek",
        "nose",
        "forehead",
        "chin",
        "back",
        "chest",
        "abdomen",
        "palm",
        "sole",
        "finger",
        "toe",
        "thigh",
        "knee",
        "elbow",
    ),
    "location_side": ("left", "right", "both", "center"),
    "location_coverage": ("localized", "widespread", "generalized"),
    "pain_type": ("burning", "stinging", "dull", "sharp", "throbbing"),
    "hair_loss_type": ("patchy", "diffuse", "scarring"),
}
_MULTI = {
    "color_condition": (
        "red",
        "brown",
        "white",
        "black",
        "yellow",
        "purple",
        "skin colored",
        "pink",
    ),
    "texture": ("scaly", "smooth", "rough", "crusted", "oozing", "warty"),
    "color_pus": ("yellow", "white", "green", "bloody"),
    "primary_locations": _CATEGORIES["location_primary"],
    "secondary_locations": _CATEGORIES["location_secondary"],
}
_WORDS = (
    "itching",
    "at night",
    "after the trip",
    "spreading",
    "since the wedding",
    "mother says",
    "no fever",
    "tried cream",
    "worse in sun",
    "בגן",
    "כואב",
    "שבוע",
)
_NAMES = ("Yael", "Noa", "Avi", "Moshe", "Dana", "Omer", "Tamar", "Eitan", "Maya", "Yossi")
_SURNAMES = ("Cohen", "Levi", "Mizrahi", "Peretz", "Biton", "Friedman", "Shapiro", "Azulay")


def _variant(rng: random.Random, text: str) -> str:
    """A spelling of a clean categorical that trims and lower-cases back to it."""
    roll = rng.random()
    if roll < 0.5:
        return text
    cased = rng.choice((text.upper(), text.title(), text.capitalize()))
    if cased.lower() != text:  # e.g. "ß" upper-cases to "SS": not a spelling of the same
        return text
    return rng.choice(("", *_PADS)) + cased + rng.choice(("", *_PADS)) if roll < 0.8 else cased


def _number_text(value: float, decimal_mark: str) -> str:
    """A float as text with `.` or `,` as decimal mark ("37,5")."""
    return repr(value).replace(".", decimal_mark)


class Encoder:
    """Messy spellings of one case's values, drawn from the case's own random stream."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def boolean(self, p_null: float = 0.2) -> tuple[Any, bool | None]:
        rng = self.rng
        if rng.random() < p_null:
            return rng.choice(_NULL_BOOL), None
        clean = rng.random() < 0.5
        return rng.choice(_TRUE if clean else _FALSE), clean

    def number(self, name: str, clean: float | None) -> tuple[Any, float | None]:
        """`clean` None draws an invalid or out-of-range spelling of `name`."""
        rng = self.rng
        low, high = CONTINUOUS[name]
        if clean is None:
            roll = rng.random()
            if roll < 0.15:
                outside = rng.choice(
                    (high + rng.randrange(1, 500) / 10, low - rng.randrange(1, 50))
                )
                return rng.choice((outside, _number_text(outside, ","), repr(outside))), None
            return rng.choice(
                (
                    MISSING,
                    MISSING,
                    None,
                    "",
                    "NaN",
                    "Infinity",
                    "-Infinity",
                    f"{rng.randrange(2, 90)} years",
                    "1e2",
                    True,
                    [],
                    "abc",
                )
            ), None
        if clean.is_integer():
            forms = (
                int(clean),
                int(clean),
                str(int(clean)),
                clean,
                f"+{int(clean)}",
                _number_text(clean, ","),
            )
        else:
            forms = (
                clean,
                clean,
                repr(clean),
                _number_text(clean, ","),
                "+" + _number_text(clean, ","),
            )
        return rng.choice(forms), clean

    def duration(self) -> tuple[Any, float | None]:
        rng = self.rng
        roll = rng.random()
        if roll < 0.15:
            invalid = rng.choice(
                (
                    MISSING,
                    None,
                    {"value": 3},
                    {"value": 3, "unit": "fortnights"},
                    {"value": "a few", "unit": "days"},
                    "two weeks",
                    [2, "weeks"],
                    {"value": 200, "unit": "years"},
                    {"value": -2, "unit": "days"},
                    True,
                    {"value": 2, "unit": None},
                )
            )
            return invalid, None
        if roll < 0.30:
            days = float(rng.randrange(0, 61))
            return rng.choice((int(days), str(int(days)), days)), days
        unit = rng.choice(tuple(_UNITS))
        top = {"days": 30, "weeks": 12, "months": 24, "years": 20}[unit]
        value = rng.randrange(1, top + 1) + (0.5 if rng.random() < 0.15 else 0.0)
        shown: Any = int(value) if value.is_integer() and rng.random() < 0.7 else value
        if rng.random() < 0.3:
            shown = _number_text(value, rng.choice((".", ",")))
        return {"value": shown, "unit": _variant_case(rng, unit)}, value * _UNITS[unit]

    def category(self, name: str, p_null: float = 0.12) -> tuple[Any, str | None]:
        rng = self.rng
        if rng.random() < p_null:
            clean = rng.choice(_CATEGORIES[name])
            return rng.choice((MISSING, MISSING, None, [clean], {"value": clean})), None
        clean = rng.choice(_EXOTIC) if rng.random() < 0.02 else rng.choice(_CATEGORIES[name])
        return _variant(rng, clean), clean

    def multi(self, name: str) -> tuple[Any, list[str] | None]:
        rng = self.rng
        if rng.random() < 0.12:
            return rng.choice((MISSING, None, 5, {"red": True}, True)), None
        clean = rng.sample(_MULTI[name], rng.choices((0, 1, 2, 3), (15, 45, 30, 10))[0])
        items = [_variant(rng, item) for item in clean]
        if len(items) == 1 and rng.random() < 0.3:
            return items[0], clean
        return items, clean

    def free_text(self) -> str:
        rng = self.rng
        words = " ".join(rng.sample(_WORDS, 4))
        name = f"{rng.choice(_NAMES)} {rng.choice(_SURNAMES)}"
        token = f"{rng.getrandbits(48):012x}"
        phone = f"05{rng.randrange(10)}-{rng.randrange(1000000, 9999999)}"
        text = rng.choice(
            (
                f"{name}: {words} [ref {token}]",
                f"{words}\ncall {name} {phone} [ref {token}]",
                f'photo from C:\\Users\\{name.split()[0]}\\Desktop "{words}" [ref {token}]',
                f"{words}\ttab\r\nsecond line {phone} [ref {token}]\u000b",
            )
        )
        return text


def _variant_case(rng: random.Random, unit: str) -> str:
    return rng.choice((unit, unit, unit.upper(), unit.capitalize()))


def _put(container: dict[str, Any], key: str, value: Any) -> None:
    if value is not MISSING:
        container[key] = value


def jwt(rng: random.Random, subject: int) -> str:
    """A token shaped like the service's HS256 JWTs (header.payload.signature)."""
    payload = json.dumps(
        {
            "sub": str(subject),
            "iat": rng.randrange(1_500_000_000, 1_750_000_000),
            "jti": f"{rng.getrandbits(64):016x}",
        },
        separators=(",", ":"),
    )
    body = base64.urlsafe_b64encode(payload.encode()).rstrip(b"=").decode()
    signature = base64.urlsafe_b64encode(rng.randbytes(32)).rstrip(b"=").decode()
    return f"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{body}.{signature}"


def ip_address(rng: random.Random) -> str:
    first = rng.choice((31, 37, 46, 77, 79, 84, 89, 109, 176, 212))
    return f"{first}.{rng.randrange(1, 255)}.{rng.randrange(1, 255)}.{rng.randrange(1, 255)}"


@dataclass
class EncodedRequest:
    """The `request` column of one case and what the pipeline must read from it."""

    document: Any  # the jsonb value; MISSING for a NULL column
    metadata: dict[str, Any]
    sources: list[tuple[str, str]]  # (image_uuid, source_gcs_path) in first-seen order
    token: str
    ip: str


def _image_url(rng: random.Random, image: str) -> str:
    name = image.upper() if rng.random() < 0.01 else image
    return f"gs://{GCS_BUCKET}/{GCS_PREFIX}/{name}.jpg"


def _taken_at(rng: random.Random, moment: dt.datetime) -> str:
    shown = moment - dt.timedelta(minutes=rng.uniform(1, 600))
    return rng.choice(
        (
            shown.strftime("%Y-%m-%dT%H:%M:%SZ"),
            shown.astimezone(dt.timezone(dt.timedelta(hours=3))).isoformat(timespec="seconds"),
            shown.strftime("%Y-%m-%d %H:%M:%S"),
        )
    )


def _images(rng: random.Random, case: Case) -> tuple[list[Any], list[tuple[str, str]]]:
    entries: list[Any] = []
    sources: list[tuple[str, str]] = []
    for image in case.images + case.duplicates:
        url = _image_url(rng, image)
        sources.append((image, url))
        entries.append(
            url if rng.random() < 0.6 else {"url": url, "taken_at": _taken_at(rng, case.created_at)}
        )
    if entries and rng.random() < 0.04:  # a repeated upload of one image in the same case
        image, url = rng.choice(sources)
        repeat = url if rng.random() < 0.5 else url.replace(image, image.upper())
        entries.append(repeat if rng.random() < 0.5 else {"url": repeat})
    if rng.random() < 0.05:
        junk = rng.choice(
            (None, 7, "", {"taken_at": "2019-03-02T10:11:12Z"}, {"url": None}, {"url": 5})
        )
        entries.insert(rng.randrange(len(entries) + 1), junk)
    return entries, sources


def _container(
    rng: random.Random,
    fields: dict[str, tuple[Any, Any]],
    wrong: tuple[Any, ...],
    p_wrong: float,
    forced: bool,
) -> tuple[Any, dict[str, Any]]:
    """An object of encoded fields, or (rarely, or when `forced`) a value of the wrong JSON
    type: then every field it holds is null (rule 8)."""
    if forced or rng.random() < p_wrong:
        return rng.choice(wrong), dict.fromkeys(fields)
    obj: dict[str, Any] = {}
    for key, (encoded, _) in fields.items():
        _put(obj, key, encoded)
    return obj, {key: clean for key, (_, clean) in fields.items()}


def encode_request(case: Case, rng: random.Random, pii: PiiLog) -> EncodedRequest:
    """The request JSON of a case, with the clean metadata the pipeline must recover."""
    enc = Encoder(rng)
    wrong = _FORCED_WRONG.get(case.index)
    token, ip = jwt(rng, case.patient.id), ip_address(rng)
    child = case.patient.vendor == "yeledoctor"
    age = float(rng.randrange(0, 18) if child else rng.randrange(0, 96))
    if rng.random() < 0.01:
        age = rng.choice((0.0, 120.0))
    age_field = enc.number("age", None if rng.random() < 0.1 else age)
    gender = enc.category("gender", 0.05)
    pregnant = enc.boolean(0.4)
    week = float(rng.randrange(4, 41)) if pregnant[1] else None
    patient, patient_clean = _container(
        rng,
        {
            "age": age_field,
            "gender": gender,
            "pregnancy": pregnant,
            "pregnancy_week": enc.number("pregnancy_week", week) if week else (MISSING, None),
            "pregnancy_birth_control_pills": enc.boolean(0.5),
        },
        ("n/a", 0, []),
        0.01,
        wrong == "patient",
    )
    roll = rng.random()
    temperature = (
        30.0
        if roll < 0.01
        else 45.0
        if roll < 0.02
        else None
        if roll < 0.3
        else round(rng.uniform(36.0, 39.5), 1)
    )
    pain, pain_clean = _container(
        rng,
        {"is_pain": enc.boolean(), "type": enc.category("pain_type")},
        ("yes", 1),
        0.02,
        wrong == "pain",
    )
    hair, hair_clean = _container(
        rng,
        {"exist": enc.boolean(), "type": enc.category("hair_loss_type")},
        (True, "no"),
        0.01,
        wrong == "hair_loss",
    )
    location_fields = {
        key: enc.category(f"location_{key}") for key in ("primary", "secondary", "side", "coverage")
    }
    location_fields |= {
        key: enc.boolean() for key in ("swelling", "widespread_face", "widespread_palm_feet")
    }
    location_fields |= {key: enc.multi(key) for key in ("primary_locations", "secondary_locations")}
    location, location_clean = _container(
        rng, location_fields, (["face", "cheek"], "face"), 0.01, wrong == "location"
    )
    answer_fields: dict[str, tuple[Any, Any]] = {
        "temperature": enc.number("temperature", temperature),
        **{
            key: enc.boolean()
            for key in (
                "itch",
                "pus",
                "cough",
                "crater",
                "vesicle",
                "bleeding",
                "swelling",
                "duration_from_birth",
            )
        },
        **{key: enc.category(key) for key in ("size", "shape", "quantity", "topography")},
        "duration": enc.duration(),
        "pain": (pain, None),
        "hair_loss": (hair, None),
        "location": (location, None),
        **{key: enc.multi(key) for key in ("color_condition", "texture", "color_pus")},
    }
    answers, answers_clean = _container(rng, answer_fields, ([], "none"), 0.005, wrong == "answers")
    answers_ok = isinstance(answers, dict)
    nested = {
        "pain_is_pain": pain_clean["is_pain"],
        "pain_type": pain_clean["type"],
        "hair_loss_exist": hair_clean["exist"],
        "hair_loss_type": hair_clean["type"],
        **{
            f"location_{k}": location_clean[k]
            for k in ("primary", "secondary", "side", "coverage", "swelling")
        },
        **{
            k: location_clean[k]
            for k in (
                "widespread_face",
                "widespread_palm_feet",
                "primary_locations",
                "secondary_locations",
            )
        },
    }
    metadata = {
        **patient_clean,
        **{
            k: v
            for k, v in answers_clean.items()
            if k not in ("duration", "pain", "hair_loss", "location")
        },
    }
    metadata["duration_days"] = answers_clean["duration"]
    metadata |= {k: v if answers_ok else None for k, v in nested.items()}
    if set(metadata) != set(METADATA_SCHEMA):
        raise AssertionError(f"metadata fields out of step with schema: {sorted(metadata)}")
    entries, sources = _images(rng, case)
    doctor = f"dr.{rng.choice(_SURNAMES).lower()}{rng.randrange(100)}@maccabi-derm.example"
    user_crypt = base64.b64encode(rng.randbytes(33)).decode()
    pii.add(token, ip)  # also in the sessions and the request log
    document: dict[str, Any] = {
        "version": rng.choice((1, 2, 3, 3, 3)),
        "images": entries,
        "lang": rng.choice(("he", "en", "ar")),
        "headers": {
            "Authorization": f"Bearer {token}",
            "X-Forwarded-For": ip,
            "X-Doctor-Email": doctor,
            "User-Agent": "DermaDetect/3.4 (Android 11)",
        },
        "user_crypt": user_crypt,
    }
    if isinstance(patient, dict) and rng.random() < 0.01:
        metadata |= dict.fromkeys(patient_clean)  # the object left out: its fields are null
    else:
        document["patient"] = patient
    if isinstance(answers, dict) and rng.random() < 0.005:
        metadata |= {key: None for key in metadata if key not in patient_clean}
    else:
        document["answers"] = answers
    if rng.random() < 0.7:
        document["free_text"] = enc.free_text()
    if case.form not in ("sql_null", "json_null"):
        pii.add(doctor, user_crypt, document.get("free_text", ""))
    no_images: dict[str, Any] = {"sql_null": MISSING, "json_null": None}
    if case.form in no_images:
        return EncodedRequest(no_images[case.form], metadata, [], token, ip)
    if case.form == "images_number":
        document["images"] = 5
    elif case.form == "images_null":
        document["images"] = None
    elif case.form == "no_images_key":
        del document["images"]
    return EncodedRequest(document, metadata, sources, token, ip)


@dataclass
class EncodedReview:
    diagnoses: Any  # jsonb value, MISSING for NULL
    icd9: str | None  # the truth's diagnosis_icd9 when this review wins


def _element(
    rng: random.Random, vocabulary: Vocabulary, name: str
) -> tuple[dict[str, Any], str | None]:
    spellings = vocabulary.spellings.get(name, ())
    shown = rng.choice(spellings) if spellings and rng.random() < 0.3 else name
    roll = rng.random()
    if roll < 0.15:
        shown = shown.replace(" ", "  ", 1)
    elif roll < 0.45:
        shown = _variant(rng, shown)
    code = vocabulary.codes.get(name)
    icd_roll = rng.random()
    element: dict[str, Any] = {"disease": shown}
    if code is not None and icd_roll < 0.65:
        element["icd9"] = code
        return element, code
    if icd_roll < 0.7:
        legacy = f"{rng.randrange(680, 710)}.{rng.randrange(10)}9"
        element["icd9"] = legacy  # an older coding than the table's: the review's own wins
        return element, legacy
    if icd_roll < 0.9:
        element["icd9"] = None
    return element, code


def encode_review(review: Review, vocabulary: Vocabulary, rng: random.Random) -> EncodedReview:
    """The `diagnoses` value of a review and the ICD-9 code its primary diagnosis carries."""
    excluded = vocabulary.exclusions
    if review.labels is None:
        return EncodedReview(MISSING, None)
    elements: list[Any] = []
    icd9 = None
    if not review.labels:
        if review.unlabeled_form == "excluded":
            elements = [
                {"disease": _variant(rng, name), "icd9": None}
                for name in rng.sample(excluded, min(len(excluded), rng.randrange(1, 3)))
            ]
            elements.insert(rng.randrange(len(elements) + 1), {"disease": None})
    else:
        if rng.random() < 0.08:
            elements.append({"disease": _variant(rng, rng.choice(excluded)), "icd9": None})
        for position, name in enumerate(review.labels):
            element, code = _element(rng, vocabulary, name)
            elements.append(element)
            if position == 0:
                icd9 = code
        if rng.random() < 0.05:
            elements.append(_element(rng, vocabulary, review.labels[0])[0])
        if rng.random() < 0.04:
            junk = rng.choice(({"disease": None}, {"disease": 12}, {"icd9": "706.1"}, {}))
            elements.insert(rng.randrange(len(elements) + 1), junk)
        if rng.random() < 0.04:
            elements.insert(
                rng.randrange(1, len(elements) + 1), {"disease": rng.choice(excluded), "icd9": None}
            )
    if review.modified_at.year < 2020 and rng.random() < 0.7:
        return EncodedReview(json.dumps(elements), icd9)  # older rows: double-encoded
    return EncodedReview(elements, icd9)
