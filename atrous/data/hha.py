"""HHA: a depth map encoded as three 8-bit bands (Gupta, Girshick, Arbelaez, Malik, "Learning
Rich Features from RGB-D Images for Object Detection and Segmentation", ECCV 2014, Sec. 3):
horizontal disparity, height above ground, and the angle of the surface normal with the
direction of gravity; FCN's RGB-HHA input on NYUDv2 (Long et al., CVPR 2015, Sec. 5).

Each step follows the authors' RGBD utilities (github.com/s-gupta/rgbdutils, used by saveHHA.m):
1. `point_cloud`: getPointCloudFromZ.m, pixels in MATLAB's 1-based coordinates, depth in cm.
2. `surface_normals`: computeNormalsSquareSupport.m, a plane fitted to the points of each
   (2R+1)^2 window by least squares on (X/Z, Y/Z, 1) . n = 1/Z, missing points left out,
   the normal then turned to point away from the camera (n . P > 0).
3. `gravity_direction`: getYDir.m, from y0 = (0, 1, 0): the direction most parallel to the
   normals within `angle` degrees of it and most perpendicular to those within `angle` of
   its perpendicular (the smallest eigenvector of Nw Nw' - Nf Nf'), 5 iterations at 45 then 15
   degrees, on the normals of radius 10.
4. `height_above_ground`: processDepthImage.m, the points rotated so that gravity is (0, 1, 0)
   (getRMatrix.m, Rodrigues' formula), the height -y less its minimum, that minimum taken as
   -130 cm when higher than -90 cm (a camera assumed 1.3 m above a floor it does not see).
5. `hha`: saveHHA.m, disparity 31000 / max(Z, 100 cm), the height in cm, the angle of the
   normals of radius 3 with gravity + 128 - 90 degrees; each rounded and saturated to 0..255
   as MATLAB's uint8 does.
"""

from __future__ import annotations

import numpy as np

NYU_COLOR_CAMERA = np.array([[518.857901, 0.0, 325.582449],  # NYU Depth v2 toolbox, camera_params.m (rgb)
                             [0.0, 519.469611, 253.736166],
                             [0.0, 0.0, 1.0]])
NORMAL_RADII = (3, 10)  # processDepthImage.m: normalParam.patchSize
GRAVITY_ANGLES = (45.0, 15.0)  # yDirParam.angleThresh, 5 iterations each
GRAVITY_ITERATIONS = 5


def point_cloud(depth_cm: np.ndarray, camera: np.ndarray) -> np.ndarray:
    """(H, W, 3) X, Y, Z in cm (camera frame: x right, y down, z forward)."""
    height, width = depth_cm.shape
    xx, yy = np.meshgrid(np.arange(1, width + 1), np.arange(1, height + 1))  # MATLAB's 1-based pixels
    x = (xx - camera[0, 2]) * depth_cm / camera[0, 0]
    y = (yy - camera[1, 2]) * depth_cm / camera[1, 1]
    return np.stack([x, y, depth_cm], axis=-1)


def box_sum(values: np.ndarray, radius: int) -> np.ndarray:
    """Sum over the (2r+1)^2 window of each pixel, zeros beyond the border (MATLAB's filter2, 'same')."""
    padded = np.pad(values, ((radius + 1, radius), (radius + 1, radius)) + ((0, 0),) * (values.ndim - 2))
    table = padded.cumsum(0).cumsum(1)
    size = 2 * radius + 1
    return table[size:, size:] - table[:-size, size:] - table[size:, :-size] + table[:-size, :-size]


