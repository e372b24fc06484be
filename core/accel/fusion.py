"""The bf16 CPU UNet and VAE with oneDNN weights packed once and bias, GELU and residual adds fused into the matmuls.

PyTorch's eager `conv2d`/`linear` reorder each weight into oneDNN's blocked layout on every call (30-70 % of a deep
1280-channel conv's time on a two-core machine), and diffusers writes bias adds, GELU, the GEGLU product,
residual adds and NHWC<->NCHW copies as separate passes over memory. On a CPU whose matrix units outrun its memory
those passes cost as much as the matmuls. Here, once at load time (what `torch.compile`'s freezing does, without
its minutes of compilation):

- every `Conv2d`/`Linear` keeps its weight in oneDNN's layout and runs `mkldnn._convolution_pointwise` /
  `_linear_pointwise` with the bias in the epilogue;
- GEGLU runs as two half-width GEMMs: gate with GELU in its epilogue, value with the product in its epilogue, so
  the double-width projection is never written;
- ResnetBlock2D adds its shortcut in conv2's epilogue and folds the time embedding into conv1's bias (classifier-
  free guidance runs both halves at one timestep, so the embedding is one vector);
- Transformer2DModel runs its 1x1 projections as GEMMs on the NHWC tokens (no layout copies) with the residual
  in proj_out's epilogue, and each attention and feed-forward adds its residual in its output GEMM's epilogue;
- a batch of identical items (classifier-free guidance's duplicated latents, which `share_identical_batches` hands
  the UNet held once, with stride 0 along the batch) is computed once up to the first cross-attention, which is
  where the two halves of the batch first differ: conv_in, the first resnet, and the first transformer's projection and
  self-attention (about 3 % of a step's FLOPs, a tenth of the first level's attention);
- 3x3 convolutions with GEMM_CONV_CHANNELS in and out run as GEMMs over their im2col patches, and with
  `core.accel.norms` the GroupNorms (with the resnets' SiLU) and LayerNorms run in a native bf16 kernel;
- each Upsample2D (2x nearest, then a 3x3 convolution) runs as one GEMM of four 2x2 phase kernels on the low-res
  input: 4/9 of the FLOPs, and the upsampled map is never written.

The VAE takes the same path: its resnets, upsamplers and convolutions.

The math is the same, rounded to bf16 at fewer points. Modules whose configuration is not SD 1.5's, and calls with
masks, extra attention arguments or training mode, run diffusers' own forward on the same packed weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.accel import attention, norms
from core.models.devices import env_choice

logger = logging.getLogger(__name__)

MODE_ENV = "ICLIGHT_CPU_FUSION"  # auto (default) or off
MODES = ("auto", "off")
PACK_ROWS = 4096  # typical GEMM row count, a hint for oneDNN's weight layout (results do not depend on it)
# 3x3 convolutions with this many channels in and out (SD 1.5's two deepest levels) run as im2col GEMMs: oneDNN's
# bf16 convolution takes 1.15-1.35x as long as its GEMM on the same [pixels, 9 * 1280] x [9 * 1280, 1280] product
# from 10 x 8 to 30 x 24 pixels on Sapphire Rapids (the im2col copy included; even from 32 x 32 on); with 640
# channels or concatenated skip inputs (1920, 2560) the convolution is the faster one, so those stay convolutions.
GEMM_CONV_CHANNELS = 1280
# The upsamplers' GEMM runs on row chunks of about this many bytes of 2x2 patches: at a 768 x 960 VAE decode's last
# upsampler a single GEMM would hold 0.76 GB of patches and phases beside the output.
UPSAMPLE_CHUNK_BYTES = 32 << 20
_OPS = ("_reorder_linear_weight", "_linear_pointwise", "_reorder_convolution_weight", "_convolution_pointwise")


@dataclass(frozen=True)
class FusionStatus:
    """Whether the UNet runs the fused oneDNN path, and why not when it does not."""

    applied: bool
    reason: str  # one line for logs and status lines


def _mkldnn():
    return torch.ops.mkldnn


def shared_batch(x: torch.Tensor) -> bool:
    """A batch of identical items held once (stride 0 along the batch): compute one item, broadcast the result."""
    return x.dim() >= 2 and x.shape[0] > 1 and x.stride(0) == 0


def broadcast(x: torch.Tensor, batch: int) -> torch.Tensor:
    """`x` (batch 1) as a stride-0 batch of `batch` identical items, no copy."""
    return x.expand(batch, *x.shape[1:])


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """A 4-D tensor in channels_last memory (a copy only when it is not; torch.cat with a stride-0 skip gives NCHW)."""
    if x.dim() == 4 and not x.is_contiguous(memory_format=torch.channels_last):
        return x.contiguous(memory_format=torch.channels_last)
    return x


def group_norm(ops: norms.NativeOps | None, norm: nn.Module, x: torch.Tensor, silu: bool = False) -> torch.Tensor:
    """norm(x), then SiLU when `silu`: in one pass by the native ops where they take it, else PyTorch's."""
    if ops is not None and ops.group_norm_ok(x, norm):
        return ops.group_norm(x, norm, silu)
    out = norm(x)
    return F.silu(out, inplace=True) if silu else out


