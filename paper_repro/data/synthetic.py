"""The embedded benchmark: procedural street and object scenes written in the real dataset formats.

Both generators draw scenes whose classes differ in *shape, position and context*, not in
colour: every instance gets its own random texture (smooth noise, stripes, blocks or
speckle) in two colours that come from a class's typical colour only some of the time and
from one distribution shared by all classes otherwise, under random lighting, shadows,
sensor noise and blur. A network must therefore learn layout and silhouettes, which is what
makes the amount of labelled data matter.

* :func:`generate_cityscapes_like` writes a Cityscapes ``gtFine`` tree of perspective street
  scenes labelled with Cityscapes *label ids*: 14 of the 19 evaluation classes (road,
  sidewalk, building, wall, fence, pole, traffic sign, vegetation, terrain, sky, person, car,
  truck, bus; traffic lights, riders, trains and two-wheelers would be a few pixels wide at
  the CPU scale) and ids outside the 19 (ego vehicle, static clutter, ground) that evaluate
  as ignore.
* :func:`generate_voc_like` writes a Pascal VOC 2012 tree of object scenes (1-3 objects, each a
  multi-part silhouette, on a cluttered background; 8 classes by default, any of the 20 on
  request) with palette PNGs and a 255 band along every object boundary.

Every image is drawn from its own generator seeded by ``(seed, split, index)``, so a tree is
a pure function of its arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm.auto import tqdm

from .. import IGNORE_INDEX
from ..atomic import atomic_folder
from ..settings import GENERATOR_ARGUMENTS, check_generator_arguments
from .voc import save_palette_png, voc_root

CITYSCAPES_TRAIN_CITIES = ("synthnorth", "syntheast", "synthwest")
CITYSCAPES_VAL_CITIES = ("synthsouth",)
# How often an instance has its class's typical look; otherwise its colour and texture come from
# distributions shared by all classes. The defaults are the embedded study's (params.yaml), set
# with the ce baseline alone (README, "The study").
STREET_TYPICAL_LOOK = GENERATOR_ARGUMENTS["cityscapes"]["typical_look"]
OBJECT_TYPICAL_LOOK = GENERATOR_ARGUMENTS["voc"]["typical_look"]
TEXTURE_KINDS = ("smooth", "stripes", "blocks", "speckle")

# Cityscapes label ids used by the street generator.
EGO_VEHICLE, RECTIFICATION_BORDER, GROUND, STATIC = 1, 2, 6, 4
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE = 7, 8, 11, 12, 13, 17
TRAFFIC_SIGN, VEGETATION, TERRAIN, SKY = 20, 21, 22, 23
PERSON, CAR, TRUCK, BUS = 24, 26, 27, 28

STREET_LOOKS = {  # typical (RGB in [0, 1], texture kind), used with probability STREET_TYPICAL_LOOK
    ROAD: ((0.35, 0.35, 0.37), "smooth"), SIDEWALK: ((0.6, 0.55, 0.55), "blocks"), BUILDING: ((0.5, 0.45, 0.4), "blocks"),
    WALL: ((0.75, 0.72, 0.68), "smooth"), FENCE: ((0.45, 0.4, 0.35), "stripes"), POLE: ((0.4, 0.4, 0.4), "smooth"),
    TRAFFIC_SIGN: ((0.8, 0.75, 0.1), "smooth"),
    VEGETATION: ((0.25, 0.45, 0.15), "speckle"), TERRAIN: ((0.65, 0.6, 0.3), "smooth"), SKY: ((0.6, 0.75, 0.9), "smooth"),
    PERSON: ((0.5, 0.3, 0.3), "smooth"), CAR: ((0.2, 0.25, 0.5), "smooth"),
    TRUCK: ((0.3, 0.3, 0.45), "smooth"), BUS: ((0.7, 0.65, 0.2), "smooth"),
    EGO_VEHICLE: ((0.1, 0.1, 0.1), "smooth"),
    GROUND: ((0.5, 0.45, 0.35), "speckle"), STATIC: ((0.5, 0.5, 0.5), "blocks"),
}


class Canvas:
    """An RGB image and its label map, painted back to front with textured shapes."""

    def __init__(self, rng: np.random.Generator, height: int, width: int, fill_label: int, typical_look: float) -> None:
        self.rng, self.height, self.width, self.typical_look = rng, height, width, typical_look
        self.image = np.zeros((height, width, 3), dtype=np.float32)
        self.labels = np.full((height, width), fill_label, dtype=np.uint8)
        self.yy, self.xx = np.mgrid[0:height, 0:width].astype(np.float32)

    def texture(self, typical_colour: tuple[float, float, float], typical_kind: str | None = None) -> np.ndarray:
        """A full-frame ``[H, W, 3]`` two-colour texture.

        With probability ``self.typical_look`` it has the class's typical colour (jittered)
        and texture kind; otherwise its colour and kind come from distributions shared by all
        classes, so neither identifies a class on its own.
        """
        rng = self.rng
        if rng.random() < self.typical_look:
            first = np.clip(np.asarray(typical_colour) + rng.normal(0, 0.08, 3), 0, 1)
            kind = typical_kind or TEXTURE_KINDS[rng.integers(len(TEXTURE_KINDS))]
        else:
            first = rng.uniform(0.05, 0.95, 3)
            kind = TEXTURE_KINDS[rng.integers(len(TEXTURE_KINDS))]
        second = first * rng.uniform(0.4, 0.9) if rng.random() < 0.6 else rng.uniform(0.05, 0.95, 3)
        if kind == "smooth":
            cells = rng.integers(2, 9)
            grid = rng.random((cells, cells)).astype(np.float32)
            mix = np.asarray(Image.fromarray(grid).resize((self.width, self.height), Image.BILINEAR))
        elif kind == "stripes":
            angle, period = rng.uniform(0, np.pi), rng.uniform(2, 12)
            mix = 0.5 + 0.5 * np.sin(2 * np.pi * (self.xx * np.cos(angle) + self.yy * np.sin(angle)) / period)
        elif kind == "blocks":  # bricks, windows, tiles
            step_x, step_y = rng.integers(2, 9, 2)
            mix = ((self.xx // step_x + self.yy // step_y) % 2).astype(np.float32)
        else:  # speckle
            mix = rng.random((self.height, self.width)).astype(np.float32)
        mix = mix[..., None] * rng.uniform(0.1, 0.6)
        return (1 - mix) * first + mix * second

    def paint(self, mask: np.ndarray, label: int, look) -> None:
        """Paint ``mask`` with ``label`` and a texture for ``look`` (a colour, or a (colour, kind) pair)."""
        if mask.any():
            colour, kind = look if isinstance(look[0], tuple) else (look, None)
            self.image[mask] = self.texture(colour, kind)[mask]
            self.labels[mask] = label

    def shape_mask(self, draw_shapes) -> np.ndarray:
        """Rasterise ``draw_shapes(ImageDraw)`` (which fills with 1) into a boolean mask."""
        layer = Image.new("L", (self.width, self.height), 0)
        draw_shapes(ImageDraw.Draw(layer))
        return np.asarray(layer) > 0

    def polygon(self, points, label: int, typical) -> None:
        self.paint(self.shape_mask(lambda d: d.polygon([tuple(map(float, p)) for p in points], fill=1)), label, typical)

    def finish(self) -> np.ndarray:
        """Lighting gradient, colour cast, a cast shadow, sensor noise and blur; returns uint8 ``[H, W, 3]``."""
        rng, image = self.rng, self.image
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (self.xx * np.cos(angle) + self.yy * np.sin(angle)) / max(self.height, self.width)
        image = image * (rng.uniform(0.6, 1.2) + rng.uniform(-0.3, 0.3) * ramp)[..., None]
        image = image * rng.uniform(0.7, 1.3, 3)  # colour cast (white balance)
        if rng.random() < 0.25:
            corners = rng.uniform(0, 1, (4, 2)) * (self.width, self.height)
            shadow = self.shape_mask(lambda d: d.polygon([tuple(c) for c in corners], fill=1))
            image[shadow] *= rng.uniform(0.5, 0.8)
        image = image + rng.normal(0, rng.uniform(0.01, 0.05), image.shape)
        picture = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))
        return np.asarray(picture.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 0.8))))


# ----------------------------------------------------------------------------------- streets
@dataclass(frozen=True)
class Street:
    """The perspective frame of one street scene: the horizon's row, the vanishing point's column, and where
    the road and the sidewalks meet the bottom row (every ground edge runs from there to the vanishing point)."""

    height: int
    width: int
    horizon: float
    vanish_x: float
    road_left: float
    road_right: float
    walk_left: float
    walk_right: float

    @staticmethod
    def draw(rng: np.random.Generator, height: int, width: int) -> Street:
        horizon = height * rng.uniform(0.25, 0.55)
        vanish_x = width * rng.uniform(0.25, 0.75)
        road_left, road_right = vanish_x - width * rng.uniform(0.25, 0.7), vanish_x + width * rng.uniform(0.25, 0.7)
        walk_left, walk_right = road_left - width * rng.uniform(0.1, 0.5), road_right + width * rng.uniform(0.1, 0.5)
        return Street(height, width, horizon, vanish_x, road_left, road_right, walk_left, walk_right)

    @property
    def vanishing_point(self) -> tuple[float, float]:
        return self.vanish_x, self.horizon

    def depth(self, y: float) -> float:
        """0 at the horizon, 1 at the bottom row."""
        return (y - self.horizon) / (self.height - self.horizon)

    def along(self, bottom_x: float, y: float) -> float:
        """The x at row ``y`` of the line from the vanishing point to ``(bottom_x, H)``."""
        return self.vanish_x + (bottom_x - self.vanish_x) * self.depth(y)


def draw_street_scene(rng: np.random.Generator, height: int, width: int, typical_look: float = STREET_TYPICAL_LOOK) -> tuple[np.ndarray, np.ndarray]:
    """One perspective street scene: ``(image uint8 [H, W, 3], Cityscapes label ids uint8 [H, W])``;
    each region has its class's typical look with probability ``typical_look``. Back to front: sky,
    the street's frame, far buildings and the ground, facades, things on the ground, the ego vehicle;
    then the camera's roll."""
    canvas = Canvas(rng, height, width, SKY, typical_look)
    canvas.paint(np.ones((height, width), bool), SKY, STREET_LOOKS[SKY])
    street = Street.draw(rng, height, width)
    draw_ground(canvas, street)
    draw_facades(canvas, street)
    draw_things(canvas, street)
    if rng.random() < 0.3:  # the ego vehicle's bonnet at the bottom edge (ignored in evaluation)
        top = height * rng.uniform(0.85, 0.95)
        canvas.paint(canvas.shape_mask(lambda d: d.ellipse([-0.2 * width, top, 1.2 * width, top + 2 * (height - top) + height * 0.1], fill=1)),
                     EGO_VEHICLE, STREET_LOOKS[EGO_VEHICLE])
    image, labels = canvas.finish(), canvas.labels
    roll = rng.uniform(-10, 10)  # camera roll; the uncovered corners are the rectification border
    image = np.asarray(Image.fromarray(image).rotate(roll, resample=Image.BILINEAR))
    labels = np.asarray(Image.fromarray(labels).rotate(roll, resample=Image.NEAREST, fillcolor=RECTIFICATION_BORDER))
    return image, labels


