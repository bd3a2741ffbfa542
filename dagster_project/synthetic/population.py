"""The skeleton of the synthetic service: patients, cases, images and dermatologist reviews.

Everything the ground truth depends on is decided here, before any value is written
messily: who is a test account, which review of a case is the latest and what its clean
labels are, which images a case holds. Proportions follow the real service (SOURCE_FORMAT.md:
~0.79 reviews per request, ~2.4 images per case, ~2% test accounts), scaled by the number of
requests; rare situations the pipeline must get right are forced to occur at least once.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
import uuid
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from dagster_project.synthetic.diseases import Vocabulary
from dagster_project.synthetic.dump_writer import DUMP_TIMEZONE

UTC = dt.UTC
START = dt.datetime(2018, 5, 1, tzinfo=UTC)
END = dt.datetime(2025, 6, 30, tzinfo=UTC)
_LOCAL = ZoneInfo(DUMP_TIMEZONE)

# How a request without usable images is stored (SOURCE_FORMAT.md section 7, rule 9).
NO_IMAGE_FORMS = ("sql_null", "json_null", "images_number", "images_null", "no_images_key")
# How the latest review of a re-reviewed case relates to the earlier ones.
REVIEW_SCENARIOS = (
    "later_wins",
    "later_has_lower_id",
    "tie_highest_id",
    "dst_fallback",
    "latest_empty",
    "latest_excluded",
)
_REVIEW_WEIGHTS = (60, 12, 8, 5, 8, 7)
TEST_MODES = ("flag", "list", "both")
_IMAGE_COUNT_WEIGHTS = (5, 25, 30, 19, 11, 5, 3, 1.5, 0.5)  # 0..8 images, mean ~2.4


@dataclass(slots=True)
class Review:
    """One dermatologist_annotation row. `labels` None is a NULL `diagnoses` column; an
    empty list is written as `[]` or as non-diagnoses only (`unlabeled_form`). `step` is the
    dump that first holds it: 0 for `generate`, n for the n-th `grow`."""

    id: int
    request_id: int
    modified_at: dt.datetime
    labels: list[str] | None
    unlabeled_form: str = "empty"
    step: int = 0


@dataclass(slots=True)
class Patient:
    id: int
    user_id: int
    vendor: str
    test_mode: str = ""


@dataclass(slots=True)
class Case:
    index: int
    request_id: int
    uuid: str
    patient: Patient
    is_test: bool | None
    created_at: dt.datetime
    modified_at: dt.datetime | None
    form: str
    images: list[str]
    reviews: list[Review] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    step: int = 0  # the dump that first holds the request, as for Review

    @property
    def latest(self) -> Review | None:
        """The review that wins: latest instant, ties to the highest id."""
        return max(self.reviews, key=lambda r: (r.modified_at, r.id), default=None)

    @property
    def labels(self) -> list[str]:
        latest = self.latest
        return list(latest.labels or []) if latest is not None else []

    @property
    def test_account(self) -> bool:
        return bool(self.is_test) or self.patient.test_mode in ("list", "both")

    @property
    def included(self) -> bool:
        """Whether the case yields manifest rows (rule 1 of SOURCE_FORMAT.md section 7)."""
        return not self.test_account and bool(self.labels) and bool(self.images)


@dataclass
class Population:
    cases: list[Case]
    patients: list[Patient]
    orphan_reviews: list[Review]
    vocabulary: Vocabulary

    @property
    def test_patient_ids(self) -> list[int]:
        """The configured test-patient list: accounts in `list` or `both` mode."""
        return [p.id for p in self.patients if p.test_mode in ("list", "both")]


def new_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def forced(
    rng: random.Random,
    options: tuple[str, ...],
    weights: tuple[float, ...],
    counter: dict[str, int],
) -> str:
    """Draw an option, but hand out every option once before drawing by weight."""
    for option in options:
        if counter.get(option, 0) == 0:
            counter[option] = 1
            return option
    choice = rng.choices(options, weights=weights)[0]
    counter[choice] += 1
    return choice


def dst_fallback(year: int) -> dt.datetime:
    """The instant (UTC) the dump's time zone leaves summer time in `year`."""
    moment = dt.datetime(year, 10, 20, tzinfo=UTC)
    summer = moment.astimezone(_LOCAL).utcoffset()
    while (moment + dt.timedelta(hours=1)).astimezone(_LOCAL).utcoffset() == summer:
        moment += dt.timedelta(hours=1)
    return moment + dt.timedelta(hours=1)


