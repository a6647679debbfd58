"""HHA on a synthetic room whose depth, heights and surface angles are known by hand: a camera
1.5 m above the floor, a back wall 4 m ahead, a ceiling 1 m above the camera."""

from __future__ import annotations

import numpy as np
import pytest

from atrous.data.hha import gravity_direction, hha, matlab_uint8, point_cloud, surface_normals

F, CX, CY, HEIGHT, WIDTH = 120.0, 80.5, 60.5, 120, 160
CAMERA = np.array([[F, 0, CX], [0, F, CY], [0, 0, 1]])
FLOOR, CEILING, WALL = 150.0, -100.0, 400.0  # cm: floor y, ceiling y (y down), wall z


def room(pitch_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Depth (m) of each pixel, the world point (cm, y down) it sees and which surface
    (0 wall, 1 floor, 2 ceiling), for a camera pitched down by `pitch_deg`."""
    xx, yy = np.meshgrid(np.arange(1, WIDTH + 1), np.arange(1, HEIGHT + 1))
    rays = np.stack([(xx - CX) / F, (yy - CY) / F, np.ones_like(xx, float)], -1)  # camera frame, z = 1
    t = np.radians(pitch_deg)
    to_world = np.array([[1, 0, 0], [0, np.cos(t), np.sin(t)], [0, -np.sin(t), np.cos(t)]])  # pitch down
    world = rays @ to_world.T  # each ray's direction in the world (y down), per unit camera depth
    with np.errstate(divide="ignore"):
        scale = np.stack([WALL / world[..., 2], FLOOR / world[..., 1], CEILING / world[..., 1]], -1)
    scale[scale <= 0] = np.inf
    surface = scale.argmin(-1)
    depth = scale.min(-1)  # camera z of the hit point, cm
    return depth / 100.0, world * depth[..., None], surface


def test_point_cloud_uses_matlabs_one_based_pixels():
    points = point_cloud(np.full((2, 3), 200.0), CAMERA)
    assert points[0, 0].tolist() == pytest.approx([(1 - CX) * 200 / F, (1 - CY) * 200 / F, 200])


def test_normals_of_the_room_are_its_planes_pointing_away_from_the_camera():
    depth, _, surface = room()
    points = point_cloud(depth * 100, CAMERA)
    normals = surface_normals(points, depth <= 0, 3)
    assert np.allclose(normals[70, 80], [0, 0, 1], atol=1e-6)  # the wall, away from the camera: +z
    assert np.allclose(normals[115, 80], [0, 1, 0], atol=1e-6)  # the floor below: +y (down)
    assert np.allclose(normals[5, 80], [0, -1, 0], atol=1e-6)  # the ceiling above: -y
    assert surface[70, 80] == 0 and surface[115, 80] == 1 and surface[5, 80] == 2


@pytest.mark.parametrize("pitch", [0.0, 12.0])
def test_hha_of_the_room_matches_the_values_by_hand(pitch):
    depth, world, surface = room(pitch)
    encoded = hha(depth, CAMERA)
    assert encoded.shape == (3, HEIGHT, WIDTH) and encoded.dtype == np.uint8
    gravity = gravity_direction(surface_normals(point_cloud(depth * 100, CAMERA), depth <= 0, 10))
    t = np.radians(pitch)
    assert np.degrees(np.arccos(gravity @ [0, np.cos(t), np.sin(t)])) < 1.0  # world down, in the camera frame
    # by hand: disparity 31000 / z (cm); height = floor y - world y (cm); angle 90 on the wall,
    # 0 on the floor, 180 on the ceiling (+ 128 - 90)
    disparity = matlab_uint8(31000 / np.maximum(depth * 100, 100))
    height = FLOOR - world[..., 1]
    angle = np.choose(surface, [90.0, 0.0, 180.0]) + 38
    inside = interior(surface, margin=4)
    assert np.array_equal(encoded[0], disparity)
    assert np.abs(encoded[1][inside].astype(int) - np.clip(np.round(height[inside]), 0, 255)).max() <= 3
    assert np.abs(encoded[2][inside].astype(int) - np.clip(angle[inside], 0, 255)).max() <= 1
    if pitch == 0:  # level: the wall exactly perpendicular to the gravity found
        assert (encoded[2][inside & (surface == 0)] == 128).all()


def interior(surface: np.ndarray, margin: int) -> np.ndarray:
    """Pixels whose (2m+1)^2 window sees one surface only."""
    same = np.ones_like(surface, bool)
    for dy in range(-margin, margin + 1):
        for dx in range(-margin, margin + 1):
            shifted = np.roll(np.roll(surface, dy, 0), dx, 1)
            same &= shifted == surface
    same[:margin] = same[-margin:] = False
    same[:, :margin] = same[:, -margin:] = False
    return same


def test_a_camera_that_sees_no_floor_assumes_it_1_3_m_below():
    depth = np.full((40, 50), 3.0)  # a wall alone: the lowest point is 0.x m below the camera
    encoded = hha(depth, CAMERA)
    ys = (np.arange(1, 41) - CY) * 300 / F  # cm, down
    assert np.abs(encoded[1, 5:35, 25].astype(int) - np.clip(np.round(130 - ys[5:35]), 0, 255)).max() <= 1
    assert matlab_uint8(np.array([-3.0, 2.5, 77.5, 300.0, np.nan])).tolist() == [0, 3, 78, 255, 0]