def draw_ground(canvas: Canvas, street: Street) -> None:
    """Far buildings on the horizon, then the ground as triangles from the vanishing point: terrain or the like
    outside, sidewalks, the road, and up to two lane markings (painted road, still labelled road)."""
    rng, height, width = canvas.rng, street.height, street.width
    x = 0.0
    while x < width:
        span = width * rng.uniform(0.05, 0.2)
        top = street.horizon - height * rng.uniform(0.02, 0.25)
        canvas.polygon([(x, top), (x + span, top), (x + span, street.horizon + 1), (x, street.horizon + 1)], BUILDING, STREET_LOOKS[BUILDING])
        x += span
    vanish = street.vanishing_point
    for outer, inner in ((-3 * width, street.walk_left), (4 * width, street.walk_right)):
        label = rng.choice([TERRAIN, GROUND, SIDEWALK, VEGETATION], p=[0.45, 0.15, 0.25, 0.15])
        canvas.polygon([vanish, (outer, height), (inner, height)], label, STREET_LOOKS[label])
    canvas.polygon([vanish, (street.walk_left, height), (street.road_left, height)], SIDEWALK, STREET_LOOKS[SIDEWALK])
    canvas.polygon([vanish, (street.road_right, height), (street.walk_right, height)], SIDEWALK, STREET_LOOKS[SIDEWALK])
    canvas.polygon([vanish, (street.road_left, height), (street.road_right, height)], ROAD, STREET_LOOKS[ROAD])
    for _ in range(rng.integers(0, 3)):
        bottom = rng.uniform(street.road_left, street.road_right)
        near, far = rng.uniform(0.3, 1.0), rng.uniform(0.05, 0.3)
        rows = [street.horizon + (height - street.horizon) * t for t in (far, near)]
        half = width * 0.01
        canvas.polygon([(street.along(bottom, rows[0]) - half * far, rows[0]), (street.along(bottom, rows[0]) + half * far, rows[0]),
                        (street.along(bottom, rows[1]) + half * near, rows[1]), (street.along(bottom, rows[1]) - half * near, rows[1])],
                       ROAD, (0.9, 0.9, 0.85))