def jitter(rng: random.Random, moment: dt.datetime) -> dt.datetime:
    """Half of the timestamps carry microseconds, like the service's."""
    return moment.replace(microsecond=rng.randrange(1, 1_000_000) if rng.random() < 0.5 else 0)


class Builder:
    """Draws patients, cases and reviews; `resume` continues the id ranges of a population."""

    def __init__(
        self,
        rng: random.Random,
        vocabulary: Vocabulary,
        first_request_id: int,
        step: int = 0,
        patients: list[Patient] | None = None,
    ):
        self.rng = rng
        self.vocabulary = vocabulary
        self.step = step
        self.next_request_id = first_request_id
        self.next_review_id = first_request_id
        self.patients: list[Patient] = patients if patients is not None else []
        self.patient_ids: set[int] = {patient.id for patient in self.patients}
        self.counters: dict[str, dict[str, int]] = {"test": {}, "form": {}, "review": {}}
        # Zipf-like: the label frequencies of the real service fall off by rank.
        weights = (1.0 / (rank + 1) ** 1.05 for rank in range(len(vocabulary.names)))
        self.cum_weights = list(itertools.accumulate(weights))
        self.gaps: list[int] = []

    @classmethod
    def resume(cls, rng: random.Random, population: Population, step: int) -> Builder:
        """A builder whose new requests, reviews and patients follow every existing one
        (orphan reviews' request ids included, so none of them gains a request); it appends
        new patients to `population.patients`."""
        reviews = [r for case in population.cases for r in case.reviews]
        reviews += population.orphan_reviews
        builder = cls(
            rng,
            population.vocabulary,
            max([c.request_id for c in population.cases] + [r.request_id for r in reviews]) + 1,
            step,
            population.patients,
        )
        builder.next_review_id = max(review.id for review in reviews) + 1
        return builder

    def _patient_id(self) -> int:
        rng = self.rng
        while True:
            if len(self.patients) == 3:  # twins: equal as float64, distinct as int64
                value = 2**62 + rng.randrange(2**40) * 4096
            elif len(self.patients) == 4:
                value = self.patients[3].id + 1
            elif rng.random() < 0.03:
                value = rng.randrange(2**53 + 1, 2**63)
            else:
                value = rng.randrange(10**6, 10**10)
            if value not in self.patient_ids:
                self.patient_ids.add(value)
                return value

    def _new_patient(self) -> Patient:
        rng = self.rng
        vendor = rng.choices(["maccabi", "yeledoctor", "clalit", "dd-web"], [70, 28, 1.2, 0.8])[0]
        patient = Patient(self._patient_id(), len(self.patients) + 1, vendor)
        if rng.random() < 0.02 or len(self.patients) in (5, 9, 13):
            patient.test_mode = forced(rng, TEST_MODES, (1, 1, 1), self.counters["test"])
        self.patients.append(patient)
        return patient

    def labels(self) -> list[str]:
        """One to three distinct canonical diagnoses, primary first."""
        rng = self.rng
        k = rng.choices((1, 2, 3), (75, 20, 5))[0]
        picked = rng.choices(self.vocabulary.names, cum_weights=self.cum_weights, k=k + 2)
        return list(dict.fromkeys(picked))[:k]

    def other_labels(self, avoid: list[str] | None) -> list[str]:
        """Labels that differ from `avoid`, so that picking the wrong review shows."""
        labels = self.labels()
        while labels == avoid:
            labels = self.labels()
        return labels

    def review(
        self, request_id: int, moment: dt.datetime, labels: list[str] | None, form: str = "empty"
    ) -> Review:
        review = Review(self.next_review_id, request_id, moment, labels, form, self.step)
        self.next_review_id += 1
        return review

    def reviews(self, case: Case) -> list[Review]:
        rng = self.rng
        first = jitter(rng, case.created_at + dt.timedelta(minutes=rng.uniform(20, 4320)))
        # ~10% are re-reviewed; the first reviewed case always is, so every dump has one.
        if rng.random() >= 0.10 and self.counters["review"]:
            if rng.random() < 0.05:
                form = rng.choices(("empty", "excluded", "null"), (4, 4, 2))[0]
                return [self.review(case.request_id, first, None if form == "null" else [], form)]
            return [self.review(case.request_id, first, self.labels())]
        scenario = forced(rng, REVIEW_SCENARIOS, _REVIEW_WEIGHTS, self.counters["review"])
        earlier = self.review(case.request_id, first, self.labels())
        later_time = jitter(rng, first + dt.timedelta(hours=rng.uniform(1, 2000)))
        if scenario == "latest_empty":
            return [earlier, self.review(case.request_id, later_time, [], "empty")]
        if scenario == "latest_excluded":
            return [earlier, self.review(case.request_id, later_time, [], "excluded")]
        if scenario == "tie_highest_id":
            return [
                earlier,
                self.review(case.request_id, first, self.other_labels(earlier.labels)),
            ]
        if scenario == "dst_fallback":
            fallback = dst_fallback(case.created_at.year)
            if fallback < case.created_at:
                fallback = dst_fallback(case.created_at.year + 1)
            # The later review reads earlier as local text (01:10+02 after 01:40+03).
            winner = self.review(
                case.request_id, fallback + dt.timedelta(minutes=10), self.labels()
            )
            loser = self.review(
                case.request_id,
                fallback - dt.timedelta(minutes=20),
                self.other_labels(winner.labels),
            )
            return [winner, loser]
        later = self.review(case.request_id, later_time, self.other_labels(earlier.labels))
        if scenario == "later_has_lower_id":
            earlier.id, later.id = later.id, earlier.id
        result = [earlier, later]
        if rng.random() < 0.2:
            third_time = jitter(rng, later_time + dt.timedelta(hours=rng.uniform(1, 500)))
            result.append(self.review(case.request_id, third_time, self.labels()))
        return result

    def case(self, index: int, created_at: dt.datetime) -> Case:
        rng = self.rng
        if self.patients and rng.random() < 0.4:
            patient = rng.choice(self.patients[-200:])
        else:
            patient = self._new_patient()
        if rng.random() < 0.01 and index > 0:
            self.gaps.append(self.next_request_id)
            self.next_request_id += rng.randrange(1, 4)
        request_id = self.next_request_id
        self.next_request_id += 1
        if patient.test_mode in ("flag", "both"):
            is_test: bool | None = True
        elif patient.test_mode == "" and (rng.random() < 0.005 or index == 7):
            is_test = True  # a QA submission from a real patient's account
        else:
            is_test = rng.choice((None, False, False))
        form = "json"
        if rng.random() < 0.012 or index in range(11, 11 + len(NO_IMAGE_FORMS)):
            form = forced(rng, NO_IMAGE_FORMS, (1,) * len(NO_IMAGE_FORMS), self.counters["form"])
        n_images = 0 if form != "json" else rng.choices(range(9), _IMAGE_COUNT_WEIGHTS)[0]
        modified_roll = rng.random()
        modified_at = (
            None
            if modified_roll < 0.03
            else created_at
            if modified_roll < 0.10
            else jitter(rng, created_at + dt.timedelta(seconds=rng.uniform(1, 7200)))
        )
        case = Case(
            index=index,
            request_id=request_id,
            uuid=new_uuid(rng),
            patient=patient,
            is_test=is_test,
            created_at=created_at,
            modified_at=modified_at,
            form=form,
            images=[new_uuid(rng) for _ in range(n_images)],
            step=self.step,
        )
        if rng.random() < 0.72:
            case.reviews = self.reviews(case)
        return case

    def orphans(self, count: int, last_request_id: int) -> list[Review]:
        rng = self.rng
        targets = self.gaps + [last_request_id + k for k in range(1, 50)]
        moment = START + dt.timedelta(days=rng.uniform(0, (END - START).days))
        return [
            self.review(rng.choice(targets), jitter(rng, moment), self.labels())
            for _ in range(count)
        ]


