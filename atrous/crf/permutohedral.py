"""Gaussian filtering in feature space: a permutohedral lattice and an exact O(N^2) reference.

Both filters share one interface: build from features once (the features of an image do not
change across mean-field iterations), then ``filter(values)`` as often as needed.

    features: (B, N, d) float   -- pixel features already divided by their standard deviations
    values:   (B, N, C) float   -- what is filtered (e.g. the mean-field marginals Q)
    returns   (B, N, C)         -- sum_j k(f_i, f_j) values_j,  k(f, g) = exp(-|f - g|^2 / 2)

The lattice follows Adams, Baek & Davis, "Fast High-Dimensional Filtering Using the
Permutohedral Lattice" (Eurographics 2010) in the form used by Krähenbühl's densecrf (and so
pydensecrf): splat with barycentric weights, a [1/2, 1, 1/2] blur along each of the d+1 lattice
directions, slice with the same weights. The lattice is built without Python loops over
pixels: each pixel's enclosing simplex gets one integer key (batch index, remainder-0 point,
rank permutation), the distinct simplices come from one sort of those keys, their d+1
vertices get keys of their own (int32 wherever the feature range allows, else int64),
deduplicated by a second, smaller sort, and each vertex finds its blur neighbours by
``searchsorted`` on the sorted keys. Filtering is differentiable in ``values``
(embedding_bag); the lattice structure itself is a constant of the features.

Both filters include the pixel itself (k(f_i, f_i) = 1), as densecrf's lattice does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["ExactGaussianFilter", "PermutohedralLattice", "summed_filters"]


class ExactGaussianFilter:
    """Dense O(N^2) Gaussian filter: the reference the lattice approximates. Small images only."""

    def __init__(self, features: torch.Tensor) -> None:
        # (B, N, N) kernel; cdist's matmul path is inexact, so compute differences directly
        self.batch = features.shape[0]
        diff = features[:, :, None, :] - features[:, None, :, :]
        self.kernel = torch.exp(-0.5 * (diff * diff).sum(-1))

    def prepare(self, pre: torch.Tensor | None = None, post: torch.Tensor | None = None):
        """The function ``values -> post * K (pre * values)``; pre, post: (B, N, 1) or None."""

        def apply(values: torch.Tensor) -> torch.Tensor:
            if pre is not None:
                values = values * pre
            out = torch.bmm(self.kernel.to(values.dtype), values)
            return out if post is None else out * post

        return apply

    def filter(self, values, pre=None, post=None) -> torch.Tensor:
        return self.prepare(pre, post)(values)


class PermutohedralLattice:
    """Permutohedral lattice over a batch of feature sets (B, N, d), reused for many filters."""

    def __init__(self, features: torch.Tensor) -> None:
        batch, n, d = features.shape
        self.batch, self.num_points, self.dim = batch, n, d
        with torch.no_grad():
            lattice = _build_lattice(features.float())
        # (B*N, d+1): the vertices of each point's enclosing simplex and its barycentric weights
        self.vertices, self.weights = lattice["vertices"], lattice["weights"]
        # (d+1, 2, M+1): blur neighbours along each lattice direction; M is the empty vertex
        self.neighbours = lattice["neighbours"]
        self.num_vertices = lattice["num_vertices"]
        # splat plan: the (point, corner) pairs grouped by vertex, for one embedding_bag
        self._splat_points, self._splat_weights, self._splat_starts = _splat_plan(
            lattice, self.weights
        )
        # blur bags (d+1, M+1, 3): each vertex with its two neighbours, weights 1, 1/2, 1/2
        own = torch.arange(self.num_vertices + 1, device=features.device, dtype=self.neighbours.dtype)
        self._blur_bags = torch.stack(
            [own.expand(d + 1, -1), self.neighbours[:, 0], self.neighbours[:, 1]], dim=-1
        ).contiguous()
        self._blur_weights = torch.tensor(
            [1.0, 0.5, 0.5], device=features.device
        ).expand(self.num_vertices + 1, 3).contiguous()
        # densecrf's "magic scaling constant" for the slice
        self.alpha = 1.0 / (1.0 + 2.0 ** (-d))

    def prepare(self, pre: torch.Tensor | None = None, post: torch.Tensor | None = None):
        """The function ``values -> post * K (pre * values)`` for (B, N, C) values.

        ``pre``, ``post`` are optional (B, N, 1) scales (e.g. the symmetric normalisation),
        folded once into the splat and slice weights, so that applying the function many
        times (mean-field iterations) costs no extra pass over the values.
        """
        splat_weights, slice_weights = self.folded_weights(pre, post)

        def apply(values: torch.Tensor) -> torch.Tensor:
            batch, n, channels = values.shape
            lattice = self.splat_and_blur(values.reshape(batch * n, channels), splat_weights)
            # slice: read back with the same barycentric weights
            out = F.embedding_bag(
                self.vertices, lattice, mode="sum",
                per_sample_weights=slice_weights.to(values.dtype),
            )
            return out.reshape(batch, n, channels)

        return apply

    def filter(self, values, pre=None, post=None) -> torch.Tensor:
        """``post * K (pre * values)``: ``prepare(pre, post)(values)``."""
        return self.prepare(pre, post)(values)

    def folded_weights(self, pre: torch.Tensor | None, post: torch.Tensor | None):
        """The splat weights (P*(d+1),) with ``pre`` folded in, and the slice weights
        (P, d+1) with densecrf's scaling and ``post``."""
        splat_weights = self._splat_weights
        if pre is not None:
            splat_weights = splat_weights.to(pre.dtype) * pre.reshape(-1).index_select(0, self._splat_points)
        slice_weights = self.weights * self.alpha
        if post is not None:
            slice_weights = slice_weights.to(post.dtype) * post.reshape(-1, 1)
        return splat_weights, slice_weights

    def core(self, flat: torch.Tensor, splat_weights: torch.Tensor, slice_weights: torch.Tensor,
             *, reverse: bool = False) -> torch.Tensor:
        """(P, C) -> splat, blur (directions in reverse order with ``reverse``), slice, with
        the given (P*(d+1),) splat and (P, d+1) slice weights; no autograd."""
        with torch.no_grad():
            lattice = self.splat_and_blur(flat, splat_weights, reverse=reverse)
            return F.embedding_bag(self.vertices, lattice, mode="sum",
                                   per_sample_weights=slice_weights.to(flat.dtype))

    def splat_and_blur(
        self, flat: torch.Tensor, splat_weights: torch.Tensor, *, reverse: bool = False
    ) -> torch.Tensor:
        """(P, C) values -> (M+1, C) lattice values, splatted and blurred (row M: zero);
        ``reverse``: the blur directions in the opposite order (the transposed filter's)."""
        # splat: each vertex sums the weighted values of the points around it
        lattice = F.embedding_bag(
            self._splat_points, flat.contiguous(), self._splat_starts,
            mode="sum", per_sample_weights=splat_weights.to(flat.dtype),
        )
        # blur along each lattice direction with the kernel [1/2, 1, 1/2]
        # (one embedding_bag per direction: the bag of vertex m is [m, n1(m), n2(m)])
        blur_weights = self._blur_weights.to(flat.dtype)
        for j in reversed(range(self.dim + 1)) if reverse else range(self.dim + 1):
            lattice = F.embedding_bag(
                self._blur_bags[j], lattice, mode="sum", per_sample_weights=blur_weights
            )
        return lattice


