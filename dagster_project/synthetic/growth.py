"""What a later dump adds to a population: new requests, re-reviews of older cases, and
re-uploads of older photos.

The service's tables only grow: a later dump holds every row of the earlier one unchanged,
plus new requests (of new and of returning patients), new reviews (some of them of older
cases, which change those cases' labels by the latest-wins rule) and new photos, some of
them copies of older photos uploaded again from another account (which joins two patients'
photo groups that an earlier dataset version may have put in different splits).
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator

from dagster_project.synthetic.population import (
    TRANSFORMS,
    Builder,
    Case,
    Population,
    forced,
    jitter,
    new_uuid,
)

# How a new review of an older case relates to the review that won before it:
# another diagnosis, the first review of a pending case, an empty or excluded-only
# review (the case leaves the dataset), or a row with a higher id but an earlier
# `modified_at` than the current winner (a late import: it must not win).
REREVIEW_KINDS = ("relabel", "first_review", "unlabel", "backdated")
_REREVIEW_WEIGHTS = (55, 20, 15, 10)
_REREVIEW_RATE = 0.1  # re-reviews of older cases per new request
_REQUESTS_PER_DAY = 80
# Who uploads an older photo again: a new patient (family account), a returning patient
# with photos in the older dataset (the copy joins two older photo groups), or the photo's
# own patient in a new case (then with any same-patient transform).
COPY_HOSTS = ("new_patient", "other_old_patient", "own")
_COPY_WEIGHTS = (60, 20, 20)
_SAME_PATIENT_TRANSFORMS = tuple(t for t in TRANSFORMS if t != "exact_copy_other_patient")


def grow_population(
    population: Population,
    extra_requests: int,
    rng: random.Random,
    step: int,
    since: dt.datetime,
    protected: set[str],
) -> list[Case]:
    """Append `extra_requests` cases created after `since` (the previous dump's moment) and
    re-reviews of older cases, all marked `step`; returns the new cases.

    No re-review takes the labels away from a case holding an image of `protected`
    (planted duplicates and their originals must stay in the expected records).
    """
    if extra_requests < 1:
        raise ValueError(f"extra_requests must be at least 1, not {extra_requests}")
    builder = Builder.resume(rng, population, step)
    span = dt.timedelta(days=max(1.0, extra_requests / _REQUESTS_PER_DAY))
    start = since + dt.timedelta(minutes=1)
    moments = sorted(start + span * rng.random() for _ in range(extra_requests))
    first = len(population.cases)
    new = [builder.case(first + k, jitter(rng, moment)) for k, moment in enumerate(moments)]
    count = max(len(REREVIEW_KINDS), round(_REREVIEW_RATE * extra_requests))
    _rereview(builder, population.cases, count, start, span, protected)
    population.cases.extend(new)
    return new


def _shuffled(rng: random.Random, cases: list[Case]) -> Iterator[Case]:
    rng.shuffle(cases)
    return iter(cases)


def _rereview(
    builder: Builder,
    cases: list[Case],
    count: int,
    start: dt.datetime,
    span: dt.timedelta,
    protected: set[str],
) -> None:
    """Add `count` reviews to distinct `cases` (fewer where no case fits a kind)."""
    rng = builder.rng
    unprotected = [c for c in cases if not protected.intersection(c.images + c.duplicates)]
    pools = {
        "relabel": _shuffled(rng, [c for c in cases if c.included]),
        "first_review": _shuffled(
            rng, [c for c in cases if not c.reviews and not c.test_account and c.images]
        ),
        "unlabel": _shuffled(rng, [c for c in unprotected if c.included]),
        "backdated": _shuffled(rng, [c for c in cases if c.included]),
    }
    counter: dict[str, int] = {}
    taken: set[int] = set()
    for _ in range(count):
        kind = forced(rng, REREVIEW_KINDS, _REREVIEW_WEIGHTS, counter)
        case = next((c for c in pools[kind] if c.request_id not in taken), None)
        if case is None:
            continue
        taken.add(case.request_id)
        latest = case.latest
        if kind == "backdated" and latest is not None:
            moment = latest.modified_at - dt.timedelta(hours=rng.uniform(1, 72))
        else:
            moment = jitter(rng, start + span * rng.random())
            if latest is not None and moment <= latest.modified_at:
                moment = latest.modified_at + dt.timedelta(hours=rng.uniform(1, 72))
        if kind == "unlabel":
            form = rng.choice(("empty", "excluded"))
            case.reviews.append(builder.review(case.request_id, moment, [], form))
        else:
            labels = builder.other_labels(case.labels) if case.reviews else builder.labels()
            case.reviews.append(builder.review(case.request_id, moment, labels))


def plant_old_copies(
    older: list[Case], new: list[Case], avoid: set[str], rng: random.Random, rate: float = 0.02
) -> dict[str, tuple[str, str]]:
    """Re-uploads of older photos in new cases (~`rate` of the new photos, at least one per
    kind of uploader where one exists): copy image_uuid -> (original, transform).

    Originals are photos (never one of `avoid`) of older cases that reach the manifest;
    hosts are new cases that reach it. A copy by another patient is an exact copy.
    """
    hosts = [case for case in new if case.included]
    old_patients = {case.patient.id for case in older}
    in_dataset = {case.patient.id for case in older if case.included}
    by_patient: dict[int, list[Case]] = {}
    for case in hosts:
        by_patient.setdefault(case.patient.id, []).append(case)
    by_kind = {
        "new_patient": [c for c in hosts if c.patient.id not in old_patients],
        "other_old_patient": [c for c in hosts if c.patient.id in in_dataset],
    }
    originals = [
        (case, image)
        for case in older
        if case.included
        for image in case.images
        if image not in avoid
    ]
    rng.shuffle(originals)
    sources = {
        "own": iter([item for item in originals if item[0].patient.id in by_patient]),
        "new_patient": iter(originals),
        "other_old_patient": iter(originals),
    }
    new_images = sum(len(case.images) for case in new)
    wanted = min(len(originals), max(len(COPY_HOSTS), round(rate * new_images)))
    counter: dict[str, int] = {}
    used: set[str] = set()
    planted: dict[str, tuple[str, str]] = {}
    for _ in range(wanted):
        kind = forced(rng, COPY_HOSTS, _COPY_WEIGHTS, counter)
        picked = next((item for item in sources[kind] if item[1] not in used), None)
        if picked is None:
            continue
        case, image = picked
        if kind == "own":
            host: Case | None = rng.choice(by_patient[case.patient.id])
            transform = rng.choice(_SAME_PATIENT_TRANSFORMS)
        else:
            host = _other_patient_host(rng, by_kind[kind], case.patient.id)
            transform = "exact_copy_other_patient"
        if host is None:
            continue
        used.add(image)
        copy = new_uuid(rng)
        host.duplicates.append(copy)
        planted[copy] = (image, transform)
    return planted


def _other_patient_host(rng: random.Random, pool: list[Case], patient_id: int) -> Case | None:
    """A case of `pool` whose patient is not `patient_id` (None if there is none)."""
    host = rng.choice(pool) if pool else None
    if host is not None and host.patient.id == patient_id:
        others = [case for case in pool if case.patient.id != patient_id]
        host = rng.choice(others) if others else None
    return host
