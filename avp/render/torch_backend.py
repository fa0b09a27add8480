"""Fast pure-torch tile rasteriser with gsplat 1.5.3's compositing rules and a hand-written backward.

Splats are binned once into 16x16 pixel tiles (with their opacity-aware footprint, as gsplat's ``isect_tiles``) and
sorted front to back per tile. Compositing then sweeps the per-tile lists in chunks of ``chunk`` splats for all
active tiles at once: a chunk is a ``[tiles, chunk, 256 pixels]`` block whose exponent ``ln(o) - sigma`` is one small
matrix product (``sigma`` is a quadratic in the pixel offset from the tile centre, so its six coefficients per splat
times six pixel monomials give every pixel at once); transmittance within the chunk is a cumulative product carried
across chunks, and the "stop before T <= 1e-4" rule is the prefix where the running transmittance stays above it.
Tiles whose pixels have all stopped leave the sweep.

The backward pass recomputes each chunk (nothing per splat-pixel is stored, so memory stays bounded by one chunk
block) and uses ``dL/dalpha_k = (g.c_k) T_k - (sum_{j>k} w_j (g.c_j) + g_T T_final) / (1 - alpha_k)``, with the
suffix sums obtained from the forward's final accumulations minus a running prefix.

Rules (gsplat 1.5.3 ``RasterizeToPixels3DGSFwd.cu`` / ``Bwd.cu``): pixel centres at +0.5; ``alpha = min(0.999,
o exp(-sigma))``, ``sigma = 0.5 d^T Sigma^-1 d``; contributions with ``alpha < 1/255`` are skipped; a pixel stops before
the splat that would bring ``T`` to ``<= 1e-4`` (that splat does not contribute); gradients through the 0.999 clamp
are zero (gsplat's ``opac * vis <= 0.999`` test). gsplat also skips ``sigma < 0``, which for its positive-definite
conics only happens by rounding; with the exponent expanded around the tile centre a rounding-level negative sigma at
a splat's centre is a real contribution, so it is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from avp.render.projection import ALPHA_MAX, ALPHA_MIN, T_MIN

TILE = 16
"""Tile side in pixels (gsplat's default ``tile_size``)."""
PIXELS = TILE * TILE
DEFAULT_CHUNK = 32
"""Splats per tile composited in one step."""
DEFAULT_BUDGET = 1 << 22
"""Elements of one ``[tiles, chunk, 256]`` block; bounds the working memory (~16 MB per float32 temporary)."""
_NEG = -1e30  # exponent of empty slots: exp() gives exactly 0


@dataclass
class TileBins:
    """Splat lists per tile, front to back. Tiles are numbered ``image * tiles_y * tiles_x + ty * tiles_x + tx``."""

    ids: Tensor
    """``[M]`` long: flat splat index (``image * N + n``) of every splat-tile intersection, grouped by tile."""
    offsets: Tensor
    """``[n_tiles]`` long: start of each tile's list in ``ids``."""
    counts: Tensor
    """``[n_tiles]`` long: length of each tile's list."""
    tiles_x: int
    tiles_y: int
    n_images: int

    @property
    def n_tiles(self) -> int:
        return self.n_images * self.tiles_x * self.tiles_y


@torch.no_grad()
def bin_tiles(means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int) -> TileBins:
    """Intersect footprints with tiles and sort each tile's splats by depth (ties by splat index).

    Args:
        means2d: ``[I, N, 2]`` pixel centres of the splats in each image.
        radii: ``[I, N, 2]`` int footprint half-sizes (x, y); a splat with a zero radius is culled.
        depths: ``[I, N]`` camera z (sort key).
    """
    n_images, n = depths.shape
    tiles_x = (width + TILE - 1) // TILE
    tiles_y = (height + TILE - 1) // TILE
    device = means2d.device
    flat = torch.nonzero((radii > 0).all(-1).reshape(-1)).squeeze(1)  # [S] visible (image, splat) pairs
    flat = flat[torch.argsort(depths.reshape(-1)[flat], stable=True)]
    mx, my = means2d.detach().reshape(-1, 2)[flat].unbind(-1)
    r = radii.reshape(-1, 2)[flat].to(means2d.dtype)
    # Same arithmetic as gsplat's isect_tiles: tile coordinates of the box, min inclusive, max exclusive.
    tx0 = torch.floor(mx / TILE - r[:, 0] / TILE).clamp(0, tiles_x).long()
    tx1 = torch.ceil(mx / TILE + r[:, 0] / TILE).clamp(0, tiles_x).long()
    ty0 = torch.floor(my / TILE - r[:, 1] / TILE).clamp(0, tiles_y).long()
    ty1 = torch.ceil(my / TILE + r[:, 1] / TILE).clamp(0, tiles_y).long()
    nx = tx1 - tx0
    per_splat = nx * (ty1 - ty0)  # [S]
    owner = torch.repeat_interleave(torch.arange(flat.numel(), device=device), per_splat)  # [M]
    first = torch.cumsum(per_splat, 0) - per_splat
    local = torch.arange(owner.numel(), device=device) - first[owner]
    nxo = nx[owner]
    tile = (flat[owner] // n) * (tiles_x * tiles_y) + (ty0[owner] + local // nxo) * tiles_x + tx0[owner] + local % nxo
    order = torch.argsort(tile, stable=True)  # stable: keeps the depth order within a tile
    n_tiles = n_images * tiles_x * tiles_y
    counts = torch.bincount(tile, minlength=n_tiles)
    return TileBins(
        ids=flat[owner[order]],
        offsets=torch.cumsum(counts, 0) - counts,
        counts=counts,
        tiles_x=tiles_x,
        tiles_y=tiles_y,
        n_images=n_images,
    )


def _pixel_basis(dtype: torch.dtype, device: torch.device) -> Tensor:
    """``[6, 256]`` monomials ``(1, u, v, u^2, uv, v^2)`` of each pixel's offset from its tile centre (row-major)."""
    c = torch.arange(TILE, dtype=dtype, device=device) - (TILE - 1) / 2.0
    v, u = torch.meshgrid(c, c, indexing="ij")
    u, v = u.reshape(-1), v.reshape(-1)
    return torch.stack([torch.ones_like(u), u, v, u * u, u * v, v * v], 0)


def _tile_geometry(tiles: Tensor, bins: TileBins, width: int, height: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Tile centres ``[A, 2]`` (pixels) and ``[A, 256]`` masks of the tile's pixels that lie inside the image."""
    local = tiles % (bins.tiles_x * bins.tiles_y)
    ty = local // bins.tiles_x
    tx = local % bins.tiles_x
    centre = torch.stack([tx * TILE + TILE / 2.0, ty * TILE + TILE / 2.0], -1).to(dtype)
    r = torch.arange(TILE, device=tiles.device)
    inside_x = (tx[:, None] * TILE + r) < width  # [A, 16]
    inside_y = (ty[:, None] * TILE + r) < height
    inside = (inside_y[:, :, None] & inside_x[:, None, :]).reshape(-1, PIXELS)
    return centre, inside


class _Slots:
    """The splats of one chunk of a group of tiles and their exponent coefficients."""

    def __init__(self, params: Tensor, bins: TileBins, tiles: Tensor, start: int, chunk: int, centre: Tensor) -> None:
        dummy = params.shape[0] - 1
        k = torch.arange(chunk, device=tiles.device)
        self.valid = k < (bins.counts[tiles] - start)[:, None]  # [A, Kc]
        pos = (bins.offsets[tiles] + start)[:, None] + k
        pos = torch.where(self.valid, pos, torch.zeros_like(pos))
        self.ids = torch.where(self.valid, bins.ids[pos], torch.full_like(pos, dummy))  # [A, Kc]
        p = params[self.ids]  # [A, Kc, P]
        self.mx = p[..., 0] - centre[:, 0:1]  # offsets of the centre from the tile centre
        self.my = p[..., 1] - centre[:, 1:2]
        self.a, self.b, self.c, self.o = p[..., 2], p[..., 3], p[..., 4], p[..., 5]
        self.colors = p[..., 6:]  # [A, Kc, Cch]
        quad = 0.5 * self.a * self.mx * self.mx + self.b * self.mx * self.my + 0.5 * self.c * self.my * self.my
        c0 = torch.where(self.valid, torch.log(self.o) - quad, torch.full_like(quad, _NEG))
        self.coef = torch.stack(
            [
                c0,
                self.a * self.mx + self.b * self.my,
                self.b * self.mx + self.c * self.my,
                -0.5 * self.a,
                -self.b,
                -0.5 * self.c,
            ],
            -1,
        )  # [A, Kc, 6]: ln(o) - sigma = coef . (1, u, v, u^2, uv, v^2)

    def exponent(self, basis: Tensor) -> Tensor:
        """``ln(o) - sigma`` for every slot and pixel: ``[A, Kc, 256]`` (one matrix product)."""
        return torch.matmul(self.coef, basis)


def _transmittance(alpha: Tensor, T0: Tensor, done: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per slot and pixel: T before each slot and the live prefix; the carried state after the chunk.

    Args:
        alpha: ``[A, Kc, 256]``; T0: ``[A, 256]`` transmittance before the chunk; done: ``[A, 256]`` stopped pixels.

    Returns:
        ``(T_before [A, Kc, 256], live [A, Kc, 256] bool, T_after [A, 256], done_after [A, 256])``.
    """
    A, Kc, P = alpha.shape
    ext = torch.empty(A, Kc + 1, P, dtype=alpha.dtype, device=alpha.device)
    ext[:, 0] = torch.where(done, torch.zeros_like(T0), T0)  # stopped pixels: nothing is live
    torch.sub(torch.ones((), dtype=alpha.dtype, device=alpha.device), alpha, out=ext[:, 1:])
    ext.cumprod_(1)
    live = ext[:, 1:] > T_MIN  # a prefix, since T only decreases
    # Counting in uint8 is ~100x faster than torch's bool sum (which widens to int64 first); chunk <= 255.
    n_live = live.view(torch.uint8).sum(1, keepdim=True, dtype=torch.uint8)  # [A, 1, 256]
    T_after = torch.where(done, T0, ext.gather(1, n_live.long()).squeeze(1))
    return ext[:, :-1], live, T_after, n_live.squeeze(1) < Kc


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, params: Tensor, bins: TileBins, width: int, height: int, chunk: int, budget: int):
        """params ``[S + 1, 6 + Cch]`` rows ``(mx, my, a, b, c, opacity, colour...)``, last row a harmless dummy.

        Returns per tile ``acc [n_tiles, Cch, 256]`` (colour sum without background) and ``T [n_tiles, 256]``.
        """
        dtype, device = params.dtype, params.device
        n_ch = params.shape[1] - 6
        nt = bins.n_tiles
        acc = torch.zeros(nt, n_ch, PIXELS, dtype=dtype, device=device)
        T = torch.ones(nt, PIXELS, dtype=dtype, device=device)
        n_used = torch.zeros(nt, dtype=torch.long, device=device)
        basis = _pixel_basis(dtype, device)
        tiles_all = torch.nonzero(bins.counts > 0).squeeze(1)
        _, inside = _tile_geometry(tiles_all, bins, width, height, dtype)
        done = torch.zeros(nt, PIXELS, dtype=torch.bool, device=device)
        done[tiles_all] = ~inside
        tiles_max = max(1, budget // (PIXELS * chunk))
        active = tiles_all
        j = 0
        while active.numel():
            n_used[active] = j + 1
            for tiles in active.split(tiles_max):
                centre, _ = _tile_geometry(tiles, bins, width, height, dtype)
                s = _Slots(params, bins, tiles, j * chunk, chunk, centre)
                alpha = s.exponent(basis).exp_().clamp_(max=ALPHA_MAX)  # [A, Kc, 256]
                alpha.masked_fill_(alpha < ALPHA_MIN, 0.0)
                T_before, live, T[tiles], done[tiles] = _transmittance(alpha, T[tiles], done[tiles])
                w = alpha.mul_(T_before).mul_(live)
                acc[tiles] += torch.bmm(s.colors.transpose(1, 2), w)
            j += 1
            remaining = bins.counts[active] > j * chunk
            active = active[remaining & ~done[active].all(-1)]
        ctx.bins, ctx.size, ctx.chunk, ctx.budget, ctx.n_used = bins, (width, height), chunk, budget, n_used
        ctx.save_for_backward(params, acc, T)
        return acc, T

    @staticmethod
    @once_differentiable
    def backward(ctx, g_acc: Tensor, g_T: Tensor):
        params, acc_final, T_final = ctx.saved_tensors
        n_used = ctx.n_used
        bins, (width, height), chunk, budget = ctx.bins, ctx.size, ctx.chunk, ctx.budget
        dtype, device = params.dtype, params.device
        nt = bins.n_tiles
        g_acc = torch.zeros_like(acc_final) if g_acc is None else g_acc.contiguous()
        g_T = torch.zeros_like(T_final) if g_T is None else g_T.contiguous()
        # Per pixel: g . (everything composited) + g_T T_final; the part behind slot k is this minus a prefix.
        K_pix = (g_acc * acc_final).sum(1) + g_T * T_final  # [nt, 256]
        grad = torch.zeros_like(params)
        basis = _pixel_basis(dtype, device)
        T = torch.ones(nt, PIXELS, dtype=dtype, device=device)
        prefix = torch.zeros(nt, PIXELS, dtype=dtype, device=device)
        tiles_all = torch.nonzero(n_used > 0).squeeze(1)
        _, inside = _tile_geometry(tiles_all, bins, width, height, dtype)
        done = torch.zeros(nt, PIXELS, dtype=torch.bool, device=device)
        done[tiles_all] = ~inside
        tiles_max = max(1, budget // (PIXELS * chunk))
        j = 0
        active = tiles_all
        while active.numel():
            for tiles in active.split(tiles_max):
                centre, _ = _tile_geometry(tiles, bins, width, height, dtype)
                s = _Slots(params, bins, tiles, j * chunk, chunk, centre)
                raw = s.exponent(basis).exp_()  # o exp(-sigma): [A, Kc, 256]
                alpha = raw.clamp(max=ALPHA_MAX)
                alpha.masked_fill_(alpha < ALPHA_MIN, 0.0)
                T_before, live, T[tiles], done[tiles] = _transmittance(alpha, T[tiles], done[tiles])
                alpha_live = alpha * live
                w = alpha_live * T_before
                g = g_acc[tiles]  # [A, Cch, 256]
                gc = torch.bmm(s.colors, g)  # g . c_k per slot and pixel: [A, Kc, 256]
                pre = torch.cumsum(w * gc, 1).add_(prefix[tiles].unsqueeze(1))
                prefix[tiles] = pre[:, -1]
                behind = pre.neg_().add_(K_pix[tiles].unsqueeze(1))  # sum over slots behind k of w g.c + g_T T
                v_alpha = gc.mul_(T_before).sub_(behind.div_(1.0 - alpha))
                # d alpha / d(ln o - sigma) = alpha where 1/255 <= raw <= 0.999 and the slot is live, else 0
                v_exp = v_alpha.mul_(alpha_live.masked_fill_(raw > ALPHA_MAX, 0.0))
                v_coef = torch.matmul(v_exp, basis.T)  # [A, Kc, 6]
                v_colors = torch.bmm(w, g.transpose(1, 2))  # [A, Kc, Cch]
                grad.index_add_(0, s.ids.reshape(-1), _slot_vjp(s, v_coef, v_colors).reshape(-1, params.shape[1]))
            j += 1
            active = active[n_used[active] > j]
        grad[-1] = 0.0
        return grad, None, None, None, None, None


def _slot_vjp(s: _Slots, v_coef: Tensor, v_colors: Tensor) -> Tensor:
    """Chain rule from the exponent coefficients to ``(mx, my, a, b, c, opacity)`` and colours: ``[A, Kc, P]``."""
    v0, v1, v2, v3, v4, v5 = v_coef.unbind(-1)
    mx, my, a, b, c = s.mx, s.my, s.a, s.b, s.c
    d1 = v1 - mx * v0
    d2 = v2 - my * v0
    v_mx = a * d1 + b * d2
    v_my = b * d1 + c * d2
    v_a = -0.5 * v3 + mx * (v1 - 0.5 * mx * v0)
    v_b = -v4 + my * v1 + mx * v2 - mx * my * v0
    v_c = -0.5 * v5 + my * (v2 - 0.5 * my * v0)
    v_o = v0 / s.o
    out = torch.cat([torch.stack([v_mx, v_my, v_a, v_b, v_c, v_o], -1), v_colors], -1)
    return out * s.valid.unsqueeze(-1)


def composite_tiles(
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    colors: Tensor,
    radii: Tensor,
    depths: Tensor,
    width: int,
    height: int,
    *,
    chunk: int = DEFAULT_CHUNK,
    budget: int = DEFAULT_BUDGET,
) -> tuple[Tensor, Tensor]:
    """Rasterise ``I`` images of ``N`` projected splats; differentiable in means2d, conics, opacities and colors.

    Args:
        means2d: ``[I, N, 2]``; conics: ``[I, N, 3]``; opacities: ``[I, N]``; colors: ``[I, N, C]`` (any channels,
            e.g. RGB plus depth); radii: ``[I, N, 2]`` int (0 = culled); depths: ``[I, N]`` sort key.

    Returns:
        ``acc [I, C, H, W]`` (sum of weighted colours, no background) and ``T [I, 1, H, W]`` final transmittance.
    """
    if not 1 <= chunk <= 255:
        raise ValueError(f"composite_tiles: chunk must be in 1..255 (live counts are uint8), got {chunk}")
    n_images, n = opacities.shape
    n_ch = colors.shape[-1]
    bins = bin_tiles(means2d, radii, depths, width, height)
    params = torch.cat([means2d, conics, opacities.unsqueeze(-1), colors], -1).reshape(n_images * n, 6 + n_ch)
    dummy = torch.zeros(1, 6 + n_ch, dtype=params.dtype, device=params.device)
    dummy[0, 2] = dummy[0, 4] = dummy[0, 5] = 1.0  # a = c = opacity = 1: finite coefficients for empty slots
    params = torch.cat([params, dummy], 0)
    acc, T = _Composite.apply(params, bins, width, height, chunk, budget)
    th, tw = bins.tiles_y, bins.tiles_x

    def to_image(x: Tensor) -> Tensor:  # [I * th * tw, C, 256] -> [I, C, H, W]
        c = x.shape[1]
        x = x.reshape(n_images, th, tw, c, TILE, TILE).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(n_images, c, th * TILE, tw * TILE)[..., :height, :width]

    return to_image(acc), to_image(T.unsqueeze(1))
