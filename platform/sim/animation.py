"""Pictures of a rollout: a bird's-eye-view GIF of the whole run and the six cameras at its worst moment.

- :func:`bev_gif`: one frame every ``every`` physics frames (default 0.5 s, the planner's rate), a window of
  ``view_m`` metres centred on the ego, north up (global frame, x east, y north): the drivable area (grey), the
  route (dashed blue line), the actors' boxes (orange vehicles, magenta pedestrians, brown static objects; red while
  in contact with the ego; the safety scenario's injected actor outlined in black), the ego's box (blue) and the
  plan in force (the latest valid plan, green dots at 0.5 .. 3.0 s), with the time, speed and planner errors so far.
  Drawn with Pillow, saved as an animated GIF.
- :func:`worst_frame`: the first collision's frame; without one, the frame where the ego's box came closest to an
  actor's box (the moment a time-to-collision metric would flag).
- :func:`camera_strip`: the six cameras re-rendered at that frame from the rollout's recorded pose, speed, yaw rate
  and actors by the planner's renderer (``platform/sim/sensors.py``), tiled as the rig sits (front row
  FRONT_LEFT, FRONT, FRONT_RIGHT; back row BACK_LEFT, BACK, BACK_RIGHT), saved as PNG.
"""
from __future__ import annotations

import io

import numpy as np
import shapely
from PIL import Image, ImageDraw

from odvla.model.constants import CAMERAS
from odvla.platform.sim.vehicle import PHYSICS_DT, box_corners, box_polygon

VIEW_M = 80.0
PX_PER_M = 5.0
COLORS = {"vehicle": (240, 150, 40), "pedestrian": (200, 60, 200), "static": (140, 100, 60)}
STRIP_ORDER = (("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"), ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"))


def _plan_in_force(rollout, k: int) -> np.ndarray | None:
    """The global plan [6, 2] the ego follows at frame ``k`` (the latest valid tick's), or None."""
    ticks = np.nonzero(rollout.tick_t <= rollout.t[k] + 1e-9)[0]
    for i in ticks[::-1]:
        if np.isfinite(rollout.plans_global[i]).all():
            return rollout.plans_global[i]
    return None


def bev_frame(rollout, k: int, view_m: float = VIEW_M, px_per_m: float = PX_PER_M) -> Image.Image:
    """The BEV picture of frame ``k`` (module docstring), ``view_m * px_per_m`` pixels square."""
    r = rollout
    size = int(round(view_m * px_per_m))
    cx, cy = r.ego_pose[k, 0], r.ego_pose[k, 1]
    half = view_m / 2

    def px(xy):
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        return [(float((x - cx + half) * px_per_m), float((half - (y - cy)) * px_per_m)) for x, y in xy]

    img = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(img)
    area = shapely.clip_by_rect(r.drivable_area, cx - half, cy - half, cx + half, cy + half)
    for poly in getattr(area, "geoms", [area]):
        if poly.is_empty or poly.geom_type != "Polygon":
            continue
        d.polygon(px(poly.exterior.coords), fill=(215, 215, 215))
        for hole in poly.interiors:
            d.polygon(px(hole.coords), fill=(255, 255, 255))
    route = px(r.route)
    for a, b in zip(route[:-1:2], route[1::2]):
        d.line([a, b], fill=(90, 120, 230), width=2)
    contact = r.contact[k]
    for i, box in enumerate(r.agent_boxes[k]):
        if not np.isfinite(box).all():
            continue
        color = (220, 30, 30) if contact[i] else COLORS.get(str(r.agent_kinds[i]), (120, 120, 120))
        outline = (0, 0, 0) if r.target == i else color
        d.polygon(px(box_corners(box)), fill=color, outline=outline, width=2 if r.target == i else 1)
    d.polygon(px(box_corners(r.ego_box[k])), fill=(40, 90, 220), outline=(0, 0, 60))
    plan = _plan_in_force(r, k)
    if plan is not None:
        for p in px(plan):
            d.ellipse([p[0] - 2.5, p[1] - 2.5, p[0] + 2.5, p[1] + 2.5], fill=(30, 170, 60))
    errors = sum(1 for tick, _ in r.plan_errors if r.tick_t[tick] <= r.t[k] + 1e-9)
    d.text((6, 6), f"{r.scenario}  {r.planner}  t={r.t[k]:4.1f} s  v={r.ego_speed[k]:4.1f} m/s"
                   f"{'  planner errors ' + str(errors) if errors else ''}", fill=(0, 0, 0))
    if contact.any():
        d.text((6, 20), "COLLISION", fill=(220, 30, 30))
    return img


def bev_gif(rollout, every: int = 5, view_m: float = VIEW_M, frame_ms: int = 250) -> bytes:
    """The animated BEV GIF (module docstring) as bytes: frames ``0, every, 2 every, ...`` and the last one."""
    ks = list(range(0, len(rollout.t), every))
    if ks[-1] != len(rollout.t) - 1:
        ks.append(len(rollout.t) - 1)
    frames = [bev_frame(rollout, k, view_m) for k in ks]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=frame_ms, loop=0,
                   optimize=False)
    return buf.getvalue()


def worst_frame(rollout) -> tuple[int, str]:
    """(frame, why): the first collision's frame, else the frame of the smallest gap (m) between the ego's box and
    an actor's box."""
    hit = np.nonzero(rollout.contact.any(1))[0]
    if len(hit):
        return int(hit[0]), "first collision"
    best, best_k = np.inf, 0
    for k in range(len(rollout.t)):
        polys = box_polygon(rollout.agent_boxes[k])
        present = np.array([p is not None for p in polys], bool)
        if not present.any():
            continue
        gap = float(shapely.distance(box_polygon(rollout.ego_box[k]), polys[present].astype(object)).min())
        if gap < best:
            best, best_k = gap, k
    return best_k, (f"closest approach {best:.1f} m" if np.isfinite(best) else "no actor present")


def camera_strip(scenario, rollout, k: int, image_hw=(225, 400), why: str = "") -> bytes:
    """The six cameras at frame ``k`` re-rendered from the rollout's ego pose, speed, steering and actors, tiled as
    the rig sits (module docstring), as PNG bytes."""
    from odvla.platform.data.image_ops import decode_resize
    from odvla.platform.sim.sensors import Sensors

    sensors = Sensors(scenario, image_hw)
    jpegs = sensors.render(rollout.ego_pose[k], float(rollout.ego_speed[k]), float(rollout.ego_yaw_rate[k]),
                           rollout.agent_boxes[k],
                           [a.category for a in scenario.actors], [a.height for a in scenario.actors])
    h, w = sensors.h, sensors.w
    images = dict(zip(CAMERAS, (decode_resize(j, (h, w)) for j in jpegs)))
    title = 16
    strip = Image.new("RGB", (3 * w, 2 * h + title), (255, 255, 255))
    for row, names in enumerate(STRIP_ORDER):
        for col, name in enumerate(names):
            strip.paste(Image.fromarray(images[name]), (col * w, title + row * h))
    ImageDraw.Draw(strip).text((4, 2), f"{rollout.scenario}  {rollout.planner}  t={k * PHYSICS_DT:.1f} s  {why}",
                               fill=(0, 0, 0))
    buf = io.BytesIO()
    strip.save(buf, format="PNG")
    return buf.getvalue()
