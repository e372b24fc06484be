"""Instant preview relighter: shape from silhouette, Retinex shading and albedo, re-shading; no diffusion, no weights.

Recipe (estimation runs on a copy at most WORK_SIDE pixels on its long side; only the final multiply-add and
composite touch full resolution, which keeps a 1-megapixel preview far below 150 ms on two cores):

1. Normals: inflate the matte's silhouette into round bulges (each point lies on a ball as thick as the
   subject), then add weak relief from the luminance's high frequencies.
2. Shading (`core.lighting.retinex`): the log-luminance's gradients, minus those that change colour (paint edges,
   not light), integrated back into a shading field.
3. Source light: fit `a + (1 - a) * disc_lambert(n . l)` to that shading against the normals inside the matte
   (grid search over direction and softness, closed-form least squares for the two levels).
4. Albedo = input / measured shading, so the input's own light (its cast shadows too) is divided out where the
   normals are wrong; where the input is too dark to tell, albedo is filled in from the lit parts nearby.
5. Re-shade: albedo * target irradiance + Blinn-Phong highlight, composited with the matte over the untouched
   input, or over a given background that receives the subject's soft cast shadow.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np

from core.errors import InvalidParameterError
from core.lighting.lights import Light, cover_resize, to_rgb_uint8
from core.lighting.retinex import push_pull, shading_field

GAMMA = 2.2  # display gamma: shading is computed in linear light, images are stored gamma-encoded
MAX_SOFT_ANGLE_DEG = 60.0  # softness 1 = a disc light 60 degrees in angular radius (a big soft box up close)
MAX_PIXELS = 4096 * 4096  # larger inputs are refused rather than stalling a live preview
WORK_SIDE = 256  # long side of the copy the estimation runs on
MATTE_INSIDE = 0.5  # matte level that counts as subject for the silhouette
UINT8_MAX = 255
LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)  # Rec. 709 luminance weights (linear RGB)
_TO_LINEAR = ((np.arange(UINT8_MAX + 1) / UINT8_MAX) ** GAMMA).astype(np.float32)
# Disc-light Lambert tables: irradiance against cos(angle to the light's centre), one per softness step.
CAP_TABLE_SIZE = 2048  # fine enough that nearest-entry lookup is off by < 0.001
SOFTNESS_STEPS = 100  # softness is rounded to 1/100 for the cached tables
# Normals.
EDGE_SMOOTH = 1.0  # px: smooths the pixel staircase of the distance field before taking its direction
NORMAL_SMOOTH = 0.08  # blur sigma as a fraction of the subject's half-thickness: removes the medial-axis crease
MIN_NORMAL_SMOOTH = 1.0  # px
RIM_OFFSET = 0.5  # px: the silhouette runs along pixel edges, half a pixel outside the last inside centre
DEFAULT_DETAIL = 0.5  # strength of relief from luminance high frequencies (weak: albedo edges fool it)
DETAIL_SIGMA = 2.0  # px: frequencies above this count as relief
LOG_EPS = 1e-3  # keeps log(luminance) finite on black pixels
# Source-light fit.
FIT_PIXELS = 1200  # inside-matte pixels used by the fit (a fixed stride, so the result is deterministic)
MIN_FIT_PIXELS = 8  # below this many pixels away from the rim, the rim pixels are used too
RIM_KERNEL = np.ones((3, 3), np.uint8)  # erosion by one pixel all round
FLAT_BASIS = 1e-6  # relative variance under which a candidate's shading is constant over the pixels
COARSE_AZIMUTH_STEP, COARSE_ELEVATION_STEP = 20.0, 22.5  # degrees
COARSE_SOFTNESS = (0.0, 0.5, 1.0)
REFINE_ROUNDS = 4  # each round searches the 3x3x3 neighbourhood of the best candidate at half the step
REFINE_OFFSETS = np.arange(-1, 2)
# Albedo.
SHADING_FLOOR = 0.05  # source shading below this is noise: dividing by it would blow the albedo up
MAX_RATIO = 16.0  # cap on target / source shading, for the same reason
TRUST_LOW, TRUST_HIGH = 0.02, 0.12  # source shading from which the input's albedo is used at all, and fully
# Re-shading.
MAX_OPTION = 4.0  # upper bound of specular_strength and detail: beyond it the look breaks down
DEFAULT_SPECULAR = 0.1  # Blinn-Phong highlight strength for a hard light (a slightly glossy material)
SHININESS_HARD, SHININESS_SOFT = 96.0, 8.0  # highlight exponent for softness 0 and 1
BLINN_NORM = 8.0  # (n + 8) / 8 normalisation: broad highlights spread the same energy, so they are dimmer
VIEW = np.array([0.0, 0.0, 1.0], dtype=np.float32)  # orthographic camera looking down -z
# Cast shadow on a given background, lengths as fractions of the subject's size (sqrt of its area).
SHADOW_LENGTH = 0.15  # offset of the shadow for a grazing light
SHADOW_BLUR_HARD, SHADOW_BLUR_SOFT = 0.01, 0.08  # blur sigma for softness 0, plus this much at softness 1
SHADOW_OPACITY = 0.6


def _check_inputs(
    image: np.ndarray, matte: np.ndarray, light: Light, background: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Guard clauses; returns (image uint8 HxWx3, matte float32 HxW, background uint8 HxWx3 or None)."""
    if not isinstance(light, Light):
        raise InvalidParameterError(f"light should be a Light but is {light!r}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidParameterError(f"image should be HxWx3 but has shape {image.shape}")
    if image.dtype != np.uint8:
        raise InvalidParameterError(f"image should be uint8 but has dtype {image.dtype}")
    height, width = image.shape[:2]
    if height < 1 or width < 1:
        raise InvalidParameterError(f"image should not be empty but has shape {image.shape}")
    if height * width > MAX_PIXELS:
        raise InvalidParameterError(f"image is {width}x{height} = {width * height} pixels, over the {MAX_PIXELS} cap")
    matte = np.asarray(matte)
    if matte.shape != (height, width):
        raise InvalidParameterError(f"matte should be {height}x{width} like the image but has shape {matte.shape}")
    if matte.dtype == np.uint8:
        matte = matte.astype(np.float32) / UINT8_MAX
    elif matte.dtype == np.bool_ or np.issubdtype(matte.dtype, np.floating):
        matte = matte.astype(np.float32, copy=False)
        low, high = float(matte.min()), float(matte.max())
        if not (math.isfinite(low) and math.isfinite(high)) or low < 0.0 or high > 1.0:
            raise InvalidParameterError(f"matte should hold values in [0, 1] but spans [{low}, {high}]")
    else:
        raise InvalidParameterError(f"matte should be float in [0, 1] (or uint8, bool) but has dtype {matte.dtype}")
    if background is not None:
        background = to_rgb_uint8(background, "background")
        if background.shape[:2] != (height, width):
            background = cover_resize(background, width, height)
    return np.ascontiguousarray(image), np.ascontiguousarray(matte), background


@functools.lru_cache(maxsize=SOFTNESS_STEPS + 1)
def _cap_table(step: int) -> np.ndarray:
    """Disc-light Lambert irradiance at CAP_TABLE_SIZE values of cos(angle), for softness step / SOFTNESS_STEPS."""
    cos_theta = np.linspace(-1.0, 1.0, CAP_TABLE_SIZE)
    table = np.maximum(cos_theta, 0.0)
    sin2_sigma = math.sin(math.radians(MAX_SOFT_ANGLE_DEG) * step / SOFTNESS_STEPS) ** 2
    if sin2_sigma == 0.0:
        return table.astype(np.float32)
    # Closed form for a spherical light partly below the surface's horizon (Snyder 1996, "Area light sources
    # for real-time graphics"), divided by its value facing the light so that softness never dims the peak.
    partial = cos_theta**2 < sin2_sigma
    c = cos_theta[partial]
    s = np.sqrt(1.0 - c * c)
    x = math.sqrt(1.0 / sin2_sigma - 1.0)
    y = np.clip(-x * c / s, -1.0, 1.0)
    s_y = s * np.sqrt(1.0 - y * y)
    irradiance = (c * np.arccos(y) - x * s_y) * sin2_sigma + np.arctan(s_y / x)
    table[partial] = np.maximum(irradiance / (math.pi * sin2_sigma), 0.0)
    return table.astype(np.float32)


def _table_index(cos_theta: np.ndarray) -> np.ndarray:
    """Nearest entry of the cap tables for each cos(angle)."""
    half = np.float32((CAP_TABLE_SIZE - 1) / 2)
    index = cos_theta * half
    index += half + np.float32(0.5)
    np.clip(index, 0, CAP_TABLE_SIZE - 1, out=index)
    return index.astype(np.int32)


def disc_lambert(cos_theta: np.ndarray, softness: float) -> np.ndarray:
    """Lambert irradiance from a disc light of radius softness * MAX_SOFT_ANGLE_DEG; 1 when facing it."""
    return _cap_table(round(softness * SOFTNESS_STEPS))[_table_index(cos_theta)]


def _level(normals: np.ndarray, light: Light) -> np.ndarray:
    """HxW linear irradiance of a white light: ambient + (1 - ambient) * intensity * disc_lambert(n . l)."""
    lambert = disc_lambert(_dot(normals, light.direction), light.softness)
    return np.float32(light.ambient) + np.float32((1.0 - light.ambient) * light.intensity) * lambert


def shade(normals: np.ndarray, light: Light) -> np.ndarray:
    """HxWx3 linear irradiance: colour * (ambient + (1 - ambient) * intensity * disc_lambert(n . l))."""
    return _level(normals, light)[..., None] * light.rgb.astype(np.float32)


def specular(normals: np.ndarray, light: Light, strength: float = DEFAULT_SPECULAR) -> np.ndarray:
    """HxWx3 linear Blinn-Phong highlight seen by the camera; softer lights give broader, dimmer highlights."""
    to_light = light.direction.astype(np.float32)
    half = to_light + VIEW
    half /= max(float(np.linalg.norm(half)), 1e-6)
    shininess = SHININESS_HARD * (SHININESS_SOFT / SHININESS_HARD) ** light.softness
    peak = strength * light.intensity * (shininess + BLINN_NORM) / (SHININESS_HARD + BLINN_NORM)
    n_dot_h = np.clip(_dot(normals, half), 0.0, 1.0)
    facing = _dot(normals, to_light) > 0.0  # no highlight on the side turned away from the light
    return (peak * n_dot_h**shininess * facing)[..., None] * light.rgb.astype(np.float32)


def _gradients(field: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d/dx, d/dy) by central differences, x to the right and y up."""
    gx = cv2.Sobel(field, cv2.CV_32F, 1, 0, ksize=1, scale=0.5, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.Sobel(field, cv2.CV_32F, 0, 1, ksize=1, scale=-0.5, borderType=cv2.BORDER_REPLICATE)
    return gx, gy


def _blur(field: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(field, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REPLICATE)


def _linear(image: np.ndarray) -> np.ndarray:
    """uint8 gamma-encoded to float32 linear light in [0, 1]."""
    return _TO_LINEAR[image]


def _dot(vectors: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Per-pixel dot product with one 3-vector, written out: a BLAS call here spins idle threads on busy CPUs."""
    x, y, z = (np.float32(c) for c in direction)
    return vectors[..., 0] * x + vectors[..., 1] * y + vectors[..., 2] * z


def _luminance(image: np.ndarray) -> np.ndarray:
    """HxW float32 linear luminance of a uint8 gamma-encoded image."""
    return _dot(_linear(image), LUMA)


def estimate_normals(matte: np.ndarray, image: np.ndarray | None = None, detail: float = DEFAULT_DETAIL) -> np.ndarray:
    """HxWx3 float32 unit normals (x right, y up, z to camera) from the matte's silhouette, plus luminance relief."""
    matte = np.asarray(matte, dtype=np.float32)
    inside = (matte >= MATTE_INSIDE).astype(np.uint8)
    normals = np.zeros(matte.shape + (3,), dtype=np.float32)
    normals[..., 2] = 1.0
    if inside.any() and not inside.all():
        # Signed distance to the silhouette: positive inside, negative outside, so rim normals extend outward
        # and the final upsampling never blends in undefined values.
        depth = cv2.distanceTransform(inside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        signed = _blur(depth - cv2.distanceTransform(1 - inside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE), EDGE_SMOOTH)
        # Each point lies on a ball as thick as the subject: for a ball of radius r, the normal at depth d
        # from its rim leans out by (r - d) / r. The edge of the image is not a rim (cv2 ignores it).
        radius = max(float(depth.max()), 1.0)
        gx, gy = _gradients(signed)
        length = np.maximum(np.sqrt(gx * gx + gy * gy), 1e-6)
        lean = np.clip((radius - np.maximum(signed + RIM_OFFSET, 0.0)) / radius, 0.0, 1.0)
        normals[..., 0] = -gx / length * lean
        normals[..., 1] = -gy / length * lean
        normals[..., 2] = np.sqrt(1.0 - lean * lean)
        normals = _blur(normals, max(NORMAL_SMOOTH * radius, MIN_NORMAL_SMOOTH))
    if image is not None and detail > 0.0:
        # Bright-is-raised: a weak cue, but it lets fine relief react to the light.
        log_lum = np.log(_luminance(image) + LOG_EPS)
        rx, ry = _gradients((log_lum - _blur(log_lum, DETAIL_SIGMA)) * detail)
        normals[..., 0] -= rx
        normals[..., 1] -= ry
    return normals / np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-6)


def _directions(azimuths: np.ndarray, elevations: np.ndarray) -> np.ndarray:
    az, el = np.radians(azimuths), np.radians(elevations)
    return np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=-1).astype(np.float32)