def draw_facades(canvas: Canvas, street: Street) -> None:
    """Facades on both sides (each side open with probability 0.15): quadrilaterals whose top and bottom edges
    run to the vanishing point, half of them behind a low wall or fence."""
    rng, height, width, horizon, vanish_x = canvas.rng, street.height, street.width, street.horizon, street.vanish_x
    for side in (-1, 1):
        if rng.random() < 0.15:
            continue
        base_x = street.walk_left if side < 0 else street.walk_right
        edge = 0.0 if side < 0 else float(width)
        # the facade stands on the line vanish -> (base_x, H); find its row at the image edge
        bottom_edge_y = horizon + (height - horizon) * (edge - vanish_x) / (base_x - vanish_x)
        near_end = vanish_x + side * width * 0.02  # facades stop just short of the vanishing point
        cuts = [edge]
        while (cuts[-1] - near_end) * side > 0:
            cuts.append(cuts[-1] - side * width * rng.uniform(0.08, 0.3))
        cuts[-1] = near_end
        for cut, nxt in zip(cuts[:-1], cuts[1:]):
            top_edge_y = horizon - height * rng.uniform(0.4, 1.2)

            def facade_rows(x_at, top=top_edge_y):
                t = (x_at - vanish_x) / (edge - vanish_x)
                return horizon + (top - horizon) * t, horizon + (bottom_edge_y - horizon) * t

            (t0, b0), (t1, b1) = facade_rows(cut), facade_rows(nxt)
            canvas.polygon([(cut, t0), (nxt, t1), (nxt, b1), (cut, b0)], BUILDING, STREET_LOOKS[BUILDING])
            if rng.random() < 0.5:
                label = WALL if rng.random() < 0.5 else FENCE
                k = rng.uniform(0.2, 0.45)
                canvas.polygon([(cut, b0 - (b0 - t0) * k), (nxt, b1 - (b1 - t1) * k), (nxt, b1), (cut, b0)], label, STREET_LOOKS[label])


def draw_things(canvas: Canvas, street: Street) -> None:
    """Vehicles on the road; people, poles, trees and clutter on the sidewalks (half the trees beyond them);
    drawn far to near, so that near ones occlude."""
    rng, width = canvas.rng, street.width
    things = []
    for _ in range(rng.integers(0, 7)):
        things.append(("vehicle", rng.choice([CAR, TRUCK, BUS], p=[0.9, 0.06, 0.04])))  # heavy vehicles are rare, as in Cityscapes
    for _ in range(rng.integers(0, 6)):
        things.append(("person", PERSON))
    for _ in range(rng.integers(1, 6)):
        things.append(("pole", POLE))
    for _ in range(rng.integers(0, 5)):
        things.append(("tree", VEGETATION))
    for _ in range(rng.integers(0, 3)):
        things.append(("clutter", STATIC))
    rows = street.horizon + (street.height - street.horizon) * rng.uniform(0.3, 1.0, len(things))
    along = street.along
    for (kind, label), y in sorted(zip(things, rows), key=lambda item: item[1]):
        if kind == "vehicle":
            x = rng.uniform(along(street.road_left, y), along(street.road_right, y))
        elif kind == "tree" and rng.random() < 0.5:
            x = (rng.uniform(along(-3 * width, y), along(street.walk_left, y)) if rng.random() < 0.5
                 else rng.uniform(along(street.walk_right, y), along(4 * width, y)))
        else:
            x = (rng.uniform(along(street.walk_left, y), along(street.road_left, y)) if rng.random() < 0.5
                 else rng.uniform(along(street.road_right, y), along(street.walk_right, y)))
        THING_DRAWERS[kind](canvas, label, x, y, street.depth(y))


