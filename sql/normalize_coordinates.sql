-- Normalized coordinates (0..1 of the media size) to pixels, for annotations and points.
-- x and w scale by the item's width, y and h by its height. An annotation whose item has
-- no size keeps units = 'norm' (the run summary reports it): never a guessed size.
-- Inputs: items, annotations, points (Arrow). Outputs: views annotations_px, points_px.
CREATE OR REPLACE TEMP VIEW scale AS
SELECT a.ann_id, i.width::DOUBLE AS sx, i.height::DOUBLE AS sy
FROM annotations a
JOIN items i ON i.item_id = a.item_id
WHERE a.units = 'norm' AND i.width > 0 AND i.height > 0;

CREATE OR REPLACE TEMP VIEW annotations_px AS
SELECT a.* REPLACE (
    CASE WHEN s.ann_id IS NULL THEN a.units ELSE 'px' END AS units,
    a.bbox_x * coalesce(s.sx, 1) AS bbox_x,
    a.bbox_y * coalesce(s.sy, 1) AS bbox_y,
    a.bbox_w * coalesce(s.sx, 1) AS bbox_w,
    a.bbox_h * coalesce(s.sy, 1) AS bbox_h,
    a.area * coalesce(s.sx * s.sy, 1) AS area
)
FROM annotations a
LEFT JOIN scale s USING (ann_id);

CREATE OR REPLACE TEMP VIEW points_px AS
SELECT p.* REPLACE (
    p.x * coalesce(s.sx, 1) AS x,
    p.y * coalesce(s.sy, 1) AS y
)
FROM points p
LEFT JOIN scale s USING (ann_id);
