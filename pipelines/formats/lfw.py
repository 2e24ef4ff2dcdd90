"""LFW 1.0 (Labeled Faces in the Wild, face verification), as CVAT and datumaro lay it out.

    [<subset>/]annotations/pairs.txt      matched: <person> <n1> <n2>
                                          mismatched: <person1> <n1> <person2> <n2>
                                          a first line `<folds> <pairs>` is a header
    [<subset>/]annotations/people.txt     <person> <image count> (lines of one number: counts)
    [<subset>/]annotations/landmarks.txt  <person>/<image> x1 y1 x2 y2 ...
    [<subset>/]images/<person>/<person>_0001.jpg

(CVAT's own export puts the three text files beside `images/`, without
`annotations/`; both are read.) Image numbers are written without their
zero padding (`1` is `<person>_0001`); a number that is not a number is an
image name. Fields are tab-separated, stray spaces allowed.

Every image of `images/` or named by a text file is an item, `item_id`
`<subset>/<person>/<image stem>`, with a `tag` whose label is the person. A
pair is kept on the tag of its first image: attribute `positive_pairs`
(matched) or `negative_pairs` (mismatched), a list of the other images'
`<person>/<stem>`. A landmarks line is a `points` annotation (vertex order as
written, no names: LFW does not define them). people.txt is kept as dataset
attributes (owner `dataset:<people.txt path>`, key the person, value the
count). Writing: one task per subset for the three files, image shards for
`images/`. See docs/formats/lfw.md.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator

from pipelines.builder import BatchBuilder, is_finite, parse_attribute
from pipelines.formats import _image_sets as sets
from pipelines.formats import _per_image as per_image
from pipelines.formats._mot import number_text
from pipelines.formats.base import (
    Detection,
    Format,
    ReadOptions,
    ReadTask,
    WriteOptions,
    WriteResult,
    WriteTask,
)
from pipelines.schema import Batch
from pipelines.staging import ItemGroup, Staging
from pipelines.storage import Output, Source

NAME = "lfw"
PAIRS, PEOPLE, LANDMARKS = "pairs.txt", "people.txt", "landmarks.txt"
ANNOTATIONS_DIR, IMAGES_DIR = "annotations", "images"
POSITIVE, NEGATIVE = "positive_pairs", "negative_pairs"
_ANN = "annotations"


# -- detection and planning ------------------------------------------------------------


def _roots(source: Source) -> list[str]:
    """Folders holding pairs.txt or people.txt (landmarks.txt counts inside annotations/)."""
    roots = set()
    for f in source.files:
        folder, base = posixpath.split(f)
        if base in (PAIRS, PEOPLE) or (
            base == LANDMARKS and posixpath.basename(folder) == ANNOTATIONS_DIR
        ):
            roots.add(folder)
    return sorted(roots)


def _layout(folder: str) -> tuple[str, str | None]:
    """(images folder, subset) of an annotation folder."""
    base = posixpath.dirname(folder) if posixpath.basename(folder) == ANNOTATIONS_DIR else folder
    return sets.join(base, IMAGES_DIR), posixpath.basename(base) or None


def detect(source: Source) -> Detection | None:
    if not source.is_dir:
        return None
    for root in _roots(source):
        if posixpath.basename(root) != ANNOTATIONS_DIR:
            # Beside images/ (CVAT's layout): the first pairs line must read as LFW's.
            images, _ = _layout(root)
            if not any(f.startswith(images + "/") for f in source.files):
                continue
            member = sets.join(root, PAIRS)
            line = sets.first_line(source, member) if member in source.files else ""
            if line and "\t" not in line and len(line.split()) != 1:
                continue
        return Detection(0.9, f"LFW annotation files in {root or 'the root folder'}")
    return None


def plan_read(source: Source, options: ReadOptions) -> list[ReadTask]:
    if not source.is_dir:
        return []
    tasks = []
    for root in _roots(source):
        images, subset = _layout(root)
        ctx = {"root": root, "images": images}
        tasks.append(ReadTask(NAME, source, subset=subset, context=ctx, options=options))
    return tasks


# -- reading -----------------------------------------------------------------------------


def _ref(person: str, image: str) -> str:
    """`<person>/<stem>` of an image named by number (1 → <person>_0001) or by name."""
    if image.lstrip("-").isdigit():
        return f"{person}/{person}_{int(image):04d}"
    return f"{person}/{per_image.strip_ext(image)}"


class _Reader:
    """Holds one annotation folder's pairs and landmarks (small files), then emits items."""

    def __init__(self, task: ReadTask, b: BatchBuilder) -> None:
        self.task, self.b = task, b
        self.root = task.context["root"]
        self.refs: dict[str, None] = {}
        self.pairs: dict[str, dict[str, list[str]]] = {}
        self.landmarks: dict[str, list[list[float]]] = {}

    def _lines(self, name: str) -> Iterator[tuple[str, int, list[str]]]:
        member = sets.join(self.root, name)
        if member in self.task.source.files:
            for n, line in sets.text_lines(self.task.source, member):
                if line.strip():
                    yield f"{member}, line {n}", n, line.split()

    def _reject(self, where: str, reason: str, fields: list[str], kind: str = _ANN) -> None:
        self.b.read_counts["annotations"] += kind == _ANN
        self.b.reject(where, reason, record="\t".join(fields), record_kind=kind)

    def read_pairs(self) -> None:
        for where, n, f in self._lines(PAIRS):
            if len(f) == 1:
                self.refs.setdefault(per_image.strip_ext(f[0]))
            elif len(f) == 2 and n == 1 and all(t.isdigit() for t in f):
                owner = f"dataset:{sets.join(self.root, PAIRS)}"
                header = [int(t) for t in f]
                self.b.attribute(owner, None, "header", header, owner_kind="dataset", source=NAME)
            elif len(f) in (3, 4):
                first = _ref(f[0], f[1])
                second = _ref(f[0], f[2]) if len(f) == 3 else _other(f[2], f[3])
                key = POSITIVE if len(f) == 3 else NEGATIVE
                self.refs.setdefault(first)
                self.refs.setdefault(second)
                self.pairs.setdefault(first, {}).setdefault(key, []).append(second)
            else:
                reason = f"{len(f)} fields; a pair has 3 (matched) or 4 (mismatched)"
                self._reject(where, reason, f)

    def read_landmarks(self) -> None:
        for where, _, f in self._lines(LANDMARKS):
            try:
                coords = [float(t) for t in f[1:]]
            except ValueError:
                self._reject(where, "a coordinate is not a number", f)
                continue
            if not coords or len(coords) % 2 or not is_finite(*coords):
                self._reject(where, "expected an image then x y pairs of finite numbers", f)
                continue
            ref = per_image.strip_ext(f[0])
            self.refs.setdefault(ref)
            self.landmarks.setdefault(ref, []).append(coords)

    def read_people(self) -> None:
        owner = f"dataset:{sets.join(self.root, PEOPLE)}"
        for where, _, f in self._lines(PEOPLE):
            if len(f) == 1 and f[0].isdigit():
                continue  # fold sizes
            if len(f) == 2 and f[1].isdigit():
                self.b.attribute(owner, None, f[0], int(f[1]), owner_kind="dataset", source=NAME)
                continue
            self._reject(where, "expected <person> <image count>", f, kind="labels")

    def items(self) -> Iterator[None]:
        images = sets.images_under(self.task.source, self.task.context["images"])
        prefix = self.task.context["images"] + "/"
        subset = self.task.subset
        for ref in sorted(set(self.refs) | set(images)):
            image = images.get(ref)
            item_id = sets.join(subset, ref)
            file_name = image[len(prefix) :] if image else ref + ".jpg"
            sets.add_item(
                self.b,
                self.task,
                item_id,
                image=image,
                file_name=file_name,
                subset=subset,
                native_id=ref,
            )
            person = ref.split("/", 1)[0] if "/" in ref else None
            if person:
                ann_id = sets.tag(self.b, item_id, person)
                for key, others in self.pairs.get(ref, {}).items():
                    self.b.attribute(ann_id, item_id, key, others, source=NAME)
            for k, coords in enumerate(self.landmarks.get(ref, ())):
                ann_id = f"{item_id}/points/{k}"
                self.b.annotation(
                    ann_id=ann_id, item_id=item_id, kind="points", label=person, units="px"
                )
                self.b.points(ann_id, item_id, coords)
                self.b.read_counts["annotations"] += 1
            yield