def layer_norm(ops: norms.NativeOps | None, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """norm(x) by the native ops where they take it, else PyTorch's."""
    return ops.layer_norm(x, norm) if ops is not None and ops.layer_norm_ok(x, norm) else norm(x)


def unavailable_reason(dtype: torch.dtype) -> str | None:
    """Why this PyTorch build cannot run the fused path for `dtype`; None when it can."""
    if not torch.backends.mkldnn.is_available():
        return "this PyTorch build has no oneDNN"
    if any(not hasattr(_mkldnn(), op) for op in _OPS):
        return "this PyTorch build lacks oneDNN's packed-weight ops"
    bf16_probe = getattr(_mkldnn(), "_is_mkldnn_bf16_supported", None)
    if dtype == torch.bfloat16 and (bf16_probe is None or not bf16_probe()):
        return "oneDNN has no bf16 on this CPU"
    return None


class PackedLinear(nn.Module):
    """`nn.Linear` with its weight in oneDNN's layout; optional GELU or residual add/product in the epilogue."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        # Plain attributes, not parameters: the packed layout is opaque to state_dict and .to().
        self.packed = _mkldnn()._reorder_linear_weight(weight.detach().contiguous(), PACK_ROWS)
        self.bias = None if bias is None else bias.detach().clone()

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> PackedLinear:
        return cls(linear.weight, linear.bias)

    @staticmethod
    def supports(module: nn.Module) -> bool:
        return type(module) is nn.Linear and module.weight.device.type == "cpu"

    def forward(self, x: torch.Tensor, other: torch.Tensor | None = None, op: str = "add") -> torch.Tensor:
        """x W^T + b, then `op` ("add" or "mul") with `other` when given."""
        if other is not None:
            return _mkldnn()._linear_pointwise.binary(x, other, self.packed, self.bias, op)
        return _mkldnn()._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def gelu(self, x: torch.Tensor) -> torch.Tensor:
        """gelu(x W^T + b), exact (erf) GELU as `F.gelu`."""
        return _mkldnn()._linear_pointwise(x, self.packed, self.bias, "gelu", [], "none")

    def unpack(self) -> nn.Linear:
        """The plain `nn.Linear` again, with exactly the weights it was packed from."""
        return _plain(nn.Linear(self.in_features, self.out_features, self.bias is not None, device="meta"),
                      self.packed.to_dense(), self.bias)  # fmt: skip

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class PackedConv2d(nn.Module):
    """`nn.Conv2d` with its weight in oneDNN's layout; optional residual add in the epilogue and bias override.

    A 1x1 convolution (stride 1, no padding, no groups) runs as a GEMM on the NHWC tokens instead: the same math,
    and oneDNN's bf16 1x1 convolution kernels are up to 30x slower than its GEMM on AMD Zen 4 at SD 1.5's deep
    levels (1280 -> 1280 channels on 20 x 16 pixels: 80 ms against 9.5 ms). A 3x3 "same" convolution with
    GEMM_CONV_CHANNELS channels in and out runs as a GEMM over its im2col patches.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size = conv.kernel_size
        self.geometry = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        self.pointwise = _is_pointwise(conv)
        self.im2col = _is_same_3x3(conv) and conv.in_channels == conv.out_channels == GEMM_CONV_CHANNELS
        if self.pointwise or self.im2col:  # as a GEMM weight [out, (kh, kw, in)], the order `_patches` writes
            weight = conv.weight.detach().permute(0, 2, 3, 1).reshape(self.out_channels, -1).contiguous()
            self.packed = _mkldnn()._reorder_linear_weight(weight, PACK_ROWS)
        else:
            weight = conv.weight.detach().contiguous(memory_format=torch.channels_last)
            self.packed = _mkldnn()._reorder_convolution_weight(weight, *self.geometry, None)
        self.bias = None if conv.bias is None else conv.bias.detach().clone()

    def unpack(self) -> nn.Conv2d:
        """The plain `nn.Conv2d` again (channels_last, as packed), with exactly the weights it was packed from."""
        padding, stride, dilation, groups = self.geometry
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, tuple(stride), tuple(padding),
                         tuple(dilation), groups, self.bias is not None, device="meta")  # fmt: skip
        weight = self.packed.to_dense()
        if self.pointwise or self.im2col:  # the GEMM weight [out, (kh, kw, in)] back to [out, in, kh, kw]
            weight = weight.view(self.out_channels, *self.kernel_size, -1).permute(0, 3, 1, 2)
        return _plain(conv, weight.contiguous(memory_format=torch.channels_last), self.bias)

    @staticmethod
    def supports(conv: nn.Module) -> bool:
        return (
            type(conv) is nn.Conv2d
            and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str)
            and conv.weight.device.type == "cpu"
        )

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """conv(x) + bias (+ residual in the epilogue); `bias` replaces the module's own when given.

        A stride-0 batch of identical items (and no residual) is convolved once and broadcast."""
        if residual is None and shared_batch(x):
            return broadcast(self(x[:1], bias=bias), x.shape[0])
        bias = self.bias if bias is None else bias
        if self.pointwise or self.im2col:
            return self._gemm(x, residual, bias)
        if residual is not None:
            return _mkldnn()._convolution_pointwise.binary(
                x, residual, self.packed, bias, *self.geometry, "add", None, None, [], None
            )
        return _mkldnn()._convolution_pointwise(x, self.packed, bias, *self.geometry, "none", [], "")

    def _gemm(self, x: torch.Tensor, residual: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
        """The convolution as a GEMM on [B*H*W, C] tokens (1x1: free views of channels_last tensors, else copies) or
        on [B*H*W, 9*C] im2col patches; returns a channels_last NCHW tensor."""
        batch, channels, height, width = x.shape
        tokens = _patches(x) if self.im2col else x.permute(0, 2, 3, 1).reshape(-1, channels)
        if residual is not None:
            other = residual.permute(0, 2, 3, 1).reshape(-1, self.out_channels)
            out = _mkldnn()._linear_pointwise.binary(tokens, other, self.packed, bias, "add")
        else:
            out = _mkldnn()._linear_pointwise(tokens, self.packed, bias, "none", [], "")
        return out.view(batch, height, width, self.out_channels).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, bias={self.bias is not None}"


class FusedGEGLU(nn.Module):
    """diffusers GEGLU, value * gelu(gate), as two half-width GEMMs with GELU and the product in their epilogues."""

    def __init__(self, geglu: nn.Module) -> None:
        super().__init__()
        weight, bias = geglu.proj.weight.detach(), geglu.proj.bias
        half = weight.shape[0] // 2  # diffusers' chunk(2): value first, gate second
        self.value = PackedLinear(weight[:half], None if bias is None else bias[:half])
        self.gate = PackedLinear(weight[half:], None if bias is None else bias[half:])

    @staticmethod
    def supports(module: nn.Module) -> bool:
        from diffusers.models.activations import GEGLU

        return type(module) is GEGLU and isinstance(module.proj, nn.Linear)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.value(x, self.gate.gelu(x), op="mul")

    def unpack(self) -> nn.Module:
        """diffusers' GEGLU again, its projection the value and gate halves stacked as they were split."""
        from diffusers.models.activations import GEGLU

        value, gate = self.value.unpack(), self.gate.unpack()
        with torch.device("meta"):
            geglu = GEGLU(value.in_features, value.out_features, bias=value.bias is not None)
        bias = None if value.bias is None else torch.cat([value.bias, gate.bias])
        geglu.proj = _plain(geglu.proj, torch.cat([value.weight, gate.weight]), bias)
        return geglu


class FusedResnetBlock2D(nn.Module):
    """diffusers ResnetBlock2D as SD 1.5 configures it, with the shortcut added in conv2's epilogue."""

    def __init__(self, block: nn.Module, ops: norms.NativeOps | None = None) -> None:
        super().__init__()
        self.block = block  # its convs are packed too; its own forward runs whatever this one does not take
        self.ops = ops  # GroupNorm + SiLU in one pass, when given

    @staticmethod
    def supports(block: nn.Module) -> bool:
        from diffusers.models.resnet import ResnetBlock2D

        return (
            type(block) is ResnetBlock2D
            # the VAE decoder's resnets say "group" and have no time embedding: the same forward as "default"
            and (
                block.time_embedding_norm == "default"
                or (block.time_embedding_norm, block.time_emb_proj) == ("group", None)
            )
            and block.upsample is None
            and block.downsample is None
            and block.output_scale_factor == 1.0
            and not block.skip_time_act
            and isinstance(block.nonlinearity, nn.SiLU)
            and type(block.norm1) is type(block.norm2) is nn.GroupNorm
        )

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None, *args, **kwargs) -> torch.Tensor:
        b = self.block
        if b.training or args or kwargs or not isinstance(b.conv1, PackedConv2d):
            return b(input_tensor, temb, *args, **kwargs)
        batch = input_tensor.shape[0]
        if shared_batch(input_tensor) and (temb is None or bool((temb == temb[:1]).all())):
            return broadcast(self._run(input_tensor[:1], None if temb is None else temb[:1]), batch)
        return self._run(channels_last(input_tensor), temb)

    def unpack(self) -> nn.Module:
        return self.block

    def _run(self, input_tensor: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        b = self.block
        hidden = group_norm(self.ops, b.norm1, input_tensor, silu=True)
        shift = None
        if temb is not None and b.time_emb_proj is not None:
            shift = b.time_emb_proj(F.silu(temb))
        if shift is not None and (shift.shape[0] == 1 or bool((shift == shift[:1]).all())):
            # One timestep for the whole batch: the embedding is a per-channel constant, i.e. part of the bias.
            bias = shift[0] if b.conv1.bias is None else b.conv1.bias.float() + shift[0].float()
            hidden = b.conv1(hidden, bias=bias.to(hidden.dtype))
        else:
            hidden = b.conv1(hidden)
            if shift is not None:
                hidden = hidden + shift[:, :, None, None]
        hidden = group_norm(self.ops, b.norm2, hidden, silu=True)
        shortcut = input_tensor if b.conv_shortcut is None else b.conv_shortcut(input_tensor)
        return b.conv2(hidden, residual=shortcut)


def _plain_attention(attn: nn.Module) -> bool:
    """A diffusers Attention with nothing SD 1.5 lacks (no norms, no residual inside, no custom processor)."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    return (
        type(attn) is Attention
        and isinstance(attn.processor, (AttnProcessor2_0, attention.CPUAttnProcessor))
        and attention.has_plain_layers(attn)
        and len(attn.to_out) == 2
        and isinstance(attn.to_out[1], nn.Dropout)
    )


def _plain_transformer_block(block: nn.Module) -> bool:
    """A diffusers BasicTransformerBlock as SD 1.5 configures it."""
    from diffusers.models.attention import BasicTransformerBlock

    ff = getattr(block, "ff", None)
    return (
        type(block) is BasicTransformerBlock
        and block.norm_type == "layer_norm"
        and block.pos_embed is None
        and not block.only_cross_attention
        and block.attn2 is not None
        and getattr(block, "fuser", None) is None
        and block._chunk_size is None
        and all(type(n) is nn.LayerNorm for n in (block.norm1, block.norm2, block.norm3))
        and _plain_attention(block.attn1)
        and _plain_attention(block.attn2)
        and ff is not None
        and len(ff.net) == 3
        and FusedGEGLU.supports(ff.net[0])
        and isinstance(ff.net[1], nn.Dropout)
        and isinstance(ff.net[2], nn.Linear)
    )


class FusedTransformer2D(nn.Module):
    """diffusers Transformer2DModel (continuous input, SD 1.5 blocks) on NHWC tokens with fused residuals."""

    def __init__(
        self, model: nn.Module, kernel: attention.NativeAttention | None, ops: norms.NativeOps | None = None
    ) -> None:
        super().__init__()
        self.model = model  # its layers are packed too; its own forward runs whatever this one does not take
        self.kernel = kernel
        self.ops = ops  # the norms, when given

    @staticmethod
    def supports(model: nn.Module) -> bool:
        from diffusers.models.transformers.transformer_2d import Transformer2DModel

        return (
            type(model) is Transformer2DModel
            and model.is_input_continuous
            and type(model.norm) is nn.GroupNorm
            and all(_is_pointwise(p) for p in (model.proj_in, model.proj_out))
            and len(model.transformer_blocks) > 0
            and all(_plain_transformer_block(b) for b in model.transformer_blocks)
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        timestep: torch.Tensor | None = None,
        added_cond_kwargs: dict | None = None,
        class_labels: torch.Tensor | None = None,
        cross_attention_kwargs: dict | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ):
        m = self.model
        extras = (timestep, added_cond_kwargs, class_labels, attention_mask, encoder_attention_mask)
        packed = isinstance(m.proj_out, (PackedConv2d, PackedLinear))
        if m.training or not packed or cross_attention_kwargs or any(e is not None for e in extras):
            return m(hidden_states, encoder_hidden_states, timestep, added_cond_kwargs, class_labels,
                              cross_attention_kwargs, attention_mask, encoder_attention_mask, return_dict)  # fmt: skip
        batch, channels, height, width = hidden_states.shape
        # NCHW tensors in channels_last memory are NHWC tokens: these permutes and reshapes are free.
        tokens = lambda t: t.permute(0, 2, 3, 1).reshape(t.shape[0], height * width, t.shape[1])  # noqa: E731
        image = lambda t: t.view(t.shape[0], height, width, t.shape[-1]).permute(0, 3, 1, 2)  # noqa: E731
        # A stride-0 batch of identical items stays one item until the first cross-attention (in `_block`).
        normed = group_norm(self.ops, m.norm, hidden_states[:1] if shared_batch(hidden_states) else hidden_states)
        hidden = m.proj_in(tokens(normed)) if m.use_linear_projection else tokens(m.proj_in(normed))
        for block in m.transformer_blocks:
            hidden = self._block(block, hidden, encoder_hidden_states, batch)
        if m.use_linear_projection:
            out = image(m.proj_out(hidden, tokens(hidden_states)))
        else:  # the 1x1 conv on the NHWC tokens, residual in its epilogue
            out = m.proj_out(image(hidden), hidden_states)
        if not return_dict:
            return (out,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=out)

    def unpack(self) -> nn.Module:
        return self.model

    def _block(self, block: nn.Module, hidden: torch.Tensor, context: torch.Tensor | None, batch: int) -> torch.Tensor:
        """BasicTransformerBlock: self-attention, cross-attention, GEGLU feed-forward, each with its residual.

        `hidden` may hold one item of a batch of `batch` identical ones: the self-attention runs on it once and the
        batch is materialised for the cross-attention, where the items' contexts differ."""
        hidden = self._attention(block.attn1, layer_norm(self.ops, block.norm1, hidden), None, hidden)
        if hidden.shape[0] != batch:
            hidden = broadcast(hidden, batch).contiguous()
        hidden = self._attention(block.attn2, layer_norm(self.ops, block.norm2, hidden), context, hidden)
        return block.ff.net[2](block.ff.net[0](layer_norm(self.ops, block.norm3, hidden)), hidden)

    def _attention(
        self, attn: nn.Module, x: torch.Tensor, context: torch.Tensor | None, residual: torch.Tensor
    ) -> torch.Tensor:
        context = x if context is None else context
        out = attention.attend(self.kernel, attn.to_q(x), attn.to_k(context), attn.to_v(context), attn.heads,
                                   attn.scale)  # fmt: skip
        return attn.to_out[0](out, residual)


# For output phase a (rows 2i + a), the 3x3 kernel rows that fall on low-res rows i - 1 + a and i + a.
_PHASE_TAPS = (((0,), (1, 2)), ((0, 1), (2,)))


def upsample_phase_weight(weight: torch.Tensor) -> torch.Tensor:
    """A 3x3 kernel applied after a 2x nearest upsample, as four 2x2 kernels on the low-res input: [4 * out, in, 2, 2].

    Output pixel (2i + a, 2j + b) sees only low-res rows i - 1 + a, i + a and columns j - 1 + b, j + b; each 2x2 tap
    sums the kernel rows and columns `_PHASE_TAPS` gives. Phases are stacked (a, b) = 00, 01, 10, 11; sums in fp32."""
    w = weight.detach().float()
    phases = []
    for rows in _PHASE_TAPS:
        for cols in _PHASE_TAPS:
            taps = [[w[:, :, list(r)][:, :, :, list(c)].sum((2, 3)) for c in cols] for r in rows]
            phases.append(torch.stack([torch.stack(row, -1) for row in taps], -2))
    return torch.cat(phases, 0).to(weight.dtype)


class FusedUpsample2D(nn.Module):
    """diffusers Upsample2D (2x nearest, then a 3x3 convolution) as one GEMM on the low-res input.

    Each output pixel's 3x3 window over the upsampled map covers only 2x2 distinct low-res pixels, so the four output
    phases are four 2x2 convolutions of the input: 4/9 of the FLOPs, and the 4x larger upsampled map is never
    written. They run as one GEMM, [(H + 1) * (W + 1), 4 * in] 2x2 patches of the zero-padded input by the stacked
    [4 * out, 4 * in] phase kernels, and the phases are interleaved into the output. Other output sizes (odd latent
    sizes) run diffusers' own forward on the packed 3x3 convolution.
    """

    def __init__(self, up: nn.Module) -> None:
        super().__init__()
        self.block = up  # its conv is packed too, for the forward this one does not take
        conv = up.conv
        self.out_channels = conv.out_channels
        phases = upsample_phase_weight(conv.weight)  # [4 * out, in, 2, 2] -> GEMM rows of (ky, kx, in)
        self.packed = _mkldnn()._reorder_linear_weight(
            phases.permute(0, 2, 3, 1).reshape(phases.shape[0], -1).contiguous(), PACK_ROWS
        )
        self.bias = None if conv.bias is None else conv.bias.detach().repeat(4)

    @staticmethod
    def supports(up: nn.Module) -> bool:
        from diffusers.models.upsampling import Upsample2D

        return (
            type(up) is Upsample2D
            and up.use_conv
            and not up.use_conv_transpose
            and up.interpolate
            and up.norm is None
            and up.name == "conv"
            and _is_same_3x3(up.conv)
            and up.conv.weight.device.type == "cpu"
        )

    def forward(self, hidden_states: torch.Tensor, output_size=None, *args, **kwargs) -> torch.Tensor:
        up, x = self.block, hidden_states
        doubled = x.dim() == 4 and (output_size is None or tuple(output_size) == (2 * x.shape[2], 2 * x.shape[3]))
        if up.training or args or kwargs or not doubled or x.dtype != self.packed.dtype:
            return up(hidden_states, output_size, *args, **kwargs)
        if shared_batch(x):
            return broadcast(self(x[:1]), x.shape[0])
        return self._run(x)

    def unpack(self) -> nn.Module:
        return self.block

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """Patch row p (of H + 1) gives output rows 2p (phase a = 0, low-res row p) and 2p - 1 (a = 1, row p - 1).

        Rows go through the GEMM in chunks of about UPSAMPLE_CHUNK_BYTES of patches, each chunk's phases written
        straight into the output, so a VAE's full-resolution upsampler holds no full-size temporaries."""
        batch, channels, height, width = x.shape
        padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))  # NHWC, one zero pixel around
        windows = padded.unfold(1, 2, 1).unfold(2, 2, 1)  # [B, H + 1, W + 1, C, 2, 2], a view
        out = x.new_empty(batch, height, 2, width, 2, self.out_channels)  # NHWC, rows and columns interleaved
        row_bytes = batch * (width + 1) * 4 * channels * x.element_size()
        step = max(1, UPSAMPLE_CHUNK_BYTES // row_bytes)
        for p0 in range(0, height + 1, step):
            p1 = min(p0 + step, height + 1)
            patches = windows[:, p0:p1].permute(0, 1, 2, 4, 5, 3).reshape(-1, 4 * channels)
            phases = _mkldnn()._linear_pointwise(patches, self.packed, self.bias, "none", [], "")
            phases = phases.view(batch, p1 - p0, width + 1, 2, 2, self.out_channels)
            even, odd = min(p1, height) - p0, max(p0, 1) - p0  # a = 0 rows in this chunk; a = 1 skips row -1
            for b in range(2):
                if even > 0:
                    out[:, p0 : p0 + even, 0, :, b] = phases[:, :even, b : b + width, 0, b]
                if p1 - p0 > odd:
                    out[:, p0 + odd - 1 : p1 - 1, 1, :, b] = phases[:, odd:, b : b + width, 1, b]
        return out.view(batch, 2 * height, 2 * width, self.out_channels).permute(0, 3, 1, 2)


def _is_same_3x3(conv: nn.Module) -> bool:
    """A 3x3 Conv2d that keeps the size (padding 1, stride 1, no dilation or groups)."""
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.padding == (1, 1)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def _patches(x: torch.Tensor) -> torch.Tensor:
    """im2col for a 3x3 "same" convolution: [B*H*W, 9*C] rows of (kh, kw, channel), zero-padded at the borders."""
    batch, channels, height, width = x.shape
    padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))  # NHWC, one zero pixel around
    windows = padded.unfold(1, 3, 1).unfold(2, 3, 1)  # [B, H, W, C, kh, kw], a view
    return windows.permute(0, 1, 2, 4, 5, 3).reshape(batch * height * width, 9 * channels)


