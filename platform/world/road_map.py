"""The synthetic town: a square grid of two-way roads (two lanes each way, right-hand traffic).

Global frame: x east, y north, metres, ground at z = 0. Roads run along the grid lines ``x = c`` and ``y = c`` for
``c in RoadGrid.lines``; intersections are ``2*HALF_WIDTH`` squares. Written as a nuScenes map-expansion JSON
(version 1.3) with the layers ``NuScenesMap`` loads: nodes, lines, polygons, drivable_area, road_segment, lane,
road_divider (the centre line), lane_divider (between the two lanes of a direction), ped_crossing (in front of
every intersection); the other layers are present and empty. Routes for the ego follow lane centres.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HALF_WIDTH = 7.0  # road half width (m): two 3.5 m lanes per direction
LANE_WIDTH = 3.5
INNER_LANE = 1.75  # offset of the inner lane centre right of the road centre line (m)
OUTER_LANE = 5.25
CROSSING_DEPTH = 4.0  # ped crossing depth along the road (m), adjacent to the intersection
SIDEWALK = (8.0, 10.5)  # sidewalk band, offset from the road centre line (m)
MAP_VERSION = "1.3"


@dataclass
class RoadGrid:
    """A grid of ``n`` roads per axis at spacing ``spacing`` starting at ``margin`` (m)."""

    n: int = 5
    spacing: float = 100.0
    margin: float = 60.0
    lines: np.ndarray = field(init=False)

    def __post_init__(self):
        self.lines = self.margin + self.spacing * np.arange(self.n)

    @property
    def extent(self) -> float:
        return float(self.lines[-1] + self.margin)

    # ---- topology: intersections (i, j) at (lines[i], lines[j]); headings 0=E, 1=N, 2=W, 3=S
    @staticmethod
    def direction(h: int) -> np.ndarray:
        return np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]][h % 4])

    def node_xy(self, node) -> np.ndarray:
        return np.array([self.lines[node[0]], self.lines[node[1]]])

    def has_node(self, node) -> bool:
        return 0 <= node[0] < self.n and 0 <= node[1] < self.n

    def next_node(self, node, h: int):
        d = self.direction(h).astype(int)
        return (node[0] + d[0], node[1] + d[1])

    # ---- routes: dense polylines along the inner lane of each travelled road
    def route(self, start_node, heading: int, start_dist: float, rng: np.random.Generator, length: float,
              turn_probs=(0.35, 0.3, 0.35)) -> tuple[np.ndarray, list[float], list[str]]:
        """A lane-following route of at least ``length`` metres.

        Starts on the inner lane ``start_dist`` metres before intersection ``start_node`` while heading
        ``heading``. At each intersection picks right / straight / left with ``turn_probs`` among the possible
        exits. Returns ``(points [N,2] at 0.25 m, entry arc-lengths of each intersection, manoeuvres)``.
        """
        pts: list[np.ndarray] = []
        entries: list[float] = []
        moves: list[str] = []
        node, h = tuple(start_node), heading
        d = self.direction(h)
        r = np.array([d[1], -d[0]])
        c = self.node_xy(node)
        p0 = c - d * (HALF_WIDTH + start_dist) + r * INNER_LANE
        p1 = c - d * HALF_WIDTH + r * INNER_LANE
        pts.append(_segment(p0, p1))
        total = start_dist
        while True:
            entries.append(total)
            options = []
            for move, dh in (("right", -1), ("straight", 0), ("left", 1)):
                nh = (h + dh) % 4
                if self.has_node(self.next_node(node, nh)):
                    options.append((move, nh))
            probs = np.array([dict(zip(("right", "straight", "left"), turn_probs))[m] for m, _ in options])
            move, nh = options[int(rng.choice(len(options), p=probs / probs.sum()))]
            moves.append(move)
            d, r = self.direction(h), np.array([self.direction(h)[1], -self.direction(h)[0]])
            c = self.node_xy(node)
            entry = c - d * HALF_WIDTH + r * INNER_LANE
            if move == "straight":
                through = _segment(entry, c + d * HALF_WIDTH + r * INNER_LANE)
            else:
                s = 1.0 if move == "left" else -1.0
                R = HALF_WIDTH + s * INNER_LANE  # left 8.75 m, right 5.25 m
                centre = entry + (-r) * s * R
                a0 = np.arctan2(*(entry - centre)[::-1])
                n = max(int(R * np.pi / 2 / 0.25), 4)
                a = a0 + s * np.linspace(0, np.pi / 2, n)
                through = centre + R * np.stack([np.cos(a), np.sin(a)], -1)
            pts.append(through[1:])
            total += _length(through)
            h = nh
            node = self.next_node(node, h)
            d = self.direction(h)
            r = np.array([d[1], -d[0]])
            start = self.node_xy(node) - d * (self.spacing - HALF_WIDTH) + r * INNER_LANE
            end = self.node_xy(node) - d * HALF_WIDTH + r * INNER_LANE
            seg = _segment(start, end)
            pts.append(seg[1:])
            total += _length(seg)
            if total >= length:
                break
        return np.concatenate(pts), entries, moves

    # ---- map-expansion JSON
    def expansion_json(self) -> dict:
        """The map-expansion record tree (see the module docstring)."""
        b = _Builder()
        lines, hw = self.lines, HALF_WIDTH
        da_polys = []
        # intersections
        for i, x in enumerate(lines):
            for j, y in enumerate(lines):
                pt = b.polygon([(x - hw, y - hw), (x + hw, y - hw), (x + hw, y + hw), (x - hw, y + hw)])
                da_polys.append(pt)
                b.add("road_segment", polygon_token=pt, is_intersection=True, drivable_area_token="")
        # straight segments between intersections, both axes
        for axis in (0, 1):
            for k, c in enumerate(lines):
                for a0, a1 in zip(lines[:-1], lines[1:]):
                    lo, hi = a0 + hw, a1 - hw

                    def P(u, v, axis=axis):  # u along the road, v across (offset from the centre line)
                        return (u, v) if axis == 0 else (v, u)

                    rect = [P(lo, c - hw), P(hi, c - hw), P(hi, c + hw), P(lo, c + hw)]
                    pt = b.polygon(rect)
                    da_polys.append(pt)
                    seg = b.add("road_segment", polygon_token=pt, is_intersection=False, drivable_area_token="")
                    b.add("road_divider", line_token=b.line([P(lo, c), P(hi, c)]), road_segment_token=seg)
                    for off in (-LANE_WIDTH, LANE_WIDTH):
                        ln = b.line([P(lo, c + off), P(hi, c + off)])
                        b.add("lane_divider", line_token=ln, lane_divider_segments=[
                            {"node_token": t, "segment_type": "DOUBLE_DASHED_WHITE"}
                            for t in b.rec("line", ln)["node_tokens"]])
                    for v0, v1 in ((c - hw, c - LANE_WIDTH), (c - LANE_WIDTH, c), (c, c + LANE_WIDTH),
                                   (c + LANE_WIDTH, c + hw)):
                        lp = b.polygon([P(lo, v0), P(hi, v0), P(hi, v1), P(lo, v1)])
                        b.add("lane", polygon_token=lp, lane_type="CAR", from_edge_line_token="",
                              to_edge_line_token="", left_lane_divider_segments=[],
                              right_lane_divider_segments=[])
                    for u0, u1 in ((lo, lo + CROSSING_DEPTH), (hi - CROSSING_DEPTH, hi)):
                        cp = b.polygon([P(u0, c - hw), P(u1, c - hw), P(u1, c + hw), P(u0, c + hw)])
                        b.add("ped_crossing", polygon_token=cp, road_segment_token=seg)
        da = b.add("drivable_area", polygon_tokens=da_polys)
        for rec in b.layers["road_segment"]:
            rec["drivable_area_token"] = da
        out = {"version": MAP_VERSION, "canvas_edge": [self.extent, self.extent]}
        out.update(b.layers)
        out["arcline_path_3"] = {}
        out["connectivity"] = {}
        return out

    def divider_polylines(self) -> list[tuple[str, np.ndarray]]:
        """(kind, points [N,2]) of painted lines for rendering: 'road_divider', 'lane_divider', 'boundary'."""
        out = []
        hw = HALF_WIDTH
        for axis in (0, 1):
            for c in self.lines:
                for a0, a1 in zip(self.lines[:-1], self.lines[1:]):
                    u = np.arange(a0 + hw, a1 - hw + 1e-6, 2.0)
                    for kind, off in (("road_divider", 0.0), ("lane_divider", -LANE_WIDTH),
                                      ("lane_divider", LANE_WIDTH), ("boundary", -hw), ("boundary", hw)):
                        v = np.full_like(u, c + off)
                        out.append((kind, np.stack([u, v], -1) if axis == 0 else np.stack([v, u], -1)))
        return out

    def write(self, dataroot: Path, map_name: str, map_token: str) -> None:
        """Write ``maps/expansion/<map_name>.json`` and the semantic-prior mask ``maps/<map_token>.png``."""
        from PIL import Image, ImageDraw

        exp = dataroot / "maps" / "expansion"
        exp.mkdir(parents=True, exist_ok=True)
        (exp / f"{map_name}.json").write_text(json.dumps(self.expansion_json()))
        # semantic prior at 0.1 m / px, image row 0 = north edge (as MapMask expects)
        px = int(round(self.extent * 10))
        img = Image.new("L", (px, px), 0)
        dr = ImageDraw.Draw(img)
        for c in self.lines:
            lo, hi = int((c - HALF_WIDTH) * 10), int((c + HALF_WIDTH) * 10)
            dr.rectangle([lo, int(self.lines[0] * 10 - 70), hi, int(self.lines[-1] * 10 + 70)], fill=255)
            dr.rectangle([int(self.lines[0] * 10 - 70), px - hi, int(self.lines[-1] * 10 + 70), px - lo], fill=255)
        img.save(dataroot / "maps" / f"{map_token}.png", compress_level=1)


def _segment(p0, p1, step: float = 0.25) -> np.ndarray:
    n = max(int(np.ceil(np.linalg.norm(np.asarray(p1) - p0) / step)), 1)
    return p0 + (np.asarray(p1) - p0) * np.linspace(0, 1, n + 1)[:, None]


def _length(pts: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(pts, axis=0), axis=1).sum())


class _Builder:
    """Accumulates map-expansion records with deterministic tokens."""

    LAYERS = ("polygon", "line", "node", "drivable_area", "road_segment", "road_block", "lane", "ped_crossing",
              "walkway", "stop_line", "carpark_area", "road_divider", "lane_divider", "traffic_light",
              "lane_connector")

    def __init__(self):
        self.layers: dict[str, list[dict]] = {k: [] for k in self.LAYERS}
        self._index: dict[str, dict] = {}
        self._n = 0

    def token(self, kind: str) -> str:
        self._n += 1
        return f"map-{kind}-{self._n:07d}"

    def add(self, layer: str, **fields) -> str:
        tok = self.token(layer)
        rec = {"token": tok, **fields}
        self.layers[layer].append(rec)
        self._index[tok] = rec
        return tok

    def rec(self, layer: str, tok: str) -> dict:
        return self._index[tok]

    def node(self, xy) -> str:
        return self.add("node", x=float(xy[0]), y=float(xy[1]))

    def polygon(self, ring) -> str:
        return self.add("polygon", exterior_node_tokens=[self.node(p) for p in ring], holes=[])

    def line(self, pts) -> str:
        return self.add("line", node_tokens=[self.node(p) for p in pts])
