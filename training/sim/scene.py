"""Random pybullet scenes: a room (floor, walls), a table, robots and objects, with lighting.

Why one long module: the scene builder's random draws must stay in one order per seed (the
tests rebuild scenes from their seed), which one builder class guarantees.

A scene is built in a pybullet DIRECT client from one integer seed, so the same seed rebuilds the
same scene (the tests rebuild scenes to check the recorded ground truth against independent ray
tests). Every body carries a class id of config/classes.yaml and a LiDAR reflectivity; robots
carry their movable joints and limits. Nothing here steps physics: robots are posed kinematically
and objects are placed resting on their support, so recordings are fast and deterministic.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pybullet as p
import pybullet_data

from rmseg_ros.classes import ClassTable
from training.sim.config import LidarConfig, SceneConfig

DATA = Path(pybullet_data.getDataPath())


@dataclass(frozen=True)
class RobotSpec:
    urdf: str
    home: tuple[float, ...] = ()  # one value per movable joint (revolute/prismatic), in order
    mobile: bool = False
    scale: float = 1.0
    # Replace the URDF's collision shapes by its visual meshes: ray tests (LiDAR) then see what
    # the camera sees (the husky's collision model is one coarse box). Links whose name contains
    # one of `keep_collision` keep theirs (the husky's wheels are exact cylinders already, and
    # ray tests against their 7000-triangle hulls would triple the LiDAR's cost).
    collision_from_visual: bool = False
    keep_collision: tuple[str, ...] = ()


ROBOT_SPECS: dict[str, RobotSpec] = {
    'franka_panda': RobotSpec('franka_panda/panda.urdf',
                              (0.0, -0.3, 0.0, -2.2, 0.0, 2.0, 0.8, 0.03, 0.03)),
    'kuka_iiwa': RobotSpec('kuka_iiwa/model.urdf', (0.0, 0.5, 0.0, -1.4, 0.0, 0.9, 0.0)),
    'xarm6': RobotSpec('xarm/xarm6_robot.urdf', (0.0, -0.4, -0.9, 0.0, 1.0, 0.0)),
    'husky': RobotSpec('husky/husky.urdf', mobile=True, collision_from_visual=True,
                       keep_collision=('wheel',)),
}

HUSKY_WHEEL_RADIUS_M = 0.165
HUSKY_HALF_WIDTH_M = 0.4

# Objects per class: (loader, path or primitive)
_URDF_OBJECTS = {
    'mug': ('objects/mug.urdf', (0.8, 1.3)),
    'duck': ('duck_vhacd.urdf', (0.9, 1.8)),
}
_CLUTTER_EXTRA = [('teddy_vhacd.urdf', (1.0, 1.6)), ('lego/lego.urdf', (1.5, 3.0)),
                  ('jenga/jenga.urdf', (0.7, 1.2)), ('sphere_small.urdf', (0.8, 1.5))]


@dataclass
class Robot:
    name: str
    body: int
    joints: list[int]  # pybullet joint indices of the movable joints
    joint_names: list[str]
    lower: np.ndarray
    upper: np.ndarray
    home: np.ndarray
    mobile: bool = False
    contact_links: frozenset[int] = frozenset()  # links touching the support at home


@dataclass
class Light:
    direction: tuple[float, float, float]
    color: tuple[float, float, float]
    ambient: float
    diffuse: float
    specular: float
    brightness: float
    shadows: bool = False


@dataclass
class HuskyPath:
    """The husky drives on a circle around the table: position, heading and wheel angle in t."""

    center: np.ndarray  # (2,)
    radius: float
    phase0: float
    speed: float  # m/s, signed (direction)

    def pose(self, t: float) -> tuple[np.ndarray, float, float]:
        theta = self.phase0 + self.speed * t / self.radius
        xy = self.center + self.radius * np.array([np.cos(theta), np.sin(theta)])
        yaw = theta + np.sign(self.speed) * np.pi / 2
        wheel = self.speed * t / HUSKY_WHEEL_RADIUS_M
        return xy, float(yaw), float(abs(wheel) * np.sign(self.speed))


@dataclass
class Scene:
    client: int
    seed: int
    room: tuple[float, float]  # room size x, y (centred at the origin)
    body_class: dict[int, int]
    body_reflectivity: dict[int, float]
    robots: list[Robot]
    light: Light
    table: int
    table_top_z: float
    table_center: np.ndarray  # (3,) top centre
    target: np.ndarray  # (3,) where cameras look (the arm's workspace)
    husky_path: HuskyPath | None = None
    objects: list[int] = field(default_factory=list)
    ignore_index: int = 255

    @property
    def robot_bodies(self) -> set[int]:
        return {r.body for r in self.robots}

    def class_lut(self) -> np.ndarray:
        """uint8 lookup indexed by segmentation value + 1 (-1 = background -> ignore)."""
        lut = np.full(max(self.body_class) + 2, self.ignore_index, dtype=np.uint8)
        for body, cls in self.body_class.items():
            lut[body + 1] = cls
        return lut

    def robot_lut(self) -> np.ndarray:
        lut = np.zeros(max(self.body_class) + 2, dtype=np.uint8)
        for body in self.robot_bodies:
            lut[body + 1] = 1
        return lut

    def reflectivity_lut(self) -> np.ndarray:
        lut = np.zeros(max(self.body_class) + 2, dtype=np.float32)
        for body, refl in self.body_reflectivity.items():
            lut[body + 1] = refl
        return lut

    def joint_names(self) -> list[str]:
        return [n for r in self.robots for n in r.joint_names]

    def set_robot_state(self, robot: Robot, q: np.ndarray) -> None:
        set_joints(self.client, robot, q)


def set_joints(client: int, robot: Robot, q: np.ndarray) -> None:
    for j, v in zip(robot.joints, q, strict=True):
        p.resetJointState(robot.body, j, float(v), physicsClientId=client)


def body_aabb(body: int, client: int) -> tuple[np.ndarray, np.ndarray]:
    """World AABB over all links (getAABB alone returns the base link's)."""
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    for link in range(-1, p.getNumJoints(body, physicsClientId=client)):
        a, b = p.getAABB(body, link, physicsClientId=client)
        lo, hi = np.minimum(lo, a), np.maximum(hi, b)
    return lo, hi


@contextlib.contextmanager
def _quiet_native_output() -> Iterator[None]:
    """Silence pybullet's C-level warnings while loading URDFs (the husky's links without
    inertia print one line each to stdout), so progress bars and logs stay readable."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def _yaw_quat(yaw: float) -> list[float]:
    return [0.0, 0.0, float(np.sin(yaw / 2)), float(np.cos(yaw / 2))]


def _random_color(rng: np.random.Generator, lo: float = 0.1) -> list[float]:
    return [*rng.uniform(lo, 1.0, 3).tolist(), 1.0]


def _texture_image(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A procedural RGB texture: checker, stripes, blotches or noise in two random colours."""
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    kind = rng.integers(4)
    yy, xx = np.mgrid[0:size, 0:size]
    if kind == 0:
        cell = int(rng.choice([4, 8, 16]))
        mix = ((xx // cell + yy // cell) % 2).astype(np.float32)
    elif kind == 1:
        period = float(rng.uniform(4, 16))
        ang = rng.uniform(0, np.pi)
        mix = (np.sin((xx * np.cos(ang) + yy * np.sin(ang)) * 2 * np.pi / period) > 0)
        mix = mix.astype(np.float32)
    elif kind == 2:
        small = rng.uniform(0, 1, (int(rng.integers(3, 9)),) * 2).astype(np.float32)
        mix = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    else:
        mix = rng.uniform(0, 1, (size, size)).astype(np.float32)
    img = c1 * (1 - mix[..., None]) + c2 * mix[..., None]
    return img.clip(0, 255).astype(np.uint8)


def collision_from_visual(urdf: Path, out_dir: Path, keep: tuple[str, ...] = ()) -> Path:
    """A copy of `urdf` in out_dir whose links collide with their visual geometry (mesh paths
    made absolute, so the copy loads from anywhere); links named like `keep` are unchanged."""
    tree = ET.parse(urdf)
    root = tree.getroot()
    for link in root.iter('link'):
        if any(k in link.get('name', '') for k in keep):
            continue
        for col in link.findall('collision'):
            link.remove(col)
        for vis in link.findall('visual'):
            col = ET.SubElement(link, 'collision')
            for child in vis:
                if child.tag in ('origin', 'geometry'):
                    col.append(copy.deepcopy(child))
    for mesh in root.iter('mesh'):
        name = mesh.get('filename', '')
        if name and '://' not in name and not Path(name).is_absolute():
            mesh.set('filename', str(urdf.parent / name))
    out = out_dir / f'{urdf.stem}_visual_collision.urdf'
    tree.write(out)
    return out


class _Textures:
    """Procedural textures written to a private temporary folder and loaded into the client
    (pybullet reads the file on load, so the folder is removed when the scene is built)."""

    def __init__(self, client: int) -> None:
        self.client = client
        self.dir = Path(tempfile.mkdtemp(prefix='rmseg_tex_'))
        self.count = 0

    def new(self, rng: np.random.Generator) -> int:
        path = self.dir / f'tex{self.count}.png'
        self.count += 1
        cv2.imwrite(str(path), _texture_image(rng)[..., ::-1])
        return p.loadTexture(str(path), physicsClientId=self.client)

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class _Builder:
    def __init__(self, seed: int, cfg: SceneConfig, classes: ClassTable, lidar: LidarConfig,
                 client: int) -> None:
        self.seed, self.cfg, self.classes, self.client = seed, cfg, classes, client
        self.rng = np.random.default_rng([seed, 1])
        self.refl_cfg = lidar.reflectivity
        self.refl_jitter = lidar.reflectivity_jitter
        self.body_class: dict[int, int] = {}
        self.body_refl: dict[int, float] = {}
        self.tex = _Textures(client)
        self.footprints: list[tuple[np.ndarray, float]] = []  # (xy, radius) of placed items

    # -- helpers ----------------------------------------------------------------------------
    def register(self, body: int, class_name: str) -> None:
        self.body_class[body] = self.classes.index(class_name)
        base = float(self.refl_cfg.get(class_name, 0.5))
        jitter = self.rng.uniform(1 - self.refl_jitter, 1 + self.refl_jitter)
        self.body_refl[body] = float(np.clip(base * jitter, 0.0, 1.0))

    def paint(self, body: int, color: list[float] | None = None, texture: int | None = None,
              links: list[int] | None = None) -> None:
        kwargs: dict = {}
        if color is not None:
            kwargs['rgbaColor'] = color
        if texture is not None:
            kwargs['textureUniqueId'] = texture
        if not kwargs:
            return
        n = p.getNumJoints(body, physicsClientId=self.client)
        for link in links if links is not None else range(-1, n):
            p.changeVisualShape(body, link, physicsClientId=self.client, **kwargs)

    def maybe_texture(self) -> int | None:
        return self.tex.new(self.rng) if self.rng.random() < self.cfg.texture_probability else None

    def load_urdf(self, path: str, scale: float = 1.0, fixed: bool = True) -> int:
        with _quiet_native_output():
            return p.loadURDF(str(DATA / path), globalScaling=scale, useFixedBase=fixed,
                              physicsClientId=self.client)

    def rest_on(self, body: int, xy: np.ndarray, surface_z: float, yaw: float) -> float:
        """Pose the body with yaw, its AABB centred on xy and its bottom on surface_z; returns
        the footprint radius."""
        c = self.client
        p.resetBasePositionAndOrientation(body, [0, 0, 0], _yaw_quat(yaw), physicsClientId=c)
        lo, hi = body_aabb(body, c)
        centre = (lo + hi) / 2
        pos = [xy[0] - centre[0], xy[1] - centre[1], surface_z - lo[2] + 1e-3]
        p.resetBasePositionAndOrientation(body, pos, _yaw_quat(yaw), physicsClientId=c)
        return float(np.hypot(*(hi[:2] - lo[:2])) / 2)

    def free(self, xy: np.ndarray, radius: float) -> bool:
        return all(np.hypot(*(xy - q)) > radius + r + 0.02 for q, r in self.footprints)

    # -- parts ------------------------------------------------------------------------------
    def room(self) -> tuple[float, float]:
        c, rng, cfg = self.client, self.rng, self.cfg
        lx, ly = (float(v) for v in rng.uniform(*cfg.room_size_m, 2))
        floor = self.load_urdf('plane.urdf')
        self.register(floor, 'floor')
        tex = self.maybe_texture()
        self.paint(floor, color=_random_color(rng, 0.3), texture=tex)
        wall_color, wall_tex = _random_color(rng, 0.2), self.maybe_texture()
        h, t = cfg.wall_height_m, 0.05
        walls = [([lx / 2 + t, 0, h / 2], [t, ly / 2 + 2 * t, h / 2]),
                 ([-lx / 2 - t, 0, h / 2], [t, ly / 2 + 2 * t, h / 2]),
                 ([0, ly / 2 + t, h / 2], [lx / 2, t, h / 2]),
                 ([0, -ly / 2 - t, h / 2], [lx / 2, t, h / 2])]
        for pos, half in walls:
            col = p.createCollisionShape(p.GEOM_BOX, halfExtents=half, physicsClientId=c)
            vis = p.createVisualShape(p.GEOM_BOX, halfExtents=half, physicsClientId=c)
            body = p.createMultiBody(0, col, vis, basePosition=pos, physicsClientId=c)
            self.register(body, 'wall')
            if rng.random() < 0.3:  # an odd wall out
                self.paint(body, _random_color(rng, 0.2), self.maybe_texture())
            else:
                self.paint(body, wall_color, wall_tex)
        return lx, ly

    def table(self) -> tuple[int, np.ndarray, float, np.ndarray, float]:
        rng = self.rng
        path = 'table/table.urdf' if rng.random() < 0.7 else 'table_square/table_square.urdf'
        body = self.load_urdf(path, scale=float(rng.uniform(0.85, 1.15)))
        self.register(body, 'table')
        yaw = float(rng.uniform(-np.pi, np.pi))
        # Size in its own frame first (yaw 0), then the pose.
        lo, hi = body_aabb(body, self.client)
        half = (hi[:2] - lo[:2]) / 2
        xy = rng.uniform(-0.3, 0.3, 2)
        self.rest_on(body, xy, 0.0, yaw)
        top = float(body_aabb(body, self.client)[1][2])
        if rng.random() < 0.8:
            self.paint(body, _random_color(rng, 0.15), self.maybe_texture())
        return body, np.array([xy[0], xy[1], top]), yaw, half, top

    def arm(self, centre: np.ndarray, yaw: float, half: np.ndarray) -> Robot:
        rng = self.rng
        names = list(self.cfg.robots)
        weights = np.array([self.cfg.robots[n] for n in names], dtype=np.float64)
        name = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        # On the table near one long edge, facing the table centre.
        side = rng.choice([-1.0, 1.0])
        local = np.array([rng.uniform(-0.5, 0.5) * (half[0] - 0.2), side * (half[1] - 0.15)])
        rot = np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]])
        xy = centre[:2] + rot @ local
        facing = yaw - side * np.pi / 2 + rng.uniform(-0.4, 0.4)
        robot = self.robot(name, xy, centre[2], facing)
        self.footprints.append((xy, 0.15))
        return robot

    def robot(self, name: str, xy: np.ndarray, surface_z: float, yaw: float) -> Robot:
        spec, c = ROBOT_SPECS[name], self.client
        path = spec.urdf
        if spec.collision_from_visual:
            path = str(collision_from_visual(DATA / spec.urdf, self.tex.dir,
                                             spec.keep_collision))
        body = self.load_urdf(path, spec.scale, fixed=not spec.mobile)
        self.register(body, 'robot')
        joints, names, lower, upper = [], [], [], []
        for j in range(p.getNumJoints(body, physicsClientId=c)):
            info = p.getJointInfo(body, j, physicsClientId=c)
            if info[2] in (p.JOINT_REVOLUTE, p.JOINT_PRISMATIC):
                joints.append(j)
                names.append(info[1].decode())
                lo, hi = info[8], info[9]
                if hi < lo:  # continuous joint
                    lo, hi = -np.pi, np.pi
                lower.append(max(lo, -2 * np.pi))
                upper.append(min(hi, 2 * np.pi))
        home = np.array(spec.home if spec.home else [0.0] * len(joints), dtype=np.float64)
        robot = Robot(name, body, joints, names, np.array(lower), np.array(upper), home,
                      spec.mobile)
        set_joints(c, robot, home)
        # Place by the base link only (the arm above it must not lift the base).
        p.resetBasePositionAndOrientation(body, [0, 0, 0], _yaw_quat(yaw), physicsClientId=c)
        base_lo = np.array(p.getAABB(body, -1, physicsClientId=c)[0])
        pos = [xy[0], xy[1], surface_z - base_lo[2] + 1e-3]
        p.resetBasePositionAndOrientation(body, pos, _yaw_quat(yaw), physicsClientId=c)
        if self.rng.random() < self.cfg.robot_tint_probability:
            self.paint(body, _random_color(self.rng, 0.2))
        return robot

    def husky(self, centre: np.ndarray, table_radius: float, room: tuple[float, float]) -> (
            tuple[Robot, HuskyPath] | None):
        rng = self.rng
        radius = table_radius + 0.7 + rng.uniform(0, 0.4)
        room_half = min(room) / 2 - abs(centre[:2]).max()
        if radius + 0.6 > room_half:
            radius = room_half - 0.6
            if radius < table_radius + 0.55:
                return None
        path = HuskyPath(centre[:2].copy(), float(radius), float(rng.uniform(-np.pi, np.pi)),
                         float(rng.uniform(0.2, 0.5) * rng.choice([-1.0, 1.0])))
        xy, yaw, _ = path.pose(0.0)
        robot = self.robot('husky', xy, 0.0, yaw)
        return robot, path

    def objects(self, table_xy: np.ndarray, yaw: float, half: np.ndarray, top: float,
                room: tuple[float, float], husky: HuskyPath | None) -> list[int]:
        rng, cfg = self.rng, self.cfg
        names = list(cfg.object_classes)
        weights = np.array([cfg.object_classes[n] for n in names], dtype=np.float64)
        placed = []
        rot = np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]])
        for _ in range(int(rng.integers(cfg.objects[0], cfg.objects[1] + 1))):
            cls = names[int(rng.choice(len(names), p=weights / weights.sum()))]
            body = self.make_object(cls)
            on_floor = rng.random() < cfg.floor_object_fraction
            obj_yaw = float(rng.uniform(-np.pi, np.pi))
            ok = False
            for _ in range(30):
                if on_floor:
                    xy = rng.uniform(-0.5, 0.5, 2) * (np.array(room) - 0.6)
                    local = rot.T @ (xy - table_xy)
                    if np.all(np.abs(local) < half + 0.15):
                        continue
                    if husky is not None:
                        d = np.hypot(*(xy - husky.center))
                        if abs(d - husky.radius) < HUSKY_HALF_WIDTH_M + 0.25:
                            continue
                    surface = 0.0
                else:
                    xy = table_xy + rot @ (rng.uniform(-1, 1, 2) * (half - 0.08))
                    surface = top
                radius = self.rest_on(body, xy, surface, obj_yaw)
                if self.free(xy, radius):
                    ok = True
                    break
            if ok:
                self.footprints.append((xy, radius))
                placed.append(body)
            else:
                p.removeBody(body, physicsClientId=self.client)
                del self.body_class[body], self.body_refl[body]
        return placed

    def make_object(self, cls: str) -> int:
        rng, c = self.rng, self.client
        if cls in ('box', 'cylinder'):
            if cls == 'box':
                half = rng.uniform(0.025, 0.09, 3)
                col = p.createCollisionShape(p.GEOM_BOX, halfExtents=half, physicsClientId=c)
                vis = p.createVisualShape(p.GEOM_BOX, halfExtents=half, physicsClientId=c)
            else:
                r, h = float(rng.uniform(0.02, 0.06)), float(rng.uniform(0.05, 0.25))
                col = p.createCollisionShape(p.GEOM_CYLINDER, radius=r, height=h,
                                             physicsClientId=c)
                vis = p.createVisualShape(p.GEOM_CYLINDER, radius=r, length=h,
                                          physicsClientId=c)
            body = p.createMultiBody(0, col, vis, physicsClientId=c)
            tex = self.maybe_texture() if cls == 'box' else None
            self.paint(body, _random_color(rng), tex)
        elif cls in _URDF_OBJECTS:
            path, scale = _URDF_OBJECTS[cls]
            body = self.load_urdf(path, float(rng.uniform(*scale)))
            if rng.random() < 0.5:
                self.paint(body, _random_color(rng, 0.3))
        else:  # clutter: one of the 1000 random_urdfs or a few other pybullet_data objects
            if rng.random() < 0.8:
                i = int(rng.integers(1000))
                body = self.load_urdf(f'random_urdfs/{i:03d}/{i:03d}.urdf',
                                      float(rng.uniform(0.8, 1.5)))
            else:
                path, scale = _CLUTTER_EXTRA[int(rng.integers(len(_CLUTTER_EXTRA)))]
                body = self.load_urdf(path, float(rng.uniform(*scale)))
            if rng.random() < 0.5:
                self.paint(body, _random_color(rng, 0.2))
        self.register(body, cls)
        return body

    def light(self) -> Light:
        rng, cfg = self.rng, self.cfg
        lo, hi = cfg.brightness
        b = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        az, el = rng.uniform(-np.pi, np.pi), rng.uniform(np.deg2rad(30), np.deg2rad(80))
        direction = (np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el))
        tint = 1.0 - 0.25 * rng.random(3)
        return Light(direction=tuple(float(v) for v in direction),
                     color=tuple(float(v) for v in b * tint),
                     ambient=float(b * rng.uniform(0.4, 0.7)), diffuse=float(rng.uniform(0.5, 0.9)),
                     specular=float(rng.uniform(0.0, 0.4)), brightness=b, shadows=cfg.shadows)