def _other(person: str, image: str) -> str:
    """The second image of a mismatched pair; `-` means no person folder."""
    return per_image.strip_ext(image) if person == "-" else _ref(person, image)


def read(task: ReadTask) -> Iterator[Batch]:
    b = task.builder()
    reader = _Reader(task, b)
    reader.read_pairs()
    reader.read_landmarks()
    reader.read_people()
    for _ in reader.items():
        if b.full():
            yield b.flush()
    yield b.flush()


# -- writing -------------------------------------------------------------------------------


_LANDMARK_KINDS = ("points", "keypoints", "point")
"""A landmarks line comes from these kinds: the only vertices the writer reads."""


def plan_write(staging: Staging, options: WriteOptions) -> list[WriteTask]:
    return sets.plan(NAME, staging, options)


def image_path(group: ItemGroup) -> str:
    """The image's path under images/: `<person>/<name>` when the item has a person."""
    name = per_image.item_name(group.item)
    if not per_image.is_image(name):
        name += per_image.image_suffix(group.item)
    labels = sets.tag_labels(group)
    if not labels:
        return posixpath.basename(name)  # a folder under images/ would name a person
    if not name.startswith(labels[0] + "/"):
        return f"{labels[0]}/{posixpath.basename(name)}"
    return name


def _number(person: str, ref: str) -> str | None:
    """How pairs.txt names `ref` next to `person`: its number, its name, or None."""
    if not ref.startswith(person + "/"):
        return None
    stem = ref[len(person) + 1 :]
    m = re.fullmatch(re.escape(person) + r"_(\d+)", stem)
    if m and f"{int(m.group(1)):04d}" == m.group(1):
        return str(int(m.group(1)))
    return stem