# Each kind of thing on the ground is drawn standing at ground point (x, y) with perspective scale s
# in (0, 1]; THING_DRAWERS chooses the function by kind.
def draw_vehicle(canvas: Canvas, label: int, x: float, y: float, s: float) -> None:
    """A car, truck or bus (``label``) seen from the side, with wheels and a window band."""
    rng = canvas.rng
    length = {CAR: 0.35, TRUCK: 0.45, BUS: 0.6}[label] * canvas.width * s * rng.uniform(0.8, 1.2)
    tall = {CAR: 0.45, TRUCK: 0.9, BUS: 0.75}[label] * length * (1 if label == CAR else rng.uniform(0.8, 1.1))
    left, top = x - length / 2, y - tall
    wheel = max(1.0, 0.09 * length)

    def body(d):
        if label == CAR:
            d.rectangle([left, y - tall * 0.55, left + length, y - wheel * 0.5], fill=1)
            d.polygon([(left + 0.18 * length, y - tall * 0.55), (left + 0.3 * length, top), (left + 0.72 * length, top),
                       (left + 0.88 * length, y - tall * 0.55)], fill=1)
        elif label == TRUCK:
            d.rectangle([left, top, left + 0.7 * length, y - wheel * 0.5], fill=1)
            d.rectangle([left + 0.72 * length, y - tall * 0.6, left + length, y - wheel * 0.5], fill=1)
        else:
            d.rounded_rectangle([left, top, left + length, y - wheel * 0.5], radius=max(1, 0.08 * tall), fill=1)
        for centre in (left + 0.2 * length, left + 0.8 * length):
            d.ellipse([centre - wheel, y - 2 * wheel, centre + wheel, y], fill=1)

    silhouette = canvas.shape_mask(body)
    canvas.paint(silhouette, label, STREET_LOOKS[label])
    window = canvas.shape_mask(lambda d: d.rectangle([left + 0.1 * length, top + 0.1 * tall, left + 0.9 * length, top + 0.3 * tall], fill=1))
    canvas.paint(window & silhouette, label, (0.1, 0.12, 0.15))  # glass: same class, another look


def draw_person(canvas: Canvas, label: int, x: float, y: float, s: float) -> None:
    """A walking figure: head, body and two legs in stride."""
    rng = canvas.rng
    tall = 0.7 * canvas.height * s * rng.uniform(0.8, 1.15)
    head = 0.12 * tall
    body_width = 0.32 * tall

    def figure(d):
        d.ellipse([x - head / 2, y - tall, x + head / 2, y - tall + head], fill=1)
        d.rounded_rectangle([x - body_width / 2, y - tall + head, x + body_width / 2, y - 0.45 * tall], radius=max(1, body_width * 0.2), fill=1)
        leg = max(1, int(0.1 * tall))
        stride = rng.uniform(0, 0.15) * tall
        d.line([(x - body_width / 4, y - 0.45 * tall), (x - body_width / 4 - stride, y)], fill=1, width=leg)
        d.line([(x + body_width / 4, y - 0.45 * tall), (x + body_width / 4 + stride, y)], fill=1, width=leg)

    canvas.paint(canvas.shape_mask(figure), label, STREET_LOOKS[label])


def draw_pole(canvas: Canvas, label: int, x: float, y: float, s: float) -> None:
    """A pole, at least 3 pixels thick, carrying a traffic sign (round, triangular or square) six times in ten."""
    rng = canvas.rng
    tall = canvas.height * s * rng.uniform(0.8, 1.4)
    thick = max(3.0, 0.02 * canvas.width * s)
    canvas.paint(canvas.shape_mask(lambda d: d.rectangle([x - thick / 2, y - tall, x + thick / 2, y], fill=1)), label, STREET_LOOKS[label])
    size = max(6.0, 0.08 * canvas.width * s)
    top = y - tall
    if rng.random() < 0.6:
        shape = rng.integers(3)

        def sign(d):
            box = [x - size / 2, top, x + size / 2, top + size]
            if shape == 0:
                d.ellipse(box, fill=1)
            elif shape == 1:
                d.polygon([(x, top), (x + size / 2, top + size), (x - size / 2, top + size)], fill=1)
            else:
                d.rectangle(box, fill=1)
        canvas.paint(canvas.shape_mask(sign), TRAFFIC_SIGN, STREET_LOOKS[TRAFFIC_SIGN])


def draw_tree(canvas: Canvas, label: int, x: float, y: float, s: float) -> None:
    """A trunk under a crown of two to four overlapping discs."""
    rng = canvas.rng
    tall = 0.7 * canvas.height * s * rng.uniform(0.7, 1.3)
    trunk = max(1.0, 0.02 * canvas.width * s)
    crown = tall * rng.uniform(0.25, 0.45)

    def tree(d):
        d.rectangle([x - trunk / 2, y - tall + crown, x + trunk / 2, y], fill=1)
        for _ in range(rng.integers(2, 5)):
            cx, cy = x + rng.normal(0, crown * 0.3), y - tall + crown + rng.normal(0, crown * 0.3)
            r = crown * rng.uniform(0.6, 1.0)
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)

    canvas.paint(canvas.shape_mask(tree), label, STREET_LOOKS[label])