def build_scene(seed: int, cfg: SceneConfig, classes: ClassTable, lidar: LidarConfig,
                client: int) -> Scene:
    """Build the scene of `seed` into `client` (a fresh DIRECT client: body ids start at 0)."""
    b = _Builder(seed, cfg, classes, lidar, client)
    try:
        room = b.room()
        table, top_centre, yaw, half, top = b.table()
        arm = b.arm(top_centre, yaw, half)
        robots, husky_path = [arm], None
        if b.rng.random() < cfg.husky_probability:
            made = b.husky(top_centre, float(np.hypot(*half)), room)
            if made is not None:
                robots.append(made[0])
                husky_path = made[1]
        objects = b.objects(top_centre[:2], yaw, half, top, room, husky_path)
        light = b.light()
    finally:
        b.tex.close()
    lo, hi = body_aabb(arm.body, client)  # the arm at its home pose: its workspace
    target = (lo + hi) / 2 + b.rng.uniform(-0.1, 0.1, 3)
    scene = Scene(client, seed, room, b.body_class, b.body_refl, robots, light, table, top,
                  top_centre, target, husky_path, objects, classes.ignore_index)
    for robot in robots:
        robot.contact_links = _support_contacts(scene, robot)
    return scene


def _support_contacts(scene: Scene, robot: Robot) -> frozenset[int]:
    """Links of `robot` that touch other bodies at its home pose (its mount): trajectory
    checks ignore these."""
    scene.set_robot_state(robot, robot.home)
    links = set()
    for other in scene.body_class:
        if other == robot.body:
            continue
        for pt in p.getClosestPoints(robot.body, other, 0.01, physicsClientId=scene.client):
            links.add(pt[3])
    return frozenset(links)


