"""The review app in a real headless Chromium, and the contact sheet."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from ecomarine import Gallery, Pipeline  # noqa: E402
from ecomarine.results import ResultsWriter, read_results  # noqa: E402
from ecomarine.review import DecisionLog  # noqa: E402
from ecomarine.review._app import ReviewSession, create_review_app  # noqa: E402
from ecomarine.review.report import contact_sheet  # noqa: E402

from .helpers import LiveServer  # noqa: E402

pytestmark = [pytest.mark.enable_socket, pytest.mark.allow_hosts(["127.0.0.1"])]

HOSTILE_NAME = "<img src=x onerror=alert(1)>.jpg"
HOSTILE_ID = '<img src=x onerror="alert(2)">'
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@dataclasses.dataclass
class Season:
    root: Path  # the results' folder
    results: Path
    gallery: Path
    images: Path  # what the gallery's photo paths are relative to
    photos: list[Path]
    outside: Path


@pytest.fixture
def season(examples_dir: Path, tmp_path: Path) -> Season:
    """A catalogue of the example belugas and a results file of 24 real photos.

    Hostile on purpose: one photo named like HTML, one result pointing outside the results'
    folder, one pointing at a missing file, and an individual whose id is HTML.
    """
    belugas = examples_dir / "belugas"
    with (belugas / "gallery.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    pipe = Pipeline.from_pretrained("embedded", device="cpu")
    pipe.enroll(
        [belugas / r["image"] for r in rows],
        [r["individual_id"] for r in rows],
        "beluga",
        [{"source": r["image"], "date": r["date"]} for r in rows],
    )
    assert pipe.gallery is not None
    # An individual with an HTML id, holding a copy of a query photo so that it is proposed.
    first_query = sorted((belugas / "queries").glob("*.jpg"))[0]
    pipe.enroll([first_query], [HOSTILE_ID], "beluga", [{"source": f"queries/{first_query.name}"}])
    gallery = pipe.gallery.save(tmp_path / "gallery")
    root = tmp_path / "season"
    (root / "photos").mkdir(parents=True)
    photos = []
    sources = sorted((belugas / "queries").glob("*.jpg")) + sorted(
        (belugas / "sightings").glob("*/*.jpg")
    )
    for i, src in enumerate(sources):
        name = HOSTILE_NAME if i == 3 else f"{i:02d}-{src.name}"
        dst = root / "photos" / name
        shutil.copyfile(src, dst)
        photos.append(dst)
    outside = tmp_path / "outside.jpg"
    shutil.copyfile(sources[0], outside)
    results = root / "results.jsonl"
    with ResultsWriter(results) as writer:
        for pred in pipe.predict_many(photos):
            writer.write(pred)
        extra = list(pipe.predict_many([outside, sources[1]]))
        writer.write(dataclasses.replace(extra[0], source="../outside.jpg", sha256="out"))
        writer.write(dataclasses.replace(extra[1], source="photos/missing.jpg", sha256="gone"))
    return Season(root, results, gallery, belugas, photos, outside)


def session_for(season: Season, decisions: Path, reviewer: str = "alice") -> ReviewSession:
    return ReviewSession(
        season.results, season.gallery, decisions, reviewer, gallery_images=season.images
    )


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("no chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


# --- the queue and its guards, without a browser ----------------------------------------------


def test_queue_serves_only_named_photos_inside_their_folders(
    season: Season, tmp_path: Path
) -> None:
    session = session_for(season, tmp_path / "d.jsonl")
    items = session.queue()["items"]
    assert len(items) >= 20
    by_title = {it["title"]: it for it in items}
    assert by_title["outside.jpg"]["photos"][0]["token"] is None  # "../outside.jpg": never served
    assert by_title["missing.jpg"]["photos"][0]["token"] is None
    assert by_title[HOSTILE_NAME]["photos"][0]["token"] is not None
    uncertainties = [it["uncertainty"] for it in items]
    assert uncertainties == sorted(uncertainties, reverse=True)  # most uncertain first
    with LiveServer(create_review_app(session), "/api/queue") as server:
        good = by_title[HOSTILE_NAME]["photos"][0]["token"]
        assert httpx.get(f"{server.url}/api/photo/{good}").content == season.photos[3].read_bytes()
        for bad in ("0" * 20, "..%2F..%2Fetc%2Fpasswd", "%00"):
            assert httpx.get(f"{server.url}/api/photo/{bad}").status_code == 404
        r = httpx.get(f"{server.url}/")
        assert "script-src 'self'" in r.headers["content-security-policy"]


def test_decisions_apply_to_the_gallery_undo_conflicts_and_outside_changes(
    season: Season, tmp_path: Path
) -> None:
    decisions = tmp_path / "decisions.jsonl"
    alice = session_for(season, decisions, "alice")
    items = [it for it in alice.queue()["items"] if it["photos"][0]["token"]]
    a, b, c = items[:3]
    before = Gallery.load(season.gallery)
    first = a["candidates"][0]["individual_id"]
    d1 = alice.decide(a["item_id"], "confirm", first)
    assert len(d1.image_ids) == 1
    # Another process adds to the gallery meanwhile: nothing of it is lost.
    vec = before.embeddings[:1].copy()
    with Gallery.update(season.gallery) as g:
        g.add(vec, ["outsider"])
    d2 = alice.decide(b["item_id"], "new_individual", "whale-new-1")
    after = Gallery.load(season.gallery)
    assert len(after) == len(before) + 3
    assert {"outsider", "whale-new-1"} <= set(after.individuals())
    # Changing one's mind takes the earlier decision back first (no double enrolment).
    alice.decide(b["item_id"], "new_individual", "whale-new-2")
    now = Gallery.load(season.gallery)
    assert "whale-new-1" not in now.individuals()
    assert len(now) == len(before) + 3
    # A second reviewer who disagrees is recorded as a conflict, not applied.
    bob = session_for(season, decisions, "bob")
    # Bob agreeing with alice's new individual is agreement, not a clash with its id.
    agreed = bob.decide(b["item_id"], "new_individual", "whale-new-2")
    assert not agreed.conflict
    assert agreed.image_ids == ()  # alice's decision already added the photo
    assert len(Gallery.load(season.gallery)) == len(before) + 3
    bob.undo()
    d3 = bob.decide(a["item_id"], "not_cetacean", None)
    assert d3.conflict
    assert d3.image_ids == ()
    states = DecisionLog(decisions).states()
    assert states[a["item_id"]].conflict
    assert states[a["item_id"]].decision == d1  # the applied decision stands
    # Undo removes exactly what the decision added.
    alice.decide(c["item_id"], "skip", None)
    assert alice.undo() is not None  # the skip
    assert alice.undo() is not None  # whale-new-2
    assert "whale-new-2" not in Gallery.load(season.gallery).individuals()
    assert len(Gallery.load(season.gallery)) == len(before) + 2  # d1's photo and outsider
    assert d2.seq < d3.seq


def test_the_decisions_file_survives_a_torn_last_line(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "d.jsonl")
    log.append(item_id="photo:a", action="skip", reviewer="r")
    with (tmp_path / "d.jsonl").open("a") as fh:
        fh.write('{"seq": 2, "item_id": "photo:b", "act')  # a crash mid-write
    again = DecisionLog(tmp_path / "d.jsonl")
    assert [d.item_id for d in again.decisions] == ["photo:a"]


# --- in the browser --------------------------------------------------------------------------


def test_review_five_items_with_the_keyboard_undo_and_reopen(
    season: Season, tmp_path: Path, browser: Any
) -> None:
    decisions = tmp_path / "decisions.jsonl"
    session = session_for(season, decisions)
    before = Gallery.load(season.gallery)
    dialogs: list[str] = []
    shots = os.environ.get("ECOMARINE_DOCS_SCREENSHOTS")
    with LiveServer(create_review_app(session), "/api/queue") as server:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(server.url)
        page.wait_for_selector("#title:has-text('1/')")
        if shots:
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(Path(shots) / "review.png"))
            page.keyboard.press("c")  # side by side with candidate 1
            page.wait_for_selector("#compare:not([hidden])")
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(Path(shots) / "review-compare.png"))
            page.keyboard.press("Escape")
        items = session.queue()["items"]
        order = [it["item_id"] for it in items]

        def current() -> dict[str, Any]:
            title = page.locator("#title").inner_text()
            index = int(re.match(r"(\d+)/", title).group(1)) - 1  # type: ignore[union-attr]
            return items[index]

        def wait_moved(from_title: str) -> None:
            page.wait_for_function(
                "t => document.getElementById('title').textContent !== t", arg=from_title
            )

        done: list[tuple[str, str, str | None]] = []
        for key in ("1", "n", "s", "x", "1"):
            item = current()
            title = page.locator("#title").inner_text()
            if key == "n":
                page.keyboard.press("n")
                page.wait_for_selector("#new-id:focus")
                page.keyboard.press("Enter")
                done.append((item["item_id"], "new_individual", item["suggested_new_id"]))
            else:
                page.keyboard.press(key)
                action = {"1": "confirm", "s": "skip", "x": "not_cetacean"}[key]
                ind = item["candidates"][0]["individual_id"] if key == "1" else None
                done.append((item["item_id"], action, ind))
            wait_moved(title)
        assert page.locator("#progress").inner_text().startswith("5 of")
        page.keyboard.press("u")  # undo the last confirm
        page.wait_for_selector("#progress:has-text('4 of')")
        # HTML in names and ids is shown as text, never run: walk through every item.
        page.keyboard.press("Home")
        seen_name = seen_id = False
        for _ in range(len(items)):
            seen_name |= HOSTILE_NAME in page.locator("#title").inner_text()
            seen_id |= page.locator(".candidate .name", has_text=HOSTILE_ID).count() > 0
            assert page.locator("img[src='x']").count() == 0
            page.keyboard.press("ArrowRight")
        assert seen_name
        assert seen_id
        page.close()
        # Reopen: the decisions are kept, and the page starts at the first undecided item.
        again = browser.new_page()
        again.goto(server.url)
        again.wait_for_selector("#progress:has-text('4 of')")
        start = int(re.match(r"(\d+)/", again.locator("#title").inner_text()).group(1)) - 1  # type: ignore[union-attr]
        decided = {d[0] for d in done[:4]}
        assert order[start] not in decided
        assert all(o in decided for o in order[:start])
        again.close()
    assert dialogs == []
    # On disk: exactly the expected decisions and gallery changes.
    log = DecisionLog(decisions)
    assert [(d.item_id, d.action, d.individual_id) for d in log.in_force()] == done[:4]
    assert [d.action for d in log.decisions] == [
        "confirm",
        "new_individual",
        "skip",
        "not_cetacean",
        "confirm",
        "undo",
    ]
    assert all(d.reviewer == "alice" for d in log.decisions)
    lines = decisions.read_text().splitlines()
    assert len(lines) == 6
    assert json.loads(lines[-1])["undoes"] == 5
    after = Gallery.load(season.gallery)
    confirmed, new_id = done[0][2], done[1][2]
    assert len(after) == len(before) + 2
    counts = {i: after.individuals().count(i) for i in after.individuals()}
    assert new_id in counts

    def photos_of(g: Gallery, ind: str | None) -> int:
        return sum(1 for r in g.records() if r["individual_id"] == ind)

    assert photos_of(after, confirmed) == photos_of(before, confirmed) + 1
    assert photos_of(after, new_id) == 1


# --- the contact sheet -----------------------------------------------------------------------


def test_contact_sheet_embeds_every_photo_and_opens_without_a_server(
    season: Season, tmp_path: Path, browser: Any
) -> None:
    records = read_results(season.results)
    out = contact_sheet(
        records,
        tmp_path / "sheet.html",
        gallery=Gallery.load(season.gallery),
        results_root=season.root,
        gallery_root=season.images,
    )
    text = out.read_text()
    session = session_for(season, tmp_path / "unused.jsonl")
    items = session.queue()["items"]
    expected = sum(1 for it in items for p in it["photos"] if p["token"]) + sum(
        1 for it in items for c in it["candidates"] for p in c["photos"] if p["token"]
    )
    assert text.count('src="data:image/jpeg;base64,') == expected
    for remote in ("http://", "https://", "/api/"):
        assert remote not in text
    for it in items:
        for c in it["candidates"]:
            assert (
                re.sub("&", "&amp;", c["individual_id"]).replace("<", "&lt;").split("&lt;")[0]
                in text
            )
    assert "&lt;img src=x onerror=alert(1)&gt;.jpg" in text
    assert "<img src=x" not in text
    assert text.count("photo not available") >= 2  # outside and missing
    page = browser.new_page()
    page.goto(out.as_uri())
    broken = page.evaluate(
        "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length"
    )
    assert broken == 0
    assert page.evaluate("document.images.length") == expected
    page.close()


def test_cli_report_and_review_errors(season: Season, tmp_path: Path) -> None:
    from ecomarine.cli import main

    out = tmp_path / "sheet.html"
    code = main(
        [
            "report", str(season.results), "--html", str(out),
            "--gallery", str(season.gallery), "--gallery-images", str(season.images),
        ]
    )  # fmt: skip
    assert code == 0
    assert out.read_text().startswith("<!doctype html>")
    assert main(["report", str(season.results), "--html", str(out)]) == 2  # exists
    assert main(["review", str(season.results), "--gallery", str(tmp_path)]) == 2  # no gallery


def test_darwin_core_carries_the_reviewers_decisions(season: Season, tmp_path: Path) -> None:
    from ecomarine.cli import main
    from ecomarine.darwin_core import DatasetMetadata, to_occurrences
    from ecomarine.review import human_reviews, review_key

    decisions = tmp_path / "d.jsonl"
    session = session_for(season, decisions, "carol")
    items = [it for it in session.queue()["items"] if it["photos"][0]["token"]]
    confirmed, created, dropped, skipped = items[:4]
    session.decide(confirmed["item_id"], "confirm", confirmed["candidates"][0]["individual_id"])
    session.decide(created["item_id"], "new_individual", "whale-carol-1")
    session.decide(dropped["item_id"], "not_cetacean", None)
    session.decide(skipped["item_id"], "skip", None)
    records = [r for r in read_results(season.results) if r.accepted]
    occ = to_occurrences(
        records,
        dataset=DatasetMetadata(license="CC-BY-4.0"),
        read_exif=False,
        reviews=human_reviews(DecisionLog(decisions)),
    )
    kept = [r for r in records if review_key(r) != dropped["item_id"]]
    # The photo judged not a cetacean is left out (every record of it: a photo that is
    # also a sighting's copy appears twice).
    assert len(kept) < len(records)
    assert len(occ) == len(kept)
    by_key = {review_key(r): o for r, o in zip(kept, occ, strict=True)}
    c = by_key[confirmed["item_id"]]
    assert c["identificationVerificationStatus"] == "verified by human"
    assert c["identifiedBy"] == "carol"
    assert c["organismID"] == confirmed["candidates"][0]["individual_id"]
    n = by_key[created["item_id"]]
    assert n["organismID"] == "whale-carol-1"
    assert n["occurrenceRemarks"] == "new individual (created by a reviewer)"
    s = by_key[skipped["item_id"]]
    assert s["identificationVerificationStatus"] == "unverified"
    assert s["identifiedBy"].startswith("ecomarine")
    out = tmp_path / "dwca.zip"
    code = main(
        [
            "export-dwc", str(season.results), "--out", str(out), "--license", "CC-BY-4.0",
            "--decisions", str(decisions),
        ]
    )  # fmt: skip
    assert code == 0
    import zipfile

    with zipfile.ZipFile(out) as zf:
        text = zf.read("occurrence.txt").decode()
    verified = {confirmed["item_id"], created["item_id"]}
    # A photo that appears twice (a sighting's copy of a query) is the same photo: both count.
    assert text.count("verified by human") == sum(review_key(r) in verified for r in records)
    assert "whale-carol-1" in text


def test_photos_named_relative_to_the_working_folder_are_found_but_stay_confined(
    tmp_path: Path, examples_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ecomarine.review._queue import PhotoRegistry

    season = tmp_path / "season"
    season.mkdir()
    shutil.copyfile(
        sorted((examples_dir / "belugas" / "queries").glob("*.jpg"))[0], season / "a.jpg"
    )
    (tmp_path / "secret.jpg").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)  # as after `ecomarine identify season/ --output season/r.jsonl`
    reg = PhotoRegistry()
    assert reg.add("season/a.jpg", season) is not None  # via the working folder
    assert reg.add("a.jpg", season) is not None  # via the results' folder
    assert reg.add("secret.jpg", season) is None  # exists, but outside the results' folder
    assert reg.add("season/../secret.jpg", season) is None
    (season / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    assert reg.add("season/link.jpg", season) is None  # a link that points out