def _is_pointwise(module: nn.Module) -> bool:
    """A Linear, or a 1x1 Conv2d that is one (stride 1, no padding, no groups)."""
    if type(module) is nn.Linear:
        return True
    return (
        type(module) is nn.Conv2d
        and module.kernel_size == (1, 1)
        and module.stride == (1, 1)
        and module.padding == (0, 0)
        and module.groups == 1
    )


def _plain(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """`layer` (built on the meta device) holding `weight` and `bias` as frozen parameters."""
    layer.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias, requires_grad=False)
    return layer


def _swap(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


_WRAPPERS = {"transformer": FusedTransformer2D, "resnet": FusedResnetBlock2D, "upsampler": FusedUpsample2D}


def fuse_model(
    model: nn.Module, kernel: attention.NativeAttention | None = None, ops: norms.NativeOps | None = None
) -> dict[str, int]:
    """Rewrite a diffusers UNet or VAE in place for the fused path; returns how many modules of each kind changed.

    Blocks are wrapped first, then GEGLUs and every remaining Conv2d and Linear are packed one at a time, each
    original dropped as soon as its packed copy is in place (the upsamplers keep their 3x3 weight for other output
    sizes beside the phase kernels; every other weight is held once). Fusing a fused model again changes nothing.
    """
    counts = {"transformers": 0, "resnets": 0, "upsamplers": 0, "geglu": 0, "conv": 0, "linear": 0}
    wrappers = ((FusedTransformer2D, "transformers", lambda m: FusedTransformer2D(m, kernel, ops)),
                (FusedResnetBlock2D, "resnets", lambda m: FusedResnetBlock2D(m, ops)),
                (FusedUpsample2D, "upsamplers", FusedUpsample2D))  # fmt: skip
    packers = ((FusedGEGLU, "geglu", FusedGEGLU), (PackedConv2d, "conv", PackedConv2d),
               (PackedLinear, "linear", PackedLinear.from_linear))  # fmt: skip
    for stage in (wrappers, packers):
        names = [name for name, _ in model.named_modules()]  # names only: no references that keep weights alive
        fused = tuple(_WRAPPERS.values()) if stage is wrappers else ()  # fused before: never wrap twice
        wrapped = [name + "." for name, m in model.named_modules() if isinstance(m, fused)]
        for name in names:
            if any(name.startswith(w) for w in wrapped):
                continue
            try:
                module = model.get_submodule(name)
            except AttributeError:  # inside a module this stage already replaced
                continue
            for cls, kind, make in stage:
                if cls.supports(module):
                    replacement = make(module)
                    replacement.train(module.training)
                    _swap(model, name, replacement)
                    counts[kind] += 1
                    break
            del module
    return counts


_UNPACKABLE = (*_WRAPPERS.values(), FusedGEGLU, PackedConv2d, PackedLinear)


def unfuse_model(model: nn.Module) -> tuple[attention.NativeAttention | None, norms.NativeOps | None] | None:
    """Undo `fuse_model` in place: diffusers' own modules again, with exactly the weights they were packed from.

    Returns the attention kernel and native ops the fused blocks used, to fuse the model again the same way once its
    weights changed, or None when the model held nothing fused."""
    found = [m for m in model.modules() if isinstance(m, _UNPACKABLE)]
    if not found:
        return None
    kernel = next((m.kernel for m in found if isinstance(m, FusedTransformer2D)), None)
    ops = next((m.ops for m in found if isinstance(m, (FusedTransformer2D, FusedResnetBlock2D))), None)
    del found
    for stage in (tuple(_WRAPPERS.values()), (FusedGEGLU, PackedConv2d, PackedLinear)):  # wrappers hold packed layers
        names = [name for name, m in model.named_modules() if isinstance(m, stage)]
        for name in [n for n in names if not any(n.startswith(outer + ".") for outer in names)]:  # outermost only
            _swap(model, name, model.get_submodule(name).unpack())
    return kernel, ops


def _hold_identical_items(unet: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Forward pre-hook: a batch of identical samples reaches the UNet held once (stride 0), to be computed once."""
    sample = args[0] if args else kwargs.get("sample")
    if sample is None or sample.dim() < 2 or sample.shape[0] < 2 or shared_batch(sample):
        return None
    if not torch.equal(sample, sample[:1].expand_as(sample)):
        return None
    held = sample[:1].expand_as(sample)
    return ((held, *args[1:]), kwargs) if args else (args, {**kwargs, "sample": held})


def share_identical_batches(unet: nn.Module) -> None:
    """Let a fused UNet compute a batch of identical items once up to where they differ (once per UNet).

    Classifier-free guidance feeds the same latents twice, and the two halves only differ from the first cross-
    attention on: the fused blocks compute that prefix once for a stride-0 batch."""
    if not shares_identical_batches(unet):
        unet.register_forward_pre_hook(_hold_identical_items, with_kwargs=True)


def shares_identical_batches(unet: nn.Module) -> bool:
    """Whether `share_identical_batches` was applied to `unet`."""
    return any(hook is _hold_identical_items for hook in unet._forward_pre_hooks.values())


def describe(model: nn.Module) -> str:
    """The fused blocks a model holds, for the status line: "16 transformers, 22 resnets, 3 upsamplers"."""
    counts = {kind: sum(isinstance(m, cls) for m in model.modules()) for kind, cls in _WRAPPERS.items()}
    parts = [f"{n} {kind}{'s' if n != 1 else ''}" for kind, n in counts.items() if n]
    return ", ".join(parts) or "layers packed"


def install(
    model: nn.Module, kernel: attention.NativeAttention | None = None, ops: norms.NativeOps | None = None
) -> FusionStatus:
    """Fuse a bf16/fp32 CPU UNet or VAE when this PyTorch can; returns what it holds fused (or why not).

    `kernel` runs the attention and `ops` the norms where they take the inputs (bf16); PyTorch runs the rest."""
    if env_choice(MODE_ENV, MODES) == "off":
        return FusionStatus(False, f"eager ({MODE_ENV}=off)")
    dtype = next(model.parameters()).dtype
    reason = unavailable_reason(dtype)
    if reason is not None:
        return FusionStatus(False, f"eager ({reason})")
    with torch.no_grad():
        counts = fuse_model(model, kernel, ops)
    logger.info("fused CPU %s: %s", type(model).__name__, counts)
    return FusionStatus(True, f"fused oneDNN ({describe(model)})")