def draw_clutter(canvas: Canvas, label: int, x: float, y: float, s: float) -> None:
    """Static clutter (boxes, bins, benches), ignored in evaluation: a square block."""
    size = 0.08 * canvas.width * s * canvas.rng.uniform(0.5, 1.5)
    canvas.paint(canvas.shape_mask(lambda d: d.rectangle([x - size / 2, y - size, x + size / 2, y], fill=1)), label, STREET_LOOKS[label])


THING_DRAWERS = {"vehicle": draw_vehicle, "person": draw_person, "pole": draw_pole, "tree": draw_tree, "clutter": draw_clutter}


# ----------------------------------------------------------------------------------- objects
# Each VOC class is a silhouette of parts in a unit box (x right, y down) with a typical width / height
# ratio; parts marked detail=True are painted in a second look but keep the label.
class Part(NamedTuple):
    kind: str  # ellipse, box, polygon, stroke (a polyline of a width) or ring (an ellipse's outline)
    geometry: tuple
    detail: bool = False

    @staticmethod
    def ellipse(cx: float, cy: float, rx: float, ry: float, detail: bool = False) -> Part:
        return Part("ellipse", (cx - rx, cy - ry, cx + rx, cy + ry), detail)

    @staticmethod
    def box(x0: float, y0: float, x1: float, y1: float, detail: bool = False) -> Part:
        return Part("box", (x0, y0, x1, y1), detail)

    @staticmethod
    def polygon(*points: tuple[float, float], detail: bool = False) -> Part:
        return Part("polygon", points, detail)

    @staticmethod
    def stroke(*points: tuple[float, float], width: float = 0.06, detail: bool = False) -> Part:
        return Part("stroke", (points, width), detail)

    @staticmethod
    def ring(x0: float, y0: float, x1: float, y1: float) -> Part:
        return Part("ring", (x0, y0, x1, y1))