def build_population(
    requests: int, rng: random.Random, vocabulary: Vocabulary, first_request_id: int = 1
) -> Population:
    """Draw the skeleton of `requests` cases; deterministic for the state of `rng`."""
    if requests < 1:
        raise ValueError(f"requests must be at least 1, not {requests}")
    builder = Builder(rng, vocabulary, first_request_id)
    span = (END - START).total_seconds()
    # More recent years are busier: the service grew.
    moments = sorted(
        START + dt.timedelta(seconds=span * rng.random() ** 0.7) for _ in range(requests)
    )
    cases = [builder.case(index, jitter(rng, moment)) for index, moment in enumerate(moments)]
    n_reviews = sum(len(case.reviews) for case in cases)
    orphans = builder.orphans(max(1, n_reviews // 200), cases[-1].request_id)
    return Population(cases, builder.patients, orphans, vocabulary)


TRANSFORMS = (
    "exact_copy",
    "exact_copy_other_patient",
    "resize",
    "recompress",
    "crop",
    "mirror",
    "rotate90",
    "brightness",
    "colour_shift",
)
_TRANSFORM_WEIGHTS = (25, 10, 15, 15, 10, 7, 6, 6, 6)
BAD_STATUSES = ("missing", "empty", "truncated", "not_an_image", "too_large")
_BAD_WEIGHTS = (35, 15, 20, 20, 10)


def plant_duplicates(
    cases: list[Case],
    rng: random.Random,
    rate: float = 0.03,
    even_transforms: bool = False,
) -> dict[str, tuple[str, str]]:
    """Re-uploads of ~`rate` of the photos of `cases`: new image_uuid -> (original, transform).

    Originals are photos of cases that reach the manifest; each copy joins one of `cases`
    that reaches it too: a case of the same patient, or of another patient for
    `exact_copy_other_patient`. The copy's uuid is appended to that case's duplicates.
    Transforms are drawn by their weight in uploads, or taken in turn with `even_transforms`
    (each as often as the others, to measure each of them).
    """
    included = [case for case in cases if case.included]
    by_patient: dict[int, list[Case]] = {}
    for case in included:
        by_patient.setdefault(case.patient.id, []).append(case)
    originals = [(case, image) for case in included for image in case.images]
    rng.shuffle(originals)
    total = sum(len(case.images) for case in cases)
    wanted = min(len(originals), max(len(TRANSFORMS), round(rate * total)))
    counter: dict[str, int] = {}
    planted: dict[str, tuple[str, str]] = {}
    for index, (case, image) in enumerate(originals[:wanted]):
        if even_transforms:
            transform = TRANSFORMS[index % len(TRANSFORMS)]
        else:
            transform = forced(rng, TRANSFORMS, _TRANSFORM_WEIGHTS, counter)
        if transform == "exact_copy_other_patient":
            others = [c for c in included if c.patient.id != case.patient.id]
            if not others:
                continue
            host = rng.choice(others)
        else:
            host = rng.choice(by_patient[case.patient.id])
        copy = new_uuid(rng)
        host.duplicates.append(copy)
        planted[copy] = (image, transform)
    return planted


def pick_bad_images(
    cases: list[Case], avoid: set[str], rng: random.Random, rate: float = 0.01
) -> dict[str, str]:
    """~`rate` of the images of `cases` (never one in `avoid`) -> broken status."""
    candidates = [image for case in cases for image in case.images if image not in avoid]
    rng.shuffle(candidates)
    wanted = min(len(candidates), max(len(BAD_STATUSES), round(rate * len(candidates))))
    counter: dict[str, int] = {}
    return {
        image: forced(rng, BAD_STATUSES, _BAD_WEIGHTS, counter) for image in candidates[:wanted]
    }
