"""The AudioProjector: the bridge from the encoder's audio frames to the decoder's text embeddings.

    frames (B, F, Ce) --stack k--> (B, N, k*Ce) --ln_pre--> --proj--> --dropout--> --ln_post--> tokens (B, N, Cd)
    N = ceil(F / k): HuBERT's 50 frames/s become 10 audio tokens/s at the course's k = 5.

What each step is for (the course, class 3):
- stacking: k consecutive 20 ms frames are concatenated into one vector, so the decoder reads k times fewer
  positions (attention cost falls as N^2). The tail is zero-padded to a multiple of k.
- ln_pre (RMSNorm over k*Ce): the encoder's frames have their own scale (HuBERT's last LayerNorm, then
  stacking), normalizing puts every stacked vector on the same footing before the projection.
- proj (Linear k*Ce -> Cd, no bias): the only real mapping; 1280*5 -> 4096 for hubert-xlarge -> Qwen3-8B.
  (The course writes 2048 for Qwen3-8B: its hidden size is 4096. Dimensions here always come from the
  real encoder and decoder configs.)
- dropout (p=0.05): the projector is the one part trained from scratch; a little dropout fights overfitting.
- ln_post (RMSNorm over Cd): the decoder's layers expect inputs of a known scale; its learned weight sets it.
Variant "swiglu" (the course's Exercise 1): ln_pre -> down(silu(gate(x)) * up(x)) -> dropout -> ln_post, the
same gated MLP as the decoder's own feed-forward block, with `hidden` units (the course's 8192).

Masks: a padded batch carries a frame mask (B, F), True for real frames (right padding). A stacked token is
valid iff its FIRST frame is valid, so a sample with n valid frames gets exactly ceil(n / k) tokens, the
same count `num_tokens` gives and the same tokens it gets when run alone: padded frames are zeroed before
stacking, so its last, partial token is built exactly as the zero-padded tail of a lone sample.
References: the course's AudioProjector (tiny-audio src/asr_modeling.py); RMSNorm (arXiv:1910.07467);
GLU variants (arXiv:2002.05202). Legend: B batch, F encoder frames, N audio tokens, C width, k stack factor.
"""

import torch
import torch.nn.functional as F
from torch import nn

from nanoaudio.config import ProjectorConfig
from nanoaudio.nn import RMSNorm


def num_tokens(num_frames: int, k: int) -> int:
    """Audio tokens for num_frames encoder frames at stack factor k: ceil(F / k) (the tail is zero-padded)."""
    return -(-num_frames // k)


def stack_frames(x: torch.Tensor, k: int) -> torch.Tensor:
    """Concatenate every k consecutive frames: (B, F, C) -> (B, ceil(F/k), k*C), zero-padding the tail."""
    B, F_, C = x.shape
    pad = num_tokens(F_, k) * k - F_
    if pad:
        x = F.pad(x, (0, 0, 0, pad))  # (B, F, C) -> (B, F + pad, C), zeros at the end of time
    # frames [j*k, j*k + k) land side by side in token j: a pure reshape of a contiguous tensor, no copy
    return x.reshape(B, (F_ + pad) // k, k * C)  # (B, F, C) -> (B, F//k, k*C)


class AudioProjector(nn.Module):
    def __init__(self, config: ProjectorConfig):
        super().__init__()
        self.config = config
        k, Ce, Cd = config.stack, config.encoder_dim, config.decoder_dim
        self.ln_pre = RMSNorm(k * Ce, config.eps)
        if config.kind == "linear":
            self.proj = nn.Linear(k * Ce, Cd, bias=False)
        else:  # "swiglu": names as in the decoder's MLP
            self.gate_proj = nn.Linear(k * Ce, config.hidden, bias=False)
            self.up_proj = nn.Linear(k * Ce, config.hidden, bias=False)
            self.down_proj = nn.Linear(config.hidden, Cd, bias=False)
        self.dropout = nn.Dropout(config.dropout)
        self.ln_post = RMSNorm(Cd, config.eps)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        """The projector is trained from scratch; every parameter is initialised here:
        - Linear weights (proj, or gate/up/down): Kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in)),
          PyTorch's nn.Linear default. Its scale hardly matters: ln_post renormalizes the output.
        - ln_pre.weight, ln_post.weight: 1 (the course's RMSNorm), so at step 0 the audio tokens have RMS 1.
        """
        for m in self.modules():
            if isinstance(m, nn.Linear):
                m.reset_parameters()
            elif isinstance(m, RMSNorm):
                m.weight.fill_(1.0)

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor | None = None):
        """frames (B, F, Ce), frame_mask (B, F) bool or None -> tokens (B, N, Cd), token_mask (B, N) or None."""
        k = self.config.stack
        token_mask = None
        if frame_mask is not None:
            frame_mask = frame_mask.bool()
            # padded frames hold whatever the encoder computed there; zero them so that a sample's partial
            # last token is the same in a batch as alone (where its tail is zero-padded by stack_frames)
            frames = frames * frame_mask[..., None].to(frames.dtype)
            token_mask = frame_mask[:, ::k]  # (B, N): token j is valid iff frame j*k is valid
        x = stack_frames(frames, k)  # (B, F, Ce) -> (B, N, k*Ce)
        x = self.ln_pre(x)
        if self.config.kind == "linear":
            x = self.proj(x)  # (B, N, k*Ce) -> (B, N, Cd)
        else:
            x = self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # (B, N, k*Ce) -> (B, N, Cd)
        x = self.dropout(x)
        return self.ln_post(x), token_mask