VOC_SILHOUETTES = {  # class index: (aspect w/h, typical colour, parts)
    1: (2.2, (0.8, 0.8, 0.85), [  # aeroplane
        Part.ellipse(0.5, 0.5, 0.48, 0.1),
        Part.polygon((0.35, 0.5), (0.62, 0.5), (0.45, 0.98)),
        Part.polygon((0.35, 0.5), (0.62, 0.5), (0.5, 0.05)),
        Part.polygon((0.02, 0.5), (0.14, 0.5), (0.04, 0.15)),
    ]),
    2: (1.6, (0.6, 0.1, 0.1), [  # bicycle
        Part.ring(0.02, 0.42, 0.42, 0.98),
        Part.ring(0.58, 0.42, 0.98, 0.98),
        Part.stroke((0.22, 0.7), (0.45, 0.35), (0.75, 0.35), (0.78, 0.7)),
        Part.stroke((0.45, 0.35), (0.5, 0.7), (0.22, 0.7)),
        Part.stroke((0.75, 0.35), (0.7, 0.1)),
    ]),
    3: (1.3, (0.5, 0.35, 0.2), [  # bird
        Part.ellipse(0.45, 0.55, 0.3, 0.2),
        Part.ellipse(0.75, 0.32, 0.13, 0.13),
        Part.polygon((0.85, 0.28), (1.0, 0.34), (0.85, 0.4)),
        Part.polygon((0.2, 0.5), (0.0, 0.35), (0.0, 0.7)),
        Part.stroke((0.45, 0.7), (0.42, 1.0), width=0.03),
        Part.stroke((0.55, 0.7), (0.58, 1.0), width=0.03),
    ]),
    4: (1.3, (0.9, 0.9, 0.9), [  # boat
        Part.polygon((0.0, 0.65), (1.0, 0.65), (0.85, 0.97), (0.15, 0.97)),
        Part.stroke((0.5, 0.03), (0.5, 0.65), width=0.03),
        Part.polygon((0.53, 0.06), (0.53, 0.6), (0.92, 0.6), detail=True),
    ]),
    5: (0.38, (0.2, 0.5, 0.25), [  # bottle
        Part.box(0.1, 0.38, 0.9, 1.0),
        Part.ellipse(0.5, 0.38, 0.4, 0.12),
        Part.box(0.35, 0.0, 0.65, 0.35),
        Part.box(0.3, 0.0, 0.7, 0.06, detail=True),
    ]),
    6: (1.8, (0.85, 0.7, 0.1), [  # bus
        Part.box(0.0, 0.08, 1.0, 0.88),
        Part.box(0.05, 0.18, 0.95, 0.45, detail=True),
        Part.ellipse(0.2, 0.88, 0.08, 0.1),
        Part.ellipse(0.8, 0.88, 0.08, 0.1),
    ]),
    7: (2.0, (0.2, 0.25, 0.6), [  # car
        Part.box(0.0, 0.45, 1.0, 0.85),
        Part.polygon((0.2, 0.46), (0.3, 0.12), (0.7, 0.12), (0.86, 0.46)),
        Part.polygon((0.33, 0.42), (0.38, 0.18), (0.66, 0.18), (0.74, 0.42), detail=True),
        Part.ellipse(0.22, 0.85, 0.1, 0.14),
        Part.ellipse(0.78, 0.85, 0.1, 0.14),
    ]),
    8: (1.4, (0.6, 0.5, 0.4), [  # cat
        Part.ellipse(0.42, 0.65, 0.34, 0.24),
        Part.ellipse(0.8, 0.35, 0.17, 0.18),
        Part.polygon((0.66, 0.25), (0.7, 0.0), (0.8, 0.2)),
        Part.polygon((0.82, 0.2), (0.92, 0.0), (0.95, 0.27)),
        Part.stroke((0.1, 0.65), (0.02, 0.3), (0.1, 0.1), width=0.05),
    ]),
    9: (0.7, (0.5, 0.3, 0.15), [  # chair
        Part.box(0.1, 0.5, 0.9, 0.62),
        Part.box(0.1, 0.0, 0.24, 0.62),
        Part.box(0.1, 0.62, 0.18, 1.0),
        Part.box(0.82, 0.62, 0.9, 1.0),
        Part.box(0.35, 0.62, 0.42, 0.95),
    ]),
    10: (1.5, (0.4, 0.3, 0.2), [  # cow
        Part.box(0.15, 0.25, 0.8, 0.65),
        Part.ellipse(0.15, 0.45, 0.08, 0.2),
        Part.box(0.78, 0.15, 1.0, 0.45),
        Part.box(0.2, 0.6, 0.28, 1.0),
        Part.box(0.32, 0.6, 0.4, 1.0),
        Part.box(0.6, 0.6, 0.68, 1.0),
        Part.box(0.7, 0.6, 0.78, 1.0),
        Part.ellipse(0.45, 0.4, 0.15, 0.1, detail=True),
    ]),
    11: (1.6, (0.55, 0.35, 0.2), [  # dining table
        Part.box(0.0, 0.3, 1.0, 0.42),
        Part.box(0.05, 0.42, 0.11, 1.0),
        Part.box(0.89, 0.42, 0.95, 1.0),
        Part.box(0.3, 0.42, 0.35, 0.9),
        Part.box(0.65, 0.42, 0.7, 0.9),
    ]),
    12: (1.5, (0.45, 0.3, 0.15), [  # dog
        Part.ellipse(0.45, 0.5, 0.32, 0.17),
        Part.ellipse(0.83, 0.3, 0.13, 0.13),
        Part.ellipse(0.96, 0.34, 0.06, 0.05),
        Part.polygon((0.76, 0.22), (0.74, 0.38), (0.7, 0.25)),
        Part.stroke((0.22, 0.55), (0.2, 1.0)),
        Part.stroke((0.35, 0.6), (0.37, 1.0)),
        Part.stroke((0.58, 0.6), (0.56, 1.0)),
        Part.stroke((0.68, 0.55), (0.7, 1.0)),
        Part.stroke((0.14, 0.45), (0.02, 0.15), width=0.04),
    ]),
    13: (1.3, (0.45, 0.25, 0.1), [  # horse
        Part.ellipse(0.45, 0.42, 0.3, 0.14),
        Part.polygon((0.65, 0.35), (0.78, 0.05), (0.88, 0.1), (0.75, 0.45)),
        Part.ellipse(0.88, 0.12, 0.1, 0.07),
        Part.stroke((0.22, 0.5), (0.2, 1.0)),
        Part.stroke((0.32, 0.5), (0.34, 1.0)),
        Part.stroke((0.6, 0.5), (0.58, 1.0)),
        Part.stroke((0.68, 0.5), (0.7, 1.0)),
        Part.stroke((0.16, 0.35), (0.03, 0.7), width=0.05),
    ]),
    14: (1.6, (0.15, 0.15, 0.5), [  # motorbike
        Part.ellipse(0.2, 0.75, 0.18, 0.24),
        Part.ellipse(0.8, 0.75, 0.18, 0.24),
        Part.polygon((0.22, 0.6), (0.78, 0.55), (0.7, 0.3), (0.35, 0.32)),
        Part.stroke((0.7, 0.3), (0.78, 0.05)),
        Part.ellipse(0.5, 0.35, 0.12, 0.06, detail=True),
    ]),
    15: (0.4, (0.6, 0.4, 0.35), [  # person
        Part.ellipse(0.5, 0.09, 0.17, 0.08),
        Part.box(0.22, 0.18, 0.78, 0.58),
        Part.box(0.24, 0.56, 0.46, 1.0),
        Part.box(0.54, 0.56, 0.76, 1.0),
        Part.stroke((0.22, 0.2), (0.05, 0.5), width=0.1),
        Part.stroke((0.78, 0.2), (0.95, 0.5), width=0.1),
    ]),
    16: (0.7, (0.2, 0.55, 0.2), [  # potted plant
        Part.polygon((0.28, 0.62), (0.72, 0.62), (0.64, 1.0), (0.36, 1.0), detail=True),
        Part.ellipse(0.5, 0.35, 0.35, 0.3),
        Part.ellipse(0.3, 0.3, 0.2, 0.2),
        Part.ellipse(0.7, 0.25, 0.22, 0.22),
    ]),
    17: (1.4, (0.85, 0.85, 0.8), [  # sheep
        Part.ellipse(0.42, 0.5, 0.36, 0.28),
        Part.ellipse(0.2, 0.35, 0.15, 0.15),
        Part.ellipse(0.45, 0.3, 0.2, 0.18),
        Part.ellipse(0.62, 0.35, 0.18, 0.18),
        Part.ellipse(0.86, 0.38, 0.12, 0.1, detail=True),
        Part.stroke((0.25, 0.7), (0.25, 1.0)),
        Part.stroke((0.6, 0.7), (0.6, 1.0)),
    ]),
    18: (2.0, (0.5, 0.2, 0.2), [  # sofa
        Part.box(0.0, 0.5, 1.0, 0.88),
        Part.box(0.05, 0.12, 0.95, 0.55),
        Part.box(0.0, 0.35, 0.12, 0.88),
        Part.box(0.88, 0.35, 1.0, 0.88),
        Part.box(0.05, 0.88, 0.1, 1.0),
        Part.box(0.9, 0.88, 0.95, 1.0),
    ]),
    19: (3.0, (0.3, 0.45, 0.55), [  # train
        Part.box(0.08, 0.15, 1.0, 0.85),
        Part.polygon((0.0, 0.85), (0.0, 0.4), (0.08, 0.15), (0.08, 0.85)),
        Part.box(0.15, 0.25, 0.95, 0.45, detail=True),
        Part.ellipse(0.25, 0.88, 0.04, 0.08),
        Part.ellipse(0.45, 0.88, 0.04, 0.08),
        Part.ellipse(0.65, 0.88, 0.04, 0.08),
        Part.ellipse(0.85, 0.88, 0.04, 0.08),
    ]),
    20: (1.2, (0.15, 0.15, 0.15), [  # tv monitor
        Part.box(0.02, 0.0, 0.98, 0.75),
        Part.box(0.08, 0.06, 0.92, 0.69, detail=True),
        Part.box(0.42, 0.75, 0.58, 0.9),
        Part.box(0.25, 0.9, 0.75, 1.0),
    ]),
}


