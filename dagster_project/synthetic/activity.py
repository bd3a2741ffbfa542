"""Rows of the tables the pipeline must skip: users, sessions and the request log.

They carry PII (e-mails, phones, names, JWTs, IP addresses) and the request log is the
largest table of the dump, as in the real database, so that a parser that holds or decodes
tables it does not need shows up in memory and time.
"""

from __future__ import annotations

import base64
import datetime as dt
import random
from collections.abc import Iterator
from typing import Any

from dagster_project.synthetic.dump_writer import Json
from dagster_project.synthetic.truth import PiiLog

_FIRST = (
    "Yael",
    "Noa",
    "Avi",
    "Moshe",
    "Dana",
    "Omer",
    "Tamar",
    "Eitan",
    "Maya",
    "Yossi",
    "Shira",
    "Itai",
    "Lior",
    "Rivka",
    "Amir",
    "Hila",
)
_LAST = (
    "Cohen",
    "Levi",
    "Mizrahi",
    "Peretz",
    "Biton",
    "Friedman",
    "Shapiro",
    "Azulay",
    "Dahan",
    "Katz",
    "Avraham",
    "Golan",
)
_HEBREW_NAMES = ("יעל כהן", "משה לוי", "נועה מזרחי", "אבי פרץ")
_AGENTS = (
    "DermaDetect/3.4.1 (Android 11; SM-G991B)",
    "DermaDetect/3.2.0 (iPhone; iOS 15.4)",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/112.0 Safari/537.36",
    "okhttp/4.9.3",
)


def user_row(
    rng: random.Random, user_id: int, created_at: dt.datetime, pii: PiiLog, admin: bool = False
) -> tuple[Any, ...]:
    """One `users` row (every identifying value is recorded as PII)."""
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    domain = (
        "maccabi-derm.example"
        if admin
        else rng.choice(("gmail.example", "walla.example", "yahoo.example", "dd-mail.example"))
    )
    email = f"{first.lower()}.{last.lower()}{user_id}@{domain}"
    phone = f"+972-5{rng.randrange(10)}-{rng.randrange(100, 1000)}-{rng.randrange(1000, 10000)}"
    name = rng.choice(_HEBREW_NAMES) + f" {user_id}" if rng.random() < 0.2 else f"{first} {last}"
    salt = base64.b64encode(rng.randbytes(39)).decode().replace("+", ".")
    pii.add(email, phone, name)
    return (user_id, email, phone, name, f"$2b$12${salt}", created_at, admin)


def session_row(
    rng: random.Random, session_id: int, user_id: int, token: str, ip: str, created_at: dt.datetime
) -> tuple[Any, ...]:
    expires = created_at + dt.timedelta(days=30)
    return (session_id, user_id, token, ip, rng.choice(_AGENTS), created_at, expires)


def request_log_rows(
    rng: random.Random,
    first_id: int,
    request_id: int,
    case_uuid: str,
    n_images: int,
    token: str,
    ip: str,
    created_at: dt.datetime,
) -> Iterator[tuple[Any, ...]]:
    """The API calls of one submission: create, one upload per image, status polls."""
    agent = rng.choice(_AGENTS)
    calls = [("POST", "/api/v3/requests", 201)]
    calls += [("PUT", f"/api/v3/requests/{case_uuid}/images/{k}", 200) for k in range(n_images)]
    calls += [("GET", f"/api/v3/requests/{case_uuid}", 200) for _ in range(rng.randrange(1, 5))]
    if rng.random() < 0.05:
        calls.append(("GET", f"/api/v3/requests/{case_uuid}/report", 500))
    moment = created_at.replace(tzinfo=None)
    for offset, (method, path, status) in enumerate(calls):
        moment += dt.timedelta(seconds=rng.uniform(0.2, 900), microseconds=rng.randrange(10**6))
        headers = {
            "Host": "api.dermadetect.example",
            "User-Agent": agent,
            "Authorization": f"Bearer {token}",
            "X-Forwarded-For": ip,
            "Accept": "application/json",
            "Accept-Language": "he-IL,he;q=0.9,en-US;q=0.8",
            "X-Request-Id": f"{rng.getrandbits(128):032x}",
            "X-App-Build": str(rng.randrange(900)),
        }
        if status == 500:
            body = (
                "<html><head><title>500 Internal Server Error</title></head><body>\n"
                "<h1>Internal Server Error</h1>\n<pre>Traceback (most recent call last):\n"
                "  File \"/srv/api/report.py\", line 88, in render\nKeyError: 'lesion'\n"
                "</pre></body></html>"
            )
        else:
            body = (
                f'{{"status": "ok", "request_id": {request_id}, "uuid": "{case_uuid}", '
                f'"message": "accepted for review", "queue_position": {rng.randrange(300)}, '
                f'"eta_minutes": {rng.randrange(5, 600)}}}'
            )
        yield (
            first_id + offset,
            request_id,
            moment,
            method,
            path,
            status,
            rng.randrange(3, 2500),
            ip,
            Json(headers),
            body,
        )