def summed_filters(parts: list[tuple], extra: torch.Tensor | None = None):
    """The function ``values -> sum_k post_k * K_k (pre_k * values) [+ extra]`` for (B, N, C)
    values, from ``parts`` = [(filter, pre, post), ...]. A filter built for one image
    (batch 1) serves every image of the batch (a position kernel, say).

    For permutohedral lattices the sum costs one slice: the lattices' blurred values (and the
    ``extra`` rows) are stacked into one table, and each point reads its vertices of every
    lattice (and its own ``extra`` row) in one embedding_bag, instead of a slice per lattice
    and an addition per term. Other filters are summed one by one."""
    if not all(isinstance(f, PermutohedralLattice) for f, _, _ in parts):
        return _summed_one_by_one(parts, extra)
    return _SlicedTogether(parts, extra)


def _summed_one_by_one(parts: list[tuple], extra: torch.Tensor | None):
    kernels = [(f.batch, f.prepare(pre, post)) for f, pre, post in parts]

    def apply(values: torch.Tensor) -> torch.Tensor:
        total = None if extra is None else extra
        for filter_batch, kernel in kernels:
            out = _batch_shared(kernel)(values) if filter_batch == 1 else kernel(values)
            total = out if total is None else total + out
        return total

    return apply


def _batch_shared(kernel):
    """Apply a kernel built for one image to a batch: the batch goes into the channels."""

    def apply(q: torch.Tensor) -> torch.Tensor:
        n, p, c = q.shape
        if n == 1:
            return kernel(q)
        return kernel(_batch_into_channels(q)[None]).reshape(p, n, c).permute(1, 0, 2)

    return apply