def _fit(
    luminance: np.ndarray, normals: np.ndarray, azimuths: np.ndarray, elevations: np.ndarray, softness: np.ndarray
) -> tuple[int, float]:
    """Best candidate (index, ambient share) for luminance ~ c0 + c1 * disc_lambert(n . l), least squares."""
    cos_theta = np.einsum("kc,pc->kp", _directions(azimuths, elevations), normals)  # (candidates, pixels)
    steps = np.rint(softness * SOFTNESS_STEPS).astype(np.int64)
    used, rows = np.unique(steps, return_inverse=True)
    tables = np.concatenate([_cap_table(int(step)) for step in used])
    # One gather from the stacked tables: each candidate's row offsets into its own softness table.
    basis = tables[_table_index(cos_theta) + (rows * CAP_TABLE_SIZE).astype(np.int32)[:, None]]
    count = float(len(luminance))
    s_f = basis.sum(axis=1, dtype=np.float64)
    s_ff = np.einsum("kp,kp->k", basis, basis, dtype=np.float64)
    s_fy = np.einsum("kp,p->k", basis, luminance, dtype=np.float64)
    s_y, s_yy = float(luminance.sum(dtype=np.float64)), float(np.dot(luminance, luminance))
    det = count * s_ff - s_f * s_f
    # A basis that does not vary over the pixels (flat normals, one pixel) cannot tell the key light from
    # ambient light: call it all ambient.
    flat = det <= FLAT_BASIS * count * count
    det = np.where(flat, 1.0, det)
    c0 = np.where(flat, s_y / count, (s_ff * s_y - s_f * s_fy) / det)
    c1 = np.where(flat, 0.0, (count * s_fy - s_f * s_y) / det)
    # Both terms are light, so neither may be negative: clamp one to zero and refit the other alone.
    c0, c1 = (
        np.where(c0 < 0.0, 0.0, np.where(c1 < 0.0, s_y / count, c0)),
        np.where(c0 < 0.0, np.maximum(s_fy / np.maximum(s_ff, 1e-12), 0.0), np.maximum(c1, 0.0)),
    )
    residual = s_yy - 2 * c0 * s_y - 2 * c1 * s_fy + c0 * c0 * count + 2 * c0 * c1 * s_f + c1 * c1 * s_ff
    best = int(np.argmin(residual))
    total = c0[best] + c1[best]
    return best, float(c0[best] / total) if total > 0.0 else 1.0