def arm_collides(scene: Scene, robot: Robot, q: np.ndarray, margin: float = 0.01,
                 keep_out: tuple[int, ...] = ()) -> bool:
    """Whether the arm at joint positions q touches the table, objects or walls (other than
    through the links that rest on its mount) or any of the `keep_out` bodies."""
    scene.set_robot_state(robot, q)
    c = scene.client
    for other in keep_out:
        if p.getClosestPoints(robot.body, other, 0.0, physicsClientId=c):
            return True
    for other in scene.body_class:
        if other == robot.body or other in scene.robot_bodies:
            continue
        for pt in p.getClosestPoints(robot.body, other, margin, physicsClientId=c):
            if pt[3] not in robot.contact_links:
                return True
    return False


def keep_out_spheres(client: int, centres: list[np.ndarray], radius: float) -> list[int]:
    """Collision-only spheres (e.g. around the camera's path) that trajectory planning avoids;
    remove them with p.removeBody before rendering or ray casting."""
    shape = p.createCollisionShape(p.GEOM_SPHERE, radius=radius, physicsClientId=client)
    return [p.createMultiBody(0, shape, -1, basePosition=list(map(float, c)),
                              physicsClientId=client) for c in centres]


def connect() -> int:
    """A fresh headless pybullet client."""
    return p.connect(p.DIRECT)


def disconnect(client: int) -> None:
    p.disconnect(physicsClientId=client)
