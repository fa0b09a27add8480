"""The whole first stage without Lightning: head model + tokenizer + condition encoder + AR Transformer.

:class:`ConditionalPointGenerator` is what ``GeneratorModule`` trains and what the decoder stage and the portrait ->
avatar pipeline use: encode a portrait into condition tokens, turn teacher clouds into tokens, run the Transformer
teacher-forced (hidden states for the Gaussian decoder) or sample new clouds.

The head model is *not* a registered submodule: it is rebuilt from its config (FLAME is licensed, so checkpoints never
carry it) and moved to the inputs' device on use. The tokenizer's box is a buffer, so a checkpoint keeps the box it
was trained with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from avp.models.draws import merge_draws
from avp.models.encoders import ConditionConfig, ConditionEncoder, PortraitView, condition_vertices
from avp.models.generator import GeneratorConfig, GeneratorOutput, PointGenerator, point_features
from avp.models.sampling import SampleOutput, SamplingConfig, sample, teacher_forced
from avp.models.tokenizer import PointTokenizer, TokenizerConfig
from avp.types import Cameras, HeadParams


class ConditionalPointGenerator(nn.Module):
    """Portrait (+ its head-model fit) -> point-cloud tokens.

    Args:
        head_model: an ``avp.head.HeadModel`` (needs ``n_faces``, ``faces``, ``canonical_bounds()`` and ``forward``).
        tokenizer, condition, model: the configs of the three parts.
    """

    def __init__(self, head_model: nn.Module, tokenizer: TokenizerConfig | None = None,
                 condition: ConditionConfig | None = None, model: GeneratorConfig | None = None):
        super().__init__()
        tokenizer = tokenizer or TokenizerConfig()
        condition = condition or ConditionConfig()
        model = model or GeneratorConfig()
        object.__setattr__(self, "head_model", head_model)  # deliberately unregistered (see the module docstring)
        bounds = head_model.canonical_bounds().detach().float().cpu()
        self.tokenizer = PointTokenizer.from_config(tokenizer, bounds, int(head_model.n_faces))
        self.condition = ConditionEncoder(condition, model.width, bounds)
        self.transformer = PointGenerator(model, self.tokenizer.vocab_size)
        if not 0 <= condition.guidance_dropout < 1:
            raise ValueError(f"condition: guidance_dropout must be in [0, 1), got {condition.guidance_dropout}")
        # the learned null condition of classifier-free guidance: one token, repeated to the condition's length
        self.null_condition = (nn.Parameter(torch.randn(1, 1, model.width) * 0.02)
                               if condition.guidance_dropout > 0 else None)

    def _head_on(self, device: torch.device) -> nn.Module:
        head = self.head_model
        faces = head.faces
        if faces.device != device:
            head.to(device)
        return head

    def encode_condition(self, portrait: Tensor, portrait_head: HeadParams, static_offset: Tensor | None = None,
                         portrait_camera: Cameras | None = None) -> Tensor:
        """``portrait [B, 3, H, W]`` in 0..1 and its head parameters ``[B]`` -> condition tokens ``[B, C, D]``; the
        mesh tokens come from the subjects' tracked mesh when ``static_offset [B, V, 3]`` is given. The portrait's
        camera (``Ks [B, 1, 3, 3]`` or ``[B, 3, 3]``) is needed by pixel-aligned mesh tokens (``mesh.pixel_lifts``)
        and ignored otherwise."""
        head = self._head_on(portrait.device)
        portrait_head = portrait_head.to(portrait.device)
        vertices = condition_vertices(head, portrait_head, self.condition.config.mesh.space, static_offset)
        view = None
        if self.condition.pixel_aligned and portrait_camera is not None:
            B = portrait.shape[0]
            posed = condition_vertices(head, portrait_head, "portrait", static_offset)
            view = PortraitView(portrait, posed, portrait_camera.Ks.reshape(B, 3, 3).to(posed),
                                portrait_camera.viewmats.reshape(B, 4, 4).to(posed))
        return self.condition(portrait, vertices, head.faces, view)

    def null_like(self, condition: Tensor) -> Tensor:
        """The learned null condition in the shape of ``condition [B, C, D]``; a generator trained without
        ``condition.guidance_dropout`` has none (ValueError)."""
        if self.null_condition is None:
            raise ValueError("classifier-free guidance needs a generator trained with condition.guidance_dropout > 0 "
                             "(this one has no null condition); sample with guidance: 1")
        return self.null_condition.to(condition.dtype).expand_as(condition)

    def drop_condition(self, condition: Tensor) -> Tensor:
        """Training: each sample's condition ``[B, C, D]`` replaced by the null condition with probability
        ``condition.guidance_dropout`` (the global RNG draws; unchanged without a null condition)."""
        if self.null_condition is None:
            return condition
        drop = torch.rand(condition.shape[0], device=condition.device) < self.condition.config.guidance_dropout
        return torch.where(drop[:, None, None], self.null_like(condition), condition)

    def teacher_tokens(self, means: Tensor, binding: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Teacher clouds ``[B, N, 3]`` (faces ``[B, N]``, ``mask [B, N]``) -> ``tokens [B, L]``, ``lengths [B]``."""
        return self.tokenizer.encode_batch(means, binding, mask)

    def forward(self, tokens: Tensor, condition: Tensor, input_pos: Tensor | None = None) -> GeneratorOutput:
        """The Transformer's forward (see :meth:`PointGenerator.forward`)."""
        return self.transformer(tokens, condition, input_pos)

    def teacher_forced(self, condition: Tensor, tokens: Tensor, window: int, keep: int = 0,
                       keep_logits: bool = True) -> GeneratorOutput:
        """Whole sequences with the contexts sampling would use (see :func:`avp.models.sampling.teacher_forced`)."""
        return teacher_forced(self.transformer, condition, tokens, window, keep, keep_logits)

    def teacher_features(self, condition: Tensor, tokens: Tensor, lengths: Tensor, window: int,
                         keep: int = 0) -> Tensor:
        """The decoder's per-point features of teacher sequences: ``[B, N, 4, D]`` (zeros on padding)."""
        out = self.teacher_forced(condition, tokens, window, keep, keep_logits=False)
        return point_features(out.hidden, (lengths - 2) // 4)

    def face_centers(self, shape: Tensor, static_offset: Tensor | None = None) -> Tensor:
        """``shape [B, S]`` -> centres ``[B, F, 3]`` of the head model's faces on each canonical (neutral) mesh, plus
        the subjects' ``static_offset [B, V, 3]`` when given (their tracked neutral mesh)."""
        head = self._head_on(shape.device)
        vertices = head.canonical(shape, static_offset)  # [B, V, 3]
        return vertices[:, head.faces].mean(-2)  # [B, F, 3]

    def sample(self, condition: Tensor, config: SamplingConfig | None = None,
               generator: torch.Generator | Sequence[torch.Generator] | None = None,
               on_step: Callable[[int, int], None] | None = None, shape: Tensor | None = None,
               static_offset: Tensor | None = None) -> SampleOutput:
        """Sample one cloud per condition (see :func:`avp.models.sampling.sample`); ``shape [B, S]`` is the subjects'
        identity, needed when ``config.bind_nearest > 0``, and ``static_offset [B, V, 3]`` their tracked per-vertex
        offsets (the nearest faces are then those of the offset mesh), or None."""
        centers = None
        if config is not None and config.bind_nearest > 0:
            if shape is None:
                raise ValueError("sample: sampling.bind_nearest > 0 needs the subjects' shape")
            centers = self.face_centers(shape.to(condition.device, torch.float32), static_offset)
        null = self.null_like(condition) if config is not None and config.guidance != 1 else None
        if config is None or config.draws == 1:
            return sample(self.transformer, condition, self.tokenizer, config, generator, on_step, centers, null)
        return self._sample_merged(condition, config, generator, on_step, centers, null)

    def _sample_merged(self, condition: Tensor, config: SamplingConfig,
                       generator: torch.Generator | Sequence[torch.Generator] | None,
                       on_step: Callable[[int, int], None] | None, centers: Tensor | None,
                       null: Tensor | None) -> SampleOutput:
        """``config.draws`` clouds per condition in one batched call, merged (:func:`~avp.models.draws.merge_draws`),
        re-tokenised and teacher-forced for their hidden states. With a sequence of generators (one per condition) a
        condition's clouds share its generator (its rows draw from it in turn at every step), so each condition's
        merged cloud depends on its own generator only. The merged cloud counts as finished when all its draws are."""
        K = config.draws
        if generator is not None and not isinstance(generator, torch.Generator):
            generator = [g for g in generator for _ in range(K)]

        def repeat(x: Tensor | None) -> Tensor | None:
            return None if x is None else x.repeat_interleave(K, dim=0)

        single = dataclasses.replace(config, draws=1)
        out = sample(self.transformer, repeat(condition), self.tokenizer, single, generator, on_step, repeat(centers),
                     repeat(null))
        points, binding, mask = merge_draws(out.points, out.binding, out.mask, out.n_points, K)
        tokens, lengths = self.tokenizer.encode_batch(points, binding, mask)
        hidden = teacher_forced(self.transformer, condition, tokens, config.window, config.keep,
                                keep_logits=False).hidden
        points, binding, mask, n_points = self.tokenizer.decode_batch(tokens, lengths)
        # a merged cloud ends like its draws: with EOS when every draw emitted one, at its last point otherwise
        finished = out.finished.reshape(-1, K).all(-1)
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        tokens[rows[~finished], lengths[~finished] - 1] = self.tokenizer.pad_id
        lengths = torch.where(finished, lengths, lengths - 1)
        return SampleOutput(tokens=tokens, lengths=lengths, points=points, binding=binding, mask=mask,
                            n_points=n_points, finished=finished, hidden=hidden)