def estimate_source_light(image: np.ndarray, matte: np.ndarray, normals: np.ndarray) -> Light:
    """The white light (direction, softness, ambient share) that best explains the shading inside the matte."""
    linear = _linear(image)
    return _fit_source(shading_field(linear, _dot(linear, LUMA), np.asarray(matte) >= MATTE_INSIDE), matte, normals)


def _fit_source(shading: np.ndarray, matte: np.ndarray, normals: np.ndarray) -> Light:
    """estimate_source_light on a shading field already computed."""
    inside = np.asarray(matte) >= MATTE_INSIDE
    # Rim pixels mix in the background and carry the least reliable normals: drop them when enough remain.
    core = cv2.erode(inside.astype(np.uint8), RIM_KERNEL, borderType=cv2.BORDER_REPLICATE) > 0
    if core.sum() >= MIN_FIT_PIXELS:
        inside = core
    if not inside.any():
        return Light(azimuth=0.0, elevation=90.0, ambient=1.0)
    luminance = shading[inside]
    stride = max(1, len(luminance) // FIT_PIXELS)
    luminance, pixel_normals = luminance[::stride], normals[inside][::stride]
    # 1. Coarse grid over the front hemisphere (plus the straight-on direction) and the softness range.
    az, el, soft = (
        grid.ravel()
        for grid in np.meshgrid(
            np.arange(0.0, 360.0, COARSE_AZIMUTH_STEP),
            np.arange(0.0, 90.0, COARSE_ELEVATION_STEP),
            COARSE_SOFTNESS,
            indexing="ij",
        )
    )
    az = np.append(az, np.zeros(len(COARSE_SOFTNESS)))
    el = np.append(el, np.full(len(COARSE_SOFTNESS), 90.0))
    soft = np.append(soft, COARSE_SOFTNESS)
    best, ambient = _fit(luminance, pixel_normals, az, el, soft)
    best_az, best_el, best_soft = az[best], el[best], soft[best]
    # 2. Refine around the best candidate, halving the steps each round.
    step_az, step_el = COARSE_AZIMUTH_STEP / 2, COARSE_ELEVATION_STEP / 2
    step_soft = (COARSE_SOFTNESS[1] - COARSE_SOFTNESS[0]) / 2
    for _ in range(REFINE_ROUNDS):
        az, el, soft = (
            grid.ravel()
            for grid in np.meshgrid(
                best_az + REFINE_OFFSETS * step_az,
                np.clip(best_el + REFINE_OFFSETS * step_el, 0.0, 90.0),
                np.clip(best_soft + REFINE_OFFSETS * step_soft, 0.0, 1.0),
                indexing="ij",
            )
        )
        best, ambient = _fit(luminance, pixel_normals, az, el, soft)
        best_az, best_el, best_soft = az[best], el[best], soft[best]
        step_az, step_el, step_soft = step_az / 2, step_el / 2, step_soft / 2
    return Light(azimuth=float(best_az), elevation=float(best_el), ambient=ambient, softness=float(best_soft))


def estimate_albedo(
    linear: np.ndarray, matte: np.ndarray, source_shading: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(HxWx3 albedo, HxW trust in [0, 1]) of a linear image: image / shading, filled in where too dark to tell."""
    raw = linear / np.maximum(source_shading, SHADING_FLOOR)[..., None]
    inside = np.asarray(matte) >= MATTE_INSIDE
    trust = np.clip((source_shading - TRUST_LOW) / (TRUST_HIGH - TRUST_LOW), 0.0, 1.0).astype(np.float32) * inside
    if not trust.any():
        return raw, trust
    fill = push_pull(raw, trust)
    return trust[..., None] * raw + (1.0 - trust[..., None]) * fill, trust


def _shadow_factor(inside: np.ndarray, light: Light) -> np.ndarray:
    """HxW multiplier in [0, 1] that darkens a background where the subject's soft shadow falls."""
    size = math.sqrt(float(inside.sum()))
    to_light = light.direction
    reach = math.hypot(to_light[0], to_light[1]) * SHADOW_LENGTH * size
    planar = math.atan2(to_light[1], to_light[0])
    # The shadow falls away from the light; image rows grow downward, hence the sign on y.
    shift = np.float32([[1, 0, -math.cos(planar) * reach], [0, 1, math.sin(planar) * reach]])
    height, width = inside.shape
    cast = cv2.warpAffine(inside.astype(np.float32), shift, (width, height), borderMode=cv2.BORDER_CONSTANT)
    sigma = max((SHADOW_BLUR_HARD + SHADOW_BLUR_SOFT * light.softness) * size, 0.5)
    opacity = SHADOW_OPACITY * (1.0 - light.ambient) * min(light.intensity, 1.0)
    return 1.0 - opacity * _blur(cast, sigma)


def _work_size(width: int, height: int) -> tuple[int, int]:
    scale = min(1.0, WORK_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def relight_maps(
    image: np.ndarray, matte: np.ndarray, light: Light, specular_strength: float, detail: float
) -> tuple[np.ndarray, np.ndarray]:
    """(gain, increment) at the image's size: relit = image * gain + increment, both HxWx3 float32 in gamma space."""
    linear = _linear(image)
    inside = matte >= MATTE_INSIDE
    normals = estimate_normals(matte, image, detail)
    shading = shading_field(linear, _dot(linear, LUMA), inside)
    source = _fit_source(shading, matte, normals)
    # The measured shading, scaled to the fitted light's units, is what the input's light really did (normals from
    # the silhouette are only a guess); the fitted light stands in where the measurement is missing.
    model = _level(normals, source)
    measured = shading[inside]
    scale = float(np.dot(measured, model[inside])) / max(float(np.dot(measured, measured)), 1e-12)
    source_shading = np.where(inside, shading * np.float32(scale), model)
    albedo, trust = estimate_albedo(linear, matte, source_shading)
    target = shade(normals, light)
    # Texture rides on the full-resolution image through the gain; the filled-in part is smooth and added.
    ratio = np.minimum(trust[..., None] * target / np.maximum(source_shading, SHADING_FLOOR)[..., None], MAX_RATIO)
    gain = ratio ** np.float32(1.0 / GAMMA)
    relit = albedo * target + specular(normals, light, specular_strength)
    # (image * ratio in linear light) gamma-encoded is image * gain: the textured part needs no second power.
    increment = relit ** np.float32(1.0 / GAMMA) * np.float32(UINT8_MAX) - image * gain
    return gain, increment


def preview_relight(
    image: np.ndarray,
    matte: np.ndarray,
    light: Light,
    background: np.ndarray | None = None,
    *,
    specular_strength: float = DEFAULT_SPECULAR,
    detail: float = DEFAULT_DETAIL,
) -> np.ndarray:
    """Relight the matted subject of `image` with `light` in milliseconds; HxWx3 uint8, deterministic."""
    # 1. Check inputs.
    image, matte, background = _check_inputs(image, matte, light, background)
    for name, value in (("specular_strength", specular_strength), ("detail", detail)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= MAX_OPTION:
            raise InvalidParameterError(f"{name} should be a number in [0, {MAX_OPTION}] but is {value!r}")
    height, width = image.shape[:2]
    base = image if background is None else background
    inside = matte >= MATTE_INSIDE
    if not inside.any():
        return _composite(image, matte, base)  # no subject in the matte: nothing to relight
    # 2. Estimate on a small copy.
    work_w, work_h = _work_size(width, height)
    small = cv2.resize(image, (work_w, work_h), interpolation=cv2.INTER_AREA)
    small_matte = cv2.resize(matte, (work_w, work_h), interpolation=cv2.INTER_AREA)
    if not (small_matte >= MATTE_INSIDE).any():
        small_matte = small_matte / small_matte.max()  # a subject thinner than a work pixel: keep its core
    gain, increment = relight_maps(small, small_matte, light, specular_strength, detail)
    # 3. Full resolution: one multiply-add, the background's shadow, the composite.
    gain = cv2.resize(gain, (width, height), interpolation=cv2.INTER_LINEAR)
    increment = cv2.resize(increment, (width, height), interpolation=cv2.INTER_LINEAR)
    foreground = cv2.add(cv2.multiply(image, gain, dtype=cv2.CV_32F), increment, dtype=cv2.CV_8U)
    if background is not None:
        factor = cv2.resize(_shadow_factor(small_matte >= MATTE_INSIDE, light), (width, height))
        base = cv2.multiply(background, cv2.merge([factor] * 3), dtype=cv2.CV_8U)
    return _composite(foreground, matte, base)


def _composite(foreground: np.ndarray, matte: np.ndarray, base: np.ndarray) -> np.ndarray:
    """matte * foreground + (1 - matte) * base, as uint8."""
    return cv2.blendLinear(foreground, base, matte, 1.0 - matte)
