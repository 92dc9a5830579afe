"""Fine-tuning augmentations on batches of tensors (:class:`BatchAugment`), for the FFCV fine-tune path.

The loader (:class:`~mae_trainer.data.train_loader.ProgressiveLoader`) already crops, resizes and flips
each sample; what the recipe adds — RandAugment or DeiT III's ThreeAugment, normalisation, random erasing
— runs here on the whole uint8 batch, on whatever device holds it (the GPU in training), instead of per PIL
image in ``DataLoader`` workers.

Randomness is per image, as with the per-image PIL transforms: every image draws its own ops and
magnitudes. Images that draw the same op go through it together, as one slice of the batch, with
per-image parameters (a blend factor, an affine matrix, a threshold), so each op runs once per group
rather than once per image. All draws come from generators seeded by the call's ``seed``
(:func:`augment_seed`): the same images and seed give the same output on any layout and after a resume,
and the global torch / numpy / python RNGs are never touched.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as nnf
from torchvision.transforms.v2 import functional as F

from .normalize import stats_tensor

AUGMENTS = ("randaug", "three", "none")

# timm's "rand-m9-mstd0.5-inc1": 2 ops per image, each applied with probability 0.5, magnitude 9 with
# per-op Gaussian noise (std 0.5) clipped to [0, 10], the "increasing" op set.
RA_LAYERS, RA_PROB, RA_MAGNITUDE, RA_MAGNITUDE_STD, RA_MAGNITUDE_MAX = 2, 0.5, 9.0, 0.5, 10.0
RA_OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
# Resampling of the geometric ops: timm's is PIL's bicubic; bilinear (the best torchvision's tensor affine
# offers) costs a quarter of grid_sample's bicubic on a CPU and differs from it by less than a gray level
# on average (benchmarks/finetune_data.py measures the CPU path).
WARP_MODE = "bilinear"
JITTER = 0.3  # DeiT III's colour jitter (brightness, contrast, saturation)
BLUR_SIGMA = (0.1, 2.0)  # ThreeAugment's Gaussian blur
# timm's RandomErasing defaults: one rectangle of 2–33 % of the area, aspect 0.3–3.3, 10 attempts.
ERASE_AREA, ERASE_LOG_ASPECT, ERASE_ATTEMPTS = (0.02, 1 / 3), (math.log(0.3), math.log(1 / 0.3)), 10


def augment_seed(seed: int, epoch: int, micro_batch: int) -> int:
    """A 63-bit seed for the augmentations of one micro-batch of one epoch of a run (its own stream,
    apart from :func:`~mae_trainer.data.train_loader.noise_seed`'s masks)."""
    state = np.random.SeedSequence([seed, epoch, micro_batch, 0x61756720]).generate_state(1, np.uint64)
    return int(state[0] >> 1)


class BatchAugment:
    """uint8 ``(B, 3, R, R)`` images (cropped and flipped) → float32 normalised, augmented images on the
    same device: ``augment`` (``"randaug"``, ``"three"`` or ``"none"``), then ``(x/255 - mean) / std``
    (``mean``/``std`` in 0..1 units), then random erasing with probability ``reprob`` (pixel mode: normal
    noise). ``resolution`` is the side ``R`` of the images it is given (checked).

    ``"randaug"`` follows timm's ``rand-m9-mstd0.5-inc1`` (its op set, magnitudes, level-to-argument
    rules, 2 ops drawn with replacement, each applied with probability 0.5, fill = ``mean`` as timm's
    ``create_transform`` sets it, PIL's pixel maps for rotate/shear/translate, shear about the top-left
    corner as PIL does). Differences from timm's PIL policy: the geometric ops resample bilinearly with
    ``grid_sample`` (:data:`WARP_MODE`; timm's is PIL's bicubic) — about a gray level apart on average,
    the geometry itself matches PIL's (tests/test_finetune_data.py); Color and Contrast use torchvision's
    grayscale weights and an unrounded mean (within a gray level); posterizing to 0 bits gives a black
    image (timm then calls Pillow with 0 bits, which Pillow ≥ 13 rejects). Pixel values are rounded to
    uint8 between ops as PIL does. Same-op groups share nothing but the op: every parameter is per image.

    ``"three"`` is DeiT III's ThreeAugment (grayscale, solarize at 128, or Gaussian blur with sigma
    U(0.1, 2.0), one chosen per image; the blur kernel is cut at 3 sigma of the largest sigma, reflect
    padding) then ``ColorJitter(0.3, 0.3, 0.3)`` with per-image factors and a per-image order, as
    torchvision's ``ColorJitter`` draws them.

    Random erasing follows timm's ``RandomErasing(reprob, mode="pixel")`` (one rectangle, 2–33 % of the
    area, aspect 0.3–3.3, up to 10 attempts), drawn from the call's seed.
    """

    def __init__(self, augment: str, mean, std, reprob: float, resolution: int):
        if augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}, not {augment!r}")
        if not 0.0 <= reprob <= 1.0:
            raise ValueError(f"reprob must be in [0, 1], not {reprob}")
        self.augment, self.reprob, self.resolution = augment, float(reprob), int(resolution)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.fill = torch.tensor([min(255, round(255 * m)) for m in self.mean], dtype=torch.float32)
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 (B, 3, R, R) images, got {images.dtype} {tuple(images.shape)}")
        if images.shape[-2:] != (self.resolution, self.resolution):
            raise ValueError(
                f"expected {self.resolution}x{self.resolution} images, got {tuple(images.shape)}"
            )
        device = images.device
        params = torch.Generator().manual_seed(seed)  # per-image parameters, drawn on the host
        noise_seed = int(torch.randint(2**62, (), generator=params))  # erasing's pixels, on the device
        x = images.contiguous()
        if self.augment == "randaug":
            x = self._randaug(x, params)
        elif self.augment == "three":
            x = self._three(x, params)
        if device not in self._stats:  # (x/255 - mean)/std = x·scale - shift
            mean, std = stats_tensor(self.mean, device), stats_tensor(self.std, device)
            self._stats[device] = ((1 / (255 * std)).view(1, 3, 1, 1), (mean / std).view(1, 3, 1, 1))
        scale, shift = self._stats[device]
        out = x.to(torch.float32, memory_format=torch.contiguous_format).mul_(scale).sub_(shift)
        if self.reprob > 0:
            out = self._erase(out, params, noise_seed)
        return out

    # RandAugment -------------------------------------------------------------------------------------

    def _randaug(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        batch = x.shape[0]
        x = x.clone()
        for _ in range(RA_LAYERS):
            op = torch.randint(len(RA_OPS), (batch,), generator=gen)
            applied = torch.rand(batch, generator=gen) < RA_PROB
            level = RA_MAGNITUDE + RA_MAGNITUDE_STD * torch.randn(batch, generator=gen)
            level = level.clamp(0.0, RA_MAGNITUDE_MAX)
            sign = torch.where(torch.rand(batch, generator=gen) < 0.5, -1.0, 1.0)
            for k, name in enumerate(RA_OPS):
                chosen = torch.nonzero(applied & (op == k)).flatten()
                if not len(chosen):
                    continue
                rows = chosen.tolist()
                _put(x, rows, self._ra_op(name, _take(x, rows), level[chosen], sign[chosen]))
        return x

    def _ra_op(self, name: str, x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        """timm's op ``name`` on the uint8 group ``x``, image ``i`` at magnitude ``level[i]`` (host
        tensors), ``sign[i]`` its random negation (timm's ``_randomly_negate``)."""
        frac = level / 10.0  # timm's level / _LEVEL_DENOM
        if name == "AutoContrast":
            return F.autocontrast(x)
        if name == "Equalize":
            return F.equalize(x)
        if name == "Invert":
            return F.invert(x)
        if name == "PosterizeIncreasing":  # keep 4 - int(4·frac) bits (0 bits: black, as PIL)
            bits = 4 - (frac * 4).floor().long()
            out = x.clone()
            for b in bits.unique().tolist():
                rows = torch.nonzero(bits == b).flatten().tolist()
                _put(out, rows, F.posterize(_take(x, rows), int(b)))
            return out
        if name == "SolarizeIncreasing":  # invert pixels ≥ 256 - int(256·frac)
            thresh = 256 - (frac * 256).floor().clamp(max=256)
            thresh = _per_image(thresh, x, torch.int16)
            return torch.where(x >= thresh, 255 - x, x)
        if name == "SolarizeAdd":  # add int(110·frac) to pixels < 128
            add = _per_image((frac * 110).floor().clamp(max=128), x, torch.int16)
            return torch.where(x < 128, (x + add).clamp(max=255), x).to(torch.uint8)
        if name in ("ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing"):
            factor = (1.0 + sign * frac * 0.9).clamp(min=0.1)
            kind = name.removesuffix("Increasing")
            return _enhance(x, kind, _per_image(factor, x))
        # geometric ops: PIL's output→input pixel maps (a, b, c, d, e, f), as timm builds them
        side = x.shape[-1]
        n = x.shape[0]
        a, b, c = torch.ones(n), torch.zeros(n), torch.zeros(n)
        d, e, f = torch.zeros(n), torch.ones(n), torch.zeros(n)
        if name == "Rotate":  # PIL's rotate about the centre, 30·frac degrees
            angle = -torch.deg2rad(sign * frac * 30.0)
            a, b, d, e = angle.cos(), angle.sin(), -angle.sin(), angle.cos()
            centre = side / 2.0
            c = centre - a * centre - b * centre
            f = centre - d * centre - e * centre
        elif name == "ShearX":
            b = sign * frac * 0.3
        elif name == "ShearY":
            d = sign * frac * 0.3
        elif name == "TranslateXRel":
            c = sign * frac * 0.45 * side
        elif name == "TranslateYRel":
            f = sign * frac * 0.45 * side
        else:
            raise AssertionError(name)
        return self._warp(x, torch.stack([torch.stack([a, b, c], 1), torch.stack([d, e, f], 1)], 1))

    def _warp(self, x: torch.Tensor, pixel_maps: torch.Tensor) -> torch.Tensor:
        """Resample square ``x`` through per-image output→input pixel maps ``(n, 2, 3)`` (PIL's
        convention: continuous coordinates, pixel centres at ``i + 0.5``), bicubic, outside = fill."""
        side = x.shape[-1]
        a, b, c = pixel_maps[:, 0].unbind(1)
        d, e, f = pixel_maps[:, 1].unbind(1)
        # u' = 2x'/W - 1 with x = (u + 1)W/2: the same map in grid_sample's normalised coordinates
        theta = torch.stack(
            [
                torch.stack([a, b, a + b + 2 * c / side - 1], 1),
                torch.stack([d, e, d + e + 2 * f / side - 1], 1),
            ],
            1,
        ).to(x.device)
        fill = self.fill.to(x.device).view(1, 3, 1, 1)
        # affine_grid's sampling grid, built from one coordinate row (cheaper than its batched matmul)
        centres = (torch.arange(side, dtype=torch.float32, device=x.device) * 2 + 1) / side - 1
        u, v = centres.view(1, 1, side), centres.view(1, side, 1)
        t = theta.view(-1, 6, 1, 1)
        grid = torch.stack([t[:, 0] * u + t[:, 1] * v + t[:, 2], t[:, 3] * u + t[:, 4] * v + t[:, 5]], dim=-1)
        moved = nnf.grid_sample(x - fill, grid, mode=WARP_MODE, padding_mode="zeros", align_corners=False)
        return (moved + fill).round_().clamp_(0, 255).to(torch.uint8)

    # ThreeAugment + colour jitter --------------------------------------------------------------------

    def _three(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        batch = x.shape[0]
        choice = torch.randint(3, (batch,), generator=gen)
        sigma = torch.empty(batch).uniform_(*BLUR_SIGMA, generator=gen)
        jitter = torch.empty(batch, 3).uniform_(1 - JITTER, 1 + JITTER, generator=gen)
        order = torch.rand(batch, 3, generator=gen).argsort(dim=1)  # ColorJitter's per-image order
        out = x.clone()
        for k in range(3):
            chosen = torch.nonzero(choice == k).flatten()
            if not len(chosen):
                continue
            rows = chosen.tolist()
            group = _take(x, rows)
            if k == 0:
                group = F.rgb_to_grayscale(group, num_output_channels=3)
            elif k == 1:
                group = F.solarize(group, 128)
            else:
                group = _gaussian_blur(group, sigma[chosen])
            _put(out, rows, group)
        for step in range(3):
            for k, kind in enumerate(("Brightness", "Contrast", "Color")):
                chosen = torch.nonzero(order[:, step] == k).flatten()
                if not len(chosen):
                    continue
                rows = chosen.tolist()
                group = _take(out, rows)
                _put(out, rows, _enhance(group, kind, _per_image(jitter[chosen, k], group)))
        return out

    # Random erasing ----------------------------------------------------------------------------------

    def _erase(self, x: torch.Tensor, gen: torch.Generator, noise_seed: int) -> torch.Tensor:
        """Erase one rectangle of some images of ``x`` (float, modified in place) with normal noise."""
        batch, _, height, width = x.shape
        erase = torch.rand(batch, generator=gen) < self.reprob
        area = torch.empty(batch, ERASE_ATTEMPTS).uniform_(*ERASE_AREA, generator=gen) * (height * width)
        aspect = torch.empty(batch, ERASE_ATTEMPTS).uniform_(*ERASE_LOG_ASPECT, generator=gen).exp()
        h = (area * aspect).sqrt().round().long()
        w = (area / aspect).sqrt().round().long()
        fits = (h < height) & (w < width)
        first = fits.long().argmax(dim=1)  # timm keeps the first attempt that fits
        erase &= fits.any(dim=1)
        h, w = h[torch.arange(batch), first], w[torch.arange(batch), first]
        top = (torch.rand(batch, generator=gen) * (height - h + 1)).floor().long()
        left = (torch.rand(batch, generator=gen) * (width - w + 1)).floor().long()
        noise = torch.Generator(device=x.device).manual_seed(noise_seed)
        boxes = torch.stack([top, left, h, w], 1)[erase].tolist()
        for i, (y0, x0, rows, cols) in zip(torch.nonzero(erase).flatten().tolist(), boxes):
            x[i, :, y0 : y0 + rows, x0 : x0 + cols] = torch.randn(
                (x.shape[1], rows, cols), generator=noise, device=x.device, dtype=x.dtype
            )  # timm's loop: a quarter of the batch at reprob 0.25
        return x


def _take(x: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """Images ``rows`` of ``x``, copied one by one (a memcpy each: ``index_select`` on uint8 CPU tensors
    goes element by element, several times slower)."""
    return torch.stack([x[i] for i in rows])


def _put(x: torch.Tensor, rows: list[int], values: torch.Tensor) -> None:
    """``x[rows] = values``, one image copy each (see :func:`_take`)."""
    for value, i in zip(values, rows):
        x[i].copy_(value)


def _per_image(values: torch.Tensor, like: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Host per-image values ``(n,)`` → ``(n, 1, 1, 1)`` in ``dtype`` on ``like``'s device."""
    return values.to(like.device, dtype).view(-1, 1, 1, 1)


def _enhance(x: torch.Tensor, kind: str, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageEnhance.<kind>`` on uint8 ``x`` with per-image ``factor`` ``(n, 1, 1, 1)``: a blend
    ``degenerate + factor · (x - degenerate)`` against black (Brightness), the mean gray level (Contrast),
    the grayscale image (Color) or a 3×3 smoothing with the border kept (Sharpness)."""
    image = x.float()
    if kind == "Brightness":
        degenerate = torch.zeros_like(image)
    elif kind in ("Contrast", "Color"):
        gray = F.rgb_to_grayscale(image)
        degenerate = gray.mean(dim=(-3, -2, -1), keepdim=True) if kind == "Contrast" else gray
    elif kind == "Sharpness":
        # PIL's SMOOTH kernel (1 1 1 / 1 5 1 / 1 1 1) / 13 = (3×3 box sum + 4 × centre) / 13
        rows = image[..., :-2, :] + image[..., 1:-1, :] + image[..., 2:, :]
        box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
        smooth = box.add_(image[..., 1:-1, 1:-1], alpha=4.0).div_(13.0).round_()
        degenerate = image.clone()
        degenerate[..., 1:-1, 1:-1] = smooth
    else:
        raise AssertionError(kind)
    out = degenerate + factor * (image - degenerate)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of uint8 ``x`` with per-image ``sigma`` (host ``(n,)``): one grouped
    convolution per axis for the whole group, kernels cut at 3 × the largest sigma, reflect padding."""
    n, channels, height, width = x.shape
    radius = min(math.ceil(3 * float(sigma.max())), height - 1, width - 1)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernels = torch.exp(-0.5 * (offsets.view(1, -1) / sigma.view(-1, 1)) ** 2)
    kernels = (kernels / kernels.sum(dim=1, keepdim=True)).to(x.device)
    kernels = kernels.repeat_interleave(channels, dim=0)  # one per (image, channel)
    image = x.float().reshape(1, n * channels, height, width)
    image = nnf.pad(image, (radius, radius, radius, radius), mode="reflect")
    image = nnf.conv2d(image, kernels.view(-1, 1, 1, 2 * radius + 1), groups=n * channels)
    image = nnf.conv2d(image, kernels.view(-1, 1, 2 * radius + 1, 1), groups=n * channels)
    return image.reshape(n, channels, height, width).round_().clamp_(0, 255).to(torch.uint8)