class _SlicedTogether:
    """``summed_filters`` for permutohedral lattices: one slice over all of them."""

    def __init__(self, parts: list[tuple], extra: torch.Tensor | None) -> None:
        # (lattice, splat weights, slice weights, shared by the batch)
        self.parts = [(lattice, *lattice.folded_weights(pre, post), lattice.batch == 1)
                      for lattice, pre, post in parts]
        self.raw_parts = parts
        self.extra = extra
        self.plan = None  # built on the first call, when the batch size is known
        self.table = None  # reused between calls when autograd does not record them
        self.transposable = None  # _LatticeFilter's weights, where autograd records

    def _slice_plan(self, batch: int, n: int, like: torch.Tensor):
        """(B*N, K) indices into the stacked table and their weights: each point's vertices
        of every lattice (a shared lattice has one block of rows per image), then its
        ``extra`` row; and where each lattice's rows start, and how many rows they take."""
        width = sum(lattice.dim + 1 for lattice, *_ in self.parts) + (self.extra is not None)
        index = torch.empty(batch, n, width, dtype=torch.int32, device=like.device)
        weights = like.new_empty(batch, n, width)
        image = torch.arange(batch, device=like.device, dtype=torch.int32)[:, None, None]
        starts, offset, column = [], 0, 0
        for lattice, _, slice_weights, shared in self.parts:
            rows, corners = lattice.num_vertices + 1, lattice.dim + 1
            block = image * rows + offset if shared else offset  # a shared lattice: a block per image
            columns = slice(column, column + corners)
            torch.add(lattice.vertices.view(-1, n, corners), block, out=index[:, :, columns])
            weights[:, :, columns] = slice_weights.view(-1, n, corners)
            starts.append(offset)
            offset += rows * (batch if shared else 1)
            column += corners
        if self.extra is not None:
            torch.add(torch.arange(batch * n, device=like.device, dtype=torch.int32).view(batch, n),
                      offset, out=index[:, :, column])
            weights[:, :, column] = 1.0
        return index.view(batch * n, width), weights.view(batch * n, width), starts, offset

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        if self._records_gradients(values):
            return self._recorded(values)
        batch, n, channels = values.shape
        if self.plan is None or self.plan[0].shape[0] != batch * n:
            self.plan = self._slice_plan(batch, n, values)
        index, slice_weights, starts, lattice_rows = self.plan
        pieces = []
        for lattice, splat_weights, _, shared in self.parts:
            if shared and batch > 1:  # the batch goes into the channels, then into row blocks
                flat = _batch_into_channels(values)
                blurred = lattice.splat_and_blur(flat, splat_weights)  # (M+1, B*C)
                blurred = blurred.view(-1, batch, channels).transpose(0, 1).reshape(-1, channels)
            else:
                blurred = lattice.splat_and_blur(values.reshape(batch * n, channels), splat_weights)
            pieces.append(blurred)
        extra = None if self.extra is None else self.extra.reshape(batch * n, channels)
        if torch.is_grad_enabled():  # a new table, as autograd keeps the one it saw
            table = torch.cat(pieces if extra is None else [*pieces, extra])
        else:  # the extra rows are written once; each call writes the lattices' rows
            if self.table is None or self.table.dtype != values.dtype:
                self.table = values.new_empty(lattice_rows + (0 if extra is None else batch * n), channels)
                if extra is not None:
                    self.table[lattice_rows:] = extra
            table = self.table
            for start, piece in zip(starts, pieces, strict=True):
                table[start : start + piece.shape[0]] = piece
        out = F.embedding_bag(index, table, mode="sum", per_sample_weights=slice_weights.to(values.dtype))
        return out.reshape(batch, n, channels)

    def _records_gradients(self, values: torch.Tensor) -> bool:
        """Whether autograd records this call through values, extra or a post scale (a pre
        scale that needs gradients keeps the fused path and embedding_bag's backward)."""
        if not torch.is_grad_enabled() or any(pre is not None and pre.requires_grad for _, pre, _ in self.raw_parts):
            return False
        tensors = [values, self.extra, *(post for _, _, post in self.raw_parts)]
        return any(t is not None and t.requires_grad for t in tensors)

    def _recorded(self, values: torch.Tensor) -> torch.Tensor:
        """The sum where autograd records it: each lattice's K (pre * values) through
        ``_LatticeFilter`` (its backward is the transposed lattice filter, as fast as the
        forward; embedding_bag's own backward sorts its indices on every call), then the
        post scales and the sum as plain differentiable operations."""
        if self.transposable is None:  # the four weight sets, once per CRF call
            self.transposable = [_transposable_weights(lattice, pre) for lattice, pre, _ in self.raw_parts]
        batch, n, channels = values.shape
        total = self.extra
        for (lattice, _, post), weights in zip(self.raw_parts, self.transposable, strict=True):
            shared = lattice.batch == 1 and batch > 1
            flat = _batch_into_channels(values) if shared else values.reshape(-1, channels)
            out = _LatticeFilter.apply(flat, lattice, weights)
            out = out.reshape(n, batch, channels).permute(1, 0, 2) if shared else out.reshape(values.shape)
            out = out if post is None else out * post
            total = out if total is None else total + out
        return total


