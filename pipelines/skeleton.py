"""Conventions for vertices that carry their own flags: skeleton and keypoint elements.

A skeleton (CVAT, Datumaro) is one `keypoints` annotation whose vertices are
named points rows. What a single element carries beyond its coordinates and
visibility (its own attributes, flags that differ from the whole skeleton) is
kept as attribute rows owned by the point: `owner_kind = "point"`,
`owner_id = point_owner(ann_id, idx)`.
"""

from __future__ import annotations

POINT_OWNER = "point"


def point_owner(ann_id: str, idx: int) -> str:
    """The attributes owner id of vertex `idx` of annotation `ann_id`."""
    return f"{ann_id}#{idx}"


def visibility(outside: bool, occluded: bool) -> int:
    """COCO visibility from the outside / occluded flags: 0 absent, 1 hidden, 2 visible."""
    if outside:
        return 0
    return 1 if occluded else 2


def flags(vis: int | None) -> tuple[bool, bool]:
    """(outside, occluded) for a COCO visibility; an unknown visibility counts as visible."""
    if vis is None:
        return False, False
    return vis == 0, vis == 1