def write(task: WriteTask, staging: Staging, out: Output) -> WriteResult:
    if task.shard >= 0:
        return sets.copy_images(task, staging, out, _image_rel)
    result = WriteResult()
    positive, negative, landmarks, neutral = [], [], [], []
    header, listed = _source_lists(staging, task.subset)
    people: dict[str, int] = {}
    named: set[str] = set()
    for group in sets.groups(staging, subset=task.subset, vertex_kinds=_LANDMARK_KINDS):
        result.items += 1
        rel = image_path(group)
        ref = per_image.strip_ext(rel)
        labels = sets.tag_labels(group)
        person = labels[0] if labels else None
        if person:
            people[person] = people.get(person, 0) + 1
        tagged = False
        for ann in group.annotations:
            if ann["kind"] == "tag" and (tagged or ann.get("label") != person):
                result.lose("tags other than the image's person not written")
            elif ann["kind"] == "tag":
                tagged = True
                result.annotations += 1
                attrs = sets.ann_attributes(group, ann)
                for other in attrs.get(POSITIVE) or []:
                    line = _pair(person, ref, str(other), matched=True)  # type: ignore[arg-type]
                    _keep(line, positive, result, named, ref, str(other))
                for other in attrs.get(NEGATIVE) or []:
                    line = _pair(person, ref, str(other), matched=False)  # type: ignore[arg-type]
                    _keep(line, negative, result, named, ref, str(other))
            elif ann["kind"] in _LANDMARK_KINDS and ann["ann_id"] in group.points:
                pts = group.points[ann["ann_id"]]
                coords = [number_text(v) for p in pts for v in (p["x"], p["y"])]
                landmarks.append("\t".join([rel, *coords]))
                named.add(ref)
                result.annotations += 1
            else:
                sets.lose_unwritten(result, ann, "LFW")
        neutral.append(ref)
    root = sets.join(_prefix(task.subset), ANNOTATIONS_DIR)
    pairs = positive + negative + [r for r in neutral if r not in named]
    if positive or negative:
        header = header or [1, max(len(positive), len(negative))]
        pairs.insert(0, "\t".join(str(n) for n in header))
    per_image.put(out, f"{root}/{PAIRS}", "".join(f"{line}\n" for line in pairs), result)
    # The source's people list counts a person's images in the whole of LFW: kept as it was.
    people = listed | {p: n for p, n in people.items() if p not in listed}
    text = f"{len(people)}\n" + "".join(f"{p}\t{n}\n" for p, n in people.items())
    per_image.put(out, f"{root}/{PEOPLE}", text, result)
    if landmarks:
        per_image.put(
            out, f"{root}/{LANDMARKS}", "".join(f"{line}\n" for line in landmarks), result
        )
    return result


def _prefix(subset: str | None) -> str:
    return subset or ""


def _image_rel(group: ItemGroup) -> list[str]:
    return [sets.join(_prefix(group.item.get("subset")), IMAGES_DIR, image_path(group))]


def _source_lists(staging: Staging, subset: str | None) -> tuple[list[int], dict[str, int]]:
    """The pairs.txt header and people.txt counts an LFW source had for this subset."""
    header: list[int] = []
    people: dict[str, int] = {}
    rows = staging.con.execute(
        "SELECT owner_id, key, value, value_type FROM attributes WHERE owner_kind = 'dataset' "
        "AND source = ? ORDER BY filename, file_row_number",
        [NAME],
    ).fetchall()
    for owner, key, value, vtype in rows:
        folder, base = posixpath.split(owner.removeprefix("dataset:"))
        if _layout(folder)[1] != subset:
            continue
        parsed = parse_attribute(value, vtype)
        if base == PAIRS and key == "header" and isinstance(parsed, list):
            header = [int(n) for n in parsed]
        elif base == PEOPLE and isinstance(parsed, (int, float)):
            people.setdefault(key, int(parsed))
    return header, people


def _pair(person: str, ref: str, other: str, *, matched: bool) -> str | None:
    first = _number(person, ref)
    if first is None:
        return None
    if matched:
        second = _number(person, other)
        return None if second is None else f"{person}\t{first}\t{second}"
    other_person = other.split("/", 1)[0] if "/" in other else "-"
    second = _number(other_person, other) if other_person != "-" else other
    return None if second is None else f"{person}\t{first}\t{other_person}\t{second}"


def _keep(
    line: str | None, lines: list[str], result: WriteResult, named: set[str], *refs: str
) -> None:
    if line is None:
        result.lose("pairs that pairs.txt cannot name not written")
        return
    lines.append(line)
    named.update(refs)


FORMAT = Format(
    name=NAME,
    description="LFW 1.0 (face verification): pairs.txt, people.txt and landmarks.txt beside "
    "images/<person>/; a tag per image with its pairs, landmarks as points",
    detect=detect,
    plan_read=plan_read,
    read=read,
    plan_write=plan_write,
    write=write,
)