def _transposable_weights(lattice: PermutohedralLattice, pre: torch.Tensor | None) -> tuple:
    """K (pre * x)'s splat and slice weights, and those of its transpose pre * K^T."""
    with torch.no_grad():
        pre = None if pre is None else pre.detach()
        splat, slice_ = lattice.folded_weights(pre, None)
        back_slice = lattice.weights if pre is None else lattice.weights * pre.reshape(-1, 1)
        return splat, slice_, lattice._splat_weights * lattice.alpha, back_slice


class _LatticeFilter(torch.autograd.Function):
    """y = K (pre * x) for (P, C) x on one lattice, pre (constant) folded into the weights.
    K = L B S (splat, blur along directions 0..d, slice), so the backward is
    pre * K^T g = pre * S^T B^T L^T g: a splat with the slice's weights, the blur along
    directions d..0 (each direction's blur is symmetric: m and n are neighbours both ways),
    and a slice with the splat's weights. ``weights``: (forward splat, forward slice,
    backward splat, backward slice), computed once per CRF call."""

    @staticmethod
    def forward(ctx, values, lattice, weights):
        ctx.lattice, ctx.weights = lattice, weights
        return lattice.core(values, weights[0], weights[1])

    @staticmethod
    def backward(ctx, grad):
        lattice, weights = ctx.lattice, ctx.weights
        return lattice.core(grad.contiguous(), weights[2], weights[3], reverse=True), None, None


def _batch_into_channels(values: torch.Tensor) -> torch.Tensor:
    """(B, N, C) -> (N, B*C): a batch through a lattice built for one image."""
    return values.permute(1, 0, 2).reshape(values.shape[1], -1)


def _elevate(features: torch.Tensor) -> torch.Tensor:
    """Project (P, d) features onto the plane x . 1 = 0 in R^{d+1}, scaled for unit std.
    Returns the coordinates as rows, (d+1, P), so that every later step works on contiguous
    rows of P values. One (d+1, d) matrix product:
    elevated_j = sum_{k >= j} s_k f_k - j s_{j-1} f_{j-1},  s_k = sqrt(2/3) (d+1) / sqrt((k+1)(k+2))."""
    d = features.shape[-1]
    k = torch.arange(d, dtype=torch.float64)
    scale = math.sqrt(2.0 / 3.0) * (d + 1) / torch.sqrt((k + 1) * (k + 2))  # (d,)
    matrix = torch.triu(scale.expand(d + 1, d))  # row j: s_k for k >= j
    rows = torch.arange(1, d + 1)
    matrix[rows, rows - 1] = -rows * scale  # row j: - j s_{j-1}
    return torch.mm(matrix.to(features), features.t())