# Eight classes with distinct silhouettes: enough to need shape and context, few enough that a
# CPU-scale network sees each class often in a few minutes of training.
DEFAULT_VOC_CLASSES = GENERATOR_ARGUMENTS["voc"]["classes"]  # aeroplane bird boat bottle car cat person tvmonitor
OBJECT_TEXTURES = TEXTURE_KINDS  # a class's typical texture kind: TEXTURE_KINDS[index % 4]


def draw_part(draw: ImageDraw.ImageDraw, part: Part, to_pixels, scale: float) -> None:
    """Fill one silhouette part, its unit-box coordinates mapped to pixels by ``to_pixels``; ``scale`` (pixels per
    unit) sets the widths of strokes and rings."""
    if part.kind == "polygon":
        draw.polygon([to_pixels(x, y) for x, y in part.geometry], fill=1)
    elif part.kind == "stroke":
        points, width = part.geometry
        draw.line([to_pixels(x, y) for x, y in points], fill=1, width=max(1, int(round(width * scale))))
    else:
        (x0, y0), (x1, y1) = to_pixels(*part.geometry[:2]), to_pixels(*part.geometry[2:])
        box = [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
        if part.kind == "box":
            draw.rectangle(box, fill=1)
        elif part.kind == "ellipse":
            draw.ellipse(box, fill=1)
        else:  # ring
            draw.ellipse(box, outline=1, width=max(1, int(round(0.08 * scale))))


def draw_object_scene(rng: np.random.Generator, height: int, width: int, classes=DEFAULT_VOC_CLASSES,
                      typical_look: float = OBJECT_TYPICAL_LOOK) -> tuple[np.ndarray, np.ndarray]:
    """1-3 objects of ``classes``: ``(image uint8 [H, W, 3], VOC class indices uint8 [H, W] with 255 bands)``."""
    canvas = Canvas(rng, height, width, 0, typical_look)
    background = (0.5, 0.5, 0.5)
    canvas.paint(np.ones((height, width), bool), 0, background)
    if rng.random() < 0.6:  # a floor or table surface under a wall
        floor = height * rng.uniform(0.4, 0.8)
        canvas.paint(canvas.yy > floor + (canvas.xx - width / 2) * rng.uniform(-0.2, 0.2), 0, background)
    for _ in range(rng.integers(0, 4)):  # background clutter: random shapes, still background
        centre = rng.uniform(0, 1, 2) * (width, height)
        radius = rng.uniform(0.05, 0.3) * min(height, width)
        corners = [tuple(centre + radius * np.array([np.cos(a), np.sin(a)])) for a in np.sort(rng.uniform(0, 2 * np.pi, rng.integers(3, 7)))]
        canvas.polygon(corners, 0, background)

    objects = rng.choice(classes, size=rng.integers(1, 4))
    sizes = rng.uniform(0.5, 0.95, len(objects)) * min(height, width)
    for class_index, size in sorted(zip(objects, sizes), key=lambda item: -item[1]):  # large (far) first
        aspect, typical, parts = VOC_SILHOUETTES[int(class_index)]
        aspect *= rng.uniform(0.8, 1.25)
        box_w, box_h = (size, size / aspect) if aspect >= 1 else (size * aspect, size)
        box_w, box_h = min(box_w, 0.95 * width), min(box_h, 0.95 * height)
        left, top = rng.uniform(-0.1 * box_w, width - 0.9 * box_w), rng.uniform(-0.1 * box_h, height - 0.9 * box_h)
        flip = rng.random() < 0.5

        def to_pixels(x, y, left=left, top=top, box_w=box_w, box_h=box_h, flip=flip):
            return (left + (1 - x if flip else x) * box_w, top + y * box_h)

        scale = min(box_w, box_h)
        body = canvas.shape_mask(lambda d: [draw_part(d, p, to_pixels, scale) for p in parts])
        canvas.paint(body, int(class_index), (typical, OBJECT_TEXTURES[int(class_index) % len(OBJECT_TEXTURES)]))
        details = [p for p in parts if p.detail]
        if details:
            detail = canvas.shape_mask(lambda d: [draw_part(d, p, to_pixels, scale) for p in details])
            canvas.paint(detail & body, int(class_index), (0.1, 0.1, 0.12))

    image = canvas.finish()
    labels = canvas.labels.copy()
    # an odd band about 1.25% of the shorter side wide, as VOC's 5 pixels on its 375-500 pixel images, and at
    # least 3 pixels: at the embedded 80 x 80, 3 pixels (4% of the side)
    band = max(3, 2 * round(min(height, width) / 160) + 1)
    layer = Image.fromarray(canvas.labels)
    differs = np.asarray(layer.filter(ImageFilter.MaxFilter(band))) != np.asarray(layer.filter(ImageFilter.MinFilter(band)))
    labels[differs] = IGNORE_INDEX
    return image, labels


# ----------------------------------------------------------------------------------- writers
BENCHMARK_SPLITS = {"train": 0, "val": 1}
SOURCE_SPLITS = {"train": 2, "held_out": 3}  # the pretraining source set's streams: no benchmark image is ever drawn from them
SOURCE_CLASSES = tuple(range(1, 21))  # every VOC object class


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, BENCHMARK_SPLITS[split], index])