def surface_normals(points: np.ndarray, missing: np.ndarray, radius: int) -> np.ndarray:
    """(H, W, 3) unit normals of the plane fitted to each window, pointing away from the camera."""
    x, y, z = (np.where(missing, np.nan, points[..., k]) for k in range(3))
    xz, yz = x / z, y / z
    one = np.where(np.isnan(z), np.nan, 1.0)
    terms = np.stack([xz * xz, xz * yz, xz, yz * yz, yz, one, x / (z * z), y / (z * z), 1.0 / z], axis=-1)
    a = box_sum(np.nan_to_num(terms), radius)  # A'A (6 entries of the symmetric 3x3) and A'b
    # the adjugate of A'A times A'b: the solution up to its determinant, whose sign the orientation fixes
    adj = np.stack([a[..., 3] * a[..., 5] - a[..., 4] ** 2, a[..., 2] * a[..., 4] - a[..., 1] * a[..., 5],
                    a[..., 1] * a[..., 4] - a[..., 2] * a[..., 3], a[..., 0] * a[..., 5] - a[..., 2] ** 2,
                    a[..., 1] * a[..., 2] - a[..., 0] * a[..., 4], a[..., 0] * a[..., 3] - a[..., 1] ** 2], -1)
    b = a[..., 6:]
    normal = np.stack([adj[..., 0] * b[..., 0] + adj[..., 1] * b[..., 1] + adj[..., 2] * b[..., 2],
                       adj[..., 1] * b[..., 0] + adj[..., 3] * b[..., 1] + adj[..., 4] * b[..., 2],
                       adj[..., 2] * b[..., 0] + adj[..., 4] * b[..., 1] + adj[..., 5] * b[..., 2]], -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        normal = normal / np.linalg.norm(normal, axis=-1, keepdims=True)
    normal = normal * np.where(normal[..., 2:] < 0, -1.0, 1.0)  # z towards the scene first, then
    facing = np.sign(np.sum(normal * points, axis=-1, keepdims=True))  # away from the camera
    return normal * np.where((facing == 0) | np.isnan(facing), 1.0, facing)


def gravity_direction(normals: np.ndarray) -> np.ndarray:
    """(3,) unit gravity direction in the camera frame ("down", near (0, 1, 0))."""
    flat = normals.reshape(-1, 3)
    flat = flat[~np.isnan(flat).any(axis=1)]
    direction = np.array([0.0, 1.0, 0.0])
    for angle in GRAVITY_ANGLES:
        threshold = np.radians(angle)
        for _ in range(GRAVITY_ITERATIONS):
            similarity = flat @ direction
            parallel = flat[np.abs(similarity) > np.cos(threshold)]
            perpendicular = flat[np.abs(similarity) < np.sin(threshold)]
            values, vectors = np.linalg.eigh(perpendicular.T @ perpendicular - parallel.T @ parallel)
            new = vectors[:, np.argmin(values)]
            direction = new * (np.sign(new @ direction) or 1.0)
    return direction


def rotation_between(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """The 3x3 rotation taking `start` to `end` about start x end (getRMatrix.m); the identity
    below 0.1 degrees."""
    start, end = start / np.linalg.norm(start), end / np.linalg.norm(end)
    angle = np.arccos(np.clip(start @ end, -1.0, 1.0))
    if np.degrees(angle) <= 0.1:
        return np.eye(3)
    axis = np.cross(start, end)
    axis = axis / np.linalg.norm(axis)
    skew = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * skew + (1 - np.cos(angle)) * skew @ skew


def height_above_ground(points: np.ndarray, gravity: np.ndarray) -> np.ndarray:
    """(H, W) height in cm above the lowest point, along -gravity."""
    rotation = rotation_between(np.array([0.0, 1.0, 0.0]), gravity)
    height = -(points @ rotation)[..., 1]  # the points rotated by R' (gravity -> y), up positive
    lowest = np.nanmin(height)
    return height - (-130.0 if lowest > -90.0 else lowest)


def matlab_uint8(values: np.ndarray) -> np.ndarray:
    """MATLAB's uint8(): round half away from zero, saturate at 0 and 255, NaN to 0."""
    rounded = np.sign(values) * np.floor(np.abs(values) + 0.5)
    return np.clip(np.nan_to_num(rounded), 0, 255).astype(np.uint8)


def hha(depth_m: np.ndarray, camera: np.ndarray = NYU_COLOR_CAMERA, missing: np.ndarray | None = None) -> np.ndarray:
    """(3, H, W) uint8 HHA of a depth map in metres (H, W); `missing`: pixels whose raw depth the
    sensor did not measure (left out of the normals; default: depth 0)."""
    depth_cm = depth_m.astype(np.float64) * 100.0
    missing = depth_cm <= 0 if missing is None else missing
    points = point_cloud(depth_cm, camera)
    normals = surface_normals(points, missing, NORMAL_RADII[0])
    gravity = gravity_direction(surface_normals(points, missing, NORMAL_RADII[1]))
    angle = np.degrees(np.arccos(np.clip(normals @ gravity, -1.0, 1.0)))
    disparity = 31000.0 / np.maximum(depth_cm, 100.0)
    return np.stack([matlab_uint8(disparity), matlab_uint8(height_above_ground(points, gravity)),
                     matlab_uint8(angle + 128 - 90)])