def _build_lattice(features: torch.Tensor) -> dict:
    """The lattice of (B, N, d) features: each point's enclosing simplex, its d+1 vertices
    (indices into the M distinct vertices) and barycentric weights, and each vertex's blur
    neighbours. Lattice points are integer vectors of R^{d+1} summing to zero whose
    coordinates are all congruent to one remainder r mod d+1; such a point is keyed by r and
    q_k = (x_k - r) / (d+1) for its first d coordinates, keys (d+1)^d times smaller than raw
    coordinates would give (int32 on most images: faster sorts and look-ups)."""
    batch, n, d = features.shape
    dim = d + 1
    elevated = _elevate(features.reshape(batch * n, d))  # (d+1, P)

    # closest remainder-0 lattice point, by rounding each coordinate to a multiple of d+1;
    # its coordinates in units of d+1 (q) move by -/+ 1 where a residual's rank wraps around
    rounded = torch.round(elevated / dim)
    rank, shift = _wrapped_ranks(_ranks(elevated - rounded * dim), rounded.sum(0), dim)
    q = rounded.add_(shift)  # (d+1, P) float, exact integers
    # rank: (d+1, P) a permutation of 0..d per point, the descending order of v below

    # barycentric coordinates: with B[r] the v of the coordinate of rank r,
    # b[0] = B[d] + 1 - B[0] and b[m] = B[d - m] - B[d + 1 - m] for m = 1..d
    v = (elevated - q * dim) / dim
    by_rank = torch.empty_like(v).scatter_(0, (d - rank).long(), v)  # row m: v of rank d - m
    bary = torch.empty_like(v)
    bary[0] = by_rank[0] + 1.0 - by_rank[d]
    torch.sub(by_rank[1:], by_rank[:-1], out=bary[1:])
    # bary: (d+1, P) for the splat plan; its transpose (P, d+1) for the slice

    # a simplex is its remainder-0 point and its rank permutation: one integer key each
    low = [int(x) for x in q[:d].amin(1)]
    high = [int(x) for x in q[:d].amax(1)]
    extent = [h - lo + 1 for lo, h in zip(low, high, strict=True)]
    key_dtype = _key_dtype(batch * math.prod(extent) * math.factorial(dim))
    simplex_key = _batch_index(batch, n, torch.arange(batch * n, device=q.device), key_dtype)
    for k in range(d):  # Horner: mixed radix of (batch, q - low)
        simplex_key.mul_(extent[k]).add_((q[k] - low[k]).to(key_dtype))
    _add_lehmer_code(simplex_key, rank)

    # many points share a simplex: find the distinct ones with one sort of P keys, whose
    # permutation is also the splat plan's "points grouped by simplex"
    _, simplex_of_point, points_by_simplex, simplex_starts = _sorted_unique(simplex_key)
    representative = torch.index_select(points_by_simplex, 0, simplex_starts)  # (S,)

    # simplex vertex r: x = rem0 + r - (d+1) [rank_k > d - r], i.e. remainder r and
    # q_k - [rank_k >= d + 1 - r]; vertex keys lin(q) * (d+1) + r leave a margin of 2 in q
    # on each side for the blur neighbours (q -/+ 1 of a vertex's)
    vlow = [x - 2 for x in low]
    vext = [x + 3 for x in extent]
    key_dtype = _key_dtype(batch * math.prod(vext) * dim)
    q_rep = torch.index_select(q[:d], 1, representative).long()  # (d, S)
    rank_rep = torch.index_select(rank[:d], 1, representative).long()  # (d, S)
    base = _batch_index(batch, n, representative, torch.int64)
    for k in range(d):
        base = base * vext[k] + (q_rep[k] - vlow[k])
    strides = [math.prod(vext[k + 1 :]) for k in range(d)]
    r = torch.arange(dim, device=q.device)
    corner_keys = base[:, None].repeat(1, dim)  # (S, d+1)
    for k in range(d):
        corner_keys -= strides[k] * (rank_rep[k][:, None] >= dim - r)
    corner_keys = (corner_keys * dim + r).to(key_dtype)
    table, vertex_of_corner, corner_order, vertex_starts = _sorted_unique(corner_keys.reshape(-1))
    vertex_of_corner = vertex_of_corner.to(torch.int32).reshape(-1, dim)  # (S, d+1)
    return dict(
        vertices=torch.index_select(vertex_of_corner, 0, simplex_of_point),  # (P, d+1)
        weights=bary.t().contiguous(),  # (P, d+1): a point's weights side by side
        weights_by_corner=bary,  # (d+1, P)
        neighbours=_blur_neighbours(table, strides, dim),
        num_vertices=table.shape[0],
        points_by_simplex=points_by_simplex,
        simplex_starts=simplex_starts,
        corners_by_vertex=corner_order,
        vertex_starts=vertex_starts,
    )