def draw_source_image(seed: int, split: str, index: int, height: int, width: int, typical_look: float) -> tuple[np.ndarray, np.ndarray]:
    """Image ``index`` of the pretraining source set's ``split``: an object scene of any of the 20
    classes, drawn from a stream (``SOURCE_SPLITS``) that no benchmark image comes from."""
    rng = np.random.default_rng([seed, SOURCE_SPLITS[split], index])
    return draw_object_scene(rng, height, width, SOURCE_CLASSES, typical_look)


def generate_cityscapes_like(root, n_train: int, n_val: int, height: int, width: int, seed: int,
                             typical_look: float = STREET_TYPICAL_LOOK) -> Path:
    """Write ``n_train`` / ``n_val`` street scenes as a Cityscapes ``gtFine`` tree at ``root``.

    Each region has its class's typical look with probability ``typical_look``.
    Files: ``leftImg8bit/{split}/{city}/{city}_{seq:06d}_{frame:06d}_leftImg8bit.png`` and
    ``gtFine/{split}/{city}/..._gtFine_labelIds.png`` (grey PNG of Cityscapes label ids).
    """
    check_generator_arguments("cityscapes", dict(n_train=n_train, n_val=n_val, height=height, width=width, seed=seed,
                                                 typical_look=typical_look))

    def write_tree(staging: Path) -> None:
        for split, count, cities in (("train", n_train, CITYSCAPES_TRAIN_CITIES), ("val", n_val, CITYSCAPES_VAL_CITIES)):
            for index in tqdm(range(count), desc=f"synthetic-cityscapes {split}", leave=False):
                city = cities[index % len(cities)]
                stem = f"{city}_{index // len(cities):06d}_{19:06d}"
                image, labels = draw_street_scene(_rng(seed, split, index), height, width, typical_look)
                for folder, suffix, array in (("leftImg8bit", "leftImg8bit", image), ("gtFine", "gtFine_labelIds", labels)):
                    target = staging / folder / split / city / f"{stem}_{suffix}.png"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(array).save(target)

    with atomic_folder(root) as staging:  # the tree appears at root only once it is complete
        write_tree(staging)
    return Path(root)


def generate_voc_like(root, n_train: int, n_val: int, height: int, width: int, seed: int, classes=DEFAULT_VOC_CLASSES,
                      typical_look: float = OBJECT_TYPICAL_LOOK) -> Path:
    """Write ``n_train`` / ``n_val`` object scenes as a Pascal VOC 2012 tree under ``root/VOCdevkit/VOC2012``.

    Files: ``JPEGImages/{id}.jpg``, ``SegmentationClass/{id}.png`` (palette PNG, 255 boundary
    band) and ``ImageSets/Segmentation/{train,val,trainval}.txt``. Objects are drawn from
    ``classes`` (VOC class indices in 1..20); labels keep the 21-class VOC indexing. Each object
    has its class's typical look with probability ``typical_look``.
    """
    check_generator_arguments("voc", dict(n_train=n_train, n_val=n_val, height=height, width=width, seed=seed, classes=classes,
                                          typical_look=typical_look))
    classes = list(classes)

    def write_tree(staging: Path) -> None:
        base = voc_root(staging)
        for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (base / folder).mkdir(parents=True, exist_ok=True)
        lists = {}
        for split, count, offset in (("train", n_train, 0), ("val", n_val, n_train)):
            lists[split] = []
            for index in tqdm(range(count), desc=f"synthetic-voc {split}", leave=False):
                image_id = f"synth_{offset + index:06d}"
                image, labels = draw_object_scene(_rng(seed, split, index), height, width, classes, typical_look)
                Image.fromarray(image).save(base / "JPEGImages" / f"{image_id}.jpg", quality=92)
                save_palette_png(labels, base / "SegmentationClass" / f"{image_id}.png")
                lists[split].append(image_id)
        lists["trainval"] = lists["train"] + lists["val"]
        for split, ids in lists.items():
            (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))

    with atomic_folder(root) as staging:  # the tree appears at root only once it is complete
        write_tree(staging)
    return Path(root)


GENERATORS = {"cityscapes": generate_cityscapes_like, "voc": generate_voc_like}  # dataset kind -> the generator writing its format