def _wrapped_ranks(rank: torch.Tensor, coord_sum: torch.Tensor, dim: int):
    """densecrf's rank update: rank += coordinate sum; a rank below 0 or above d wraps by
    d+1 and moves its remainder-0 coordinate by +/- one step. Returns (rank (int16), the
    step (float, in units of d+1)), both (d+1, P)."""
    rank = rank.to(torch.int16).add_(coord_sum.to(torch.int16))
    shift = (rank < 0).to(torch.int16).sub_((rank > dim - 1).to(torch.int16))
    return rank.add_(shift * dim), shift.to(coord_sum.dtype)


def _batch_index(batch: int, n: int, points: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The batch index of each of the given point indices (zeros for a single image)."""
    if batch == 1:
        return torch.zeros(points.shape, dtype=dtype, device=points.device)
    return torch.div(points, n, rounding_mode="floor").to(dtype)


def _key_dtype(key_range: int) -> torch.dtype:
    if key_range < 2**31:
        return torch.int32
    if key_range < 2**62:
        return torch.int64
    raise ValueError(
        "permutohedral lattice: feature range too large to pack into int64 keys; "
        "use larger standard deviations or the exact filter"
    )


def _add_lehmer_code(key: torch.Tensor, rank: torch.Tensor) -> None:
    """key <- key * D! + the Lehmer code of each column's permutation (D, P) of 0..D-1,
    in place: digit i counts the later entries smaller than entry i (Horner form)."""
    dim = rank.shape[0]
    digit = torch.empty(rank.shape[1], dtype=torch.uint8, device=rank.device)
    for i in range(dim - 1):
        digit.zero_()
        for j in range(i + 1, dim):
            digit += torch.lt(rank[j], rank[i]).view(torch.uint8)
        key.mul_(dim - i).add_(digit)


def _blur_neighbours(table: torch.Tensor, strides: list[int], dim: int) -> torch.Tensor:
    """(M,) sorted vertex keys -> (d+1, 2, M+1) indices of each vertex's neighbours x + s_j
    and x - s_j along the d+1 lattice directions (s_j = -1 everywhere, +d at coordinate j);
    M where the neighbour is not in the lattice (and for the extra empty vertex M itself).
    In keys (q, r): +s_j moves r to r - 1 and q_j up by one when r > 0, and from r = 0 to
    r = d with every other q_k down by one. Only the + neighbours are searched for: m is
    the - neighbour of its + neighbour."""
    d, num_vertices = dim - 1, table.shape[0]
    step = torch.tensor([*strides, 0], device=table.device)[:, None]  # q_j's stride; d: none
    plus = torch.where(torch.remainder(table, dim) > 0, dim * step - 1, dim * (step - sum(strides)) + d)
    wanted = table + plus.to(table.dtype)  # (d+1, M)
    found = torch.searchsorted(table, wanted.reshape(-1), out_int32=table.dtype == torch.int32)
    found = found.clamp_(max=num_vertices - 1).reshape(wanted.shape)
    exists = torch.take(table, found.long()) == wanted
    neighbours = torch.full((dim, 2, num_vertices + 1), num_vertices, dtype=found.dtype, device=table.device)
    neighbours[:, 0, :-1] = torch.where(exists, found, num_vertices)
    own = torch.arange(num_vertices, dtype=found.dtype, device=table.device).expand(dim, -1)
    # the - neighbour of each found + neighbour (row j of ``minus``) is the vertex itself
    minus = neighbours[:, 1]
    rows = torch.arange(dim, device=table.device)[:, None].expand(-1, num_vertices)
    minus.index_put_((rows[exists], found[exists].long()), own[exists])
    return neighbours  # (d+1, 2, M+1)


def _ranks(columns: torch.Tensor) -> torch.Tensor:
    """(D, P) -> (D, P) uint8 rank of each value among its column's D, in descending order,
    ties to the lower index (densecrf's loop: for i < j, the smaller of the two gains a rank).
    Pairwise compares of contiguous rows beat a sort of D elements per point by 2-4x on CPU;
    the compares' booleans are added as uint8 (no casting pass)."""
    dim = columns.shape[0]
    rank = torch.arange(dim, dtype=torch.uint8, device=columns.device)[:, None].repeat(1, columns.shape[1])
    for i in range(dim):
        for j in range(i + 1, dim):
            smaller = torch.lt(columns[i], columns[j]).view(torch.uint8)
            rank[i] += smaller  # rank[j] starts at j (one per i < j) and loses the ones it won
            rank[j] -= smaller
    return rank


def _sorted_unique(keys: torch.Tensor):
    """torch.unique(keys, return_inverse=True) from one stable sort, plus its permutation
    (the positions of the keys in sorted order, i.e. grouped by unique key) and where each
    group starts in it."""
    sorted_keys, order = torch.sort(keys, stable=True)
    is_new = torch.ones_like(sorted_keys, dtype=torch.bool)
    is_new[1:] = sorted_keys[1:] != sorted_keys[:-1]
    group = torch.cumsum(is_new, 0) - 1
    inverse = torch.empty_like(group).scatter_(0, order, group)
    return sorted_keys[is_new], inverse, order, torch.nonzero(is_new).squeeze(1)


def _splat_plan(lattice: dict, weights: torch.Tensor):
    """The (point, corner) pairs grouped by vertex, for one embedding_bag, without sorting
    all P*(d+1) of them: points grouped by simplex and simplex corners grouped by vertex
    come from the lattice's two sorts; each corner then expands to the run of its simplex's
    points in a (corner, simplex-ordered point) table, read with good locality. The runs'
    table positions come from one cumulative sum of steps (1 within a run, a jump at each
    run's start), cheaper than repeat_interleave."""
    points_by_simplex = lattice["points_by_simplex"]  # (P,)
    num_points, corners = weights.shape
    simplex_starts = lattice["simplex_starts"]  # (S,)
    points_per_simplex = torch.diff(simplex_starts, append=simplex_starts.new_tensor([num_points]))
    # simplex corners in vertex order (corner id s*(d+1) + c), each a run of the table,
    # whose row c*P + k is (k-th point in simplex order, its weight at corner c)
    order = lattice["corners_by_vertex"]
    simplex = torch.div(order, corners, rounding_mode="floor")
    run_start = (order - simplex * corners) * num_points + simplex_starts.index_select(0, simplex)
    sizes = points_per_simplex.index_select(0, simplex)
    entry_start = torch.cumsum(sizes, 0) - sizes
    total = num_points * corners
    index_dtype = torch.int32 if total < 2**31 else torch.int64
    jump = run_start.clone()
    jump[1:] -= run_start[:-1] + sizes[:-1] - 1
    steps = torch.ones(total, dtype=index_dtype, device=weights.device)
    steps[entry_start] = jump.to(index_dtype)
    entry = torch.cumsum(steps, 0, dtype=index_dtype)  # (P*(d+1),) table rows, vertex order
    table_points = points_by_simplex.to(index_dtype).repeat(corners)
    table_weights = lattice["weights_by_corner"].index_select(1, points_by_simplex).reshape(-1)
    # bag offsets per vertex; the empty vertex M gets an empty bag at the end
    starts = F.pad(entry_start.index_select(0, lattice["vertex_starts"]), (0, 1), value=total)
    return (
        table_points.index_select(0, entry),
        table_weights.index_select(0, entry),
        starts.to(index_dtype),
    )
